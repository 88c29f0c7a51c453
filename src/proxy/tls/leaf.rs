//! Leaf certificates for intercepted hosts: ECDSA P-256, the host as the only SAN (DNS name
//! or IP address), valid from one hour ago for 30 days, signed by the sandbox CA. Issued on
//! first use and kept in a bounded LRU keyed by the lower-case host.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lru::LruCache;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::ServerConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{ALPN_HTTP1, TlsError, provider};
use crate::policy::host::unbracketed;

/// How long a leaf is valid (from one hour before issue).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// A cached leaf is replaced this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// A name used once at construction to prove the CA can issue verifiable leaves.
const PROBE_HOST: &str = "probe.openshell.invalid";

struct Leaf {
    key: Arc<CertifiedKey>,
    config: Arc<ServerConfig>,
    issued: Instant,
}

/// Issues and caches leaf certificates signed by the sandbox CA.
pub struct LeafIssuer {
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    alpn: Vec<Vec<u8>>,
    cache: Mutex<LruCache<String, Leaf>>,
}

impl fmt::Debug for LeafIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("LeafIssuer").field("cached", &cache.len()).field("capacity", &cache.cap()).finish()
    }
}

impl LeafIssuer {
    /// From the CA certificate (DER) and its PKCS#8 PEM key; at most `capacity` leaves are
    /// cached (at least 1). Proves the pair works by issuing and verifying a probe leaf.
    pub fn new(ca_cert_der: &[u8], ca_key_pem: &str, capacity: usize) -> Result<Self, TlsError> {
        let provider = provider();
        let ca_der = CertificateDer::from(ca_cert_der.to_vec());
        require_ca(ca_cert_der)?;
        let key = KeyPair::from_pem(ca_key_pem).map_err(|source| TlsError::CaKey { source })?;
        let unusable = |e: rustls::Error| TlsError::CaUnusable { message: e.to_string() };
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        CertifiedKey::from_der(vec![ca_der.clone()], key_der, &provider).map_err(unusable)?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(|source| TlsError::CaCert { source })?;
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        let this = LeafIssuer {
            issuer,
            provider,
            alpn: vec![ALPN_HTTP1.to_vec()],
            cache: Mutex::new(LruCache::new(capacity)),
        };

        let probe = this.issue(PROBE_HOST)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).map_err(unusable)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), this.provider.clone())
            .build()
            .map_err(|e| TlsError::CaUnusable { message: e.to_string() })?;
        let name = ServerName::try_from(PROBE_HOST).expect("a valid name");
        verifier.verify_server_cert(&probe.cert[0], &[], &name, &[], UnixTime::now()).map_err(unusable)?;
        Ok(this)
    }

    /// Replaces the ALPN protocols offered to clients (default `http/1.1` only). The L7
    /// session serves HTTP/2 when the client picks `h2`, so `[h2, http/1.1]` lets gRPC
    /// clients be inspected. Clears the cache of configurations.
    pub fn with_alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self.cache.get_mut().unwrap_or_else(PoisonError::into_inner).clear();
        self
    }

    /// The leaf for `host` (DNS name or IP address, any case, IPv6 with or without brackets).
    pub fn certified_key(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        Ok(self.leaf(host)?.0)
    }

    /// A server configuration presenting the leaf for `host` whatever the client's SNI.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        Ok(self.leaf(host)?.1)
    }

    /// A server configuration choosing the leaf by the client's SNI, or for `fallback_host`
    /// (the CONNECT host) when the client sends none. The fallback is issued now, so a bad
    /// fallback fails here; a bad SNI name fails that handshake.
    pub fn sni_server_config(self: &Arc<Self>, fallback_host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let fallback = self.certified_key(fallback_host)?;
        let resolver = SniResolver { issuer: Arc::clone(self), fallback };
        Ok(Arc::new(self.config_with(Arc::new(resolver))?))
    }

    /// How many leaves are cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn leaf(&self, host: &str) -> Result<(Arc<CertifiedKey>, Arc<ServerConfig>), TlsError> {
        let name = normalize(host);
        if let Some(leaf) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&name)
            && leaf.issued.elapsed() < LEAF_VALIDITY - RENEW_BEFORE
        {
            return Ok((leaf.key.clone(), leaf.config.clone()));
        }
        // Issued outside the lock: two first requests for one host may both issue; one wins.
        let key = Arc::new(self.issue(&name)?);
        let resolver = rustls::sign::SingleCertAndKey::from(key.clone());
        let config = Arc::new(self.config_with(Arc::new(resolver))?);
        let leaf = Leaf { key: key.clone(), config: config.clone(), issued: Instant::now() };
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).put(name, leaf);
        Ok((key, config))
    }

    fn config_with(&self, resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls { what: "server configuration", source })?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }

    /// Issues a fresh leaf for a normalised host (no cache).
    fn issue(&self, host: &str) -> Result<CertifiedKey, TlsError> {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if ServerName::try_from(host).is_ok() && !host.is_empty() => {
                SanType::DnsName(host.try_into().map_err(|_| TlsError::BadHost { host: host.to_owned() })?)
            }
            Err(_) => return Err(TlsError::BadHost { host: host.to_owned() }),
        };
        let issue_err = |source| TlsError::Issue { host: host.to_owned(), source };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + since_epoch - Duration::from_secs(3600);
        params.not_after = epoch + since_epoch + LEAF_VALIDITY - Duration::from_secs(3600);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_err)?;
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        CertifiedKey::from_der(vec![cert.der().clone()], key_der, &self.provider)
            .map_err(|source| TlsError::Rustls { what: "leaf key", source })
    }
}

/// Refuses a certificate without `basicConstraints CA:TRUE` (clients such as OpenSSL
/// reject leaves issued by one).
fn require_ca(der: &[u8]) -> Result<(), TlsError> {
    let unusable = |message: String| TlsError::CaUnusable { message };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| unusable(format!("not a certificate: {e}")))?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        Ok(_) => Err(unusable("it is not a CA certificate (no basicConstraints CA:TRUE)".to_owned())),
        Err(e) => Err(unusable(format!("its basicConstraints cannot be read: {e}"))),
    }
}

/// Lower case, without a trailing dot or IPv6 brackets.
fn normalize(host: &str) -> String {
    unbracketed(host.trim_end_matches('.')).to_ascii_lowercase()
}

/// Picks the leaf by SNI, else the fallback (CONNECT) host's.
#[derive(Debug)]
struct SniResolver {
    issuer: Arc<LeafIssuer>,
    fallback: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            None => Some(self.fallback.clone()),
            Some(sni) => match self.issuer.certified_key(sni) {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::warn!(sni, "refused the TLS handshake: {e}");
                    None
                }
            },
        }
    }
}

#[cfg(test)]
mod tests;
