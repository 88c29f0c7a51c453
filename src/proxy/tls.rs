//! TLS for inspected connections: leaf certificates for the requested host signed by the
//! sandbox CA (cached in a bounded LRU) on the agent side, and the verifying client
//! configuration (system roots plus an optional extra CA file) on the upstream side.

mod leaf;
mod upstream;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

use crate::{Exit, ExitStatus};

pub use leaf::{LEAF_VALIDITY, LeafIssuer};
pub use upstream::upstream_client_config;

/// The ALPN protocol offered by default on both sides (`h2` is opt-in, see
/// [`LeafIssuer::with_alpn`]; upstream, `h2` is offered only for an HTTP/2 client).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Failures of building TLS configurations or issuing leaves. None carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA certificate could not be parsed.
    #[error("cannot use the CA certificate: {source}")]
    CaCert {
        /// The parse error.
        source: rcgen::Error,
    },
    /// The CA private key could not be parsed.
    #[error("cannot use the CA private key (PKCS#8 PEM expected): {source}")]
    CaKey {
        /// The parse error (never the key).
        source: rcgen::Error,
    },
    /// The CA certificate and key do not work together.
    #[error("the CA certificate and private key do not belong together or cannot issue certificates: {message}")]
    CaUnusable {
        /// What failed.
        message: String,
    },
    /// A host that cannot be a certificate name.
    #[error("`{host}` is not a DNS name or IP address a certificate can be issued for")]
    BadHost {
        /// The host as given.
        host: String,
    },
    /// Issuing a leaf failed.
    #[error("cannot issue a certificate for {host}: {source}")]
    Issue {
        /// The host.
        host: String,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// rustls refused a configuration or key.
    #[error("cannot build the TLS {what}: {source}")]
    Rustls {
        /// What was being built.
        what: &'static str,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The extra CA file could not be read.
    #[error("cannot read the upstream CA file {path} (OPENSHELL_UPSTREAM_CA_FILE): {source}")]
    ReadCaFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The extra CA file is not usable PEM certificates.
    #[error("the upstream CA file {path} (OPENSHELL_UPSTREAM_CA_FILE) {message}")]
    BadCaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Neither the system nor the extra file gave any trust root.
    #[error(
        "no trust roots for upstream TLS: the system store is empty and no OPENSHELL_UPSTREAM_CA_FILE is set (install ca-certificates)"
    )]
    NoRoots,
}

impl ExitStatus for TlsError {
    fn exit_status(&self) -> Exit {
        match self {
            TlsError::BadHost { .. } | TlsError::Issue { .. } | TlsError::Rustls { .. } => Exit::Internal,
            _ => Exit::Usage,
        }
    }
}

/// The crypto provider every configuration here uses (ring, the crate's only provider).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
