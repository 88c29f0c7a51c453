//! The proxy's own answer to a request it does not forward (403, 400, 413, 502): sent whole,
//! then the request body the client may still be uploading is read and dropped in the
//! background, bounded, so the exchange ends cleanly. Without it an HTTP/2 stream ends with
//! `RST_STREAM(NO_ERROR)` while the upload runs, which curl reports as error 92 instead of
//! the answer, and an HTTP/1.1 connection closes under the upload (a broken pipe).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::answer::Body as AnswerBody;

/// The most request body bytes read after an answer (a few times the 10 MiB `inference.local`
/// accepts, so a client answered 413 still finishes); past it the stream is reset
/// (`RST_STREAM(NO_ERROR)`, RFC 9113 section 8.1) or the connection closed.
const DRAIN_LIMIT: u64 = 32 * 1024 * 1024;

/// The longest time spent reading a request body after an answer.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The proxy's own `answer`, keeping `request_body` until the answer is sent, then draining it.
pub fn drained(answer: Response<AnswerBody>, request_body: Incoming) -> Response<AnswerBody> {
    answer.map(|answer| Drained { answer, request_body: Some(request_body) }.boxed())
}

/// An answer's body, and the request body to drain once the answer is gone.
struct Drained<B> {
    answer: B,
    request_body: Option<Incoming>,
}

impl<B: Body + Unpin> Body for Drained<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.answer).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.answer.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.answer.size_hint()
    }
}

impl<B> Drop for Drained<B> {
    /// hyper drops the answer once it is written: only then is the request body drained.
    fn drop(&mut self) {
        let Some(body) = self.request_body.take() else { return };
        if body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(tokio::time::timeout(DRAIN_TIME, drain(body)));
        }
    }
}

/// Reads `body` to its end or [`DRAIN_LIMIT`], dropping the bytes.
async fn drain(mut body: Incoming) {
    let mut read = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
        if read > DRAIN_LIMIT {
            return;
        }
    }
}
