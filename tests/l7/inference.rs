//! `inference.local` end to end on 127.0.0.1: a client trusting only the sandbox CA sends
//! OpenAI and Anthropic shaped requests; the session routes them to a local upstream with
//! the route's key and model, strips the caller's credentials, and streams answers back.

use std::convert::Infallible;
use std::net::SocketAddr;
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
use openshell_sandbox::proxy::l7::inference::{InferenceSession, serve_inference_tls};
use openshell_sandbox::proxy::l7::routes::{InferenceBundle, Route};
use openshell_sandbox::proxy::tls::{LeafIssuer, upstream_client_config};
use openshell_sandbox::shutdown::Shutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_rustls::TlsAcceptor;

use crate::support::l7 as l7_support;
use l7_support::{Ca, ca, connect, write_pem};

type ClientBody = BoxBody<Bytes, Infallible>;

/// What the agent reads where an answer held the route's key.
const REDACTED: &str = "[inference route key redacted]";

/// What the model server saw, and the switch that lets a stream finish.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Value>>,
    release: Notify,
}

async fn model_server(seen: Arc<Seen>, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut record = json!({"method": req.method().as_str(), "target": req.uri().to_string(),
        "authorization": header("authorization"), "x-api-key": header("x-api-key"), "cookie": header("cookie")});
    let body = req.into_body().collect().await.unwrap().to_bytes();
    record["body"] = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let streaming = record["body"]["stream"] == true;
    seen.requests.lock().unwrap().push(record.clone());
    if !streaming {
        // The key echoed in a header and, when asked, the reason phrase or a compressed body.
        let key = record["authorization"].as_str().or(record["x-api-key"].as_str()).unwrap_or_default().to_owned();
        let mut response = Response::builder().header("x-echo", &key);
        if record["body"]["gzip"] == true {
            response = response.header("content-encoding", "identity").header("content-encoding", "gzip");
        }
        let mut response = response.body(Full::new(Bytes::from(record.to_string())).boxed()).unwrap();
        if record["body"]["reason"] == true {
            *response.status_mut() = http::StatusCode::UNAUTHORIZED;
            let phrase = hyper::ext::ReasonPhrase::try_from(format!("Bad key {key}").into_bytes()).unwrap();
            response.extensions_mut().insert(phrase);
        }
        return response;
    }
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        tx.send(Bytes::from_static(b"data: {\"delta\":\"Hel\"}\n\n")).await.unwrap();
        seen.release.notified().await;
        tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await.unwrap();
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder().header("content-type", "text/event-stream").body(StreamBody::new(stream).boxed()).unwrap()
}

/// A model server on 127.0.0.1:0, plain HTTP or HTTPS with a leaf for 127.0.0.1.
async fn upstream(tls: Option<&Ca>) -> (SocketAddr, Arc<Seen>) {
    let acceptor = tls.map(|ca| {
        let issuer = LeafIssuer::new(&ca.der, &ca.key_pem, 2).unwrap();
        TlsAcceptor::from(issuer.server_config("127.0.0.1").unwrap())
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(model_server(state, req).await) }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                let _ = match acceptor {
                    Some(a) => match a.accept(tcp).await {
                        Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                        Err(_) => return,
                    },
                    None => builder.serve_connection(TokioIo::new(tcp), service).await,
                };
            });
        }
    });
    (addr, seen)
}

fn route(name: &str, base_url: String, protocols: &[&str], provider_type: &str) -> Route {
    Route {
        name: name.into(),
        base_url,
        protocols: protocols.iter().map(|p| p.to_string()).collect(),
        api_key: Secret::new(format!("route-key-{name}")),
        model_id: format!("model-of-{name}"),
        provider_type: provider_type.into(),
        timeout: Some(Duration::from_secs(10)),
        model_in_path: false,
        request_path_override: None,
    }
}

/// Serves `inference.local` on 127.0.0.1:0 with `routes`; upstream TLS trusts `upstream_ca`.
/// Clients may pick `h2` or `http/1.1`.
async fn proxy(sandbox_ca: &Ca, routes: Vec<Route>, upstream_ca: &Ca) -> SocketAddr {
    let issuer = LeafIssuer::new(&sandbox_ca.der, &sandbox_ca.key_pem, 4).unwrap().with_alpn(&[b"h2", b"http/1.1"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_pem(dir.path(), "ca.pem", upstream_ca);
    let bundle = Arc::new(InferenceBundle { routes, revision: "t".into(), generated_at_ms: 0 });
    let session = InferenceSession {
        routes: Arc::new(move || bundle.clone()),
        upstream_tls: upstream_client_config(Some(&ca_file)).unwrap(),
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
    };
    let config = issuer.server_config("inference.local").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_inference_tls(tcp, config.clone(), session.clone(), Shutdown::new()));
        }
    });
    addr
}

async fn client(proxy: SocketAddr, sandbox_ca: &Ca) -> SendRequest<ClientBody> {
    let tls = connect(proxy, "inference.local", sandbox_ca, &[]).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    sender
}

fn post(path: &str, body: Value) -> Request<ClientBody> {
    Request::post(path)
        .header("host", "inference.local")
        .header("authorization", "Bearer caller-placeholder")
        .header("cookie", "session=1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

async fn send(c: &mut SendRequest<ClientBody>, req: Request<ClientBody>) -> (StatusCode, Value) {
    tokio::time::timeout(Duration::from_secs(5), c.ready()).await.unwrap().unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), c.send_request(req)).await.unwrap().unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body))))
}

#[tokio::test]
async fn a_chat_completion_is_routed_with_the_routes_key_and_model_and_streams() {
    let (sandbox_ca, unused_ca) = (ca("Sandbox CA"), ca("Unused CA"));
    let (addr, seen) = upstream(None).await;
    let routes = vec![route("default", format!("http://{addr}/v1"), &["openai"], "openai")];
    let mut c = client(proxy(&sandbox_ca, routes, &unused_ca).await, &sandbox_ca).await;

    let (status, echo) = send(&mut c, post("/v1/chat/completions", json!({"model": "gpt-x", "messages": []}))).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["target"], "/v1/chat/completions");
    assert_eq!(
        seen.requests.lock().unwrap()[0]["authorization"],
        "Bearer route-key-default",
        "the caller's is replaced"
    );
    assert_eq!(echo["authorization"], format!("Bearer {REDACTED}"), "the agent never reads the route's key");
    assert_eq!(echo["cookie"], Value::Null);
    assert_eq!(echo["body"]["model"], "model-of-default");

    tokio::time::timeout(Duration::from_secs(5), c.ready()).await.unwrap().unwrap();
    let req = post("/v1/chat/completions", json!({"model": "gpt-x", "messages": [], "stream": true}));
    let response = c.send_request(req).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first =
        tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("the first event before the end");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "data: {\"delta\":\"Hel\"}\n\n");
    seen.release.notify_one();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "data: [DONE]\n\n");
}

#[tokio::test]
async fn anthropic_messages_go_to_an_https_route_with_x_api_key() {
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Model CA"));
    let (addr, seen) = upstream(Some(&upstream_ca)).await;
    let routes = vec![
        route("default", "http://127.0.0.1:9/v1".into(), &["openai"], "openai"),
        route("claude", format!("https://{addr}"), &["anthropic"], "anthropic"),
    ];
    let mut c = client(proxy(&sandbox_ca, routes, &upstream_ca).await, &sandbox_ca).await;
    let (status, echo) = send(&mut c, post("/v1/messages", json!({"model": "m", "max_tokens": 1}))).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!((echo["x-api-key"].as_str(), echo["authorization"].as_str()), (Some(REDACTED), None));
    assert_eq!(echo["body"]["model"], "model-of-claude");
    assert_eq!(seen.requests.lock().unwrap()[0]["x-api-key"], "route-key-claude");
    assert_eq!(seen.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_https_route_with_an_unknown_ca_is_a_502() {
    let (sandbox_ca, upstream_ca) = (ca("Sandbox CA"), ca("Model CA"));
    let (addr, seen) = upstream(Some(&upstream_ca)).await;
    let routes = vec![route("default", format!("https://{addr}/v1"), &["openai"], "openai")];
    let mut c = client(proxy(&sandbox_ca, routes, &ca("Other CA")).await, &sandbox_ca).await;
    let (status, body) = send(&mut c, post("/v1/embeddings", json!({"input": "x"}))).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_GATEWAY, Some("upstream_unreachable")));
    assert!(!body.to_string().contains("route-key"), "{body}");
    assert!(seen.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn other_paths_are_403_and_large_bodies_413() {
    let (sandbox_ca, unused_ca) = (ca("Sandbox CA"), ca("Unused CA"));
    let (addr, seen) = upstream(None).await;
    let routes = vec![route("default", format!("http://{addr}/v1"), &["openai"], "openai")];
    let proxy = proxy(&sandbox_ca, routes, &unused_ca).await;

    let mut c = client(proxy, &sandbox_ca).await;
    let (status, body) = send(&mut c, post("/v1/files", json!({}))).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("policy_denied")));

    let mut c = client(proxy, &sandbox_ca).await;
    let big = Request::post("/v1/chat/completions")
        .header("host", "inference.local")
        .body(Full::new(Bytes::from(vec![b' '; 10 * 1024 * 1024 + 1])).boxed())
        .unwrap();
    let (status, body) = send(&mut c, big).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));

    let mut c = client(proxy, &sandbox_ca).await;
    let chunks = (0..11).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b' '; 1024 * 1024]))));
    let streamed = Request::post("/v1/chat/completions")
        .header("host", "inference.local")
        .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
        .unwrap();
    let (status, _) = send(&mut c, streamed).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "a chunked body is counted too");
    assert!(seen.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_http2_client_is_served_and_routed_over_http1() {
    let (sandbox_ca, unused_ca) = (ca("Sandbox CA"), ca("Unused CA"));
    let (addr, seen) = upstream(None).await;
    let routes = vec![route("default", format!("http://{addr}/v1"), &["openai"], "openai")];
    let proxy = proxy(&sandbox_ca, routes, &unused_ca).await;
    let tls = connect(proxy, "inference.local", &sandbox_ca, &[b"h2"]).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let req = Request::post("https://inference.local/v1/embeddings")
        .header("authorization", "Bearer caller")
        .body(Full::new(Bytes::from(json!({"input": "x"}).to_string())).boxed())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        (echo["target"].as_str(), echo["authorization"].as_str()),
        (Some("/v1/embeddings"), Some(format!("Bearer {REDACTED}").as_str()))
    );
    assert_eq!(seen.requests.lock().unwrap()[0]["authorization"], "Bearer route-key-default");
}

/// Sends `req` over HTTP/2 on a fresh connection; returns the status and the JSON echo.
async fn send_h2(proxy: SocketAddr, sandbox_ca: &Ca, req: Request<ClientBody>) -> (StatusCode, Value) {
    let tls = connect(proxy, "inference.local", sandbox_ca, &[b"h2"]).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body))))
}

/// The gateway's `model_in_path` and `request_path_override` place the request on the
/// upstream as OpenShell's router does, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn the_model_in_the_path_and_the_path_override_reach_the_upstream_path() {
    let (sandbox_ca, unused_ca) = (ca("Sandbox CA"), ca("Unused CA"));
    let (addr, seen) = upstream(None).await;
    let shaped = |name: &str, model_in_path: bool, over: Option<&str>| {
        let mut r = route(name, format!("http://{addr}/base"), &["openai", "anthropic"], "vertex");
        (r.model_in_path, r.request_path_override) = (model_in_path, over.map(str::to_owned));
        r
    };
    let routes = vec![
        shaped("inpath", true, None),
        shaped("suffix", true, Some(":predict")),
        shaped("replaced", false, Some("/custom/generate")),
        shaped("bare", false, Some("")),
        shaped("vertex", true, Some(":rawPredict")),
    ];
    let proxy = proxy(&sandbox_ca, routes, &unused_ca).await;
    let cases = [
        ("inpath", "/v1/chat/completions?x=1", "/base/model-of-inpath/v1/chat/completions?x=1"),
        ("suffix", "/v1/chat/completions?x=1", "/base/model-of-suffix:predict"),
        ("replaced", "/v1/chat/completions", "/base/custom/generate"),
        ("bare", "/v1/chat/completions", "/base"),
        ("vertex", "/v1/messages?beta=true", "/base/model-of-vertex:streamRawPredict"),
    ];
    for (name, path, want) in cases {
        let body = json!({"model": name, "max_tokens": 1});
        let mut c = client(proxy, &sandbox_ca).await;
        let h1 = send(&mut c, post(path, body.clone())).await;
        let h2 = send_h2(proxy, &sandbox_ca, post(&format!("https://inference.local{path}"), body)).await;
        for (status, echo) in [h1, h2] {
            assert_eq!(status, StatusCode::OK, "{echo}");
            assert_eq!(echo["target"], want, "{name}");
            assert_eq!(echo["authorization"], format!("Bearer {REDACTED}"), "{name}");
        }
        let last = seen.requests.lock().unwrap().last().unwrap()["authorization"].clone();
        assert_eq!(last, format!("Bearer route-key-{name}"), "{name}");
    }
    let vertex = seen.requests.lock().unwrap().last().unwrap()["body"].clone();
    assert_eq!(vertex, json!({"max_tokens": 1, "anthropic_version": "vertex-2023-10-16"}), "the model is in the path");
}

/// An upstream that reflects the route's key (a header, the reason phrase, the body) hands
/// the agent the redaction, never the key; a compressed answer is refused; over HTTP/1.1
/// and HTTP/2.
#[tokio::test]
async fn the_routes_key_never_reaches_the_agent_in_an_answer() {
    let (sandbox_ca, unused_ca) = (ca("Sandbox CA"), ca("Unused CA"));
    let (addr, seen) = upstream(None).await;
    let routes = vec![route("default", format!("http://{addr}/v1"), &["openai"], "openai")];
    let proxy = proxy(&sandbox_ca, routes, &unused_ca).await;
    let body = json!({"model": "m", "messages": []});
    let mut c = client(proxy, &sandbox_ca).await;
    tokio::time::timeout(Duration::from_secs(5), c.ready()).await.unwrap().unwrap();
    let response = c.send_request(post("/v1/chat/completions", body.clone())).await.unwrap();
    assert_eq!(response.headers()["x-echo"], format!("Bearer {REDACTED}").as_str());
    assert!(response.headers().get("content-length").is_none(), "the scrubbed length is unknown");
    let text = String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).into_owned();
    assert!(text.contains(REDACTED) && !text.contains("route-key"), "{text}");
    let h2 = send_h2(proxy, &sandbox_ca, post("https://inference.local/v1/chat/completions", body)).await;
    assert_eq!((h2.0, h2.1["authorization"].as_str()), (StatusCode::OK, Some(format!("Bearer {REDACTED}").as_str())));

    let gzip = json!({"model": "m", "messages": [], "gzip": true});
    let mut c = client(proxy, &sandbox_ca).await;
    for (status, answer) in [
        send(&mut c, post("/v1/chat/completions", gzip.clone())).await,
        send_h2(proxy, &sandbox_ca, post("https://inference.local/v1/chat/completions", gzip)).await,
    ] {
        assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_GATEWAY, Some("upstream_unreachable")));
        assert!(answer["reason"].as_str().unwrap().contains("Content-Encoding: gzip"), "{answer}");
    }

    // The reason phrase, as an HTTP/1.1 client reads it on the wire.
    let mut tls = connect(proxy, "inference.local", &sandbox_ca, &[b"http/1.1"]).await;
    let body = json!({"model": "m", "messages": [], "reason": true}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: inference.local\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut tls, request.as_bytes()).await.unwrap();
    let mut head = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut tls, &mut head))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with(&format!("HTTP/1.1 401 Bad key Bearer {REDACTED}\r\n")), "{head}");
    let all = seen.requests.lock().unwrap().clone();
    assert!(all.iter().all(|r| r["authorization"] == "Bearer route-key-default"), "the upstream got the key: {all:?}");
    assert_eq!(all.len(), 5);
}
