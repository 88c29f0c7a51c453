//! Inspected connections end to end on 127.0.0.1: a client trusting only the sandbox CA
//! talks TLS to the session (leaf from `LeafIssuer`), which judges each request and forwards
//! it over verified TLS to a local HTTPS upstream with its own test CA.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use openshell_sandbox::proxy::credentials::placeholder;
use openshell_sandbox::shutdown::Shutdown;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::l7 as l7_support;
use l7_support::ca;

use crate::support::l7::session as rig;
use rig::*;

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
        let upstream_saw = seen.requests.lock().unwrap()[0].clone();
        assert_eq!(
            upstream_saw["target"],
            format!("/items?key={SECRET}&x=1"),
            "canonical path and swapped query value"
        );
        assert_eq!(upstream_saw["authorization"], format!("Bearer {SECRET}"));
        assert_eq!(upstream_saw["x-api-key"], SECRET);
        assert_eq!(upstream_saw["host"], HOST);
        assert_eq!(echo["target"], "/items?key=openshell:resolve:env:API_KEY&x=1", "the echo is scrubbed");
        assert_eq!(echo["x-api-key"], placeholder("API_KEY"));
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

#[tokio::test]
async fn a_websocket_upgrade_is_judged_then_relayed() {
    let _check = NoSecretLogged::start();
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, seen) = upstream(&upstream_ca).await;
    let proxy_addr = proxy_with(&websocket_policy(), &sandbox_ca, &upstream_ca, upstream_addr).await;
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
async fn an_idle_websocket_is_closed_after_the_idle_bound() {
    let _check = NoSecretLogged::start();
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, _) = upstream(&upstream_ca).await;
    let proxy_addr =
        proxy_idle(&websocket_policy(), Duration::from_millis(300), &sandbox_ca, &upstream_ca, upstream_addr).await;
    let mut c = client(proxy_addr, &sandbox_ca).await;
    sender_ready(&mut c).await;
    let response =
        c.send_request(get("/ws", &[("connection", "upgrade".into()), ("upgrade", "websocket".into())])).await.unwrap();
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    io.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    io.read_exact(&mut back).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest)).await.expect("closed when idle");
    assert_eq!(n.unwrap(), 0);
    assert!(started.elapsed() >= Duration::from_millis(250), "not before the idle bound: {:?}", started.elapsed());
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

#[tokio::test]
async fn expect_100_continue_gets_a_100_before_the_body_is_sent() {
    let _check = NoSecretLogged::start();
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (upstream_addr, _) = upstream(&upstream_ca).await;
    let proxy_addr = proxy(&sandbox_ca, &upstream_ca, upstream_addr).await;
    let mut tls = l7_support::connect(proxy_addr, HOST, &sandbox_ca, &[]).await;
    let head = format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut interim)).await.expect("a 100 came").unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    tls.write_all(b"hello").await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    // Scrubbed answers stream without `Content-Length` (scrubbing may change the length).
    while !answer.ends_with(b"\r\n1\r\n5\r\n0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&answer));
}
