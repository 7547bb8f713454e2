//! TLS configurations with rustls (ring as the crypto provider): the
//! server side of both ports from `ssl_cert_file` / `ssl_key_file` (and
//! `ssl_ca_file` for client certificates), and the client side of a
//! walreceiver or base backup from libpq's `sslmode` and `sslrootcert`.
//!
//! A certificate or key that does not load is an error naming the file and
//! the parameter, reported at start-up (PostgreSQL refuses to start with
//! `ssl = on` and a bad key as well).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read or parsed.
    #[error("could not load {param} \"{path}\": {reason}")]
    Load {
        /// The parameter that names the file (`ssl_cert_file`,
        /// `sslrootcert`, ...), so the operator knows what to fix.
        param: &'static str,
        /// The file's path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A parameter that the configuration needs is not set.
    #[error("{param} is required when {when}")]
    Missing {
        /// The missing parameter.
        param: &'static str,
        /// The setting that needs it ("sslmode is verify-ca or
        /// verify-full").
        when: &'static str,
    },
    /// rustls refused the configuration (no usable protocol version or
    /// cipher suite).
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    /// An `sslmode` that is not one of libpq's six; holds the value given.
    #[error(
        "invalid sslmode value: \"{0}\" (disable, allow, prefer, require, verify-ca, verify-full)"
    )]
    SslMode(String),
}

/// The crypto provider every configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    // ring builds with a C compiler alone (aws-lc-rs, which adds post-quantum
    // key exchange, needs cmake); classical key exchange is what PostgreSQL
    // 15 and Redis offer too.
    #[allow(deprecated)]
    Arc::new(crypto::ring::default_provider())
}

fn load_error(param: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Load {
        param,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(
    param: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| load_error(param, path, e))?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| load_error(param, path, e))?;
    if certs.is_empty() {
        return Err(load_error(param, path, "no certificate found in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1). As PostgreSQL,
/// a key file that others can read is refused.
pub fn load_key(param: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match super::secret_file::readable_by_others(path) {
        Ok(true) => {
            return Err(load_error(
                param,
                path,
                "the private key file has group or world access; permissions should be u=rw (0600) or less",
            ))
        }
        Ok(false) => {}
        Err(e) => return Err(load_error(param, path, e)),
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| load_error(param, path, e))
}

fn roots(param: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in load_certs(param, path)? {
        store.add(c).map_err(|e| load_error(param, path, e))?;
    }
    Ok(store)
}

/// Where a server's certificate and key come from.
#[derive(Debug, Clone, Copy)]
pub struct ServerFiles<'a> {
    /// The parameter naming the certificate file, for error messages
    /// (`ssl_cert_file`, `tls_cert_file`).
    pub cert_param: &'static str,
    /// The certificate chain (PEM), the server's own certificate first.
    pub cert: &'a Path,
    /// The parameter naming the key file, for error messages.
    pub key_param: &'static str,
    /// The private key (PEM) of the certificate; refused when others can
    /// read it, as PostgreSQL refuses an `ssl_key_file` wider than 0600.
    pub key: &'a Path,
    /// Client certificates are asked for (not required) and must chain to
    /// these roots when given (`ssl_ca_file`).
    pub client_ca: Option<&'a Path>,
}

/// A server configuration; the key must match the certificate.
pub fn server_config(files: ServerFiles<'_>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(files.cert_param, files.cert)?;
    let key = load_key(files.key_param, files.key)?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("ssl_ca_file", ca)?),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| load_error("ssl_ca_file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        load_error(
            files.key_param,
            files.key,
            format!("{e} (does the key match {}?)", files.cert_param),
        )
    })?;
    Ok(Arc::new(config))
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; walrep's client tries TLS only when told to, so
    /// `allow` behaves as `disable` unless the server insists.
    Allow,
    /// TLS if the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS or nothing, unverified.
    Require,
    /// TLS with the certificate chained to `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Parse libpq's spelling (`verify-full`, ...).
    pub fn parse(s: &str) -> Result<SslMode, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(TlsError::SslMode(other.to_string())),
        })
    }

    /// libpq's spelling, for connection strings and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the client sends an SSLRequest.
    pub fn tries_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Allow)
    }

    /// Whether a server answering `N` is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// A client configuration for `mode`; `root_cert` is `sslrootcert`,
/// required by the verifying modes.
pub fn client_config(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let webpki = match (mode, root_cert) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError::Missing {
                param: "sslrootcert",
                when: "sslmode is verify-ca or verify-full",
            })
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, Some(path)) => Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots("sslrootcert", path)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| load_error("sslrootcert", path, e))?,
        ),
        _ => None,
    };
    let verifier = Arc::new(ModeVerifier {
        check_name: mode == SslMode::VerifyFull,
        webpki,
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The server name a client verifies: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::Config(format!("\"{host}\" is not a valid server name for TLS")))
}

/// libpq's rules on the server's certificate: `require` checks none (the
/// handshake signatures still are), `verify-ca` the chain, `verify-full`
/// the chain and the name.
#[derive(Debug)]
struct ModeVerifier {
    check_name: bool,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ModeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
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
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
