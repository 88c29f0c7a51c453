use std::time::Duration;

use http::Request;
use serde_json::{Value, json};

use super::*;
use crate::config::Secret;

fn route(name: &str, base_url: &str, protocols: &[&str], provider_type: &str, model: &str) -> Route {
    Route {
        name: name.into(),
        base_url: base_url.into(),
        protocols: protocols.iter().map(|p| p.to_string()).collect(),
        api_key: Secret::new(format!("key-of-{name}")),
        model_id: model.into(),
        provider_type: provider_type.into(),
        timeout: Some(Duration::from_secs(30)),
        model_in_path: false,
        request_path_override: None,
    }
}

fn bundle() -> InferenceBundle {
    InferenceBundle {
        routes: vec![
            route("default", "https://api.openai.example/v1", &["openai"], "openai", "gpt-route"),
            route("claude", "https://api.anthropic.example", &["anthropic"], "anthropic", "claude-route"),
            route("embed", "http://127.0.0.1:9000/", &["openai_embeddings"], "local", ""),
        ],
        revision: "r".into(),
        generated_at_ms: 0,
    }
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().method(method).uri(uri).header("host", "inference.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn json_body(v: Value) -> Bytes {
    Bytes::from(v.to_string())
}

/// Status and body of a refusal from `prepare`, rendered as the answer to `POST /v1/files`.
fn refused(result: Result<Prepared, Refusal>) -> (http::StatusCode, Value) {
    let r = result.expect_err("refused").render(INFERENCE_HOST, 443, Some(("POST", "/v1/files")));
    (r.status(), serde_json::from_slice(r.body()).unwrap())
}

#[test]
fn shapes_by_method_and_path() {
    assert_eq!(Shape::of(&Method::POST, "/v1/chat/completions"), Some(Shape::ChatCompletions));
    assert_eq!(Shape::of(&Method::POST, "/v1/completions"), Some(Shape::Completions));
    assert_eq!(Shape::of(&Method::POST, "/v1/responses"), Some(Shape::Responses));
    assert_eq!(Shape::of(&Method::POST, "/v1/embeddings"), Some(Shape::Embeddings));
    assert_eq!(Shape::of(&Method::GET, "/v1/models"), Some(Shape::Models));
    assert_eq!(Shape::of(&Method::POST, "/v1/messages"), Some(Shape::Messages));
    assert_eq!(Shape::of(&Method::GET, "/v1/chat/completions"), None);
    assert_eq!(Shape::of(&Method::POST, "/v1/models"), None);
    assert_eq!(Shape::of(&Method::POST, "/v1/files"), None);
    assert_eq!(Shape::of(&Method::POST, "/v1/chat/completions/"), None);
}

#[test]
fn a_chat_completion_gets_the_routes_url_key_and_model_and_loses_caller_credentials() {
    let head = parts(
        "POST",
        "/v1/chat/completions?stream=true",
        &[
            ("authorization", "Bearer caller-token"),
            ("x-api-key", "caller"),
            ("cookie", "c=1"),
            ("transfer-encoding", "chunked"),
        ],
    );
    let body = json_body(json!({"model": "whatever", "messages": [{"role": "user", "content": "hi"}], "stream": true}));
    let p = prepare(&bundle(), head, body).unwrap();
    assert_eq!(p.parts.uri, "https://api.openai.example/v1/chat/completions?stream=true");
    assert_eq!(p.parts.headers["authorization"], "Bearer key-of-default");
    assert!(p.parts.headers["authorization"].is_sensitive());
    assert!(!format!("{p:?}").contains("key-of-default"), "Debug never shows the route key");
    assert!(p.parts.headers.get("x-api-key").is_none() && p.parts.headers.get("cookie").is_none());
    assert!(p.parts.headers.get("transfer-encoding").is_none());
    assert_eq!(p.parts.headers["host"], "api.openai.example");
    let sent: Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(sent["model"], "gpt-route");
    assert_eq!(sent["stream"], true);
    assert_eq!(p.parts.headers["content-length"], p.body.len().to_string().as_str());
    assert_eq!((p.route.as_str(), p.timeout), ("default", Some(Duration::from_secs(30))));
}

#[test]
fn anthropic_messages_use_x_api_key_and_a_version() {
    let head = parts("POST", "/v1/messages", &[("authorization", "Bearer caller"), ("x-api-key", "caller-key")]);
    let p = prepare(&bundle(), head, json_body(json!({"model": "m", "max_tokens": 5}))).unwrap();
    assert_eq!(p.parts.uri, "https://api.anthropic.example/v1/messages");
    assert_eq!(p.parts.headers["x-api-key"], "key-of-claude");
    assert!(p.parts.headers.get("authorization").is_none());
    assert_eq!(p.parts.headers["anthropic-version"], "2023-06-01");
    let head = parts("POST", "/v1/messages", &[("anthropic-version", "2024-01-01")]);
    let p = prepare(&bundle(), head, json_body(json!({}))).unwrap();
    assert_eq!(p.parts.headers["anthropic-version"], "2024-01-01");
}

#[test]
fn routes_are_chosen_by_protocol_then_by_requested_name() {
    let b = bundle();
    assert_eq!(select(&b, Shape::Embeddings, None).unwrap().name, "default");
    assert_eq!(select(&b, Shape::Embeddings, Some("embed")).unwrap().name, "embed");
    assert_eq!(
        select(&b, Shape::ChatCompletions, Some("embed")).unwrap().name,
        "default",
        "embed serves embeddings only"
    );
    assert_eq!(select(&b, Shape::Messages, Some("default")).unwrap().name, "claude");
    let p =
        prepare(&b, parts("POST", "/v1/embeddings", &[]), json_body(json!({"model": "embed", "input": "x"}))).unwrap();
    assert_eq!(p.parts.uri, "http://127.0.0.1:9000/v1/embeddings");
    assert_eq!(
        serde_json::from_slice::<Value>(&p.body).unwrap()["model"],
        "embed",
        "no route model: the caller's stays"
    );
}

#[test]
fn models_listing_has_no_body() {
    let p = prepare(&bundle(), parts("GET", "/v1/models", &[("content-length", "0")]), Bytes::new()).unwrap();
    assert_eq!(p.parts.uri, "https://api.openai.example/v1/models");
    assert!(p.parts.headers.get("content-length").is_none() && p.body.is_empty());
}

#[test]
fn refusals() {
    let (status, body) = refused(prepare(&bundle(), parts("POST", "/v1/files", &[]), Bytes::new()));
    assert_eq!((status.as_u16(), body["error"].as_str()), (403, Some("policy_denied")));
    assert_eq!((body["host"].as_str(), body["path"].as_str()), (Some("inference.local"), Some("/v1/files")));

    let big = Bytes::from(vec![b' '; MAX_BODY as usize + 1]);
    let (status, body) = refused(prepare(&bundle(), parts("POST", "/v1/chat/completions", &[]), big));
    assert_eq!((status.as_u16(), body["error"].as_str()), (413, Some("payload_too_large")));

    let (status, _) = refused(prepare(&bundle(), parts("POST", "/v1/chat/completions", &[]), Bytes::from("[1]")));
    assert_eq!(status.as_u16(), 400);

    let empty = InferenceBundle::default();
    let (status, body) = refused(prepare(&empty, parts("POST", "/v1/messages", &[]), json_body(json!({}))));
    assert_eq!((status.as_u16(), body["error"].as_str()), (503, Some("no_inference_route")));
    assert!(body["reason"].as_str().unwrap().contains("anthropic"));
}

#[test]
fn upstream_uris_join_base_and_path() {
    let cases = [
        ("https://h/v1", "/v1/models", None, "https://h/v1/models"),
        ("https://h/v1/", "/v1/models", Some("a=1"), "https://h/v1/models?a=1"),
        ("https://h", "/v1/messages", None, "https://h/v1/messages"),
        ("http://h:8080/openai/v1", "/v1/chat/completions", None, "http://h:8080/openai/v1/chat/completions"),
        ("https://h/api", "/v1/embeddings", None, "https://h/api/v1/embeddings"),
    ];
    for (base, path, query, want) in cases {
        let r = route("r", base, &["openai"], "", "");
        assert_eq!(upstream_uri(&r, Shape::Models, path, query).unwrap(), want, "{base} + {path}");
    }
    assert!(upstream_uri(&route("r", "not a url", &["openai"], "", ""), Shape::Models, "/v1/models", None).is_none());
}

/// The matrix of OpenShell's router: the model in the path, and the path override.
#[test]
fn the_model_in_the_path_and_the_path_override_place_the_request() {
    let at = |model_in_path: bool, over: Option<&str>, shape: Shape, path: &str| {
        let mut r = route("r", "https://h/base/", &["openai", "anthropic"], "", "m@1");
        (r.model_in_path, r.request_path_override) = (model_in_path, over.map(str::to_owned));
        upstream_uri(&r, shape, path, Some("beta=true")).map(|u| u.to_string())
    };
    let chat = (Shape::ChatCompletions, "/v1/chat/completions");
    let cases = [
        (true, None, chat, "https://h/base/m@1/v1/chat/completions?beta=true"),
        (true, Some(":predict"), chat, "https://h/base/m@1:predict"),
        (true, Some(""), chat, "https://h/base/m@1"),
        (true, Some(":rawPredict"), chat, "https://h/base/m@1:rawPredict"),
        (true, Some(":rawPredict"), (Shape::Messages, "/v1/messages"), "https://h/base/m@1:streamRawPredict"),
        (false, Some("/chat"), chat, "https://h/base/chat"),
        (false, Some("chat"), chat, "https://h/base/chat"),
        (false, Some(""), chat, "https://h/base"),
        (false, None, chat, "https://h/base/v1/chat/completions?beta=true"),
    ];
    for (model_in_path, over, (shape, path), want) in cases {
        assert_eq!(at(model_in_path, over, shape, path).as_deref(), Some(want), "{model_in_path} {over:?} {shape:?}");
    }
    let mut no_model = route("r", "https://h", &["openai"], "", "");
    no_model.model_in_path = true;
    assert!(upstream_uri(&no_model, Shape::ChatCompletions, "/v1/chat/completions", None).is_none());
    let (status, _) = refused(prepare(
        &InferenceBundle { routes: vec![no_model], ..bundle() },
        parts("POST", "/v1/chat/completions", &[]),
        json_body(json!({"model": "../../admin"})),
    ));
    assert_eq!(status.as_u16(), 503, "the caller's model never goes in a path");
}

#[test]
fn a_vertex_anthropic_route_gets_the_model_in_the_path_and_the_version_in_the_body() {
    let mut vertex = route(
        "vertex",
        "https://r-aiplatform.example/v1/p/x/publishers/anthropic/models",
        &["anthropic_messages"],
        "vertex",
        "claude@1",
    );
    (vertex.model_in_path, vertex.request_path_override) = (true, Some(RAW_PREDICT.to_owned()));
    let b = InferenceBundle { routes: vec![vertex], ..bundle() };
    let head = parts("POST", "/v1/messages?beta=true", &[("anthropic-beta", "x"), ("x-api-key", "caller")]);
    let p = prepare(&b, head, json_body(json!({"model": "claude-sonnet", "max_tokens": 5}))).unwrap();
    assert_eq!(
        p.parts.uri,
        "https://r-aiplatform.example/v1/p/x/publishers/anthropic/models/claude@1:streamRawPredict"
    );
    assert_eq!(p.parts.headers["authorization"], "Bearer key-of-vertex", "a non-Anthropic provider gets a bearer key");
    assert!(p.parts.headers.get("x-api-key").is_none() && p.parts.headers.get("anthropic-beta").is_none());
    assert!(p.parts.headers.get("anthropic-version").is_none());
    let sent: Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(sent, json!({"anthropic_version": VERTEX_ANTHROPIC_VERSION, "max_tokens": 5}));
}

#[test]
fn a_route_key_that_is_not_a_header_value_is_refused_unseen() {
    let mut bad = route("bad", "https://h/v1", &["openai"], "openai", "");
    bad.api_key = Secret::new("sk-\nINJECTED");
    let b = InferenceBundle { routes: vec![bad], revision: String::new(), generated_at_ms: 0 };
    let (status, body) = refused(prepare(&b, parts("POST", "/v1/embeddings", &[]), json_body(json!({}))));
    assert_eq!(status.as_u16(), 503);
    let text = body.to_string();
    assert!(text.contains("`bad`") && !text.contains("INJECTED"), "{text}");
}
