//! Throwaway PostgreSQL servers and databases for tests, examples and benchmarks.
//!
//! Unix only (Linux and macOS).
//!
//! ```no_run
//! let server = pg_audit_tempdb::shared()?;
//! let db = server.create_database("my_test")?; // dropped with `db`
//! // connect any client to db.url() ...
//! db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")?;
//! # Ok::<(), pg_audit_tempdb::Error>(())
//! ```
//!
//! [`shared`] gives a server every test process on the machine can share: with `DATABASE_URL`
//! set it is that server; otherwise a cluster is created (once) from the local PostgreSQL
//! binaries under the system temp directory and started on a free loopback port, then reused by
//! later runs. [`Server::create_database`] gives each test a database of its own, dropped when
//! the handle is, so tests run in parallel without seeing each other.
//!
//! The binaries are found through `PG_BINDIR`, `pg_config --bindir`, `initdb` on `PATH`, the
//! newest `/usr/lib/postgresql/*/bin` (Debian, Ubuntu), `/usr/pgsql-*/bin` (Red Hat), Homebrew's
//! `postgresql@*` kegs, or Postgres.app. PostgreSQL refuses to run as root: when run as root,
//! the server runs as the `postgres` system user (no sudo needed).
//!
//! Databases are created and dropped over the wire protocol, so with `DATABASE_URL` nothing but
//! the server is needed; [`Server::psql`] alone runs the `psql` program.
//!
//! The shared cluster keeps running after the tests, so the next run starts in milliseconds.
//! Stop it with `pg_ctl stop -D <dir>/data` (the directory is printed when it starts), or
//! delete the directory to start afresh.
//!
//! [`Cluster::start_private`] starts a server of one's own (benchmarks, crash tests), stopped
//! and deleted on drop.

use std::fmt;
use std::fs::{self, File};
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::signal::Signal;

/// What went wrong starting or using a throwaway server, in words that say how to fix it.
///
/// Its `Debug` output is the message too, so `.unwrap()` and `fn main() -> Result<..>` print
/// the words rather than a struct.
#[derive(Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(message: impl Into<String>) -> Error {
    Error(message.into())
}

/// Settings for test and example servers: durability off (a test database is thrown away, and
/// a crashed server still recovers from the WAL the OS holds), room for parallel tests.
pub const TEST_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "300"),
    ("shared_buffers", "256MB"),
    ("max_wal_size", "4GB"),
    ("log_min_messages", "warning"),
    ("log_min_error_statement", "panic"),
];

/// A PostgreSQL server to create databases in.
#[derive(Debug)]
pub struct Server {
    /// `postgres://` URL of a database to run administrative statements from.
    admin_url: String,
    bindir: Option<PathBuf>,
    local: bool,
}

/// The server shared by every test on this machine (see the crate docs).
pub fn shared() -> Result<&'static Server, Error> {
    static SHARED: OnceLock<Result<Server, Error>> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Ok(Server {
                admin_url: url,
                bindir: find_bindir().ok(),
                local: false,
            }),
            _ => start_shared_cluster(),
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Server {
    /// The URL administrative statements run against.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The directory of the server binaries (`psql`, `pgbench`, ...), when known.
    pub fn bindir(&self) -> Option<&Path> {
        self.bindir.as_deref()
    }

    /// Creates an empty database named after `hint` (and this process), dropped when the handle
    /// is dropped.
    pub fn create_database(&self, hint: &str) -> Result<TempDatabase<'_>, Error> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let hint: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let mut name = format!("{DB_PREFIX}{}_{n}_{hint}", std::process::id());
        name.truncate(63);
        self.batch_execute(&self.admin_url, &format!("CREATE DATABASE \"{name}\""))?;
        Ok(TempDatabase {
            url: url_with_database(&self.admin_url, &name)?,
            name,
            server: self,
        })
    }

    /// Runs `sql` (one or more statements, as one simple query) against `url` over the wire
    /// protocol. Several statements run in one implicit transaction. (Named like diesel's and
    /// postgres's `batch_execute`, and not `execute`, which diesel-async's `RunQueryDsl`
    /// would take over for every type.)
    pub fn batch_execute(&self, url: &str, sql: &str) -> Result<(), Error> {
        off_runtime(|| {
            let mut client = connect(url)?;
            client
                .batch_execute(sql)
                .map_err(|e| err(format!("{}: {}", first_line(sql), db_message(&e))))
        })
    }

    /// Runs `sql` with the `psql` program against `url`, statement by statement, stopping at
    /// the first error; returns what it printed, unaligned, one row per line. Needs `psql`
    /// (from the server's binaries, else on `PATH`).
    pub fn psql(&self, url: &str, sql: &str) -> Result<String, Error> {
        psql(self.bindir.as_deref(), url, sql)
    }
}

/// Runs `f` on a thread of its own: the `postgres` client blocks on a runtime of its own,
/// which tokio refuses inside another (a `#[tokio::test]` creating or dropping a database).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Server {
    /// The server's version, as `SHOW server_version` gives it up to the first space (`15.20`).
    pub fn server_version(&self) -> Result<String, Error> {
        off_runtime(|| {
            let mut client = connect(&self.admin_url)?;
            let row = client
                .query_one("SHOW server_version", &[])
                .map_err(|e| err(format!("SHOW server_version: {}", db_message(&e))))?;
            let version: String = row.get(0);
            Ok(version
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned())
        })
    }
}

/// The version of the server binaries in `bindir` (`15.20`), from `postgres --version`.
fn binary_version(bindir: &Path) -> Result<String, Error> {
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| err(format!("cannot run postgres --version: {e}")))?;
    // "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)": the third field.
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .ok_or_else(|| err("cannot read the version from postgres --version"))
}

fn connect(url: &str) -> Result<postgres::Client, Error> {
    postgres::Client::connect(url, postgres::NoTls).map_err(|e| {
        err(format!(
            "cannot connect to {}: {}",
            redact(url),
            db_message(&e)
        ))
    })
}

/// The server's message (with its detail and hint) rather than the client's summary of it.
fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            for extra in [db.detail(), db.hint()].into_iter().flatten() {
                text.push_str("; ");
                text.push_str(extra);
            }
            text
        }
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or("")
}

/// A connection string with its password replaced, for messages: a URL's, or a
/// `key=value` string's `password=...` (quoted or not).
fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return redact_keyword_password(url);
    };
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let Some(at) = url[start..end].rfind('@').map(|i| start + i) else {
        return url.to_owned();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// `host=h password=secret user=u` with the password's value replaced.
fn redact_keyword_password(conninfo: &str) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    while let Some(at) = rest.find("password") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let after_key = from["password".len()..].trim_start();
        let boundary = before.is_empty() || before.ends_with(char::is_whitespace);
        let Some(value) = after_key.strip_prefix('=').filter(|_| boundary) else {
            out.push_str("password");
            rest = &from["password".len()..];
            continue;
        };
        let value = value.trim_start();
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote that is not escaped.
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = i + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            1 + end
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str("password=***");
        rest = &value[len.min(value.len())..];
    }
    out.push_str(rest);
    out
}

const DB_PREFIX: &str = "pg_audit_test_";

/// A database of one's own, dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct TempDatabase<'a> {
    url: String,
    name: String,
    server: &'a Server,
}

impl TempDatabase<'_> {
    /// The database's `postgres://` URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server it is on.
    pub fn server(&self) -> &Server {
        self.server
    }

    /// Runs `sql` in this database over the wire protocol (see [`Server::batch_execute`]).
    pub fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.server.batch_execute(&self.url, sql)
    }

    /// Runs `sql` in this database with the `psql` program (see [`Server::psql`]).
    pub fn psql(&self, sql: &str) -> Result<String, Error> {
        self.server.psql(&self.url, sql)
    }
}

impl Drop for TempDatabase<'_> {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = self.server.batch_execute(&self.server.admin_url, &drop) {
            eprintln!(
                "pg-audit-tempdb: could not drop database {}: {e}",
                self.name
            );
        }
    }
}

/// Replaces the database of a `postgres://` or `postgresql://` URL.
pub fn url_with_database(url: &str, database: &str) -> Result<String, Error> {
    let scheme_end = url
        .find("://")
        .filter(|_| url.starts_with("postgres://") || url.starts_with("postgresql://"))
        .ok_or_else(|| {
            err(format!(
                "DATABASE_URL must be a postgres:// URL, not `{url}`"
            ))
        })?
        + 3;
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    Ok(format!("{}/{database}{query}", &base[..authority_end]))
}

/// A PostgreSQL cluster run from the local binaries.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    remove_on_drop: bool,
}

impl Cluster {
    /// Creates and starts a cluster in a new directory, with [`TEST_SETTINGS`] overridden by
    /// `settings`. It is stopped and its directory deleted when dropped.
    pub fn start_private(name: &str, settings: &[(&str, &str)]) -> Result<Cluster, Error> {
        let bindir = find_bindir()?;
        let dir = std::env::temp_dir().join(format!(
            "pg-audit-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut cluster = Cluster {
            dir,
            bindir,
            port: 0,
            run_as: run_as()?,
            remove_on_drop: true,
        };
        cluster.init(settings)?;
        cluster.start()?;
        Ok(cluster)
    }

    /// The cluster's directory (data in `data/`, server log in `server.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server binaries' directory.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The URL of `database` on this cluster, as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A [`Server`] handle on this cluster for creating databases.
    pub fn server(&self) -> Server {
        Server {
            admin_url: self.url("postgres"),
            bindir: Some(self.bindir.clone()),
            local: true,
        }
    }

    /// The postmaster's process id, while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.current_dir(&self.dir);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn init(&mut self, settings: &[(&str, &str)]) -> Result<(), Error> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| err(format!("cannot create {}: {e}", self.dir.display())))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid)).map_err(|e| {
                err(format!(
                    "cannot hand {} to the postgres user: {e}",
                    self.dir.display()
                ))
            })?;
        }
        let data = self.data();
        if data.exists() {
            fs::remove_dir_all(&data).map_err(|e| {
                err(format!(
                    "cannot remove a half-made cluster at {}: {e}",
                    data.display()
                ))
            })?;
        }
        let output = self
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-D",
            ])
            .arg(&data)
            .output()
            .map_err(|e| err(format!("cannot run initdb: {e}")))?;
        check(&output, "initdb")?;
        let mut conf = String::from("\n# pg-audit-tempdb\nlisten_addresses = '127.0.0.1'\n");
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.dir.display()
        ));
        for (name, value) in TEST_SETTINGS
            .iter()
            .filter(|(n, _)| !settings.iter().any(|(m, _)| m == n))
        {
            conf.push_str(&format!("{name} = '{value}'\n"));
        }
        for (name, value) in settings {
            conf.push_str(&format!("{name} = '{value}'\n"));
        }
        fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| err(format!("cannot write postgresql.conf: {e}")))
    }

    /// Starts the server on a free loopback port (again on its port when restarted), retrying
    /// on another if a process takes the port first.
    pub fn start(&mut self) -> Result<(), Error> {
        let mut last = String::new();
        for attempt in 0..5 {
            // A restart keeps its port, so clients reconnect to the same URL.
            let port = if attempt == 0 && self.port != 0 {
                self.port
            } else {
                free_port()?
            };
            let output = self
                .command("pg_ctl")
                .args(["start", "-w", "-t", "120", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-o", &format!("-p {port}")])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| err(format!("cannot run pg_ctl: {e}")))?;
            if output.status.success() {
                self.port = port;
                return Ok(());
            }
            last = format!(
                "{}{}\nserver log ({}):\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.dir.join("server.log").display(),
                fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
        }
        Err(err(format!("PostgreSQL did not start: {last}")))
    }

    /// Stops the server (`mode`: `smart`, `fast` or `immediate`).
    pub fn stop(&self, mode: &str) -> Result<(), Error> {
        let output = self
            .command("pg_ctl")
            .args(["stop", "-w", "-m", mode, "-D"])
            .arg(self.data())
            .output()
            .map_err(|e| err(format!("cannot run pg_ctl: {e}")))?;
        check(&output, "pg_ctl stop")
    }

    /// Kills the server like a crash: SIGKILL to the postmaster and every one of its
    /// children, then waits for them to be gone. [`Cluster::start`] then recovers from the WAL.
    pub fn kill(&self) -> Result<(), Error> {
        let postmaster = self
            .postmaster_pid()
            .ok_or_else(|| err("the server is not running"))?;
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster)?);
        for &pid in &pids {
            // A child may exit on its own between the listing and the signal.
            let _ = signal(pid, Some(Signal::SIGKILL));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while pids.iter().any(|&p| is_alive(p)) {
            if std::time::Instant::now() > deadline {
                return Err(err(format!(
                    "the killed server processes {pids:?} did not exit"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// Turns TLS on and lets TCP connections in over TLS only (`hostssl` rules, and a
    /// `hostnossl` rule that rejects; the Unix socket stays open, as [`Cluster::socket_conninfo`]
    /// reaches it). The server's certificate names `localhost` and `127.0.0.1` and is signed
    /// by a root made here ([`Tls::root`]). Needs the `openssl` program.
    pub fn require_tls(&self) -> Result<Tls, Error> {
        let tls = Tls::make(&self.dir.join("tls"))?;
        tls.serve(self, "server")?;
        fs::write(
            self.data().join("pg_hba.conf"),
            "# pg-audit-tempdb: TLS only over TCP\n\
             local all all trust\n\
             hostnossl all all all reject\n\
             hostssl all all all trust\n\
             hostssl replication all all trust\n",
        )
        .map_err(|e| err(format!("cannot write pg_hba.conf: {e}")))?;
        self.run_psql("ALTER SYSTEM SET ssl = on")?;
        self.run_psql("SELECT pg_catalog.pg_reload_conf()")?;
        // The reload is signalled; wait until new sessions see it.
        for _ in 0..100 {
            if self.run_psql("SHOW ssl")?.trim() == "on" {
                return Ok(tls);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(err("the server did not turn TLS on"))
    }

    /// A libpq `key=value` string for `database` over the cluster's Unix socket, as the
    /// `postgres` superuser (open after [`Cluster::require_tls`]).
    pub fn socket_conninfo(&self, database: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={database}",
            self.dir.display(),
            self.port
        )
    }

    /// Runs `sql` with psql over the Unix socket as the superuser; returns what it printed.
    fn run_psql(&self, sql: &str) -> Result<String, Error> {
        psql(Some(&self.bindir), &self.socket_conninfo("postgres"), sql)
    }

    fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .args(["status", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = self.stop("immediate");
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn start_shared_cluster() -> Result<Server, Error> {
    let bindir = find_bindir()?;
    let major = major_version(&bindir)?;
    let run_as = run_as()?;
    let uid = nix::unistd::getuid().as_raw();
    let dir = std::env::temp_dir().join(format!("pg-audit-tempdb-{uid}-pg{major}"));
    // One process at a time creates or starts the cluster; the others then find it running.
    let lock_path = std::env::temp_dir().join(format!("pg-audit-tempdb-{uid}-pg{major}.lock"));
    let lock = File::create(&lock_path)
        .map_err(|e| err(format!("cannot create {}: {e}", lock_path.display())))?;
    lock.lock()
        .map_err(|e| err(format!("cannot lock {}: {e}", lock_path.display())))?;

    let port_file = dir.join("port");
    let mut cluster = Cluster {
        port: fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0),
        dir,
        bindir: bindir.clone(),
        run_as,
        remove_on_drop: false,
    };
    let server = cluster.server();
    let running = cluster.port != 0 && cluster.is_running();
    // A server still running the binaries of before a package upgrade loads the new ones'
    // libraries (plpgsql) and fails: restart it on the installed version.
    let current = running
        && server
            .server_version()
            .is_ok_and(|running| running == binary_version(&bindir).unwrap_or_default());
    if running && !current {
        eprintln!(
            "pg-audit-tempdb: the shared server runs other binaries than {}: restarting it",
            bindir.display()
        );
    }
    if !current {
        if cluster.is_running() {
            let _ = cluster.stop("fast");
        }
        if !cluster.data().join("PG_VERSION").exists() {
            eprintln!(
                "pg-audit-tempdb: creating a PostgreSQL {major} cluster for tests in {}",
                cluster.dir.display()
            );
            cluster.init(&[])?;
        }
        cluster.start()?;
        fs::write(&port_file, cluster.port.to_string())
            .map_err(|e| err(format!("cannot write {}: {e}", port_file.display())))?;
        eprintln!(
            "pg-audit-tempdb: PostgreSQL {major} running on 127.0.0.1:{} (data in {}; it keeps running for the next test run)",
            cluster.port,
            cluster.dir.display()
        );
    }
    let server = cluster.server();
    drop_stale_databases(&server);
    drop(lock);
    Ok(server)
}

/// Drops test databases and roles left by processes that died before dropping them. Test
/// roles are named `audit_test_role_<pid>_...`.
fn drop_stale_databases(server: &Server) {
    if !server.local {
        return;
    }
    off_runtime(|| drop_stale(server));
}

fn drop_stale(server: &Server) {
    let Ok(mut client) = connect(&server.admin_url) else {
        return;
    };
    let mut stale = |catalog: &str, column: &str, prefix: &str| -> Vec<String> {
        let query = format!("SELECT {column}::text FROM {catalog} WHERE {column} LIKE $1");
        let Ok(rows) = client.query(&query, &[&format!("{prefix}%")]) else {
            return Vec::new();
        };
        rows.iter()
            .map(|row| row.get::<_, String>(0))
            .filter(|name| {
                let pid = name[prefix.len()..].split('_').next().unwrap_or("");
                pid.parse::<u32>().is_ok_and(|pid| !is_alive(pid))
            })
            .collect()
    };
    let databases = stale("pg_database", "datname", DB_PREFIX);
    let roles = stale("pg_roles", "rolname", "audit_test_role_");
    for name in databases {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = client.batch_execute(&drop);
    }
    for name in roles {
        let _ = client.batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\""));
    }
}

/// Whether a process with this id exists (signal 0 reaches it, or it belongs to another user).
fn is_alive(pid: u32) -> bool {
    !matches!(signal(pid, None), Err(nix::errno::Errno::ESRCH))
}

fn signal(pid: u32, signal: Option<Signal>) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

/// The processes whose parent is `parent`, from `ps` (POSIX options, so Linux and macOS alike).
fn children_of(parent: u32) -> Result<Vec<u32>, Error> {
    let output = Command::new("ps")
        .args(["-A", "-o", "pid=", "-o", "ppid="])
        .output()
        .map_err(|e| err(format!("cannot run ps to list the server's processes: {e}")))?;
    check(&output, "ps")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(str::parse::<u32>);
            match (fields.next(), fields.next()) {
                (Some(Ok(pid)), Some(Ok(ppid))) if ppid == parent => Some(pid),
                _ => None,
            }
        })
        .collect())
}

fn psql(bindir: Option<&Path>, url: &str, sql: &str) -> Result<String, Error> {
    let program = bindir.map_or_else(|| PathBuf::from("psql"), |b| b.join("psql"));
    let mut child = Command::new(&program)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {}: {e}", program.display())))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(sql.as_bytes())
        .map_err(|e| err(format!("cannot write to psql: {e}")))?;
    let output = child
        .wait_with_output()
        .map_err(|e| err(format!("psql failed: {e}")))?;
    check(&output, "psql")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn check(output: &Output, what: &str) -> Result<(), Error> {
    if output.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        )))
    }
}

fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| err(format!("cannot find a free loopback port: {e}")))
}

/// When running as root, the uid and gid of the `postgres` system user to run the server as.
fn run_as() -> Result<Option<(u32, u32)>, Error> {
    if !nix::unistd::getuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        Ok(None) => Err(err(
            "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` \
             user to run it as: create one (useradd -r postgres) or run as another user",
        )),
        Err(e) => Err(err(format!("cannot look up the `postgres` user: {e}"))),
    }
}

/// Finds the directory holding `initdb`, `pg_ctl` and `psql`.
pub fn find_bindir() -> Result<PathBuf, Error> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            Err(err(format!("PG_BINDIR={} has no initdb", dir.display())))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_initdb(d))
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = KNOWN_LOCATIONS
        .iter()
        .flat_map(|(parent, prefix, bin)| {
            fs::read_dir(parent)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(move |e| {
                    let name = e.file_name().into_string().ok()?;
                    let version = name.strip_prefix(prefix)?;
                    // "15", "15.4", "@15": the major version orders them.
                    let major = version.split('.').next()?.parse().ok()?;
                    Some((major, e.path().join(bin)))
                })
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        err("no PostgreSQL server binaries (initdb) found: install PostgreSQL 13 or newer, \
             set PG_BINDIR to the directory holding initdb, or set DATABASE_URL to a running server")
    })
}

/// Where packages put versioned server binaries: (directory, entry prefix before the version,
/// binaries inside the entry).
const KNOWN_LOCATIONS: &[(&str, &str, &str)] = &[
    // Debian and Ubuntu: /usr/lib/postgresql/15/bin
    ("/usr/lib/postgresql", "", "bin"),
    // Red Hat's PGDG packages: /usr/pgsql-15/bin
    ("/usr", "pgsql-", "bin"),
    // Homebrew on Apple silicon and on Intel: /opt/homebrew/opt/postgresql@15/bin
    ("/opt/homebrew/opt", "postgresql@", "bin"),
    ("/usr/local/opt", "postgresql@", "bin"),
    // Postgres.app: /Applications/Postgres.app/Contents/Versions/15/bin
    ("/Applications/Postgres.app/Contents/Versions", "", "bin"),
];

fn major_version(bindir: &Path) -> Result<u32, Error> {
    let full = binary_version(bindir)?;
    let version: u32 = full
        .split('.')
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| err(format!("cannot read the PostgreSQL version from `{full}`")))?;
    if version < 13 {
        return Err(err(format!(
            "PostgreSQL {version} in {} is too old: pg-audit needs 13 or newer",
            bindir.display()
        )));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_their_database_replaced() {
        let u = |url| url_with_database(url, "t1").unwrap();
        assert_eq!(u("postgres://u:p@h:5/db"), "postgres://u:p@h:5/t1");
        assert_eq!(u("postgresql://h"), "postgresql://h/t1");
        assert_eq!(
            u("postgres://h/db?sslmode=disable"),
            "postgres://h/t1?sslmode=disable"
        );
        assert!(url_with_database("mysql://h/db", "x").is_err());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db?x=a:b@c"), "postgres://h/db?x=a:b@c");
        assert_eq!(
            redact("host=h password=hunter2 user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            redact(r"password = 'it\'s x' host=h"),
            "password=*** host=h"
        );
        assert_eq!(redact("host=h passwordless=1"), "host=h passwordless=1");
    }

    #[test]
    fn errors_debug_print_as_their_message() {
        assert_eq!(format!("{:?}", err("no initdb")), "no initdb");
    }

    #[test]
    fn work_off_the_runtime_returns_its_result() {
        assert_eq!(off_runtime(|| 6 * 7), 42);
    }

    #[test]
    fn this_process_is_alive_and_its_children_are_listed() {
        assert!(is_alive(std::process::id()));
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(
            children_of(std::process::id())
                .unwrap()
                .contains(&child.id())
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_alive(child.id()));
    }
}

/// Certificates made for a cluster that takes TLS only ([`Cluster::require_tls`]): a root that
/// signed the server's certificate, another root that signed nothing the server shows, and a
/// certificate for another name ([`Tls::serve_misnamed`]).
#[derive(Debug)]
pub struct Tls {
    dir: PathBuf,
}

impl Tls {
    fn make(dir: &Path) -> Result<Tls, Error> {
        fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let tls = Tls {
            dir: dir.to_owned(),
        };
        for root in ["root", "other-root"] {
            tls.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "7",
                "-subj",
                &format!("/CN=pg-audit-tempdb {root}"),
                "-keyout",
                &format!("{root}.key"),
                "-out",
                &format!("{root}.crt"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ])?;
        }
        for (name, names) in [
            ("server", "DNS:localhost,IP:127.0.0.1"),
            ("misnamed", "DNS:elsewhere.example"),
        ] {
            tls.openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=pg-audit-tempdb server",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ])?;
            fs::write(
                dir.join(format!("{name}.ext")),
                format!("subjectAltName={names}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
            )
            .map_err(|e| err(format!("cannot write {name}.ext: {e}")))?;
            tls.openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "root.crt",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-days",
                "7",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ])?;
        }
        Ok(tls)
    }

    /// The root that signed the server's certificate (PEM), for `sslrootcert`.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.crt")
    }

    /// A root that signed nothing the server shows.
    pub fn other_root(&self) -> PathBuf {
        self.dir.join("other-root.crt")
    }

    /// The server's own certificate (signed by [`Tls::root`]), as a client may pin it.
    pub fn server_certificate(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// Serves a certificate signed by [`Tls::root`] for `elsewhere.example` only, from the
    /// next connection on.
    pub fn serve_misnamed(&self, cluster: &Cluster) -> Result<(), Error> {
        self.serve(cluster, "misnamed")?;
        cluster.run_psql("SELECT pg_catalog.pg_reload_conf()")?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(())
    }

    /// Puts the certificate `name` and its key where the server reads them, its own.
    fn serve(&self, cluster: &Cluster, name: &str) -> Result<(), Error> {
        for ext in ["crt", "key"] {
            let to = cluster.data().join(format!("server.{ext}"));
            fs::copy(self.dir.join(format!("{name}.{ext}")), &to)
                .map_err(|e| err(format!("cannot copy {name}.{ext}: {e}")))?;
            if let Some((uid, gid)) = cluster.run_as {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid))
                    .map_err(|e| err(format!("cannot hand {} to the server: {e}", to.display())))?;
            }
            fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| err(format!("cannot restrict {}: {e}", to.display())))?;
        }
        Ok(())
    }

    fn openssl(&self, args: &[&str]) -> Result<(), Error> {
        let output = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .map_err(|e| {
                err(format!(
                    "cannot run openssl (install it: apt-get install openssl): {e}"
                ))
            })?;
        check(&output, "openssl")
    }
}
