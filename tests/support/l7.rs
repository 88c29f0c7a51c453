//! Shared pieces of the L7 tests: test CAs made by rcgen (shaped like the proxy's own CA)
//! and TLS clients that trust only a given CA.

#![allow(dead_code)]

pub mod hardened;
pub mod lifecycle;
pub mod recorder;
pub mod session;
pub mod through;

/// Held by each test that opens `inference.local` through a real proxy: the close events of
/// those connections all name `inference.local:443`, and a test that counts its own needs
/// the binary's audit capture (one for every test of the binary) to itself.
pub static INFERENCE_LOCAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A test CA: certificate DER and PEM, and its PKCS#8 key PEM.
pub struct Ca {
    /// Certificate, DER.
    pub der: Vec<u8>,
    /// Certificate, PEM.
    pub pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A CA named `name`: ECDSA P-256, path length 0, like the proxy's generated CA.
pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, "OpenShell tests");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    Ca { der: cert.der().to_vec(), pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// Writes the CA's PEM as `name` in `dir` (an `OPENSHELL_UPSTREAM_CA_FILE`).
pub fn write_pem(dir: &Path, name: &str, ca: &Ca) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, &ca.pem).unwrap();
    path
}

/// A client configuration trusting only `ca`, offering `alpn`.
pub fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone().into()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// TLS to `addr` as `name`, trusting only `ca`.
pub async fn connect(addr: std::net::SocketAddr, name: &str, ca: &Ca, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(client_config(ca, alpn)).connect(name, tcp).await.unwrap()
}

/// An HTTPS server on 127.0.0.1:0 presenting a leaf for `host` from `ca` (ALPN `alpn`, or
/// HTTP/1.1 when empty). `on_accept` runs for every TCP connection accepted; each completed
/// TLS handshake is served by `serve` in its own task.
pub async fn https_server<A, F, Fut>(
    ca: &Ca,
    host: &str,
    alpn: &[&[u8]],
    on_accept: A,
    serve: F,
) -> std::net::SocketAddr
where
    A: Fn() + Send + 'static,
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut issuer = openshell_sandbox::proxy::tls::LeafIssuer::new(&ca.der, &ca.key_pem, 4).unwrap();
    if !alpn.is_empty() {
        issuer = issuer.with_alpn(alpn);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(issuer.server_config(host).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            on_accept();
            let (accepting, serve) = (acceptor.accept(tcp), serve.clone());
            tokio::spawn(async move {
                if let Ok(tls) = accepting.await {
                    serve(tls).await;
                }
            });
        }
    });
    addr
}

/// An HTTPS upstream for `host` (HTTP/2 too when `alpn` offers it) that answers every
/// request with `handler(state, request)`.
pub async fn https_service<S, H, Fut>(
    ca: &Ca,
    host: &str,
    alpn: &[&[u8]],
    state: Arc<S>,
    handler: H,
) -> std::net::SocketAddr
where
    S: Send + Sync + 'static,
    H: Fn(Arc<S>, http::Request<hyper::body::Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<ServedBody>> + Send + 'static,
{
    https_server(
        ca,
        host,
        alpn,
        || {},
        move |tls| {
            let state = state.clone();
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = handler(state.clone(), req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            }
        },
    )
    .await
}

/// What an [`https_service`] handler answers with.
pub type ServedBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;
