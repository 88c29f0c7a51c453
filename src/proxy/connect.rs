//! CONNECT: `inference.local:443` goes to the inference router without a network decision;
//! anything else gets one L4 decision, then either a byte tunnel (SSRF-checked upstream,
//! `200`, `copy_bidirectional`) or, for endpoints with an L7 `protocol` that terminate TLS,
//! an inspected session ([`crate::proxy::l7::session`]) behind a CA-signed leaf.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::policy::host::{DestinationHost, unbracketed};
use crate::policy::model::Endpoint;
use crate::policy::{L4Decision, PolicyEngine};
use crate::shutdown::Shutdown;

use super::answer::{Body, INVALID_HOST, Refusal, USERINFO, empty};
use super::audit::{self, Outcome, Subject};
use super::ctx::Ctx;
use super::l7::inference::{INFERENCE_HOST, InferenceSession, serve_inference_tls};
use super::l7::session::{Dial, Inspected, SessionError, serve_tls};
use super::relay::relay;
use super::upstream::{self, Target};

/// The policy name audit lines and answers give `inference.local`.
const INFERENCE_POLICY: &str = "inference.local";

/// Answers one CONNECT request; on success the tunnel runs in a tracked task.
pub async fn handle(mut req: Request<Incoming>, ctx: Arc<Ctx>, permit: Arc<OwnedSemaphorePermit>) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        let refusal = Refusal::BadRequest("CONNECT needs a host:port target (CONNECT example.com:443)".into());
        return refusal.response("", 0, None);
    };
    // `[::1]` is named `::1` in answers, audit and dialing, as in the absolute form.
    let asked = unbracketed(authority.host());
    if authority.as_str().contains('@') {
        let refusal = Refusal::BadRequest(format!("CONNECT `{authority}`: {USERINFO}"));
        return refusal.response(asked, authority.port_u16().unwrap_or(0), None);
    }
    let Some(destination) = DestinationHost::parse(authority.host()) else {
        let refusal = Refusal::BadRequest(format!("CONNECT `{authority}`: {}", INVALID_HOST));
        return refusal.response(asked, authority.port_u16().unwrap_or(0), None);
    };
    let host = destination.shown();
    let Some(port) = authority.port_u16() else {
        let refusal = Refusal::BadRequest(format!("CONNECT {authority} has no port; write CONNECT {host}:443"));
        return refusal.response(host, 0, None);
    };
    if port == 443 && destination.name() == INFERENCE_HOST {
        return inference(req, &ctx, permit);
    }
    let subject = Subject { kind: "connect", host, port, request: None };
    let engine = ctx.policy.current();
    let decision = engine.network_to(&destination, port);
    let rule = audit::rule_of(&engine, &decision);
    if !decision.allow {
        let refusal = Refusal::Policy { reason: decision.reason.clone(), policy: decision.policy.clone() };
        audit::denied(&subject, &refusal, decision.policy.as_deref(), rule);
        return refusal.response(host, port, None);
    }
    let endpoints: Vec<&Endpoint> = engine.matched(&decision).collect();
    let target = Target { host: &destination, port, endpoints: &endpoints, allow_loopback: ctx.allow_loopback };
    if endpoints.iter().any(|e| e.intercepts_tls()) {
        return intercept_tls(req, &subject, &engine, &decision, &target, &ctx, permit).await;
    }
    let stream = match upstream::open(&target, ctx.limits.connect_timeout).await {
        Ok(stream) => stream,
        Err(refusal) => {
            audit::denied(&subject, &refusal, decision.policy.as_deref(), rule);
            return refusal.response(host, port, None);
        }
    };
    audit::allowed(&subject, decision.policy.as_deref(), rule, &decision.reason);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (host, generation, tunnel_ctx) = (host.to_owned(), engine.generation(), ctx.clone());
    ctx.shutdown.spawn(async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(upgraded) => {
                tunnel(TokioIo::new(upgraded), stream, &tunnel_ctx, "connect", &host, port, generation).await
            }
            Err(e) => tracing::debug!(host = %host, port, error = %e, "CONNECT client left before the tunnel opened"),
        }
    });
    Response::new(empty())
}

/// Relays bytes between an allowed client and its upstream until either closes, the link
/// idles out, or a quarantine deactivates `generation`; then the audit `close` event.
pub(super) async fn tunnel<IO>(
    client: IO,
    upstream: TcpStream,
    ctx: &Ctx,
    kind: &'static str,
    host: &str,
    port: u16,
    generation: u64,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let revoked = ctx.policy.revoked(generation);
    let quarantined = async {
        revoked.await;
        Outcome::Quarantined
    };
    let relayed = relay(client, upstream, ctx.limits.idle_timeout, quarantined).await;
    let subject = Subject { kind, host, port, request: None };
    audit::closed(&subject, None, (relayed.sent, relayed.received), started.elapsed(), relayed.outcome);
}

/// A CONNECT to an endpoint with an L7 `protocol` and `tls: terminate`: the upstream's
/// addresses are resolved and SSRF-checked now (a refusal is answered to the CONNECT), then
/// `200`, then the client's TLS is accepted with a leaf for its SNI (else the CONNECT host)
/// and each request is judged, its credentials swapped, and forwarded over verified TLS to
/// those addresses only.
async fn intercept_tls(
    mut req: Request<Incoming>,
    subject: &Subject<'_>,
    engine: &PolicyEngine,
    decision: &L4Decision,
    target: &Target<'_>,
    ctx: &Arc<Ctx>,
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<Body> {
    let (host, port) = (subject.host, subject.port);
    let rule = audit::rule_of(engine, decision);
    let (server_config, session) = match inspection(target, ctx).await {
        Ok(prepared) => prepared,
        Err(refusal) => {
            audit::denied(subject, &refusal, decision.policy.as_deref(), rule);
            return refusal.response(host, port, None);
        }
    };
    audit::allowed(subject, decision.policy.as_deref(), rule, &decision.reason);
    let generation = Some(engine.generation());
    serve_upgraded(&mut req, ctx, permit, host, port, generation, move |io, shutdown| {
        serve_tls(io, server_config, session, shutdown)
    })
}

/// What an intercepted connection to `target` needs: the upstream's addresses resolved
/// and SSRF-checked (dialed later, only those), and the client-side TLS configuration with
/// a leaf for the client's SNI, else for the target's host.
pub(super) async fn inspection(
    target: &Target<'_>,
    ctx: &Ctx,
) -> Result<(Arc<rustls::ServerConfig>, Inspected), Refusal> {
    let (host, port) = (target.host.shown(), target.port);
    let addrs = upstream::resolve(target, ctx.limits.connect_timeout).await?;
    let server_config = ctx.leaves.sni_server_config(host).map_err(|e| {
        Refusal::BadRequest(format!("cannot intercept TLS for {host}: {e}; CONNECT to a DNS name or IP address"))
    })?;
    let (dial_host, timeout) = (host.to_owned(), ctx.limits.connect_timeout);
    let dial: Dial = Arc::new(move || {
        let (host, addrs) = (dial_host.clone(), addrs.clone());
        Box::pin(async move {
            upstream::dial(&host, &addrs, timeout)
                .await
                .map_err(|refusal| std::io::Error::other(refusal.reason().to_owned()))
        })
    });
    let policy = ctx.policy.clone();
    let session = Inspected {
        host: host.to_owned(),
        port,
        policy: Arc::new(move || policy.current()),
        secrets: ctx.secrets.clone(),
        upstream_tls: ctx.upstream_tls.clone(),
        dial,
        connect_timeout: ctx.limits.connect_timeout,
        idle_timeout: ctx.limits.idle_timeout,
        response_timeout: ctx.limits.response_timeout,
    };
    Ok((server_config, session))
}

/// `CONNECT inference.local:443`: no network decision; the connection is served by the
/// inference router with a leaf for `inference.local`. Without routes: 403.
fn inference(mut req: Request<Incoming>, ctx: &Arc<Ctx>, permit: Arc<OwnedSemaphorePermit>) -> Response<Body> {
    let subject = Subject { kind: "connect", host: INFERENCE_HOST, port: 443, request: None };
    let policy = Some(INFERENCE_POLICY);
    let refuse = |refusal: Refusal| {
        audit::denied(&subject, &refusal, policy, None);
        refusal.response(INFERENCE_HOST, 443, None)
    };
    let Some(routes) = ctx.inference.clone() else {
        return refuse(Refusal::Policy {
            reason: "inference.local has no routes in this sandbox; configure them at the gateway or in OPENSHELL_INFERENCE_ROUTES".into(),
            policy: Some(INFERENCE_POLICY.into()),
        });
    };
    let server_config = match ctx.leaves.sni_server_config(INFERENCE_HOST) {
        Ok(config) => config,
        Err(e) => return refuse(Refusal::Unreachable(format!("cannot intercept TLS for {INFERENCE_HOST}: {e}"))),
    };
    audit::allowed(&subject, policy, None, "inference.local is served by the proxy's inference router");
    let session = InferenceSession {
        routes: Arc::new(move || routes.current()),
        upstream_tls: ctx.upstream_tls.clone(),
        connect_timeout: ctx.limits.connect_timeout,
        idle_timeout: ctx.limits.idle_timeout,
        response_timeout: ctx.limits.response_timeout,
    };
    serve_upgraded(&mut req, ctx, permit, INFERENCE_HOST, 443, None, move |io, shutdown| {
        serve_inference_tls(io, server_config, session, shutdown)
    })
}

/// Answers `200` and, once the client's stream is handed over, runs `serve` on it in a
/// task of the shutdown (holding the connection permit until it ends). A connection
/// decided under a policy generation (`Some`, not `inference.local`) is closed when a
/// quarantine deactivates that generation.
fn serve_upgraded<F, Fut>(
    req: &mut Request<Incoming>,
    ctx: &Arc<Ctx>,
    permit: Arc<OwnedSemaphorePermit>,
    host: &str,
    port: u16,
    generation: Option<u64>,
    serve: F,
) -> Response<Body>
where
    F: FnOnce(TokioIo<Upgraded>, Shutdown) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), SessionError>> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(req);
    let (host, ctx_owned) = (host.to_owned(), ctx.clone());
    ctx.shutdown.spawn(async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(upgraded) => serve_session(TokioIo::new(upgraded), &ctx_owned, &host, port, generation, serve).await,
            Err(e) => tracing::debug!(host, port, error = %e, "CONNECT client left before the tunnel opened"),
        }
    });
    Response::new(empty())
}

/// Runs `serve` on an accepted client stream of an inspected connection. One decided under
/// a policy generation (`Some`, not `inference.local`) is closed when a quarantine
/// deactivates that generation.
pub(super) async fn serve_session<IO, F, Fut>(
    io: IO,
    ctx: &Ctx,
    host: &str,
    port: u16,
    generation: Option<u64>,
    serve: F,
) where
    F: FnOnce(IO, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), SessionError>>,
{
    let started = Instant::now();
    let shutdown = ctx.shutdown.clone();
    let served = match generation {
        Some(generation) => ctx.policy.serve_pinned(generation, &shutdown, |pinned| serve(io, pinned)).await,
        None => Some(serve(io, shutdown).await),
    };
    match served {
        Some(Ok(())) => {}
        Some(Err(e @ (SessionError::ClientHandshake { .. } | SessionError::HandshakeTimeout { .. }))) => {
            tracing::warn!(host, port, "{e} (the client must trust ca-bundle.pem from the shared TLS dir)")
        }
        Some(Err(e)) => tracing::debug!(host, port, "{e}"),
        None => tracing::info!(host, port, "inspected connection cut: the policy that allowed it is quarantined"),
    }
    tracing::debug!(host, port, duration_ms = started.elapsed().as_millis() as u64, "inspected connection closed");
}
