//! One relay of the supervisor session: dial the target the gateway names (SSH or no
//! target: the local SSH Unix socket; TCP: loopback only), answer `relay_open_result`,
//! then open `RelayStream`, send `init{channel_id}` first, and copy bytes both ways in
//! `data` frames of at most 16 KiB. The local side's EOF ends the outbound gRPC stream;
//! the end of the inbound stream shuts the local write side. A relay that fails after
//! opening is reported with `relay_close`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;

use super::logs::request_stream;
use super::proto::{
    RelayClose, RelayFrame, RelayInit, RelayOpen, RelayOpenResult, SupervisorMessage, relay_frame, relay_open,
    supervisor_message,
};
use super::{GatewayClient, Method};
use crate::policy::host::unbracketed;

/// The largest `data` frame sent.
pub const MAX_FRAME: usize = 16 * 1024;

/// What a relay needs from its session.
#[derive(Clone)]
pub(crate) struct RelayContext {
    pub(crate) client: GatewayClient,
    pub(crate) ssh_socket: PathBuf,
    pub(crate) dial_timeout: Duration,
    /// The session's outbound messages.
    pub(crate) session: mpsc::Sender<SupervisorMessage>,
}

impl RelayContext {
    pub(crate) async fn answer(&self, result: RelayOpenResult) {
        if !result.success {
            tracing::warn!(channel = result.channel_id, "relay refused: {}", result.error);
        }
        let _ = self.session.send(relay_open_result(result)).await;
    }
}

trait Local: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Local for T {}

/// Runs one relay to its end.
pub(crate) async fn run(cx: &RelayContext, open: RelayOpen) {
    let channel_id = open.channel_id.clone();
    let local = match dial(cx, &open).await {
        Ok(local) => local,
        Err(error) => return cx.answer(RelayOpenResult { channel_id, success: false, error }).await,
    };
    cx.answer(RelayOpenResult { channel_id: channel_id.clone(), success: true, error: String::new() }).await;
    match pump(cx, &channel_id, local).await {
        Ok(()) => tracing::debug!(channel = channel_id, "relay finished"),
        Err(reason) => {
            tracing::warn!(channel = channel_id, "relay failed: {reason}");
            let _ = cx.session.send(relay_close(channel_id, reason)).await;
        }
    }
}

async fn dial(cx: &RelayContext, open: &RelayOpen) -> Result<Box<dyn Local>, String> {
    match &open.target {
        None | Some(relay_open::Target::Ssh(_)) => {
            let path = &cx.ssh_socket;
            match tokio::time::timeout(cx.dial_timeout, UnixStream::connect(path)).await {
                Ok(Ok(stream)) => Ok(Box::new(stream)),
                Ok(Err(e)) => Err(format!("cannot connect to the SSH socket {}: {e}", path.display())),
                Err(_) => Err(format!("the SSH socket {} did not accept within {:?}", path.display(), cx.dial_timeout)),
            }
        }
        Some(relay_open::Target::Tcp(tcp)) => {
            let addr = loopback_target(&tcp.host, tcp.port)?;
            match tokio::time::timeout(cx.dial_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    Ok(Box::new(stream))
                }
                Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
                Err(_) => Err(format!("{addr} did not accept within {:?}", cx.dial_timeout)),
            }
        }
    }
}

/// The address of a TCP relay target, which must be loopback: `localhost` or a loopback
/// IP literal. Names are not resolved (a resolver could point them anywhere).
pub(crate) fn loopback_target(host: &str, port: u32) -> Result<SocketAddr, String> {
    let refuse = |why: &str| format!("TCP relay target {host}:{port} refused: {why}");
    let port = u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| refuse("the port must be 1 to 65535"))?;
    let bare = unbracketed(host);
    let ip = if bare.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        bare.parse::<IpAddr>()
            .map_err(|_| refuse("only loopback addresses (127.0.0.0/8, ::1, localhost) are relayed"))?
    };
    let ip = ip.to_canonical();
    if !ip.is_loopback() {
        return Err(refuse("only loopback addresses (127.0.0.0/8, ::1, localhost) are relayed"));
    }
    Ok(SocketAddr::new(ip, port))
}

fn frame(payload: relay_frame::Payload) -> RelayFrame {
    RelayFrame { payload: Some(payload) }
}

/// The session message that closes a relay that failed after it was opened.
fn relay_close(channel_id: String, reason: String) -> SupervisorMessage {
    let close = RelayClose { channel_id, reason };
    SupervisorMessage { payload: Some(supervisor_message::Payload::RelayClose(close)) }
}

/// The session message that answers a `relay_open`.
fn relay_open_result(result: RelayOpenResult) -> SupervisorMessage {
    SupervisorMessage { payload: Some(supervisor_message::Payload::RelayOpenResult(result)) }
}

/// Opens the `RelayStream` and copies both ways until both directions ended.
async fn pump(cx: &RelayContext, channel_id: &str, local: Box<dyn Local>) -> Result<(), String> {
    let (tx, rx) = outbound_channel(channel_id);
    let mut grpc = cx.client.openshell();
    let call = grpc.relay_stream(request_stream(rx));
    let inbound = match tokio::time::timeout(cx.dial_timeout, call).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return Err(cx.client.failure(Method::RelayStream, &status).to_string()),
        Err(_) => return Err(format!("RelayStream was not answered within {:?}", cx.dial_timeout)),
    };
    copy_both_ways(local, tx, inbound, |status| cx.client.failure(Method::RelayStream, status).to_string()).await
}

/// The outbound frames of a relay, with `init{channel_id}` already queued, so it is the
/// first frame the gateway receives whatever happens next. Public for the fuzz target.
#[doc(hidden)]
pub fn outbound_channel(channel_id: &str) -> (mpsc::Sender<RelayFrame>, mpsc::Receiver<RelayFrame>) {
    let (tx, rx) = mpsc::channel::<RelayFrame>(8);
    // The channel is empty and its receiver alive: this send cannot fail or wait.
    let _ = tx.try_send(frame(relay_frame::Payload::Init(RelayInit { channel_id: channel_id.to_owned() })));
    (tx, rx)
}

/// Copies `local` into `data` frames of at most [`MAX_FRAME`] bytes on `tx`, and the `data`
/// frames of `inbound` into `local`, until both directions ended. The local EOF drops `tx`
/// (half-close); the end of `inbound` shuts the local write side. `fail` words an inbound
/// error. Public for the fuzz target.
#[doc(hidden)]
pub async fn copy_both_ways<L, S>(
    local: L,
    tx: mpsc::Sender<RelayFrame>,
    mut inbound: S,
    fail: impl Fn(&tonic::Status) -> String,
) -> Result<(), String>
where
    L: AsyncRead + AsyncWrite,
    S: Stream<Item = Result<RelayFrame, tonic::Status>> + Unpin,
{
    let (mut read, mut write) = tokio::io::split(local);
    let outbound = async move {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let n = read.read(&mut buf).await.map_err(|e| format!("reading the local stream: {e}"))?;
            if n == 0 {
                // EOF: dropping the sender ends the outbound gRPC stream (half-close).
                return Ok::<(), String>(());
            }
            let data = frame(relay_frame::Payload::Data(Bytes::copy_from_slice(&buf[..n])));
            tx.send(data).await.map_err(|_| "the gateway closed the relay stream".to_owned())?;
        }
    };
    let inbound = async move {
        loop {
            match inbound.next().await {
                Some(Ok(RelayFrame { payload: Some(relay_frame::Payload::Data(data)) })) => {
                    write.write_all(&data).await.map_err(|e| format!("writing the local stream: {e}"))?;
                }
                Some(Ok(_)) => {} // init echoes or newer frames: nothing to write
                None => break,
                Some(Err(status)) => return Err(fail(&status)),
            }
        }
        // The gateway's end of stream is EOF for the local side.
        write.shutdown().await.map_err(|e| format!("closing the local stream: {e}"))
    };
    tokio::try_join!(outbound, inbound).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_relays_go_to_loopback_only() {
        assert_eq!(loopback_target("127.0.0.1", 22).unwrap(), "127.0.0.1:22".parse().unwrap());
        assert_eq!(loopback_target("127.8.9.10", 80).unwrap().port(), 80);
        assert_eq!(loopback_target("[::1]", 8080).unwrap(), "[::1]:8080".parse().unwrap());
        assert_eq!(loopback_target("LocalHost", 5).unwrap(), "127.0.0.1:5".parse().unwrap());
        assert_eq!(loopback_target("::ffff:127.0.0.1", 5).unwrap().port(), 5);
        for bad in ["10.0.0.1", "0.0.0.0", "169.254.169.254", "example.com", "localhost.evil.com", "::", ""] {
            let err = loopback_target(bad, 22).unwrap_err();
            assert!(err.contains("only loopback"), "{bad}: {err}");
        }
        assert!(loopback_target("127.0.0.1", 0).unwrap_err().contains("port"));
        assert!(loopback_target("127.0.0.1", 70000).unwrap_err().contains("port"));
    }
}
