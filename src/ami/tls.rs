//! AMI over TLS (`ami.tls = true`): the rustls client set-up, the handshake, and what a
//! failed handshake means in an admin's words.
//!
//! Trusted: the system's roots (`/etc/ssl/certs`, as `rustls-native-certs` finds them) plus
//! the certificates of `ami.tls_ca_file` (Asterisk's usual self-signed CA, or its
//! self-signed certificate itself). The name checked is `ami.tls_server_name`, else the
//! host of `ami.address`, against the certificate's subjectAltName only: a name in the CN
//! alone (as Asterisk's `ast_tls_cert` script writes it) is not checked by rustls, and
//! [`describe`] says so. Whether the config can work at all is decided once, at load
//! ([`client_config`], which `run` and `check` call before anything starts); the
//! connection task only does handshakes.

use std::io;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, CertificateError, ClientConfig, RootCertStore};

use crate::config::AmiConfig;

/// Why TLS cannot be set up with this config; `key` is the config key to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsConfigError {
    pub key: &'static str,
    pub message: String,
}

/// The rustls client config for `ami`: the system's roots plus `ami.tls_ca_file`'s
/// certificates. Fails when nothing would be trusted, or a CA certificate is unusable.
pub fn client_config(ami: &AmiConfig) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    // Unreadable files among the system's roots are skipped, as every TLS client does.
    let (system_added, _) = roots.add_parsable_certificates(system.certs);
    for (n, cert) in ami.tls_ca_certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|error| TlsConfigError {
            key: "ami.tls_ca_file",
            message: format!(
                "certificate {} of {} cannot be trusted: {error}",
                n + 1,
                path_of(ami)
            ),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError {
            key: "ami.tls",
            message: format!(
                "nothing to trust: the system has no CA certificates ({system_added} found; \
                 install the package ca-certificates) and ami.tls_ca_file is not set"
            ),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsConfigError {
            key: "ami.tls",
            message: format!("cannot set up TLS: {error}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn path_of(ami: &AmiConfig) -> String {
    ami.tls_ca_file.as_ref().map_or_else(
        || "ami.tls_ca_file".to_string(),
        |p| p.display().to_string(),
    )
}

/// The name the certificate must carry: `ami.tls_server_name`, else the host of
/// `ami.address` (an IP address is checked as one).
pub fn server_name(ami: &AmiConfig) -> Result<ServerName<'static>, TlsConfigError> {
    let (name, key) = match &ami.tls_server_name {
        Some(name) => (name.to_string(), "ami.tls_server_name"),
        None => (host_of(&ami.address), "ami.address"),
    };
    ServerName::try_from(name.clone()).map_err(|_| TlsConfigError {
        key,
        message: format!("{name:?} is neither a DNS name nor an IP address"),
    })
}

/// `pbx.example` of `pbx.example:5039`, `::1` of `[::1]:5039`.
fn host_of(address: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// What a connection needs for its handshakes; built once from the config. A config
/// that [`client_config`] or [`server_name`] refuses (which `run` and `check` never pass
/// on) makes every handshake fail with that refusal, never a plain connection.
#[derive(Clone)]
pub struct AmiTls {
    setup: Result<(TlsConnector, ServerName<'static>), TlsConfigError>,
}

impl std::fmt::Debug for AmiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.setup {
            Ok((_, name)) => write!(f, "AmiTls({:?})", name.to_str()),
            Err(error) => write!(f, "AmiTls(unusable: {error})"),
        }
    }
}

impl AmiTls {
    pub fn from_config(ami: &AmiConfig) -> AmiTls {
        let setup = client_config(ami).and_then(|config| {
            let name = server_name(ami)?;
            Ok((TlsConnector::from(config), name))
        });
        AmiTls { setup }
    }

    /// The TLS handshake on a connected socket; the error in an admin's words
    /// ([`describe`]).
    pub async fn handshake(&self, stream: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        let (connector, name) = self.setup.as_ref().map_err(ToString::to_string)?;
        match connector.connect(name.clone(), stream).await {
            Ok(stream) => Ok(stream),
            Err(error) => Err(describe(&error, &name.to_str())),
        }
    }
}

/// A failed handshake in an admin's words: which certificate problem, and what to set.
pub fn describe(error: &io::Error, server_name: &str) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => format!(
                "the server closed the connection during the TLS handshake ({error}): is \
                 tlsenable = yes in manager.conf, and ami.address its tlsbindaddr port?"
            ),
            _ => error.to_string(),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => describe_certificate(cert, server_name),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!(
                "the server does not speak TLS ({tls}): is ami.address the plain AMI port? \
                 Asterisk's TLS port is manager.conf's tlsbindaddr (usually 5039)"
            )
        }
        other => format!("{other}"),
    }
}

fn describe_certificate(error: &CertificateError, server_name: &str) -> String {
    const RECIPE: &str = "docs/configuration.md, \"AMI over TLS\"";
    match error {
        CertificateError::UnknownIssuer => format!(
            "certificate not trusted (unknown issuer): put the CA that signed Asterisk's \
             certificate (or a self-signed certificate itself) in a PEM file and name it in \
             ami.tls_ca_file ({RECIPE})"
        ),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } if presented.is_empty() => format!(
            "certificate not valid for {:?}: it names no host in its subjectAltName (Asterisk's \
             ast_tls_cert puts the host only in the CN, which is not checked): make a \
             certificate with a subjectAltName ({RECIPE})",
            expected.to_str()
        ),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "certificate not valid for {:?}: it names {}; set ami.tls_server_name to one of \
             them (or use it as the host of ami.address)",
            expected.to_str(),
            presented
                .iter()
                .map(|name| plain_name(name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CertificateError::NotValidForName => format!(
            "certificate not valid for {server_name:?}: set ami.tls_server_name to a name in \
             its subjectAltName ({RECIPE})"
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("certificate expired ({error:?}): renew Asterisk's tlscertfile")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("certificate not valid yet ({error:?}): check both hosts' clocks")
        }
        CertificateError::Other(other)
            if format!("{other:?}").contains("UnsupportedCertVersion") =>
        {
            format!(
                "certificate refused: an X.509 v1 certificate, with no subjectAltName (as \
                 Asterisk's ast_tls_cert makes them); an X.509 v3 certificate with a \
                 subjectAltName is needed ({RECIPE})"
            )
        }
        other => format!(
            "certificate refused ({}): an X.509 v3 certificate with a subjectAltName is needed \
             ({RECIPE})",
            rustls::Error::InvalidCertificate(other.clone())
        ),
    }
}

/// `localhost` of rustls's `DnsName("localhost")`, `127.0.0.1` of `IpAddress(127.0.0.1)`.
fn plain_name(presented: &str) -> &str {
    for (open, close) in [("DnsName(\"", "\")"), ("IpAddress(", ")")] {
        if let Some(inner) = presented
            .strip_prefix(open)
            .and_then(|rest| rest.strip_suffix(close))
        {
            return inner;
        }
    }
    presented
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address() {
        for (address, host) in [
            ("pbx.example:5039", "pbx.example"),
            ("127.0.0.1:5039", "127.0.0.1"),
            ("[::1]:5039", "::1"),
        ] {
            assert_eq!(host_of(address), host, "{address}");
        }
    }
}
