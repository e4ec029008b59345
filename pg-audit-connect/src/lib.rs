//! pg-audit's connections that do not go through libpq — the program's seal, verify, archive
//! and redact sessions, and the capture worker's — read their connection string as libpq
//! reads it ([`ConnInfo`]) and speak TLS with libpq's `sslmode`:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | if the server offers it | not checked |
//! | `require` | always | not checked; checked as `verify-ca` when a root certificate is given |
//! | `verify-ca` | always | signed by a root of `sslrootcert` |
//! | `verify-full` | always | signed by a root of `sslrootcert`, and naming the host |
//!
//! `sslrootcert=system` trusts the system's roots (with `verify-full` only, as libpq 16+).
//! Without `sslrootcert`, `~/.postgresql/root.crt` is used when it exists; `verify-ca` and
//! `verify-full` refuse to start without a root, as libpq does. A root that is the server's own
//! certificate (as PostgreSQL's documentation makes one) trusts that exact certificate. A
//! client certificate (`sslcert`, `sslkey`, or `~/.postgresql/postgresql.crt` and `.key`) is
//! sent when the server asks for one; its key must be readable by its owner only, as libpq
//! requires. Unix sockets never use TLS (nor does libpq over them). Hosts are tried in turn,
//! each with its own password from the password file. Where rustls is stricter than OpenSSL —
//! a certificate that names its host only in its common name, a version 1 certificate — the
//! error says so.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use pg_audit::conninfo::{ChannelBinding, ConnInfo, Host, SslMode, Target, TlsVersion};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// What went wrong; each prints its cause once, through `source`.
#[derive(Debug)]
pub enum Error {
    /// The connection string cannot be read.
    Conninfo(pg_audit::Error),
    /// The TLS settings (a certificate or key file, a mode without a root).
    Tls(String),
    /// Connecting failed (the server named).
    Connect {
        /// `user@host:port/database`.
        target: String,
        /// Why.
        source: tokio_postgres::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Conninfo(e) => write!(f, "{e}"),
            Error::Tls(reason) => write!(f, "TLS: {reason}"),
            Error::Connect { target, .. } => write!(f, "cannot connect to {target}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Conninfo(_) | Error::Tls(_) => None,
            Error::Connect { source, .. } => Some(source),
        }
    }
}

impl From<pg_audit::Error> for Error {
    fn from(e: pg_audit::Error) -> Self {
        Error::Conninfo(e)
    }
}

/// Reads `conninfo` as libpq does, from this process's environment and the system's user
/// name ([`ConnInfo::parse_with`]); what libpq would warn about is logged (`tracing`).
pub fn parse(conninfo: &str) -> Result<ConnInfo, Error> {
    let os_user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name);
    let info = ConnInfo::parse_with(
        conninfo,
        &|name| std::env::var(name).ok(),
        os_user.as_deref(),
    )?;
    for warning in &info.warnings {
        tracing::warn!("{warning}");
    }
    Ok(info)
}

/// Reads `conninfo` ([`parse`]) and connects, with TLS as its `sslmode` says and pg-audit's
/// pinned session settings ([`pg_audit::session`]) as startup options; the connection is
/// driven on the current tokio runtime.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, Error> {
    connect_to(&parse(conninfo)?).await
}

/// [`connect`] for a connection string already read: each target in turn, as libpq tries
/// them, until one answers (with `target_session_attrs=read-write`, one that takes writes).
pub async fn connect_to(info: &ConnInfo) -> Result<tokio_postgres::Client, Error> {
    let mut tls = None;
    let mut failed = Vec::new();
    for target in &info.targets {
        let config = config(info, target);
        let attempt = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
            start(&config, tokio_postgres::NoTls).await
        } else {
            if tls.is_none() {
                tls = Some(self::tls(info)?);
            }
            start(&config, tls.clone().expect("made above")).await
        };
        match attempt {
            Ok(client) => return Ok(client),
            Err(source) => failed.push((target_name(info, target), source)),
        }
    }
    let (target, source) = failed.pop().expect("a connection string has a target");
    let target = if failed.is_empty() {
        target
    } else {
        let mut tried: Vec<String> = failed.iter().map(|(t, e)| format!("{t} ({e})")).collect();
        tried.push(target);
        tried.join(", then ")
    };
    Err(match certificate_refused(&source) {
        Some(reason) => Error::Tls(format!(
            "{target}: the server's certificate was refused: {reason}"
        )),
        None => Error::Connect { target, source },
    })
}

/// Connects with `config` and drives the connection on the current runtime.
async fn start<T>(
    config: &tokio_postgres::Config,
    tls: T,
) -> Result<tokio_postgres::Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Why rustls refused the server's certificate, in words, if that is what `e` is.
fn certificate_refused(e: &tokio_postgres::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        // tokio-rustls wraps rustls's error in an io::Error, whose `source` skips it.
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map_or(c, |inner| inner as &(dyn std::error::Error + 'static));
        if let Some(rustls::Error::InvalidCertificate(cert)) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(match cert {
                CertificateError::UnknownIssuer => {
                    "it is not signed by a root of sslrootcert".to_owned()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "it does not name the host ({cert}); rustls reads names from the \
                     subjectAltName only, where libpq also reads the common name: reissue it \
                     with the host in subjectAltName, or use sslmode=verify-ca"
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    format!("it has expired ({cert})")
                }
                CertificateError::Other(other)
                    if format!("{other:?}").contains("UnsupportedCertVersion") =>
                {
                    "it is a version 1 certificate, which rustls does not accept: reissue it as \
                     version 3 (OpenSSL's default with -addext or an extensions file)"
                        .to_owned()
                }
                other => format!("{other:?}"),
            });
        }
        cause = c.source();
    }
    None
}

/// `user@host:port/database` for the first target, for messages.
pub fn target(info: &ConnInfo) -> String {
    info.targets
        .first()
        .map_or_else(String::new, |t| target_name(info, t))
}

fn target_name(info: &ConnInfo, target: &Target) -> String {
    let host = match &target.host {
        Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", target.port),
        Host::Tcp(h) => format!("{h}:{}", target.port),
        Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), target.port),
    };
    format!("{}@{host}/{}", info.user, info.dbname)
}

/// The tokio-postgres configuration of one target of `info`, with pg-audit's pinned session
/// settings added to its options.
pub fn config(info: &ConnInfo, target: &Target) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    match &target.host {
        Host::Tcp(name) => config.host(name),
        #[cfg(unix)]
        Host::Unix(dir) => config.host_path(dir),
        #[cfg(not(unix))]
        Host::Unix(dir) => config.host(dir.display().to_string()),
    };
    if let Some(addr) = target.hostaddr.as_deref().and_then(|a| a.parse().ok()) {
        config.hostaddr(addr);
    }
    config.port(target.port);
    config.user(&info.user).dbname(&info.dbname);
    if let Some(password) = info.password_for(target) {
        config.password(password);
    }
    config.options(pg_audit::session::merge_options(info.options.as_deref()));
    if let Some(name) = &info.application_name {
        config.application_name(name);
    }
    // libpq: less than 2 seconds is 2.
    if let Some(seconds) = info.connect_timeout {
        config.connect_timeout(Duration::from_secs(seconds.max(2)));
    }
    config.keepalives(info.keepalives);
    if let Some(idle) = info.keepalives_idle {
        config.keepalives_idle(Duration::from_secs(idle));
    }
    if let Some(interval) = info.keepalives_interval {
        config.keepalives_interval(Duration::from_secs(interval));
    }
    if let Some(count) = info.keepalives_count {
        config.keepalives_retries(count);
    }
    if let Some(ms) = info.tcp_user_timeout {
        config.tcp_user_timeout(Duration::from_millis(ms));
    }
    config.channel_binding(match info.channel_binding {
        ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
        ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
        ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
    });
    if info.read_write {
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    }
    // TLS never runs over a Unix socket (nor does libpq's).
    config.ssl_mode(match (&target.host, info.sslmode) {
        (Host::Unix(_), _) | (_, SslMode::Disable) => tokio_postgres::config::SslMode::Disable,
        (_, SslMode::Prefer) => tokio_postgres::config::SslMode::Prefer,
        (_, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => {
            tokio_postgres::config::SslMode::Require
        }
    });
    config
}

/// The TLS connector for `info`'s `sslmode`, root certificates and client certificate.
pub fn tls(info: &ConnInfo) -> Result<MakeRustlsConnect, Error> {
    Ok(MakeRustlsConnect::new(rustls_config(info)?))
}

/// The rustls client configuration for `info` (see the crate's documentation).
pub fn rustls_config(info: &ConnInfo) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match info.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(Unchecked(provider.clone()))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let (roots, pinned) = roots(info)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::Tls(format!("the root certificates: {e}")))?;
            Arc::new(Checked {
                webpki,
                pinned,
                check_name: info.sslmode == SslMode::VerifyFull,
            })
        }
    };
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| {
        info.ssl_min_protocol_version.is_none_or(|min| *v >= min)
            && info.ssl_max_protocol_version.is_none_or(|max| *v <= max)
    })
    .map(|(_, v)| v)
    .collect();
    if versions.is_empty() {
        return Err(Error::Tls(
            "ssl_min_protocol_version and ssl_max_protocol_version leave no version rustls speaks \
             (TLS 1.2 and 1.3)"
                .to_owned(),
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    // As libpq: a client certificate that does not exist is not sent; one that exists needs
    // its key, readable by its owner only.
    let mut config = match info.sslcert.as_deref().filter(|c| c.is_file()) {
        None => builder.with_no_client_auth(),
        Some(cert) => {
            let key = info
                .sslkey
                .as_deref()
                .filter(|k| k.is_file())
                .ok_or_else(|| {
                    Error::Tls(format!(
                        "the client certificate {} has no key file (sslkey)",
                        cert.display()
                    ))
                })?;
            check_key_permissions(key)?;
            let certs = pem_certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::Tls(format!("cannot read the key {}: {e}", key.display())))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                Error::Tls(format!("the client certificate {}: {e}", cert.display()))
            })?
        }
    };
    config.enable_sni = info.sslsni;
    Ok(config)
}

/// libpq's rule for a client key: readable by its owner only, or also by the group when root
/// owns it.
fn check_key_permissions(key: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let meta = std::fs::metadata(key)
            .map_err(|e| Error::Tls(format!("cannot read the key {}: {e}", key.display())))?;
        let mode = meta.permissions().mode();
        let allowed = if meta.uid() == 0 { 0o027 } else { 0o077 };
        if mode & allowed != 0 {
            return Err(Error::Tls(format!(
                "private key file \"{}\" has group or world access; file must have permissions \
                 u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) \
                 or less if owned by root",
                key.display()
            )));
        }
    }
    Ok(())
}

/// The trusted roots (`sslrootcert`'s certificates, or the system's for `system`), and their
/// exact encodings, so a root that is the server's own certificate trusts that certificate.
fn roots(info: &ConnInfo) -> Result<(RootCertStore, Vec<Vec<u8>>), Error> {
    let mut roots = RootCertStore::empty();
    let certs = match info.sslrootcert.as_deref() {
        Some(path) if path == Path::new("system") => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(Error::Tls(format!(
                    "sslrootcert=system: no system root certificates found ({} errors)",
                    found.errors.len()
                )));
            }
            found.certs
        }
        Some(path) if !path.exists() => {
            return Err(Error::Tls(format!(
                "root certificate file \"{}\" does not exist; either provide the file, use the \
                 system's trusted roots with sslrootcert=system, or change sslmode to disable \
                 server certificate verification",
                path.display()
            )));
        }
        Some(path) => pem_certificates(path)?,
        None => {
            return Err(Error::Tls(format!(
                "sslmode={} needs a root certificate to check the server's against: give \
                 sslrootcert=/path/to/root.crt, or sslrootcert=system for the system's roots \
                 (libpq also reads ~/.postgresql/root.crt)",
                if info.sslmode == SslMode::VerifyFull {
                    "verify-full"
                } else {
                    "verify-ca"
                }
            )));
        }
    };
    let pinned = certs.iter().map(|c| c.as_ref().to_vec()).collect();
    let (_, ignored) = roots.add_parsable_certificates(certs);
    if roots.is_empty() && ignored > 0 {
        return Err(Error::Tls(format!(
            "no usable root certificate in {} ({ignored} could not be read)",
            info.sslrootcert
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        )));
    }
    Ok((roots, pinned))
}

fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::Tls(format!(
                "cannot read the certificates in {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// `prefer` and `require`: any certificate, its signatures still checked.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` and `verify-full`: the chain checked against the roots, and the name with
/// `check_name`; a certificate that is itself one of the roots, byte for byte, is trusted as
/// that certificate (a self-signed server certificate given as `sslrootcert`).
#[derive(Debug)]
struct Checked {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<Vec<u8>>,
    check_name: bool,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_slice() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
