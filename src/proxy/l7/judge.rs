//! One request on an inspected connection, everything before forwarding: the canonical
//! target, the L7 decision (enforced, or audited and forwarded), then the credential swap,
//! which happens only for a request that is going to be sent. Logging is the caller's.

use http::request::Parts;
use http::uri::Uri;

use super::deny;
use super::head;
use super::path::{Canonical, EncodedSlash, PathError, canonicalize};
use crate::policy::model::{Endpoint, Enforcement, Protocol};
use crate::policy::request::query_readings;
use crate::policy::{L7Decision, L7Request, PolicyEngine};
use crate::proxy::answer::Refusal;
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
    /// Answer `refusal` and close; nothing goes upstream.
    Refuse {
        /// Why (400 bad path, 403 policy or credentials).
        refusal: Refusal,
        /// The request's method.
        method: String,
        /// The path the answer names: as judged (canonical), or as received when it could
        /// not be canonicalised.
        path: String,
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
/// and prepares it for forwarding. Its head is checked first ([`head::check`]: one host, the
/// judged one, which becomes its only `Host`; an upgrade only when every matched L7
/// endpoint is `protocol: websocket`). An encoded `/` is kept only when every matched L7
/// endpoint sets `allow_encoded_slash` (fail closed when policies disagree).
pub fn judge(engine: &PolicyEngine, host: &str, port: u16, secrets: &SecretStore, parts: &mut Parts) -> Verdict {
    let method = parts.method.as_str().to_owned();
    // An `http://` target (absolute-form) is plain HTTP: no credential is swapped into it.
    let cleartext = parts.uri.scheme() == Some(&http::uri::Scheme::HTTP);
    let target = match (parts.uri.path_and_query(), parts.uri.scheme()) {
        (Some(pq), _) => pq.as_str().to_owned(),
        (None, Some(_)) => "/".to_owned(),
        (None, None) => parts.uri.to_string(),
    };
    let websocket = every_inspected(engine, host, port, |e| e.protocol == Some(Protocol::Websocket));
    if let Err(refusal) = head::check(parts, host, port, websocket) {
        return Verdict::Refuse { refusal: refusal.refusal(host, port), method, path: target, decision: None };
    }
    let overrides: Vec<&str> = METHOD_OVERRIDES
        .iter()
        .flat_map(|name| parts.headers.get_all(*name))
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .collect();
    let (canonical, decision) = match decide(engine, host, port, &method, &overrides, &target) {
        Ok(decided) => decided,
        Err(e) => return Verdict::Refuse { refusal: deny::bad_path(&e), method, path: target, decision: None },
    };
    if !decision.allow && decision.enforcement == Enforcement::Enforce {
        let refusal = deny::policy_denied(&decision);
        return Verdict::Refuse { refusal, method, path: canonical.path, decision: Some(decision) };
    }
    // Every byte comes from the URI already parsed, so this holds; refused rather than trusted.
    let Ok(uri) = Uri::try_from(canonical.target()) else {
        let refusal = deny::bad_path(&PathError::NotOriginForm);
        return Verdict::Refuse { refusal, method, path: target, decision: Some(decision) };
    };
    parts.uri = uri;
    let to = Destination::new(engine, host, port, &canonical.path, cleartext);
    match secrets.substitute(parts, to, decision.allow) {
        Ok(credentials) => Verdict::Forward { decision, credentials },
        Err(e) => Verdict::Refuse { refusal: e.refusal(), method, path: canonical.path, decision: Some(decision) },
    }
}

/// Headers that upstream frameworks (Google APIs, ASP.NET, Express's `method-override`,
/// Symfony) may read as the request's method in place of its own.
pub const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// The query parameter some frameworks (Laravel, Express's `method-override` with a query
/// getter) read as the method (its name as [`query_readings`] gives it: lower case).
const METHOD_PARAMETER: &str = "_method";

/// The canonical form of `target` and the L7 decision for `method` on it to `host:port`:
/// what the proxy judges, and what `policy eval` reports. A method an upstream may read in
/// its place (`overrides`, from [`METHOD_OVERRIDES`] headers, and every value any reading
/// of the query gives the `_method` parameter) is judged too: the request passes only when
/// every one of them would.
pub fn decide(
    engine: &PolicyEngine,
    host: &str,
    port: u16,
    method: &str,
    overrides: &[&str],
    target: &str,
) -> Result<(Canonical, L7Decision), PathError> {
    let canonical =
        canonicalize(target, EncodedSlash::from_allow(every_inspected(engine, host, port, |e| e.allow_encoded_slash)))?;
    let query = canonical.query.as_deref().unwrap_or("");
    let ask = |method: &str| engine.request(host, port, &L7Request { method, path: &canonical.path, query });
    let decision = ask(method);
    if !decision.allow {
        return Ok((canonical, decision));
    }
    // Every reading of the query a deny rule gets (`;` pairs, encoded names, ...).
    let from_query = query_readings(query).remove(METHOD_PARAMETER).unwrap_or_default();
    let others: Vec<String> = overrides.iter().map(|m| (*m).to_owned()).chain(from_query).collect();
    for other in others {
        let other = other.trim().to_ascii_uppercase();
        if other == method.to_ascii_uppercase() {
            continue;
        }
        let denied = ask(&other);
        if !denied.allow {
            let reason = format!("{}, as `{other}`, which the request also names as its method", denied.reason);
            return Ok((canonical, L7Decision { reason, ..denied }));
        }
    }
    Ok((canonical, decision))
}

/// Whether every matched L7 endpoint for `host:port` has `flag` (false when none matches):
/// fail closed when policies disagree.
fn every_inspected(engine: &PolicyEngine, host: &str, port: u16, flag: impl Fn(&Endpoint) -> bool) -> bool {
    let l4 = engine.network(host, port);
    let mut l7 = engine.matched(&l4).filter(|e| e.inspects()).peekable();
    l7.peek().is_some() && l7.all(flag)
}
