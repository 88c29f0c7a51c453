//! The inspected HTTPS path (issue 4) against direct HTTPS: a local HTTPS upstream with a
//! certificate from a bench CA (given to the proxy as `upstream_ca_file`), reached through
//! a `protocol: rest`, `access: full` endpoint, so every request is decrypted, judged and
//! re-encrypted. Targets: new inspected connection + GET at most 3 ms median, inspected
//! download at least 0.6x direct.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use openshell_sandbox::proxy::tls::LeafIssuer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name the upstream's certificate carries; the proxy resolves it to 127.0.0.1.
pub const HOST: &str = "localhost";

/// A bench CA: its certificate (DER, PEM) and PKCS#8 key PEM.
pub struct Ca {
    pub der: Vec<u8>,
    pub pem: String,
    key_pem: String,
}

/// A fresh ECDSA P-256 CA, shaped like the proxy's own.
pub fn ca() -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, "Bench upstream CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    Ca { der: cert.der().to_vec(), pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// The proxy's CA certificate as written to `ca.pem` in its TLS dir.
pub fn proxy_ca_der(tls_dir: &Path) -> Vec<u8> {
    let pem = std::fs::read(tls_dir.join("ca.pem")).unwrap();
    CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
}

/// An HTTPS upstream for [`HOST`]: `/big` answers `big` (shared, not copied), anything
/// else answers `ok`.
pub async fn server(ca: &Ca, big: Bytes) -> SocketAddr {
    let issuer = LeafIssuer::new(&ca.der, &ca.key_pem, 4).unwrap();
    let acceptor = TlsAcceptor::from(issuer.server_config(HOST).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let _ = tcp.set_nodelay(true);
            let (acceptor, big) = (acceptor.clone(), big.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let body = if req.uri().path() == "/big" { big.clone() } else { Bytes::from_static(b"ok") };
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    addr
}

/// A client configuration trusting only the CA `der`, offering HTTP/1.1.
pub fn client_config(der: &[u8]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der.to_vec())).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTP/1.1 client over TLS to [`HOST`] at `upstream`: direct when `proxy` is `None`,
/// else through a CONNECT tunnel the proxy intercepts.
pub async fn client(
    tls: &Arc<ClientConfig>,
    upstream: SocketAddr,
    proxy: Option<SocketAddr>,
) -> SendRequest<Empty<Bytes>> {
    let tcp = match proxy {
        None => TcpStream::connect(upstream).await.unwrap(),
        Some(proxy) => {
            let mut tcp = TcpStream::connect(proxy).await.unwrap();
            let target = format!("{HOST}:{}", upstream.port());
            tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
            let head = crate::common::read_head(&mut tcp).await;
            assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
            tcp
        }
    };
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from(HOST).unwrap();
    let stream = TlsConnector::from(tls.clone()).connect(name, tcp).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// GETs `path` and returns how many body bytes came back (read frame by frame).
pub async fn fetch(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> usize {
    sender.ready().await.unwrap();
    let request = hyper::Request::get(path).header("host", HOST).body(Empty::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert!(response.status().is_success(), "GET {path}: {}", response.status());
    let mut body = response.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            n += data.len();
        }
    }
    n
}
