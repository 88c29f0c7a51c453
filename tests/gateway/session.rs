//! The supervisor session against the test gateway: hello with a fresh instance id,
//! heartbeats at the gateway's interval, relays opened on demand with bytes flowing both
//! ways through RelayStream to a local Unix socket (frames of at most 16 KiB, half-close
//! as EOF both ways), TCP relays to loopback only, reconnects after a restart or a
//! rejection, and ReportMainProcessExit retried until acknowledged.

use crate::support::gateway as gateway_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_support::{Payload, SANDBOX_ID, SessionReply, TestGateway, eventually};
use openshell_sandbox::gateway::GatewayClient;
use openshell_sandbox::gateway::backoff::Backoff;
use openshell_sandbox::gateway::exit::report_main_process_exit;
use openshell_sandbox::gateway::proto::supervisor_message::Payload as Sup;
use openshell_sandbox::gateway::proto::{SshRelayTarget, TcpRelayTarget, relay_open};
use openshell_sandbox::gateway::session::{SessionOptions, Supervisor};
use openshell_sandbox::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

/// A Unix socket server echoing each connection until EOF, then closing.
fn echo_server(dir: &Path) -> PathBuf {
    let path = dir.join("ssh.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    path
}

struct Running {
    gw: TestGateway,
    shutdown: Shutdown,
    instance_id: String,
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

async fn running(reply: SessionReply) -> Running {
    let gw = TestGateway::start().await;
    gw.state.set_session_reply(reply);
    let dir = tempfile::tempdir().unwrap();
    let socket = echo_server(dir.path());
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let mut options = SessionOptions::new(&socket);
    options.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    let supervisor = Supervisor::new(client, options);
    let instance_id = supervisor.instance_id().to_owned();
    let shutdown = Shutdown::new();
    shutdown.spawn(supervisor.run(shutdown.clone()));
    eventually(WAIT, "an accepted session", || gw.state.has_session().then_some(())).await;
    Running { gw, shutdown, instance_id, _dir: dir, socket }
}

fn hellos(gw: &TestGateway) -> Vec<(String, String)> {
    gw.state
        .supervisor_messages()
        .into_iter()
        .filter_map(|m| match m {
            Sup::Hello(h) => Some((h.sandbox_id, h.instance_id)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_session_says_hello_and_heartbeats_at_the_given_interval() {
    let r = running(SessionReply { heartbeat_secs: 1, ..Default::default() }).await;
    assert_eq!(hellos(&r.gw), [(SANDBOX_ID.to_owned(), r.instance_id.clone())]);
    assert!(uuid::Uuid::parse_str(&r.instance_id).is_ok(), "{}", r.instance_id);
    let beats = eventually(WAIT, "3 heartbeats", || {
        let beats: Vec<_> = r
            .gw
            .state
            .calls_of("ConnectSupervisor")
            .into_iter()
            .filter(|c| matches!(&c.payload, Payload::Supervisor(m) if matches!(m.payload, Some(Sup::Heartbeat(_)))))
            .collect();
        (beats.len() >= 3).then_some(beats)
    })
    .await;
    let hello_at = r.gw.state.calls_of("ConnectSupervisor")[0].at;
    let mut previous = hello_at;
    for beat in &beats {
        let gap = beat.at - previous;
        assert!(gap >= Duration::from_millis(900) && gap < Duration::from_secs(3), "heartbeat gap {gap:?}");
        assert_eq!(beat.token.as_deref(), Some("Bearer test-sandbox-jwt"));
        previous = beat.at;
    }
    assert_eq!(r.shutdown.drain(WAIT).await, 0, "the session ends on shutdown");
}

#[tokio::test]
async fn an_ssh_relay_carries_bytes_both_ways_in_small_frames_with_half_close() {
    let r = running(SessionReply::default()).await;
    let pipe = r.gw.state.open_relay(Some(relay_open::Target::Ssh(SshRelayTarget {}))).await.unwrap();
    let (mut read, mut write) = tokio::io::split(pipe.stream);

    let data: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap(); // half-close towards the supervisor
    });
    let mut echoed = Vec::new();
    // EOF arrives only after our half-close reached the echo server and its close came back.
    tokio::time::timeout(WAIT, read.read_to_end(&mut echoed)).await.expect("EOF").unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "the echoed bytes differ");

    let sizes = pipe.frame_sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|n| *n > 0 && *n <= 16 * 1024), "frame sizes {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), data.len());

    let messages = r.gw.state.supervisor_messages();
    assert!(
        messages.iter().any(|m| matches!(m, Sup::RelayOpenResult(x) if x.success && x.channel_id == pipe.channel_id))
    );
    let inits = r.gw.state.calls_of("RelayStream");
    assert_eq!(inits.len(), 1);
    assert!(matches!(&inits[0].payload, Payload::RelayInit(id) if *id == pipe.channel_id));
    assert_eq!(inits[0].token.as_deref(), Some("Bearer test-sandbox-jwt"));
    r.shutdown.drain(WAIT).await;
}

#[tokio::test]
async fn a_local_half_close_leaves_the_other_direction_open() {
    let r = running(SessionReply::default()).await;
    // A local service that greets, closes its sending side, then reads until EOF.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"banner").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        let _ = got_tx.send(got);
    });
    let target = relay_open::Target::Tcp(TcpRelayTarget { host: "127.0.0.1".into(), port: port.into() });
    let mut pipe = r.gw.state.open_relay(Some(target)).await.unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(WAIT, pipe.stream.read_to_end(&mut greeting)).await.expect("EOF").unwrap();
    assert_eq!(greeting, b"banner");
    pipe.stream.write_all(b"after the peer's EOF").await.unwrap();
    pipe.stream.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, got_rx).await.unwrap().unwrap();
    assert_eq!(got, b"after the peer's EOF");
    r.shutdown.drain(WAIT).await;
}

#[tokio::test]
async fn tcp_relays_to_non_loopback_targets_are_refused() {
    let r = running(SessionReply::default()).await;
    for host in ["10.0.0.1", "169.254.169.254", "example.com", "0.0.0.0"] {
        let target = relay_open::Target::Tcp(TcpRelayTarget { host: host.into(), port: 22 });
        let err = r.gw.state.open_relay(Some(target)).await.err().expect("refused");
        assert!(err.contains(host) && err.contains("only loopback"), "{err}");
    }
    let refusals =
        r.gw.state
            .supervisor_messages()
            .into_iter()
            .filter(|m| matches!(m, Sup::RelayOpenResult(x) if !x.success))
            .count();
    assert_eq!(refusals, 4);
    assert!(r.gw.state.calls_of("RelayStream").is_empty(), "no stream is opened for a refused relay");
    r.shutdown.drain(WAIT).await;
}

#[tokio::test]
async fn a_missing_ssh_socket_is_refused_with_its_path() {
    let r = running(SessionReply::default()).await;
    std::fs::remove_file(&r.socket).unwrap();
    let err = r.gw.state.open_relay(None).await.err().expect("refused");
    assert!(err.contains(&r.socket.display().to_string()), "{err}");
    r.shutdown.drain(WAIT).await;
}

#[tokio::test]
async fn a_relay_closed_by_the_gateway_ends() {
    let r = running(SessionReply::default()).await;
    let mut pipe = r.gw.state.open_relay(None).await.unwrap();
    pipe.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, pipe.stream.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"ping");
    r.gw.state.close_relay(&pipe.channel_id).await;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, pipe.stream.read_to_end(&mut rest)).await.expect("the relay ends").unwrap();
    assert!(rest.is_empty());
    r.shutdown.drain(WAIT).await;
}

#[tokio::test]
async fn a_relay_whose_stream_fails_is_closed_with_relay_close() {
    let r = running(SessionReply::default()).await;
    r.gw.state.fail("RelayStream", 1, Code::Unavailable);
    let state = r.gw.state.clone();
    let opening = tokio::spawn(async move { state.open_relay(None).await.map(|_| ()) });
    let close = eventually(WAIT, "relay_close", || {
        r.gw.state.supervisor_messages().into_iter().find_map(|m| match m {
            Sup::RelayClose(c) => Some(c),
            _ => None,
        })
    })
    .await;
    assert!(close.reason.contains("RelayStream"), "{}", close.reason);
    opening.abort();
    r.shutdown.drain(WAIT).await;
}

#[tokio::test]
async fn the_session_comes_back_after_the_gateway_restarts() {
    let mut r = running(SessionReply::default()).await;
    r.gw.restart().await;
    eventually(WAIT, "a second hello", || (hellos(&r.gw).len() >= 2).then_some(())).await;
    let hellos = hellos(&r.gw);
    assert!(hellos.iter().all(|(_, id)| *id == r.instance_id), "the same instance id on reconnect: {hellos:?}");
    eventually(WAIT, "the new session", || r.gw.state.has_session().then_some(())).await;
    let mut pipe = r.gw.state.open_relay(None).await.unwrap();
    pipe.stream.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(WAIT, pipe.stream.read_exact(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf, b"again");
    r.shutdown.drain(WAIT).await;
}

#[tokio::test]
async fn a_rejected_session_is_tried_again() {
    let r = running(SessionReply { reject_first: 2, ..Default::default() }).await;
    assert_eq!(hellos(&r.gw).len(), 3, "two rejections, then accepted");
    let pipe = r.gw.state.open_relay(None).await;
    assert!(pipe.is_ok());
    r.shutdown.drain(WAIT).await;
}

#[tokio::test]
async fn the_workload_exit_is_reported_until_acknowledged() {
    let gw = TestGateway::start().await;
    gw.state.fail("ReportMainProcessExit", 3, Code::Unavailable);
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
    report_main_process_exit(&client, "instance-7", 42, deadline, backoff).await.unwrap();
    let calls = gw.state.calls_of("ReportMainProcessExit");
    assert_eq!(calls.iter().map(|c| c.failed).collect::<Vec<_>>(), [true, true, true, false]);
    let Payload::Exit(request) = &calls[3].payload else { panic!() };
    assert_eq!(
        (request.sandbox_id.as_str(), request.instance_id.as_str(), request.exit_code),
        (SANDBOX_ID, "instance-7", 42)
    );
}

#[tokio::test]
async fn reporting_the_exit_gives_up_at_the_deadline() {
    let mut gw = TestGateway::start().await;
    gw.stop().await;
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let started = tokio::time::Instant::now();
    let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
    let err =
        report_main_process_exit(&client, "i", 1, started + Duration::from_millis(300), backoff).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the deadline: {:?}", started.elapsed());
}
