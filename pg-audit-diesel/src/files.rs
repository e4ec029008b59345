//! The same migrations as files in a Diesel migrations folder, for teams that review SQL.

use std::path::{Path, PathBuf};

use pg_audit_runtime::migration::{self, Layout};

use crate::migration::AuditMigrations;

/// Writes each of `migrations` whose SQL is not already in `dir` as a Diesel migration
/// directory (`2026-11-28-101500_pg_audit_<what>/up.sql` and `down.sql`), and returns the
/// directories written. Running it again without a configuration change writes nothing; after
/// a change it writes only the changed migrations, dated now (one second apart, so they keep
/// their order). Then run them with `diesel migration run` or `embed_migrations!`, instead of
/// [`crate::migrations`].
///
/// ```no_run
/// // e.g. in a small bin of the application, run when models change:
/// pg_audit_diesel::write_migration_files("migrations", &pg_audit_diesel::migrations())?;
/// # Ok::<(), pg_audit_diesel::WriteError>(())
/// ```
pub fn write_migration_files(
    dir: impl AsRef<Path>,
    migrations: &AuditMigrations,
) -> Result<Vec<PathBuf>, WriteError> {
    let migrations = migrations.sql_migrations()?;
    migration::write_files(dir, Layout::Diesel, &migrations).map_err(|e| WriteError::Io {
        path: e.path,
        source: e.source,
    })
}

/// Why migration files could not be written.
#[derive(Debug)]
#[non_exhaustive]
pub enum WriteError {
    /// The models' configuration, displayed as it is.
    Models(crate::Error),
    /// A file or directory.
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl From<crate::Error> for WriteError {
    fn from(e: crate::Error) -> Self {
        WriteError::Models(e)
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Models(e) => e.fmt(f),
            WriteError::Io { path, .. } => write!(f, "cannot write {}", path.display()),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the message is the configuration error's own.
            WriteError::Models(e) => e.source(),
            WriteError::Io { source, .. } => Some(source),
        }
    }
}
