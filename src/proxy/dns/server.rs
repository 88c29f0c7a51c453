//! The DNS listeners: one UDP socket answered datagram by datagram, and TCP (RFC 7766:
//! two-byte length prefix, several queries per connection, closed when idle), both for the
//! allowed clients only, until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::{PolicyDns, Transport, respond};
use crate::proxy::accept::AcceptBackoff;
use crate::shutdown::Shutdown;

/// The largest datagram read; a longer one is cut, fails to parse and gets FORMERR.
const UDP_BUFFER: usize = 4096;
/// A TCP connection that sends no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once; more wait to be accepted.
const TCP_CONNECTIONS: usize = 64;

fn allowed(clients: &[IpNet], peer: SocketAddr) -> bool {
    clients.is_empty() || clients.iter().any(|net| net.contains(&peer.ip().to_canonical()))
}

/// Answers queries on `socket` until shutdown; datagrams from other clients are dropped.
pub async fn serve_udp(socket: UdpSocket, dns: Arc<PolicyDns>, clients: Vec<IpNet>, shutdown: Shutdown) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (n, peer) = tokio::select! {
            () = shutdown.signalled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(pair) => pair,
                // ICMP errors of earlier answers surface here on some kernels: not fatal.
                Err(e) => {
                    tracing::debug!(error = %e, "policy DNS: receive failed");
                    continue;
                }
            },
        };
        if !allowed(&clients, peer) {
            tracing::debug!(client = %peer, "policy DNS: client not in OPENSHELL_PROXY_ALLOWED_CLIENTS; dropped");
            continue;
        }
        if let Some(answer) = respond(&buf[..n], Transport::Udp, dns.as_ref())
            && let Err(e) = socket.send_to(&answer, peer).await
        {
            tracing::debug!(client = %peer, error = %e, "policy DNS: answer not sent");
        }
    }
}

/// Accepts DNS over TCP on `listener` until shutdown.
pub async fn serve_tcp(listener: TcpListener, dns: Arc<PolicyDns>, clients: Vec<IpNet>, shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    let mut backoff = AcceptBackoff::new("policy DNS");
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let Some((stream, peer)) = backoff.next(&listener, &shutdown).await else { return };
        if !allowed(&clients, peer) {
            tracing::debug!(client = %peer, "policy DNS: client not in OPENSHELL_PROXY_ALLOWED_CLIENTS; closed");
            continue;
        }
        let (dns, stop) = (dns.clone(), shutdown.clone());
        shutdown.spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = stop.signalled() => {}
                result = connection(stream, &dns) => if let Err(e) = result {
                    tracing::debug!(client = %peer, error = %e, "policy DNS: TCP connection ended");
                },
            }
        });
    }
}

/// Answers length-prefixed queries until the client closes or idles.
async fn connection(mut stream: TcpStream, dns: &PolicyDns) -> std::io::Result<()> {
    let mut query = Vec::new();
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            query.resize(usize::from(len), 0);
            stream.read_exact(&mut query).await.map(|_| ())
        };
        match tokio::time::timeout(TCP_IDLE, read).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let Some(answer) = respond(&query, Transport::Tcp, dns) else { continue };
        let len = u16::try_from(answer.len()).map_err(std::io::Error::other)?;
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await?;
    }
}
