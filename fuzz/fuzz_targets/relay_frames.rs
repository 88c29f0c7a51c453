//! The gateway relay's byte copy, on a current-thread runtime with an in-memory duplex
//! stream as the local side. Properties: `init{channel_id}` is the first outbound frame,
//! every outbound `data` frame holds 1 to 16 KiB, the outbound bytes are exactly the local
//! bytes, the local side receives exactly the inbound `data` bytes (a prefix of them up
//! to an inbound error, which fails the relay), and the copy never hangs.

#![no_main]

use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use openshell_sandbox::gateway::proto::{RelayFrame, RelayInit, relay_frame};
use openshell_sandbox::gateway::relay::{MAX_FRAME, copy_both_ways, outbound_channel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Arbitrary, Debug)]
enum Chunk {
    Bytes(Vec<u8>),
    /// A run of one byte, so inputs of a few bytes still make writes above 16 KiB.
    Fill {
        byte: u8,
        len: u16,
    },
}

impl Chunk {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Chunk::Bytes(b) => b.clone(),
            Chunk::Fill { byte, len } => vec![*byte; usize::from(*len)],
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Inbound {
    Data(Chunk),
    Init(String),
    Empty,
    Error,
}

#[derive(Arbitrary, Debug)]
struct Input {
    channel_id: String,
    /// Capacity of the in-memory local stream.
    buffer: u16,
    local_writes: Vec<Chunk>,
    inbound: Vec<Inbound>,
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
}

fuzz_target!(|input: Input| RUNTIME.with(|rt| rt.block_on(relay(input))));

async fn relay(input: Input) {
    let (tx, mut rx) = outbound_channel(&input.channel_id);
    let (local, peer) = tokio::io::duplex(usize::from(input.buffer).max(1));
    let (mut peer_read, mut peer_write) = tokio::io::split(peer);

    let mut frames = Vec::new();
    let mut inbound_bytes = Vec::new();
    let mut fails = false;
    for item in &input.inbound {
        let payload = match item {
            Inbound::Data(chunk) => {
                inbound_bytes.extend(chunk.bytes());
                Some(relay_frame::Payload::Data(Bytes::from(chunk.bytes())))
            }
            Inbound::Init(id) => Some(relay_frame::Payload::Init(RelayInit { channel_id: id.clone() })),
            Inbound::Empty => None,
            Inbound::Error => {
                frames.push(Err(tonic::Status::unavailable("gateway gone")));
                fails = true;
                break;
            }
        };
        frames.push(Ok(RelayFrame { payload }));
    }
    let local_bytes: Vec<u8> = input.local_writes.iter().flat_map(Chunk::bytes).collect();

    let copy = copy_both_ways(local, tx, futures_util::stream::iter(frames), |s| format!("failed: {}", s.message()));
    let writer = async {
        for chunk in &input.local_writes {
            if peer_write.write_all(&chunk.bytes()).await.is_err() {
                break; // the relay ended (after an inbound error)
            }
        }
        let _ = peer_write.shutdown().await;
    };
    let reader = async {
        let mut got = Vec::new();
        let _ = peer_read.read_to_end(&mut got).await;
        got
    };
    let collector = async {
        let mut out = Vec::new();
        while let Some(frame) = rx.recv().await {
            out.push(frame);
        }
        out
    };
    let all = async { tokio::join!(copy, writer, reader, collector) };
    let (result, (), received, outbound) =
        tokio::time::timeout(Duration::from_secs(20), all).await.expect("the relay copy hung");

    let mut outbound = outbound.into_iter();
    let first = outbound.next().expect("at least the init frame");
    assert_eq!(
        first.payload,
        Some(relay_frame::Payload::Init(RelayInit { channel_id: input.channel_id.clone() })),
        "init is the first frame"
    );
    let mut sent = Vec::new();
    for frame in outbound {
        match frame.payload {
            Some(relay_frame::Payload::Data(data)) => {
                assert!(!data.is_empty() && data.len() <= MAX_FRAME, "a data frame of {} bytes", data.len());
                sent.extend_from_slice(&data);
            }
            other => panic!("a frame after init that is not data: {other:?}"),
        }
    }
    if fails {
        assert_eq!(result, Err("failed: gateway gone".to_owned()));
        assert!(local_bytes.starts_with(&sent), "outbound bytes are not a prefix of the local bytes");
        assert!(inbound_bytes.starts_with(&received), "local side got bytes the gateway did not send");
    } else {
        assert_eq!(result, Ok(()));
        assert!(sent == local_bytes, "outbound {} bytes, local wrote {}", sent.len(), local_bytes.len());
        assert!(received == inbound_bytes, "local got {} bytes, gateway sent {}", received.len(), inbound_bytes.len());
    }
}
