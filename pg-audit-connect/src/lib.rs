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
//! `sslrootcert=system` trusts the system's roots. Without `sslrootcert`,
//! `~/.postgresql/root.crt` is used when it exists; `verify-ca` and `verify-full` refuse to
//! start without a root, as libpq does. A client certificate (`sslcert`, `sslkey`, or
//! `~/.postgresql/postgresql.crt` and `.key`) is sent when the server asks for one. Unix
//! sockets never use TLS (nor does libpq over them).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use pg_audit::conninfo::{ConnInfo, Host, SslMode};
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

/// Reads `conninfo` ([`ConnInfo::parse`]) and connects, with TLS as its `sslmode` says and
/// pg-audit's pinned session settings ([`pg_audit::session`]) as startup options; the
/// connection is driven on the current tokio runtime.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, Error> {
    connect_to(&ConnInfo::parse(conninfo)?).await
}

/// [`connect`] for a connection string already read.
pub async fn connect_to(info: &ConnInfo) -> Result<tokio_postgres::Client, Error> {
    let (client, connection) =
        config(info)
            .connect(tls(info)?)
            .await
            .map_err(|source| Error::Connect {
                target: target(info),
                source,
            })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `user@host:port/database` (the first host), for messages.
pub fn target(info: &ConnInfo) -> String {
    let host = match info.hosts.first() {
        Some((Host::Tcp(h), port)) if h.contains(':') => format!("[{h}]:{port}"),
        Some((Host::Tcp(h), port)) => format!("{h}:{port}"),
        Some((Host::Unix(dir), port)) => format!("{}/.s.PGSQL.{port}", dir.display()),
        None => String::new(),
    };
    format!("{}@{host}/{}", info.user, info.dbname)
}

/// The tokio-postgres configuration of `info`, with pg-audit's pinned session settings added
/// to its options.
pub fn config(info: &ConnInfo) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    for (host, port) in &info.hosts {
        match host {
            Host::Tcp(name) => config.host(name),
            #[cfg(unix)]
            Host::Unix(dir) => config.host_path(dir),
            #[cfg(not(unix))]
            Host::Unix(dir) => config.host(dir.display().to_string()),
        };
        config.port(*port);
    }
    config.user(&info.user).dbname(&info.dbname);
    if let Some(password) = &info.password {
        config.password(password);
    }
    config.options(pg_audit::session::merge_options(info.options.as_deref()));
    if let Some(name) = &info.application_name {
        config.application_name(name);
    }
    // libpq: zero or none waits forever, and less than 2 seconds is 2.
    if let Some(seconds) = info.connect_timeout.filter(|s| *s > 0) {
        config.connect_timeout(Duration::from_secs(seconds.max(2)));
    }
    let over_sockets_only = info.hosts.iter().all(|(h, _)| matches!(h, Host::Unix(_)));
    config.ssl_mode(match info.sslmode {
        _ if over_sockets_only => tokio_postgres::config::SslMode::Disable,
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
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
            let roots = roots(info)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::Tls(format!("the root certificates: {e}")))?;
            if info.sslmode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    // As libpq: a client certificate that does not exist is not sent; one that exists needs
    // its key.
    match info.sslcert.as_deref().filter(|c| c.is_file()) {
        None => Ok(builder.with_no_client_auth()),
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
            let certs = pem_certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::Tls(format!("cannot read the key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| Error::Tls(format!("the client certificate {}: {e}", cert.display())))
        }
    }
}

/// The trusted roots: `sslrootcert`'s certificates, or the system's for `system`.
fn roots(info: &ConnInfo) -> Result<RootCertStore, Error> {
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
    let (_, ignored) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(Error::Tls(format!(
            "no usable root certificate in {} ({ignored} could not be read)",
            info.sslrootcert
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        )));
    }
    Ok(roots)
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

/// `verify-ca`: the chain checked against the roots, the name not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
