//! HTTP/2 through an inspected connection: a client that negotiates `h2` is judged per
//! stream like HTTP/1.1, gets HTTP/2 upstream when the upstream takes it (trailers pass, as
//! gRPC needs) and HTTP/1.1 when it does not; a held stream does not block the others.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openshell_sandbox::config::Secret;
use openshell_sandbox::policy::{self, PolicyEngine, RegoRules};
use openshell_sandbox::proxy::credentials::{BindingEndpoint, ProviderEnvironment, SecretStore, placeholder};
use openshell_sandbox::proxy::l7::session::{Inspected, serve_tls};
use openshell_sandbox::proxy::tls::{LeafIssuer, upstream_client_config};
use openshell_sandbox::shutdown::Shutdown;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::support::l7 as l7_support;
use l7_support::{Ca, ca, connect, https_service, write_pem};

const HOST: &str = "api.test";
const SECRET: &str = "grpc-SECRET-777";
const POLICY: &str = "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.test\n        port: 443\n        protocol: rest\n        rules:\n          - allow: {method: GET, path: \"/**\"}\n          - allow: {method: POST, path: \"/pkg.Service/**\"}\n";

type ClientBody = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Value>>,
    release: Notify,
}

async fn handler(seen: Arc<Seen>, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let record = json!({"version": format!("{:?}", req.version()), "path": req.uri().path(),
        "authority": req.uri().authority().map(|a| a.to_string()).or_else(|| header("host")),
        "authorization": header("authorization"), "te": header("te")});
    seen.requests.lock().unwrap().push(record.clone());
    match req.uri().path() {
        "/hold" => {
            seen.release.notified().await;
            Response::new(Full::new(Bytes::from_static(b"released")).boxed())
        }
        "/pkg.Service/Call" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))), Ok(Frame::trailers(trailers))];
            let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
            Response::builder().header("content-type", "application/grpc").body(body).unwrap()
        }
        _ => Response::new(Full::new(Bytes::from(record.to_string())).boxed()),
    }
}

/// An upstream for `api.test` serving HTTP/2 and HTTP/1.1 (`h2`) or HTTP/1.1 only.
async fn upstream(ca: &Ca, h2: bool) -> (SocketAddr, Arc<Seen>) {
    let alpn: &[&[u8]] = if h2 { &[b"h2", b"http/1.1"] } else { &[] };
    let seen = Arc::new(Seen::default());
    let addr = https_service(ca, HOST, alpn, seen.clone(), handler).await;
    (addr, seen)
}

/// The proxy side offering `h2` to clients.
async fn proxy(sandbox_ca: &Ca, upstream_ca: &Ca, upstream: SocketAddr) -> SocketAddr {
    let issuer = LeafIssuer::new(&sandbox_ca.der, &sandbox_ca.key_pem, 4).unwrap().with_alpn(&[b"h2", b"http/1.1"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_pem(dir.path(), "ca.pem", upstream_ca);
    let engine =
        Arc::new(PolicyEngine::new(policy::parse_yaml(POLICY, "t").unwrap(), &RegoRules::builtin(), 1).unwrap());
    let env = ProviderEnvironment {
        environment: [("TOKEN".to_owned(), Secret::new(SECRET))].into(),
        revision: 1,
        bindings: [(
            "TOKEN".to_owned(),
            vec![BindingEndpoint { host: "api.test".into(), port: 443, path: String::new() }],
        )]
        .into(),
        ..Default::default()
    };
    let session = Inspected {
        host: HOST.into(),
        port: 443,
        policy: Arc::new(move || engine.clone()),
        secrets: Arc::new(SecretStore::from_provider(&env).unwrap()),
        upstream_tls: upstream_client_config(Some(&ca_file)).unwrap(),
        dial: Arc::new(move || Box::pin(TcpStream::connect(upstream))),
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
    };
    let config = issuer.server_config(HOST).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_tls(tcp, config.clone(), session.clone(), Shutdown::new()));
        }
    });
    addr
}

/// An HTTP/2 client trusting only the sandbox CA.
async fn h2_client(proxy: SocketAddr, sandbox_ca: &Ca) -> SendRequest<ClientBody> {
    let tls = connect(proxy, HOST, sandbox_ca, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the session offers h2");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    sender
}

fn request(method: &str, path: &str) -> Request<ClientBody> {
    Request::builder()
        .method(method)
        .uri(format!("https://{HOST}{path}"))
        .header("authorization", format!("Bearer {}", placeholder("TOKEN")))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

async fn json_of(c: &mut SendRequest<ClientBody>, req: Request<ClientBody>) -> (StatusCode, Value) {
    let response = tokio::time::timeout(Duration::from_secs(10), c.send_request(req)).await.unwrap().unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn h2_end_to_end_with_credentials_trailers_and_denials() {
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (addr, seen) = upstream(&upstream_ca, true).await;
    let mut c = h2_client(proxy(&sandbox_ca, &upstream_ca, addr).await, &sandbox_ca).await;

    let (status, echo) = json_of(&mut c, request("GET", "/v1/../items")).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!((echo["version"].as_str(), echo["path"].as_str()), (Some("HTTP/2.0"), Some("/items")));
    assert_eq!(echo["authorization"], format!("Bearer {}", placeholder("TOKEN")), "the echo is scrubbed");
    assert_eq!(seen.requests.lock().unwrap()[0]["authorization"], format!("Bearer {SECRET}"), "the upstream got it");
    assert_eq!(echo["authority"], HOST);

    let response = c.send_request(request("POST", "/pkg.Service/Call")).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().expect("trailers pass through")["grpc-status"], "0");
    assert_eq!(seen.requests.lock().unwrap().last().unwrap()["te"], "trailers");

    let (status, body) = json_of(&mut c, request("DELETE", "/items/1")).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("policy_denied")));
    assert_eq!(seen.requests.lock().unwrap().len(), 2, "the denied stream never went upstream");
}

#[tokio::test]
async fn a_held_stream_does_not_block_the_others() {
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (addr, seen) = upstream(&upstream_ca, true).await;
    let c = h2_client(proxy(&sandbox_ca, &upstream_ca, addr).await, &sandbox_ca).await;
    let mut held_client = c.clone();
    let held = tokio::spawn(async move { held_client.send_request(request("GET", "/hold")).await.unwrap().status() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = json_of(&mut c.clone(), request("GET", "/quick")).await;
    assert_eq!(status, StatusCode::OK, "answered while /hold waits");
    seen.release.notify_one();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn an_http1_only_upstream_gets_http1() {
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (addr, seen) = upstream(&upstream_ca, false).await;
    let mut c = h2_client(proxy(&sandbox_ca, &upstream_ca, addr).await, &sandbox_ca).await;
    let (status, echo) = json_of(&mut c, request("GET", "/items")).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!((echo["version"].as_str(), echo["authority"].as_str()), (Some("HTTP/1.1"), Some(HOST)));
    assert_eq!(seen.requests.lock().unwrap()[0]["authorization"], format!("Bearer {SECRET}"));
}

/// A request over a fresh HTTP/1.1 connection (each of the proxy's own answers closes it),
/// its body collected.
async fn h1_once(proxy: SocketAddr, sandbox_ca: &Ca, request: Request<ClientBody>) -> Response<Bytes> {
    let tls = connect(proxy, HOST, sandbox_ca, &[b"http/1.1"]).await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    collected(sender.send_request(request)).await
}

async fn collected(exchange: impl Future<Output = Result<Response<Incoming>, hyper::Error>>) -> Response<Bytes> {
    let response = tokio::time::timeout(Duration::from_secs(10), exchange).await.unwrap().unwrap();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn the_proxys_own_answers_are_the_same_over_http1_and_h2() {
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Upstream CA"));
    let (addr, seen) = upstream(&upstream_ca, true).await;
    let proxy = proxy(&sandbox_ca, &upstream_ca, addr).await;
    let mut h2 = h2_client(proxy, &sandbox_ca).await;
    // (method, path, a header to set, the answer's status and `error`)
    let cases = [
        ("DELETE", "/items/1", None, 403, "policy_denied"),
        ("GET", "/a%2Fb", None, 400, "bad_request"),
        (
            "GET",
            "/items",
            Some(("authorization", format!("Bearer {}", placeholder("NOPE")))),
            403,
            "credential_unresolved",
        ),
        ("GET", "/items", Some(("x-original-url", "/admin".to_owned())), 400, "bad_request"),
    ];
    for (method, path, header, status, error) in cases {
        let build = |h1: bool| {
            let mut r = request(method, path);
            if h1 {
                *r.uri_mut() = path.parse().unwrap();
                r.headers_mut().insert("host", HOST.parse().unwrap());
            }
            if let Some((name, value)) = &header {
                r.headers_mut().insert(*name, value.parse().unwrap());
            }
            r
        };
        let over_h1 = h1_once(proxy, &sandbox_ca, build(true)).await;
        let over_h2 = collected(h2.send_request(build(false))).await;
        let body: Value = serde_json::from_slice(over_h1.body()).unwrap();
        assert_eq!(
            (over_h1.status().as_u16(), body["error"].as_str()),
            (status, Some(error)),
            "{method} {path}: {body}"
        );
        assert_eq!((body["method"].as_str(), body["host"].as_str()), (Some(method), Some(HOST)), "{body}");
        assert_eq!(over_h2.status(), over_h1.status(), "{method} {path}");
        assert_eq!(over_h2.body(), over_h1.body(), "{method} {path}: the same bytes");
        for name in ["content-type", "x-openshell-policy"] {
            assert_eq!(over_h2.headers().get(name), over_h1.headers().get(name), "{method} {path}: {name}");
        }
        assert_eq!(over_h1.headers()["connection"], "close", "HTTP/1.1 closes after the proxy's own answer");
        assert_eq!(over_h1.headers().get("x-openshell-policy").is_some(), status == 403);
    }
    assert!(seen.requests.lock().unwrap().is_empty(), "no refused request went upstream");
}
