//! What every proxied connection shares (policy, limits, CA and leaves, credentials,
//! upstream TLS, inference routes, shutdown): built once by startup, read by the listener
//! ([`super::server`]), the CONNECT and absolute-form handlers and the transparent ports.

use std::sync::Arc;

use crate::config::ProxyLimits;
use crate::shutdown::Shutdown;

use super::ca::CertificateAuthority;
use super::credentials::SecretStore;
use super::l7::routes::RoutesHandle;
use super::policy_source::PolicyHandle;
use super::tls::LeafIssuer;

/// What every connection of the proxy (listener and transparent ports) shares.
pub struct Ctx {
    /// The current policy generation.
    pub policy: PolicyHandle,
    /// Limits and timeouts.
    pub limits: ProxyLimits,
    /// `--allow-loopback-upstreams`.
    pub allow_loopback: bool,
    /// The CA, for TLS interception.
    pub ca: Arc<CertificateAuthority>,
    /// Leaf certificates for intercepted hosts, signed by the CA.
    pub leaves: Arc<LeafIssuer>,
    /// Provider credentials swapped into inspected requests.
    pub secrets: Arc<SecretStore>,
    /// Verified upstream TLS (system roots plus `OPENSHELL_UPSTREAM_CA_FILE`).
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// The `inference.local` routes, when configured.
    pub inference: Option<Arc<RoutesHandle>>,
    /// Stop accepting and drain.
    pub shutdown: Shutdown,
}
