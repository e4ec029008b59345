//! The drift check: compares what each install recorded ([`crate::sql::install`]) and what
//! this version of pg-audit installs with what the database holds now, and reports every
//! difference as a sentence.
//!
//! ```sql
//! SELECT * FROM audit.auditlog_check();
//! --  table_schema | table_name | problem
//! --  public       | users      | trigger pg_audit_update is disabled
//! ```
//!
//! Problems found: the audited table is gone; the trigger function is missing or its body was
//! edited since the install; a trigger is missing, disabled (or enabled only for replicas), or
//! calls another function; a column the configuration names (key, `track_only`,
//! `exclude_fields`, condition) was dropped or renamed; a BEFORE UPDATE trigger was added to a
//! table whose UPDATE trigger relies on `UPDATE OF`, and could change a tracked column unseen;
//! `pg_audit_*` triggers that no install recorded; and what loses entries around the
//! triggers (the log's owner, grants, hooks, settings: see `check_query`).

use crate::ident::{Ident, QualifiedName, text_literal};
use crate::sql::create_function;
use crate::sql::names::LogNames;
mod log;
mod tables;

/// Run before the check's queries, in their transaction: planned, they cost enough for JIT,
/// which would take seconds to compile what runs in milliseconds.
pub(crate) const CHECK_PRELUDE: &str = "SET LOCAL jit = off";

/// A function of the log's as this version of pg-audit installs it, for the check to compare
/// the installed one with: its signature (name and argument types), body and whether it runs
/// as its owner.
#[derive(Debug, Clone)]
pub(crate) struct ExpectedFunction {
    pub(crate) name: QualifiedName,
    pub(crate) args: &'static str,
    pub(crate) body: String,
    pub(crate) security_definer: bool,
}

/// Every function of the log but the check, as this version installs it (read from `ddl`,
/// the log's DDL before the check function), for the check to compare with.
pub(crate) fn expected_functions(names: &LogNames, ddl: &str) -> Vec<ExpectedFunction> {
    let created = crate::sql::created_functions(ddl);
    let check = names.function("check");
    names
        .functions()
        .into_iter()
        .filter(|(name, _)| *name != check)
        .map(|(name, args)| {
            let prefix = format!("{name}(");
            let (_, security_definer, body) = created
                .iter()
                .find(|(signature, _, _)| signature.starts_with(&prefix))
                .unwrap_or_else(|| panic!("the log's DDL creates {name}"));
            ExpectedFunction {
                name,
                args,
                body: (*body).to_owned(),
                security_definer: *security_definer,
            }
        })
        .collect()
}

/// The check's query ([`check_query`]) comparing every function of the log — the check
/// function too: the program never takes its word, but cron and pg_cron users do, so a
/// replaced one is reported — with `ddl`, the log's DDL before the check function.
pub(crate) fn check_sql(names: &LogNames, ddl: &str) -> String {
    let mut expected = expected_functions(names, ddl);
    let check = ExpectedFunction {
        name: names.function("check"),
        args: "",
        body: check_function_body(names, &expected),
        security_definer: false,
    };
    expected.push(check);
    check_query(names, &expected)
}

/// [`check_sql`] for a server of `server_version_num`: with [`check_v15_query`] from 15 on.
pub(crate) fn check_sql_for(names: &LogNames, ddl: &str, server_version_num: i32) -> String {
    let all = check_sql(names, ddl);
    if server_version_num < 150_000 {
        return all;
    }
    format!(
        "SELECT c.table_schema, c.table_name, c.problem FROM ({all}) AS c
UNION ALL
SELECT v.table_schema, v.table_name, v.problem FROM ({}) AS v
ORDER BY 1, 2, 3",
        check_v15_query(names)
    )
}

/// The check function: every problem [`check_query`] finds, and on PostgreSQL 15 and later
/// those of [`check_v15_query`] too. For psql, cron and pg_cron; the `pg-audit` program and
/// the admin run the queries themselves rather than trust a function the log's owner may
/// replace.
pub(crate) fn check_function_sql(names: &LogNames, expected: &[ExpectedFunction]) -> String {
    create_function(
        &format!("{}()", names.function("check")),
        "TABLE (table_schema text, table_name text, problem text)",
        "plpgsql STABLE",
        false,
        &check_function_body(names, expected),
    )
}

/// The check function's body, comparing the other functions with `expected`.
pub(crate) fn check_function_body(names: &LogNames, expected: &[ExpectedFunction]) -> String {
    format!(
        "
BEGIN
    PERFORM pg_catalog.set_config('jit', 'off', true);
    RETURN QUERY {};
    IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
        RETURN QUERY EXECUTE {};
    END IF;
END
",
        check_query(names, expected),
        text_literal(&check_v15_query(names)),
    )
}

/// What the drift check finds, on PostgreSQL 13 and later: rows of `table_schema`,
/// `table_name`, `problem`. Run with the settings of [`crate::session::PINNED`] (a session the
/// program opened, a transaction that set them, or the check function).
///
/// For each recorded table: the table, its trigger function (as recorded, pinned, owned by
/// the log's owner, executable by nobody else), its triggers and partitions (each with its
/// triggers, owned by the log's owner), its columns; for capture from the WAL, the
/// publication and replica identity. For the log itself (reported under its name): every
/// relation of the log — the log, its partitions, the install records, the archive catalogue,
/// the seals and their state, the redaction log, the capture progress — owned by the log's
/// owner, with no trigger, rule or row-level security policy of anyone else's; the log's
/// columns and defaults as installed; no write grant; its functions as this version installs
/// them; its publication publishing every operation through the partition root; and no role
/// or database whose default `session_replication_role` switches triggers off.
pub(crate) fn check_query(names: &LogNames, expected: &[ExpectedFunction]) -> String {
    format!(
        "{}    UNION ALL{}",
        tables::tables_query(names),
        log::log_query(names, expected)
    )
}

/// What the drift check finds that only PostgreSQL 15 and later can have: a grant of `SET` on
/// `session_replication_role` (which lets a role switch triggers off), and row filters or
/// column lists on the log's publication.
pub(crate) fn check_v15_query(names: &LogNames) -> String {
    let (log, publication) = (names.table(), names.publication());
    format!(
        "
    SELECT {log_schema}::text AS table_schema, {log_name}::text AS table_name, x.problem
      FROM (
            SELECT pg_catalog.format('%s may %s session_replication_role (GRANT %s ON PARAMETER): its sessions can switch every audit trigger off',
                                     CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                                     pg_catalog.lower(a.privilege_type), a.privilege_type) AS problem
              FROM pg_catalog.pg_parameter_acl AS p
             CROSS JOIN LATERAL pg_catalog.aclexplode(p.paracl) AS a
             WHERE p.parname = 'session_replication_role'
               -- a superuser may set it anyway: the grants that widen who can are the others'.
               AND NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.oid = a.grantee), false)
            UNION ALL
            SELECT pg_catalog.format('publication %s filters the rows of %s (WHERE %s): changes outside the filter are not captured; drop the publication and reinstall',
                                     pb.pubname, pr.prrelid::regclass, pg_catalog.pg_get_expr(pr.prqual, pr.prrelid))
              FROM pg_catalog.pg_publication AS pb
              JOIN pg_catalog.pg_publication_rel AS pr ON pr.prpubid = pb.oid
             WHERE pb.pubname = {publication_lit} AND pr.prqual IS NOT NULL
            UNION ALL
            SELECT pg_catalog.format('publication %s publishes only some columns of %s: the others are not captured; drop the publication and reinstall',
                                     pb.pubname, pr.prrelid::regclass)
              FROM pg_catalog.pg_publication AS pb
              JOIN pg_catalog.pg_publication_rel AS pr ON pr.prpubid = pb.oid
             WHERE pb.pubname = {publication_lit} AND pr.prattrs IS NOT NULL
           ) AS x
     ORDER BY 1, 2, 3
",
        log_schema = log
            .schema
            .as_ref()
            .map_or_else(|| "NULL".to_owned(), Ident::literal),
        log_name = log.name.literal(),
        publication_lit = publication.literal(),
    )
}
