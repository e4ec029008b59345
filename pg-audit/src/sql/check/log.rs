//! The check's part for the log itself: its relations, grants, owner, hooks, columns,
//! functions, publication and the settings that switch triggers off.

use crate::ident::{Ident, text_literal};
use crate::sql::install::CAPTURE_FIELD;
use crate::sql::names::LogNames;
use crate::sql::shape::{Filled, LOG_COLUMNS};

use super::ExpectedFunction;

/// What the check finds for the log itself, reported under its name: what could change, hide
/// or drop its rows (a part of [`super::check_query`]).
pub(super) fn log_query(names: &LogNames, expected: &[ExpectedFunction]) -> String {
    let log = names.table();
    let config = &names.config_table();
    let functions = &names.functions();
    let readable = &names.readable_functions();
    let publication = &names.publication();
    let side_tables = &names.side_tables();
    let append_only = &names.append_only_tables();
    let maintenance = functions
        .iter()
        .map(|(name, args)| {
            format!(
                "pg_catalog.to_regprocedure({})",
                text_literal(&format!("{name}({args})"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let grantee = "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END";
    let pinned = crate::session::proconfig_array();
    // The log's relations: the log and its partitions, and the side tables that exist.
    let relations = format!(
        "(SELECT pt.relid AS rel FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
          UNION ALL
          SELECT r.rel FROM (VALUES {side}) AS r(rel) WHERE r.rel IS NOT NULL)",
        log_lit = log.literal(),
        side = side_tables
            .iter()
            .map(|t| format!("(pg_catalog.to_regclass({}))", t.literal()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let append_only_list = append_only
        .iter()
        .map(|t| format!("pg_catalog.to_regclass({})", t.literal()))
        .collect::<Vec<_>>()
        .join(", ");
    // The log's defaults as installed (pg_get_expr prints them so under the pinned path).
    let defaults = LOG_COLUMNS
        .iter()
        .map(|c| {
            let expected = match c.filled {
                Filled::Sequence => format!(
                    "pg_catalog.format('nextval(%L::regclass)', pg_catalog.pg_get_serial_sequence({}, {}))",
                    log.literal(),
                    text_literal(c.name)
                ),
                Filled::Default(_) => text_literal(
                    c.deparsed_default()
                        .expect("every default column has its deparsed form"),
                ),
                Filled::Writer => "NULL::text".to_owned(),
            };
            let sql_type = if c.filled == Filled::Sequence {
                "bigint"
            } else {
                c.sql_type
            };
            format!(
                "({}, {expected}, {}, {})",
                text_literal(c.name),
                text_literal(sql_type),
                !c.nullable
            )
        })
        .collect::<Vec<_>>()
        .join(",\n                         ");
    let expected_functions = expected
        .iter()
        .map(|f| {
            format!(
                "({}, {}, {})",
                text_literal(&format!("{}({})", f.name, f.args)),
                crate::ident::dollar_quote(&f.body),
                f.security_definer
            )
        })
        .collect::<Vec<_>>()
        .join(",\n                         ");
    format!(
        r#"
    -- The log itself, reported under its name: what could change, hide or drop its rows.
    SELECT {log_schema}, {log_name}, x.problem
      FROM pg_catalog.pg_class AS lg
     CROSS JOIN LATERAL (
            -- Only the owner writes the log, its partitions and the records; readers may SELECT
            -- the log and the records, and run nothing but the partition listing.
            SELECT pg_catalog.format('%s grants %s to %s', c.oid::regclass, a.privilege_type, {grantee}) AS problem
              FROM (SELECT {log_lit}::regclass AS rel, true AS readable
                    UNION ALL SELECT {config_lit}::regclass, true
                    UNION ALL SELECT pt.relid, false FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
                               WHERE pt.relid <> {log_lit}::regclass) AS r
              JOIN pg_catalog.pg_class AS c ON c.oid = r.rel
             CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
             WHERE a.grantee <> c.relowner AND NOT (r.readable AND a.privilege_type = 'SELECT')
            UNION ALL
            SELECT pg_catalog.format('EXECUTE on %s is granted to %s', f.oid::regprocedure, {grantee})
              FROM pg_catalog.pg_proc AS f
             CROSS JOIN LATERAL pg_catalog.aclexplode(f.proacl) AS a
             WHERE f.oid = ANY (ARRAY[{maintenance}]) AND a.grantee <> f.proowner AND a.privilege_type = 'EXECUTE'
               AND f.oid <> ALL (ARRAY[{readable_list}]::oid[])
            UNION ALL
            -- The log's id sequence: whoever may set it makes new entries reuse ids, out of
            -- order, and verify report tampering that did not happen.
            SELECT pg_catalog.format('%s grants %s to %s: new entries could reuse ids', c.oid::regclass, a.privilege_type, {grantee})
              FROM pg_catalog.pg_class AS c
             CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS a
             WHERE c.oid = pg_catalog.pg_get_serial_sequence({log_lit}, 'id')::regclass AND a.grantee <> c.relowner
            UNION ALL
            -- Any role that is the owner: a member of the log's owner role may do all it may.
            SELECT pg_catalog.format('role %s is a member of %s, the log''s owner: it can do all the owner can (disable audit triggers, edit the log)', m.rolname, lg.relowner::regrole)
              FROM pg_catalog.pg_roles AS m
             WHERE m.oid <> lg.relowner AND NOT m.rolsuper
               AND pg_catalog.pg_has_role(m.oid, lg.relowner, 'MEMBER')
            UNION ALL
            -- Unlogged, a crash empties them (and a standby never has their rows).
            SELECT pg_catalog.format('%s is %s: a crash empties it and standbys never receive it; ALTER TABLE %s SET LOGGED', c.oid::regclass,
                                     CASE c.relpersistence WHEN 'u' THEN 'UNLOGGED' ELSE 'TEMPORARY' END, c.oid::regclass)
              FROM {relations} AS r
              JOIN pg_catalog.pg_class AS c ON c.oid = r.rel
             WHERE c.relpersistence <> 'p'
            UNION ALL
            -- Every relation of the log belongs to its owner.
            SELECT pg_catalog.format('%s is owned by %s, not by the log''s owner %s', c.oid::regclass, c.relowner::regrole, lg.relowner::regrole)
              FROM {relations} AS r
              JOIN pg_catalog.pg_class AS c ON c.oid = r.rel
             WHERE c.relowner <> lg.relowner
            UNION ALL
            -- No trigger on them but the seals' and catalogues' append-only ones, enabled.
            SELECT pg_catalog.format('trigger %s on %s was not installed by pg-audit: it runs on every write of %s and can change, drop or forge rows', tg.tgname, tg.tgrelid::regclass, tg.tgrelid::regclass)
              FROM {relations} AS r
              JOIN pg_catalog.pg_trigger AS tg ON tg.tgrelid = r.rel
             WHERE NOT tg.tgisinternal
               AND NOT (tg.tgname = 'append_only' AND tg.tgrelid = ANY (ARRAY[{append_only_list}]))
            UNION ALL
            SELECT pg_catalog.format('%s is not append-only: its trigger append_only is %s', a.rel::regclass,
                                     CASE WHEN tg.oid IS NULL THEN 'missing' ELSE 'disabled' END)
              FROM pg_catalog.unnest(ARRAY[{append_only_list}]) AS a(rel)
              LEFT JOIN pg_catalog.pg_trigger AS tg ON tg.tgrelid = a.rel AND tg.tgname = 'append_only'
             WHERE a.rel IS NOT NULL AND (tg.oid IS NULL OR tg.tgenabled IN ('D', 'R'))
            UNION ALL
            SELECT pg_catalog.format('rule %s on %s rewrites what is written to or read from it', w.rulename, w.ev_class::regclass)
              FROM {relations} AS r
              JOIN pg_catalog.pg_rewrite AS w ON w.ev_class = r.rel
            UNION ALL
            SELECT pg_catalog.format('constraint %s on %s was not installed by pg-audit: it can refuse entries, and so the writes they log', k.conname, k.conrelid::regclass)
              FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
              JOIN pg_catalog.pg_constraint AS k ON k.conrelid = pt.relid
            UNION ALL
            SELECT pg_catalog.format('%s has row-level security enabled%s: a policy can hide rows from readers and verify', c.oid::regclass,
                                     CASE WHEN c.relforcerowsecurity THEN ' and forced on its owner' ELSE '' END)
              FROM {relations} AS r
              JOIN pg_catalog.pg_class AS c ON c.oid = r.rel
             WHERE c.relrowsecurity OR c.relforcerowsecurity
            UNION ALL
            SELECT pg_catalog.format('policy %s on %s was not installed by pg-audit', pol.polname, pol.polrelid::regclass)
              FROM {relations} AS r
              JOIN pg_catalog.pg_policy AS pol ON pol.polrelid = r.rel
            UNION ALL
            -- The log's columns and the defaults the writers rely on (db_user, txid, times).
            SELECT CASE
                       WHEN a.attnum IS NULL THEN pg_catalog.format('column %s of %s is missing', e.name, c.oid::regclass)
                       WHEN a.atttypid <> e.type::regtype OR a.attnotnull <> e.not_null
                           THEN pg_catalog.format('column %s of %s is %s%s, not %s%s', e.name, c.oid::regclass,
                                                  pg_catalog.format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                                                  e.type::regtype, CASE WHEN e.not_null THEN ' NOT NULL' ELSE '' END)
                       ELSE pg_catalog.format('column %s of %s defaults to %s, not %s: every entry written takes it', e.name, c.oid::regclass,
                                              coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), 'nothing'), coalesce(e.def, 'nothing'))
                   END
              FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid
             CROSS JOIN (VALUES {defaults}) AS e(name, def, type, not_null)
              LEFT JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attname = e.name AND NOT a.attisdropped
              LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
             WHERE a.attnum IS NULL
                OR a.atttypid <> e.type::regtype OR a.attnotnull <> e.not_null
                OR pg_catalog.pg_get_expr(d.adbin, d.adrelid) IS DISTINCT FROM e.def
            UNION ALL
            SELECT pg_catalog.format('column %s of %s has a default (%s) pg-audit did not give it', a.attname, c.oid::regclass, pg_catalog.pg_get_expr(d.adbin, d.adrelid))
              FROM pg_catalog.pg_partition_tree({log_lit}::regclass) AS pt
              JOIN pg_catalog.pg_class AS c ON c.oid = pt.relid
              JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = c.oid
              JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = d.adnum
             WHERE a.attname::text <> ALL (ARRAY[{column_names}])
            UNION ALL
            -- The log's functions as this version installs them: a function the log's owner
            -- replaced would run in place of pg-audit's.
            SELECT CASE WHEN f.oid IS NULL THEN pg_catalog.format('function %s is missing; reinstall the log', e.sig)
                        ELSE pg_catalog.format('function %s differs from what this version of pg-audit installs (edited, replaced, or installed by another version); reinstall the log', e.sig)
                   END
              FROM (VALUES {expected_functions}) AS e(sig, body, definer)
              LEFT JOIN pg_catalog.pg_proc AS f ON f.oid = pg_catalog.to_regprocedure(e.sig)
             WHERE f.oid IS NULL OR f.prosrc <> e.body OR f.prosecdef <> e.definer
                OR NOT coalesce(f.proconfig @> {pinned}, false) OR f.proowner <> lg.relowner
            UNION ALL
            -- Capture from the WAL: every operation published, through the partition root.
            SELECT pg_catalog.format('publication %s publishes %s%s: changes it leaves out are not captured; drop it and reinstall the WAL-captured tables',
                                     pb.pubname,
                                     pg_catalog.concat_ws(', ', CASE WHEN pb.pubinsert THEN 'insert' END, CASE WHEN pb.pubupdate THEN 'update' END,
                                                          CASE WHEN pb.pubdelete THEN 'delete' END, CASE WHEN pb.pubtruncate THEN 'truncate' END),
                                     CASE WHEN pb.pubviaroot THEN '' ELSE ', not through the partition root' END)
              FROM pg_catalog.pg_publication AS pb
             WHERE pb.pubname = {publication_lit}
               AND NOT (pb.pubinsert AND pb.pubupdate AND pb.pubdelete AND pb.pubtruncate AND pb.pubviaroot)
            UNION ALL
            SELECT pg_catalog.format('the install records %s are not in publication %s: the capture worker would not see configuration changes', {config_lit}, pb.pubname)
              FROM pg_catalog.pg_publication AS pb
             WHERE pb.pubname = {publication_lit}
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_publication_rel AS pr
                                WHERE pr.prpubid = pb.oid AND pr.prrelid = {config_lit}::regclass)
               AND EXISTS (SELECT FROM {config} AS r WHERE r.config ->> {capture_field} = 'wal')
            UNION ALL
            -- session_replication_role = replica switches every ordinary trigger off.
            SELECT pg_catalog.format('%s session_replication_role = replica by default%s: its writes skip every audit trigger',
                                     CASE WHEN s.setrole = 0 THEN pg_catalog.format('database %s has', pg_catalog.current_database())
                                          ELSE pg_catalog.format('role %s has', s.setrole::regrole) END,
                                     CASE WHEN s.setdatabase = 0 THEN ' in every database' ELSE '' END)
              FROM pg_catalog.pg_db_role_setting AS s
             WHERE (s.setdatabase = 0 OR s.setdatabase = (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database()))
               AND EXISTS (SELECT FROM pg_catalog.unnest(s.setconfig) AS c(c) WHERE pg_catalog.lower(c.c) = 'session_replication_role=replica')
            UNION ALL
            SELECT 'session_replication_role is replica by default on this server: writes skip every audit trigger'
             WHERE (SELECT st.reset_val FROM pg_catalog.pg_settings AS st WHERE st.name = 'session_replication_role') = 'replica'
           ) AS x
     WHERE lg.oid = {log_lit}::regclass
     ORDER BY 1, 2, 3
"#,
        log_lit = log.literal(),
        log_schema = log
            .schema
            .as_ref()
            .map_or_else(|| "NULL".to_owned(), Ident::literal),
        log_name = log.name.literal(),
        readable_list = readable
            .iter()
            .map(|(f, args)| format!(
                "coalesce(pg_catalog.to_regprocedure({})::oid, 0)",
                text_literal(&format!("{f}({args})"))
            ))
            .collect::<Vec<_>>()
            .join(", "),
        capture_field = text_literal(CAPTURE_FIELD),
        publication_lit = publication.literal(),
        config_lit = config.literal(),
        column_names = LOG_COLUMNS
            .iter()
            .map(|c| text_literal(c.name))
            .collect::<Vec<_>>()
            .join(", "),
    )
}
