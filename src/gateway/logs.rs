//! The supervisor's own log lines, shipped to the gateway with `PushSandboxLogs`.
//!
//! [`LogLayer`] (a `tracing` layer) turns each event into a `SandboxLogLine` and offers it
//! to a bounded queue with `try_send`: logging never waits for the gateway; a full queue
//! drops the line and counts it. [`LogShipper`] drains the queue into a client stream in
//! batches of at most 50 lines or every 500 ms, reconnects with backoff when the gateway
//! is gone, and reports the dropped count as a log line of its own once it can. Audit
//! events go with level `OCSF` and target `ocsf`, their message the OCSF shorthand.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::backoff::Backoff;
use super::proto::{PushSandboxLogsRequest, SandboxLogLine};
use super::{GatewayClient, Method};
use crate::shutdown::Shutdown;
use crate::telemetry::AUDIT_TARGET;

/// Lines held while the gateway is slow or gone. Default queue size.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The contract's largest batch.
pub const MAX_BATCH: usize = 50;
/// The contract's flush interval.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Targets never shipped: this module (its own errors would feed back into the stream)
/// and the gRPC/TLS plumbing that carries the stream.
const EXCLUDED_TARGETS: &[&str] =
    &[module_path!(), "h2", "hyper", "hyper_util", "tonic", "tower", "rustls", "tokio_rustls"];

/// Creates the layer and the queue it feeds, holding up to `capacity` lines.
pub fn queue(sandbox_id: &str, capacity: usize) -> (LogLayer, LogQueue) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let sandbox_id: Arc<str> = sandbox_id.into();
    (
        LogLayer { tx, dropped: dropped.clone(), sandbox_id: sandbox_id.clone() },
        LogQueue { rx, dropped, sandbox_id, pending: Vec::new() },
    )
}

/// The `tracing` layer: one `SandboxLogLine` per event, never blocking.
#[derive(Clone, Debug)]
pub struct LogLayer {
    tx: mpsc::Sender<SandboxLogLine>,
    dropped: Arc<AtomicU64>,
    sandbox_id: Arc<str>,
}

impl LogLayer {
    /// Lines dropped so far and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let target = meta.target();
        if EXCLUDED_TARGETS
            .iter()
            .any(|t| target.strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")))
        {
            return;
        }
        // A full queue costs one counter increment: nothing is formatted.
        if self.tx.capacity() == 0 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        // An audit event is an OCSF event: its message is the shorthand, and the gateway
        // shows it under level `OCSF`, ranked by `ocsf.severity_id`, as OpenShell's own.
        let (level, target) = match target {
            AUDIT_TARGET => ("OCSF", "ocsf"),
            _ => (meta.level().as_str(), target),
        };
        let line = SandboxLogLine {
            sandbox_id: self.sandbox_id.to_string(),
            timestamp_ms: now_ms(),
            level: level.to_owned(),
            target: target.to_owned(),
            message: visitor.message,
            source: "sandbox".to_owned(),
            fields: visitor.fields,
        };
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: HashMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().to_owned(), text);
        }
    }
}

/// The receiving end of the layer's queue, consumed by [`LogShipper`].
#[derive(Debug)]
pub struct LogQueue {
    rx: mpsc::Receiver<SandboxLogLine>,
    dropped: Arc<AtomicU64>,
    sandbox_id: Arc<str>,
    /// Lines taken from the channel and not yet in a batch (kept when a wait is cancelled).
    pending: Vec<SandboxLogLine>,
}

impl LogQueue {
    /// Takes one queued line without waiting, for a caller that ships lines itself.
    pub fn try_take(&mut self) -> Option<SandboxLogLine> {
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        self.rx.try_recv().ok()
    }

    /// The next batch: at most `max` lines, sent when full or `flush` after its first
    /// line; a pending drop count becomes the batch's first line. Cancel-safe. After
    /// `shutdown`, only what is already queued is taken. `None` ends the stream.
    async fn next_batch(&mut self, max: usize, flush: Duration, shutdown: &Shutdown) -> Option<Vec<SandboxLogLine>> {
        while self.pending.is_empty() && !shutdown.is_triggered() {
            tokio::select! {
                () = shutdown.signalled() => {}
                line = tokio::time::timeout(flush, self.rx.recv()) => match line {
                    Ok(Some(line)) => self.pending.push(line),
                    Ok(None) => break,
                    Err(_) if self.dropped.load(Ordering::Relaxed) > 0 => break,
                    Err(_) => {}
                },
            }
        }
        let deadline = Instant::now() + flush;
        while self.pending.len() < max {
            if shutdown.is_triggered() {
                match self.rx.try_recv() {
                    Ok(line) => self.pending.push(line),
                    Err(_) => break,
                }
                continue;
            }
            tokio::select! {
                () = shutdown.signalled() => {}
                line = self.rx.recv() => match line {
                    Some(line) => self.pending.push(line),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let mut batch = Vec::with_capacity(max);
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            batch.push(self.dropped_line(dropped));
        }
        let take = self.pending.len().min(max - batch.len());
        batch.extend(self.pending.drain(..take));
        (!batch.is_empty()).then_some(batch)
    }

    fn dropped_line(&self, count: u64) -> SandboxLogLine {
        SandboxLogLine {
            sandbox_id: self.sandbox_id.to_string(),
            timestamp_ms: now_ms(),
            level: "WARN".into(),
            target: module_path!().into(),
            message: format!("{count} log lines dropped: the gateway log stream was slow or unreachable"),
            source: "sandbox".into(),
            fields: HashMap::from([("dropped".to_owned(), count.to_string())]),
        }
    }
}

/// Ships the queue to the gateway until shutdown.
pub struct LogShipper {
    client: GatewayClient,
    queue: Arc<tokio::sync::Mutex<LogQueue>>,
    backoff: Backoff,
    flush: Duration,
    open: watch::Sender<bool>,
}

impl LogShipper {
    /// A shipper with the contract's batch size and interval, reconnecting after 1 s to 30 s.
    pub fn new(client: GatewayClient, queue: LogQueue) -> Self {
        LogShipper {
            client,
            queue: Arc::new(tokio::sync::Mutex::new(queue)),
            backoff: Backoff::reconnect(),
            flush: FLUSH_INTERVAL,
            open: watch::Sender::new(false),
        }
    }

    /// Whether the stream is open now (its request went out and it asks for lines).
    /// Startup waits on it, bounded, so the stream is opened before `GetSandboxConfig`.
    pub fn opened(&self) -> watch::Receiver<bool> {
        self.open.subscribe()
    }

    /// Replaces the reconnect delays (tests use short ones).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Opens the stream, ships batches, and reopens it with backoff whenever it breaks.
    /// Lines are taken from the queue only when the stream asks for them (the connection
    /// is up), so an outage leaves them queued, then dropped and counted. On shutdown,
    /// what is queued is sent and the stream closed, bounded by one second.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut outage = false;
        loop {
            let shipped = Arc::new(AtomicU64::new(0));
            let mut grpc = self.client.openshell();
            let stream = Batches {
                queue: self.queue.clone(),
                flush: self.flush,
                shutdown: shutdown.clone(),
                shipped: shipped.clone(),
                open: self.open.clone(),
            };
            let mut call = Box::pin(grpc.push_sandbox_logs(stream.into_stream()));
            let result = tokio::select! {
                result = &mut call => result,
                () = shutdown.signalled() => {
                    // The stream now drains what is queued and ends; the gateway answers.
                    let _ = tokio::time::timeout(Duration::from_secs(1), call).await;
                    return;
                }
            };
            self.open.send_replace(false);
            {
                let queue = self.queue.lock().await;
                if queue.rx.is_closed() && queue.rx.is_empty() && queue.pending.is_empty() {
                    return; // the layer is gone and everything it queued was shipped
                }
            }
            if shipped.load(Ordering::Relaxed) > 0 {
                self.backoff.reset();
                outage = false;
            }
            let delay = self.backoff.next_delay();
            let reason = match result {
                Ok(_) => "the gateway ended the stream".to_owned(),
                Err(status) => self.client.failure(Method::PushSandboxLogs, &status).to_string(),
            };
            // Logged under this module's target, which the layer never ships (no feedback),
            // and once per outage.
            if outage {
                tracing::debug!("log stream still down: {reason}");
            } else {
                outage = true;
                tracing::warn!(
                    "log stream to the gateway broke; lines wait in the queue (then are dropped and counted): {reason}; reconnecting"
                );
            }
            tokio::select! {
                () = shutdown.signalled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// The request stream of one `PushSandboxLogs` call: batches pulled from the queue.
struct Batches {
    queue: Arc<tokio::sync::Mutex<LogQueue>>,
    flush: Duration,
    shutdown: Shutdown,
    shipped: Arc<AtomicU64>,
    open: watch::Sender<bool>,
}

impl Batches {
    fn into_stream(self) -> impl futures_util::Stream<Item = PushSandboxLogsRequest> + Send + 'static {
        futures_util::stream::unfold(self, |this| async move {
            // The stream is polled once its request has gone out: the stream is open.
            this.open.send_replace(true);
            let request = {
                let mut queue = this.queue.lock().await;
                let logs = queue.next_batch(MAX_BATCH, this.flush, &this.shutdown).await?;
                this.shipped.fetch_add(logs.len() as u64, Ordering::Relaxed);
                PushSandboxLogsRequest { sandbox_id: queue.sandbox_id.to_string(), logs }
            };
            Some((request, this))
        })
    }
}

/// The request stream of a streaming call, fed from a channel.
pub(crate) fn request_stream<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_counts_drops_and_reports_them_first_within_the_batch_size() {
        let (layer, mut queue) = queue("s", 10);
        let subscriber = tracing_subscriber::registry().with(layer.clone());
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..15 {
                tracing::info!(target: "openshell_sandbox::proxy", n, "line {n}");
            }
            tracing::info!(target: "h2::proto", "never queued");
        });
        assert_eq!(layer.dropped(), 5);
        let shutdown = Shutdown::new();
        let flush = Duration::from_millis(5);
        let first = queue.next_batch(4, flush, &shutdown).await.unwrap();
        assert_eq!(first.len(), 4);
        assert_eq!(first[0].message, "5 log lines dropped: the gateway log stream was slow or unreachable");
        assert_eq!(first[0].fields["dropped"], "5");
        assert_eq!(first[1..].iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["line 0", "line 1", "line 2"]);
        assert_eq!(layer.dropped(), 0);
        let second = queue.next_batch(4, flush, &shutdown).await.unwrap();
        assert_eq!(second.iter().map(|l| l.fields["n"].as_str()).collect::<Vec<_>>(), ["3", "4", "5", "6"]);
        shutdown.trigger();
        let rest = queue.next_batch(50, flush, &shutdown).await.unwrap();
        assert_eq!(rest.len(), 3, "after shutdown, what is queued is taken without waiting");
        assert!(queue.next_batch(50, flush, &shutdown).await.is_none());
    }
}
