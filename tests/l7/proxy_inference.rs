//! `inference.local` through the real proxy: `CONNECT inference.local:443` needs no network
//! policy; the proxy terminates TLS with its CA and routes OpenAI-shaped requests to the
//! route of `OPENSHELL_INFERENCE_ROUTES` with the route's key and model, streaming answers.

use crate::support::l7::session as rig;
use crate::support::l7::through;
use crate::support::proxy as proxy_support;

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
use proxy_support::TestProxy;
use rig::{ClientBody, logs};
use serde_json::{Value, json};
use through::{exchange, proxy_ca, request, tls_through};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

const ROUTE_KEY: &str = "sk-ROUTE-KEY-777";

/// What the model server saw, and the switch that lets a stream finish.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Value>>,
    release: Notify,
}

/// A plain-HTTP model server: echoes what it saw; with `"stream": true` it sends one event,
/// then waits for `release` before the last.
async fn model_server() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let state = state.clone();
            let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
        }
    });
    (addr, seen)
}

async fn answer(seen: Arc<Seen>, req: Request<Incoming>) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let target = req.uri().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let record = json!({"target": target, "authorization": auth, "body": body});
    seen.requests.lock().unwrap().push(record.clone());
    if body["stream"] != true {
        let mut answer = record;
        answer["usage"] = json!({"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33});
        return Ok(Response::new(Full::new(Bytes::from(answer.to_string())).boxed()));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        tx.send(Bytes::from_static(b"data: {\"delta\":\"one\"}\n\n")).await.unwrap();
        seen.release.notified().await;
        // The last chunk carries the counts, split across two writes.
        tx.send(Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,")).await.unwrap();
        tx.send(Bytes::from_static(b"\"completion_tokens\":6}}\n\ndata: [DONE]\n\n")).await.unwrap();
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Ok(Response::builder().header("content-type", "text/event-stream").body(StreamBody::new(stream).boxed()).unwrap())
}

/// A routes file with one OpenAI route to `addr` serving `model`.
fn routes_yaml(addr: SocketAddr, model: &str) -> String {
    format!(
        "routes:\n  - name: local\n    base_url: http://{addr}/v1\n    protocols: [openai]\n    api_key: {ROUTE_KEY}\n    model_id: {model}\n"
    )
}

/// The proxy with one OpenAI route to the model server; no network policy names it.
async fn start() -> (TestProxy, Arc<Seen>, tempfile::TempDir, SocketAddr) {
    let (addr, seen) = model_server().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, routes_yaml(addr, "route-model")).unwrap();
    let proxy =
        TestProxy::start(&proxy_support::allow(&[("example.com", 443)]), |c| c.inference_routes = Some(routes)).await;
    (proxy, seen, dir, addr)
}

async fn inference_client(proxy: &TestProxy) -> SendRequest<ClientBody> {
    let tls = tls_through(proxy.addr, "inference.local:443", "inference.local", &proxy_ca(&proxy.tls_dir())).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    sender
}

fn chat(stream: bool) -> Request<ClientBody> {
    let body = json!({"model": "caller-model", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    let headers =
        [("authorization", "Bearer caller-key-should-vanish".to_owned()), ("content-type", "application/json".into())];
    request("POST", "/v1/chat/completions", &headers, &body.to_string())
}

#[tokio::test]
async fn a_chat_completion_is_routed_with_the_routes_key_and_model() {
    let _inference = crate::support::l7::INFERENCE_LOCAL.lock().await;
    logs(); // starts the capture
    let (proxy, seen, _dir, _) = start().await;
    let mut c = inference_client(&proxy).await;
    let (status, echo) = exchange(&mut c, chat(false)).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["target"], "/v1/chat/completions");
    let saw = seen.requests.lock().unwrap()[0]["authorization"].clone();
    assert_eq!(saw, format!("Bearer {ROUTE_KEY}"), "the caller's key is replaced");
    assert_eq!(echo["authorization"], "Bearer [inference route key redacted]", "the echo never shows it");
    assert_eq!(echo["body"]["model"], "route-model");
    assert_eq!(seen.requests.lock().unwrap().len(), 1);

    let mut c = inference_client(&proxy).await;
    let (status, body) = exchange(&mut c, request("GET", "/admin", &[], "")).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("policy_denied")), "{body}");
    let logs = logs();
    let routed = "API:CREATE [INFO] ALLOWED POST /v1/chat/completions [route:";
    assert!(logs.contains(routed) && logs.contains("[model:route-model] [tokens:33]"), "the call is audited: {logs}");
    assert!(logs.contains("API:READ [MED] DENIED GET /admin"), "the refusal is audited: {logs}");
    assert!(!logs.contains(ROUTE_KEY), "the route key reached the logs:\n{logs}");
}

#[tokio::test]
async fn a_streamed_answers_first_event_arrives_before_the_upstream_finishes() {
    let _inference = crate::support::l7::INFERENCE_LOCAL.lock().await;
    crate::support::capture::text(); // starts the capture
    let (proxy, seen, _dir, _) = start().await;
    let mut c = inference_client(&proxy).await;
    tokio::time::timeout(Duration::from_secs(5), c.ready()).await.unwrap().unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), c.send_request(chat(true))).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event arrives while the upstream still holds the stream open")
        .unwrap()
        .unwrap();
    assert!(first.data_ref().is_some_and(|d| d.starts_with(b"data: {\"delta\":\"one\"}")), "{first:?}");
    seen.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect()).await.unwrap().unwrap().to_bytes();
    assert!(rest.ends_with(b"data: [DONE]\n\n"), "{rest:?}");
    // The call's event comes at the end of the answer, with the counts its last event carried.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let event = loop {
        let events = crate::support::capture::ocsf();
        let found = events.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|e| {
            e["class_uid"] == 6003
                && e["message_context"]["total_tokens"] == 11
                && e["ai_model"]["name"] == "route-model"
        });
        match found {
            Some(event) => break event,
            None if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            None => panic!("no API Activity event with the streamed counts: {events}"),
        }
    };
    crate::support::ocsf::assert_valid(&event);
    let counts = &event["message_context"];
    assert_eq!((counts["prompt_tokens"].as_u64(), counts["completion_tokens"].as_u64()), (Some(5), Some(6)));
    assert_eq!(
        (event["http_response"]["code"].as_u64(), event["api"]["service"]["name"].as_str()),
        (Some(200), Some("local"))
    );
}

#[tokio::test]
async fn a_changed_routes_file_applies_to_the_next_request() {
    let _inference = crate::support::l7::INFERENCE_LOCAL.lock().await;
    let (proxy, _seen, dir, addr) = start().await;
    let yaml = routes_yaml(addr, "newer-model-with-a-longer-name");
    let fresh = dir.path().join("routes.yaml.new");
    std::fs::write(&fresh, yaml).unwrap();
    std::fs::rename(&fresh, dir.path().join("routes.yaml")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = inference_client(&proxy).await;
        let (status, echo) = exchange(&mut c, chat(false)).await;
        assert_eq!(status, StatusCode::OK, "{echo}");
        if echo["body"]["model"] == "newer-model-with-a-longer-name" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new route was not applied: {echo}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_the_whole_403_and_413_whatever_the_body_over_h2_and_http1() {
    let _inference = crate::support::l7::INFERENCE_LOCAL.lock().await;
    let (proxy, seen, dir, _) = start().await;
    let curl = |data: String, version: &'static str, path: &'static str| {
        let (proxy, bundle) = (format!("http://{}", proxy.addr), proxy.tls_dir().join("ca-bundle.pem"));
        async move {
            let mut cmd = tokio::process::Command::new("curl");
            cmd.args(["-sS", "--max-time", "20", "--noproxy", "", "-x", &proxy, version, "--data-binary", &data]);
            cmd.args(["-H", "content-type: application/json", "-w", "\n%{http_code} %{http_version}", "--cacert"]);
            let output = cmd.arg(bundle).arg(format!("https://inference.local{path}")).output().await.unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "{version} {path} {data}: curl {}: {stderr}", output.status);
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let sizes = [(0, "/v1/files", "403"), (1024, "/v1/files", "403"), (100 * 1024, "/v1/files", "403")];
    let sizes = sizes
        .into_iter()
        .chain([(1024 * 1024, "/v1/files", "403"), (10 * 1024 * 1024 + 1, "/v1/chat/completions", "413")]);
    for (size, path, status) in sizes {
        let file = dir.path().join(format!("body-{size}"));
        std::fs::write(&file, vec![b' '; size]).unwrap();
        for (version, shown) in [("--http2", "2"), ("--http1.1", "1.1")] {
            for _ in 0..10 {
                let out = curl(format!("@{}", file.display()), version, path).await;
                assert!(out.ends_with(&format!("\n{status} {shown}")), "{version} {size} bytes: {out}");
                assert!(out.starts_with("{\"error\":"), "the JSON is read whole: {out}");
            }
        }
    }
    assert!(seen.requests.lock().unwrap().is_empty());
}
