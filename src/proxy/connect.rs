//! CONNECT: one L4 decision, then either a byte tunnel (SSRF-checked upstream, `200`,
//! `copy_bidirectional`) or, for endpoints with L7 rules, TLS interception, which this
//! build does not have: those tunnels are refused (fail closed) in [`intercept_tls`].

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;

use crate::policy::host::normalize_destination;
use crate::policy::model::Endpoint;
use crate::policy::{L4Decision, PolicyEngine};

use super::answer::{Body, INVALID_HOST, Refusal, USERINFO, empty};
use super::audit::{self, Subject};
use super::relay::relay;
use super::server::Ctx;
use super::upstream::{self, Target};

/// Answers one CONNECT request; on success the tunnel runs in a tracked task.
pub async fn handle(mut req: Request<Incoming>, ctx: Arc<Ctx>, permit: Arc<OwnedSemaphorePermit>) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        let refusal = Refusal::BadRequest("CONNECT needs a host:port target (CONNECT example.com:443)".into());
        return refusal.response("", 0, None);
    };
    // `[::1]` is named `::1` in answers, audit and dialing, as in the absolute form.
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if authority.as_str().contains('@') {
        let refusal = Refusal::BadRequest(format!("CONNECT `{authority}`: {USERINFO}"));
        return refusal.response(host, authority.port_u16().unwrap_or(0), None);
    }
    if normalize_destination(host).is_none() {
        let refusal = Refusal::BadRequest(format!("CONNECT `{authority}`: {}", INVALID_HOST));
        return refusal.response(host, authority.port_u16().unwrap_or(0), None);
    }
    let Some(port) = authority.port_u16() else {
        let refusal = Refusal::BadRequest(format!("CONNECT {authority} has no port; write CONNECT {host}:443"));
        return refusal.response(host, 0, None);
    };
    let subject = Subject { kind: "connect", host, port, request: None };
    let engine = ctx.policy.current();
    let decision = engine.network(host, port);
    let rule = audit::rule(&engine, &decision);
    if !decision.allow {
        let refusal = Refusal::Policy { reason: decision.reason.clone(), policy: decision.policy.clone() };
        audit::denied(&subject, &refusal, decision.policy.as_deref(), rule);
        return refusal.response(host, port, None);
    }
    let endpoints: Vec<&Endpoint> = engine.matched(&decision).collect();
    if endpoints.iter().any(|e| e.intercepts_tls()) {
        return intercept_tls(req, &subject, &engine, &decision, &ctx).await;
    }
    let target = Target { host, port, endpoints: &endpoints, allow_loopback: ctx.allow_loopback };
    let stream = match upstream::open(&target, ctx.limits.connect_timeout).await {
        Ok(stream) => stream,
        Err(refusal) => {
            audit::denied(&subject, &refusal, decision.policy.as_deref(), rule);
            return refusal.response(host, port, None);
        }
    };
    audit::allowed(&subject, decision.policy.as_deref(), rule, &decision.reason);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = ctx.limits.idle_timeout;
    let host = host.to_owned();
    ctx.shutdown.spawn(async move {
        let _permit = permit;
        let started = Instant::now();
        let subject = Subject { kind: "connect", host: &host, port, request: None };
        match on_upgrade.await {
            Ok(upgraded) => {
                let relayed = relay(TokioIo::new(upgraded), stream, idle).await;
                let bytes = (relayed.sent, relayed.received);
                audit::closed(&subject, None, bytes, started.elapsed(), relayed.outcome);
            }
            Err(e) => tracing::debug!(host = %host, port, error = %e, "CONNECT client left before the tunnel opened"),
        }
    });
    Response::new(empty())
}

/// The point where TLS interception plugs in: a CONNECT to an endpoint with an L7
/// `protocol` and `tls: terminate`. Until the L7 layer exists it refuses the tunnel,
/// because relaying it would let requests pass that the policy means to inspect.
async fn intercept_tls(
    _req: Request<Incoming>,
    subject: &Subject<'_>,
    engine: &PolicyEngine,
    decision: &L4Decision,
    _ctx: &Ctx,
) -> Response<Body> {
    let refusal = Refusal::Policy {
        reason: format!(
            "{}:{} needs L7 inspection (its endpoint has a `protocol`), and L7 inspection is not available in this build; the tunnel is refused rather than relayed uninspected",
            subject.host, subject.port
        ),
        policy: decision.policy.clone(),
    };
    audit::denied(subject, &refusal, decision.policy.as_deref(), audit::rule(engine, decision));
    refusal.response(subject.host, subject.port, None)
}
