//! pg-audit's installs as migrations, for every runtime: the log's migration, then one per
//! audited table, each with a version that carries a hash of its SQL (so a changed
//! configuration or a new release is a new, pending migration), the SQL up and down, and as
//! migration files in Diesel's or sqlx's layout.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use pg_audit::{AuditLog, TriggerSpec, dollar_quote, quote_literal};

/// The advisory lock key pg-audit's migrations serialise on ("pgaudit" in ASCII).
pub const MIGRATION_LOCK_KEY: i64 = 0x0070_6761_7564_6974;

/// The statement taking pg-audit's migration lock for the session (every runtime's migrations
/// serialise on it).
pub fn session_lock_sql() -> String {
    format!("SELECT pg_catalog.pg_advisory_lock({MIGRATION_LOCK_KEY})")
}

/// The statement releasing [`session_lock_sql`]'s lock.
pub fn session_unlock_sql() -> String {
    format!("SELECT pg_catalog.pg_advisory_unlock({MIGRATION_LOCK_KEY})")
}

/// `sql` after taking pg-audit's migration lock for its transaction.
pub fn xact_locked(sql: &str) -> String {
    format!("SELECT pg_catalog.pg_advisory_xact_lock({MIGRATION_LOCK_KEY});\n{sql}")
}

/// The migrations, in the order they run: the log, then each table's (sorted by table). Each
/// table comes with what declared it (a model's name), for the description.
pub fn plan<'a>(
    log: &AuditLog,
    tables: impl IntoIterator<Item = (Option<&'a str>, TriggerSpec)>,
) -> Vec<SqlMigration> {
    let mut out = vec![log_migration(log)];
    let mut tables: Vec<_> = tables.into_iter().collect();
    tables.sort_by(|(_, a), (_, b)| a.table().cmp(b.table()));
    out.extend(
        tables
            .iter()
            .map(|(by, spec)| table_migration(spec, log, *by)),
    );
    out
}

/// The migration creating `log`.
pub fn log_migration(log: &AuditLog) -> SqlMigration {
    SqlMigration::new(
        "00000000000001",
        "log",
        "log".to_owned(),
        format!("pg-audit: the audit log {}", log.table()),
        log.create_sql(),
        drop_log_if_empty(log),
    )
}

/// The migration installing `spec` on its table; `declared_by` names what declared it (a
/// model), for the description.
pub fn table_migration(
    spec: &TriggerSpec,
    log: &AuditLog,
    declared_by: Option<&str>,
) -> SqlMigration {
    let table = spec.table();
    let key = format!(
        "{}.{}",
        table.schema.as_ref().map_or("", |s| s.as_str()),
        table.name.as_str()
    );
    let slug: String = table
        .name
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    SqlMigration::new(
        "00000000000002",
        &hash(&key),
        slug,
        match declared_by {
            Some(model) => format!("pg-audit: audit triggers on {table} (model `{model}`)"),
            None => format!("pg-audit: audit triggers on {table}"),
        },
        spec.install_sql(log),
        spec.uninstall_sql(log),
    )
}

/// Dropping the log would destroy the audit trail: only an empty log is dropped, and only
/// when it has no archived partitions, seals or redactions either.
pub(crate) fn drop_log_if_empty(log: &AuditLog) -> String {
    let trail: Vec<String> = [
        log.table().clone(),
        log.archives_table(),
        log.seals_table(),
        log.redactions_table(),
    ]
    .iter()
    .map(|t| quote_literal(&t.to_string()).expect("no NUL"))
    .collect();
    let check = format!(
        "
DECLARE
    tbl regclass;
    n bigint;
BEGIN
    FOREACH tbl IN ARRAY ARRAY[{}]::regclass[] LOOP
        IF tbl IS NOT NULL THEN
            EXECUTE 'SELECT count(*) FROM ' || tbl::text INTO n;
            IF n > 0 THEN
                RAISE EXCEPTION 'pg-audit: % holds % rows of the audit trail; it is not dropped by a migration revert', tbl, n
                    USING HINT = 'Archive the rows (pg_dump -t), then drop the log by hand if that is really meant.';
            END IF;
        END IF;
    END LOOP;
END
",
        trail
            .iter()
            .map(|t| format!("pg_catalog.to_regclass({t})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    format!("DO {};\n{}", dollar_quote(&check), log.drop_sql())
}

fn hash(text: &str) -> String {
    // FNV-1a, 32 bits: short, stable across releases and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// One migration: SQL to install and SQL to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlMigration {
    /// What every version of this migration starts with: the same log, or the same table.
    family: String,
    version: String,
    slug: String,
    description: String,
    up: String,
    down: String,
}

impl SqlMigration {
    fn new(
        prefix: &str,
        subject: &str,
        slug: String,
        description: String,
        up: String,
        down: String,
    ) -> Self {
        // Diesel stores versions in a varchar(50): 14 + 10 + 8 + 1 + 8 = 41 characters.
        let family = format!("{prefix}_pg_audit_{subject}_");
        SqlMigration {
            version: format!("{family}{}", hash(&up)),
            family,
            slug,
            description,
            up,
            down,
        }
    }

    /// The version Diesel records: `00000000000001_pg_audit_log_<hash of the SQL>` for the
    /// log, `00000000000002_pg_audit_<hash of the table>_<hash of the SQL>` for a table.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What every version of the same migration starts with (the version without the SQL's
    /// hash): installing one version forgets the others.
    pub fn family(&self) -> &str {
        &self.family
    }

    /// The same version as a number, for runtimes that record numbers (sqlx): the prefix
    /// (1 the log, 2 a table) times 10^17, plus the table's hash (its low 24 bits) times
    /// 2^32, plus the SQL's hash. The log's sort before the tables'.
    pub fn number(&self) -> i64 {
        let (base, sql) = self.number_parts();
        base + sql
    }

    /// The numbers every version of this migration lies in, [`number`](Self::number)'s family.
    pub fn number_family(&self) -> std::ops::RangeInclusive<i64> {
        let (base, _) = self.number_parts();
        base..=base + i64::from(u32::MAX)
    }

    fn number_parts(&self) -> (i64, i64) {
        let mut parts = self.version.split('_');
        let prefix: i64 = parts.next().and_then(|p| p.parse().ok()).expect("a number");
        let subject = parts.nth(2).expect("a subject");
        let sql = self.version.rsplit('_').next().expect("a hash");
        let subject = u32::from_str_radix(subject, 16).map_or(0, |h| h & 0x00ff_ffff);
        let sql = u32::from_str_radix(sql, 16).expect("a hex hash");
        (
            prefix * 100_000_000_000_000_000 + (i64::from(subject) << 32),
            i64::from(sql),
        )
    }

    /// A short name for what it is about: `log`, or the audited table's name.
    pub fn slug(&self) -> &str {
        &self.slug
    }

    /// What it installs, in words.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The SQL that installs.
    pub fn up_sql(&self) -> &str {
        &self.up
    }

    /// The SQL that removes what `up_sql` installed.
    pub fn down_sql(&self) -> &str {
        &self.down
    }

    /// `up_sql` for a runtime recording versions in `table` (its column `version`, text or a
    /// number as [`number`](Self::number) when `numbered`): run under the migrations' advisory
    /// lock, and forgetting the other recorded versions of the same migration. What is
    /// installed is this one, so a later release declaring an earlier configuration again (a
    /// deploy rolled back) finds its version pending and installs it.
    pub fn up_forgetting_others(&self, table: &str, numbered: bool) -> String {
        let others = if numbered {
            let family = self.number_family();
            format!(
                "DELETE FROM {table} WHERE version BETWEEN {} AND {} AND version <> {};",
                family.start(),
                family.end(),
                self.number()
            )
        } else {
            format!(
                "DELETE FROM {table} WHERE pg_catalog.starts_with(version, {}) AND version <> {};",
                quote_literal(&self.family).expect("no NUL"),
                quote_literal(&self.version).expect("no NUL"),
            )
        };
        xact_locked(&format!("{}\n{others}", self.up))
    }
}

impl fmt::Display for SqlMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.version, self.description)
    }
}

/// How migration files are laid out in a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// Diesel's: a directory `2026-11-28-101500_pg_audit_<what>` holding `up.sql` and
    /// `down.sql` (`diesel migration run`, `embed_migrations!`).
    Diesel,
    /// sqlx's reversible files: `20261128101500_pg_audit_<what>.up.sql` and `.down.sql`
    /// (`sqlx migrate run`, `sqlx::migrate!`).
    Sqlx,
}

/// Writes each of `migrations` whose SQL is not what `dir` last holds for it as migration
/// files in `layout`, and returns the paths written (a directory for Diesel, the `up` file for
/// sqlx). Running it again without a configuration change writes nothing; after a change it
/// writes only the changed migrations, versioned by the time now (one second apart, so they
/// keep their order) and after every migration already there. Going back to an earlier
/// configuration (A, then B, then A again) writes A again, as the newest. A new version's
/// `down` puts back the version before it (reverting B reinstalls A); the first one's removes
/// what it installed.
pub fn write_files(
    dir: impl AsRef<Path>,
    layout: Layout,
    migrations: &[SqlMigration],
) -> Result<Vec<PathBuf>, FileError> {
    let dir = dir.as_ref();
    let existing = written(dir, layout)?;
    let latest = existing.iter().map(|w| w.version).max();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut written = Vec::new();
    for migration in migrations {
        // What the folder installs last for the same log or table.
        let previous = existing
            .iter()
            .filter(|w| w.description == migration.description())
            .max_by_key(|w| w.version);
        if previous.is_some_and(|p| p.up == migration.up_sql()) {
            continue;
        }
        let down = previous.map_or(migration.down_sql(), |p| p.up.as_str());
        let n = written.len() as u64;
        let header = format!(
            "-- {}\n-- Generated by pg-audit; do not edit: regenerate.\n\n",
            migration.description()
        );
        let files = match layout {
            Layout::Diesel => {
                // Diesel identifies a migration by its date: every new one is later than any there.
                let stamp = timestamp(now.max(latest.map_or(0, |t| t + 1)) + n, "-", "-");
                let path = dir.join(format!("{stamp}_pg_audit_{}", migration.slug()));
                fs::create_dir_all(&path).map_err(|e| FileError::new(&path, e))?;
                written.push(path.clone());
                [path.join("up.sql"), path.join("down.sql")]
            }
            Layout::Sqlx => {
                // sqlx orders by the number: after every one there, timestamps or not.
                let stamp: u64 = timestamp(now, "", "").parse().expect("digits");
                let version = stamp.max(latest.map_or(0, |v| v + 1)) + n;
                fs::create_dir_all(dir).map_err(|e| FileError::new(dir, e))?;
                let base = format!("{version}_pg_audit_{}", migration.slug());
                let up = dir.join(format!("{base}.up.sql"));
                written.push(up.clone());
                [up, dir.join(format!("{base}.down.sql"))]
            }
        };
        for (file, sql) in files.iter().zip([migration.up_sql(), down]) {
            fs::write(file, format!("{header}{sql}")).map_err(|e| FileError::new(file, e))?;
        }
    }
    Ok(written)
}

/// A migration pg-audit wrote in a folder: its version (a Diesel migration's date in seconds,
/// a sqlx migration's number), what it installs in words, and its `up` SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The version: a Diesel migration's date in seconds, a sqlx migration's number.
    pub version: u64,
    /// What it installs, in words ([`SqlMigration::description`]).
    pub description: String,
    /// Its `up` SQL, without pg-audit's header.
    pub up: String,
}

/// The migrations pg-audit wrote in `dir` (none when it does not exist); the application's own
/// count for their versions only (every migration is written after them).
pub fn written(dir: &Path, layout: Layout) -> Result<Vec<Written>, FileError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FileError::new(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let prefix = name.split('_').next().unwrap_or("");
        let (version, up) = match layout {
            Layout::Diesel => (parse_timestamp(prefix), entry.path().join("up.sql")),
            Layout::Sqlx if name.ends_with(".down.sql") => continue,
            Layout::Sqlx => (prefix.parse::<u64>().ok(), entry.path()),
        };
        let text = fs::read_to_string(&up).unwrap_or_default();
        let (description, body) = match text.split_once("\n\n") {
            Some((header, body)) if header.contains("-- Generated by pg-audit") => (
                header
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("-- "))
                    .unwrap_or_default()
                    .to_owned(),
                body.to_owned(),
            ),
            // The application's own: only its version counts.
            _ => (String::new(), String::new()),
        };
        out.push(Written {
            version: version.unwrap_or(0),
            description,
            up: body,
        });
    }
    Ok(out)
}

/// Reads `YYYY-MM-DD-HHMMSS` back into seconds since the epoch.
fn parse_timestamp(stamp: &str) -> Option<u64> {
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 14 || stamp.len() != 17 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits[r].parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(8..10)?, num(10..12)?, num(12..14)?);
    let days = pg_audit::calendar::days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + hour * 3_600 + minute * 60 + second).ok()
}

/// `secs` as a UTC date and time, `YYYY<d>MM<d>DD<t>HHMMSS`: `diesel migration generate`'s
/// names with `-`, sqlx's with nothing.
fn timestamp(secs: u64, date: &str, time: &str) -> String {
    let (year, month, day) = pg_audit::calendar::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}{date}{month:02}{date}{day:02}{time}{:02}{:02}{:02}",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// A migration file or folder that could not be read or written.
#[derive(Debug)]
pub struct FileError {
    /// The path.
    pub path: PathBuf,
    /// The error.
    pub source: std::io::Error,
}

impl FileError {
    fn new(path: &Path, source: std::io::Error) -> Self {
        FileError {
            path: path.to_owned(),
            source,
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write {}", self.path.display())
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0, "-", "-"), "1970-01-01-000000");
        assert_eq!(timestamp(951_782_400, "-", "-"), "2000-02-29-000000");
        assert_eq!(timestamp(1_795_846_500, "-", "-"), "2026-11-28-061500");
        assert_eq!(timestamp(1_795_846_500, "", ""), "20261128061500");
        for t in [0, 951_782_400, 1_795_846_500, 4_102_444_799] {
            assert_eq!(parse_timestamp(&timestamp(t, "-", "-")), Some(t));
        }
        assert_eq!(parse_timestamp("00000000000000"), None);
    }

    #[test]
    fn numbers_order_the_log_first_and_keep_a_table_family() {
        let log = AuditLog::new();
        let spec = |t: &str, cols: &[&str]| {
            TriggerSpec::builder(pg_audit::QualifiedName::parse(t).unwrap())
                .exclude_fields(cols.iter().copied())
                .build()
                .unwrap()
        };
        let plan = plan(&log, [(None, spec("b", &["x"])), (None, spec("a", &["x"]))]);
        assert_eq!(plan[0].slug(), "log");
        assert_eq!((plan[1].slug(), plan[2].slug()), ("a", "b"));
        assert!(plan[0].number() < plan[1].number());
        assert!(plan.iter().all(|m| m.number() > 0));
        let changed = table_migration(&spec("a", &["y"]), &log, None);
        assert_ne!(changed.number(), plan[1].number());
        assert_eq!(changed.number_family(), plan[1].number_family());
        assert!(changed.number_family().contains(&changed.number()));
        assert!(!plan[2].number_family().contains(&changed.number()));
    }
}
