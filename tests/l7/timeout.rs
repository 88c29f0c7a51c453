//! The response timeout on inspected connections through the real proxy on 127.0.0.1: an
//! upstream that never sends its answer head gets the client a 504 once `response_timeout`
//! has passed (HTTP/1.1, HTTP/2, `inference.local`, where a route's own `timeout_secs` wins),
//! with the idle timeout left large; a slow answer in time and an upload longer than the
//! timeout pass; the upstream connection (or HTTP/2 stream) that did not answer is dropped.

use crate::support::l7 as l7_support;
use crate::support::l7::lifecycle;
use crate::support::l7::session as rig;
use crate::support::l7::through;
use crate::support::proxy as proxy_support;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7_support::{ca, client_config};
use lifecycle::*;
use proxy_support::TestProxy;
use rig::ClientBody;
use rustls::pki_types::ServerName;
use serde_json::Value;
use through::{client_through, connect_raw, exchange, proxy_ca, request, tls_through};
use tokio_rustls::TlsConnector;

fn assert_timed_out(status: StatusCode, body: &Value, path: &str, elapsed: Duration) {
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"], "upstream_timeout", "{body}");
    assert_eq!((body["method"].as_str(), body["path"].as_str()), (Some("GET"), Some(path)), "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("OPENSHELL_PROXY_RESPONSE_TIMEOUT_SECS")), "{body}");
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
    let _inference = l7_support::INFERENCE_LOCAL.lock().await;
    let is_close = |e: &Value| e["action"] == "close" && e["host"] == "inference.local";
    let mark = settled_count(is_close).await;
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

    let closes = events_after(mark, 2, is_close).await;
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
