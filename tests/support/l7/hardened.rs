//! The rig of the hardening tests (`tests/l7/hardening.rs`): the real proxy with `rest` and
//! `websocket` endpoints in front of recording upstreams (HTTP/1.1 by hand, HTTP/2 with
//! hyper), raw HTTP/1.1 over an inspected tunnel, the real `curl`, and a minimal HTTP/2
//! client by hand for what hyper will not send (extended CONNECT).

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::recorder::Recorder;
use super::through::{proxy_ca, tls_through, tls_through_alpn};
use super::{Ca, ca, https_server, write_pem};
use crate::support::proxy::{STEP, TestProxy};

/// What the HTTP/2 upstream saw of each request: version, `:authority`, every `host` value.
pub type H2Seen = Arc<Mutex<Vec<Value>>>;

/// The proxy and the upstreams behind it, all `localhost` on their own ports.
pub struct Rig {
    pub proxy: TestProxy,
    /// `protocol: rest`, read-only (HTTP/1.1 upstream by hand, over TLS).
    pub rest: Recorder,
    /// `protocol: websocket`, read-only.
    pub ws: Recorder,
    /// `websocket` in one policy, `rest` in another: the policies disagree.
    pub mixed: Recorder,
    /// `protocol: rest`, read-only, an upstream that takes `h2`.
    pub h2: (SocketAddr, H2Seen),
    /// Plain HTTP, `protocol: rest`, read-only.
    pub plain_l7: Recorder,
    /// Plain HTTP, no protocol (L4).
    pub plain_l4: Recorder,
    /// `protocol: rest`, read-write, where nothing listens (502 before a byte is sent).
    pub closed: u16,
    _dir: tempfile::TempDir,
}

impl Rig {
    pub async fn start() -> Rig {
        let upstream_ca = ca("Upstream CA");
        let (rest, ws, mixed) =
            (Recorder::tls(&upstream_ca).await, Recorder::tls(&upstream_ca).await, Recorder::tls(&upstream_ca).await);
        let h2 = h2_upstream(&upstream_ca).await;
        let (plain_l7, plain_l4) = (Recorder::plain().await, Recorder::plain().await);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let policy = format!(
            "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-only}}\n\
             \x20     - {{host: localhost, port: {}, protocol: websocket, access: read-only}}\n\
             \x20     - {{host: localhost, port: {}, protocol: websocket, access: read-only}}\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-only}}\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-only}}\n\
             \x20     - {{host: localhost, port: {}}}\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-write}}\n\
             \x20 other:\n    endpoints:\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-only}}\n",
            rest.addr.port(),
            ws.addr.port(),
            mixed.addr.port(),
            h2.0.port(),
            plain_l7.addr.port(),
            plain_l4.addr.port(),
            closed,
            mixed.addr.port(),
        );
        let dir = tempfile::tempdir().unwrap();
        let ca_file = write_pem(dir.path(), "upstream-ca.pem", &upstream_ca);
        let proxy = TestProxy::start(&policy, |c| c.upstream_ca_file = Some(ca_file)).await;
        Rig { proxy, rest, ws, mixed, h2, plain_l7, plain_l4, closed, _dir: dir }
    }

    /// A TLS stream on a new inspected tunnel to `localhost:port` (HTTP/1.1 by ALPN).
    pub async fn tunnel(&self, port: u16) -> TlsStream<TcpStream> {
        tls_through(self.proxy.addr, &format!("localhost:{port}"), "localhost", &proxy_ca(&self.proxy.tls_dir())).await
    }

    /// A TLS stream on a new inspected tunnel to `localhost:port` that took `h2` by ALPN.
    pub async fn h2_tunnel(&self, port: u16) -> TlsStream<TcpStream> {
        let ca = proxy_ca(&self.proxy.tls_dir());
        let tls = tls_through_alpn(self.proxy.addr, &format!("localhost:{port}"), "localhost", &ca, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls
    }

    /// `head` on a new tunnel to `port`; the response.
    pub async fn raw(&self, port: u16, head: &str) -> RawResponse {
        let mut tls = self.tunnel(port).await;
        tls.write_all(head.as_bytes()).await.unwrap();
        read_response(&mut tls).await
    }

    /// `head` then `after` (in the same write) on a new tunnel to `port`; the response, after
    /// asserting that the proxy then closed the connection (nothing of `after` is answered).
    pub async fn refused(&self, port: u16, head: &str, after: &str) -> RawResponse {
        let mut tls = self.tunnel(port).await;
        tls.write_all(format!("{head}{after}").as_bytes()).await.unwrap();
        let response = read_response(&mut tls).await;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(STEP, tls.read_to_end(&mut rest)).await;
        assert!(closed.is_ok() && rest.is_empty(), "{head}: the proxy closes after {response:?}, then {rest:?}");
        response
    }

    /// The bundle `curl --cacert` trusts: the proxy's CA.
    pub fn ca_bundle(&self) -> std::path::PathBuf {
        self.proxy.tls_dir().join("ca-bundle.pem")
    }
}

/// A response read off a raw stream: the head (status line and headers) and the body.
#[derive(Debug)]
pub struct RawResponse {
    pub head: String,
    pub body: String,
}

impl RawResponse {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.body.trim()).unwrap_or(Value::Null)
    }
}

/// Reads one response: its head, then a `content-length` body (none for a `101`).
pub async fn read_response<IO: AsyncRead + Unpin>(io: &mut IO) -> RawResponse {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if io.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length = super::recorder::header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; length];
        let read = io.read_exact(&mut body).await.map_or(0, |_| length);
        RawResponse { head, body: String::from_utf8_lossy(&body[..read]).into_owned() }
    };
    tokio::time::timeout(STEP, read).await.expect("a response in time")
}

/// An HTTPS upstream for `localhost` taking `h2` (and HTTP/1.1), answering `200` after
/// recording each request's version, `:authority` and `host` values.
async fn h2_upstream(ca: &Ca) -> (SocketAddr, H2Seen) {
    let seen = H2Seen::default();
    let state = seen.clone();
    let addr = https_server(
        ca,
        "localhost",
        &[b"h2", b"http/1.1"],
        || {},
        move |tls| {
            let state = state.clone();
            async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let hosts: Vec<&str> =
                            req.headers().get_all("host").iter().map(|v| v.to_str().unwrap_or("?")).collect();
                        let record = json!({"version": format!("{:?}", req.version()),
                            "authority": req.uri().authority().map(|a| a.as_str()), "hosts": hosts,
                            "path": req.uri().path()});
                        state.lock().unwrap().push(record.clone());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(record.to_string()))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            }
        },
    )
    .await;
    (addr, seen)
}

/// Runs the real `curl` through the proxy (`h2` by ALPN unless `--http1.1` is in `args`):
/// exit status, stdout, stderr.
pub async fn curl(rig: &Rig, args: &[&str], url: &str) -> (std::process::ExitStatus, String, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--noproxy", "", "-x", &format!("http://{}", rig.proxy.addr)]);
    cmd.arg("--cacert").arg(rig.ca_bundle()).args(args).arg(url);
    let output = cmd.output().await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status, text(&output.stdout), text(&output.stderr))
}

/// Sends `request` on an HTTP/2 sender; the status and the whole body (bounded).
pub async fn h2_exchange(
    sender: &mut hyper::client::conn::http2::SendRequest<super::session::ClientBody>,
    request: Request<super::session::ClientBody>,
) -> Result<(http::StatusCode, Bytes), hyper::Error> {
    let exchange = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    };
    tokio::time::timeout(Duration::from_secs(20), exchange).await.expect("an HTTP/2 answer in time")
}

/// A minimal HTTP/2 client by hand over `tls` (which took `h2`): header blocks are written as
/// HPACK literals without indexing, frames are read raw. For what hyper will not send.
pub struct RawH2 {
    tls: TlsStream<TcpStream>,
}

/// One frame read: type, flags, stream id, payload.
pub type RawFrame = (u8, u8, u32, Vec<u8>);

pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const DATA: u8 = 0x0;
pub const GOAWAY: u8 = 0x7;
const SETTINGS: u8 = 0x4;
pub const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

impl RawH2 {
    /// The connection preface and an empty SETTINGS frame.
    pub async fn start(mut tls: TlsStream<TcpStream>) -> RawH2 {
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let mut raw = RawH2 { tls };
        raw.frame(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.tls.write_all(&frame).await.unwrap();
    }

    /// A HEADERS frame (END_HEADERS; END_STREAM when `end`) with `fields` as literals.
    pub async fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x00);
            for s in [name, value] {
                assert!(s.len() < 127);
                block.push(s.len() as u8);
                block.extend_from_slice(s.as_bytes());
            }
        }
        let flags = END_HEADERS | if end { END_STREAM } else { 0 };
        self.frame(HEADERS, flags, stream, &block).await;
    }

    /// `body` as DATA frames of at most 16 KiB, END_STREAM on the last.
    pub async fn data(&mut self, stream: u32, body: &[u8]) {
        let chunks: Vec<&[u8]> = body.chunks(16 * 1024).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let flags = if i + 1 == chunks.len() { END_STREAM } else { 0 };
            self.frame(DATA, flags, stream, chunk).await;
        }
    }

    /// The next frame that is not about the connection (SETTINGS are acknowledged, WINDOW_UPDATE
    /// and PING skipped).
    pub async fn next(&mut self) -> RawFrame {
        loop {
            let read = async {
                let mut head = [0u8; 9];
                self.tls.read_exact(&mut head).await.unwrap();
                let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
                let mut payload = vec![0u8; len];
                self.tls.read_exact(&mut payload).await.unwrap();
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7FFF_FFFF;
                (head[3], head[4], stream, payload)
            };
            let (kind, flags, stream, payload) = tokio::time::timeout(STEP, read).await.expect("a frame in time");
            match kind {
                SETTINGS if flags & 1 == 0 => self.frame(SETTINGS, 1, 0, &[]).await,
                SETTINGS | 0x6 | 0x8 => {}
                _ => return (kind, flags, stream, payload),
            }
        }
    }

    /// Frames until `stream` ends (END_STREAM, RST_STREAM or GOAWAY), of every stream.
    pub async fn until_end(&mut self, stream: u32) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            let end = frame.0 == GOAWAY || (frame.2 == stream && (frame.0 == RST_STREAM || frame.1 & END_STREAM != 0));
            frames.push(frame);
            if end {
                return frames;
            }
        }
    }
}
