//! The check's part for each recorded table: the table, its trigger function, triggers,
//! partitions and columns as the install recorded them.

use crate::ident::text_literal;
use crate::sql::install::{CAPTURE_FIELD, COLUMNS_FIELD, OPERATIONS_FIELD, TRIGGERS_FIELD};
use crate::sql::names::LogNames;
use crate::sql::shape::{Operation, tgtype};

/// What the check finds for each recorded table, and audit triggers no install recorded:
/// rows of `table_schema`, `table_name`, `problem` (a part of [`super::check_query`]).
pub(super) fn tables_query(names: &LogNames) -> String {
    let log = names.table();
    let config = &names.config_table();
    let adopt = &names.function("adopt_partitions");
    let publication = &names.publication();
    // A partition's trigger of each operation: statement-level AFTER, on that one event.
    let partition_tgtype = format!(
        "CASE e.op {} END",
        Operation::ALL
            .iter()
            .map(|op| format!(
                "WHEN {} THEN {}",
                text_literal(op.keyword()),
                op.tgtype_event()
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let grantee = "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END";
    let pinned = crate::session::proconfig_array();
    let shape = crate::sql::schema::shape_expr("o.rel");
    let missing_pins = format!(
        "(SELECT pg_catalog.string_agg(s.s, ', ') FROM pg_catalog.unnest({pinned}) AS s(s) WHERE s.s <> ALL (coalesce(f.proconfig, '{{}}')))"
    );
    format!(
        r#"
    SELECT t.table_schema, t.table_name, p.problem
      FROM {config} AS t
     CROSS JOIN LATERAL (
            -- Found in the catalog, not by name: a reader may lack USAGE on the table's schema.
            SELECT (SELECT c.oid FROM pg_catalog.pg_class AS c
                      JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                     WHERE n.nspname OPERATOR(pg_catalog.=) t.table_schema
                       AND c.relname OPERATOR(pg_catalog.=) t.table_name)::regclass AS rel,
                   CASE WHEN t.trigger_function OPERATOR(pg_catalog.<>) ''
                        THEN pg_catalog.to_regprocedure(t.trigger_function OPERATOR(pg_catalog.||) '()') END AS fn,
                   t.config ->> {capture_field} IS NOT DISTINCT FROM 'wal' AS wal
           ) AS o
      JOIN pg_catalog.pg_class AS lg ON lg.oid = {log_lit}::regclass
     CROSS JOIN LATERAL (
            SELECT 'the table is missing' AS problem
             WHERE o.rel IS NULL
            UNION ALL
            SELECT pg_catalog.format('trigger function %s is missing', t.trigger_function)
             WHERE o.fn IS NULL AND NOT o.wal
            UNION ALL
            -- Captured from the write-ahead log: in the log's publication, every old row logged.
            SELECT pg_catalog.format('the table is not in publication %s, so its changes are not captured; reinstall it', {publication_lit})
             WHERE o.wal AND o.rel IS NOT NULL
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_publication_rel AS pr
                                 JOIN pg_catalog.pg_publication AS pb ON pb.oid = pr.prpubid
                                WHERE pb.pubname = {publication_lit} AND pr.prrelid = o.rel)
            UNION ALL
            SELECT pg_catalog.format('wal_level is %s, not logical, so changes are not captured from the write-ahead log', pg_catalog.current_setting('wal_level'))
             WHERE o.wal AND pg_catalog.current_setting('wal_level') <> 'logical'
            UNION ALL
            SELECT pg_catalog.format('%s is not REPLICA IDENTITY FULL, so its UPDATE and DELETE entries lack the old row; run ALTER TABLE %s REPLICA IDENTITY FULL', pt.relid::regclass, pt.relid::regclass)
              FROM (SELECT o.rel AS relid UNION SELECT p.relid FROM pg_catalog.pg_partition_tree(o.rel) AS p) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid AND c.relkind <> 'p'
             WHERE o.wal AND c.relreplident <> 'f'
            UNION ALL
            SELECT pg_catalog.format('trigger function %s was edited after it was installed', t.trigger_function)
              FROM pg_catalog.pg_proc AS f
             WHERE f.oid OPERATOR(pg_catalog.=) o.fn AND pg_catalog.md5(f.prosrc) OPERATOR(pg_catalog.<>) t.function_md5
            UNION ALL
            SELECT CASE
                       WHEN tg.oid IS NULL THEN pg_catalog.format('trigger %s is missing', e.name)
                       WHEN tg.tgenabled OPERATOR(pg_catalog.=) 'D' THEN pg_catalog.format('trigger %s is disabled', e.name)
                       WHEN tg.tgenabled OPERATOR(pg_catalog.=) 'R' THEN pg_catalog.format('trigger %s is enabled only for replicas', e.name)
                       ELSE pg_catalog.format('trigger %s calls another function', e.name)
                   END
              FROM pg_catalog.jsonb_array_elements_text(t.config -> {triggers_field}) AS e(name)
              LEFT JOIN pg_catalog.pg_trigger AS tg
                ON tg.tgrelid OPERATOR(pg_catalog.=) o.rel AND tg.tgname OPERATOR(pg_catalog.=) e.name
             WHERE o.rel IS NOT NULL
               AND (tg.oid IS NULL OR tg.tgenabled OPERATOR(pg_catalog.=) ANY (ARRAY['D', 'R']::"char"[])
                    OR tg.tgfoid OPERATOR(pg_catalog.<>) o.fn)
            UNION ALL
            SELECT pg_catalog.format('audited column %s was dropped or renamed', pg_catalog.quote_ident(c.name))
              FROM pg_catalog.jsonb_array_elements_text(t.config -> {columns_field}) AS c(name)
             WHERE o.rel IS NOT NULL
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                                WHERE a.attrelid OPERATOR(pg_catalog.=) o.rel AND a.attname OPERATOR(pg_catalog.=) c.name
                                  AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped)
            UNION ALL
            SELECT pg_catalog.format('the columns of %s changed since the log last recorded them, and the change is not in the log; install its audit again to record it', o.rel::regclass)
             WHERE o.rel IS NOT NULL AND t.shape IS NOT NULL AND t.shape OPERATOR(pg_catalog.<>) {shape}
            UNION ALL
            SELECT pg_catalog.format('BEFORE UPDATE trigger %s can change tracked columns unseen by the UPDATE OF trigger; reinstall', b.tgname)
              FROM pg_catalog.pg_trigger AS u
              JOIN pg_catalog.pg_trigger AS b ON b.tgrelid OPERATOR(pg_catalog.=) u.tgrelid
             WHERE u.tgrelid OPERATOR(pg_catalog.=) o.rel AND u.tgname OPERATOR(pg_catalog.=) {update_trigger}
               AND pg_catalog.array_length(u.tgattr::int2[], 1) OPERATOR(pg_catalog.>) 0
               AND NOT b.tgisinternal
               AND (b.tgtype::int OPERATOR(pg_catalog.&) {before_update_row}) OPERATOR(pg_catalog.=) {before_update_row}
            UNION ALL
            -- Each trigger as the install created it: events, level, column list, WHEN.
            SELECT pg_catalog.format('trigger %s was changed since the install: it is now %s', tg.tgname, pg_catalog.pg_get_triggerdef(tg.oid))
              FROM pg_catalog.pg_trigger AS tg
              JOIN pg_catalog.jsonb_each_text(t.definitions) AS d(name, def) ON d.name = tg.tgname
             WHERE tg.tgrelid = o.rel AND tg.tgfoid = o.fn AND pg_catalog.pg_get_triggerdef(tg.oid) <> d.def
            UNION ALL
            SELECT pg_catalog.format('trigger %s was not created by the install', tg.tgname)
              FROM pg_catalog.pg_trigger AS tg
             WHERE tg.tgrelid = o.rel AND tg.tgname = ANY ({all_triggers}) AND NOT (t.definitions ? tg.tgname)
               AND t.definitions IS NOT NULL
            UNION ALL
            -- The trigger function runs as the log's owner, with pg-audit's settings pinned, for
            -- the triggers alone.
            SELECT x.problem
              FROM pg_catalog.pg_proc AS f
             CROSS JOIN LATERAL (
                    SELECT pg_catalog.format('trigger function %s is no longer SECURITY DEFINER', t.trigger_function) AS problem
                     WHERE NOT f.prosecdef
                    UNION ALL
                    SELECT pg_catalog.format('trigger function %s does not pin %s, so the writing session''s settings can change what is logged or what runs; reinstall', t.trigger_function, {missing_pins})
                     WHERE NOT coalesce(f.proconfig @> {pinned}, false)
                    UNION ALL
                    SELECT pg_catalog.format('trigger function %s is owned by %s, not by the log''s owner %s', t.trigger_function, f.proowner::regrole, lg.relowner::regrole)
                     WHERE f.proowner <> lg.relowner
                    UNION ALL
                    SELECT pg_catalog.format('EXECUTE on trigger function %s is granted to %s, who could attach it to a table of their own to forge audit rows', t.trigger_function, {grantee})
                      FROM pg_catalog.aclexplode(f.proacl) AS a
                     WHERE a.grantee <> f.proowner AND a.privilege_type = 'EXECUTE'
                   ) AS x
             WHERE f.oid = o.fn
            UNION ALL
            -- The table and its partitions belong to the log's owner: their owner can disable
            -- their audit triggers, write, and enable them again.
            SELECT pg_catalog.format('%s %s is owned by %s, not by the log''s owner %s: %s can disable its audit triggers',
                                     CASE WHEN c.oid = o.rel THEN 'the table' ELSE 'partition' END,
                                     c.oid::regclass, c.relowner::regrole, lg.relowner::regrole, c.relowner::regrole)
              FROM (SELECT o.rel AS relid UNION SELECT p.relid FROM pg_catalog.pg_partition_tree(o.rel) AS p) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid
             WHERE c.relowner <> lg.relowner
            UNION ALL
            -- A partitioned table's partitions: each has the table's triggers of its own.
            SELECT CASE WHEN tg.oid IS NULL
                        THEN pg_catalog.format('partition %s has no trigger %s, so writes straight into it are not logged; run SELECT * FROM %s()', pt.relid::regclass, e.name, {adopt_lit})
                        ELSE pg_catalog.format('trigger %s on partition %s was changed since the install: it is now %s', e.name, pt.relid::regclass, pg_catalog.pg_get_triggerdef(tg.oid))
                   END
              FROM pg_catalog.pg_partition_tree(o.rel) AS pt
             CROSS JOIN LATERAL (SELECT t.config -> {triggers_field} ->> (i.n - 1) AS name, t.config -> {operations_field} ->> (i.n - 1) AS op
                                   FROM pg_catalog.generate_series(1, pg_catalog.jsonb_array_length(t.config -> {triggers_field})) AS i(n)) AS e
              LEFT JOIN pg_catalog.pg_trigger AS tg ON tg.tgrelid = pt.relid AND tg.tgname = e.name AND tg.tgparentid = 0
             WHERE pt.relid <> o.rel AND NOT o.wal
               AND (tg.oid IS NULL OR tg.tgenabled IN ('D', 'R') OR tg.tgfoid <> o.fn OR tg.tgqual IS NOT NULL
                    OR tg.tgtype::int <> {partition_tgtype}
                    -- It logs under the table's name, passed as its two arguments.
                    OR tg.tgnargs <> 2
                    OR tg.tgargs <> pg_catalog.convert_to(t.table_schema, 'UTF8') || '\x00'::bytea
                                    || pg_catalog.convert_to(t.table_name, 'UTF8') || '\x00'::bytea)
            UNION ALL
            SELECT pg_catalog.format('partition %s refuses writes: its guard is enabled (the partition was attached again, or its triggers enabled by hand); run SELECT * FROM %s()', pt.relid::regclass, {adopt_lit})
              FROM pg_catalog.pg_partition_tree(o.rel) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid AND c.relkind <> 'p'
              JOIN pg_catalog.pg_trigger AS g ON g.tgrelid = pt.relid AND g.tgname = {guard_lit} AND g.tgenabled <> 'D'
             WHERE pt.relid <> o.rel
           ) AS p
    UNION ALL
    SELECT n.nspname::text, c.relname::text,
           pg_catalog.format('trigger %s was not installed by pg-audit (no record in %s)', tg.tgname, {config_lit})
      FROM pg_catalog.pg_trigger AS tg
      JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) tg.tgrelid
      JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE tg.tgname OPERATOR(pg_catalog.=) ANY ({trigger_names})
       AND NOT EXISTS (SELECT FROM {config} AS r
                        WHERE r.table_schema OPERATOR(pg_catalog.=) n.nspname::text
                          AND r.table_name OPERATOR(pg_catalog.=) c.relname::text)
       -- A partition of a recorded table carries its table's triggers.
       AND NOT (c.relispartition AND EXISTS (
                SELECT FROM {config} AS r
                  JOIN pg_catalog.pg_namespace AS rn ON rn.nspname OPERATOR(pg_catalog.=) r.table_schema
                  JOIN pg_catalog.pg_class AS rc ON rc.relnamespace OPERATOR(pg_catalog.=) rn.oid
                                                AND rc.relname OPERATOR(pg_catalog.=) r.table_name
                 WHERE rc.oid OPERATOR(pg_catalog.=) pg_catalog.pg_partition_root(c.oid)))
"#,
        log_lit = log.literal(),
        adopt_lit = adopt.literal(),
        guard_lit = Operation::guard_trigger_name().literal(),
        operations_field = text_literal(OPERATIONS_FIELD),
        capture_field = text_literal(CAPTURE_FIELD),
        publication_lit = publication.literal(),
        config_lit = config.literal(),
        triggers_field = text_literal(TRIGGERS_FIELD),
        columns_field = text_literal(COLUMNS_FIELD),
        before_update_row = tgtype::BEFORE_UPDATE_ROW,
        trigger_names = Operation::trigger_names_array(),
        update_trigger = Operation::Update.trigger_name().literal(),
        all_triggers = Operation::all_trigger_names_array(),
    )
}
