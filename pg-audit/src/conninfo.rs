//! Connection strings as libpq reads them, for the connections that do not go through libpq
//! (the program's tokio-postgres sessions, the capture worker's replication connection).
//!
//! [`ConnInfo::parse_with`] reads a `postgres://` URL or `key=value` pairs, then fills what
//! the string leaves out as libpq does: the `PG*` environment variables, the default socket
//! directory, the operating system's user, the password file (matched host by host). A
//! keyword libpq knows and these connections cannot honour (`requirepeer`, `sslcrl`,
//! `gssencmode=require`, a `target_session_attrs` other than `any` or `read-write`, ...) is
//! refused, never ignored: `psql` and these connections reach the same server, as the same
//! role, with the same protections, or the second does not start.
//! (`pg-audit-connect` calls it with the process's environment and the system's user name.)

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::Error;

/// The keywords libpq accepts, with the environment variable that supplies each one's default.
/// A keyword outside this list is refused, as libpq refuses it.
const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("dbname", Some("PGDATABASE")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("options", Some("PGOPTIONS")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("replication", None),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslpassword", None),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcrl", Some("PGSSLCRL")),
    ("sslcrldir", Some("PGSSLCRLDIR")),
    ("sslsni", Some("PGSSLSNI")),
    ("requirepeer", Some("PGREQUIREPEER")),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    ("krbsrvname", Some("PGKRBSRVNAME")),
    ("gsslib", Some("PGGSSLIB")),
    ("service", Some("PGSERVICE")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
];

/// Keywords whose value is one of a list: an empty value is an error (libpq's), not a default.
const ENUMERATED: &[&str] = &[
    "sslmode",
    "gssencmode",
    "channel_binding",
    "target_session_attrs",
];

/// How a connection uses TLS: libpq's `sslmode`, with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, else none (libpq's `allow` is read as this).
    Prefer,
    /// TLS, the server's certificate unchecked (a root certificate that exists makes it
    /// `VerifyCa`, as in libpq).
    Require,
    /// TLS, the server's certificate signed by a trusted root.
    VerifyCa,
    /// TLS, the server's certificate signed by a trusted root and naming the host.
    VerifyFull,
}

/// Whether SCRAM's channel binding is used: libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never.
    Disable,
    /// When the server and TLS offer it (the default).
    Prefer,
    /// Always: a server that does not offer it is refused.
    Require,
}

/// A TLS protocol version, for `ssl_min_protocol_version` and `ssl_max_protocol_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.0 (`TLSv1`).
    Tls10,
    /// TLS 1.1.
    Tls11,
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// Where to reach a server: a TCP host name or address, or a Unix socket directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or address.
    Tcp(String),
    /// The directory of a Unix socket (`.s.PGSQL.<port>` in it).
    Unix(PathBuf),
}

/// One server to try, in the order given (libpq tries them in turn).
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The host: its name (what TLS checks and the password file matches) or socket directory.
    pub host: Host,
    /// The address to connect to instead of resolving the name (`hostaddr`).
    pub hostaddr: Option<String>,
    /// The port.
    pub port: u16,
    /// The password the password file holds for this host, port, database and role.
    pub passfile_password: Option<String>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field(
                "passfile_password",
                &self.passfile_password.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

/// A connection string read as libpq reads it, with what it left out filled from the
/// environment and the password file. Its `Debug` hides the passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The servers to try, in order.
    pub targets: Vec<Target>,
    /// The database.
    pub dbname: String,
    /// The role.
    pub user: String,
    /// The password given in the string or `PGPASSWORD` (else each target's from the file).
    pub password: Option<String>,
    /// TLS.
    pub sslmode: SslMode,
    /// Trusted root certificates (PEM); `system` for the system's roots.
    pub sslrootcert: Option<PathBuf>,
    /// The client's certificate (PEM), for servers that ask for one.
    pub sslcert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub sslkey: Option<PathBuf>,
    /// Whether TLS names the host to the server (SNI; `sslsni`, default on).
    pub sslsni: bool,
    /// The oldest TLS version accepted (libpq's default, TLS 1.2, when none is given).
    pub ssl_min_protocol_version: Option<TlsVersion>,
    /// The newest TLS version offered.
    pub ssl_max_protocol_version: Option<TlsVersion>,
    /// SCRAM channel binding.
    pub channel_binding: ChannelBinding,
    /// Whether only a server accepting writes will do (`target_session_attrs=read-write`).
    pub read_write: bool,
    /// TCP keepalives (`keepalives`, default on), their idle time, interval and count.
    pub keepalives: bool,
    /// Seconds of idleness before a keepalive.
    pub keepalives_idle: Option<u64>,
    /// Seconds between keepalives.
    pub keepalives_interval: Option<u64>,
    /// Keepalives lost before the connection is.
    pub keepalives_count: Option<u32>,
    /// Milliseconds data may stay unacknowledged (`tcp_user_timeout`).
    pub tcp_user_timeout: Option<u64>,
    /// The session's command-line options (`-c name=value ...`).
    pub options: Option<String>,
    /// The application name the server shows (`application_name`, else
    /// `fallback_application_name`).
    pub application_name: Option<String>,
    /// Seconds to wait for each connection attempt (none: forever).
    pub connect_timeout: Option<u64>,
    /// What libpq would have warned about (a password file others may read).
    pub warnings: Vec<String>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("targets", &self.targets)
            .field("dbname", &self.dbname)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("channel_binding", &self.channel_binding)
            .field("read_write", &self.read_write)
            .field("options", &self.options)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl ConnInfo {
    /// Reads `conninfo` (a `postgres://` or `postgresql://` URL, or `key=value` pairs) and
    /// fills the rest from `env` (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGSSLMODE`, ... and `HOME`), the defaults (the default socket directory, port 5432,
    /// `os_user` as the role, a database named like the role) and the password file
    /// (`passfile`, `PGPASSFILE` or `~/.pgpass`), matched for each host.
    pub fn parse_with(
        conninfo: &str,
        env: &dyn Fn(&str) -> Option<String>,
        os_user: Option<&str>,
    ) -> Result<ConnInfo, Error> {
        let given = if is_url(conninfo) {
            parse_url(conninfo)?
        } else {
            parse_pairs(conninfo)?
        };
        let mut params = BTreeMap::new();
        for (key, value) in given {
            if !KEYWORDS.iter().any(|(k, _)| *k == key) {
                return Err(bad(format!("invalid connection option \"{key}\"")));
            }
            // A later value replaces an earlier one, as in libpq.
            params.insert(key, value);
        }
        // The environment fills what the string does not name (an empty value it names stands).
        for (key, var) in KEYWORDS {
            if let (false, Some(value)) = (params.contains_key(*key), var.and_then(env)) {
                params.insert((*key).to_owned(), value);
            }
        }
        for key in ENUMERATED {
            if params.get(*key).is_some_and(String::is_empty) {
                return Err(bad(format!("invalid {key} value: \"\"")));
            }
        }
        // Otherwise an empty value is as good as none (libpq: `host=` is the default).
        params.retain(|_, v| !v.is_empty());
        refuse_what_cannot_be_honoured(&params)?;

        let user = match params.get("user") {
            Some(user) => user.clone(),
            None => os_user.map(str::to_owned).ok_or_else(|| {
                bad("no user given, and the system's user name is unknown".to_owned())
            })?,
        };
        let dbname = params
            .get("dbname")
            .cloned()
            .unwrap_or_else(|| user.clone());
        let home = env("HOME").map(PathBuf::from);
        let in_home = |file: &str| home.as_ref().map(|h| h.join(file));

        let sslrootcert = params
            .get("sslrootcert")
            .map(PathBuf::from)
            .or_else(|| in_home(".postgresql/root.crt").filter(|p| p.is_file()));
        let system_roots = sslrootcert.as_deref() == Some(Path::new("system"));
        let sslmode = match params.get("sslmode").map(String::as_str) {
            // libpq 16: the system's roots check the name unless told otherwise.
            None if system_roots => SslMode::VerifyFull,
            None | Some("prefer") | Some("allow") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => return Err(bad(format!("invalid sslmode value: \"{other}\""))),
        };
        if system_roots && sslmode != SslMode::VerifyFull {
            return Err(bad(format!(
                "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                params.get("sslmode").map_or("prefer", String::as_str)
            )));
        }
        // libpq: `require` with a root certificate file that exists checks the chain.
        let sslmode = match (sslmode, &sslrootcert) {
            (SslMode::Require, Some(root)) if root.is_file() => SslMode::VerifyCa,
            (mode, _) => mode,
        };
        let sslcert = params
            .get("sslcert")
            .map(PathBuf::from)
            .or_else(|| in_home(".postgresql/postgresql.crt"));
        let sslkey = params
            .get("sslkey")
            .map(PathBuf::from)
            .or_else(|| in_home(".postgresql/postgresql.key"));
        let flag = |key: &str| -> Result<bool, Error> {
            match params.get(key).map(String::as_str) {
                None | Some("1") => Ok(true),
                Some("0") => Ok(false),
                Some(other) => Err(bad(format!(
                    "invalid value \"{other}\" for connection option \"{key}\" (0 or 1)"
                ))),
            }
        };
        let integer = |key: &str| -> Result<Option<i64>, Error> {
            params
                .get(key)
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| {
                        bad(format!(
                            "invalid integer value \"{v}\" for connection option \"{key}\""
                        ))
                    })
                })
                .transpose()
        };
        let positive = |key: &str| -> Result<Option<u64>, Error> {
            Ok(integer(key)?
                .and_then(|v| u64::try_from(v).ok())
                .filter(|v| *v > 0))
        };
        let version = |key: &str| -> Result<Option<TlsVersion>, Error> {
            match params.get(key).map(String::as_str) {
                None => Ok(None),
                Some("TLSv1") => Ok(Some(TlsVersion::Tls10)),
                Some("TLSv1.1") => Ok(Some(TlsVersion::Tls11)),
                Some("TLSv1.2") => Ok(Some(TlsVersion::Tls12)),
                Some("TLSv1.3") => Ok(Some(TlsVersion::Tls13)),
                Some(other) => Err(bad(format!("invalid {key} value: \"{other}\""))),
            }
        };
        let channel_binding = match params.get("channel_binding").map(String::as_str) {
            None | Some("prefer") => ChannelBinding::Prefer,
            Some("disable") => ChannelBinding::Disable,
            Some("require") => ChannelBinding::Require,
            Some(other) => {
                return Err(bad(format!("invalid channel_binding value: \"{other}\"")));
            }
        };
        let mut info = ConnInfo {
            targets: Vec::new(),
            password: params.get("password").cloned(),
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            sslsni: flag("sslsni")?,
            ssl_min_protocol_version: version("ssl_min_protocol_version")?,
            ssl_max_protocol_version: version("ssl_max_protocol_version")?,
            channel_binding,
            read_write: params.get("target_session_attrs").map(String::as_str)
                == Some("read-write"),
            keepalives: flag("keepalives")?,
            keepalives_idle: positive("keepalives_idle")?,
            keepalives_interval: positive("keepalives_interval")?,
            keepalives_count: positive("keepalives_count")?
                .map(|c| u32::try_from(c).unwrap_or(u32::MAX)),
            tcp_user_timeout: positive("tcp_user_timeout")?,
            options: params.get("options").cloned(),
            application_name: params
                .get("application_name")
                .or_else(|| params.get("fallback_application_name"))
                .cloned(),
            // libpq: zero, or less, waits forever.
            connect_timeout: positive("connect_timeout")?,
            warnings: Vec::new(),
            dbname,
            user,
        };
        info.targets = targets(&params)?;
        if info.password.is_none() {
            let file = params
                .get("passfile")
                .map(PathBuf::from)
                .or_else(|| in_home(".pgpass"));
            if let Some(file) = file {
                for i in 0..info.targets.len() {
                    let found =
                        password_from_file(&file, &info.targets[i], &info.dbname, &info.user);
                    match found {
                        PassFile::Found(password) => {
                            info.targets[i].passfile_password = Some(password)
                        }
                        PassFile::Open => {
                            let warning = format!(
                                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                                file.display()
                            );
                            if !info.warnings.contains(&warning) {
                                info.warnings.push(warning);
                            }
                        }
                        PassFile::None => {}
                    }
                }
            }
        }
        Ok(info)
    }

    /// The password for `target`: the one given, else the password file's for it.
    pub fn password_for<'a>(&'a self, target: &'a Target) -> Option<&'a str> {
        self.password
            .as_deref()
            .or(target.passfile_password.as_deref())
    }
}

/// Refuses the keywords these connections cannot honour, naming each, rather than connecting
/// without what they ask for.
fn refuse_what_cannot_be_honoured(params: &BTreeMap<String, String>) -> Result<(), Error> {
    let refuse = |key: &str, why: &str| -> Result<(), Error> {
        match params.get(key) {
            Some(value) => Err(bad(format!(
                "{key}={value} is not supported by pg-audit's own connections ({why}); use a command \
                 that connects through libpq, or leave it out"
            ))),
            None => Ok(()),
        }
    };
    if params.contains_key("service") {
        return Err(bad(
            "service files (`service` or PGSERVICE) are not read; write the service's parameters \
             into the connection string"
                .to_owned(),
        ));
    }
    refuse(
        "requirepeer",
        "the server's operating-system user is not checked",
    )?;
    refuse("sslcrl", "certificate revocation lists are not read")?;
    refuse("sslcrldir", "certificate revocation lists are not read")?;
    refuse("sslpassword", "encrypted client keys are not read")?;
    refuse(
        "replication",
        "the capture worker opens its replication connection itself",
    )?;
    match params.get("gssencmode").map(String::as_str) {
        None | Some("disable") | Some("prefer") => {}
        Some("require") => refuse("gssencmode", "GSSAPI encryption is not available")?,
        Some(other) => return Err(bad(format!("invalid gssencmode value: \"{other}\""))),
    }
    match params.get("target_session_attrs").map(String::as_str) {
        None | Some("any") | Some("read-write") => {}
        Some("read-only" | "primary" | "standby" | "prefer-standby") => refuse(
            "target_session_attrs",
            "only `any` and `read-write` are checked",
        )?,
        Some(other) => {
            return Err(bad(format!(
                "invalid target_session_attrs value: \"{other}\""
            )));
        }
    }
    match params
        .get("client_encoding")
        .map(|e| e.to_ascii_uppercase())
    {
        None => {}
        Some(e) if ["UTF8", "UTF-8", "AUTO", "UNICODE"].contains(&e.as_str()) => {}
        Some(_) => refuse("client_encoding", "its sessions speak UTF-8")?,
    }
    Ok(())
}

fn bad(reason: String) -> Error {
    Error::Conninfo { reason }
}

fn is_url(conninfo: &str) -> bool {
    conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://")
}

/// The default socket directory: Debian's and Ubuntu's libpq use `/var/run/postgresql`, the
/// upstream build `/tmp`.
fn default_socket_dir() -> PathBuf {
    let debian = Path::new("/var/run/postgresql");
    if debian.is_dir() {
        debian.to_owned()
    } else {
        PathBuf::from("/tmp")
    }
}

/// The servers to try: hosts (or `hostaddr`s) and ports as comma-separated lists, one port
/// for all or one each; a host starting with `/` (or `@`, an abstract socket) is a socket
/// directory; with both `host` and `hostaddr`, the name is checked and the address reached.
fn targets(params: &BTreeMap<String, String>) -> Result<Vec<Target>, Error> {
    let split = |key: &str| {
        params
            .get(key)
            .map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>())
    };
    let hosts = split("host");
    let addrs = split("hostaddr");
    let count = match (&hosts, &addrs) {
        (Some(h), Some(a)) if h.len() != a.len() => {
            return Err(bad(format!(
                "could not match {} host names to {} hostaddr values",
                h.len(),
                a.len()
            )));
        }
        (Some(h), _) => h.len(),
        (None, Some(a)) => a.len(),
        (None, None) => 1,
    };
    let ports: Vec<u16> = match params.get("port") {
        None => vec![5432],
        Some(ports) => ports
            .split(',')
            .map(|p| match p.trim() {
                "" => Ok(5432),
                p => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad(format!("invalid port number: \"{p}\""))),
            })
            .collect::<Result<_, _>>()?,
    };
    if ports.len() != 1 && ports.len() != count {
        return Err(bad(format!(
            "could not match {} port numbers to {count} hosts",
            ports.len()
        )));
    }
    (0..count)
        .map(|i| {
            let name = hosts.as_ref().map_or("", |h| h[i].as_str());
            let addr = addrs
                .as_ref()
                .map(|a| a[i].clone())
                .filter(|a| !a.is_empty());
            let host = if name.is_empty() {
                match &addr {
                    Some(addr) => Host::Tcp(addr.clone()),
                    None => Host::Unix(default_socket_dir()),
                }
            } else if name.starts_with('/') || name.starts_with('@') {
                Host::Unix(PathBuf::from(name))
            } else {
                Host::Tcp(name.to_owned())
            };
            if let Some(addr) = &addr
                && addr.parse::<std::net::IpAddr>().is_err()
            {
                return Err(bad(format!("could not parse network address \"{addr}\"")));
            }
            Ok(Target {
                host,
                hostaddr: addr,
                port: ports[if ports.len() == 1 { 0 } else { i }],
                passfile_password: None,
            })
        })
        .collect()
}

/// What the password file said for one target.
enum PassFile {
    Found(String),
    /// The file exists, but others may read it: ignored, as libpq ignores it.
    Open,
    None,
}

/// The password for this target, database and role in the password file, as libpq finds
/// it: the first matching line, an unescaped `*` matching anything, `\` escaping `:` and `\`;
/// the host's name (not its `hostaddr`), and `localhost` for a socket in the default
/// directory.
fn password_from_file(file: &Path, target: &Target, dbname: &str, user: &str) -> PassFile {
    let Ok(meta) = std::fs::metadata(file) else {
        return PassFile::None;
    };
    if !meta.is_file() {
        return PassFile::None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            return PassFile::Open;
        }
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return PassFile::None;
    };
    let host = match &target.host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(dir) if *dir == default_socket_dir() => "localhost".to_owned(),
        Host::Unix(dir) => dir.display().to_string(),
    };
    let port = target.port.to_string();
    let wanted = [host.as_str(), port.as_str(), dbname, user];
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let fields = pgpass_fields(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field.any || field.text == want);
            matches.then(|| fields[4].text.clone())
        })
        .map_or(PassFile::None, PassFile::Found)
}

/// A password file field: its text with `\` escapes removed, and whether it was a bare `*`.
struct Field {
    text: String,
    any: bool,
}

/// A password file line's fields, split at unescaped `:` (the password ends at the next one,
/// as in libpq).
fn pgpass_fields(line: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let (mut text, mut raw) = (String::new(), String::new());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                raw.push(c);
                if let Some(next) = chars.next() {
                    text.push(next);
                    raw.push(next);
                }
            }
            ':' => {
                fields.push(Field {
                    any: raw == "*",
                    text: std::mem::take(&mut text),
                });
                raw.clear();
                if fields.len() == 5 {
                    return fields;
                }
            }
            c => {
                text.push(c);
                raw.push(c);
            }
        }
    }
    fields.push(Field {
        any: raw == "*",
        text,
    });
    fields
}

/// A `postgres://` URL's parts as keyword pairs, as libpq's URI reader takes them:
/// `[user[:password]@][host[:port][,...]][/dbname][?k=v&...]`, each part percent-decoded;
/// `ssl=true` is `sslmode=require`.
fn parse_url(url: &str) -> Result<Vec<(String, String)>, Error> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let mut pairs = Vec::new();
    // The credentials end at the first `@` before any `/` (libpq looks no further).
    let rest = match rest.find(['@', '/']) {
        Some(i) if rest.as_bytes()[i] == b'@' => {
            let userinfo = &rest[..i];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".to_owned(), percent_decode(user)?));
            }
            if let Some(p) = password.filter(|p| !p.is_empty()) {
                pairs.push(("password".to_owned(), percent_decode(p)?));
            }
            &rest[i + 1..]
        }
        _ => rest,
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hostspec, rest) = rest.split_at(end);
    if !hostspec.is_empty() {
        let (mut hosts, mut ports) = (Vec::new(), Vec::new());
        for spec in hostspec.split(',') {
            let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
                let (host, after) = v6.split_once(']').ok_or_else(|| {
                    bad(format!("end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{spec}\""))
                })?;
                match after {
                    "" => (host, None),
                    after => match after.strip_prefix(':') {
                        Some(port) => (host, Some(port)),
                        None => {
                            return Err(bad(format!(
                                "unexpected character \"{}\" after the IPv6 host address in URI: \"{spec}\"",
                                after.chars().next().unwrap_or(' ')
                            )));
                        }
                    },
                }
            } else {
                match spec.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (spec, None),
                }
            };
            hosts.push(percent_decode(host)?);
            ports.push(port.map(percent_decode).transpose()?.unwrap_or_default());
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            pairs.push(("host".to_owned(), hosts.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            pairs.push(("port".to_owned(), ports.join(",")));
        }
    }
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if let Some(db) = path.strip_prefix('/').filter(|p| !p.is_empty()) {
        pairs.push(("dbname".to_owned(), percent_decode(db)?));
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let params: Vec<&str> = query.split('&').collect();
        for (i, param) in params.iter().enumerate() {
            // A trailing `&` is let through, as libpq lets it.
            if param.is_empty() && i + 1 == params.len() && i > 0 {
                continue;
            }
            if param.is_empty() {
                return Err(bad(
                    "extra key/value separator \"&\" in URI query parameter".to_owned(),
                ));
            }
            let (key, value) = param.split_once('=').ok_or_else(|| {
                bad(format!(
                    "missing key/value separator \"=\" in URI query parameter \"{}\"",
                    param.split('=').next().unwrap_or(param)
                ))
            })?;
            let (key, value) = (percent_decode(key)?, percent_decode(value)?);
            if key == "ssl" && value == "true" {
                pairs.push(("sslmode".to_owned(), "require".to_owned()));
            } else {
                pairs.push((key, value));
            }
        }
    }
    Ok(pairs)
}

/// `key=value` pairs as libpq reads them: ASCII whitespace around `=` allowed, a value
/// single-quoted (with `\` escaping any character) or unquoted up to whitespace (with `\`
/// escaping).
pub(crate) fn parse_pairs(conninfo: &str) -> Result<Vec<(String, String)>, Error> {
    let mut pairs = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_ascii_whitespace()) {
            key.push(c);
        }
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        while chars.next_if(char::is_ascii_whitespace).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(bad(
                            "unterminated quoted string in connection info string".to_owned()
                        ));
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_ascii_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `%XX` sequences decoded, as libpq decodes them: two hexadecimal digits each, never `%00`,
/// the result UTF-8.
pub(crate) fn percent_decode(text: &str) -> Result<String, Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
                .ok_or_else(|| bad(format!("invalid percent-encoded token: \"{text}\"")))?;
            if hex == 0 {
                return Err(bad(format!(
                    "forbidden value %00 in percent-encoded value: \"{text}\""
                )));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("\"{text}\" does not decode to UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(conninfo: &str, env: &[(&str, &str)]) -> Result<ConnInfo, Error> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ConnInfo::parse_with(conninfo, &|name| env.get(name).cloned(), Some("ann"))
    }

    fn hosts(c: &ConnInfo) -> Vec<(Host, u16)> {
        c.targets.iter().map(|t| (t.host.clone(), t.port)).collect()
    }

    #[test]
    fn a_url_without_a_host_is_the_default_socket() {
        let c = parse("postgres:///app", &[]).unwrap();
        assert_eq!(hosts(&c), [(Host::Unix(default_socket_dir()), 5432)]);
        assert_eq!((c.dbname.as_str(), c.user.as_str()), ("app", "ann"));
        assert_eq!(c.sslmode, SslMode::Prefer);
        let c = parse(
            "postgresql://%2Fsrv%2Fpg:6543/app?user=bob&sslmode=verify-full",
            &[],
        )
        .unwrap();
        assert_eq!(hosts(&c), [(Host::Unix("/srv/pg".into()), 6543)]);
        assert_eq!((c.user.as_str(), c.sslmode), ("bob", SslMode::VerifyFull));
    }

    #[test]
    fn urls_and_pairs_read_the_same() {
        let url = parse(
            "postgres://u:p%40ss@h1:5,[::1]:6/db?application_name=x&connect_timeout=3",
            &[],
        )
        .unwrap();
        let pairs = parse(
            "host=h1,::1 port=5,6 user=u password='p@ss' dbname = db application_name=x connect_timeout=3",
            &[],
        )
        .unwrap();
        assert_eq!(url, pairs);
        assert_eq!(
            hosts(&url),
            [(Host::Tcp("h1".into()), 5), (Host::Tcp("::1".into()), 6)]
        );
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.connect_timeout, Some(3));
        // libpq's reading of the credentials: up to the first `@` (or `/`).
        let c = parse("postgres://u:se?cret@h/db", &[]).unwrap();
        assert_eq!(
            (c.password.as_deref(), hosts(&c)[0].0.clone()),
            (Some("se?cret"), Host::Tcp("h".into()))
        );
        let c = parse("postgres://a@b@h/db", &[]).unwrap();
        assert_eq!(
            (c.user.as_str(), hosts(&c)[0].0.clone()),
            ("a", Host::Tcp("b@h".into()))
        );
    }

    #[test]
    fn the_environment_fills_what_the_string_leaves_out() {
        let env = [
            ("PGHOST", "db.internal"),
            ("PGPORT", "6432"),
            ("PGUSER", "svc"),
            ("PGPASSWORD", "secret"),
            ("PGDATABASE", "shop"),
            ("PGSSLMODE", "require"),
        ];
        let c = parse("", &env).unwrap();
        assert_eq!(hosts(&c), [(Host::Tcp("db.internal".into()), 6432)]);
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("svc", "shop"));
        assert_eq!(
            (c.password.as_deref(), c.sslmode),
            (Some("secret"), SslMode::Require)
        );
        // The string wins over the environment.
        let c = parse("postgres://other@/db?sslmode=disable", &env).unwrap();
        assert_eq!((c.user.as_str(), c.sslmode), ("other", SslMode::Disable));
        assert_eq!(hosts(&c), [(Host::Tcp("db.internal".into()), 6432)]);
        // An empty sslmode is an error, not the environment's or the default.
        assert!(parse("sslmode=", &env).is_err());
        assert!(parse("", &[("PGSSLMODE", "")]).is_err());
    }

    #[test]
    fn hostaddr_is_reached_and_the_name_checked() {
        let c = parse("host=db.example.com hostaddr=127.0.0.1 port=5", &[]).unwrap();
        assert_eq!(c.targets[0].host, Host::Tcp("db.example.com".into()));
        assert_eq!(c.targets[0].hostaddr.as_deref(), Some("127.0.0.1"));
        assert!(parse("hostaddr=db.example.com", &[]).is_err());
        assert!(parse("host=a,b hostaddr=127.0.0.1", &[]).is_err());
    }

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        let dir = std::env::temp_dir().join(format!("pg-audit-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:no\ndb.internal:5432:shop:svc:pa\\:ss:word\n\\*:*:*:star:literal\n*:*:*:svc:fallback\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let passfile = file.display().to_string();
        let env = [("PGPASSFILE", passfile.as_str())];
        let password = |s: &str| {
            let c = parse(s, &env).unwrap();
            c.password_for(&c.targets[0]).map(str::to_owned)
        };
        // The password ends at the next unescaped `:`.
        assert_eq!(
            password("host=db.internal dbname=shop user=svc").as_deref(),
            Some("pa:ss")
        );
        assert_eq!(
            password("host=elsewhere dbname=x user=svc").as_deref(),
            Some("fallback")
        );
        assert_eq!(password("host=elsewhere dbname=x user=nobody"), None);
        // An escaped `*` is a host named `*`.
        assert_eq!(password("host=elsewhere dbname=x user=star"), None);
        // Each host its own line: no password meant for one host goes to another.
        let c = parse("host=elsewhere,db.internal dbname=shop user=svc", &env).unwrap();
        assert_eq!(c.password_for(&c.targets[0]), Some("fallback"));
        assert_eq!(c.password_for(&c.targets[1]), Some("pa:ss"));
        let c = parse(
            "host=db.internal,other port=5432,1 dbname=shop user=nobody",
            &env,
        )
        .unwrap();
        assert_eq!(c.password_for(&c.targets[0]), None);
        assert_eq!(c.password_for(&c.targets[1]), Some("no"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let c = parse("host=db.internal dbname=shop user=svc", &env).unwrap();
            assert_eq!(
                c.password_for(&c.targets[0]),
                None,
                "a file others may read is ignored"
            );
            assert!(
                c.warnings[0].contains("group or world access"),
                "{:?}",
                c.warnings
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        for s in [
            "requirepeer=postgres",
            "sslcrl=/x.crl",
            "gssencmode=require",
            "target_session_attrs=standby",
            "client_encoding=LATIN1",
            "service=prod",
            "sslpassword=x",
        ] {
            let e = parse(s, &[]).unwrap_err().to_string();
            assert!(e.contains(s.split('=').next().unwrap()), "{s}: {e}");
        }
        assert!(
            parse(
                "target_session_attrs=read-write channel_binding=require",
                &[]
            )
            .is_ok()
        );
        // The system's roots check names; a weaker mode with them is refused.
        assert_eq!(
            parse("sslrootcert=system", &[]).unwrap().sslmode,
            SslMode::VerifyFull
        );
        assert!(parse("sslrootcert=system sslmode=require", &[]).is_err());
    }

    #[test]
    fn mistakes_are_named() {
        let err = |s: &str| parse(s, &[]).unwrap_err().to_string();
        assert!(err("hots=x").contains("invalid connection option \"hots\""));
        assert!(err("sslmode=maybe").contains("invalid sslmode value"));
        assert!(err("port=x").contains("port"));
        assert!(err("port=0").contains("port"));
        assert!(err("port=65536").contains("port"));
        assert!(err("host=a,b,c port=1,2").contains("3 hosts"));
        assert!(err("postgres://[::1/db").contains("]"));
        assert!(err("postgres://[::1]x:5/db").contains("unexpected character"));
        assert!(err("dbname='x").contains("unterminated"));
        assert!(err("postgres://h/db%+1").contains("percent"));
        assert!(err("postgres://h/db%00").contains("%00"));
        assert!(err("postgres://h/db?&&").contains("separator"));
        // Only ASCII whitespace separates pairs, as in libpq.
        assert!(parse("port=5432\u{a0}user=nobody", &[]).is_err());
        // A negative timeout waits forever, as in libpq.
        assert_eq!(
            parse("connect_timeout=-1", &[]).unwrap().connect_timeout,
            None
        );
    }

    #[test]
    fn debug_hides_passwords() {
        let c = parse("postgres://u:hunter2@h/db", &[]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
