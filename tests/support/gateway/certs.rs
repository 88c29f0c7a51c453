//! Test certificates made with rcgen: a CA, a gateway (server) certificate and a
//! sandbox (client) certificate it signed, written to files the client reads.

use std::path::{Path, PathBuf};

use openshell_sandbox::config::GatewayTls;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::ServerTls;

/// A CA that signs leaf certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, in PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        TestCa { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// A gateway certificate for `names` signed by `server_ca`, accepting clients of `client_ca`.
pub fn server_tls(server_ca: &TestCa, names: &[&str], client_ca: &TestCa) -> ServerTls {
    let leaf = server_ca.leaf(names);
    ServerTls { cert_pem: leaf.cert_pem, key_pem: leaf.key_pem, client_ca_pem: client_ca.pem() }
}

/// Writes the client's files into `dir`: `trusted_ca` as the only root, and a client
/// certificate signed by `client_ca` when given.
pub fn client_files(dir: &Path, trusted_ca: &TestCa, client_ca: Option<&TestCa>) -> GatewayTls {
    let path = |name: &str| -> PathBuf { dir.join(name) };
    std::fs::write(path("ca.pem"), trusted_ca.pem()).unwrap();
    let (cert, key) = match client_ca {
        Some(ca) => {
            let leaf = ca.leaf(&["sandbox-1"]);
            std::fs::write(path("client.pem"), leaf.cert_pem).unwrap();
            std::fs::write(path("client.key"), leaf.key_pem).unwrap();
            (Some(path("client.pem")), Some(path("client.key")))
        }
        None => (None, None),
    };
    GatewayTls { ca: path("ca.pem"), cert, key }
}
