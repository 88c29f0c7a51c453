//! Policy hot reload and the client allow-list, on the in-process proxy: a new valid
//! file applies to new requests, a broken one keeps the last good policy; a client
//! outside `allowed_clients` is closed at accept without an answer.

#[allow(dead_code)]
#[path = "proxy_support/lib.rs"]
mod proxy_support;

use std::time::{Duration, Instant};

use proxy_support::{EchoServer, TestProxy, allow, exchange};

/// The status line's code for an absolute-form GET to `host:port`.
async fn status(proxy: &TestProxy, host: &str, port: u16) -> String {
    let request = format!("GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    answer.get(9..12).unwrap_or("").to_owned()
}

/// Polls until `status` gives `want`, at most five seconds.
async fn eventually(proxy: &TestProxy, host: &str, port: u16, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if status(proxy, host, port).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_file_keeps_the_last_good_policy() {
    let echo = EchoServer::start().await;
    let port = echo.addr.port();
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", port)]), |_| {}).await;
    assert_eq!(status(&proxy, "127.0.0.1", port).await, "200");

    // Broken: the old policy stays (five poll intervals later, still allowed).
    std::fs::write(
        &proxy.policy_path,
        "version: 1\nnetwork_policies:\n  x:\n    endpoints: [{host: \"*\", port: 0}]\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&proxy, "127.0.0.1", port).await, "200");

    // Valid again, without the upstream: the new generation denies it.
    std::fs::write(&proxy.policy_path, allow(&[("api.example.com", 443)])).unwrap();
    assert!(eventually(&proxy, "127.0.0.1", port, "403").await, "the new policy applies to new requests");

    // And back: allowed once more.
    std::fs::write(&proxy.policy_path, allow(&[("127.0.0.1", port)])).unwrap();
    assert!(eventually(&proxy, "127.0.0.1", port, "200").await);
}

#[tokio::test]
async fn a_client_outside_the_allow_list_is_closed_without_an_answer() {
    let echo = EchoServer::start().await;
    let port = echo.addr.port();
    let policy = allow(&[("127.0.0.1", port)]);
    let closed = TestProxy::start(&policy, |c| c.allowed_clients = vec!["10.0.0.0/8".parse().unwrap()]).await;
    assert_eq!(status(&closed, "127.0.0.1", port).await, "", "no answer at all");
    let open = TestProxy::start(&policy, |c| c.allowed_clients = vec!["127.0.0.0/8".parse().unwrap()]).await;
    assert_eq!(status(&open, "127.0.0.1", port).await, "200");
}
