//! Catalog queries a tool runs before it generates SQL, to learn what only the database knows.

/// A query returning the primary-key columns of the table named by `$1` (text, as
/// `to_regclass` reads it: `users`, `public.users`, `"Odd"."Name"`) in key order: rows of
/// `column_name` (text) and `table_exists` (bool, true). No row when the table has no primary
/// key; one row with `table_exists` false when there is no such table.
pub const PRIMARY_KEY_SQL: &str = "SELECT p.column_name, p.table_exists FROM (
    SELECT a.attname::text, true, k.n
      FROM pg_catalog.pg_index AS i
     CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
      JOIN pg_catalog.pg_attribute AS a
        ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) k.attnum
     WHERE i.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1::text) AND i.indisprimary
    UNION ALL
    SELECT NULL, false, 0 WHERE pg_catalog.to_regclass($1::text) IS NULL
) AS p(column_name, table_exists, n)
 ORDER BY p.n";
