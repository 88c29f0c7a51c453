//! The supervisor session (agent mode): `ConnectSupervisor` from the sandbox out to the
//! gateway. Send `hello` (sandbox id and this process's instance id); once accepted,
//! heartbeat at the interval the gateway gives; answer each `relay_open` by dialing the
//! target and opening a `RelayStream` (see `relay.rs`). When the session breaks or is
//! rejected, reconnect with capped, jittered backoff and say hello again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::logs::request_stream;
use super::proto::{
    GatewayMessage, RelayOpen, RelayOpenResult, SupervisorHeartbeat, SupervisorHello, SupervisorMessage,
    gateway_message, supervisor_message,
};
use super::relay::{self, RelayContext};
use super::{CallFailure, GatewayClient, GatewayError, Method};
use crate::shutdown::Shutdown;

/// Settings of the supervisor session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The local SSH server's Unix socket: the target of SSH relays.
    pub ssh_socket: PathBuf,
    /// Reconnect delays. Default 1 s doubling to 30 s, jittered.
    pub backoff: Backoff,
    /// How long to wait for `session_accepted` after `hello`. Default 10 s.
    pub accept_timeout: Duration,
    /// Limit for dialing a relay target and opening its `RelayStream`. Default 5 s.
    pub dial_timeout: Duration,
    /// Heartbeat interval when the gateway gives 0. Default 15 s.
    pub default_heartbeat: Duration,
}

impl SessionOptions {
    /// Defaults, with SSH relays going to `ssh_socket`.
    pub fn new(ssh_socket: impl Into<PathBuf>) -> Self {
        SessionOptions {
            ssh_socket: ssh_socket.into(),
            backoff: Backoff::reconnect(),
            accept_timeout: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(5),
            default_heartbeat: Duration::from_secs(15),
        }
    }
}

/// How one session ended.
enum Ended {
    Shutdown,
    Rejected(String),
    Broken(GatewayError),
}

/// The supervisor side of the gateway session. One per process: its instance id is
/// also the one `ReportMainProcessExit` sends.
pub struct Supervisor {
    client: GatewayClient,
    options: SessionOptions,
    instance_id: String,
    relays: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

impl Supervisor {
    /// A supervisor with a fresh instance id (UUID v4).
    pub fn new(client: GatewayClient, options: SessionOptions) -> Self {
        Supervisor { client, options, instance_id: uuid::Uuid::new_v4().to_string(), relays: Arc::default() }
    }

    /// This process's instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Keeps a session up until shutdown, reconnecting with backoff. Relays are tracked
    /// by `shutdown`, so a drain waits for them.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut outage = false;
        loop {
            let ended = self.session(&shutdown, &mut outage).await;
            let delay = self.options.backoff.next_delay();
            match ended {
                Ended::Shutdown => return,
                Ended::Rejected(reason) => {
                    tracing::warn!("the gateway rejected the supervisor session: {reason}; trying again in {delay:?}");
                }
                Ended::Broken(e) if !outage => {
                    outage = true;
                    tracing::warn!("supervisor session lost: {e}; reconnecting in {delay:?}");
                }
                Ended::Broken(e) => tracing::debug!("supervisor session still down: {e}; next try in {delay:?}"),
            }
            tokio::select! {
                () = shutdown.signalled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(&mut self, shutdown: &Shutdown, outage: &mut bool) -> Ended {
        let (tx, rx) = mpsc::channel::<SupervisorMessage>(64);
        let hello =
            SupervisorHello { sandbox_id: self.client.sandbox_id().to_owned(), instance_id: self.instance_id.clone() };
        // The channel is empty and its receiver alive: this send cannot fail or wait.
        let _ = tx.try_send(message(supervisor_message::Payload::Hello(hello)));
        let accept_by = Instant::now() + self.options.accept_timeout;
        let mut grpc = self.client.openshell();
        let call = grpc.connect_supervisor(request_stream(rx));
        let mut inbound = tokio::select! {
            () = shutdown.signalled() => return Ended::Shutdown,
            response = tokio::time::timeout_at(accept_by, call) => match response {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => return Ended::Broken(self.client.failure(Method::ConnectSupervisor, &status)),
                Err(_) => return Ended::Broken(self.timeout(self.options.accept_timeout)),
            },
        };
        let mut heartbeat: Option<tokio::time::Interval> = None;
        let relay_cx = RelayContext {
            client: self.client.clone(),
            ssh_socket: self.options.ssh_socket.clone(),
            dial_timeout: self.options.dial_timeout,
            session: tx.clone(),
        };
        loop {
            let accepted = heartbeat.is_some();
            let tick = async {
                match heartbeat.as_mut() {
                    Some(h) => h.tick().await,
                    None => std::future::pending().await,
                }
            };
            let accept_deadline = async {
                if accepted {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep_until(accept_by).await;
            };
            let received = tokio::select! {
                () = shutdown.signalled() => return Ended::Shutdown,
                _ = tick => {
                    if tx.send(message(supervisor_message::Payload::Heartbeat(SupervisorHeartbeat {}))).await.is_err() {
                        return Ended::Broken(self.ended("the session stream closed"));
                    }
                    continue;
                }
                () = accept_deadline => return Ended::Broken(self.timeout(self.options.accept_timeout)),
                received = inbound.message() => received,
            };
            let payload = match received {
                Ok(Some(GatewayMessage { payload: Some(payload) })) => payload,
                Ok(Some(GatewayMessage { payload: None })) => continue, // a newer kind of message
                Ok(None) => return Ended::Broken(self.ended("the gateway ended the session")),
                Err(status) => return Ended::Broken(self.client.failure(Method::ConnectSupervisor, &status)),
            };
            match payload {
                gateway_message::Payload::SessionAccepted(accepted) => {
                    let every = match accepted.heartbeat_interval_secs {
                        0 => self.options.default_heartbeat,
                        secs => Duration::from_secs(u64::from(secs)),
                    };
                    let mut interval = tokio::time::interval_at(Instant::now() + every, every);
                    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    heartbeat = Some(interval);
                    self.options.backoff.reset();
                    if std::mem::take(outage) {
                        tracing::info!(session = accepted.session_id, "supervisor session is back");
                    } else {
                        tracing::info!(session = accepted.session_id, heartbeat = ?every, "supervisor session accepted");
                    }
                }
                gateway_message::Payload::SessionRejected(rejected) => return Ended::Rejected(rejected.reason),
                gateway_message::Payload::Heartbeat(_) => {}
                gateway_message::Payload::RelayOpen(open) => self.open_relay(&relay_cx, open, shutdown),
                gateway_message::Payload::RelayClose(close) => {
                    let token = self.relays.lock().ok().and_then(|mut r| r.remove(&close.channel_id));
                    if let Some(token) = token {
                        tracing::debug!(
                            channel = close.channel_id,
                            reason = close.reason,
                            "the gateway closed a relay"
                        );
                        token.cancel();
                    }
                }
            }
        }
    }

    fn open_relay(&self, cx: &RelayContext, open: RelayOpen, shutdown: &Shutdown) {
        let channel_id = open.channel_id.clone();
        let cancel = CancellationToken::new();
        let duplicate = match self.relays.lock() {
            Ok(mut relays) => relays.insert(channel_id.clone(), cancel.clone()).is_some(),
            Err(_) => true,
        };
        let cx = cx.clone();
        if duplicate || channel_id.is_empty() {
            let error = format!("channel id `{channel_id}` is empty or already open");
            shutdown.spawn(async move { cx.answer(RelayOpenResult { channel_id, success: false, error }).await });
            return;
        }
        let relays = self.relays.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            tokio::select! {
                () = relay::run(&cx, open) => {}
                () = cancel.cancelled() => {}
                () = stop.signalled() => {}
            }
            if let Ok(mut relays) = relays.lock() {
                relays.remove(&channel_id);
            }
        });
    }

    fn timeout(&self, after: Duration) -> GatewayError {
        let mut failure = CallFailure::timeout(self.client.endpoint(), after);
        failure.message = format!("no session_accepted within {after:?}");
        Method::ConnectSupervisor.failed(failure)
    }

    fn ended(&self, why: &str) -> GatewayError {
        Method::ConnectSupervisor.failed(CallFailure {
            endpoint: self.client.endpoint().to_owned(),
            code: tonic::Code::Unavailable,
            message: why.to_owned(),
        })
    }
}

fn message(payload: supervisor_message::Payload) -> SupervisorMessage {
    SupervisorMessage { payload: Some(payload) }
}
