//! The gateway forward: every connection accepted on `OPENSHELL_FORWARD_LISTEN` is
//! relayed as bytes (TLS stays end to end) to the gateway's host:port, trying
//! `OPENSHELL_GATEWAY_FALLBACK_HOSTS` in order when the host does not resolve or
//! refuses, with one log line per address tried.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::policy::host::unbracketed;
use crate::shutdown::Shutdown;

use super::accept::AcceptBackoff;
use super::relay::relay;

/// Where the forward goes and how long it may wait.
#[derive(Clone, Debug)]
pub struct ForwardTarget {
    /// The gateway's host, then the fallback hosts, in order.
    pub hosts: Vec<String>,
    /// The gateway's port (every host is tried on it).
    pub port: u16,
    /// Bound on each resolution and each connection attempt.
    pub connect_timeout: Duration,
    /// Silence after which a relay is closed.
    pub idle_timeout: Duration,
}

/// Accepts on `listener` until shutdown.
pub async fn serve(listener: TcpListener, target: ForwardTarget, shutdown: Shutdown) {
    let target = Arc::new(target);
    let mut backoff = AcceptBackoff::new("gateway forward");
    while let Some((client, peer)) = backoff.next(&listener, &shutdown).await {
        let target = target.clone();
        shutdown.spawn(async move {
            let Some((upstream, addr)) = connect(&target).await else {
                tracing::warn!(client = %peer, hosts = ?target.hosts, port = target.port, "gateway forward: no host reached; connection closed");
                return;
            };
            let _ = client.set_nodelay(true);
            let relayed = relay(client, upstream, target.idle_timeout, std::future::pending()).await;
            tracing::debug!(client = %peer, gateway = %addr, sent = relayed.sent, received = relayed.received, outcome = relayed.outcome.as_str(), "gateway forward closed");
        });
    }
}

/// The first host, in order, that resolves and accepts; logs every attempt.
pub async fn connect(target: &ForwardTarget) -> Option<(TcpStream, SocketAddr)> {
    let timeout = target.connect_timeout;
    for host in &target.hosts {
        let bare = unbracketed(host);
        let addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, tokio::net::lookup_host((bare, target.port)))
            .await
        {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => {
                tracing::warn!(host = %host, port = target.port, error = %e, "gateway forward: host does not resolve");
                continue;
            }
            Err(_) => {
                tracing::warn!(host = %host, port = target.port, "gateway forward: resolution timed out");
                continue;
            }
        };
        for addr in addrs {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::info!(host = %host, address = %addr, "gateway forward: connected");
                    return Some((stream, addr));
                }
                Ok(Err(e)) => {
                    tracing::warn!(host = %host, address = %addr, error = %e, "gateway forward: address refused")
                }
                Err(_) => tracing::warn!(host = %host, address = %addr, "gateway forward: connect timed out"),
            }
        }
    }
    None
}
