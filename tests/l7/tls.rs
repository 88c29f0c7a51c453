//! Real TLS handshakes on 127.0.0.1 with certificates made here by rcgen: leaves from
//! `LeafIssuer` verify for their host and only for it; the upstream client configuration
//! trusts the extra CA file and refuses a server whose CA it does not know.

use std::sync::Arc;
use std::time::Duration;

use openshell_sandbox::proxy::tls::{LeafIssuer, upstream_client_config};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::support::l7 as l7_support;
use l7_support::{Ca, ca, client_config};

fn client_trusting(ca: &Ca) -> Arc<ClientConfig> {
    client_config(ca, &[])
}

/// A TLS server on 127.0.0.1:0 answering each connection's first line with `echo:<line>`.
async fn serve(config: Arc<ServerConfig>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = [0u8; 64];
                let Ok(n) = tls.read(&mut buf).await else { return };
                let _ = tls.write_all(&[b"echo:", &buf[..n]].concat()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// Connects with `client` as `name`; the echoed answer, or the handshake error's text.
async fn exchange(client: Arc<ClientConfig>, addr: std::net::SocketAddr, name: &str) -> Result<String, String> {
    let work = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client).connect(name, tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"hi").await.map_err(|e| e.to_string())?;
        let mut out = String::new();
        tls.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(10), work).await.expect("the exchange finished in time")
}

#[tokio::test]
async fn a_leaf_verifies_for_its_host_and_fails_for_another() {
    let ca = ca("Sandbox Test CA");
    let issuer = LeafIssuer::new(&ca.der, &ca.key_pem, 16).unwrap();
    let addr = serve(issuer.server_config("api.example.com").unwrap()).await;
    let client = client_trusting(&ca);
    assert_eq!(exchange(client.clone(), addr, "api.example.com").await.unwrap(), "echo:hi");
    assert_eq!(exchange(client.clone(), addr, "API.EXAMPLE.COM").await.unwrap(), "echo:hi");
    let e = exchange(client, addr, "other.example.com").await.unwrap_err();
    assert!(e.contains("NotValidForName") || e.contains("not valid for name"), "{e}");
}

#[tokio::test]
async fn a_client_trusting_another_ca_refuses_the_leaf() {
    let ca1 = ca("Sandbox Test CA");
    let issuer = LeafIssuer::new(&ca1.der, &ca1.key_pem, 16).unwrap();
    let addr = serve(issuer.server_config("api.example.com").unwrap()).await;
    let e = exchange(client_trusting(&ca("Unrelated CA")), addr, "api.example.com").await.unwrap_err();
    assert!(e.contains("UnknownIssuer") || e.contains("unknown issuer"), "{e}");
}

#[tokio::test]
async fn ip_address_leaves_verify_for_the_address() {
    let ca = ca("Sandbox Test CA");
    let issuer = LeafIssuer::new(&ca.der, &ca.key_pem, 16).unwrap();
    let addr = serve(issuer.server_config("127.0.0.1").unwrap()).await;
    assert_eq!(exchange(client_trusting(&ca), addr, "127.0.0.1").await.unwrap(), "echo:hi");
    assert!(exchange(client_trusting(&ca), addr, "127.0.0.2").await.is_err());
}

#[tokio::test]
async fn the_sni_resolver_issues_for_the_clients_name() {
    let ca = ca("Sandbox Test CA");
    let issuer = Arc::new(LeafIssuer::new(&ca.der, &ca.key_pem, 16).unwrap());
    let addr = serve(issuer.sni_server_config("connect-host.example").unwrap()).await;
    let client = client_trusting(&ca);
    assert_eq!(exchange(client.clone(), addr, "sni-one.example").await.unwrap(), "echo:hi");
    assert_eq!(exchange(client.clone(), addr, "sni-two.example").await.unwrap(), "echo:hi");
    assert_eq!(issuer.cached(), 3, "the fallback and both SNI names");

    // Without SNI the client still checks the name it expects: the fallback's.
    let mut no_sni = (*client).clone();
    no_sni.enable_sni = false;
    let no_sni = Arc::new(no_sni);
    assert_eq!(exchange(no_sni.clone(), addr, "connect-host.example").await.unwrap(), "echo:hi");
    assert!(exchange(no_sni, addr, "sni-one.example").await.is_err());
}

#[tokio::test]
async fn the_upstream_config_trusts_the_extra_ca_and_refuses_unknown_cas() {
    let upstream_ca = ca("Upstream Test CA");
    let issuer = LeafIssuer::new(&upstream_ca.der, &upstream_ca.key_pem, 4).unwrap();
    let addr = serve(issuer.server_config("upstream.test").unwrap()).await;
    let dir = tempfile::tempdir().unwrap();

    let trusted = dir.path().join("upstream-ca.pem");
    let other = ca("Another CA");
    std::fs::write(&trusted, format!("{}{}", other.pem, upstream_ca.pem)).unwrap();
    let config = upstream_client_config(Some(&trusted)).unwrap();
    assert_eq!(exchange(config.clone(), addr, "upstream.test").await.unwrap(), "echo:hi");
    assert!(exchange(config, addr, "wrong-name.test").await.is_err());

    let untrusted = dir.path().join("other-ca.pem");
    std::fs::write(&untrusted, &other.pem).unwrap();
    let e = exchange(upstream_client_config(Some(&untrusted)).unwrap(), addr, "upstream.test").await.unwrap_err();
    assert!(e.contains("UnknownIssuer") || e.contains("unknown issuer"), "{e}");

    if let Ok(system_only) = upstream_client_config(None) {
        assert!(exchange(system_only, addr, "upstream.test").await.is_err(), "system roots do not know the test CA");
    }
}
