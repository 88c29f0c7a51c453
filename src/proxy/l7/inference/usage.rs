//! The answer of an inference call, watched as it streams to the caller: its token counts
//! (the `usage` of an OpenAI or Anthropic answer, as JSON or as server-sent events) and its
//! end, for the call's audit event. Nothing is held back: every frame passes as it comes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use serde_json::Value;

use crate::proxy::answer::{Body, BodyError};
use crate::telemetry::ocsf::Tokens;

/// The largest JSON answer read for its `usage` (a larger one is passed on unread).
const MAX_JSON: usize = 1 << 20;
/// The longest server-sent event line read for its `usage`.
const MAX_LINE: usize = 256 << 10;

/// Only event lines that name it are parsed.
const USAGE: &[u8] = b"\"usage\"";

/// Called once with the token counts when the answer ends (or is dropped).
pub type OnEnd = Box<dyn FnOnce(Option<Tokens>) + Send + Sync>;

/// An answer body that counts tokens on the way through.
pub struct Metered {
    inner: Body,
    usage: Usage,
    on_end: Option<OnEnd>,
}

impl Metered {
    /// Watches `inner`; `events` when the answer is `text/event-stream`.
    pub fn new(inner: Body, events: bool, on_end: OnEnd) -> Self {
        Metered { inner, usage: Usage { events, ..Usage::default() }, on_end: Some(on_end) }
    }

    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(std::mem::take(&mut self.usage).finish());
        }
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.usage.push(data);
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.end();
    }
}

/// What has been read of the answer.
#[derive(Default)]
struct Usage {
    events: bool,
    /// A JSON answer so far, or the current event line.
    buffer: Vec<u8>,
    /// The buffer's limit was passed: what it holds is not read.
    overflow: bool,
    tokens: Tokens,
}

impl Usage {
    fn push(&mut self, mut data: &[u8]) {
        if !self.events {
            self.overflow |= self.buffer.len() + data.len() > MAX_JSON;
            if !self.overflow {
                self.buffer.extend_from_slice(data);
            }
            return;
        }
        while let Some(end) = data.iter().position(|b| *b == b'\n') {
            self.line(&data[..end]);
            self.line_done();
            data = &data[end + 1..];
        }
        self.line(data);
    }

    fn line(&mut self, part: &[u8]) {
        self.overflow |= self.buffer.len() + part.len() > MAX_LINE;
        if !self.overflow {
            self.buffer.extend_from_slice(part);
        }
    }

    fn line_done(&mut self) {
        let line = std::mem::take(&mut self.buffer);
        if !std::mem::take(&mut self.overflow)
            && let Some(data) = line.strip_prefix(b"data:")
            && data.windows(USAGE.len()).any(|w| w == USAGE)
            && let Ok(event) = serde_json::from_slice::<Value>(data.trim_ascii())
        {
            self.read(&event);
        }
    }

    /// The counts of a JSON answer or the last ones the events carried.
    fn finish(mut self) -> Option<Tokens> {
        if self.events {
            self.line_done();
        } else if !self.overflow
            && let Ok(answer) = serde_json::from_slice::<Value>(&self.buffer)
        {
            self.read(&answer);
        }
        let mut t = self.tokens;
        if t.total.is_none()
            && let (Some(prompt), Some(completion)) = (t.prompt, t.completion)
        {
            t.total = Some(prompt + completion);
        }
        (t != Tokens::default()).then_some(t)
    }

    /// `usage` (OpenAI, Anthropic) or `message.usage` (Anthropic's `message_start`); later
    /// counts replace earlier ones (Anthropic's `message_delta` carries the output tokens).
    fn read(&mut self, value: &Value) {
        let Some(usage) = value.get("usage").or_else(|| value.get("message")?.get("usage")) else { return };
        let count = |names: &[&str]| names.iter().find_map(|n| usage.get(*n)?.as_u64());
        let t = &mut self.tokens;
        t.prompt = count(&["prompt_tokens", "input_tokens"]).or(t.prompt);
        t.completion = count(&["completion_tokens", "output_tokens"]).or(t.completion);
        t.total = count(&["total_tokens"]).or(t.total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(events: bool, chunks: &[&str]) -> Option<Tokens> {
        let mut usage = Usage { events, ..Usage::default() };
        chunks.iter().for_each(|c| usage.push(c.as_bytes()));
        usage.finish()
    }

    #[test]
    fn counts_come_from_json_and_from_events_split_anywhere() {
        let openai = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        let (a, b) = openai.split_at(40);
        let want = Tokens { prompt: Some(12), completion: Some(30), total: Some(42) };
        assert_eq!(tokens(false, &[a, b]), Some(want));
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n\
            data: {\"type\":\"content_block_delta\"}\n\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":20}}\n\n";
        let (a, b) = anthropic.split_at(50);
        let (b, c) = b.split_at(90);
        assert_eq!(tokens(true, &[a, b, c]), Some(Tokens { prompt: Some(7), completion: Some(20), total: Some(27) }));
        assert_eq!(tokens(false, &["{\"choices\":[]}"]), None, "no usage, no counts");
        assert_eq!(tokens(false, &["not json"]), None);
        let big = format!("{{\"pad\":\"{}\",\"usage\":{{\"total_tokens\":5}}}}", "x".repeat(MAX_JSON));
        assert_eq!(tokens(false, &[&big]), None, "an answer over the limit is passed on unread");
    }
}
