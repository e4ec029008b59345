//! The audit log: one table, range-partitioned by time, with a DEFAULT partition, and
//! everything installed beside it.
//!
//! [`AuditLog`] holds where the log lives and how it is partitioned, and every one of its
//! methods: the log's DDL is assembled here ([`AuditLog::create_sql`]) from parts that each
//! take the log's names (`sql/names.rs`) and never the log: the table
//! (`log/table.rs`), partition maintenance ([`partition`]), the install records
//! ([`crate::sql::install`]), the archive catalogue ([`crate::sql::archive`]), seals
//! ([`crate::sql::seal`]), redaction ([`crate::sql::redact`]), adoption of partitions
//! ([`crate::sql::adopt`]) and, last, the drift check ([`crate::sql::check`]), which compares
//! every other function with what this assembly creates.

use std::fmt::Write as _;

use crate::Error;
use crate::ident::{Ident, QualifiedName, quote_literal};
use crate::sql::names::LogNames;
use crate::sql::trigger::TriggerSpec;
use crate::sql::{
    adopt, archive, baseline, capture, check, counts, import, install, mask, records, redact,
    schema, seal,
};

pub mod partition;
mod table;

pub use partition::{PartitionPeriod, Retention};

/// The default schema of the audit log.
pub const DEFAULT_SCHEMA: &str = "audit";
/// The default name of the audit log table.
pub const DEFAULT_TABLE: &str = "auditlog";
/// How many partitions past the current one are created by default.
pub const DEFAULT_PREMAKE: u32 = 3;

/// The audit log: where it lives and how it is partitioned.
///
/// ```
/// use pg_audit::{AuditLog, PartitionPeriod};
/// let log = AuditLog::new().period(PartitionPeriod::Weekly).premake(8);
/// let sql = log.create_sql();
/// assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "audit"."auditlog""#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLog {
    names: LogNames,
    period: PartitionPeriod,
    premake: u32,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditLog {
    /// `audit.auditlog`, monthly partitions, three created ahead.
    pub fn new() -> Self {
        AuditLog {
            names: LogNames::new(QualifiedName::new(
                Some(Ident::generated(DEFAULT_SCHEMA, "")),
                Ident::generated(DEFAULT_TABLE, ""),
            )),
            period: PartitionPeriod::Monthly,
            premake: DEFAULT_PREMAKE,
        }
    }

    /// An audit log named `name` in `schema`.
    pub fn named(schema: &str, name: &str) -> Result<Self, Error> {
        Ok(AuditLog {
            names: LogNames::new(QualifiedName::new(
                Some(Ident::with_kind(schema, "schema")?),
                Ident::with_kind(name, "audit log table")?,
            )),
            ..Self::new()
        })
    }

    /// Sets the partition period (monthly by default).
    pub fn period(mut self, period: PartitionPeriod) -> Self {
        self.period = period;
        self
    }

    /// Sets how many partitions after the current one [`AuditLog::create_sql`] creates.
    pub fn premake(mut self, premake: u32) -> Self {
        self.premake = premake;
        self
    }

    /// The names of everything the log installs.
    pub(crate) fn names(&self) -> &LogNames {
        &self.names
    }

    /// The log table's qualified name.
    pub fn table(&self) -> &QualifiedName {
        self.names.table()
    }

    /// The schema the log and its functions live in.
    pub fn schema(&self) -> &Ident {
        self.names.schema()
    }

    /// The partition period.
    pub fn partition_period(&self) -> PartitionPeriod {
        self.period
    }

    /// The DEFAULT partition, which takes rows no time partition covers.
    pub fn default_partition(&self) -> QualifiedName {
        self.names.default_partition()
    }

    /// The baselines' progress (`pg-audit baseline`): which tables' rows were all written to
    /// the log as `SNAPSHOT` entries.
    pub fn baselines_table(&self) -> QualifiedName {
        self.names.baselines_table()
    }

    /// The table recording each audited table's installed configuration.
    pub fn config_table(&self) -> QualifiedName {
        self.names.config_table()
    }

    /// The log's DDL up to its check function: the tables, indexes and every other function.
    fn ddl_before_check(&self) -> String {
        let names = &self.names;
        [
            table::table_sql(names, self.period) + &partition::functions_sql(names, self.period),
            install::objects_sql(names),
            schema::objects_sql(names),
            archive::objects_sql(names),
            partition::prunes_table_sql(names),
            seal::objects_sql(names),
            redact::objects_sql(names),
            counts::objects_sql(names),
            records::objects_sql(names),
            baseline::objects_sql(names),
            mask::objects_sql(names),
            import::objects_sql(names),
            table::append_only_tables_sql(names),
            adopt::objects_sql(names),
        ]
        .join("\n")
    }

    /// SQL that creates the schema, the log table, its DEFAULT partition, its indexes and its
    /// partition-maintenance functions, then creates the current partition and the next
    /// `premake`. Every statement is idempotent: running it again changes nothing but replaces the
    /// functions.
    pub fn create_sql(&self) -> String {
        let mut sql = self.ddl_before_check();
        let expected = check::expected_functions(&self.names, &sql);
        let _ = writeln!(
            sql,
            "\n{}",
            check::check_function_sql(&self.names, &expected)
        );
        sql.push_str(&table::append_only_sql(&self.names));
        let _ = writeln!(sql, "\n{};", self.ensure_partitions_sql(self.premake));
        sql
    }

    /// SQL that lets `role` read the log — every reader method and every reading command of
    /// the `pg-audit` program: the log, the install records (a table's key), the partition
    /// listing and the drift check — and nothing more: it can neither change audit rows nor
    /// run maintenance. Grant this to application roles that show history; writing audited
    /// tables needs no privilege on the log.
    pub fn grant_read_sql(&self, role: &Ident) -> String {
        table::grant_read_sql(&self.names, role)
    }

    /// SQL that drops the log, its partitions and its functions. Drop the audit triggers first
    /// (see [`crate::TriggerSpec::uninstall_sql`]): a trigger left behind would fail every write
    /// to its table.
    pub fn drop_sql(&self) -> String {
        table::drop_sql(&self.names)
    }

    /// SQL that gives every partition of an audited partitioned table that has none its
    /// audit triggers (a partition created or attached since the install, when no event
    /// trigger did it): rows of `table_name`, `partition_name`. Run it as the tables' owner.
    pub fn adopt_partitions_sql(&self) -> String {
        format!(
            "SELECT * FROM {}()",
            self.names.function("adopt_partitions")
        )
    }

    /// SQL that creates the partition of the current period and of the next `ahead` periods
    /// where missing, and returns one row per partition created: `partition_name`,
    /// `range_start`, `range_end`, `moved_rows` (rows moved into it from the DEFAULT partition).
    pub fn ensure_partitions_sql(&self, ahead: u32) -> String {
        format!(
            "SELECT * FROM {}({ahead})",
            self.names.function("ensure_partitions")
        )
    }

    /// SQL that counts up to `max_rows` more entries into the log's counts (entries per table,
    /// operation, user, UTC day and block of ids, which the admin's chart and filters read
    /// instead of the log) and returns one row: `through_id` (every entry up to it is
    /// counted), `behind` (ids handed out past it: at most that many entries are not counted
    /// yet), `counted` (count rows written). Run it as the log's owner, every minute or so;
    /// until it runs, readers walk the uncounted entries in the log.
    pub fn count_sql(&self, max_rows: i64) -> String {
        counts::count_sql(&self.names, max_rows)
    }

    /// SQL a reader runs to learn how far the counts go: `through_id`, `behind`.
    pub fn counted_through_sql(&self) -> String {
        counts::counted_through_sql(&self.names)
    }

    /// SQL of a table's entries per UTC day, today's and the `$3` (integer) days' before, from
    /// the counts and the uncounted tail: `$1` schema, `$2` table; rows `day` (midnight UTC),
    /// `changes`.
    pub fn days_sql(&self) -> String {
        counts::days_sql(&self.names)
    }

    /// SQL of every table's entries, today's and the `$1` (integer) days' before, from the counts
    /// and the uncounted tail: rows `schema_name`, `table_name`, `changes`.
    pub fn tables_days_sql(&self) -> String {
        counts::tables_days_sql(&self.names)
    }

    /// SQL of the id blocks that can hold entries passing a filter, newest first, at most `$8`:
    /// rows `block`, `lo`, `hi` (the lowest and highest id of its matching entries).
    /// Parameters: `$1` schema, `$2` table, `$3` operation, `$4` user id (each NULL for any), `$5`
    /// and `$6` the time range (timestamptz, NULL for unbounded), `$7` the highest block;
    /// `filter` says which filters are set.
    pub fn blocks_sql(&self, filter: counts::Counted) -> String {
        counts::blocks_sql(&self.names, filter)
    }

    /// SQL of one page of the records of a table the log holds, as they were at a time,
    /// rebuilt record by record from the records `count_sql` keeps and the log's entries past
    /// them: rows `key` (the key object's JSON text), `k` (the key object), `v` (audited
    /// columns), in key order (the text, byte by byte). Parameters: `$1` schema, `$2` table,
    /// `$3` the time, `$4` the key the page starts after (its JSON text, NULL for the first
    /// page), `$5` the most rows.
    pub fn table_at_sql(&self) -> String {
        records::table_at_sql(&self.names)
    }

    /// SQL of the rows of `live` the log never saw (unchanged since before auditing, the same
    /// at any time), rows `key`, `k`, `v` in the same order as [`Self::table_at_sql`].
    /// Parameters: `$1` schema, `$2` table, `$3` the key the page starts after, `$4` the most
    /// rows.
    pub fn unseen_rows_sql(&self, live: records::LiveRows<'_>) -> String {
        records::unseen_rows_sql(&self.names, live)
    }

    /// SQL that lists the log's partitions: `partition_name`, `range_start`, `range_end`
    /// (NULL for the DEFAULT partition), `is_default`, `total_bytes`; oldest first, DEFAULT first.
    pub fn list_partitions_sql(&self) -> String {
        format!("SELECT * FROM {}()", self.names.function("partitions"))
    }

    /// SQL listing what `<log>_prune_partitions` removed, oldest first: `prune_id`, `relation`
    /// (the partition, or the DEFAULT partition for its old rows), `action` (`detached`,
    /// `dropped`, `deleted old rows`), `range_start` and `range_end` (as text), `row_count`,
    /// the ids as runs `run_starts[i]..=run_ends[i]`, `pruned_at` (as text), `pruned_by`.
    pub fn prunes_sql(&self) -> String {
        partition::prunes_sql(&self.names)
    }

    /// SQL listing the partitions (never the DEFAULT one) whose whole range ended more than `$1`
    /// ago (an interval as text, `'6 months'`), oldest first: what pruning and archiving take,
    /// one at a time. `partition_name`, `range_start` and `range_end` (as text), `total_bytes`,
    /// `schema_name` and `table_name` (the partition's own, unquoted).
    pub fn partitions_older_than_sql(&self) -> String {
        partition::partitions_older_than_sql(&self.names)
    }

    /// SQL that detaches or drops every partition whose range ended more than `older_than` ago
    /// (a PostgreSQL interval such as `'90 days'` or `'1 year'`, checked by the server), and
    /// returns one row per partition touched: `partition_name`, `range_start`, `range_end`,
    /// `action`, `rows`.
    pub fn prune_partitions_sql(
        &self,
        older_than: &str,
        retention: Retention,
    ) -> Result<String, Error> {
        Ok(format!(
            "SELECT * FROM {}({}::interval, {})",
            self.names.function("prune_partitions"),
            quote_literal(older_than)?,
            retention == Retention::Drop
        ))
    }

    /// Like [`AuditLog::prune_partitions_sql`], for the one partition `partition` (as
    /// `partition_name` lists it) if it is past the retention period, so a caller can report
    /// progress partition by partition. The DEFAULT partition's old rows are not touched.
    pub fn prune_partition_sql(
        &self,
        older_than: &str,
        retention: Retention,
        partition: &str,
    ) -> Result<String, Error> {
        Ok(format!(
            "SELECT * FROM {}({}::interval, {}, {})",
            self.names.function("prune_partitions"),
            quote_literal(older_than)?,
            retention == Retention::Drop,
            quote_literal(partition)?
        ))
    }

    /// SQL listing the partitions `prune` detached and left as tables (without `--drop`): the
    /// tables of the log's schema named like its partitions, holding its columns, attached to
    /// nothing. One row each: `partition_name`.
    pub fn detached_partitions_sql(&self) -> String {
        partition::detached_partitions_sql(&self.names)
    }

    /// SQL listing the problems the drift check finds on any PostgreSQL: rows of
    /// `table_schema`, `table_name`, `problem`; none when every recorded audit trigger, and the
    /// log itself, are as installed (see [`crate::sql::check`]). It is the check itself, not a
    /// call of `<log>_check()` (a function the log's owner could replace): run it in a session
    /// with [`crate::session::PINNED`]'s settings (one opened with
    /// [`crate::session::startup_options`], or a transaction after
    /// [`crate::session::set_local_sql`]).
    ///
    /// Run it in a transaction after [`AuditLog::check_prelude_sql`]: its estimated cost is
    /// high enough that PostgreSQL would spend seconds compiling it with JIT (10 ms without).
    pub fn check_sql(&self) -> String {
        check::check_sql(&self.names, &self.ddl_before_check())
    }

    /// The settings the check's queries run with, for the rest of the transaction: no JIT.
    pub fn check_prelude_sql(&self) -> &'static str {
        check::CHECK_PRELUDE
    }

    /// The drift check for a server of `server_version_num` (`SHOW server_version_num`): on
    /// PostgreSQL 15 and later, [`AuditLog::check_sql`] and what only 15 can have (grants of
    /// `SET` on `session_replication_role`, row filters and column lists on the log's
    /// publication), with the same columns: `table_schema`, `table_name`, `problem`, sorted.
    /// Run it as [`AuditLog::check_sql`] is run.
    pub fn check_sql_for(&self, server_version_num: i32) -> String {
        check::check_sql_for(&self.names, &self.ddl_before_check(), server_version_num)
    }

    /// SQL returning the key columns recorded at install for a table, as a JSON array in key
    /// order (`primary_key`): parameters `$1` the table name (text), `$2` its schema (text, NULL
    /// for any). One row per audited table of that name.
    pub fn recorded_key_sql(&self) -> String {
        install::recorded_key_sql(&self.names.config_table())
    }

    /// SQL telling whether a table is installed as declared: one row (`same`, bool) when the
    /// table exists — false when its install record differs, is missing, or belongs to a table
    /// dropped and created again under the name since — and none when it does not. Parameters
    /// `$1` the declared configuration (jsonb, [`TriggerSpec::config_json`]), `$2` the table as
    /// `to_regclass` reads it (text). What the runtimes' migrations reinstall by.
    ///
    /// [`TriggerSpec::config_json`]: crate::TriggerSpec::config_json
    pub fn recorded_config_same_sql(&self) -> String {
        install::recorded_config_same_sql(&self.names.config_table())
    }

    /// The archive catalogue: one row per archived partition.
    pub fn archives_table(&self) -> QualifiedName {
        self.names.archives_table()
    }

    /// The rows of `partition`, in the archive's order (a record's entries together, by
    /// `record_key`, then by id; TRUNCATE entries, which have no key, last), each column as
    /// [`crate::sql::archive::ArchiveType`] says.
    pub fn archive_rows_sql(&self, relation: &str) -> String {
        archive::archive_rows_sql(relation)
    }

    /// The log's entries for an export, in the archive's form ([`Self::archive_rows_sql`]), by
    /// id: `$1` and `$2` the time range (`changed_at` from `$1`, before `$2`; text), `$3` the
    /// schema, `$4` the table and `$5` the context's `user_id` (text, each NULL for any).
    pub fn export_rows_sql(&self) -> String {
        archive::export_rows_sql(self.table())
    }

    /// The number of rows, lowest and highest id, and content digest (a SHA-256 over the
    /// rows' digests in id order, the digests the seals use) of `relation`: a partition, or a
    /// temporary table rows were loaded back into.
    /// The query itself, calling built-in functions only (run it with
    /// [`crate::session::PINNED`]'s settings).
    pub fn content_digest_sql(&self, relation: &str) -> String {
        archive::content_digest_sql(&self.names, relation)
    }

    /// Creates the temporary tables archived rows are loaded back into: `stage` (every column
    /// as [`crate::sql::archive::ArchiveType`] stores it, filled by `COPY ... (FORMAT csv)`) and `target` (the
    /// log's columns), for the session, both emptied.
    pub fn load_tables_sql(&self, stage: &str, target: &str) -> String {
        archive::load_tables_sql(&self.names, stage, target)
    }

    /// Moves the staged rows into `target`, converting each column back.
    pub fn unstage_sql(&self, stage: &str, target: &str) -> String {
        archive::unstage_sql(stage, target)
    }

    /// Records an archived partition: `$1` partition, `$2` range start, `$3` range end (text
    /// timestamps), `$4` location, `$5` rows, `$6` min id, `$7` max id, `$8` bytes, `$9`
    /// content digest.
    pub fn insert_archive_sql(&self) -> String {
        archive::insert_archive_sql(&self.names)
    }

    /// The archived partitions, oldest first.
    pub fn list_archives_sql(&self) -> String {
        archive::list_archives_sql(&self.names)
    }

    /// The seals: each covers every id in `first_id..=last_id`, chained by `prev_hash`.
    pub fn seals_table(&self) -> crate::QualifiedName {
        self.names.seals_table()
    }

    /// The redaction log: who erased what, when and why.
    pub fn redactions_table(&self) -> crate::QualifiedName {
        self.names.redactions_table()
    }

    /// The digest of each erased value, by entry, column and key.
    pub fn redacted_values_table(&self) -> crate::QualifiedName {
        self.names.redacted_values_table()
    }

    /// `SELECT * FROM <log>_seal(max_rows)`: seals the rows of ended transactions, at most
    /// `max_rows` per seal; one row per seal made. Returns nothing while another seal runs.
    pub fn seal_sql(&self, max_rows: u32) -> String {
        seal::seal_sql(&self.names, max_rows)
    }

    /// What a program that computes the digests itself (`pg-audit seal`) seals with: the same
    /// seals as [`AuditLog::seal_sql`], from the same horizon, under the same lock.
    pub fn sealing_sql(&self) -> seal::SealingSql {
        seal::sealing_sql(&self.names)
    }

    /// The seals in order, for `verify` and export.
    pub fn list_seals_sql(&self) -> String {
        seal::list_seals_sql(&self.names)
    }

    /// What the seal over `$1..=$2` with previous hash `$3` would hold, recomputed now from the
    /// log and, when `archived` names a table with the log's columns, the archived rows loaded
    /// into it: `row_count`, `rows`, `hash`. The query itself, calling built-in functions only
    /// (run it with [`crate::session::PINNED`]'s settings): what `verify` runs.
    pub fn reseal_sql(&self, archived: Option<&str>) -> String {
        seal::reseal_sql(&self.names, archived)
    }

    /// How the rows `verify` reads lie against the seals `$1` (the first sealed id; `i64::MAX`
    /// with no seal) and `$2` (the last; 0 with none), over the log and the archived rows in
    /// `archived`: `before_first` and `unsealed` (rows below and above the seals),
    /// `impossible` and `first_impossible` (ids below 1, which the log never hands out),
    /// `live_below_first` (the lowest live id below the first seal, where only archived rows
    /// belong) and `live_and_archived` (the lowest id both live and archived). As
    /// [`AuditLog::reseal_sql`].
    pub fn seal_coverage_sql(&self, archived: Option<&str>) -> String {
        seal::seal_coverage_sql(&self.names, archived)
    }

    /// Whether any value of the entries of ids `$1..=$2` is recorded as erased: one index
    /// probe, to skip [`AuditLog::applied_redactions_sql`] (whose plan reaches every
    /// partition) where no erasure can apply.
    pub fn erasures_in_sql(&self) -> String {
        redact::erasures_in_sql(&self.names)
    }

    /// The erased values' digests that stand in for them in the rows of ids `$1..=$2` (the
    /// log's and, with `archived`, the archived rows loaded into it): `entry_id`,
    /// `column_name`, `key`, `digest`, for each recorded erasure `redact` could have made. What
    /// a program computing the digests itself substitutes for the marker. As
    /// [`AuditLog::reseal_sql`].
    pub fn applied_redactions_sql(&self, archived: Option<&str>) -> String {
        redact::applied_redactions_sql(&self.names, archived)
    }

    /// Whether a recorded erasure concerns an archived entry (`erased`), and the live ids in
    /// archived files' id ranges (`live`, the first 1,000): what tells `verify` whether it may
    /// read archived rows from the files alone.
    pub fn archive_overlaps_sql(&self) -> String {
        redact::archive_overlaps_sql(&self.names)
    }

    /// The redactions recorded and the values they erased: `redactions`, `redacted_values`.
    pub fn redaction_counts_sql(&self) -> String {
        redact::redaction_counts_sql(&self.names)
    }

    /// The values a recorded redaction erased that are present again (the marker gone), in
    /// the log and, when `archived` names a table with the log's columns, the archived rows
    /// loaded into it: `entry_id`, `column_name`, `key`, `redaction_id`. The query itself, as
    /// [`AuditLog::reseal_sql`].
    pub fn unerased_sql(&self, archived: Option<&str>) -> String {
        redact::unerased_sql(&self.names, archived)
    }

    /// The recorded erasures no `redact` could have made (a key column, a column outside the
    /// redaction's, an entry of another record, anything but the context's user id of a
    /// user's redaction): `redaction_id`, `entry_id`, `column_name`, `key`. Over the log and
    /// the archived rows loaded into `archived`, as [`AuditLog::reseal_sql`]. Such a record
    /// stands in for nothing when digests are computed.
    pub fn unjustified_redactions_sql(&self, archived: Option<&str>) -> String {
        redact::unjustified_redactions_sql(&self.names, archived)
    }

    /// The relations `verify` reads that are not of the kind pg-audit made (the log a
    /// partitioned table of tables, the seals, redactions and archive catalogue tables, none
    /// with rules): a view or a foreign table in their place could show `verify` other rows
    /// than readers see. `relation`, `relkind`.
    pub fn unexpected_relations_sql(&self) -> String {
        seal::unexpected_relations_sql(&self.names)
    }

    /// The log's highest id handed out, and the highest sealed.
    pub fn seal_progress_sql(&self) -> String {
        seal::seal_progress_sql(&self.names)
    }

    /// What monitoring reads of the seals, cheaply (the log's greatest id and the seals'
    /// newest row, through indexes): `seal_age_seconds` (since the newest seal was made; NULL
    /// before the first), `ids_past_seals` (ids handed out past the last sealed one).
    pub fn seal_metrics_sql(&self) -> String {
        seal::seal_metrics_sql(&self.names)
    }

    /// Records a redaction (`$1` reason, `$2` table schema, `$3` table name, `$4` record key
    /// object or NULL, `$5` columns or NULL, `$6` what the erasure targets, e.g. `context
    /// user_id`) and returns its `redaction_id`.
    pub fn insert_redaction_sql(&self) -> String {
        redact::insert_redaction_sql(&self.names)
    }

    /// Erases values in the entries of `target` (the log, or a table with its columns holding
    /// archived rows) for redaction `$1`: with `$2`/`$3`/`$4` (schema, table, key object) the
    /// named columns `$5` (NULL: every column but the key's) of one record; with `$6` the
    /// context's `user_id` of every entry that has it. Returns the ids of the entries changed.
    pub fn redact_sql(&self, target: &str) -> String {
        redact::redact_sql(&self.names, target)
    }

    /// The publication listing the tables captured from the write-ahead log (database-wide,
    /// so its name carries the log's schema and name).
    pub fn publication(&self) -> Ident {
        self.names.publication()
    }

    /// The default replication slot's name for the log's capture from `database`:
    /// `pg_audit_<schema>_<log>_<database>` (slot names are the server's, shared by its
    /// databases), in the characters a slot name may hold (lower-case letters, digits, `_`), at
    /// most 63 bytes (a long name is cut and ends with a hash of the whole).
    pub fn default_slot(&self, database: &str) -> String {
        self.names.default_slot(database)
    }

    /// The table holding each slot's progress beside the log, written in the same transaction
    /// as the rows: `slot`, `lsn` (the end of the last transaction written), `last_commit`.
    pub fn capture_progress_table(&self) -> QualifiedName {
        self.names.capture_progress_table()
    }

    /// The table where the capture worker notes what it could not log as it came: a value
    /// the log cannot hold (logged instead as the JSON string of its text) or a change it
    /// could not log at all (set aside here whole). Written in the batch's transaction.
    pub fn capture_issues_table(&self) -> QualifiedName {
        self.names.capture_issues_table()
    }

    /// SQL creating the progress table and the issues table where the log lives when they are
    /// missing (run by the worker at every start, so it does nothing that needs ownership
    /// once the tables exist).
    pub fn capture_setup_sql(&self) -> String {
        capture::capture_setup_sql(&self.names)
    }

    /// SQL noting capture issues: `$1` the slot, `$2` a JSON array of objects with `txid`,
    /// `schema_name`, `table_name`, `record_pk` (text or null), `column_name` (null for a
    /// change set aside whole), `issue`, `raw` (the value's or the change's text).
    pub fn capture_issues_insert_sql(&self) -> String {
        capture::capture_issues_insert_sql(&self.names)
    }

    /// SQL summing up a slot's capture issues: `$1` the slot; one row of `issues` (their
    /// number) and `latest` (a JSON array of the ten newest, each with `noted_at`, `txid`,
    /// `table`, `record_pk`, `column_name`, `issue`).
    pub fn capture_issues_summary_sql(&self) -> String {
        capture::capture_issues_summary_sql(&self.names)
    }

    /// SQL reading a slot's progress: `$1` the slot; one row of `lsn` (text) and `last_commit`.
    pub fn capture_progress_read_sql(&self) -> String {
        capture::capture_progress_read_sql(&self.names)
    }

    /// SQL recording a slot's progress: `$1` the slot, `$2` the LSN (text), `$3` the last
    /// commit time (timestamptz).
    pub fn capture_progress_write_sql(&self) -> String {
        capture::capture_progress_write_sql(&self.names)
    }

    /// SQL writing a batch of captured changes: `$1` a JSON array of objects with `ord`,
    /// `changed_at`, `tx_started_at`, `txid`, `operation`, `schema_name`, `table_name`,
    /// `record_pk`, `old_record_pk`, `old_values`, `new_values`, `db_user`, `context`. The
    /// record keys are computed here, by the formula the triggers use; an UPDATE that changed
    /// no audited value and not the key is dropped, as the triggers drop it; rows get their ids
    /// in `ord` order.
    pub fn capture_insert_sql(&self) -> String {
        capture::capture_insert_sql(&self.names)
    }

    /// SQL listing the tables installed for capture from the write-ahead log, with their
    /// configuration: `table_schema`, `table_name`, `primary_key` (text[]), `track_only`
    /// (text[] or NULL), `exclude_fields` (text[] or NULL), `condition`, `operations` (text[]).
    pub fn captured_tables_sql(&self) -> String {
        capture::captured_tables_sql(&self.names)
    }

    /// SQL reading one table's install record with the columns of
    /// [`captured_tables_sql`](Self::captured_tables_sql) (no row: not installed): `$1` its
    /// schema, `$2` its name. [`InstalledTable`](crate::sql::capture::InstalledTable) makes
    /// its spec.
    pub fn installed_table_sql(&self) -> String {
        capture::installed_table_sql(&self.names)
    }

    /// SQL listing a table's schema changes, oldest first (see [`crate::sql::schema`]): `id`
    /// and `changes` (jsonb); `$1` the schema, `$2` the table.
    pub fn schema_changes_sql(&self) -> String {
        schema::changes_sql(&self.names)
    }

    /// SQL reading how far an import of a table went: `last_id` (NULL: none yet); `$1` the
    /// source's name, `$2` the schema, `$3` the table (see [`crate::sql::import`]).
    pub fn import_progress_sql(&self) -> String {
        import::progress_sql(&self.names)
    }

    /// SQL recording an import batch: `$1` source, `$2` schema, `$3` table, `$4` the last
    /// source id, `$5` rows written, `$6` rows not mapped.
    pub fn import_step_sql(&self) -> String {
        import::step_sql(&self.names)
    }

    /// One batch of an import of `table` (key columns `key`) from `source`: `$1` the source
    /// id after which it starts, `$2` the most rows; returns `last_id`, `rows`, `written`.
    /// `hstore`: the `hstore` extension's schema (audit-trigger); `auth`: whether supa_audit's
    /// table has Supabase's `auth_uid`/`auth_role`; `installed`: the table's install (its
    /// columns and masks applied to the imported values).
    pub fn import_batch_sql(
        &self,
        source: import::ImportSource,
        table: &QualifiedName,
        key: &[Ident],
        hstore: Option<&Ident>,
        auth: bool,
        installed: Option<&TriggerSpec>,
    ) -> String {
        import::batch_sql(&self.names, source, table, key, hstore, auth, installed)
    }

    /// SQL reading a table's baseline progress (see [`crate::sql::baseline`]): `last_key`
    /// (text), `rows`, `finished`, `started_at`, `finished_at`; `$1` schema, `$2` table.
    pub fn baseline_progress_sql(&self) -> String {
        baseline::progress_sql(&self.names)
    }

    /// SQL beginning a table's baseline (`$1` schema, `$2` table); with `again`, anew.
    pub fn baseline_begin_sql(&self, again: bool) -> String {
        baseline::begin_sql(&self.names, again)
    }

    /// SQL recording a baseline batch: `$1` schema, `$2` table, `$3` the last key (text),
    /// `$4` rows written, `$5` finished.
    pub fn baseline_step_sql(&self) -> String {
        baseline::step_sql(&self.names)
    }

    /// One batch of `spec`'s table's baseline: `$1` the key after which it starts (JSON text;
    /// NULL when `first`), `$2` the most rows, `$3` the entries' context (JSON text).
    /// Returns `rows`, `written` (bigint) and `last_key` (text, NULL once no row is left).
    pub fn baseline_batch_sql(&self, spec: &TriggerSpec, first: bool) -> String {
        baseline::batch_sql(spec, &self.names, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::shape::LOG_COLUMNS;

    #[test]
    fn long_names_fit_in_the_ddl() {
        let name = "a".repeat(63);
        let sql = AuditLog::named("audit", &name).unwrap().create_sql();
        assert!(sql.contains(&format!("CREATE TABLE IF NOT EXISTS \"audit\".\"{name}\"")));
    }

    #[test]
    fn the_table_has_the_documented_columns() {
        let sql = AuditLog::new().create_sql();
        for column in LOG_COLUMNS {
            assert!(
                sql.contains(&format!("\n    \"{}\" ", column.name)),
                "{}",
                column.name
            );
        }
    }

    #[test]
    fn retention_interval_is_quoted() {
        let sql = AuditLog::new()
            .prune_partitions_sql("90 days'; DROP TABLE x; --", Retention::Detach)
            .unwrap();
        assert_eq!(
            sql,
            "SELECT * FROM \"audit\".\"auditlog_prune_partitions\"('90 days''; DROP TABLE x; --'::interval, false)"
        );
    }
}
