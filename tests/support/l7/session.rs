//! The inspected-session test rig: an HTTPS upstream for `api.test` that records what it
//! sees, the proxy side serving each connection with `serve_tls`, HTTP/1.1 clients trusting
//! only the sandbox CA, and a capture of every log line of the test run.

use super::{Ca, connect, https_server, write_pem};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use openshell_sandbox::config::Secret;
use openshell_sandbox::policy::{self, PolicyEngine, RegoRules};
use openshell_sandbox::proxy::credentials::{BindingEndpoint, ProviderEnvironment, SecretStore};
use openshell_sandbox::proxy::l7::session::{Inspected, serve_tls};
use openshell_sandbox::proxy::tls::{LeafIssuer, upstream_client_config};
use openshell_sandbox::shutdown::Shutdown;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

pub const HOST: &str = "api.test";
pub const SECRET: &str = "sk-UPSTREAM-ONLY-4242";
pub const POLICY: &str = "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.test\n        port: 443\n        protocol: rest\n        rules:\n          - allow: {method: GET, path: \"/**\"}\n          - allow: {method: POST, path: /upload}\n";

pub type ClientBody = BoxBody<Bytes, Infallible>;

/// What the upstream saw.
#[derive(Default)]
pub struct Seen {
    pub accepts: AtomicUsize,
    pub requests: Mutex<Vec<Value>>,
    pub release_sse: Notify,
}

pub async fn upstream_handle(seen: Arc<Seen>, mut req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let record = json!({"method": req.method().as_str(), "target": req.uri().to_string(),
        "authorization": header("authorization"), "x-api-key": header("x-api-key"), "host": header("host")});
    seen.requests.lock().unwrap().push(record.clone());
    let text = |s: String| Full::new(Bytes::from(s)).boxed();
    match req.uri().path() {
        "/sse" => {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"data: one\n\n")).await.unwrap();
                seen.release_sse.notified().await;
                tx.send(Bytes::from_static(b"data: two\n\n")).await.unwrap();
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = io.read(&mut buf).await {
                    io.write_all(&buf[..n]).await.unwrap();
                }
            });
            let mut r = Response::new(text(String::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut().insert("connection", "upgrade".parse().unwrap());
            r
        }
        "/upload" => {
            let n = req.into_body().collect().await.unwrap().to_bytes().len();
            Response::new(text(n.to_string()))
        }
        _ => Response::new(text(record.to_string())),
    }
}

/// An HTTPS upstream for `api.test` with its own CA.
pub async fn upstream(upstream_ca: &Ca) -> (SocketAddr, Arc<Seen>) {
    upstream_named(upstream_ca, HOST).await
}

/// An HTTPS upstream whose certificate (from `upstream_ca`) names `host`.
pub async fn upstream_named(upstream_ca: &Ca, host: &str) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let (counted, served) = (seen.clone(), seen.clone());
    let on_accept = move || _ = counted.accepts.fetch_add(1, Ordering::SeqCst);
    let addr = https_server(upstream_ca, host, &[], on_accept, move |tls| {
        let state = served.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(upstream_handle(state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        }
    })
    .await;
    (addr, seen)
}

pub fn engine(yaml: &str) -> Arc<PolicyEngine> {
    Arc::new(PolicyEngine::new(policy::parse_yaml(yaml, "test.yaml").unwrap(), &RegoRules::builtin(), 1).unwrap())
}

pub fn secrets() -> Arc<SecretStore> {
    let env = ProviderEnvironment {
        environment: [("API_KEY".to_owned(), Secret::new(SECRET))].into(),
        revision: 1,
        bindings: [(
            "API_KEY".to_owned(),
            vec![BindingEndpoint { host: "api.test".into(), port: 443, path: String::new() }],
        )]
        .into(),
        ..Default::default()
    };
    Arc::new(SecretStore::from_provider(&env).unwrap())
}

/// The proxy side under [`POLICY`].
pub async fn proxy(sandbox_ca: &Ca, trusted_upstream_ca: &Ca, upstream: SocketAddr) -> SocketAddr {
    proxy_with(POLICY, sandbox_ca, trusted_upstream_ca, upstream).await
}

/// The proxy side: accepts on 127.0.0.1:0 and serves each connection as an inspected session.
pub async fn proxy_with(policy: &str, sandbox_ca: &Ca, trusted_upstream_ca: &Ca, upstream: SocketAddr) -> SocketAddr {
    proxy_tracked(policy, Shutdown::new(), sandbox_ca, trusted_upstream_ca, upstream).await
}

/// [`POLICY`] with `api.test` as a `protocol: websocket` endpoint (the only kind that upgrades).
pub fn websocket_policy() -> String {
    POLICY.replace("protocol: rest", "protocol: websocket")
}

/// Like [`proxy_with`] with another idle bound.
pub async fn proxy_idle(
    policy: &str,
    idle: Duration,
    sandbox_ca: &Ca,
    trusted_upstream_ca: &Ca,
    upstream: SocketAddr,
) -> SocketAddr {
    proxy_built(policy, Shutdown::new(), idle, sandbox_ca, trusted_upstream_ca, upstream).await
}

/// Like [`proxy_with`], each session a task of `shutdown`.
pub async fn proxy_tracked(
    policy: &str,
    shutdown: Shutdown,
    sandbox_ca: &Ca,
    trusted_upstream_ca: &Ca,
    upstream: SocketAddr,
) -> SocketAddr {
    proxy_built(policy, shutdown, Duration::from_secs(30), sandbox_ca, trusted_upstream_ca, upstream).await
}

async fn proxy_built(
    policy: &str,
    shutdown: Shutdown,
    idle: Duration,
    sandbox_ca: &Ca,
    trusted_upstream_ca: &Ca,
    upstream: SocketAddr,
) -> SocketAddr {
    let issuer = LeafIssuer::new(&sandbox_ca.der, &sandbox_ca.key_pem, 16).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_pem(dir.path(), "upstream-ca.pem", trusted_upstream_ca);
    let engine = engine(policy);
    let session = Inspected {
        host: HOST.into(),
        port: 443,
        policy: Arc::new(move || engine.clone()),
        secrets: secrets(),
        upstream_tls: upstream_client_config(Some(&ca_file)).unwrap(),
        dial: Arc::new(move || Box::pin(TcpStream::connect(upstream))),
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(30),
        idle_timeout: idle,
    };
    let server_config = issuer.server_config(HOST).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, session, tracker) = (server_config.clone(), session.clone(), shutdown.clone());
            shutdown.spawn(async move {
                if let Err(e) = serve_tls(tcp, config, session, tracker).await {
                    tracing::debug!("session ended: {e}");
                }
            });
        }
    });
    addr
}

/// A client connection trusting only the sandbox CA.
pub async fn client(proxy: SocketAddr, sandbox_ca: &Ca) -> SendRequest<ClientBody> {
    let tls = connect(proxy, HOST, sandbox_ca, &[]).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection.with_upgrades());
    sender
}

pub fn get(target: &str, headers: &[(&str, String)]) -> Request<ClientBody> {
    let mut b = Request::builder().method("GET").uri(target).header("host", HOST);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::new()).boxed()).unwrap()
}

pub async fn send(sender: &mut SendRequest<ClientBody>, req: Request<ClientBody>) -> (StatusCode, Value) {
    sender.ready().await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body))))
}

/// Everything logged so far in this test binary's run, as text lines then OCSF JSON lines
/// (capture starts at the first call).
pub fn logs() -> String {
    crate::support::capture::text() + &crate::support::capture::ocsf()
}

/// Starts the capture, and at the end checks that no secret was ever logged.
pub struct NoSecretLogged;

impl NoSecretLogged {
    pub fn start() -> Self {
        logs();
        NoSecretLogged
    }
}

impl Drop for NoSecretLogged {
    fn drop(&mut self) {
        let logs = logs();
        if !std::thread::panicking() {
            assert!(!logs.contains(SECRET), "a secret reached the logs:\n{logs}");
            crate::support::ocsf::assert_all_valid(&crate::support::capture::ocsf());
        }
    }
}

pub async fn sender_ready(c: &mut SendRequest<ClientBody>) {
    tokio::time::timeout(Duration::from_secs(5), c.ready()).await.unwrap().unwrap();
}
