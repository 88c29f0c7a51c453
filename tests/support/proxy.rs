//! Shared pieces of the proxy tests: an in-process proxy on 127.0.0.1:0 with its own
//! temporary dirs, a plain HTTP echo upstream, a TLS upstream with an rcgen certificate,
//! and raw-socket helpers. Everything binds port 0; nothing is shared between tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use openshell_sandbox::config::{CommonConfig, LogFormat, ProxyConfig, ProxyLimits};
use openshell_sandbox::proxy::{Listeners, prepare};
use openshell_sandbox::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single test step may take before the test fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(10);

/// A proxy configuration with every directory under `dir` and loopback upstreams allowed.
pub fn config(dir: &Path, policy: &str) -> ProxyConfig {
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    ProxyConfig {
        common: CommonConfig {
            log_format: LogFormat::Text,
            log_level: "info".into(),
            ocsf_file: None,
            tls_dir: dir.join("tls"),
            policy_file: Some(policy_path),
            policy_rules: None,
            policy_poll_interval: Duration::from_millis(100),
        },
        gateway: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        forward_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.join("state"),
        allow_loopback_upstreams: true,
        allowed_clients: Vec::new(),
        gateway_fallback_hosts: Vec::new(),
        provider_env_file: None,
        policy_validation_failure_mode: Default::default(),
        inference_routes: None,
        upstream_ca_file: None,
        limits: ProxyLimits::default(),
        dns: None,
    }
}

/// A policy allowing each `host:port` as an L4 endpoint.
pub fn allow(entries: &[(&str, u16)]) -> String {
    let mut yaml = String::from("version: 1\nnetwork_policies:\n  test:\n    endpoints:\n");
    for (host, port) in entries {
        yaml.push_str(&format!("      - host: \"{host}\"\n        port: {port}\n"));
    }
    yaml
}

/// A proxy running in this test's runtime.
pub struct TestProxy {
    /// The proxy listener's address.
    pub addr: SocketAddr,
    /// The policy DNS address (UDP and TCP), when configured.
    pub dns: Option<SocketAddr>,
    /// Triggers the shutdown.
    pub shutdown: Shutdown,
    /// The policy file (rewrite it to test reloads).
    pub policy_path: PathBuf,
    /// Ends when the proxy has drained.
    pub task: tokio::task::JoinHandle<()>,
    /// Keeps the directories alive.
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    /// Starts a proxy with `policy`, after `tweak` adjusts the configuration.
    pub async fn start(policy: &str, tweak: impl FnOnce(&mut ProxyConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), policy);
        tweak(&mut config);
        let policy_path = config.common.policy_file.clone().unwrap();
        let prepared = prepare(config).unwrap();
        let listeners = Listeners::bind(prepared.config()).await.unwrap();
        let addr = listeners.proxy.local_addr().unwrap();
        let dns = listeners.dns.as_ref().map(|(udp, _)| udp.local_addr().unwrap());
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { prepared.serve(listeners, s).await.unwrap() });
        TestProxy { addr, dns, shutdown, policy_path, task, dir }
    }

    /// The shared TLS dir.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }
}

/// Sends `request` on a fresh connection and reads until the proxy closes it.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_all(&mut stream).await
}

/// Reads until EOF (or a reset), bounded by [`STEP`].
pub async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(STEP, read).await.expect("the proxy closed the connection in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response head (through the blank line) without waiting for EOF.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !out.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => break,
                Ok(_) => out.push(byte[0]),
            }
        }
    };
    tokio::time::timeout(STEP, read).await.expect("a response head in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a proxy answer.
pub fn json_body(response: &str) -> serde_json::Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

/// A plain HTTP/1.1 upstream that answers `METHOD URI|host=HOST|conn=N|proxyauth=BOOL|body=BODY`.
pub struct EchoServer {
    /// Its address.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl EchoServer {
    /// Starts the server in this runtime.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| async move {
                        let line = format!(
                            "{} {}|host={}|conn={n}|proxyauth={}|",
                            req.method(),
                            req.uri(),
                            req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or(""),
                            req.headers().contains_key("proxy-authorization"),
                        );
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let text = format!("{line}body={}", String::from_utf8_lossy(&body));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EchoServer { addr, connections }
    }
}

/// A TLS upstream for `localhost` with a certificate from a fresh rcgen CA; it answers
/// every connection with `HTTP/1.1 200` and the body `hello over tls`.
pub struct TlsServer {
    /// Its address.
    pub addr: SocketAddr,
    /// The CA that signed its certificate (PEM), for `curl --cacert`.
    pub ca_pem: String,
}

impl TlsServer {
    /// Starts the server in this runtime.
    pub async fn start() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "proxy test upstream CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let certs = vec![leaf.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else { return };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let body = "hello over tls";
                    let answer =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsServer { addr, ca_pem: ca_cert.pem() }
    }
}
