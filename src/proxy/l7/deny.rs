//! The proxy's own answers to requests refused on an inspected connection, in the shape of
//! every deny answer (docs/architecture.md, "Per connection"): JSON `{"error","reason",
//! "host","port","policy","method","path"}`, `X-OpenShell-Policy: deny` on 403s, then `Connection: close`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::head::HeadError;
use super::path::PathError;
use crate::policy::L7Decision;
use crate::proxy::credentials::CredentialError;

/// The header that marks an answer as the proxy's own denial.
pub const POLICY_HEADER: &str = "x-openshell-policy";

/// The longest request path echoed in a body (a refused path may be long or odd).
const MAX_SHOWN_PATH: usize = 512;

/// The paths `inference.local` serves, for its refusal message.
const INFERENCE_PATHS: &str = "/v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings, GET /v1/models (OpenAI) and /v1/messages (Anthropic)";

/// The request an answer is about.
#[derive(Clone, Copy, Debug)]
pub struct Refused<'a> {
    /// The host the client asked for (CONNECT or absolute-form host).
    pub host: &'a str,
    /// Its port.
    pub port: u16,
    /// The request method.
    pub method: &'a str,
    /// The path as judged (canonical), or as received when it could not be canonicalised.
    pub path: &'a str,
}

/// 403 `policy_denied`: the L7 rules refused the request (enforced).
pub fn policy_denied(request: Refused<'_>, decision: &L7Decision) -> Response<Bytes> {
    let mut body = base("policy_denied", &decision.reason, request);
    if let Some(policy) = &decision.policy {
        body["policy"] = json!(policy);
    }
    answer(StatusCode::FORBIDDEN, body)
}

/// 403 `policy_denied`: the request names another host than the one policy judged (a
/// `Host` header or absolute URI differing from the CONNECT host, as in domain fronting).
pub fn host_mismatch(request: Refused<'_>, named: &str) -> Response<Bytes> {
    let reason = format!(
        "the request names the host `{named}`, but this connection was allowed for `{}:{}`; open a connection to that host instead",
        request.host, request.port
    );
    answer(StatusCode::FORBIDDEN, base("policy_denied", &reason, request))
}

/// 403 `credential_unresolved` (a placeholder has no value, sits where it cannot be
/// swapped, or is in plain HTTP), `credential_not_bound`, `credential_expired`; 413 or 400
/// for a body that cannot be rewritten. The request is not forwarded. The reason names the
/// key, never a value.
pub fn credential_refused(request: Refused<'_>, error: &CredentialError) -> Response<Bytes> {
    let (code, reason) = (error.code(), error.to_string());
    let reason = reason.strip_prefix(code).and_then(|r| r.strip_prefix(": ")).unwrap_or(&reason);
    answer(error.status(), base(code, reason, request))
}

/// 400 `bad_request`: the request target cannot be canonicalised (the error says why).
pub fn bad_path(request: Refused<'_>, error: &PathError) -> Response<Bytes> {
    answer(StatusCode::BAD_REQUEST, base("bad_request", &error.to_string(), request))
}

/// 400 `bad_request`: the request head is ambiguous about its host, or asks for what is never
/// relayed (`CONNECT`, an upgrade other than WebSocket); the error says which.
pub fn bad_head(request: Refused<'_>, error: &HeadError) -> Response<Bytes> {
    answer(StatusCode::BAD_REQUEST, base("bad_request", &error.to_string(), request))
}

/// 403 `policy_denied` from `inference.local` for a path it does not serve.
pub fn inference_path_denied(request: Refused<'_>) -> Response<Bytes> {
    let reason = format!("inference.local serves only {INFERENCE_PATHS}");
    let mut body = base("policy_denied", &reason, request);
    body["policy"] = json!("inference.local");
    answer(StatusCode::FORBIDDEN, body)
}

/// 400 `bad_request`: an inference request body that is not a JSON object.
pub fn bad_inference_body(request: Refused<'_>) -> Response<Bytes> {
    let reason = "the body of an inference request must be a JSON object";
    answer(StatusCode::BAD_REQUEST, base("bad_request", reason, request))
}

/// 503 `no_inference_route`: no route serves this API family (or its base URL is unusable).
pub fn no_inference_route(request: Refused<'_>, family: &str) -> Response<Bytes> {
    let reason = format!(
        "no usable inference route serves the {family} API; configure one at the gateway or in OPENSHELL_INFERENCE_ROUTES"
    );
    answer(StatusCode::SERVICE_UNAVAILABLE, base("no_inference_route", &reason, request))
}

/// 503 `no_inference_route`: the chosen route's API key cannot be sent (never shown).
pub fn unusable_route_key(request: Refused<'_>, route: &str) -> Response<Bytes> {
    let reason = format!("the API key of inference route `{route}` is not a valid header value; fix it at its source");
    answer(StatusCode::SERVICE_UNAVAILABLE, base("no_inference_route", &reason, request))
}

/// 413 `payload_too_large`: a request body over `limit` bytes.
pub fn body_too_large(request: Refused<'_>, limit: u64) -> Response<Bytes> {
    let reason = format!("the request body is larger than the {limit} bytes accepted");
    answer(StatusCode::PAYLOAD_TOO_LARGE, base("payload_too_large", &reason, request))
}

/// 502 `upstream_unreachable`: the upstream's certificate did not verify, so nothing was
/// sent (never a silently unverified connection). `detail` is the TLS error.
pub fn upstream_tls_failed(request: Refused<'_>, detail: &str) -> Response<Bytes> {
    let reason = format!(
        "the TLS certificate of {} did not verify ({detail}); add its CA to OPENSHELL_UPSTREAM_CA_FILE if it is a private CA",
        request.host
    );
    answer(StatusCode::BAD_GATEWAY, base("upstream_unreachable", &reason, request))
}

/// 502 `upstream_unreachable`: the upstream could not be reached or broke the exchange.
pub fn upstream_unreachable(request: Refused<'_>, detail: &str) -> Response<Bytes> {
    let reason = format!("{}:{} could not be reached: {detail}", request.host, request.port);
    answer(StatusCode::BAD_GATEWAY, base("upstream_unreachable", &reason, request))
}

/// What a 504 says the upstream did not do, and the setting that bounds it: the answer head.
pub const ANSWER_IN_TIME: &str = "answer within the response timeout (OPENSHELL_PROXY_RESPONSE_TIMEOUT_SECS)";
/// ... the answer head of an `inference.local` route.
pub const ROUTE_ANSWER_IN_TIME: &str = "answer within the route's timeout_secs, or the response timeout (OPENSHELL_PROXY_RESPONSE_TIMEOUT_SECS) when the route has none";
/// ... the TCP connection.
pub const CONNECT_IN_TIME: &str = "connect within the connect timeout (OPENSHELL_PROXY_CONNECT_TIMEOUT_SECS)";
/// ... the upstream TLS handshake.
pub const HANDSHAKE_IN_TIME: &str =
    "complete the TLS handshake within the connect timeout (OPENSHELL_PROXY_CONNECT_TIMEOUT_SECS)";

/// 504 `upstream_timeout`: the upstream did not `what` (connect, answer) within the bound
/// `what` names.
pub fn upstream_timeout(request: Refused<'_>, what: &str) -> Response<Bytes> {
    let reason = format!("{}:{} did not {what}", request.host, request.port);
    answer(StatusCode::GATEWAY_TIMEOUT, base("upstream_timeout", &reason, request))
}

fn base(error: &str, reason: &str, r: Refused<'_>) -> Value {
    json!({
        "error": error,
        "reason": reason,
        "host": r.host,
        "port": r.port,
        "method": r.method,
        "path": shown(r.path),
    })
}

/// `path` cut to [`MAX_SHOWN_PATH`] bytes on a character boundary, marked when cut.
fn shown(path: &str) -> String {
    if path.len() <= MAX_SHOWN_PATH {
        return path.to_owned();
    }
    let end = (0..=MAX_SHOWN_PATH).rev().find(|&i| path.is_char_boundary(i)).unwrap_or(0);
    format!("{}...", &path[..end])
}

fn answer(status: StatusCode, body: Value) -> Response<Bytes> {
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(Bytes::from(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::FORBIDDEN {
        headers.insert(POLICY_HEADER, HeaderValue::from_static("deny"));
    }
    response
}

#[cfg(test)]
mod tests;
