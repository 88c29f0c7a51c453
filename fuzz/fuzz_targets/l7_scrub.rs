//! Response scrubbing (`proxy::credentials::{Scrubber, Scrubbed}`). Properties: streaming a
//! body cut into any chunks gives exactly what replacing the whole body at once gives; that
//! output holds no pattern unless a replacement or the text around it forms one anew.

#![no_main]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use openshell_sandbox::proxy::credentials::{Scrubbed, Scrubber};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Patterns (values) and their replacements.
    patterns: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    /// Chunk lengths, used in turn (0 is an empty chunk).
    cuts: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let patterns: Vec<(Vec<u8>, Vec<u8>)> = input.patterns.into_iter().take(8).collect();
    let Some(scrubber) = Scrubber::new(patterns) else { return };
    let scrubber = Arc::new(scrubber);
    let mut chunks = Vec::new();
    let (mut at, mut cuts) = (0, input.cuts.iter().cycle());
    while at < input.body.len() {
        let cut = usize::from(*cuts.next().unwrap_or(&255));
        if cut == 0 {
            // An empty chunk; the chunk after it takes at least a byte, so cuts of zeros end.
            chunks.push(Ok(Frame::data(Bytes::new())));
        }
        let n = cut.max(1).min(input.body.len() - at);
        chunks.push(Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(&input.body[at..at + n]))));
        at += n;
    }
    let body = Scrubbed::new(StreamBody::new(futures_util::stream::iter(chunks)), scrubber.clone());
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let streamed = rt.block_on(body.collect()).unwrap().to_bytes();
    let whole = scrubber.replace_all(&input.body).unwrap_or_else(|| input.body.clone());
    assert_eq!(&streamed[..], &whole[..], "streaming differs from replacing the whole body");
});
