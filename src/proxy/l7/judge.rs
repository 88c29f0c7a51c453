//! One request on an inspected connection, everything before forwarding: the canonical
//! target, the L7 decision (enforced, or audited and forwarded), then the credential swap,
//! which happens only for a request that is going to be sent. Logging is the caller's.

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, Uri};

use super::deny::{self, Refused};
use super::path::{EncodedSlash, PathError, canonicalize};
use crate::policy::model::Enforcement;
use crate::policy::{L7Decision, L7Request, PolicyEngine};
use crate::proxy::credentials::{Destination, Injection, SecretStore};

/// What to do with one request.
#[derive(Debug)]
pub enum Verdict {
    /// Send it upstream: the head now has the canonical origin-form target and the real
    /// credentials. `decision.allow == false` means an audited would-be denial.
    Forward {
        /// The L7 decision (log it).
        decision: L7Decision,
        /// The credentials swapped in (log their keys), the body stage and the answer's scrubbing.
        credentials: Injection,
    },
    /// Answer `response` and close; nothing goes upstream.
    Refuse {
        /// The JSON answer (400 bad path, 403 policy or credentials).
        response: Response<Bytes>,
        /// The L7 decision when the rules were reached.
        decision: Option<L7Decision>,
    },
}

impl Verdict {
    /// Whether the request is forwarded.
    pub fn forwards(&self) -> bool {
        matches!(self, Verdict::Forward { .. })
    }
}

/// Judges the request in `parts` to `host:port` (the CONNECT or absolute-form destination)
/// and prepares it for forwarding. A request naming another host (`Host` header or
/// absolute URI) is refused. An encoded `/` is kept only when every matched L7 endpoint
/// sets `allow_encoded_slash` (fail closed when policies disagree).
pub fn judge(engine: &PolicyEngine, host: &str, port: u16, secrets: &SecretStore, parts: &mut Parts) -> Verdict {
    let method = parts.method.as_str().to_owned();
    // An `http://` target (absolute-form) is plain HTTP: no credential is swapped into it.
    let cleartext = parts.uri.scheme() == Some(&http::uri::Scheme::HTTP);
    let target = match (parts.uri.path_and_query(), parts.uri.scheme()) {
        (Some(pq), _) => pq.as_str().to_owned(),
        (None, Some(_)) => "/".to_owned(),
        (None, None) => parts.uri.to_string(),
    };
    let refused = |path| Refused { host, port, method: &method, path };
    if let Err(named) = check_host(parts, host, port) {
        return Verdict::Refuse { response: deny::host_mismatch(refused(&target), &named), decision: None };
    }
    let canonical = match canonicalize(&target, encoded_slash(engine, host, port)) {
        Ok(c) => c,
        Err(e) => return Verdict::Refuse { response: deny::bad_path(refused(&target), &e), decision: None },
    };
    let query = canonical.query_params();
    let decision = engine.request(host, port, &L7Request { method: &method, path: &canonical.path, query: &query });
    if !decision.allow && decision.enforcement == Enforcement::Enforce {
        let response = deny::policy_denied(refused(&canonical.path), &decision);
        return Verdict::Refuse { response, decision: Some(decision) };
    }
    // Every byte comes from the URI already parsed, so this holds; refused rather than trusted.
    let Ok(uri) = Uri::try_from(canonical.target()) else {
        let response = deny::bad_path(refused(&target), &PathError::NotOriginForm);
        return Verdict::Refuse { response, decision: Some(decision) };
    };
    parts.uri = uri;
    let to = Destination::new(engine, host, port, &canonical.path, cleartext);
    match secrets.substitute(parts, to, decision.allow) {
        Ok(credentials) => Verdict::Forward { decision, credentials },
        Err(e) => {
            let response = deny::credential_refused(refused(&canonical.path), &e);
            Verdict::Refuse { response, decision: Some(decision) }
        }
    }
}

/// Every host the request names (absolute URI, `Host` header) must be the judged host
/// (and port, when given); a missing `Host` is set to it. `Err` holds the other name.
fn check_host(parts: &mut Parts, host: &str, port: u16) -> Result<(), String> {
    let same = |named: &str| {
        let Ok(authority) = named.parse::<Authority>() else { return false };
        let name = authority.host().trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
        let judged = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
        name.eq_ignore_ascii_case(judged) && authority.port_u16().is_none_or(|p| p == port)
    };
    if let Some(authority) = parts.uri.authority()
        && !same(authority.as_str())
    {
        return Err(authority.to_string());
    }
    match parts.headers.get(header::HOST).map(|v| v.to_str()) {
        Some(Ok(named)) if same(named) => Ok(()),
        Some(Ok(named)) => Err(named.chars().take(256).collect()),
        Some(Err(_)) => Err("(a Host header that is not text)".to_owned()),
        None => {
            let value = if port == 443 || port == 80 { host.to_owned() } else { format!("{host}:{port}") };
            let value = HeaderValue::from_str(&value).map_err(|_| host.to_owned())?;
            parts.headers.insert(header::HOST, value);
            Ok(())
        }
    }
}

fn encoded_slash(engine: &PolicyEngine, host: &str, port: u16) -> EncodedSlash {
    let l4 = engine.network(host, port);
    let mut l7 = engine.matched(&l4).filter(|e| e.protocol.is_some()).peekable();
    let allow = l7.peek().is_some() && l7.all(|e| e.allow_encoded_slash);
    EncodedSlash::from_allow(allow)
}
