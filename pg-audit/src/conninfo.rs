//! Connection strings as libpq reads them, for the connections that do not go through libpq
//! (the program's tokio-postgres sessions, the capture worker's replication connection).
//!
//! [`ConnInfo::parse`] reads a `postgres://` URL or `key=value` pairs, then fills what the
//! string leaves out as libpq does: the `PG*` environment variables, the default socket
//! directory, the operating system's user name, the password file. `psql` and these
//! connections then reach the same server as the same role with the same string.

use std::collections::BTreeMap;
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

/// How a connection uses TLS: libpq's `sslmode`, with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, else none (libpq's `allow` is read as this).
    Prefer,
    /// TLS, the server's certificate unchecked — unless a root certificate is given
    /// (`sslrootcert`, or `~/.postgresql/root.crt` exists), which makes it `VerifyCa`.
    Require,
    /// TLS, the server's certificate signed by a trusted root.
    VerifyCa,
    /// TLS, the server's certificate signed by a trusted root and naming the host.
    VerifyFull,
}

/// Where to reach a server: a TCP host name or address, or a Unix socket directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or address.
    Tcp(String),
    /// The directory of a Unix socket (`.s.PGSQL.<port>` in it).
    Unix(PathBuf),
}

/// A connection string read as libpq reads it, with what it left out filled from the
/// environment and the password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Each host with its port, in the order given (libpq tries them in turn).
    pub hosts: Vec<(Host, u16)>,
    /// The database.
    pub dbname: String,
    /// The role.
    pub user: String,
    /// The password, from the string, `PGPASSWORD` or the password file.
    pub password: Option<String>,
    /// TLS.
    pub sslmode: SslMode,
    /// Trusted root certificates (PEM); `system` for the system's roots.
    pub sslrootcert: Option<PathBuf>,
    /// The client's certificate (PEM), for servers that ask for one.
    pub sslcert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub sslkey: Option<PathBuf>,
    /// The session's command-line options (`-c name=value ...`).
    pub options: Option<String>,
    /// The application name the server shows.
    pub application_name: Option<String>,
    /// Seconds to wait for each connection attempt.
    pub connect_timeout: Option<u64>,
    /// Every keyword as given or taken from the environment (after the rules above).
    pub params: BTreeMap<String, String>,
}

impl ConnInfo {
    /// Reads `conninfo` (a `postgres://` or `postgresql://` URL, or `key=value` pairs) and
    /// fills the rest from the environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
    /// `PGDATABASE`, `PGSSLMODE`, ...), the defaults (the default socket directory, port 5432,
    /// the operating system's user, a database named like the user) and the password file
    /// (`passfile`, `PGPASSFILE` or `~/.pgpass`).
    pub fn parse(conninfo: &str) -> Result<ConnInfo, Error> {
        Self::parse_with(conninfo, &|name| std::env::var(name).ok())
    }

    /// [`ConnInfo::parse`] with the environment given by `env`.
    pub fn parse_with(
        conninfo: &str,
        env: &dyn Fn(&str) -> Option<String>,
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
        for (key, var) in KEYWORDS {
            if let (false, Some(value)) = (params.contains_key(*key), var.and_then(env)) {
                params.insert((*key).to_owned(), value);
            }
        }
        // An empty value is as good as none (libpq: `host=` is the default).
        params.retain(|_, v| !v.is_empty());
        if params.contains_key("service") {
            return Err(bad(
                "service files (`service` or PGSERVICE) are not read; write the service's \
                 parameters into the connection string"
                    .to_owned(),
            ));
        }

        let user = match params.get("user") {
            Some(user) => user.clone(),
            None => env("USER")
                .or_else(|| env("LOGNAME"))
                .ok_or_else(|| bad("no user given, and USER is not set".to_owned()))?,
        };
        let dbname = params
            .get("dbname")
            .cloned()
            .unwrap_or_else(|| user.clone());
        let hosts = hosts(&params)?;
        let sslmode = match params.get("sslmode").map(String::as_str) {
            None | Some("prefer") | Some("allow") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-ca") => SslMode::VerifyCa,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => return Err(bad(format!("invalid sslmode value: \"{other}\""))),
        };
        let home = env("HOME").map(PathBuf::from);
        let in_home = |file: &str| home.as_ref().map(|h| h.join(file));
        let sslrootcert = params
            .get("sslrootcert")
            .map(PathBuf::from)
            .or_else(|| in_home(".postgresql/root.crt").filter(|p| p.is_file()));
        // libpq: `require` with a root certificate verifies the chain.
        let sslmode = match (sslmode, &sslrootcert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        };
        let sslcert = params
            .get("sslcert")
            .map(PathBuf::from)
            .or_else(|| in_home(".postgresql/postgresql.crt").filter(|p| p.is_file()));
        let sslkey = params
            .get("sslkey")
            .map(PathBuf::from)
            .or_else(|| in_home(".postgresql/postgresql.key").filter(|p| p.is_file()));
        let connect_timeout = match params.get("connect_timeout") {
            None => None,
            Some(t) => Some(t.trim().parse::<u64>().map_err(|_| {
                bad(format!(
                    "invalid integer value \"{t}\" for connection option \"connect_timeout\""
                ))
            })?),
        };
        let password = match params.get("password") {
            Some(p) => Some(p.clone()),
            None => {
                let file = params
                    .get("passfile")
                    .map(PathBuf::from)
                    .or_else(|| in_home(".pgpass"));
                file.and_then(|file| {
                    hosts.iter().find_map(|(host, port)| {
                        password_from_file(&file, host, *port, &dbname, &user)
                    })
                })
            }
        };
        Ok(ConnInfo {
            hosts,
            dbname,
            user,
            password,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            options: params.get("options").cloned(),
            application_name: params.get("application_name").cloned(),
            connect_timeout,
            params,
        })
    }
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

/// The hosts and ports: comma-separated lists, one port for all or one each; a host starting
/// with `/` (or `@`, an abstract socket) is a socket directory; `hostaddr` stands for the host
/// it is given with.
fn hosts(params: &BTreeMap<String, String>) -> Result<Vec<(Host, u16)>, Error> {
    let names: Vec<String> = match (params.get("hostaddr"), params.get("host")) {
        (Some(addr), _) => addr.split(',').map(str::to_owned).collect(),
        (None, Some(host)) => host.split(',').map(str::to_owned).collect(),
        (None, None) => vec![String::new()],
    };
    let ports: Vec<u16> = match params.get("port") {
        None => vec![5432],
        Some(ports) => ports
            .split(',')
            .map(|p| match p.trim() {
                "" => Ok(5432),
                p => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    bad(format!(
                        "invalid integer value \"{p}\" for connection option \"port\""
                    ))
                }),
            })
            .collect::<Result<_, _>>()?,
    };
    if ports.len() != 1 && ports.len() != names.len() {
        return Err(bad(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            names.len()
        )));
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let port = ports[if ports.len() == 1 { 0 } else { i }];
            let host = if name.is_empty() {
                Host::Unix(default_socket_dir())
            } else if name.starts_with('/') || name.starts_with('@') {
                Host::Unix(PathBuf::from(name))
            } else {
                Host::Tcp(name)
            };
            (host, port)
        })
        .collect())
}

/// The password for this host, port, database and role in the password file, as libpq finds
/// it: the first matching line, `*` matching anything, `\` escaping `:` and `\`; a socket in
/// the default directory matches `localhost`. A file others may read is ignored, as libpq
/// ignores it.
fn password_from_file(
    file: &Path,
    host: &Host,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(file).ok()?;
        if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
            return None;
        }
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = match host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(dir) if *dir == default_socket_dir() => "localhost".to_owned(),
        Host::Unix(dir) => dir.display().to_string(),
    };
    let port = port.to_string();
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
                .all(|(field, want)| field == "*" || field == want);
            matches.then(|| fields[4..].join(":"))
        })
}

/// A password file line's fields: split at unescaped `:`, with `\` escapes removed.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// A `postgres://` URL's parts as keyword pairs: `[user[:password]@][host[:port][,...]][/dbname][?k=v&...]`,
/// each part percent-decoded; `ssl=true` is `sslmode=require`, as in libpq.
fn parse_url(url: &str) -> Result<Vec<(String, String)>, Error> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut pairs = Vec::new();
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".to_owned(), percent_decode(user)?));
            }
            if let Some(p) = password {
                pairs.push(("password".to_owned(), percent_decode(p)?));
            }
            hostspec
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        let (mut hosts, mut ports) = (Vec::new(), Vec::new());
        for spec in hostspec.split(',') {
            let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad(format!("missing \"]\" in the URL's host `{spec}`")))?;
                (host, after.strip_prefix(':'))
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
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        pairs.push(("dbname".to_owned(), percent_decode(path)?));
    }
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        if param.is_empty() {
            continue;
        }
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| bad(format!("the URL parameter `{param}` has no `=`")))?;
        let (key, value) = (percent_decode(key)?, percent_decode(value)?);
        if key == "ssl" && value == "true" {
            pairs.push(("sslmode".to_owned(), "require".to_owned()));
        } else {
            pairs.push((key, value));
        }
    }
    Ok(pairs)
}

/// `key=value` pairs as libpq reads them: whitespace around `=` allowed, a value single-quoted
/// (with `\` escaping any character) or unquoted up to whitespace (with `\` escaping).
pub(crate) fn parse_pairs(conninfo: &str) -> Result<Vec<(String, String)>, Error> {
    let mut pairs = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(format!("`{key}` is not followed by `=`")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(bad(format!("the value of `{key}` has no closing quote"))),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
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

pub(crate) fn percent_decode(text: &str) -> Result<String, Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("`{text}` holds an invalid percent-encoding")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("`{text}` does not decode to UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(conninfo: &str, env: &[(&str, &str)]) -> Result<ConnInfo, Error> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ConnInfo::parse_with(conninfo, &|name| env.get(name).cloned())
    }

    #[test]
    fn a_url_without_a_host_is_the_default_socket() {
        let c = parse("postgres:///app", &[("USER", "ann")]).unwrap();
        assert_eq!(c.hosts, [(Host::Unix(default_socket_dir()), 5432)]);
        assert_eq!((c.dbname.as_str(), c.user.as_str()), ("app", "ann"));
        assert_eq!(c.sslmode, SslMode::Prefer);
        let c = parse(
            "postgresql://%2Fsrv%2Fpg:6543/app?user=bob&sslmode=verify-full",
            &[],
        )
        .unwrap();
        assert_eq!(c.hosts, [(Host::Unix("/srv/pg".into()), 6543)]);
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
            url.hosts,
            [(Host::Tcp("h1".into()), 5), (Host::Tcp("::1".into()), 6)]
        );
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.connect_timeout, Some(3));
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
        assert_eq!(c.hosts, [(Host::Tcp("db.internal".into()), 6432)]);
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("svc", "shop"));
        assert_eq!(
            (c.password.as_deref(), c.sslmode),
            (Some("secret"), SslMode::Require)
        );
        // The string wins over the environment.
        let c = parse("postgres://other@/db?sslmode=disable", &env).unwrap();
        assert_eq!((c.user.as_str(), c.sslmode), ("other", SslMode::Disable));
        assert_eq!(c.hosts, [(Host::Tcp("db.internal".into()), 6432)]);
    }

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        let dir = std::env::temp_dir().join(format!("pg-audit-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:no\ndb.internal:5432:shop:svc:pa\\:ss:word\n*:*:*:svc:fallback\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let passfile = file.display().to_string();
        let env = [("PGPASSFILE", passfile.as_str())];
        let c = parse("host=db.internal dbname=shop user=svc", &env).unwrap();
        assert_eq!(c.password.as_deref(), Some("pa:ss:word"));
        let c = parse("host=elsewhere dbname=x user=svc", &env).unwrap();
        assert_eq!(c.password.as_deref(), Some("fallback"));
        let c = parse("host=elsewhere dbname=x user=nobody", &env).unwrap();
        assert_eq!(c.password, None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let c = parse("host=db.internal dbname=shop user=svc", &env).unwrap();
            assert_eq!(c.password, None, "a file others may read is ignored");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mistakes_are_named() {
        let err = |s: &str| parse(s, &[("USER", "u")]).unwrap_err().to_string();
        assert!(err("hots=x").contains("invalid connection option \"hots\""));
        assert!(err("sslmode=maybe").contains("invalid sslmode value"));
        assert!(err("port=x").contains("\"port\""));
        assert!(err("host=a,b,c port=1,2").contains("3 hosts"));
        assert!(err("postgres://[::1/db").contains("]"));
        assert!(err("dbname='x").contains("closing quote"));
    }
}
