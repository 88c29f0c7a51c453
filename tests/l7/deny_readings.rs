//! Deny rules read every spelling of a request through the real proxy: repeated, case-folded,
//! `;`-separated and encoded query parameters, values in any case, padded or cut by a NUL,
//! queries decoded before the split, a subtree's root, trailing slashes, format suffixes,
//! upper case paths and lower-case methods are denied over HTTP/1.1 and HTTP/2 without reaching
//! the upstream, the allowed neighbours of each shape go through, and `policy eval` on the
//! same policy file gives the same answer for every shape.

use crate::support::l7 as l7_support;
use crate::support::l7::session as rig;
use crate::support::l7::through;
use crate::support::proxy as proxy_support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7_support::{ca, client_config, write_pem};
use proxy_support::TestProxy;
use rig::{ClientBody, upstream_named};
use rustls::pki_types::ServerName;
use serde_json::Value;
use through::{client_through, connect_raw, exchange, proxy_ca, request};
use tokio_rustls::TlsConnector;

/// Shaped like policies/default.yaml's GitHub endpoint, plus subtree, exact-path, method
/// and empty-value denies.
fn policy(port: u16) -> String {
    format!(
        "version: 1\nnetwork_policies:\n  git:\n    endpoints:\n      - host: localhost\n        port: {port}\n        protocol: rest\n        rules:\n\
         \x20         - allow: {{method: GET, path: \"/**\"}}\n\
         \x20         - allow: {{path: \"/tmp/**\"}}\n\
         \x20       deny_rules:\n\
         \x20         - {{method: GET, path: \"/*/*/info/refs\", query: {{service: git-receive-pack}}}}\n\
         \x20         - {{path: \"/admin/**\"}}\n\
         \x20         - {{path: /private}}\n\
         \x20         - {{method: DELETE, path: /tmp/keep}}\n\
         \x20         - {{path: /search, query: {{debug: \"*\"}}}}\n"
    )
}

/// What the proxy answers a shape.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Forwarded.
    Allow,
    /// 403 from a deny rule.
    Deny,
    /// 403: no allow rule matches.
    NoRule,
}
use Expect::{Allow, Deny, NoRule};

const SHAPES: &[(&str, &str, Expect)] = &[
    ("GET", "/o/r.git/info/refs?service=git-receive-pack", Deny),
    ("GET", "/o/r.git/info/refs?service=git-receive-pack&service=x", Deny),
    ("GET", "/o/r.git/info/refs?service=git-upload-pack&service=git-receive-pack", Deny),
    ("GET", "/o/r.git/info/refs?SERVICE=git-receive-pack", Deny),
    ("GET", "/o/r.git/info/refs?x=1;service=git-receive-pack", Deny),
    ("GET", "/o/r.git/info/refs?service=x&%53ERVICE=git%2dreceive-pack", Deny),
    ("GET", "/o/r.git/info/refs?service=git%252Dreceive-pack", Deny),
    ("GET", "/o/r.git/info/refs/?service=git-receive-pack", Deny),
    ("GET", "/O/R.GIT/INFO/REFS?service=git-receive-pack", Deny),
    // Values read in any case, trimmed, cut at a NUL (C servers such as git-http-backend
    // end the string there), and the query decoded whole before it is split.
    ("GET", "/o/r.git/info/refs?service=GIT-RECEIVE-PACK", Deny),
    ("GET", "/o/r.git/info/refs?service=git-receive-pack%00", Deny),
    ("GET", "/o/r.git/info/refs?service=git-receive-pack%00x", Deny),
    ("GET", "/o/r.git/info/refs?service=git-receive-pack%20", Deny),
    ("GET", "/o/r.git/info/refs?service=%09git-receive-pack+", Deny),
    ("GET", "/o/r.git/info/refs?service%3Dgit-receive-pack", Deny),
    ("GET", "/o/r.git/info/refs?service=git-upload-pack%26service%3Dgit-receive-pack", Deny),
    ("GET", "/o/r.git/info/refs.php?service=git-receive-pack", Deny),
    ("GET", "/o/r.git/info/refs?service=git-receive-packs", Allow),
    ("GET", "/o/r.git/info/refs?service=x%00git-receive-pack", Allow),
    ("GET", "/o/r.git/info/refs?service=git-upload-pack", Allow),
    ("GET", "/o/r.git/info/refs?service=git-upload-pack&x=git-receive-pack", Allow),
    ("GET", "/admin", Deny),
    ("GET", "/admin/", Deny),
    ("GET", "/ADMIN/users", Deny),
    ("GET", "/administrator", Allow),
    // A format suffix on the last segment (Rails, Spring's suffix matching).
    ("GET", "/admin.json", Deny),
    ("GET", "/Admin.tar.gz/", Deny),
    ("GET", "/private.xml", Deny),
    ("GET", "/administrator.json", Allow),
    ("GET", "/private/x.json", Allow),
    ("GET", "/private/", Deny),
    ("GET", "/Private", Deny),
    ("GET", "/private/x", Allow),
    ("DELETE", "/tmp/keep/", Deny),
    ("delete", "/tmp/keep", Deny),
    ("DELETE", "/tmp/other", Allow),
    ("GET", "/search?debug", Deny),
    ("GET", "/search?Debug=", Deny),
    ("GET", "/search?q=debug", Allow),
    // `policy eval` judges the canonical path and the method as sent, as the proxy does.
    ("GET", "/x/../admin", Deny),
    ("get", "/x", NoRule),
];

fn h1(method: &str, target: &str) -> Request<ClientBody> {
    request(method, target, &[], "")
}

fn h2(method: &str, target: &str, port: u16) -> Request<ClientBody> {
    let uri = format!("https://localhost:{port}{target}");
    Request::builder().method(method).uri(uri).body(Full::new(Bytes::new()).boxed()).unwrap()
}

/// The status and JSON body of one request on a new HTTP/2 connection through the proxy.
async fn over_h2(proxy: &TestProxy, port: u16, method: &str, target: &str) -> (StatusCode, Value) {
    let (tcp, head) = connect_raw(proxy.addr, &format!("localhost:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let config = client_config(&proxy_ca(&proxy.tls_dir()), &[b"h2"]);
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(h2(method, target, port)));
    let response = response.await.unwrap().unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// `policy eval` on the proxy's own policy file: true when it allows.
fn eval(policy: &std::path::Path, port: u16, method: &str, target: &str) -> bool {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_openshell-sandbox"))
        .args(["policy", "eval"])
        .arg(policy)
        .args(["--host", "localhost", "--port", &port.to_string(), "--method", method, "--path", target, "--json"])
        .env_clear()
        .output()
        .unwrap();
    let decision: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    assert_eq!(output.status.code(), Some(if decision["decision"] == "allow" { 0 } else { 1 }), "{decision}");
    decision["decision"] == "allow"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_denied_request_is_denied_over_h1_and_h2_and_eval_agrees() {
    let upstream_ca = ca("Upstream CA");
    let (upstream, seen) = upstream_named(&upstream_ca, "localhost").await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_pem(dir.path(), "upstream-ca.pem", &upstream_ca);
    let proxy = TestProxy::start(&policy(port), |c| c.upstream_ca_file = Some(ca_file)).await;
    let received = || seen.requests.lock().unwrap().len();

    for &(method, target, expect) in SHAPES {
        let mut c = client_through(proxy.addr, "localhost", port, &proxy.tls_dir()).await;
        let before = received();
        let answers = [exchange(&mut c, h1(method, target)).await, over_h2(&proxy, port, method, target).await];
        for (version, (status, body)) in ["HTTP/1.1", "HTTP/2"].iter().zip(answers) {
            let shape = format!("{version} {method} {target} ({expect:?}): {body}");
            if expect == Allow {
                assert_eq!(status, StatusCode::OK, "{shape}");
                continue;
            }
            assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("policy_denied")), "{shape}");
            let by_deny_rule =
                body["reason"].as_str().unwrap_or_default().starts_with("denied by git.endpoints[0].deny_rules[");
            assert_eq!(by_deny_rule, expect == Deny, "{shape}");
        }
        let reached = received() - before;
        assert_eq!(reached, if expect == Allow { 2 } else { 0 }, "{method} {target}: what reached the upstream");
        assert_eq!(eval(&proxy.policy_path, port, method, target), expect == Allow, "policy eval on {method} {target}");
    }
    // The ordinary request after all of them still works.
    let mut c = client_through(proxy.addr, "localhost", port, &proxy.tls_dir()).await;
    let (status, echo) = exchange(&mut c, h1("GET", "/o/r.git/info/refs?service=git-upload-pack")).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["target"], "/o/r.git/info/refs?service=git-upload-pack");
}
