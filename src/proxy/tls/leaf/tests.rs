use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::*;

/// A CA made in the test: (certificate DER, key PEM).
fn ca(name: &str) -> (Vec<u8>, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    (cert.der().to_vec(), key.serialize_pem())
}

#[test]
fn the_cache_is_bounded_and_keyed_by_normalised_host() {
    let (der, key) = ca("Test CA");
    let issuer = LeafIssuer::new(&der, &key, 3).unwrap();
    assert_eq!(issuer.cached(), 0, "the probe leaf is not cached");
    let a = issuer.certified_key("API.Example.com").unwrap();
    let a_again = issuer.certified_key("api.example.com.").unwrap();
    assert!(Arc::ptr_eq(&a, &a_again), "same host, same leaf");
    assert!(Arc::ptr_eq(
        &issuer.server_config("api.example.com").unwrap(),
        &issuer.server_config("API.example.COM").unwrap()
    ));
    for host in ["b.example", "c.example", "d.example", "e.example"] {
        issuer.certified_key(host).unwrap();
        assert!(issuer.cached() <= 3);
    }
    assert_eq!(issuer.cached(), 3);
    let a_new = issuer.certified_key("api.example.com").unwrap();
    assert!(!Arc::ptr_eq(&a, &a_new), "the least recently used leaf was evicted and reissued");
    assert!(format!("{issuer:?}").contains("capacity: 3"));
}

#[test]
fn zero_capacity_still_caches_one() {
    let (der, key) = ca("Test CA");
    let issuer = LeafIssuer::new(&der, &key, 0).unwrap();
    issuer.certified_key("a.example").unwrap();
    issuer.certified_key("b.example").unwrap();
    assert_eq!(issuer.cached(), 1);
}

#[test]
fn ip_addresses_and_bracketed_ipv6_get_leaves() {
    let (der, key) = ca("Test CA");
    let issuer = LeafIssuer::new(&der, &key, 8).unwrap();
    let v6 = issuer.certified_key("[::1]").unwrap();
    assert!(Arc::ptr_eq(&v6, &issuer.certified_key("::1").unwrap()));
    issuer.certified_key("127.0.0.1").unwrap();
}

#[test]
fn hosts_that_cannot_be_certificate_names_are_refused() {
    let (der, key) = ca("Test CA");
    let issuer = LeafIssuer::new(&der, &key, 8).unwrap();
    for host in ["", "bad host", "a..b", "exa\u{e9}mple.com", "-"] {
        let e = issuer.certified_key(host).unwrap_err();
        assert!(matches!(e, TlsError::BadHost { .. }), "{host:?}: {e}");
    }
}

#[test]
fn a_key_that_is_not_the_cas_is_refused() {
    let (der, _) = ca("Test CA");
    let (_, other_key) = ca("Other CA");
    let e = LeafIssuer::new(&der, &other_key, 8).unwrap_err();
    assert!(matches!(e, TlsError::CaUnusable { .. }), "{e}");
    let e = LeafIssuer::new(&der, "not a key", 8).unwrap_err();
    assert!(matches!(e, TlsError::CaKey { .. }), "{e}");
    let (_, key) = ca("Test CA");
    let e = LeafIssuer::new(b"not a certificate", &key, 8).unwrap_err();
    assert!(matches!(e, TlsError::CaUnusable { .. } | TlsError::CaCert { .. }), "{e}");
}

#[test]
fn a_certificate_that_is_not_a_ca_cannot_issue() {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["leaf.example".to_owned()]).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    let cert = params.self_signed(&key).unwrap();
    let e = LeafIssuer::new(cert.der(), &key.serialize_pem(), 8).unwrap_err();
    assert!(matches!(e, TlsError::CaUnusable { .. }), "{e}");
}

#[test]
fn alpn_defaults_to_http1_and_can_be_replaced() {
    let (der, key) = ca("Test CA");
    let issuer = LeafIssuer::new(&der, &key, 8).unwrap();
    assert_eq!(issuer.server_config("a.example").unwrap().alpn_protocols, vec![b"http/1.1".to_vec()]);
    let issuer = issuer.with_alpn(&[b"h2", b"http/1.1"]);
    assert_eq!(issuer.cached(), 0);
    assert_eq!(issuer.server_config("a.example").unwrap().alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[test]
fn leaves_are_short_lived_backdated_p256_server_certificates_for_one_name() {
    use x509_parser::extensions::GeneralName;
    let (der, key) = ca("Test CA");
    let issuer = LeafIssuer::new(&der, &key, 8).unwrap();
    let leaf = issuer.certified_key("API.example.com").unwrap();
    assert_eq!(leaf.cert.len(), 1, "the leaf alone; clients hold the CA");
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    assert!((now - 3600 - 5..=now - 3600 + 5).contains(&not_before), "backdated one hour");
    assert_eq!(not_after - not_before, LEAF_VALIDITY.as_secs() as i64);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, vec![GeneralName::DNSName("api.example.com")]);
    assert!(!cert.basic_constraints().unwrap().is_some_and(|bc| bc.value.ca));
    assert!(cert.extended_key_usage().unwrap().unwrap().value.server_auth);
    assert_eq!(cert.signature_algorithm.algorithm.to_id_string(), "1.2.840.10045.4.3.2", "ecdsa-with-SHA256");
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());
}
