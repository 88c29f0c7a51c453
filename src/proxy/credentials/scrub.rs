//! No reflection: every secret value (and every encoded form the proxy wrote into the
//! request) is replaced by the text the agent knows, in response headers and in response
//! bodies as they stream. One multi-pattern automaton; the end of a chunk that could be the
//! start of a value waits for the next chunk (at most `longest - 1` bytes), so a value split
//! across chunks is still caught, and everything else goes on at once (server-sent events).

use std::collections::VecDeque;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, Input, MatchKind};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};

use crate::proxy::answer::{self, Body as AnswerBody};
use hyper::ext::ReasonPhrase;

/// Patterns (values) and what replaces each (placeholders).
pub struct Scrubber {
    automaton: AhoCorasick,
    patterns: Vec<Vec<u8>>,
    replacements: Vec<Bytes>,
    /// The longest pattern's length minus one: what is held back between chunks.
    keep: usize,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber").field("patterns", &self.replacements.len()).finish_non_exhaustive()
    }
}

/// Replaced output, piece by piece: a range of the input, or a replacement.
enum Piece<'a> {
    Input(Range<usize>),
    Replacement(&'a Bytes),
}

impl Scrubber {
    /// A scrubber for `(pattern, replacement)` pairs; `None` when no pattern is non-empty.
    /// Longer patterns win where two match at the same place.
    pub fn new(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Option<Self> {
        let (patterns, replacements): (Vec<Vec<u8>>, Vec<Bytes>) =
            pairs.into_iter().filter(|(p, _)| !p.is_empty()).map(|(p, r)| (p, Bytes::from(r))).unzip();
        let keep = patterns.iter().map(Vec::len).max()? - 1;
        let automaton = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns).ok()?;
        Some(Scrubber { automaton, patterns, replacements, keep })
    }

    /// The length of the longest end of `buf` that is the start of a pattern (not a whole
    /// one): what must wait for more input. A match starting before it is complete.
    fn pending(&self, buf: &[u8]) -> usize {
        let mut best = 0;
        for p in &self.patterns {
            let longest = (p.len() - 1).min(buf.len());
            if let Some(k) = (best + 1..=longest).rev().find(|&k| buf.ends_with(&p[..k])) {
                best = k;
            }
        }
        best
    }

    /// Scans `buf[from..]` and hands out the scrubbed output of the matches that start
    /// before `stop`; returns where the output ends in `buf` (the caller emits the rest).
    fn scan(&self, buf: &[u8], from: usize, stop: usize, mut emit: impl FnMut(Piece<'_>)) -> usize {
        let mut at = from;
        for m in self.automaton.find_iter(Input::new(buf).span(from..buf.len())) {
            if m.start() >= stop {
                break;
            }
            if m.start() > at {
                emit(Piece::Input(at..m.start()));
            }
            emit(Piece::Replacement(&self.replacements[m.pattern().as_usize()]));
            at = m.end();
        }
        at
    }

    /// `text` with every pattern replaced; `None` when none occurs.
    pub fn replace_all(&self, text: &[u8]) -> Option<Vec<u8>> {
        if !self.automaton.is_match(text) {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() + 32);
        let end = self.scan(text, 0, text.len(), |piece| extend(&mut out, text, piece));
        out.extend_from_slice(&text[end..]);
        Some(out)
    }

    /// Scrubs header values in place; a header whose name holds a pattern is removed.
    pub fn headers(&self, headers: &mut HeaderMap) {
        let named: Vec<_> = headers.keys().filter(|n| self.automaton.is_match(n.as_str())).cloned().collect();
        for name in named {
            headers.remove(name);
        }
        for value in headers.values_mut() {
            if let Some(new) = self.replace_all(value.as_bytes()) {
                // Placeholders are printable ASCII: a value stays valid.
                *value = HeaderValue::from_bytes(&new).unwrap_or_else(|_| HeaderValue::from_static(""));
            }
        }
    }

    /// Scrubs an HTTP/1 reason phrase (`HTTP/1.1 401 Bad token <value>`), which hyper keeps
    /// in the answer's extensions and writes back to an HTTP/1.1 client as it came.
    pub fn reason(&self, extensions: &mut http::Extensions) {
        let Some(phrase) = extensions.get::<ReasonPhrase>() else { return };
        if let Some(new) = self.replace_all(phrase.as_bytes()) {
            match ReasonPhrase::try_from(new) {
                Ok(scrubbed) => extensions.insert(scrubbed),
                Err(_) => extensions.remove::<ReasonPhrase>(),
            };
        }
    }
}

fn extend(out: &mut Vec<u8>, input: &[u8], piece: Piece<'_>) {
    match piece {
        Piece::Input(range) => out.extend_from_slice(&input[range]),
        Piece::Replacement(bytes) => out.extend_from_slice(bytes),
    }
}

/// `response` scrubbed for forwarding: headers, HTTP/1 reason phrase and body (streamed,
/// `Content-Length` dropped) unless the answer has none (`bodiless`: a HEAD request, or a
/// 1xx/204/304 status). `Err` (the reason) when `refuse_compressed` and the answer is
/// compressed (any `Content-Encoding` coding but `identity`, any `Transfer-Encoding` coding
/// but `chunked`, in any of the headers): a compressed body cannot be checked for a secret.
pub fn answer(
    scrubber: &Arc<Scrubber>,
    mut response: Response<Incoming>,
    refuse_compressed: bool,
    bodiless: bool,
) -> Result<Response<AnswerBody>, String> {
    if refuse_compressed && let Some((name, coding)) = compressed(response.headers()) {
        return Err(format!(
            "it answered with `{name}: {coding}` to a request carrying a credential although the proxy asked for `identity`; a compressed answer cannot be checked for a reflected secret"
        ));
    }
    scrubber.headers(response.headers_mut());
    scrubber.reason(response.extensions_mut());
    let status = response.status();
    if bodiless || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(response.map(answer::boxed));
    }
    response.headers_mut().remove(header::CONTENT_LENGTH);
    let scrubber = scrubber.clone();
    Ok(response.map(|body| answer::boxed(Scrubbed::new(body, scrubber))))
}

/// The first coding of `headers` that is a compression: a `Content-Encoding` other than
/// `identity`, or a `Transfer-Encoding` other than `chunked` (hyper does not decode those).
/// Every header of each name is read, every comma-separated coding in it.
fn compressed(headers: &HeaderMap) -> Option<(&'static str, String)> {
    let fields = [
        (header::CONTENT_ENCODING, "Content-Encoding", "identity"),
        (header::TRANSFER_ENCODING, "Transfer-Encoding", "chunked"),
    ];
    for (name, shown, plain) in fields {
        for value in headers.get_all(&name) {
            let text = String::from_utf8_lossy(value.as_bytes());
            let coded = text.split(',').map(str::trim).any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(plain));
            if coded {
                return Some((shown, text.chars().take(32).collect()));
            }
        }
    }
    None
}

/// A response body with every pattern of `scrubber` replaced as it streams. Trailers are
/// scrubbed too. Its length is unknown (scrubbing may change it).
pub struct Scrubbed<B> {
    inner: B,
    scrubber: std::sync::Arc<Scrubber>,
    /// The tail of the stream seen but not yet sent (shorter than the longest pattern).
    carry: Vec<u8>,
    ready: VecDeque<Frame<Bytes>>,
    ended: bool,
}

impl<B> Scrubbed<B> {
    /// Scrubs `inner` with `scrubber`.
    pub fn new(inner: B, scrubber: std::sync::Arc<Scrubber>) -> Self {
        Scrubbed { inner, scrubber, carry: Vec::new(), ready: VecDeque::new(), ended: false }
    }

    /// Queues the scrubbed output of `chunk` that can be decided now; keeps the rest.
    fn push(&mut self, chunk: Bytes) {
        let s = self.scrubber.clone();
        let keep = s.keep;
        if chunk.len() <= keep * 2 {
            // Small: join with the held-back tail and decide what can be.
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(&chunk);
            let stop = joined.len() - self.scrubber.pending(&joined);
            let mut out = Vec::with_capacity(joined.len());
            let at = s.scan(&joined, 0, stop, |piece| extend(&mut out, &joined, piece));
            let split = at.max(stop);
            out.extend_from_slice(&joined[at..split]);
            self.carry = joined[split..].to_vec();
            self.queue(Bytes::from(out));
            return;
        }
        // The held-back tail with the chunk's first `keep` bytes: every match that starts
        // in the tail ends in this window.
        let mut window = std::mem::take(&mut self.carry);
        let tail = window.len();
        window.extend_from_slice(&chunk[..keep]);
        let mut out = Vec::with_capacity(tail);
        let at = s.scan(&window, 0, tail, |piece| extend(&mut out, &window, piece));
        if at < tail {
            out.extend_from_slice(&window[at..tail]);
        }
        self.queue(Bytes::from(out));
        // The chunk itself, from where the tail's matches ended, without copying it.
        let from = at.max(tail) - tail;
        let stop = chunk.len() - s.pending(&chunk);
        let mut pieces = Vec::new();
        let at = s.scan(&chunk, from, stop, |piece| {
            pieces.push(match piece {
                Piece::Input(range) => chunk.slice(range),
                Piece::Replacement(bytes) => bytes.clone(),
            })
        });
        let split = at.max(stop);
        pieces.push(chunk.slice(at..split));
        for piece in pieces {
            self.queue(piece);
        }
        self.carry = chunk[split..].to_vec();
    }

    /// Queues what is held back, scrubbed (the stream ended).
    fn flush(&mut self) {
        let carry = std::mem::take(&mut self.carry);
        let out = self.scrubber.replace_all(&carry).unwrap_or(carry);
        self.queue(Bytes::from(out));
    }

    fn queue(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.ready.push_back(Frame::data(bytes));
        }
    }
}

impl<B> Body for Scrubbed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(chunk) => self.push(chunk),
                    Err(frame) => {
                        self.flush();
                        if let Ok(mut trailers) = frame.into_trailers() {
                            self.scrubber.headers(&mut trailers);
                            self.ready.push_back(Frame::trailers(trailers));
                        }
                    }
                },
                Poll::Ready(None) => {
                    self.flush();
                    self.ended = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.ready.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests;
