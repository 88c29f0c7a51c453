//! The rig of the inspected-connection life tests (`tests/l7/timeout.rs`, `close.rs`): HTTPS
//! upstreams that answer slowly or never (HTTP/1.1 by hand, HTTP/2 with hyper), a model server
//! that never answers, the real proxy with a short response timeout and a large idle one, and
//! a capture of audit events as JSON lines like `OPENSHELL_LOG_FORMAT=json` writes them.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openshell_sandbox::config::ProxyConfig;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Ca, https_server, write_pem};
use crate::support::proxy::TestProxy;

/// The response timeout of these tests; the idle timeout stays at [`IDLE`].
pub const ANSWER: Duration = Duration::from_secs(1);
pub const IDLE: Duration = Duration::from_secs(300);
/// How long a slow upstream takes to answer (under [`ANSWER`]).
pub const SLOW: Duration = Duration::from_millis(500);
/// The body of `/data`.
pub const DATA: usize = 1000;
/// A query value that must never be logged.
pub const QUERY_VALUE: &str = "q-VALUE-5150";

/// Every audit event of this test binary's run, as JSON (one global subscriber).
pub fn audit_events() -> Vec<Value> {
    let logs = crate::support::capture::json();
    assert!(!logs.contains(QUERY_VALUE), "a query value reached the logs:\n{logs}");
    let ocsf = crate::support::capture::ocsf();
    assert!(!ocsf.contains(QUERY_VALUE), "a query value reached an OCSF event:\n{ocsf}");
    crate::support::ocsf::assert_all_valid(&ocsf);
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["target"] == "openshell::audit")
        .collect()
}

/// Waits (bounded) until `matching` audit events exist, then a little longer, and returns
/// them all (so a second, duplicate event would be seen).
pub async fn wait_for_events(matching: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !audit_events().iter().any(&matching) {
        assert!(Instant::now() < deadline, "no such audit event: {:#?}", audit_events());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    audit_events().into_iter().filter(matching).collect()
}

/// How many `matching` audit events there are once none has come for 300 ms (bounded): a
/// mark after which the events of a test that holds the capture to itself follow.
pub async fn settled_count(matching: impl Fn(&Value) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let count = || audit_events().iter().filter(|e| matching(e)).count();
    let mut seen = count();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = count();
        if now == seen || Instant::now() > deadline {
            return now;
        }
        seen = now;
    }
}

/// Waits (bounded) until at least `at_least` `matching` audit events follow the first `mark`,
/// then a little longer, and returns all that follow it.
pub async fn events_after(mark: usize, at_least: usize, matching: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = || audit_events().into_iter().filter(|e| matching(e)).skip(mark).collect::<Vec<_>>();
    while after().len() < at_least {
        assert!(Instant::now() < deadline, "fewer than {at_least} such audit events: {:#?}", after());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    after()
}

/// Waits (bounded) until `counter` reaches 1.
pub async fn wait_for(counter: &AtomicUsize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What an upstream saw: connections accepted, and requests it held that were given up
/// (connection closed or stream reset by the proxy).
#[derive(Default)]
pub struct Seen {
    pub accepts: AtomicUsize,
    pub abandoned: AtomicUsize,
}

/// Counts a held request as abandoned when it is dropped.
pub struct Abandoned(pub Arc<Seen>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.abandoned.fetch_add(1, Ordering::SeqCst);
    }
}

/// An HTTPS upstream named `localhost` speaking HTTP/1.1 by hand: `/hang*` reads the request
/// and never answers (it counts when the proxy then closes the connection), `/slow` answers
/// after [`SLOW`], `/upload` answers the length of the body it read (`content-length`),
/// `/data` answers [`DATA`] bytes at once.
pub async fn h1_upstream(upstream_ca: &Ca) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let (counted, served) = (seen.clone(), seen.clone());
    let on_accept = move || _ = counted.accepts.fetch_add(1, Ordering::SeqCst);
    let addr = https_server(upstream_ca, "localhost", &[], on_accept, move |mut tls| {
        let state = served.clone();
        async move {
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
        }
    })
    .await;
    (addr, seen)
}

/// Reads one request head (requests here have no body); `None` at EOF.
pub async fn read_head<IO: AsyncRead + Unpin>(io: &mut IO) -> Option<String> {
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
pub async fn h2_upstream(upstream_ca: &Ca) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let (counted, served) = (seen.clone(), seen.clone());
    let on_accept = move || _ = counted.accepts.fetch_add(1, Ordering::SeqCst);
    let addr = https_server(upstream_ca, "localhost", &[b"h2"], on_accept, move |tls| {
        let state = served.clone();
        async move {
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
        }
    })
    .await;
    (addr, seen)
}

/// The proxy with `localhost:port` as a read-write REST endpoint, trusting `upstream_ca`,
/// response timeout [`ANSWER`], idle timeout [`IDLE`].
pub async fn proxy(
    upstream_ca: &Ca,
    port: u16,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> (TestProxy, tempfile::TempDir) {
    proxy_speaking("rest", upstream_ca, port, tweak).await
}

/// Like [`proxy`], the endpoint's `protocol` being `protocol` (`rest` or `websocket`).
pub async fn proxy_speaking(
    protocol: &str,
    upstream_ca: &Ca,
    port: u16,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> (TestProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_pem(dir.path(), "upstream-ca.pem", upstream_ca);
    let policy = format!(
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - {{host: localhost, port: {port}, protocol: {protocol}, access: read-write}}\n"
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
/// the proxy then closes.
pub async fn silent_model_server() -> (SocketAddr, Arc<Seen>) {
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
