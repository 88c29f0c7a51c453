//! The end of an inspected connection: the client's stream is metered (bytes each way as
//! they cross the wire, TLS records included), requests are counted, and exactly one audit
//! `close` event is written when the connection ends, however it ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::SessionError;
use crate::proxy::audit::{self, Outcome, Subject};
use crate::shutdown::Shutdown;

/// What one connection carried: bytes read from and written to the client, and requests.
#[derive(Default)]
pub(in crate::proxy::l7) struct Tally {
    from_client: AtomicU64,
    to_client: AtomicU64,
    requests: AtomicU64,
}

impl Tally {
    /// Counts one request (judged, refused or forwarded).
    pub(in crate::proxy::l7) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves the metered client stream with `serve`, then writes the connection's `close`
/// event for `host:port` (kind `connect`, like the CONNECT's `allow` event).
pub(in crate::proxy::l7) async fn served_then_closed<IO, F, Fut>(
    raw: IO,
    host: &str,
    port: u16,
    shutdown: &Shutdown,
    serve: F,
) -> Result<(), SessionError>
where
    F: FnOnce(Metered<IO>, Arc<Tally>) -> Fut,
    Fut: Future<Output = Result<(), SessionError>>,
{
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let result = serve(Metered { inner: raw, tally: tally.clone() }, tally.clone()).await;
    let outcome = match &result {
        Ok(()) if shutdown.is_triggered() => Outcome::Shutdown,
        Ok(()) => Outcome::Eof,
        Err(SessionError::HandshakeTimeout { .. }) => Outcome::Idle,
        Err(SessionError::Http { source, .. }) if source.is_timeout() => Outcome::Idle,
        Err(_) => Outcome::Error,
    };
    let subject = Subject { kind: "connect", host, port, request: None };
    let bytes = (tally.from_client.load(Ordering::Relaxed), tally.to_client.load(Ordering::Relaxed));
    let requests = tally.requests.load(Ordering::Relaxed);
    audit::inspected_closed(&subject, bytes, started.elapsed(), outcome, requests);
    result
}

/// The client's stream, counting bytes read from it and written to it (per call, not per
/// byte).
pub(in crate::proxy::l7) struct Metered<IO> {
    inner: IO,
    tally: Arc<Tally>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Metered<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.tally.from_client.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Metered<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.tally.to_client.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.tally.to_client.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions() {
        let (mut peer, side) = tokio::io::duplex(64);
        let tally = Arc::new(Tally::default());
        let mut metered = Metered { inner: side, tally: tally.clone() };
        peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        metered.read_exact(&mut buf).await.unwrap();
        metered.write_all(b"world!").await.unwrap();
        let mut back = [0u8; 6];
        peer.read_exact(&mut back).await.unwrap();
        assert_eq!((tally.from_client.load(Ordering::Relaxed), tally.to_client.load(Ordering::Relaxed)), (5, 6));
    }
}
