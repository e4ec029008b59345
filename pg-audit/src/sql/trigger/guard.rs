//! The install guard: a `DO` block run first in the install's transaction, which fails with a
//! message naming the problem and the fix when the table is missing, lacks a named column, or
//! is not keyed by the spec's key. Nothing is installed when it fails.

use super::TriggerSpec;
use crate::ident::{Ident, text_literal};

/// The guard's body.
pub(super) fn check_body(spec: &TriggerSpec) -> String {
    let table_lit = spec.table().literal();
    let columns = spec
        .named_columns()
        .iter()
        .map(|n| text_literal(n))
        .collect::<Vec<_>>()
        .join(", ");
    let key_list = spec
        .primary_key()
        .iter()
        .map(Ident::literal)
        .collect::<Vec<_>>()
        .join(", ");
    let key_text = text_literal(
        &spec
            .primary_key()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    format!(
        r#"
DECLARE
    tbl regclass := pg_catalog.to_regclass({table_lit});
    missing text;
    actual text;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'pg-audit: table % does not exist; create it (run the application''s own migrations) before installing its audit triggers', {table_lit};
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c), ', ') INTO missing
      FROM pg_catalog.unnest(ARRAY[{columns}]::text[]) AS c
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                        WHERE a.attrelid = tbl AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg-audit: table % has no column %', tbl, missing
            USING HINT = 'Column names are case-sensitive and taken as written; correct the audit configuration or the table.';
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_index AS i
         WHERE i.indrelid = tbl AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
           AND (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attname::text)
                  FROM pg_catalog.pg_attribute AS a
                 WHERE a.attrelid = tbl AND a.attnum = ANY (i.indkey))
             = (SELECT pg_catalog.array_agg(k ORDER BY k) FROM pg_catalog.unnest(ARRAY[{key_list}]::text[]) AS k)
    ) THEN
        SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY k.n) INTO actual
          FROM pg_catalog.pg_index AS i
         CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = tbl AND i.indisprimary;
        IF actual IS NULL THEN
            RAISE EXCEPTION 'pg-audit: table % has no primary key or unique index on (%)', tbl, {key_text}
                USING HINT = 'The log identifies rows by their key: add a primary key to the table, or audit it by the columns of a unique index.';
        ELSE
            RAISE EXCEPTION 'pg-audit: (%) is not a key of table %', {key_text}, tbl
                USING HINT = pg_catalog.format('Its primary key is (%s): give that as the audit key.', actual);
        END IF;
    END IF;
END
"#
    )
}
