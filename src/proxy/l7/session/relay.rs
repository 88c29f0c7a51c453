//! After a `101`: bytes copied both ways between the upgraded client and upstream
//! connections until either side closes or nothing moved for the idle bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Relays the upgraded connections; ends when either side closes, after `idle` without a
/// byte in either direction, or when an upgrade does not complete within `idle`.
pub(super) async fn relay_upgraded(client: OnUpgrade, upstream: OnUpgrade, host: &str, idle: Duration) {
    let upgraded = tokio::time::timeout(idle, async { tokio::try_join!(client, upstream) }).await;
    let (client, upstream) = match upgraded {
        Ok(Ok(both)) => both,
        Ok(Err(e)) => return tracing::debug!(host, "upgrade did not complete: {e}"),
        Err(_) => return tracing::debug!(host, "upgrade did not complete in time"),
    };
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut upstream_read, mut upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let both = async {
        tokio::join!(
            pump(&mut client_read, &mut upstream_write, &last, started),
            pump(&mut upstream_read, &mut client_write, &last, started)
        )
    };
    tokio::select! {
        (sent, received) = both => tracing::debug!(host, sent, received, "upgraded connection closed"),
        () = idle_for(&last, started, idle) => tracing::debug!(host, idle_secs = idle.as_secs(), "upgraded connection idle, closed"),
    }
    // Close both sides cleanly (TLS close_notify), bounded.
    let close = async { tokio::join!(client_write.shutdown(), upstream_write.shutdown()) };
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
}

/// Copies until EOF or an error, then shuts the writer down; returns the bytes copied.
async fn pump<R, W>(from: &mut R, to: &mut W, last: &AtomicU64, started: Instant) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut copied = 0;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        copied += n as u64;
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
    copied
}

/// Resolves once nothing was copied for `idle`.
async fn idle_for(last: &AtomicU64, started: Instant, idle: Duration) {
    loop {
        let quiet = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}
