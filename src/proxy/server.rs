//! The proxy listener: accept (client allow-list, connection cap with a fast 503), then
//! one hyper HTTP/1 connection per client with a header-read timeout, a head-size
//! limit (431) and upgrades for CONNECT; graceful close on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::shutdown::Shutdown;
use crate::telemetry::ocsf::{Scope, scoped};

use super::absolute::{self, Kept};
use super::accept::AcceptBackoff;
use super::answer;
use super::connect;
use super::ctx::Ctx;

/// The smallest read buffer hyper accepts.
const HYPER_MIN_BUF: usize = 8192;
/// How long the 503 answer may take to write and the client to finish sending.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Accepts on `listener` until shutdown. Warns once when it listens beyond loopback with
/// no client allow-list: then anything that reaches the port may use the sandbox's
/// credentials through the proxy.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, allowed_clients: Vec<IpNet>) {
    if let Ok(listen) = listener.local_addr()
        && allowed_clients.is_empty()
        && !listen.ip().to_canonical().is_loopback()
    {
        tracing::warn!(
            %listen,
            "the proxy listens beyond loopback and accepts any client; set OPENSHELL_PROXY_ALLOWED_CLIENTS (--allowed-clients) to the agent's subnet"
        );
    }
    let permits = Arc::new(Semaphore::new(ctx.limits.max_connections));
    let shutdown = ctx.shutdown.clone();
    let mut backoff = AcceptBackoff::new("proxy");
    while let Some((stream, peer)) = backoff.next(&listener, &shutdown).await {
        if !allowed_clients.is_empty() && !allowed_clients.iter().any(|net| net.contains(&peer.ip().to_canonical())) {
            tracing::warn!(client = %peer, "client is not in OPENSHELL_PROXY_ALLOWED_CLIENTS; connection closed");
            continue;
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                shutdown.spawn(scoped(Scope::new(Some(peer)), connection(stream, peer, ctx.clone(), permit)));
            }
            Err(_) => {
                tracing::warn!(client = %peer, limit = ctx.limits.max_connections, "connection limit reached; answered 503");
                shutdown.spawn(over_capacity(stream));
            }
        }
    }
}

/// Serves one client connection until it closes, or gracefully at shutdown or when a
/// quarantine deactivates the policy generation in force when it was accepted.
async fn connection(stream: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>, permit: OwnedSemaphorePermit) {
    let (policy, shutdown) = (ctx.policy.clone(), ctx.shutdown.clone());
    let generation = policy.current().generation();
    let served = policy.serve_pinned(generation, &shutdown, |pinned| serve_client(stream, peer, ctx, permit, pinned));
    if served.await.is_none() {
        tracing::debug!(client = %peer, "client connection cut: the policy it was accepted under is quarantined");
    }
}

async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    permit: OwnedSemaphorePermit,
    stop: Shutdown,
) {
    let _ = stream.set_nodelay(true);
    let permit = Arc::new(permit);
    let kept = Arc::new(Kept::default());
    let service_ctx = ctx.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = service_ctx.clone();
        let permit = permit.clone();
        let kept = kept.clone();
        async move {
            let response = if req.method() == Method::CONNECT {
                connect::handle(req, ctx, permit).await
            } else {
                absolute::handle(req, ctx, kept).await
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .max_buf_size(ctx.limits.max_head_bytes.max(HYPER_MIN_BUF))
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.signalled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(ctx.limits.shutdown_grace, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

/// Writes the 503 answer, lets the client finish sending briefly, then closes.
async fn over_capacity(mut stream: TcpStream) {
    let answer = async {
        stream.write_all(&answer::over_capacity()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, answer).await;
}
