//! A streamed body that counts the bytes it carries, ends with an error when it is silent
//! longer than the idle timeout (a stalled peer never holds a connection forever), and,
//! for a forwarded response, writes the audit `close` event (bytes both ways, duration)
//! when it ends or is dropped. A request body also tells when it has been sent, so the
//! response timeout counts from there ([`answer_within`]): a long upload is bounded by the
//! idle timeout between its frames, not by the response timeout. A request body the proxy
//! rebuilt (swapped placeholders) is counted the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use tokio::time::error::Elapsed;
use tokio::time::{Instant, Sleep};

use super::audit::Outcome;

/// Called once at the end with the bytes counted and how the body ended.
pub type OnEnd = Box<dyn FnOnce(u64, Outcome) + Send + Sync>;

/// What a counted body carries: the body as received, or one the proxy rebuilt (a request
/// body whose placeholders were swapped).
pub enum Source {
    /// Streamed as it arrives.
    Incoming(Incoming),
    /// Whole, sent as one frame (`None` once sent).
    Whole(Option<Bytes>),
}

impl From<Incoming> for Source {
    fn from(body: Incoming) -> Self {
        Source::Incoming(body)
    }
}

impl From<Bytes> for Source {
    fn from(bytes: Bytes) -> Self {
        Source::Whole(Some(bytes))
    }
}

impl Source {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self {
            Source::Incoming(body) => Pin::new(body).poll_frame(cx),
            Source::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Incoming(body) => body.is_end_stream(),
            Source::Whole(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Incoming(body) => body.size_hint(),
            Source::Whole(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A hyper body with a byte counter (shared, so another body's end can read it).
pub struct Counted {
    inner: Source,
    bytes: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
    idle: Duration,
    /// Armed when the body first waits, and pushed back after each frame: a body whose
    /// frames are always ready (a small answer in one read) never touches the timer.
    deadline: Option<Pin<Box<Sleep>>>,
}

/// The error a body ends with when it is silent too long.
#[derive(Debug, thiserror::Error)]
#[error("the body was silent for {0:?} (OPENSHELL_PROXY_IDLE_TIMEOUT_SECS)")]
pub struct IdleBody(pub Duration);

impl Counted {
    /// Counts `inner` into `bytes`, failing after `idle` without a frame; `on_end` runs
    /// once when the body ends or is dropped.
    pub fn new(inner: impl Into<Source>, bytes: Arc<AtomicU64>, idle: Duration, on_end: Option<OnEnd>) -> Self {
        Counted { inner: inner.into(), bytes, on_end, idle, deadline: None }
    }

    /// A request body counted into `bytes`, and the signal that it has been sent whole (or
    /// dropped) for [`answer_within`].
    pub fn request(inner: impl Into<Source>, bytes: Arc<AtomicU64>, idle: Duration) -> (Self, BodySent) {
        let (sent, receiver) = oneshot::channel();
        let on_end: OnEnd = Box::new(move |_, _| {
            let _ = sent.send(());
        });
        (Counted::new(inner, bytes, idle, Some(on_end)), BodySent(receiver))
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes.load(Ordering::Relaxed), outcome);
        }
    }
}

/// Fires when a request body made by [`Counted::request`] has ended.
pub struct BodySent(oneshot::Receiver<()>);

/// `send` (a request whose body is `sent`'s) answered within `limit`, counted from when the
/// body has ended, or at once if the answer comes first (as an early refusal does).
pub async fn answer_within<F: Future>(send: F, sent: BodySent, limit: Duration) -> Result<F::Output, Elapsed> {
    let mut send = std::pin::pin!(send);
    tokio::select! {
        answered = &mut send => return Ok(answered),
        _ = sent.0 => {}
    }
    tokio::time::timeout(limit, send).await
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let poll = self.inner.poll_frame(cx);
        match poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                let idle = self.idle;
                if let Some(deadline) = self.deadline.as_mut() {
                    deadline.as_mut().reset(Instant::now() + idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(Outcome::Error);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.finish(Outcome::Eof);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = self.idle;
                match self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle))).as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.finish(Outcome::Idle);
                        Poll::Ready(Some(Err(IdleBody(self.idle).into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let outcome = if self.inner.is_end_stream() { Outcome::Eof } else { Outcome::Aborted };
        self.finish(outcome);
    }
}
