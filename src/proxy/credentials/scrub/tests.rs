use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::{Scrubbed, Scrubber};

fn scrubber(pairs: &[(&str, &str)]) -> Arc<Scrubber> {
    Arc::new(Scrubber::new(pairs.iter().map(|(p, r)| (p.as_bytes().to_vec(), r.as_bytes().to_vec()))).unwrap())
}

/// Streams `chunks` through a scrubber and returns the output.
fn stream(s: &Arc<Scrubber>, chunks: &[&[u8]]) -> Vec<u8> {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        chunks.iter().map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
    let body = Scrubbed::new(StreamBody::new(futures_util::stream::iter(frames)), s.clone());
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(body.collect()).unwrap().to_bytes().to_vec()
}

#[test]
fn values_are_replaced_whole_and_longest_first() {
    let s = scrubber(&[("sk-123", "<A>"), ("sk-1234", "<B>")]);
    assert_eq!(s.replace_all(b"x sk-1234 sk-123x").unwrap(), b"x <B> <A>x");
    assert!(s.replace_all(b"sk-12 nothing").is_none());
    assert!(Scrubber::new(vec![(Vec::new(), b"x".to_vec())]).is_none(), "an empty value scrubs nothing");
}

#[test]
fn a_value_split_across_chunks_is_caught() {
    let s = scrubber(&[("SECRET-VALUE-42", "openshell:resolve:env:K")]);
    let want = b"head openshell:resolve:env:K tail".to_vec();
    let text = b"head SECRET-VALUE-42 tail";
    for cut in 0..=text.len() {
        assert_eq!(stream(&s, &[&text[..cut], &text[cut..]]), want, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = text.chunks(1).collect();
    assert_eq!(stream(&s, &bytes), want, "one byte per chunk");
    assert_eq!(stream(&s, &[b"SECRET-VALUE-4", b"", b"2"]), b"openshell:resolve:env:K");
}

/// xorshift64*: deterministic data.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

#[test]
fn property_streaming_equals_replacing_the_whole() {
    let s = scrubber(&[("abcab", "<1>"), ("bca", "<22>"), ("c", "[c]"), ("xyzxyzxyz", "")]);
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for _ in 0..2_000 {
        let len = rng.below(300);
        let text: Vec<u8> = (0..len).map(|_| b"abcxyz"[rng.below(6)]).collect();
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let n = (1 + rng.below(40)).min(text.len() - at);
            chunks.push(&text[at..at + n]);
            at += n;
        }
        let want = s.replace_all(&text).unwrap_or_else(|| text.clone());
        assert_eq!(stream(&s, &chunks), want, "{}", String::from_utf8_lossy(&text));
    }
}

#[test]
fn big_chunks_pass_without_a_match_unchanged() {
    let s = scrubber(&[("needle-in-a-haystack", "X")]);
    let big = vec![b'h'; 64 * 1024];
    assert_eq!(stream(&s, &[&big, &big]), [&big[..], &big[..]].concat());
    let mut with = big.clone();
    with[40_000..40_020].copy_from_slice(b"needle-in-a-haystack");
    let out = stream(&s, &[&with[..39_990], &with[39_990..], &big]);
    assert_eq!(out.len(), 2 * big.len() - 19);
    assert_eq!(&out[40_000..40_001], b"X");
}

#[test]
fn headers_are_scrubbed_and_a_name_holding_a_value_is_dropped() {
    let s = scrubber(&[("sekrit-token-1", "openshell:resolve:env:T")]);
    let mut h = HeaderMap::new();
    h.insert("x-echo", "Bearer sekrit-token-1".parse().unwrap());
    h.insert("sekrit-token-1", "v".parse().unwrap());
    h.insert("x-other", "fine".parse().unwrap());
    s.headers(&mut h);
    assert_eq!(h["x-echo"], "Bearer openshell:resolve:env:T");
    assert_eq!(h["x-other"], "fine");
    assert!(!h.contains_key("sekrit-token-1"));
    assert!(!format!("{s:?}").contains("sekrit"));
}

#[test]
fn only_a_possible_start_of_a_value_waits_for_the_next_chunk() {
    let s = scrubber(&[("sk-SECRET", "<K>")]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut body = Scrubbed::new(StreamBody::new(Box::pin(frames)), s.clone());
        let mut next = async |tx_chunk: &'static [u8]| {
            tx.send(Bytes::from_static(tx_chunk)).await.unwrap();
            let frame = tokio::time::timeout(std::time::Duration::from_secs(1), body.frame()).await;
            frame.expect("a frame without waiting for the next chunk").unwrap().unwrap().into_data().unwrap()
        };
        assert_eq!(next(b"data: one\n\n").await, "data: one\n\n", "an event goes on at once");
        assert_eq!(next(b"x sk-SEC").await, "x ", "a possible start of the value waits");
        assert_eq!(next(b"RET y sk").await, "<K> y ");
    });
}
