//! A streamed body that counts the bytes it carries, and, for a forwarded response, writes
//! the audit `close` event (bytes both ways, duration) when it ends or is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Called once at the end with the bytes counted and how the body ended.
pub type OnEnd = Box<dyn FnOnce(u64, &'static str) + Send + Sync>;

/// A hyper body with a byte counter (shared, so another body's end can read it).
pub struct Counted {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
}

impl Counted {
    /// Counts `inner` into `bytes`; `on_end` runs once when the body ends or is dropped.
    pub fn new(inner: Incoming, bytes: Arc<AtomicU64>, on_end: Option<OnEnd>) -> Self {
        Counted { inner, bytes, on_end }
    }

    fn finish(&mut self, outcome: &'static str) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes.load(Ordering::Relaxed), outcome);
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("error"),
            Poll::Ready(None) => self.finish("eof"),
            Poll::Pending => {}
        }
        poll
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
        let outcome = if self.inner.is_end_stream() { "eof" } else { "aborted" };
        self.finish(outcome);
    }
}
