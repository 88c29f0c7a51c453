//! `inference.local` request shaping: which API shape a request is (OpenAI or Anthropic),
//! which route serves it, and the upstream request: the route's URL (base URL and path, or
//! the model in the path and a path override, as OpenShell's router builds them), API key
//! and model, with every caller credential removed, and the route's key scrubbed from the
//! answer; [`serve_inference_tls`] serves a connection with it.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Uri};

use super::deny;
use super::routes::{InferenceBundle, Route};
use crate::proxy::answer::Refusal;
use crate::proxy::credentials::Scrubber;

mod session;
mod usage;

pub use session::{CurrentRoutes, InferenceSession, serve_inference_tls};

/// The host name agents use for inference.
pub const INFERENCE_HOST: &str = "inference.local";

/// Largest request body accepted (a larger one is answered 413).
pub const MAX_BODY: u64 = 10 * 1024 * 1024;

/// The Anthropic API version sent when the caller gave none.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The `request_path_override` of Vertex AI's Anthropic models (with `model_in_path`).
const RAW_PREDICT: &str = ":rawPredict";

/// What Vertex AI's Anthropic models are sent instead: it answers streamed and whole requests.
const STREAM_RAW_PREDICT: &str = ":streamRawPredict";

/// The `anthropic_version` Vertex AI wants in the body (it takes no `anthropic-version` header).
const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// What the agent reads where an upstream's answer held the route's key.
pub const KEY_REDACTED: &str = "[inference route key redacted]";

/// Headers that carry the caller's credentials; never forwarded.
const CALLER_CREDENTIALS: &[&str] = &["authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"];

/// The API shapes `inference.local` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models`.
    Models,
    /// `POST /v1/messages` (Anthropic).
    Messages,
}

impl Shape {
    /// The shape of a request, from its method and canonical path; `None`: not served.
    pub fn of(method: &Method, path: &str) -> Option<Shape> {
        let shape = match path {
            "/v1/chat/completions" => Shape::ChatCompletions,
            "/v1/completions" => Shape::Completions,
            "/v1/responses" => Shape::Responses,
            "/v1/embeddings" => Shape::Embeddings,
            "/v1/models" => Shape::Models,
            "/v1/messages" => Shape::Messages,
            _ => return None,
        };
        let expected = if shape == Shape::Models { Method::GET } else { Method::POST };
        (*method == expected).then_some(shape)
    }

    /// The API family: `openai` or `anthropic`.
    pub fn family(self) -> &'static str {
        if self == Shape::Messages { "anthropic" } else { "openai" }
    }

    /// The specific protocol name, like `openai_chat_completions`.
    pub fn protocol(self) -> &'static str {
        match self {
            Shape::ChatCompletions => "openai_chat_completions",
            Shape::Completions => "openai_completions",
            Shape::Responses => "openai_responses",
            Shape::Embeddings => "openai_embeddings",
            Shape::Models => "openai_models",
            Shape::Messages => "anthropic_messages",
        }
    }

    /// Whether a route lists this shape's family or its specific protocol.
    pub fn served_by(self, route: &Route) -> bool {
        route.protocols.iter().any(|p| p.eq_ignore_ascii_case(self.family()) || p.eq_ignore_ascii_case(self.protocol()))
    }
}

/// The route for a request: the one named by the body's `model` when it serves the shape,
/// else the first route that serves it.
pub fn select<'a>(bundle: &'a InferenceBundle, shape: Shape, requested_model: Option<&str>) -> Option<&'a Route> {
    let serving = || bundle.routes.iter().filter(move |r| shape.served_by(r));
    requested_model.and_then(|m| serving().find(|r| r.name == m)).or_else(|| serving().next())
}

/// A request ready to send upstream.
#[derive(Debug)]
pub struct Prepared {
    /// The head: absolute upstream URI, route credentials, no caller credentials.
    pub parts: Parts,
    /// The body (with the route's model when it has one).
    pub body: Bytes,
    /// The route's name, for the audit line.
    pub route: String,
    /// The route's timeout, if any.
    pub timeout: Option<std::time::Duration>,
    /// The model asked of the upstream (the route's, else the caller's), for the audit event.
    pub model: Option<String>,
    /// The route's provider type, for the audit event.
    pub provider: Option<String>,
    /// What takes the route's key out of the answer (`None`: the route has no key).
    pub scrubber: Option<Arc<Scrubber>>,
}

/// Shapes one complete request (head with a canonical path, and body) for its route, or the
/// answer to give instead: 403 for a path not served or no route, 413 for a body over
/// [`MAX_BODY`], 400 for a body that is not a JSON object.
pub fn prepare(bundle: &InferenceBundle, mut parts: Parts, body: Bytes) -> Result<Prepared, Refusal> {
    let path = parts.uri.path().to_owned();
    let Some(shape) = Shape::of(&parts.method, &path) else {
        return Err(deny::inference_path_denied());
    };
    if body.len() as u64 > MAX_BODY {
        return Err(deny::body_too_large(MAX_BODY));
    }
    let mut json = match shape {
        Shape::Models => None,
        _ => match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v @ serde_json::Value::Object(_)) => Some(v),
            _ => return Err(deny::bad_inference_body()),
        },
    };
    let requested = json.as_ref().and_then(|j| j["model"].as_str());
    let Some(route) = select(bundle, shape, requested) else {
        return Err(deny::no_inference_route(shape.family()));
    };
    let model = Some(route.model_id.clone()).filter(|m| !m.is_empty()).or_else(|| model_name(requested));
    let uri =
        upstream_uri(route, shape, &path, parts.uri.query()).ok_or_else(|| deny::no_inference_route(shape.family()))?;
    let vertex = vertex_anthropic(route, shape);
    let body = match json.as_mut() {
        Some(j) if vertex => {
            // The model is in the path; Vertex AI refuses it in the body.
            if let Some(fields) = j.as_object_mut() {
                fields.remove("model");
            }
            if j.get("anthropic_version").is_none() {
                j["anthropic_version"] = serde_json::Value::from(VERTEX_ANTHROPIC_VERSION);
            }
            Bytes::from(j.to_string())
        }
        Some(j) if !route.model_id.is_empty() => {
            j["model"] = serde_json::Value::from(route.model_id.as_str());
            Bytes::from(j.to_string())
        }
        _ => body,
    };
    if vertex {
        parts.headers.remove("anthropic-beta");
    }
    for name in CALLER_CREDENTIALS {
        parts.headers.remove(*name);
    }
    if !set_auth(&mut parts, route, shape) {
        return Err(deny::unusable_route_key(&route.name));
    }
    if let Some(authority) = uri.authority() {
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_str(authority.as_str()).expect("an authority is a header value"));
    }
    parts.headers.remove(header::TRANSFER_ENCODING);
    if shape == Shape::Models {
        parts.headers.remove(header::CONTENT_LENGTH);
    } else {
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    parts.uri = uri;
    let key = route.api_key.expose().as_bytes().to_vec();
    let scrubber = Scrubber::new([(key, KEY_REDACTED.as_bytes().to_vec())]).map(Arc::new);
    if scrubber.is_some() {
        // A compressed answer could not be checked for the key.
        parts.headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    let provider = Some(route.provider_type.clone()).filter(|p| !p.is_empty());
    Ok(Prepared { parts, body, route: route.name.clone(), timeout: route.timeout, scrubber, model, provider })
}

/// The caller's model name for the audit event, when it looks like one (at most 128
/// letters, digits and `._:/@-`): the caller controls it, and audit events carry no
/// arbitrary request values.
fn model_name(requested: Option<&str>) -> Option<String> {
    let name = requested?;
    let shaped = name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "._:/@-".contains(c));
    shaped.then(|| name.to_owned())
}

/// The route's API key as `x-api-key` (an `anthropic` provider, or an Anthropic request to
/// a route without a provider type) or `Authorization: Bearer` (every other provider, as
/// OpenShell's router does); `false` when the key cannot be a header value (the gateway's
/// keys are not checked at load). Anthropic requests get an `anthropic-version` unless
/// they carry one (or go to Vertex AI, which takes it in the body).
fn set_auth(parts: &mut Parts, route: &Route, shape: Shape) -> bool {
    let anthropic = if route.provider_type.is_empty() {
        shape == Shape::Messages
    } else {
        route.provider_type.eq_ignore_ascii_case("anthropic")
    };
    let wants_version = (anthropic || shape == Shape::Messages) && !vertex_anthropic(route, shape);
    if wants_version && !parts.headers.contains_key("anthropic-version") {
        parts.headers.insert(HeaderName::from_static("anthropic-version"), HeaderValue::from_static(ANTHROPIC_VERSION));
    }
    let key = route.api_key.expose();
    if key.is_empty() {
        return true;
    }
    let (name, value) = if anthropic {
        (HeaderName::from_static("x-api-key"), HeaderValue::from_str(key))
    } else {
        (header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")))
    };
    let Ok(mut value) = value else { return false };
    value.set_sensitive(true);
    parts.headers.insert(name, value);
    true
}

/// Whether `route` serves `shape` as Vertex AI's Anthropic `rawPredict` (model in the path,
/// override `:rawPredict`, an Anthropic request): the request goes to `:streamRawPredict`,
/// its body carries `anthropic_version` instead of `model`, and `anthropic-beta` is dropped.
fn vertex_anthropic(route: &Route, shape: Shape) -> bool {
    route.model_in_path && shape == Shape::Messages && route.request_path_override.as_deref() == Some(RAW_PREDICT)
}

/// The upstream URL of a request to `route`, built as OpenShell's router builds it:
///
/// | `model_in_path` | `request_path_override` | URL |
/// |---|---|---|
/// | false | none | `base_url` + path (a base ending in `/v1` takes the path without its `/v1`) |
/// | true | none | `base_url/model_id` + path |
/// | true | `S` | `base_url/model_id` + `S` (like `:rawPredict`; empty: `base_url/model_id`) |
/// | false | `P` | `base_url` + `P` (a `/` put between when `P` lacks it; empty: `base_url`) |
///
/// The query is kept where the request's path is kept, and dropped with an override (it
/// belongs to the path replaced). `None` when the URL is unusable, or the model belongs in
/// the path and the route has no `model_id` (the caller's model never goes in a path).
pub fn upstream_uri(route: &Route, shape: Shape, path: &str, query: Option<&str>) -> Option<Uri> {
    let base: Uri = route.base_url.parse().ok()?;
    let base_path = base.path().trim_end_matches('/');
    let model = route.model_id.as_str();
    if route.model_in_path && model.is_empty() {
        return None;
    }
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let (path, query) = match (route.request_path_override.as_deref(), route.model_in_path) {
        (Some(_), true) if vertex_anthropic(route, shape) => (format!("{base_path}/{model}{STREAM_RAW_PREDICT}"), ""),
        (Some(suffix), true) => (format!("{base_path}/{model}{suffix}"), ""),
        (Some(over), false) if over.is_empty() || over.starts_with('/') => (format!("{base_path}{over}"), ""),
        (Some(over), false) => (format!("{base_path}/{over}"), ""),
        (None, true) => (format!("{base_path}/{model}{path}"), query.as_str()),
        (None, false) => {
            let rest = if base_path.ends_with("/v1") { path.strip_prefix("/v1").unwrap_or(path) } else { path };
            (format!("{base_path}{rest}"), query.as_str())
        }
    };
    let path = if path.is_empty() { "/" } else { path.as_str() };
    format!("{}://{}{path}{query}", base.scheme_str()?, base.authority()?).parse().ok()
}

#[cfg(test)]
mod tests;
