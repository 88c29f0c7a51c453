//! Log shipping against the test gateway: the supervisor's log lines arrive in batches
//! of at most 50; with the gateway stopped, logging never blocks (100,000 events finish)
//! and the dropped count is reported once the gateway is back.

use crate::support::gateway as gateway_support;

use std::time::Duration;

use gateway_support::{Payload, SANDBOX_ID, TestGateway, eventually};
use openshell_sandbox::gateway::GatewayClient;
use openshell_sandbox::gateway::backoff::Backoff;
use openshell_sandbox::gateway::logs::{self, LogShipper};
use openshell_sandbox::shutdown::Shutdown;
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(15);

fn short_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_arrive_in_batches_of_at_most_50() {
    let gw = TestGateway::start().await;
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let (layer, queue) = logs::queue(SANDBOX_ID, 1024);
    let shutdown = Shutdown::new();
    let shipper = LogShipper::new(client, queue).with_backoff(short_backoff());
    let mut opened = shipper.opened();
    shutdown.spawn(shipper.run(shutdown.clone()));

    // The stream opens before there is anything to send (startup opens it first).
    tokio::time::timeout(WAIT, opened.wait_for(|open| *open)).await.unwrap().unwrap();
    let calls = eventually(WAIT, "the stream at the gateway", || {
        let calls = gw.state.calls();
        (!calls.is_empty()).then_some(calls)
    })
    .await;
    assert_eq!(calls.len(), 1);
    assert!(matches!(calls[0].payload, Payload::LogsOpened) && calls[0].method == "PushSandboxLogs");
    assert_eq!(calls[0].token.as_deref(), Some("Bearer test-sandbox-jwt"));

    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        for n in 0..120 {
            tracing::info!(target: "openshell_sandbox::proxy", n, host = "api.example.com", "line {n}");
        }
        // Never shipped: the shipper's own target and the gRPC plumbing (no feedback loop).
        tracing::warn!(target: "openshell_sandbox::gateway::logs", "shipper trouble");
        tracing::debug!(target: "h2::codec", "frame sent");
        tracing::warn!(target: "openshell_sandbox::agent", "last");
    });

    let lines = eventually(WAIT, "121 lines", || {
        let lines = gw.state.log_lines();
        (lines.len() >= 121).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 121);
    for (n, line) in lines[..120].iter().enumerate() {
        assert_eq!(line.message, format!("line {n}"));
        assert_eq!(line.fields["n"], n.to_string());
        assert_eq!(line.fields["host"], "api.example.com");
        assert_eq!((line.level.as_str(), line.target.as_str()), ("INFO", "openshell_sandbox::proxy"));
        assert_eq!((line.source.as_str(), line.sandbox_id.as_str()), ("sandbox", SANDBOX_ID));
        assert!(line.timestamp_ms > 1_600_000_000_000);
    }
    assert_eq!((lines[120].message.as_str(), lines[120].level.as_str()), ("last", "WARN"));

    let batches = gw.state.log_batches();
    assert!(batches.len() >= 3, "120 lines need at least 3 batches, got {}", batches.len());
    for (batch, request) in &batches {
        assert!(!request.logs.is_empty() && request.logs.len() <= 50, "a batch of {}", request.logs.len());
        assert_eq!(request.sandbox_id, SANDBOX_ID);
        assert_eq!(batch.token.as_deref(), Some("Bearer test-sandbox-jwt"));
    }
    shutdown.drain(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_line_is_sent_within_the_flush_interval() {
    let gw = TestGateway::start().await;
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let (layer, queue) = logs::queue(SANDBOX_ID, 64);
    let shutdown = Shutdown::new();
    shutdown.spawn(LogShipper::new(client, queue).run(shutdown.clone()));
    let subscriber = tracing_subscriber::registry().with(layer.clone());
    tracing::subscriber::with_default(subscriber, || tracing::info!("alone"));
    let lines = eventually(WAIT, "the line", || {
        let lines = gw.state.log_lines();
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(lines[0].message, "alone");
    drop(layer);
    shutdown.drain(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gateway_down_logging_never_blocks_and_drops_are_reported() {
    let mut gw = TestGateway::start().await;
    gw.stop().await;
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let capacity = 1000;
    let (layer, queue) = logs::queue(SANDBOX_ID, capacity);
    let shutdown = Shutdown::new();
    shutdown.spawn(LogShipper::new(client, queue).with_backoff(short_backoff()).run(shutdown.clone()));

    // 100,000 events while the gateway is down: the loop must finish (a blocking
    // send would hang it; the timeout turns that into a failure).
    const EVENTS: u64 = 100_000;
    let counting = layer.clone();
    let emit = tokio::task::spawn_blocking(move || {
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..EVENTS {
                tracing::info!(target: "openshell_sandbox::proxy", n, "event");
            }
        });
    });
    tokio::time::timeout(Duration::from_secs(60), emit).await.expect("logging blocked").unwrap();
    let dropped_before = counting.dropped();
    assert!(dropped_before >= EVENTS - capacity as u64, "only {dropped_before} dropped with a queue of {capacity}");

    gw.restart().await;
    let (notice, shipped) = eventually(WAIT, "the drop report and every queued line", || {
        let lines = gw.state.log_lines();
        let notice = lines.iter().find(|l| l.message.contains("log lines dropped"))?.clone();
        let shipped = lines.iter().filter(|l| l.message == "event").count() as u64;
        (shipped + notice.fields["dropped"].parse::<u64>().unwrap() == EVENTS).then_some((notice, shipped))
    })
    .await;
    // Nothing vanished: every event was either shipped or counted as dropped.
    assert_eq!(notice.fields["dropped"], dropped_before.to_string());
    assert_eq!(shipped, EVENTS - dropped_before);
    assert_eq!(notice.level, "WARN");
    assert_eq!(counting.dropped(), 0, "the count was handed over");
    drop(counting);
    shutdown.drain(WAIT).await;
}
