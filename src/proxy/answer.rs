//! The proxy's own answers: one typed [`Refusal`] (its `error` code and status, reason and
//! deciding policy) rendered once for every path, as JSON with `Connection: close` and, on a
//! 403, `X-OpenShell-Policy: deny` (docs/architecture.md, "Per connection").

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

/// The error type of response bodies: hyper's, or a body's idle timeout.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every proxy answer and forwarded response.
pub type Body = BoxBody<Bytes, BodyError>;

/// The header that marks an answer as the proxy's own denial.
pub const POLICY_HEADER: &str = "x-openshell-policy";

/// What a 400 says about a target host that is not a valid name or IP literal.
pub const INVALID_HOST: &str = "the host is not a valid name: letters, digits, `-` and `_` in dot-separated labels, or an IP literal; write an internationalised name in its `xn--` form";

/// What a 400 says about userinfo (`user@`) in a target (RFC 9110 section 4.2.4).
pub const USERINFO: &str =
    "a proxy target carries no `user@` part (RFC 9110 section 4.2.4); send credentials in a header instead";

/// The longest request path echoed in an answer (a refused path may be long or odd).
pub const MAX_SHOWN_PATH: usize = 512;

/// Why the proxy answers instead of the upstream: the variant is the `error` code (and
/// fixes the status), the text the reason in words. Audit reads it as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The policy does not allow the destination or request (403 `policy_denied`).
    Policy {
        /// Why, in words.
        reason: String,
        /// The policy that decided, if any.
        policy: Option<String>,
    },
    /// The destination resolves to an address the SSRF rules refuse (403 `ssrf_denied`).
    Ssrf {
        /// Which address and why.
        reason: String,
    },
    /// A placeholder has no value, sits where it cannot be swapped, or is in plain HTTP
    /// (403 `credential_unresolved`).
    CredentialUnresolved(String),
    /// A placeholder sent where its key is not bound (403 `credential_not_bound`).
    CredentialNotBound(String),
    /// A placeholder whose value has expired (403 `credential_expired`).
    CredentialExpired(String),
    /// The request is malformed or not something a proxy accepts (400 `bad_request`).
    BadRequest(String),
    /// A request body over a limit (413 `payload_too_large`).
    PayloadTooLarge(String),
    /// The upstream does not resolve, refuses or breaks the exchange (502 `upstream_unreachable`).
    Unreachable(String),
    /// No usable `inference.local` route (503 `no_inference_route`).
    NoInferenceRoute(String),
    /// The upstream did not connect or answer in time (504 `upstream_timeout`).
    Timeout(String),
}

impl Refusal {
    /// The status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Policy { .. }
            | Refusal::Ssrf { .. }
            | Refusal::CredentialUnresolved(_)
            | Refusal::CredentialNotBound(_)
            | Refusal::CredentialExpired(_) => StatusCode::FORBIDDEN,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Unreachable(_) => StatusCode::BAD_GATEWAY,
            Refusal::NoInferenceRoute(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The JSON `error` value.
    pub fn error(&self) -> &'static str {
        match self {
            Refusal::Policy { .. } => "policy_denied",
            Refusal::Ssrf { .. } => "ssrf_denied",
            Refusal::CredentialUnresolved(_) => "credential_unresolved",
            Refusal::CredentialNotBound(_) => "credential_not_bound",
            Refusal::CredentialExpired(_) => "credential_expired",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::PayloadTooLarge(_) => "payload_too_large",
            Refusal::Unreachable(_) => "upstream_unreachable",
            Refusal::NoInferenceRoute(_) => "no_inference_route",
            Refusal::Timeout(_) => "upstream_timeout",
        }
    }

    /// Whether the policy (or the credential bindings it carries) refused, rather than the
    /// request's form or the upstream: audited as `deny`, not `error`.
    pub fn is_denial(&self) -> bool {
        self.status() == StatusCode::FORBIDDEN
    }

    /// The reason, in words.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::Policy { reason, .. } | Refusal::Ssrf { reason } => reason,
            Refusal::CredentialUnresolved(r)
            | Refusal::CredentialNotBound(r)
            | Refusal::CredentialExpired(r)
            | Refusal::BadRequest(r)
            | Refusal::PayloadTooLarge(r)
            | Refusal::Unreachable(r)
            | Refusal::NoInferenceRoute(r)
            | Refusal::Timeout(r) => r,
        }
    }

    /// The policy that decided, if any.
    pub fn policy(&self) -> Option<&str> {
        match self {
            Refusal::Policy { policy, .. } => policy.as_deref(),
            _ => None,
        }
    }

    /// The answer for a request to `host:port` (`method` and `path` when there was a request,
    /// not only a CONNECT), as the connection's body type.
    pub fn response(&self, host: &str, port: u16, request: Option<(&str, &str)>) -> Response<Body> {
        self.render(host, port, request).map(full)
    }

    /// The answer, rendered: the status, `{"error","reason","host","port"}` plus `policy`,
    /// `method` and `path` (cut to [`MAX_SHOWN_PATH`] bytes) when there are, then
    /// `Content-Type: application/json`, `Connection: close` and, on a 403,
    /// `X-OpenShell-Policy: deny`.
    pub fn render(&self, host: &str, port: u16, request: Option<(&str, &str)>) -> Response<Bytes> {
        let (method, path) = request.unzip();
        // Fields in name order, as every answer has always had them.
        let json = Json {
            error: self.error(),
            host,
            method,
            path: path.map(shown),
            policy: self.policy(),
            port,
            reason: self.reason(),
        };
        let mut text = serde_json::to_vec(&json).expect("strings and numbers serialise");
        text.push(b'\n');
        let mut response = Response::new(Bytes::from(text));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if self.status() == StatusCode::FORBIDDEN {
            headers.insert(POLICY_HEADER, HeaderValue::from_static("deny"));
        }
        response
    }
}

/// The JSON body of an answer.
#[derive(Serialize)]
struct Json<'a> {
    error: &'a str,
    host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    port: u16,
    reason: &'a str,
}

/// `path` cut to [`MAX_SHOWN_PATH`] bytes on a character boundary, marked when cut.
fn shown(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= MAX_SHOWN_PATH {
        return path.into();
    }
    let end = (0..=MAX_SHOWN_PATH).rev().find(|&i| path.is_char_boundary(i)).unwrap_or(0);
    format!("{}...", &path[..end]).into()
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A forwarded body (an upstream's, maybe scrubbed) as an answer body.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BodyError>,
{
    body.map_err(Into::into).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// The raw answer written at accept when the connection limit is reached.
pub fn over_capacity() -> Vec<u8> {
    let body = "{\"error\":\"over_capacity\",\"reason\":\"the proxy is at its connection limit (OPENSHELL_PROXY_MAX_CONNECTIONS); retry later\"}\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests;
