//! The client side of an inspected connection: upstream TLS verified against the system
//! roots plus the certificates of `OPENSHELL_UPSTREAM_CA_FILE`. Never unverified.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use super::{ALPN_HTTP1, TlsError, provider};

/// A client configuration trusting the system roots (`rustls-native-certs`, which honours
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus every certificate in `extra_ca_file` (PEM). ALPN
/// offers `http/1.1`. An unreadable, malformed or certificate-less extra file is an error
/// naming it. Loading the system store takes milliseconds: build once, share the `Arc`.
pub fn upstream_client_config(extra_ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::warn!(
            errors = native.errors.len(),
            "some system trust roots could not be loaded: {}",
            native.errors[0]
        );
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(added, ignored, "ignored unparsable system trust roots");
    }
    if let Some(path) = extra_ca_file {
        for cert in read_pem_certificates(path)? {
            roots.add(cert).map_err(|e| TlsError::BadCaFile {
                path: path.to_owned(),
                message: format!("holds a certificate that cannot be a trust root: {e}"),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { what: "upstream client configuration", source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Every `CERTIFICATE` block of a PEM file; at least one.
fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::ReadCaFile { path: path.to_owned(), source })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCaFile { path: path.to_owned(), message: format!("is not valid PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::BadCaFile {
            path: path.to_owned(),
            message: "holds no PEM CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_empty_or_malformed_extra_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = upstream_client_config(Some(&missing)).unwrap_err();
        assert!(matches!(e, TlsError::ReadCaFile { .. }) && e.to_string().contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = upstream_client_config(Some(&empty)).unwrap_err();
        assert!(e.to_string().contains("empty.pem") && e.to_string().contains("no PEM CERTIFICATE"), "{e}");

        let key_only = dir.path().join("key.pem");
        std::fs::write(&key_only, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let e = upstream_client_config(Some(&key_only)).unwrap_err();
        assert!(e.to_string().contains("key.pem") && e.to_string().contains("no PEM CERTIFICATE"), "{e}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
        let e = upstream_client_config(Some(&garbage)).unwrap_err();
        assert!(e.to_string().contains("garbage.pem"), "{e}");
    }

    #[test]
    fn system_roots_and_an_extra_file_make_a_config() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        let config = upstream_client_config(Some(&path)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
