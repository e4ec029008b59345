//! The names of everything a log installs beside its table, derived from the table's name in
//! one place: its partitions, side tables, functions, event trigger and publication. Each part
//! of the log's DDL ([`crate::sql::seal`], [`crate::sql::archive`], [`crate::sql::check`]...)
//! takes these names, never the [`crate::AuditLog`] that assembles the parts.

use crate::ident::{Ident, QualifiedName};

/// The names of a log's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogNames {
    table: QualifiedName,
}

impl LogNames {
    /// The names of the log `table` (schema-qualified).
    pub(crate) fn new(table: QualifiedName) -> Self {
        debug_assert!(table.schema.is_some(), "the audit log is schema-qualified");
        LogNames { table }
    }

    /// The log table.
    pub(crate) fn table(&self) -> &QualifiedName {
        &self.table
    }

    /// The schema the log and its functions live in.
    pub(crate) fn schema(&self) -> &Ident {
        self.table
            .schema
            .as_ref()
            .expect("the audit log is always schema-qualified")
    }

    /// A table or function pg-audit installs beside the log, named `<log>_<suffix>`.
    pub(crate) fn function(&self, suffix: &str) -> QualifiedName {
        self.table.sibling(&format!("_{suffix}"))
    }

    /// The DEFAULT partition.
    pub(crate) fn default_partition(&self) -> QualifiedName {
        self.table.sibling("_default")
    }

    /// The install records.
    pub(crate) fn config_table(&self) -> QualifiedName {
        self.function("tables")
    }

    /// The archive catalogue.
    pub(crate) fn archives_table(&self) -> QualifiedName {
        self.function("archives")
    }

    /// The prune record: partitions detached or dropped, and old rows deleted, by
    /// `<log>_prune_partitions`.
    pub(crate) fn prunes_table(&self) -> QualifiedName {
        self.function("prunes")
    }

    /// The key of masked columns' digests.
    pub(crate) fn mask_key_table(&self) -> QualifiedName {
        self.function("mask_key")
    }

    /// The imports' progress.
    pub(crate) fn imports_table(&self) -> QualifiedName {
        self.function("imports")
    }

    /// The baselines' progress.
    pub(crate) fn baselines_table(&self) -> QualifiedName {
        self.function("baselines")
    }

    /// The seals.
    pub(crate) fn seals_table(&self) -> QualifiedName {
        self.function("seals")
    }

    /// The sealer's state.
    pub(crate) fn seal_state_table(&self) -> QualifiedName {
        self.function("seal_state")
    }

    /// The redaction log.
    pub(crate) fn redactions_table(&self) -> QualifiedName {
        self.function("redactions")
    }

    /// The digest of each erased value.
    pub(crate) fn redacted_values_table(&self) -> QualifiedName {
        self.function("redacted_values")
    }

    /// The capture worker's progress, by slot.
    pub(crate) fn counts_table(&self) -> QualifiedName {
        self.function("counts")
    }

    pub(crate) fn context_counts_table(&self) -> QualifiedName {
        self.function("context_counts")
    }

    pub(crate) fn counts_state_table(&self) -> QualifiedName {
        self.function("counts_state")
    }

    /// Each record the log has seen, for rebuilding a table as of a time.
    pub(crate) fn records_table(&self) -> QualifiedName {
        self.function("records")
    }

    pub(crate) fn capture_progress_table(&self) -> QualifiedName {
        self.function("capture_progress")
    }

    /// What the capture worker could not log as it came.
    pub(crate) fn capture_issues_table(&self) -> QualifiedName {
        self.function("capture_issues")
    }

    /// `pg_audit_<schema>_<log><suffix>`: a database-wide name (an event trigger, a
    /// publication) that carries the log's schema and name.
    fn database_wide(&self, suffix: &str) -> Ident {
        Ident::generated(
            &format!(
                "pg_audit_{}_{}",
                self.schema().as_str(),
                self.table.name.as_str()
            ),
            suffix,
        )
    }

    /// The publication of the tables captured from the write-ahead log.
    pub(crate) fn publication(&self) -> Ident {
        self.database_wide("")
    }

    /// The default replication slot of the log's capture from `database`.
    pub(crate) fn default_slot(&self, database: &str) -> String {
        Ident::generated(&format!("{}_{database}", self.publication().as_str()), "")
            .as_str()
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '_' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '_',
            })
            .collect()
    }

    /// The event trigger that adopts new partitions of audited tables.
    pub(crate) fn event_trigger(&self) -> Ident {
        self.database_wide("_partitions")
    }

    /// The prefix of time partitions' names; a partition appends its first day as `YYYYMMDD`.
    pub(crate) fn partition_prefix(&self) -> String {
        const DATE: &str = "00000000";
        let template = Ident::generated(self.table.name.as_str(), &format!("_p{DATE}"));
        template.as_str()[..template.as_str().len() - DATE.len()].to_owned()
    }

    /// Every function of the log, with its argument types, for revoking, dropping and
    /// checking them.
    pub(crate) fn functions(&self) -> Vec<(QualifiedName, &'static str)> {
        [
            ("trigger_definitions", "regclass"),
            ("adopt_on_ddl", ""),
            ("adopt_partitions", "regclass"),
            ("unaudited_partition", ""),
            ("check", ""),
            ("strip_grants", "regclass, boolean"),
            ("prune_partitions", "interval, boolean, text"),
            ("ensure_partitions", "integer"),
            ("partitions", ""),
            ("append_only", ""),
            ("unerased", "regclass"),
            ("seal_of", "bigint, bigint, bytea, regclass"),
            ("content_of", "regclass"),
            ("seal_horizon", ""),
            ("seal", "integer"),
            ("count", "bigint"),
            ("masked", "jsonb, text[]"),
            ("record_schema", "regclass, text"),
            (
                "redact",
                "regclass, bigint, text, text, jsonb, text[], text",
            ),
        ]
        .into_iter()
        .map(|(suffix, args)| (self.function(suffix), args))
        .collect()
    }

    /// The functions readers may run, with their argument types: the partition listing, the
    /// drift check, and what `verify` recomputes (it changes nothing).
    pub(crate) fn readable_functions(&self) -> Vec<(QualifiedName, &'static str)> {
        let all = self.functions();
        ["partitions", "check", "seal_of", "content_of", "unerased"]
            .into_iter()
            .map(|suffix| {
                let name = self.function(suffix);
                all.iter()
                    .find(|(f, _)| *f == name)
                    .cloned()
                    .expect("a function of the log")
            })
            .collect()
    }

    /// The log's tables besides the log and its partitions, which may not all exist.
    pub(crate) fn side_tables(&self) -> Vec<QualifiedName> {
        vec![
            self.config_table(),
            self.archives_table(),
            self.prunes_table(),
            self.seals_table(),
            self.seal_state_table(),
            self.redactions_table(),
            self.redacted_values_table(),
            self.capture_progress_table(),
            self.capture_issues_table(),
            self.counts_table(),
            self.context_counts_table(),
            self.counts_state_table(),
            self.records_table(),
            self.baselines_table(),
            self.mask_key_table(),
            self.imports_table(),
        ]
    }

    /// Those of them that are append-only (a trigger refuses changes).
    pub(crate) fn append_only_tables(&self) -> Vec<QualifiedName> {
        vec![
            self.seals_table(),
            self.redactions_table(),
            self.redacted_values_table(),
            self.archives_table(),
            self.prunes_table(),
        ]
    }

    /// The tables a reader may read: the log, the install records, the archive catalogue, the
    /// prune record, the seals and the redaction log.
    pub(crate) fn readable_tables(&self) -> Vec<QualifiedName> {
        vec![
            self.table.clone(),
            self.config_table(),
            self.archives_table(),
            self.prunes_table(),
            self.seals_table(),
            self.redactions_table(),
            self.redacted_values_table(),
            self.counts_table(),
            self.context_counts_table(),
            self.counts_state_table(),
            self.records_table(),
            self.baselines_table(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> LogNames {
        LogNames::new(QualifiedName::new(
            Some(Ident::generated("audit", "")),
            Ident::generated(name, ""),
        ))
    }

    #[test]
    fn long_names_are_shortened_deterministically() {
        let name = "a".repeat(63);
        let names = named(&name);
        assert!(names.default_partition().name.as_str().len() <= 63);
        assert!(
            names
                .default_partition()
                .name
                .as_str()
                .ends_with("_default")
        );
        assert_eq!(names.default_partition(), named(&name).default_partition());
    }

    #[test]
    fn partition_prefix_leaves_room_for_the_date() {
        assert_eq!(named("auditlog").partition_prefix(), "auditlog_p");
        assert_eq!(named(&"x".repeat(63)).partition_prefix().len() + 8, 63);
    }

    #[test]
    fn readers_may_run_five_functions() {
        let names = named("auditlog");
        let readable: Vec<String> = names
            .readable_functions()
            .iter()
            .map(|(f, args)| format!("{}({args})", f.name.as_str()))
            .collect();
        assert_eq!(
            readable,
            [
                "auditlog_partitions()",
                "auditlog_check()",
                "auditlog_seal_of(bigint, bigint, bytea, regclass)",
                "auditlog_content_of(regclass)",
                "auditlog_unerased(regclass)"
            ]
        );
    }

    #[test]
    fn the_default_slot_is_a_valid_slot_name() {
        let slot = LogNames::new(QualifiedName::new(
            Some(Ident::new("Audit").unwrap()),
            Ident::new("My-Log").unwrap(),
        ))
        .default_slot("App-DB");
        assert!(
            slot.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_eq!(
            named("auditlog").default_slot("app"),
            "pg_audit_audit_auditlog_app"
        );
        assert!(named("auditlog").default_slot(&"d".repeat(100)).len() <= 63);
    }
}
