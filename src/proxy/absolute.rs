//! Absolute-form HTTP (`GET http://host/path`): one L4 decision per request; for an
//! endpoint with an L7 `protocol`, the L7 rules and the credential swap of inspected
//! connections ([`crate::proxy::l7::judge`]); then the request is forwarded over an SSRF-checked upstream connection with hyper, bodies
//! streamed both ways, hop-by-hop and `Proxy-*` headers stripped (`Upgrade` too: a `101` is
//! answered 502, never relayed). The upstream
//! connection is kept for the next request of the same client connection to the same
//! host:port under the same policy generation. The response timeout counts from the end of
//! the request body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self as client, SendRequest};
use hyper_util::rt::TokioIo;

use crate::policy::PolicyEngine;
use crate::policy::host::DestinationHost;
use crate::policy::model::Endpoint;

use super::answer::{Body, INVALID_HOST, Refusal, USERINFO};
use super::audit::{self, Subject};
use super::counted::{Counted, OnEnd, answer_within};
use super::credentials::SecretStore;
use super::ctx::Ctx;
use super::drain::drained;
use super::hop::strip_hop_by_hop;
use super::l7::judge::{Verdict, judge};
use super::l7::session::audit as audit_l7;
use super::upstream::{self, Target};

/// How long a kept upstream connection may take to become ready for the next request.
const REUSE_WAIT: Duration = Duration::from_secs(1);

/// The upstream connection one client connection keeps for its next request.
#[derive(Default)]
pub struct Kept(Mutex<Option<KeptConnection>>);

struct KeptConnection {
    host: String,
    port: u16,
    /// The policy generation its addresses were checked under.
    generation: u64,
    sender: SendRequest<Counted>,
}

/// Answers one non-CONNECT request.
pub async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>, kept: Arc<Kept>) -> Response<Body> {
    let uri = req.uri().clone();
    let method = req.method().as_str().to_owned();
    let path = uri.path().to_owned();
    let (destination, port) = match target_of(&uri) {
        Ok(hp) => hp,
        Err(refusal) => {
            let answer = refusal.response(uri.host().unwrap_or(""), uri.port_u16().unwrap_or(0), None);
            return drained(answer, req.into_body());
        }
    };
    let host = destination.shown();
    let subject = Subject { kind: "http", host, port, request: Some((&method, &path)) };
    let engine = ctx.policy.current();
    let decision = engine.network_to(&destination, port);
    let rule = audit::rule_of(&engine, &decision);
    if !decision.allow {
        let refusal = Refusal::Policy { reason: decision.reason.clone(), policy: decision.policy.clone() };
        audit::denied(&subject, &refusal, decision.policy.as_deref(), rule);
        return drained(refusal.response(host, port, subject.request), req.into_body());
    }
    let endpoints: Vec<&Endpoint> = engine.matched(&decision).collect();
    let (req, path) = if endpoints.iter().any(|e| e.inspects()) {
        match inspect_http(req, host, port, &engine, &ctx.secrets) {
            Ok(req) => {
                let path = req.uri().path().to_owned();
                (req, path)
            }
            Err(response) => return *response,
        }
    } else {
        (req, path)
    };
    let subject = Subject { kind: "http", host, port, request: Some((&method, &path)) };
    let started = Instant::now();
    let target = Target { host: &destination, port, endpoints: &endpoints, allow_loopback: ctx.allow_loopback };
    let generation = engine.generation();
    let mut sender = match sender(&kept, &target, generation, &ctx).await {
        Ok(sender) => sender,
        Err(refusal) => {
            audit::denied(&subject, &refusal, decision.policy.as_deref(), rule);
            return drained(refusal.response(host, port, subject.request), req.into_body());
        }
    };
    audit::allowed(&subject, decision.policy.as_deref(), rule, &decision.reason);
    let sent = Arc::new(AtomicU64::new(0));
    let (parts, body) = to_upstream(req, host, uri.port_u16()).into_parts();
    let (body, body_sent) = Counted::request(body, sent.clone(), ctx.limits.idle_timeout);
    let exchange = sender.send_request(Request::from_parts(parts, body));
    let refusal = match answer_within(exchange, body_sent, ctx.limits.response_timeout).await {
        // The upstream never got an `Upgrade` (stripped), and bytes after a `101` are never relayed.
        Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            Refusal::Unreachable(format!("{host}:{port} answered 101 to a request that did not ask to upgrade"))
        }
        Ok(Ok(mut response)) => {
            *kept.0.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(KeptConnection { host: host.to_owned(), port, generation, sender });
            strip_hop_by_hop(response.headers_mut(), false);
            let status = response.status().as_u16();
            let (host, method, path) = (host.to_owned(), method.clone(), path.clone());
            let on_end: OnEnd = Box::new(move |received, outcome| {
                let subject = Subject { kind: "http", host: &host, port, request: Some((&method, &path)) };
                let bytes = (sent.load(Ordering::Relaxed), received);
                audit::closed(&subject, Some(status), bytes, started.elapsed(), outcome);
            });
            let received = Arc::new(AtomicU64::new(0));
            return response.map(|body| Counted::new(body, received, ctx.limits.idle_timeout, Some(on_end)).boxed());
        }
        Ok(Err(e)) => Refusal::Unreachable(format!("{host}:{port} failed before answering: {e}")),
        Err(_) => Refusal::Timeout(format!(
            "{host}:{port} sent no response head within {:?} (OPENSHELL_PROXY_RESPONSE_TIMEOUT_SECS)",
            ctx.limits.response_timeout
        )),
    };
    audit::denied(&subject, &refusal, decision.policy.as_deref(), rule);
    refusal.response(host, port, subject.request)
}

/// Host and port of an absolute-form `http://` request; anything else is a 400.
fn target_of(uri: &Uri) -> Result<(DestinationHost, u16), Refusal> {
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), _) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
            Err(Refusal::BadRequest(format!("{uri}: {USERINFO}")))
        }
        (Some("http"), host) => match host.and_then(DestinationHost::parse) {
            Some(host) => Ok((host, uri.port_u16().unwrap_or(80))),
            None => Err(Refusal::BadRequest(format!("{uri}: {INVALID_HOST}"))),
        },
        (Some("https"), _) => Err(Refusal::BadRequest(format!(
            "{uri}: https:// URLs go through the proxy with CONNECT (curl -x does this); the proxy does not send plain requests over TLS for the client"
        ))),
        (None, _) => Err(Refusal::BadRequest(format!(
            "{uri} is not absolute: this is a proxy; send `GET http://host/path` or `CONNECT host:port`"
        ))),
        (Some(scheme), _) => {
            Err(Refusal::BadRequest(format!("{uri}: scheme `{scheme}` is not proxied; use http:// or CONNECT")))
        }
    }
}

/// A request to an endpoint with an L7 `protocol`: judged like a request on an inspected
/// connection (canonical path, L7 rules, then the credential swap). `Ok` holds the request
/// to forward (canonical origin-form target, real credentials); `Err` the answer instead.
fn inspect_http(
    req: Request<Incoming>,
    host: &str,
    port: u16,
    engine: &PolicyEngine,
    secrets: &SecretStore,
) -> Result<Request<Incoming>, Box<Response<Body>>> {
    let (mut parts, body) = req.into_parts();
    let (method, target) = (parts.method.to_string(), parts.uri.path().to_owned());
    let verdict = judge(engine, host, port, secrets, &mut parts);
    let path = if verdict.forwards() { parts.uri.path() } else { &target };
    audit_l7(host, port, &method, path, &verdict);
    match verdict {
        Verdict::Forward { .. } => Ok(Request::from_parts(parts, body)),
        Verdict::Refuse { refusal, path, .. } => {
            let answer = refusal.response(host, port, Some((&method, &path)));
            Err(Box::new(drained(answer, body)))
        }
    }
}

/// The kept connection when it goes to the same place, was checked under the same policy
/// generation and is ready; else a new, freshly checked one.
async fn sender(kept: &Kept, target: &Target<'_>, generation: u64, ctx: &Ctx) -> Result<SendRequest<Counted>, Refusal> {
    let previous = kept.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(KeptConnection { host, port, generation: checked_under, mut sender }) = previous
        && host == target.host.shown()
        && port == target.port
        && checked_under == generation
        && matches!(tokio::time::timeout(REUSE_WAIT, sender.ready()).await, Ok(Ok(())))
    {
        return Ok(sender);
    }
    let stream = upstream::open(target, ctx.limits.connect_timeout).await?;
    let handshake = client::Builder::new().handshake::<_, Counted>(TokioIo::new(stream));
    let (sender, connection) = tokio::time::timeout(ctx.limits.connect_timeout, handshake)
        .await
        .map_err(|_| Refusal::Timeout(format!("{}:{}: HTTP handshake timed out", target.host.shown(), target.port)))?
        .map_err(|e| Refusal::Unreachable(format!("{}:{}: {e}", target.host.shown(), target.port)))?;
    ctx.shutdown.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// The request as the upstream gets it: origin-form, HTTP/1.1, `Host` from the URL.
fn to_upstream(req: Request<Incoming>, host: &str, port: Option<u16>) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let mut origin = http::uri::Parts::default();
    origin.path_and_query = Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    parts.uri = Uri::from_parts(origin).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, false);
    let host_header = match port {
        Some(p) if host.contains(':') => format!("[{host}]:{p}"),
        Some(p) => format!("{host}:{p}"),
        None if host.contains(':') => format!("[{host}]"),
        None => host.to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&host_header) {
        parts.headers.insert(header::HOST, value);
    }
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_is_forwarded() {
        let t = |s: &str| target_of(&s.parse().unwrap()).map(|(host, port)| (host.shown().to_owned(), port));
        assert_eq!(t("http://example.com/x").unwrap(), ("example.com".into(), 80));
        assert_eq!(t("http://example.com:8080/").unwrap(), ("example.com".into(), 8080));
        assert_eq!(t("http://[::1]:8080/").unwrap(), ("::1".into(), 8080));
        assert!(t("https://example.com/").unwrap_err().reason().contains("CONNECT"));
        assert!(t("/index.html").unwrap_err().reason().contains("not absolute"));
        assert!(t("http://a..b/").unwrap_err().reason().contains("not a valid name"));
        assert!(t("http://allowed.example@denied.example/").unwrap_err().reason().contains("user@"));
    }
}
