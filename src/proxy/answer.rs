//! The proxy's own answers: 403 JSON for policy and SSRF denials, 400, 502, 503, 504,
//! each closing the connection (docs/architecture.md, "Per connection").

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::json;

/// The error type of response bodies: hyper's, or a body's idle timeout.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every proxy answer and forwarded response.
pub type Body = BoxBody<Bytes, BodyError>;

/// The header that marks an answer as the proxy's own.
pub const POLICY_HEADER: &str = "x-openshell-policy";

/// What a 400 says about a target host that is not a valid name or IP literal.
pub const INVALID_HOST: &str = "the host is not a valid name: letters, digits, `-` and `_` in dot-separated labels, or an IP literal; write an internationalised name in its `xn--` form";

/// What a 400 says about userinfo (`user@`) in a target (RFC 9110 section 4.2.4).
pub const USERINFO: &str =
    "a proxy target carries no `user@` part (RFC 9110 section 4.2.4); send credentials in a header instead";

/// Why the proxy answers instead of the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The policy does not allow the destination (403 `policy_denied`).
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
    /// The request is malformed or not something a proxy accepts (400).
    BadRequest(String),
    /// The upstream does not resolve or refuses (502 `upstream_unreachable`).
    Unreachable(String),
    /// The upstream did not connect or answer in time (504 `upstream_timeout`).
    Timeout(String),
}

impl Refusal {
    /// The status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Policy { .. } | Refusal::Ssrf { .. } => StatusCode::FORBIDDEN,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unreachable(_) => StatusCode::BAD_GATEWAY,
            Refusal::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The JSON `error` value.
    pub fn error(&self) -> &'static str {
        match self {
            Refusal::Policy { .. } => "policy_denied",
            Refusal::Ssrf { .. } => "ssrf_denied",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Unreachable(_) => "upstream_unreachable",
            Refusal::Timeout(_) => "upstream_timeout",
        }
    }

    /// The reason, in words.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::Policy { reason, .. } | Refusal::Ssrf { reason } => reason,
            Refusal::BadRequest(r) | Refusal::Unreachable(r) | Refusal::Timeout(r) => r,
        }
    }

    /// The answer for a request to `host:port` (`method`/`path` for absolute-form requests).
    pub fn response(&self, host: &str, port: u16, request: Option<(&str, &str)>) -> Response<Body> {
        let mut body = json!({ "error": self.error(), "reason": self.reason(), "host": host, "port": port });
        if let Refusal::Policy { policy: Some(p), .. } = self {
            body["policy"] = json!(p);
        }
        if let Some((method, path)) = request {
            body["method"] = json!(method);
            body["path"] = json!(path);
        }
        json_response(self.status(), &body, matches!(self.status(), StatusCode::FORBIDDEN))
    }
}

/// A JSON answer with `Connection: close`; `policy` adds the `X-OpenShell-Policy` header.
pub fn json_response(status: StatusCode, body: &serde_json::Value, policy: bool) -> Response<Body> {
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if policy {
        headers.insert(POLICY_HEADER, HeaderValue::from_static("deny"));
    }
    response
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
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
mod tests {
    use super::*;

    #[test]
    fn policy_denial_is_403_json_with_the_header_and_close() {
        let refusal = Refusal::Policy { reason: "no policy allows it".into(), policy: Some("github".into()) };
        let r = refusal.response("example.com", 443, None);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[POLICY_HEADER], "deny");
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn statuses() {
        assert_eq!(Refusal::Ssrf { reason: String::new() }.status(), StatusCode::FORBIDDEN);
        assert_eq!(Refusal::BadRequest(String::new()).status(), StatusCode::BAD_REQUEST);
        assert_eq!(Refusal::Unreachable(String::new()).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(Refusal::Timeout(String::new()).status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(String::from_utf8(over_capacity()).unwrap().starts_with("HTTP/1.1 503 "));
    }
}
