//! Relays on demand: the test asks the gateway to open one on the connected supervisor
//! session; the gateway sends `relay_open`, waits for `relay_open_result`, accepts the
//! `RelayStream` whose `init` names the channel, and hands the test a byte pipe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use openshell_sandbox::gateway::proto::{
    GatewayMessage, RelayClose, RelayFrame, RelayOpen, RelayOpenResult, gateway_message, relay_frame, relay_open,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::state::{Payload, State, token_of_request};

/// The test's end of one relay: bytes written here reach the supervisor's local
/// target; bytes it sends arrive here. Shutting down the write side half-closes.
pub struct RelayPipe {
    pub channel_id: String,
    pub stream: DuplexStream,
    /// Sizes of the data frames received from the supervisor.
    pub frame_sizes: Arc<Mutex<Vec<usize>>>,
}

pub(super) struct PendingRelay {
    result: Option<oneshot::Sender<RelayOpenResult>>,
    pipe: Option<oneshot::Sender<RelayPipe>>,
}

pub(super) type FrameStream = std::pin::Pin<Box<dyn Stream<Item = Result<RelayFrame, Status>> + Send>>;

pub(super) fn receiver_stream<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl State {
    /// Sends `relay_open` on the latest supervisor session. `Err` carries the
    /// supervisor's refusal (`relay_open_result.error`) or what went wrong.
    pub async fn open_relay(&self, target: Option<relay_open::Target>) -> Result<RelayPipe, String> {
        let channel_id = uuid::Uuid::new_v4().to_string();
        let (result_tx, result_rx) = oneshot::channel();
        let (pipe_tx, pipe_rx) = oneshot::channel();
        self.relays
            .lock()
            .unwrap()
            .insert(channel_id.clone(), PendingRelay { result: Some(result_tx), pipe: Some(pipe_tx) });
        let session = self.session.lock().unwrap().clone().ok_or("no supervisor session")?;
        let open = RelayOpen { channel_id: channel_id.clone(), target, service_id: String::new() };
        session
            .send(Ok(GatewayMessage { payload: Some(gateway_message::Payload::RelayOpen(open)) }))
            .await
            .map_err(|_| "the session is gone")?;
        let wait = Duration::from_secs(10);
        let result = tokio::time::timeout(wait, result_rx)
            .await
            .map_err(|_| "no relay_open_result within 10 s")?
            .map_err(|_| "relay dropped")?;
        if !result.success {
            return Err(result.error);
        }
        Ok(tokio::time::timeout(wait, pipe_rx)
            .await
            .map_err(|_| "no RelayStream within 10 s")?
            .map_err(|_| "relay dropped")?)
    }

    /// Sends `relay_close` for `channel_id` on the latest session.
    pub async fn close_relay(&self, channel_id: &str) {
        let session = self.session.lock().unwrap().clone();
        if let Some(session) = session {
            let close = RelayClose { channel_id: channel_id.into(), reason: "closed by the test".into() };
            let _ =
                session.send(Ok(GatewayMessage { payload: Some(gateway_message::Payload::RelayClose(close)) })).await;
        }
    }

    /// A `relay_open_result` arrived on a session.
    pub(super) fn relay_result(&self, result: RelayOpenResult) {
        let sender = self.relays.lock().unwrap().get_mut(&result.channel_id).and_then(|p| p.result.take());
        if let Some(sender) = sender {
            let _ = sender.send(result);
        }
    }

    /// `RelayStream`: `init` first, then data both ways through the test's pipe.
    pub(super) async fn relay_stream(
        &self,
        request: Request<Streaming<RelayFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let token = token_of_request(&request);
        let mut inbound = request.into_inner();
        let channel_id = match inbound.message().await? {
            Some(RelayFrame { payload: Some(relay_frame::Payload::Init(init)) }) => init.channel_id,
            _ => {
                self.record_with_token("RelayStream", token, "", Payload::RelayInit(String::new()))?;
                return Err(Status::invalid_argument("the first RelayStream frame must be init"));
            }
        };
        self.record_with_token("RelayStream", token, "", Payload::RelayInit(channel_id.clone()))?;
        let pipe_tx = self
            .relays
            .lock()
            .unwrap()
            .get_mut(&channel_id)
            .and_then(|p| p.pipe.take())
            .ok_or_else(|| Status::not_found("no relay was opened with this channel id"))?;
        let (test_side, gateway_side) = tokio::io::duplex(256 * 1024);
        let (mut read, mut write) = tokio::io::split(gateway_side);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let stop = self.stop_token();

        let (sizes_in, stop_in) = (sizes.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    () = stop_in.cancelled() => break,
                    frame = inbound.message() => frame,
                };
                match frame {
                    Ok(Some(RelayFrame { payload: Some(relay_frame::Payload::Data(data)) })) => {
                        sizes_in.lock().unwrap().push(data.len());
                        if write.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = write.shutdown().await; // the supervisor's half-close is the test's EOF
        });

        let (out_tx, out_rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = tokio::select! {
                    () = stop.cancelled() => {
                        let _ = out_tx.send(Err(Status::unavailable("test gateway stopping"))).await;
                        return;
                    }
                    n = read.read(&mut buf) => n,
                };
                match n {
                    Ok(0) | Err(_) => return, // the test's EOF ends the outbound stream
                    Ok(n) => {
                        let data = Bytes::copy_from_slice(&buf[..n]);
                        let frame = RelayFrame { payload: Some(relay_frame::Payload::Data(data)) };
                        if out_tx.send(Ok(frame)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let _ = pipe_tx.send(RelayPipe { channel_id, stream: test_side, frame_sizes: sizes });
        Ok(Response::new(Box::pin(receiver_stream(out_rx))))
    }
}
