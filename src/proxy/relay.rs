//! Byte relay of a tunnel: `copy_bidirectional` (half-close forwarded) between two
//! streams, with byte counts and an idle timeout. Work is per read call, never per byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::audit::Outcome;

/// Buffer size of each direction: large enough for bulk throughput, small enough that
/// a thousand idle tunnels stay within the memory target.
const BUFFER: usize = 32 * 1024;

/// How a relay ended and what it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes from the client to the upstream.
    pub sent: u64,
    /// Bytes from the upstream to the client.
    pub received: u64,
    /// `Eof` (both sides closed), `Idle` (timed out), `Error`, or what stopped it.
    pub outcome: Outcome,
}

/// Relays until both directions close, the link is silent for `idle`, an error, or `stop`
/// completes (its output is the outcome, like `Quarantined`).
pub async fn relay<A, B>(client: A, upstream: B, idle: Duration, stop: impl Future<Output = Outcome>) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity { base: Instant::now(), last_ms: AtomicU64::new(0) });
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let mut client = Metered { inner: client, bytes: sent.clone(), activity: activity.clone() };
    let mut upstream = Metered { inner: upstream, bytes: received.clone(), activity: activity.clone() };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER);
    let outcome = tokio::select! {
        result = copy => if result.is_ok() { Outcome::Eof } else { Outcome::Error },
        () = activity.idle_for(idle) => Outcome::Idle,
        outcome = stop => outcome,
    };
    Relayed { sent: sent.load(Ordering::Relaxed), received: received.load(Ordering::Relaxed), outcome }
}

/// The time of the last successful read on either side.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once nothing was read for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that counts what is read from it and records activity.
struct Metered<S> {
    inner: S,
    bytes: Arc<AtomicU64>,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        let (mut client, client_side) = tokio::io::duplex(1024);
        let (upstream_side, mut upstream) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(client_side, upstream_side, Duration::from_secs(5), pending()));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello", "the client's half-close reaches the upstream");
        upstream.write_all(b"world!").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!", "the other direction still flows after the half-close");
        let relayed = task.await.unwrap();
        assert_eq!(relayed, Relayed { sent: 5, received: 6, outcome: Outcome::Eof });
    }

    #[tokio::test]
    async fn a_silent_tunnel_ends_at_the_idle_timeout() {
        let (_client, client_side) = tokio::io::duplex(64);
        let (upstream_side, _upstream) = tokio::io::duplex(64);
        let started = std::time::Instant::now();
        let relayed = relay(client_side, upstream_side, Duration::from_millis(100), pending()).await;
        assert_eq!(relayed.outcome, Outcome::Idle);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_stopped_relay_ends_with_the_stop_outcome_and_its_counts() {
        let (mut client, client_side) = tokio::io::duplex(64);
        let (upstream_side, mut upstream) = tokio::io::duplex(64);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay(client_side, upstream_side, Duration::from_secs(5), async {
            let _ = stopped.await;
            Outcome::Quarantined
        }));
        client.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        upstream.read_exact(&mut got).await.unwrap();
        stop.send(()).unwrap();
        let relayed = task.await.unwrap();
        assert_eq!(relayed, Relayed { sent: 3, received: 0, outcome: Outcome::Quarantined });
        assert_eq!(client.read(&mut got).await.unwrap(), 0, "the client's side is closed");
    }
}
