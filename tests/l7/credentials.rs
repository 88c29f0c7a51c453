//! Credentials on inspected connections, over HTTP/1.1 and HTTP/2 between client and
//! proxy: a key is swapped only at its bound host, port and path; placeholders in path
//! segments, percent-encoded and in opted-in bodies; refusals (`credential_not_bound`,
//! `credential_expired`, bodies without the opt-in, 413) that send nothing upstream; and
//! answers scrubbed of every secret (headers, bodies split across chunks, Basic echoes,
//! compressed answers refused).

use crate::support::l7 as l7_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7_support::{Ca, ca, connect, https_service, write_pem};
use openshell_sandbox::config::Secret;
use openshell_sandbox::policy::{self, PolicyEngine, RegoRules};
use openshell_sandbox::proxy::credentials::{BindingEndpoint, ProviderEnvironment, SecretStore, placeholder};
use openshell_sandbox::proxy::l7::session::{Inspected, serve_tls};
use openshell_sandbox::proxy::tls::{LeafIssuer, upstream_client_config};
use openshell_sandbox::shutdown::Shutdown;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "api.test";
const SECRET: &str = "sk-BOUND-SECRET-4711";
const BOT: &str = "123456:BOT-SECRET-abc";
const OLD: &str = "old-EXPIRED-SECRET-1";
const POLICY: &str = "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.test\n        port: 443\n        protocol: rest\n        rules:\n          - allow: {method: GET, path: \"/**\"}\n          - allow: {method: POST, path: \"/**\"}\n";
const OPT_IN: &str = "        request_body_credential_rewrite: true\n";

type ClientBody = BoxBody<Bytes, Infallible>;

/// What the upstream saw: one JSON record per request (target, credential headers, body).
#[derive(Default)]
struct Seen(Mutex<Vec<Value>>);

impl Seen {
    fn all(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
}

/// `.../split` answers the request's `x-api-key` in two chunks cut in its middle, 50 ms apart;
/// `.../gzip` answers it with `Content-Encoding: gzip`; anything else echoes the request in
/// the body and its `authorization` in the `x-echo` header.
async fn handler(seen: Arc<Seen>, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (auth, key) = (header("authorization").unwrap_or_default(), header("x-api-key").unwrap_or_default());
    let target = req.uri().path_and_query().map(|pq| pq.to_string()).unwrap_or_default();
    let (path, length, encoding) = (req.uri().path().to_owned(), header("content-length"), header("accept-encoding"));
    let body = String::from_utf8_lossy(&req.into_body().collect().await.unwrap().to_bytes()).into_owned();
    let record = json!({"target": target, "authorization": auth, "x-api-key": key, "body": body,
        "content-length": length, "accept-encoding": encoding});
    seen.0.lock().unwrap().push(record.clone());
    match path.rsplit('/').next().unwrap_or_default() {
        "split" => {
            let (a, b) = key.split_at(key.len() / 2);
            let (a, b) = (Bytes::from(format!("[{a}")), Bytes::from(format!("{b}]")));
            let frames = futures_util::stream::unfold(0, move |i| {
                let (a, b) = (a.clone(), b.clone());
                async move {
                    match i {
                        0 => Some((Ok::<_, Infallible>(Frame::data(a)), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Some((Ok(Frame::data(b)), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::new(StreamBody::new(frames).boxed())
        }
        "gzip" => {
            Response::builder().header("content-encoding", "gzip").body(Full::new(Bytes::from(key)).boxed()).unwrap()
        }
        // Compressions spelled so that a look at the first `Content-Encoding` misses them.
        "gzip2" => encoded(&[("content-encoding", "identity"), ("content-encoding", "gzip")], key),
        "gzip-list" => encoded(&[("content-encoding", "identity, br")], key),
        "gzip-hop" => encoded(&[("content-encoding", "gzip"), ("connection", "content-encoding")], key),
        "gzip-te" => encoded(&[("transfer-encoding", "gzip, chunked")], key),
        "reason" => {
            let mut response = Response::builder().status(401).body(Full::new(Bytes::new()).boxed()).unwrap();
            let phrase = hyper::ext::ReasonPhrase::try_from(format!("Bad key {key}").into_bytes()).unwrap();
            response.extensions_mut().insert(phrase);
            response
        }
        _ => {
            Response::builder().header("x-echo", auth).body(Full::new(Bytes::from(record.to_string())).boxed()).unwrap()
        }
    }
}

/// An answer with `headers` and `body`.
fn encoded(headers: &[(&str, &str)], body: String) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::builder();
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.body(Full::new(Bytes::from(body)).boxed()).unwrap()
}

/// The upstream, speaking the protocols of `alpn`.
async fn upstream(ca: &Ca, alpn: &[&[u8]]) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let addr = https_service(ca, HOST, alpn, seen.clone(), handler).await;
    (addr, seen)
}

/// `API_KEY` bound to `api.test:443` under `/v1`, `BOT_TOKEN` to `api.test:443` on
/// `/bot*/sendMessage`, `OLD_KEY` bound but expired, `REGION` not secret.
fn secrets() -> Arc<SecretStore> {
    let at = |path: &str| vec![BindingEndpoint { host: HOST.into(), port: 443, path: path.into() }];
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let env = ProviderEnvironment {
        environment: [("API_KEY", SECRET), ("BOT_TOKEN", BOT), ("OLD_KEY", OLD), ("REGION", "eu-west-1")]
            .map(|(k, v)| (k.to_owned(), Secret::new(v)))
            .into(),
        bindings: [("API_KEY", at("/v1")), ("BOT_TOKEN", at("/bot*/sendMessage")), ("OLD_KEY", at(""))]
            .map(|(k, e)| (k.to_owned(), e))
            .into(),
        expires_at_ms: [("OLD_KEY".to_owned(), now - 1_000)].into(),
        non_secret_keys: ["REGION".to_owned()].into(),
        revision: 1,
    };
    Arc::new(SecretStore::from_provider(&env).unwrap())
}

/// The proxy side for `host` (the CONNECT host) under `policy`, offering `h2` and HTTP/1.1.
async fn proxy(policy: &str, host: &str, sandbox_ca: &Ca, upstream_ca: &Ca, upstream: SocketAddr) -> SocketAddr {
    let issuer = LeafIssuer::new(&sandbox_ca.der, &sandbox_ca.key_pem, 4).unwrap().with_alpn(&[b"h2", b"http/1.1"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_pem(dir.path(), "ca.pem", upstream_ca);
    let engine =
        Arc::new(PolicyEngine::new(policy::parse_yaml(policy, "t").unwrap(), &RegoRules::builtin(), 1).unwrap());
    let session = Inspected {
        host: host.into(),
        port: 443,
        policy: Arc::new(move || engine.clone()),
        secrets: secrets(),
        upstream_tls: upstream_client_config(Some(&ca_file)).unwrap(),
        dial: Arc::new(move || Box::pin(TcpStream::connect(upstream))),
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
    };
    let config = issuer.server_config(host).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_tls(tcp, config.clone(), session.clone(), Shutdown::new()));
        }
    });
    addr
}

/// One client connection, HTTP/2 or HTTP/1.1.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<ClientBody>),
    H2(hyper::client::conn::http2::SendRequest<ClientBody>),
}

/// The answer: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Client {
    async fn open(proxy: SocketAddr, host: &str, sandbox_ca: &Ca, h2: bool) -> Client {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let io = TokioIo::new(connect(proxy, host, sandbox_ca, alpn).await);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Client::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(sender)
        }
    }

    async fn send(&mut self, method: &str, target: &str, headers: &[(&str, String)], body: &str) -> Answer {
        let mut b = Request::builder().method(method);
        b = match self {
            Client::H1(_) => b.uri(target).header("host", HOST),
            Client::H2(_) => b.uri(format!("https://{HOST}{target}")),
        };
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let req = b.body(Full::new(Bytes::from(body.to_owned())).boxed()).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), async {
            match self {
                Client::H1(s) => {
                    s.ready().await.unwrap();
                    s.send_request(req).await
                }
                Client::H2(s) => s.send_request(req).await,
            }
        })
        .await
        .unwrap()
        .unwrap();
        let (parts, body) = response.into_parts();
        let body = String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned();
        Answer { status: parts.status, headers: parts.headers, body }
    }
}

struct Rig {
    proxy: SocketAddr,
    sandbox_ca: Ca,
    seen: Arc<Seen>,
}

impl Rig {
    async fn start(policy: &str) -> Rig {
        Self::for_host(policy, HOST).await
    }

    async fn for_host(policy: &str, host: &str) -> Rig {
        Self::with_upstream(policy, host, &[b"h2", b"http/1.1"]).await
    }

    /// An upstream speaking only the protocols of `alpn` (HTTP/1.1 only: its framing and
    /// reason phrases reach the proxy whatever the client speaks).
    async fn with_upstream(policy: &str, host: &str, alpn: &[&[u8]]) -> Rig {
        let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
        let (addr, seen) = upstream(&upstream_ca, alpn).await;
        let proxy = proxy(policy, host, &sandbox_ca, &upstream_ca, addr).await;
        Rig { proxy, sandbox_ca, seen }
    }

    /// One request on a new connection (HTTP/2 when `h2`).
    async fn once(&self, h2: bool, method: &str, target: &str, headers: &[(&str, String)], body: &str) -> Answer {
        let mut c = Client::open(self.proxy, HOST, &self.sandbox_ca, h2).await;
        c.send(method, target, headers, body).await
    }
}

fn refused(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!((answer.status, answer.json()["error"].as_str()), (status, Some(code)), "{}", answer.body);
    for secret in [SECRET, BOT, OLD] {
        assert!(!answer.body.contains(secret), "{}", answer.body);
    }
}

#[tokio::test]
async fn a_bound_key_is_swapped_at_its_host_and_path_and_never_echoed() {
    let rig = Rig::start(POLICY).await;
    let bearer = format!("Bearer {}", placeholder("API_KEY"));
    for (i, h2) in [false, true].into_iter().enumerate() {
        let headers = [("authorization", bearer.clone()), ("accept-encoding", "gzip, br".into())];
        let answer = rig.once(h2, "GET", "/v1/models", &headers, "").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let saw = &rig.seen.all()[i];
        assert_eq!(saw["authorization"], format!("Bearer {SECRET}"), "the upstream got the value");
        assert_eq!(saw["accept-encoding"], "identity", "an answer that can be scrubbed is asked for");
        assert_eq!(answer.headers["x-echo"], bearer.as_str(), "the echoed header holds the placeholder");
        assert_eq!(answer.json()["authorization"], bearer, "so does the echoed body");
        assert!(!answer.body.contains(SECRET) && answer.headers.get("content-length").is_none());
    }
}

#[tokio::test]
async fn a_key_is_refused_at_another_path_port_or_host_and_nothing_is_sent() {
    let rig = Rig::start(POLICY).await;
    let key = [("x-api-key", placeholder("API_KEY"))];
    for h2 in [false, true] {
        for target in ["/v2/models", "/v10", "/", "/v1/../admin", "/x?k=openshell:resolve:env:API_KEY"] {
            let answer = rig.once(h2, "GET", target, &key, "").await;
            refused(&answer, StatusCode::FORBIDDEN, "credential_not_bound");
            let reason = answer.json()["reason"].as_str().unwrap().to_owned();
            assert!(
                reason.contains("`API_KEY` may not be sent to api.test:443") && reason.contains("(path /v1)"),
                "{reason}"
            );
        }
    }
    let other = "version: 1\nnetwork_policies:\n  o:\n    endpoints:\n      - {host: other.test, port: 443, protocol: rest, access: full}\n";
    let rig_other = Rig::for_host(other, "other.test").await;
    for h2 in [false, true] {
        let mut c = Client::open(rig_other.proxy, "other.test", &rig_other.sandbox_ca, h2).await;
        let target = if h2 { "https://other.test/v1/x" } else { "/v1/x" };
        let req = Request::get(target).header("x-api-key", placeholder("API_KEY"));
        let req = if h2 { req } else { req.header("host", "other.test") };
        let answer = match &mut c {
            Client::H1(s) => s.send_request(req.body(Full::new(Bytes::new()).boxed()).unwrap()).await.unwrap(),
            Client::H2(s) => s.send_request(req.body(Full::new(Bytes::new()).boxed()).unwrap()).await.unwrap(),
        };
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "another allowed host");
    }
    assert!(rig.seen.all().is_empty() && rig_other.seen.all().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn an_expired_value_is_refused() {
    let rig = Rig::start(POLICY).await;
    for h2 in [false, true] {
        let answer = rig.once(h2, "GET", "/v1/x", &[("x-api-key", placeholder("OLD_KEY"))], "").await;
        refused(&answer, StatusCode::FORBIDDEN, "credential_expired");
        assert!(answer.json()["reason"].as_str().unwrap().contains("`OLD_KEY` has expired"));
    }
    assert!(rig.seen.all().is_empty());
}

#[tokio::test]
async fn path_placeholders_also_inside_a_segment_and_percent_encoded() {
    let rig = Rig::start(POLICY).await;
    for (i, h2) in [false, true].into_iter().enumerate() {
        let target = format!("/bot{}/sendMessage?chat=1", placeholder("BOT_TOKEN"));
        let answer = rig.once(h2, "POST", &target, &[], "").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let saw = &rig.seen.all()[2 * i];
        assert_eq!(
            saw["target"], "/bot123456%3ABOT-SECRET-abc/sendMessage?chat=1",
            "the value percent-encoded in its segment"
        );
        assert_eq!(answer.json()["target"], target, "the echo shows the placeholder");

        let encoded = "/v1/q?key=openshell%3Aresolve%3Aenv%3AAPI_KEY&region=openshell:resolve:env:REGION";
        let answer = rig.once(h2, "GET", encoded, &[], "").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(rig.seen.all()[2 * i + 1]["target"], format!("/v1/q?key={SECRET}&region=eu-west-1"));
        assert!(!answer.body.contains(SECRET));
    }
    let answer = rig.once(false, "GET", "/v1/q?key=openshell%253Aresolve%253Aenv%253AAPI_KEY", &[], "").await;
    refused(&answer, StatusCode::FORBIDDEN, "credential_unresolved");
    assert_eq!(rig.seen.all().len(), 4, "a placeholder encoded twice is never forwarded half-resolved");
}

#[tokio::test]
async fn opted_in_bodies_are_rewritten_with_their_length() {
    let rig = Rig::start(&format!("{POLICY}{OPT_IN}")).await;
    let ph = placeholder("API_KEY");
    let cases = [
        ("application/json", format!(r#"{{"key": "{ph}", "n": 1}}"#), format!(r#"{{"key": "{SECRET}", "n": 1}}"#)),
        (
            "application/x-www-form-urlencoded",
            "key=openshell%3Aresolve%3Aenv%3AAPI_KEY&a=b".to_owned(),
            format!("key={SECRET}&a=b"),
        ),
        ("text/plain; charset=utf-8", format!("token {ph}."), format!("token {SECRET}.")),
        ("application/octet-stream", format!("raw {ph}"), format!("raw {ph}")),
    ];
    let mut n = 0;
    for h2 in [false, true] {
        for (content_type, body, want) in &cases {
            let answer =
                rig.once(h2, "POST", "/v1/messages", &[("content-type", content_type.to_string())], body).await;
            assert_eq!(answer.status, StatusCode::OK, "{content_type}: {}", answer.body);
            let saw = &rig.seen.all()[n];
            n += 1;
            assert_eq!(saw["body"], *want, "{content_type}");
            assert_eq!(saw["content-length"], want.len().to_string(), "{content_type}");
            assert!(!answer.body.contains(SECRET), "{content_type}: {}", answer.body);
        }
        let big = format!(r#"{{"key": "{ph}", "pad": "{}"}}"#, "x".repeat(300 * 1024));
        let answer = rig.once(h2, "POST", "/v1/messages", &[("content-type", "application/json".into())], &big).await;
        refused(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        let escaped = r#"{"key": "openshell\u003aresolve:env:API_KEY"}"#;
        let answer = rig.once(h2, "POST", "/v1/m", &[("content-type", "application/json".into())], escaped).await;
        refused(&answer, StatusCode::FORBIDDEN, "credential_unresolved");
    }
    assert_eq!(rig.seen.all().len(), n, "refused bodies never went upstream");
}

#[tokio::test]
async fn a_body_placeholder_without_the_opt_in_is_refused() {
    let rig = Rig::start(POLICY).await;
    let json = [("content-type", "application/json".to_owned())];
    for h2 in [false, true] {
        let body = format!(r#"{{"key": "{}"}}"#, placeholder("API_KEY"));
        let answer = rig.once(h2, "POST", "/v1/messages", &json, &body).await;
        refused(&answer, StatusCode::FORBIDDEN, "credential_unresolved");
        assert!(answer.json()["reason"].as_str().unwrap().contains("request_body_credential_rewrite: true"));
        let answer = rig.once(h2, "POST", "/v1/messages", &json, r#"{"plain": 1}"#).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(rig.seen.all().len(), 2, "only the bodies without a placeholder went upstream");
}

#[tokio::test]
async fn a_value_split_across_chunks_and_a_basic_echo_are_scrubbed() {
    let rig = Rig::start(POLICY).await;
    for h2 in [false, true] {
        let answer = rig.once(h2, "GET", "/v1/../split", &[("x-api-key", placeholder("API_KEY"))], "").await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "/split is outside the binding");
        let answer = rig.once(h2, "GET", "/v1/split", &[("x-api-key", placeholder("API_KEY"))], "").await;
        assert_eq!(answer.body, format!("[{}]", placeholder("API_KEY")), "split in two chunks upstream");

        let blob = STANDARD.encode(format!("user:{}", placeholder("API_KEY")));
        let answer = rig.once(h2, "GET", "/v1/basic", &[("authorization", format!("Basic {blob}"))], "").await;
        let sent = STANDARD.encode(format!("user:{SECRET}"));
        assert_eq!(rig.seen.all().last().unwrap()["authorization"], format!("Basic {sent}"));
        assert!(!answer.body.contains(&sent) && !answer.headers["x-echo"].to_str().unwrap().contains(&sent));
        assert_eq!(answer.headers["x-echo"], format!("Basic {blob}").as_str(), "the blob the agent sent");
    }
}

#[tokio::test]
async fn a_compressed_answer_to_a_request_with_a_secret_is_refused() {
    let rig = Rig::start(POLICY).await;
    for h2 in [false, true] {
        let answer = rig.once(h2, "GET", "/v1/gzip", &[("x-api-key", placeholder("API_KEY"))], "").await;
        refused(&answer, StatusCode::BAD_GATEWAY, "upstream_unreachable");
        assert!(answer.json()["reason"].as_str().unwrap().contains("Content-Encoding: gzip"), "{}", answer.body);
        let answer = rig.once(h2, "GET", "/v1/gzip", &[], "").await;
        assert_eq!(answer.status, StatusCode::OK, "without a secret the answer passes");
    }
}

#[tokio::test]
async fn a_compression_in_any_encoding_header_is_refused_and_a_reason_phrase_scrubbed() {
    // HTTP/1.1 upstream: `Transfer-Encoding`, `Connection` and reason phrases reach the proxy.
    let rig = Rig::with_upstream(POLICY, HOST, &[b"http/1.1"]).await;
    let key = [("x-api-key", placeholder("API_KEY"))];
    for h2 in [false, true] {
        for (path, named) in [
            ("/v1/gzip2", "Content-Encoding: gzip"),
            ("/v1/gzip-list", "Content-Encoding: identity, br"),
            ("/v1/gzip-hop", "Content-Encoding: gzip"),
            ("/v1/gzip-te", "Transfer-Encoding: gzip, chunked"),
        ] {
            let answer = rig.once(h2, "GET", path, &key, "").await;
            refused(&answer, StatusCode::BAD_GATEWAY, "upstream_unreachable");
            assert!(answer.json()["reason"].as_str().unwrap().contains(named), "{path}: {}", answer.body);
        }
        let answer = rig.once(h2, "GET", "/v1/gzip2", &[], "").await;
        assert_eq!(answer.status, StatusCode::OK, "without a secret the answer passes");
    }
    // The reason phrase as an HTTP/1.1 client reads it, on the wire.
    let mut tls = connect(rig.proxy, HOST, &rig.sandbox_ca, &[b"http/1.1"]).await;
    let request = format!("GET /v1/reason HTTP/1.1\r\nhost: {HOST}\r\nx-api-key: {}\r\n\r\n", placeholder("API_KEY"));
    tokio::io::AsyncWriteExt::write_all(&mut tls, request.as_bytes()).await.unwrap();
    let mut head = vec![0; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut tls, &mut head))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with(&format!("HTTP/1.1 401 Bad key {}\r\n", placeholder("API_KEY"))), "{head}");
    assert!(!head.contains(SECRET), "{head}");
    assert_eq!(rig.seen.all().last().unwrap()["x-api-key"], SECRET, "the upstream got the value");
}
