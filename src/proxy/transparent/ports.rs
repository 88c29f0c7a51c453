//! One listener per port of the policy in force, on the unspecified address: with the
//! synthetic range routed to the proxy as its own (`local`), a connection to any synthetic
//! address on that port arrives here, its destination in `local_addr`. The set follows the
//! policy: a reload opens the new ports and closes the ones no endpoint names any more.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};

use super::Transparent;
use crate::proxy::accept::AcceptBackoff;
use crate::shutdown::Shutdown;

/// Listens on `bind` (the unspecified address in a sandbox) for every port of the policy in
/// force until shutdown. A port that cannot be bound (another listener of the proxy has it)
/// is warned about once per policy generation and not served.
pub async fn serve_ports(transparent: Arc<Transparent>, bind: IpAddr, shutdown: Shutdown) {
    let mut generations = transparent.ctx.policy.subscribe();
    let mut open: BTreeMap<u16, Shutdown> = BTreeMap::new();
    loop {
        let names = transparent.dns.names();
        let wanted = names.ports();
        open.retain(|port, stop| {
            let keep = wanted.contains(port);
            if !keep {
                stop.trigger();
                tracing::info!(port, "transparent listener closed: no endpoint names this port any more");
            }
            keep
        });
        let new: Vec<u16> = wanted.iter().copied().filter(|port| !open.contains_key(port)).collect();
        for port in new {
            match listen(SocketAddr::new(bind, port)) {
                Ok(listener) => {
                    let stop = shutdown.child();
                    shutdown.spawn(accept_loop(listener, transparent.clone(), stop.clone()));
                    open.insert(port, stop);
                }
                Err(e) => tracing::warn!(
                    port,
                    error = %e,
                    "cannot listen transparently on this port; clients that ignore the proxy cannot reach it"
                ),
            }
        }
        tracing::debug!(generation = names.generation(), ports = ?open.keys().collect::<Vec<_>>(), "transparent ports");
        tokio::select! {
            () = shutdown.signalled() => return,
            changed = generations.changed() => if changed.is_err() { return },
        }
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, transparent: Arc<Transparent>, stop: Shutdown) {
    let mut backoff = AcceptBackoff::new("transparent");
    while let Some((stream, peer)) = backoff.next(&listener, &stop).await {
        let _ = stream.set_nodelay(true);
        transparent.accept(stream, peer);
    }
}
