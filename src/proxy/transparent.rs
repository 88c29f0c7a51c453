//! The transparent listeners (docs/transparent.md): a connection to a synthetic address is
//! mapped back to the name the policy DNS handed it out for, then decided exactly as a
//! CONNECT to that name and port: `protocol: tcp` relayed as bytes; TLS intercepted for
//! inspected endpoints (SNI must be the name) or relayed (SNI checked); plain HTTP judged
//! request by request by its `Host`. Anything else, and every refusal, is a reset.

mod http;
mod ports;
mod sniff;

pub use ports::serve_ports;
pub use sniff::{Opening, Replay, opening};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::answer::Refusal;
use super::audit::{self, Subject};
use super::connect::{inspection, serve_session, tunnel};
use super::ctx::Ctx;
use super::dns::PolicyDns;
use super::l7::session::serve_tls;
use super::upstream::{self, Target};
use crate::policy::host::{DestinationHost, normalize_destination};
use crate::policy::model::Endpoint;
use crate::telemetry::ocsf::{Scope, scoped};

/// What the transparent listeners share.
pub struct Transparent {
    /// The proxy's context: policy, limits, CA, credentials, upstream TLS.
    pub ctx: Arc<Ctx>,
    /// The policy DNS: its address table and the ports of the policy in force.
    pub dns: Arc<PolicyDns>,
    /// Clients allowed to connect (empty: any), as for the proxy listener.
    pub allowed_clients: Vec<IpNet>,
    permits: Arc<Semaphore>,
}

impl Transparent {
    /// Listeners' shared state; at most `ctx.limits.max_connections` connections at once.
    pub fn new(ctx: Arc<Ctx>, dns: Arc<PolicyDns>, allowed_clients: Vec<IpNet>) -> Self {
        let permits = Arc::new(Semaphore::new(ctx.limits.max_connections));
        Transparent { ctx, dns, allowed_clients, permits }
    }

    /// Takes one accepted connection: refused at once (reset) unless it comes from an
    /// allowed client to a synthetic address, within the connection limit; else served in
    /// a task of the shutdown.
    pub fn accept(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let listed = self.allowed_clients.is_empty()
            || self.allowed_clients.iter().any(|net| net.contains(&peer.ip().to_canonical()));
        if !listed {
            tracing::warn!(client = %peer, "client is not in OPENSHELL_PROXY_ALLOWED_CLIENTS; transparent connection reset");
            return reset(stream);
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, limit = self.ctx.limits.max_connections, "transparent connection limit reached; reset");
            return reset(stream);
        };
        let this = self.clone();
        let scope = Scope::new(Some(peer));
        self.ctx.shutdown.spawn(scoped(scope, async move { this.connection(stream, permit).await }));
    }

    async fn connection(&self, stream: TcpStream, _permit: OwnedSemaphorePermit) {
        let Ok(local) = stream.local_addr() else { return };
        let port = local.port();
        let map = self.dns.map();
        let addr = match local.ip().to_canonical() {
            IpAddr::V4(addr) if map.range().contains(&addr) => addr,
            other => {
                tracing::debug!(local = %other, port, "transparent listener: not a synthetic address; reset");
                return reset(stream);
            }
        };
        let Some(name) = map.name_of(addr, Instant::now()) else {
            let reason = format!(
                "{addr} is not an address the policy DNS handed out, or its name expired; resolve the name again"
            );
            let shown = addr.to_string();
            let subject = Subject { kind: "transparent", host: &shown, port, request: None };
            audit::bypass(&subject, "connection to an address the policy DNS did not hand out", &reason, None, None);
            return reset(stream);
        };
        // The policy DNS hands out only valid, normalised names.
        let Some(destination) = DestinationHost::parse(&name) else { return reset(stream) };
        let ctx = &self.ctx;
        let engine = ctx.policy.current();
        let decision = engine.network_to(&destination, port);
        let subject = Subject { kind: "transparent", host: &name, port, request: None };
        let (policy, rule) = (decision.policy.as_deref(), audit::rule_of(&engine, &decision));
        if !decision.allow {
            let refusal = Refusal::Policy { reason: decision.reason.clone(), policy: decision.policy.clone() };
            audit::denied(&subject, &refusal, policy, rule);
            return reset(stream);
        }
        let endpoints: Vec<&Endpoint> = engine.matched(&decision).collect();
        let generation = engine.generation();
        let inspected = endpoints.iter().any(|e| e.inspects());
        if !inspected && endpoints.iter().any(|e| e.is_raw_tcp()) {
            let Some(upstream) = self.open(&subject, &destination, &endpoints, policy, rule).await else {
                return reset(stream);
            };
            audit::allowed(&subject, policy, rule, &decision.reason);
            return tunnel(stream, upstream, ctx, "transparent", &name, port, generation).await;
        }
        let (opening, io) = match opening(stream, ctx.limits.header_timeout).await {
            Ok(opened) => opened,
            Err(e) => return tracing::debug!(host = %name, port, error = %e, "transparent connection: no opening"),
        };
        match opening {
            Opening::Tls { sni } => {
                if let Some(sni) = sni.filter(|sni| normalize_destination(sni).as_deref() != Some(&*name)) {
                    let reason = format!(
                        "the TLS client asked for `{sni}`, but this connection goes to {name}, the name it resolved"
                    );
                    audit::bypass(&subject, "TLS name other than the name resolved", &reason, policy, rule);
                    return;
                }
                if endpoints.iter().any(|e| e.intercepts_tls()) {
                    let target =
                        Target { host: &destination, port, endpoints: &endpoints, allow_loopback: ctx.allow_loopback };
                    let (server_config, session) = match inspection(&target, ctx).await {
                        Ok(prepared) => prepared,
                        Err(refusal) => return audit::denied(&subject, &refusal, policy, rule),
                    };
                    audit::allowed(&subject, policy, rule, &decision.reason);
                    let serve = move |io, shutdown| serve_tls(io, server_config, session, shutdown);
                    return serve_session(io, ctx, &name, port, Some(generation), serve).await;
                }
                let Some(upstream) = self.open(&subject, &destination, &endpoints, policy, rule).await else { return };
                audit::allowed(&subject, policy, rule, &decision.reason);
                tunnel(io, upstream, ctx, "transparent", &name, port, generation).await;
            }
            Opening::Http => {
                let (name, ctx) = (name.clone(), ctx.clone());
                let served = self.ctx.policy.serve_pinned(generation, &self.ctx.shutdown, move |pinned| {
                    http::serve(io, name, port, ctx, pinned)
                });
                if served.await.is_none() {
                    tracing::debug!(
                        port,
                        "transparent HTTP connection cut: the policy it was accepted under is quarantined"
                    );
                }
            }
            Opening::Other => {
                let reason = format!(
                    "the client sent neither TLS nor HTTP; raw TCP to {name}:{port} needs an endpoint with `protocol: tcp`"
                );
                audit::denied(&subject, &Refusal::Policy { reason, policy: None }, policy, rule);
            }
        }
    }

    /// The upstream, resolved and SSRF-checked like a CONNECT's; a refusal is audited.
    async fn open(
        &self,
        subject: &Subject<'_>,
        destination: &DestinationHost,
        endpoints: &[&Endpoint],
        policy: Option<&str>,
        rule: Option<&str>,
    ) -> Option<TcpStream> {
        let ctx = &self.ctx;
        let target = Target { host: destination, port: subject.port, endpoints, allow_loopback: ctx.allow_loopback };
        match upstream::open(&target, ctx.limits.connect_timeout).await {
            Ok(stream) => Some(stream),
            Err(refusal) => {
                audit::denied(subject, &refusal, policy, rule);
                None
            }
        }
    }
}

/// Closes with a reset, so the client's connect or first read fails at once.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
