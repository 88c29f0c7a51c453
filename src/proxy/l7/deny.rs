//! Why a request on an inspected connection (or to `inference.local`) is refused: each
//! function names one [`Refusal`] and its reason; [`Refused`] is the request it answers,
//! rendered like every deny answer ([`crate::proxy::answer`]).

use bytes::Bytes;
use http::Response;

use super::head::HeadError;
use super::path::PathError;
use crate::policy::L7Decision;
use crate::proxy::answer::{Body, Refusal};

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

impl Refused<'_> {
    /// The answer refusing this request.
    pub fn answer(&self, refusal: &Refusal) -> Response<Body> {
        refusal.response(self.host, self.port, Some((self.method, self.path)))
    }

    /// The answer, rendered as bytes.
    pub fn render(&self, refusal: &Refusal) -> Response<Bytes> {
        refusal.render(self.host, self.port, Some((self.method, self.path)))
    }
}

/// 403 `policy_denied`: the L7 rules refused the request (enforced).
pub fn policy_denied(decision: &L7Decision) -> Refusal {
    Refusal::Policy { reason: decision.reason.clone(), policy: decision.policy.clone() }
}

/// 403 `policy_denied`: the request names another host than the one policy judged (a
/// `Host` header or absolute URI differing from the CONNECT host, as in domain fronting).
pub fn host_mismatch(host: &str, port: u16, named: &str) -> Refusal {
    let reason = format!(
        "the request names the host `{named}`, but this connection was allowed for `{host}:{port}`; open a connection to that host instead"
    );
    Refusal::Policy { reason, policy: None }
}

/// 400 `bad_request`: the request target cannot be canonicalised (the error says why).
pub fn bad_path(error: &PathError) -> Refusal {
    Refusal::BadRequest(error.to_string())
}

/// 400 `bad_request`: the request head is ambiguous about its host, or asks for what is never
/// relayed (`CONNECT`, an upgrade other than WebSocket); the error says which.
pub fn bad_head(error: &HeadError) -> Refusal {
    Refusal::BadRequest(error.to_string())
}

/// 403 `policy_denied` from `inference.local` for a path it does not serve.
pub fn inference_path_denied() -> Refusal {
    let reason = format!("inference.local serves only {INFERENCE_PATHS}");
    Refusal::Policy { reason, policy: Some("inference.local".to_owned()) }
}

/// 400 `bad_request`: an inference request body that is not a JSON object.
pub fn bad_inference_body() -> Refusal {
    Refusal::BadRequest("the body of an inference request must be a JSON object".to_owned())
}

/// 503 `no_inference_route`: no route serves this API family (or its base URL is unusable).
pub fn no_inference_route(family: &str) -> Refusal {
    let reason = format!(
        "no usable inference route serves the {family} API; configure one at the gateway or in OPENSHELL_INFERENCE_ROUTES"
    );
    Refusal::NoInferenceRoute(reason)
}

/// 503 `no_inference_route`: the chosen route's API key cannot be sent (never shown).
pub fn unusable_route_key(route: &str) -> Refusal {
    let reason = format!("the API key of inference route `{route}` is not a valid header value; fix it at its source");
    Refusal::NoInferenceRoute(reason)
}

/// 413 `payload_too_large`: a request body over `limit` bytes.
pub fn body_too_large(limit: u64) -> Refusal {
    let reason = format!("the request body is larger than the {limit} bytes accepted");
    Refusal::PayloadTooLarge(reason)
}

/// 502 `upstream_unreachable`: the upstream's certificate did not verify, so nothing was
/// sent (never a silently unverified connection). `detail` is the TLS error.
pub fn upstream_tls_failed(request: Refused<'_>, detail: &str) -> Refusal {
    let reason = format!(
        "the TLS certificate of {} did not verify ({detail}); add its CA to OPENSHELL_UPSTREAM_CA_FILE if it is a private CA",
        request.host
    );
    Refusal::Unreachable(reason)
}

/// 502 `upstream_unreachable`: the upstream could not be reached or broke the exchange.
pub fn upstream_unreachable(request: Refused<'_>, detail: &str) -> Refusal {
    let reason = format!("{}:{} could not be reached: {detail}", request.host, request.port);
    Refusal::Unreachable(reason)
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
pub fn upstream_timeout(request: Refused<'_>, what: &str) -> Refusal {
    let reason = format!("{}:{} did not {what}", request.host, request.port);
    Refusal::Timeout(reason)
}

#[cfg(test)]
mod tests;
