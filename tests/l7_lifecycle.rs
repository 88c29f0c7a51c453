//! The life of an inspected connection through the real proxy on 127.0.0.1: an upstream
//! that never sends its answer head gets the client a 504 once `response_timeout` has passed
//! (HTTP/1.1, HTTP/2 and `inference.local`, with the idle timeout left large), a slow one
//! that answers in time succeeds, and each connection ends with exactly one audit `close`
//! event, captured as JSON lines like `OPENSHELL_LOG_FORMAT=json` writes them.

#[allow(dead_code)]
#[path = "proxy_support/lib.rs"]
mod proxy_support;

#[path = "l7_support/lib.rs"]
mod l7_support;

#[allow(dead_code)]
#[path = "l7_support/session.rs"]
mod rig;

#[path = "l7_support/through.rs"]
mod through;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7_support::{Ca, ca, client_config, write_pem};
use openshell_sandbox::config::ProxyConfig;
use openshell_sandbox::proxy::tls::LeafIssuer;
use proxy_support::TestProxy;
use rig::{CaptureWriter, ClientBody};
use rustls::pki_types::ServerName;
use serde_json::Value;
use through::{client_through, connect_raw, exchange, proxy_ca, request, tls_through};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The response timeout of these tests; the idle timeout stays at [`IDLE`].
const ANSWER: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(300);
/// How long a slow upstream takes to answer (under [`ANSWER`]).
const SLOW: Duration = Duration::from_millis(500);
/// The body of `/data`.
const DATA: usize = 1000;
/// A query value that must never be logged.
const QUERY_VALUE: &str = "q-VALUE-5150";

/// Every audit event of this test binary's run, as JSON (one global subscriber).
fn audit_events() -> Vec<Value> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buffer = LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || CaptureWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");
        buffer
    });
    let logs = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
    assert!(!logs.contains(QUERY_VALUE), "a query value reached the logs:\n{logs}");
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["target"] == "openshell::audit")
        .collect()
}

/// Waits (bounded) until `matching` audit events exist, then a little longer, and returns
/// them all (so a second, duplicate event would be seen).
async fn wait_for_events(matching: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !audit_events().iter().any(&matching) {
        assert!(Instant::now() < deadline, "no such audit event: {:#?}", audit_events());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    audit_events().into_iter().filter(matching).collect()
}

/// Waits (bounded) until `counter` reaches 1.
async fn wait_for(counter: &AtomicUsize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What an upstream saw: connections accepted, and requests it held that were given up
/// (connection closed or stream reset by the proxy).
#[derive(Default)]
struct Seen {
    accepts: AtomicUsize,
    abandoned: AtomicUsize,
}

/// Counts a held request as abandoned when it is dropped.
struct Abandoned(Arc<Seen>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.abandoned.fetch_add(1, Ordering::SeqCst);
    }
}

/// An HTTPS upstream named `localhost` speaking HTTP/1.1 by hand: `/hang*` reads the request
/// and never answers (it counts when the proxy then closes the connection), `/slow` answers
/// after [`SLOW`], `/upload` answers the length of the body it read (`content-length`),
/// `/data` answers [`DATA`] bytes at once.
async fn h1_upstream(upstream_ca: &Ca) -> (SocketAddr, Arc<Seen>) {
    let issuer = LeafIssuer::new(&upstream_ca.der, &upstream_ca.key_pem, 4).unwrap();
    let acceptor = TlsAcceptor::from(issuer.server_config("localhost").unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            state.accepts.fetch_add(1, Ordering::SeqCst);
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                while let Some(head) = read_head(&mut tls).await {
                    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    let body = match path.as_str() {
                        p if p.starts_with("/hang") => {
                            let mut buf = [0u8; 1024];
                            while tls.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                            state.abandoned.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        "/slow" => {
                            tokio::time::sleep(SLOW).await;
                            "slow answer".to_owned()
                        }
                        "/upload" => {
                            let length = head
                                .lines()
                                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned))
                                .and_then(|n| n.trim().parse::<usize>().ok())
                                .unwrap_or_default();
                            let mut body = vec![0u8; length];
                            if tls.read_exact(&mut body).await.is_err() {
                                return;
                            }
                            length.to_string()
                        }
                        _ => "x".repeat(DATA),
                    };
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Reads one request head (requests here have no body); `None` at EOF.
async fn read_head<IO: AsyncRead + Unpin>(io: &mut IO) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if io.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// An HTTPS upstream named `localhost` taking only `h2`: `/hang` is held forever (counted as
/// abandoned when its stream is reset), `/slow` answers after [`SLOW`].
async fn h2_upstream(upstream_ca: &Ca) -> (SocketAddr, Arc<Seen>) {
    let issuer = LeafIssuer::new(&upstream_ca.der, &upstream_ca.key_pem, 4).unwrap().with_alpn(&[b"h2"]);
    let acceptor = TlsAcceptor::from(issuer.server_config("localhost").unwrap());
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
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        if req.uri().path() == "/hang" {
                            let _guard = Abandoned(state);
                            std::future::pending::<()>().await;
                        }
                        tokio::time::sleep(SLOW).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"slow answer"))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// The proxy with `localhost:port` as a read-write REST endpoint, trusting `upstream_ca`,
/// response timeout [`ANSWER`], idle timeout [`IDLE`].
async fn proxy(upstream_ca: &Ca, port: u16, tweak: impl FnOnce(&mut ProxyConfig)) -> (TestProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_pem(dir.path(), "upstream-ca.pem", upstream_ca);
    let policy = format!(
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - {{host: localhost, port: {port}, protocol: rest, access: read-write}}\n"
    );
    let proxy = TestProxy::start(&policy, |c| {
        c.upstream_ca_file = Some(ca_file);
        c.limits.response_timeout = ANSWER;
        c.limits.idle_timeout = IDLE;
        tweak(c);
    })
    .await;
    (proxy, dir)
}

/// Asserts a 504 `upstream_timeout` JSON for `GET path` that took about [`ANSWER`].
fn assert_timed_out(status: StatusCode, body: &Value, path: &str, elapsed: Duration) {
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"], "upstream_timeout", "{body}");
    assert_eq!((body["method"].as_str(), body["path"].as_str()), (Some("GET"), Some(path)), "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("in time")), "{body}");
    assert!(elapsed >= ANSWER - Duration::from_millis(100), "answered before the response timeout: {elapsed:?}");
    assert!(elapsed < ANSWER + Duration::from_secs(3), "the 504 took {elapsed:?}");
}

#[tokio::test]
async fn an_http1_upstream_that_never_answers_gets_a_504_at_the_response_timeout() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, seen) = h1_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |_| {}).await;
    let mut c = client_through(proxy.addr, "localhost", addr.port(), &proxy.tls_dir()).await;

    let started = Instant::now();
    let (status, body) = exchange(&mut c, request("GET", "/slow", &[], "")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, Some("slow answer")), "a slow answer in time passes");
    assert!(started.elapsed() >= SLOW);

    let started = Instant::now();
    let (status, body) = exchange(&mut c, request("GET", &format!("/hang?token={QUERY_VALUE}"), &[], "")).await;
    assert_timed_out(status, &body, "/hang", started.elapsed());
    assert_eq!(seen.accepts.load(Ordering::SeqCst), 1, "the slow answer's connection was reused for /hang");
    wait_for(&seen.abandoned, "the proxy closing the upstream connection that did not answer").await;

    let port = addr.port();
    let errors = wait_for_events(|e| e["action"] == "error" && e["port"] == port).await;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(
        (e["host"].as_str(), e["method"].as_str(), e["path"].as_str()),
        (Some("localhost"), Some("GET"), Some("/hang"))
    );
    assert_eq!((e["error"].as_str(), e["level"].as_str()), (Some("upstream_timeout"), Some("WARN")), "{e}");
}

#[tokio::test]
async fn an_http2_upstream_stream_without_an_answer_gets_a_504_at_the_response_timeout() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, seen) = h2_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |_| {}).await;
    let (tcp, head) = connect_raw(proxy.addr, &format!("localhost:{}", addr.port())).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let config = client_config(&proxy_ca(&proxy.tls_dir()), &[b"h2"]);
    let tls = TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut c, connection) =
        hyper::client::conn::http2::handshake::<_, _, ClientBody>(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let get = |path: &str| {
        let uri = format!("https://localhost:{}{path}", addr.port());
        Request::get(uri).body(Full::new(Bytes::new()).boxed()).unwrap()
    };
    let mut send = async |req| {
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(10), c.send_request(req)).await.unwrap().unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&body).unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&body)));
        (status, body, started.elapsed())
    };

    let (status, body, elapsed) = send(get("/slow")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, Some("slow answer")));
    assert!(elapsed >= SLOW);
    let (status, body, elapsed) = send(get("/hang")).await;
    assert_timed_out(status, &body, "/hang", elapsed);
    wait_for(&seen.abandoned, "the proxy resetting the upstream stream that did not answer").await;
    let (status, _, _) = send(get("/slow")).await;
    assert_eq!(status, StatusCode::OK, "the connection goes on after a 504");
    drop(c);
    let port = addr.port();
    let closes = wait_for_events(|e| e["action"] == "close" && e["port"] == port).await;
    assert_eq!(closes.len(), 1, "one close event for the HTTP/2 connection: {closes:#?}");
    assert_eq!((closes[0]["requests"].as_u64(), closes[0]["outcome"].as_str()), (Some(3), Some("eof")), "{closes:#?}");
}

/// A plain-HTTP model server that reads each request and never answers; counts connections
/// the proxy then closes.
async fn silent_model_server() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            state.accepts.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                state.abandoned.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

/// One chat completion on a new `inference.local` connection, its answer and duration.
async fn chat(proxy: &TestProxy) -> (StatusCode, Value, Duration) {
    let tls = tls_through(proxy.addr, "inference.local:443", "inference.local", &proxy_ca(&proxy.tls_dir())).await;
    let (mut c, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let body = r#"{"model":"any","messages":[{"role":"user","content":"hi"}]}"#;
    let req = request("POST", "/v1/chat/completions", &[("content-type", "application/json".into())], body);
    let started = Instant::now();
    let (status, body) = exchange(&mut c, req).await;
    (status, body, started.elapsed())
}

#[tokio::test]
async fn an_inference_route_that_never_answers_gets_a_504_and_the_routes_own_timeout_wins() {
    audit_events();
    let (addr, seen) = silent_model_server().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = |timeout: &str| {
        let path = dir.path().join(format!("routes{timeout}.yaml"));
        let yaml = format!(
            "routes:\n  - name: local\n    base_url: http://{addr}/v1\n    protocols: [openai]\n    api_key: sk-test\n    model_id: m\n{timeout}"
        );
        std::fs::write(&path, yaml).unwrap();
        path
    };
    let policy = proxy_support::allow(&[("example.com", 443)]);

    let without = routes("");
    let proxy = TestProxy::start(&policy, |c| {
        c.inference_routes = Some(without);
        c.limits.response_timeout = ANSWER;
        c.limits.idle_timeout = IDLE;
    })
    .await;
    let (status, body, elapsed) = chat(&proxy).await;
    assert_timed_out_post(status, &body, elapsed, ANSWER);
    wait_for(&seen.abandoned, "the proxy closing the model server connection").await;

    let with = routes("    timeout_secs: 2\n");
    let proxy = TestProxy::start(&policy, |c| {
        c.inference_routes = Some(with);
        c.limits.response_timeout = Duration::from_secs(60);
        c.limits.idle_timeout = IDLE;
    })
    .await;
    let (status, body, elapsed) = chat(&proxy).await;
    assert_timed_out_post(status, &body, elapsed, Duration::from_secs(2));

    let closes = wait_for_events(|e| e["action"] == "close" && e["host"] == "inference.local").await;
    assert_eq!(closes.len(), 2, "one close event per inference.local connection: {closes:#?}");
    assert!(closes.iter().all(|e| e["requests"] == 1 && e["kind"] == "connect"), "{closes:#?}");
}

fn assert_timed_out_post(status: StatusCode, body: &Value, elapsed: Duration, bound: Duration) {
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(
        (body["error"].as_str(), body["path"].as_str()),
        (Some("upstream_timeout"), Some("/v1/chat/completions"))
    );
    assert!(elapsed >= bound - Duration::from_millis(100), "answered before the timeout: {elapsed:?}");
    assert!(elapsed < bound + Duration::from_secs(3), "the 504 took {elapsed:?}");
}

#[tokio::test]
async fn an_inspected_keep_alive_connection_ends_with_one_close_event() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, _seen) = h1_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |_| {}).await;
    {
        let mut c = client_through(proxy.addr, "localhost", addr.port(), &proxy.tls_dir()).await;
        for _ in 0..2 {
            let (status, body) = exchange(&mut c, request("GET", "/data", &[], "")).await;
            assert_eq!((status, body.as_str().map(str::len)), (StatusCode::OK, Some(DATA)));
        }
    }
    let port = addr.port();
    let closes = wait_for_events(|e| e["action"] == "close" && e["port"] == port).await;
    assert_eq!(closes.len(), 1, "exactly one close event for the connection: {closes:#?}");
    let close = &closes[0];
    assert_eq!((close["kind"].as_str(), close["host"].as_str()), (Some("connect"), Some("localhost")), "{close}");
    assert_eq!(close["requests"], 2, "{close}");
    assert_eq!(close["outcome"], "eof", "{close}");
    let (sent, received) = (close["bytes_sent"].as_u64().unwrap(), close["bytes_received"].as_u64().unwrap());
    assert!(sent > 0, "{close}");
    assert!(received >= 2 * DATA as u64, "the client got both bodies, TLS records included: {close}");
    assert!(close["duration_ms"].is_u64(), "{close}");
}

#[tokio::test]
async fn an_upload_longer_than_the_response_timeout_is_not_cut() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, _seen) = h1_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |_| {}).await;
    let mut c = client_through(proxy.addr, "localhost", addr.port(), &proxy.tls_dir()).await;
    let pause = Duration::from_millis(700);
    let chunks = futures_util::stream::unfold(0, move |i| async move {
        if i == 3 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'u'; 10]))), i + 1))
    });
    let upload = Request::post("/upload").header("content-length", "30").body(StreamBody::new(chunks).boxed()).unwrap();
    let started = Instant::now();
    let (status, body) = exchange(&mut c, upload).await;
    assert_eq!(
        (status, body.as_u64()),
        (StatusCode::OK, Some(30)),
        "the response timeout starts once the body is sent: {body}"
    );
    assert!(started.elapsed() > ANSWER, "the upload took longer than the response timeout");
}

#[tokio::test]
async fn an_idle_inspected_connection_is_closed_with_an_idle_close_event() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, _seen) = h1_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |c| c.limits.idle_timeout = Duration::from_secs(1)).await;
    let mut c = client_through(proxy.addr, "localhost", addr.port(), &proxy.tls_dir()).await;
    let (status, _) = exchange(&mut c, request("GET", "/data", &[], "")).await;
    assert_eq!(status, StatusCode::OK);
    let port = addr.port();
    let closes = wait_for_events(|e| e["action"] == "close" && e["port"] == port).await;
    assert_eq!(closes.len(), 1, "{closes:#?}");
    assert_eq!((closes[0]["outcome"].as_str(), closes[0]["requests"].as_u64()), (Some("idle"), Some(1)), "{closes:#?}");
    drop(c);
}

#[tokio::test]
async fn an_inspected_connection_open_at_shutdown_gets_a_shutdown_close_event() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, _seen) = h1_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |_| {}).await;
    let mut c = client_through(proxy.addr, "localhost", addr.port(), &proxy.tls_dir()).await;
    let (status, _) = exchange(&mut c, request("GET", "/data", &[], "")).await;
    assert_eq!(status, StatusCode::OK);
    proxy.shutdown.trigger();
    let port = addr.port();
    let closes = wait_for_events(|e| e["action"] == "close" && e["port"] == port).await;
    assert_eq!(closes.len(), 1, "{closes:#?}");
    assert_eq!(closes[0]["outcome"], "shutdown", "{closes:#?}");
    drop(c);
}
