//! The variants measured: the unaudited table, the floor, and pg-audit's trigger designs.

use pg_audit::{AuditLog, QualifiedName, TriggerLevel, TriggerSpec, TriggerSpecBuilder};

/// One way of (not) auditing a table.
#[derive(Clone, Copy)]
pub(crate) struct Variant {
    /// The name in the report.
    pub(crate) name: &'static str,
    /// Whether writes set the audit context (pg-audit variants do; the floor does not).
    pub(crate) audited: bool,
    suffix: &'static str,
    install: fn(&str) -> String,
}

impl Variant {
    pub(crate) fn table(&self) -> String {
        format!("bench_{}", self.suffix)
    }

    /// SQL installing the variant's triggers on `table`.
    pub(crate) fn install(&self, table: &str) -> String {
        (self.install)(table)
    }
}

/// The minimal trigger that writes a row: the floor for any trigger-based audit.
pub(crate) const FLOOR_SETUP: &str = "
    CREATE TABLE floor_log (op text);
    CREATE FUNCTION floor_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO floor_log VALUES (TG_OP);
        RETURN NULL;
    END $$;";

fn pg_audit(table: &str, f: impl FnOnce(TriggerSpecBuilder) -> TriggerSpecBuilder) -> String {
    f(TriggerSpec::builder(
        QualifiedName::parse(table).expect("valid"),
    ))
    .build()
    .expect("valid spec")
    .install_sql(&AuditLog::new())
}

pub(crate) const PLAIN: Variant = Variant {
    name: "plain",
    audited: false,
    suffix: "plain",
    install: |_| String::new(),
};

pub(crate) const FLOOR: Variant = Variant {
    name: "floor",
    audited: false,
    suffix: "floor",
    install: |t| {
        format!(
            "CREATE TRIGGER floor AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION floor_trigger();"
        )
    },
};

/// The default design: `TriggerLevel::Auto`.
pub(crate) const AUTO: Variant = Variant {
    name: "pg-audit",
    audited: true,
    suffix: "auto",
    install: |t| pg_audit(t, |s| s),
};

pub(crate) const ROW: Variant = Variant {
    name: "pg-audit row",
    audited: true,
    suffix: "row",
    install: |t| pg_audit(t, |s| s.level(TriggerLevel::Row)),
};

pub(crate) const STATEMENT: Variant = Variant {
    name: "pg-audit statement",
    audited: true,
    suffix: "statement",
    install: |t| pg_audit(t, |s| s.level(TriggerLevel::Statement)),
};

const AUTO_TRACKED: Variant = Variant {
    name: "pg-audit",
    audited: true,
    suffix: "auto_tracked",
    install: |t| pg_audit(t, |s| s.track_only(["name", "email"])),
};

const ROW_TRACKED: Variant = Variant {
    name: "pg-audit row",
    audited: true,
    suffix: "row_tracked",
    install: |t| {
        pg_audit(t, |s| {
            s.level(TriggerLevel::Row).track_only(["name", "email"])
        })
    },
};

const STATEMENT_TRACKED: Variant = Variant {
    name: "pg-audit statement",
    audited: true,
    suffix: "statement_tracked",
    install: |t| {
        pg_audit(t, |s| {
            s.level(TriggerLevel::Statement)
                .track_only(["name", "email"])
        })
    },
};

/// Two columns masked (`email`, `description`): a digest each per row, and the check that the
/// table still has them.
const MASKED: Variant = Variant {
    name: "pg-audit masked",
    audited: true,
    suffix: "masked",
    install: |t| pg_audit(t, |s| s.mask(["email", "description"])),
};

/// Two columns excluded: the check that the table still has them, and nothing else.
const EXCLUDED: Variant = Variant {
    name: "pg-audit excluded",
    audited: true,
    suffix: "excluded",
    install: |t| pg_audit(t, |s| s.exclude_fields(["email", "description"])),
};

/// The variants of the main workloads; with `designs`, also each trigger level on its own;
/// with `masks`, masked and excluded columns.
pub(crate) fn variants(designs: bool, masks: bool) -> Vec<Variant> {
    let mut out = if designs {
        vec![PLAIN, FLOOR, AUTO, ROW, STATEMENT]
    } else {
        vec![PLAIN, FLOOR, AUTO]
    };
    if masks {
        out.extend([EXCLUDED, MASKED]);
    }
    out
}

/// The variants of the "UPDATE of no audited column" workload (tracking `name`, `email`).
pub(crate) fn tracked_variants(designs: bool) -> Vec<Variant> {
    if designs {
        vec![PLAIN, AUTO_TRACKED, ROW_TRACKED, STATEMENT_TRACKED]
    } else {
        vec![PLAIN, AUTO_TRACKED]
    }
}
