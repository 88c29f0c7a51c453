//! Inspected connections end to end on 127.0.0.1: a client trusting only the sandbox CA
//! talks TLS to the session (leaf from `LeafIssuer`), which judges each request and forwards
//! it over verified TLS to a local HTTPS upstream with its own test CA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use openshell_sandbox::config::Secret;
use openshell_sandbox::gateway::provider::ProviderEnvironment;
use openshell_sandbox::policy::{self, PolicyEngine, RegoRules};
use openshell_sandbox::proxy::credentials::{SecretStore, placeholder};
use openshell_sandbox::proxy::l7::session::{Inspected, serve_tls};
use openshell_sandbox::proxy::tls::{LeafIssuer, upstream_client_config};
use openshell_sandbox::shutdown::Shutdown;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_rustls::TlsAcceptor;

#[path = "l7_support/lib.rs"]
mod l7_support;
use l7_support::{Ca, ca, connect, write_pem};

const HOST: &str = "api.test";
const SECRET: &str = "sk-UPSTREAM-ONLY-4242";
const POLICY: &str = "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.test\n        port: 443\n        protocol: rest\n        rules:\n          - allow: {method: GET, path: \"/**\"}\n          - allow: {method: POST, path: /upload}\n";

type ClientBody = BoxBody<Bytes, Infallible>;

/// What the upstream saw.
#[derive(Default)]
struct Seen {
    accepts: AtomicUsize,
    requests: Mutex<Vec<Value>>,
    release_sse: Notify,
}

async fn upstream_handle(seen: Arc<Seen>, mut req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
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
async fn upstream(upstream_ca: &Ca) -> (SocketAddr, Arc<Seen>) {
    let issuer = LeafIssuer::new(&upstream_ca.der, &upstream_ca.key_pem, 4).unwrap();
    let acceptor = TlsAcceptor::from(issuer.server_config(HOST).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            state.accepts.fetch_add(1, Ordering::SeqCst);
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(upstream_handle(state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, seen)
}

fn engine(yaml: &str) -> Arc<PolicyEngine> {
    Arc::new(PolicyEngine::new(policy::parse_yaml(yaml, "test.yaml").unwrap(), &RegoRules::builtin(), 1).unwrap())
}

fn secrets() -> Arc<SecretStore> {
    let env = ProviderEnvironment {
        environment: [("API_KEY".to_owned(), Secret::new(SECRET))].into(),
        revision: 1,
        non_secret_keys: Default::default(),
    };
    Arc::new(SecretStore::from_provider(&env).unwrap())
}

/// The proxy side under [`POLICY`].
async fn proxy(sandbox_ca: &Ca, trusted_upstream_ca: &Ca, upstream: SocketAddr) -> SocketAddr {
    proxy_with(POLICY, sandbox_ca, trusted_upstream_ca, upstream).await
}

/// The proxy side: accepts on 127.0.0.1:0 and serves each connection as an inspected session.
async fn proxy_with(policy: &str, sandbox_ca: &Ca, trusted_upstream_ca: &Ca, upstream: SocketAddr) -> SocketAddr {
    proxy_tracked(policy, Shutdown::new(), sandbox_ca, trusted_upstream_ca, upstream).await
}

/// Like [`proxy_with`], each session a task of `shutdown`.
async fn proxy_tracked(
    policy: &str,
    shutdown: Shutdown,
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
        idle_timeout: Duration::from_secs(30),
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
async fn client(proxy: SocketAddr, sandbox_ca: &Ca) -> SendRequest<ClientBody> {
    let tls = connect(proxy, HOST, sandbox_ca, &[]).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection.with_upgrades());
    sender
}

fn get(target: &str, headers: &[(&str, String)]) -> Request<ClientBody> {
    let mut b = Request::builder().method("GET").uri(target).header("host", HOST);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::new()).boxed()).unwrap()
}

async fn send(sender: &mut SendRequest<ClientBody>, req: Request<ClientBody>) -> (StatusCode, Value) {
    sender.ready().await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body))))
}

/// Every log line of every level of this test binary's run (one global subscriber: scoped
/// subscribers miss events when tests on other threads share callsites).
static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

/// Everything logged so far in this test binary's run (capture starts at the first call).
fn logs() -> String {
    let buffer = LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || CaptureWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");
        buffer
    });
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

/// Starts the capture, and at the end checks that no secret was ever logged.
struct NoSecretLogged;

impl NoSecretLogged {
    fn start() -> Self {
        logs();
        NoSecretLogged
    }
}

impl Drop for NoSecretLogged {
    fn drop(&mut self) {
        let logs = logs();
        if !std::thread::panicking() {
            assert!(!logs.contains(SECRET), "a secret reached the logs:\n{logs}");
        }
    }
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn allowed_requests_reach_the_upstream_with_real_credentials_on_one_connection() {
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, seen) = upstream(&upstream_ca).await;
    let proxy_addr = proxy(&sandbox_ca, &upstream_ca, upstream_addr).await;
    let _check = NoSecretLogged::start();
    {
        let mut c = client(proxy_addr, &sandbox_ca).await;
        let headers =
            [("authorization", format!("Bearer {}", placeholder("API_KEY"))), ("x-api-key", placeholder("API_KEY"))];
        let (status, echo) = send(&mut c, get("/v1/../items?key=openshell:resolve:env:API_KEY&x=1", &headers)).await;
        assert_eq!(status, StatusCode::OK, "{echo}");
        assert_eq!(echo["target"], format!("/items?key={SECRET}&x=1"), "canonical path and swapped query value");
        assert_eq!(echo["authorization"], format!("Bearer {SECRET}"));
        assert_eq!(echo["x-api-key"], SECRET);
        assert_eq!(echo["host"], HOST);
        let (status, echo) = send(&mut c, get("/second", &[])).await;
        assert_eq!((status, echo["target"].as_str()), (StatusCode::OK, Some("/second")));
        assert_eq!(seen.accepts.load(Ordering::SeqCst), 1, "keep-alive: one upstream connection for both");
    }
    let logs = logs();
    assert!(logs.contains("credentials=\"API_KEY\""), "the capture works:\n{logs}");
}

#[tokio::test]
async fn denied_and_unresolved_requests_never_reach_the_upstream() {
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, seen) = upstream(&upstream_ca).await;
    let proxy_addr = proxy(&sandbox_ca, &upstream_ca, upstream_addr).await;
    let _check = NoSecretLogged::start();
    {
        let mut c = client(proxy_addr, &sandbox_ca).await;
        let mut delete = get("/items/1", &[("authorization", format!("Bearer {}", placeholder("API_KEY")))]);
        *delete.method_mut() = http::Method::DELETE;
        let (status, body) = send(&mut c, delete).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!((body["error"].as_str(), body["policy"].as_str()), (Some("policy_denied"), Some("api")));
        assert_eq!((body["method"].as_str(), body["path"].as_str()), (Some("DELETE"), Some("/items/1")));

        let mut c = client(proxy_addr, &sandbox_ca).await;
        let (status, body) = send(&mut c, get("/x", &[("x-api-key", placeholder("NOT_CONFIGURED"))])).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("credential_unresolved")));
        assert!(body["reason"].as_str().unwrap().contains("NOT_CONFIGURED"));

        let mut c = client(proxy_addr, &sandbox_ca).await;
        let (status, body) = send(&mut c, get("/a%2Fb", &[])).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    }
    let logs = logs();
    assert!(seen.requests.lock().unwrap().is_empty(), "the upstream saw {:?}", seen.requests.lock().unwrap());
    assert_eq!(seen.accepts.load(Ordering::SeqCst), 0);
    assert!(logs.contains("reason=\"no rule of api allows DELETE /items/1\""), "{logs}");
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let _check = NoSecretLogged::start();
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, seen) = upstream(&upstream_ca).await;
    let proxy_addr = proxy(&sandbox_ca, &upstream_ca, upstream_addr).await;
    let mut c = client(proxy_addr, &sandbox_ca).await;

    let chunks = (0..64).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 16 * 1024]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let upload = Request::post("/upload").header("host", HOST).header("expect", "100-continue").body(body).unwrap();
    let (status, n) = send(&mut c, upload).await;
    assert_eq!((status, n), (StatusCode::OK, json!(1024 * 1024)), "a chunked 1 MiB body arrives whole");

    sender_ready(&mut c).await;
    let response = c.send_request(get("/sse", &[])).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("the first event came early");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "data: one\n\n");
    seen.release_sse.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: two\n\n");
}

async fn sender_ready(c: &mut SendRequest<ClientBody>) {
    tokio::time::timeout(Duration::from_secs(5), c.ready()).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_websocket_upgrade_is_judged_then_relayed() {
    let _check = NoSecretLogged::start();
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, seen) = upstream(&upstream_ca).await;
    let proxy_addr = proxy(&sandbox_ca, &upstream_ca, upstream_addr).await;
    let mut c = client(proxy_addr, &sandbox_ca).await;
    let mut req = get("/ws", &[("connection", "Upgrade".into()), ("upgrade", "websocket".into())]);
    req.headers_mut().insert("sec-websocket-version", "13".parse().unwrap());
    sender_ready(&mut c).await;
    let response = c.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    // A masked WebSocket text frame "hello"; the relay copies bytes, so it comes back as sent.
    let frame = [0x81, 0x85, 1, 2, 3, 4, b'h' ^ 1, b'e' ^ 2, b'l' ^ 3, b'l' ^ 4, b'o' ^ 1];
    io.write_all(&frame).await.unwrap();
    let mut back = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, frame);
    assert_eq!(seen.requests.lock().unwrap()[0]["method"], "GET");
}

#[tokio::test]
async fn an_upstream_with_an_unknown_ca_gets_a_502_and_nothing_is_sent() {
    let _check = NoSecretLogged::start();
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, seen) = upstream(&upstream_ca).await;
    let proxy_addr = proxy(&sandbox_ca, &ca("Some Other CA"), upstream_addr).await;
    let mut c = client(proxy_addr, &sandbox_ca).await;
    let (status, body) = send(&mut c, get("/x", &[("x-api-key", placeholder("API_KEY"))])).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_GATEWAY, Some("upstream_unreachable")));
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("OPENSHELL_UPSTREAM_CA_FILE") && !reason.contains(SECRET), "{reason}");
    assert!(seen.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn audit_mode_forwards_a_would_be_denial_and_logs_it() {
    let _check = NoSecretLogged::start();
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, seen) = upstream(&upstream_ca).await;
    let audit = POLICY.replace("        rules:\n", "        enforcement: audit\n        rules:\n");
    let proxy_addr = proxy_with(&audit, &sandbox_ca, &upstream_ca, upstream_addr).await;
    let mut c = client(proxy_addr, &sandbox_ca).await;
    let mut delete = get("/audited/1", &[]);
    *delete.method_mut() = http::Method::DELETE;
    let (status, echo) = send(&mut c, delete).await;
    assert_eq!((status, echo["method"].as_str()), (StatusCode::OK, Some("DELETE")), "{echo}");
    assert_eq!(seen.requests.lock().unwrap().len(), 1);
    let logs = logs();
    let line = logs.lines().find(|l| l.contains("path=\"/audited/1\"")).expect("an audit line for the request");
    assert!(line.contains("action=\"audit\"") && line.contains("DELETE"), "{line}");
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_closes_idle_connections() {
    let _check = NoSecretLogged::start();
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, seen) = upstream(&upstream_ca).await;
    let shutdown = Shutdown::new();
    let proxy_addr = proxy_tracked(POLICY, shutdown.clone(), &sandbox_ca, &upstream_ca, upstream_addr).await;
    let mut idle = client(proxy_addr, &sandbox_ca).await;
    assert_eq!(send(&mut idle, get("/warm", &[])).await.0, StatusCode::OK);
    let mut busy = client(proxy_addr, &sandbox_ca).await;
    sender_ready(&mut busy).await;
    let response = busy.send_request(get("/sse", &[])).await.unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());

    shutdown.trigger();
    let drained = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.drain(Duration::from_secs(10)).await }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while !idle.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the idle connection is closed at shutdown");
    seen.release_sse.notify_one();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "data: two\n\n", "the stream in flight finished");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), drained).await.unwrap().unwrap(),
        0,
        "every session ended"
    );
}
