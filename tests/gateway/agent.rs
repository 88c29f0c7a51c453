//! Agent mode with the test gateway, as the real binary (`--nested`, policy from the
//! gateway): the supervisor session says hello once SSH is served, an SSH relay the
//! gateway opens reaches the agent's SSH server (its banner comes back through
//! RelayStream), a TCP relay to a non-loopback target is refused, and the workload's
//! exit code reaches the gateway with the session's instance id, and its log lines too.

use crate::support::agent as agent_support;
use crate::support::gateway as gateway_support;

use std::process::Stdio;
use std::time::Duration;

use agent_support::{Fixture, run, wait_output};
use gateway_support::{Payload, SANDBOX_ID, TOKEN, TestGateway, eventually};
use openshell_sandbox::gateway::proto::sandbox::SandboxPolicy;
use openshell_sandbox::gateway::proto::supervisor_message::Payload as Sup;
use openshell_sandbox::gateway::proto::{TcpRelayTarget, relay_open};
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_relays_ssh_refuses_remote_tcp_and_reports_the_workload_exit() {
    let fixture = Fixture::new();
    let gateway = TestGateway::start().await;
    gateway.state.set_policy(SandboxPolicy { version: 1, ..Default::default() }, 1, "h1", 1);
    let go = fixture.path().join("go");
    let mut cmd = agent_support::bin();
    cmd.args(["agent", "--nested", "--tls-dir"])
        .arg(fixture.tls())
        .arg("--ssh-socket")
        .arg(fixture.socket())
        .arg("--workdir")
        .arg(fixture.work())
        .args(["--endpoint", &gateway.url()])
        .env("OPENSHELL_SANDBOX_TOKEN", TOKEN)
        .env("OPENSHELL_SANDBOX_ID", SANDBOX_ID)
        .args(["--", "sh", "-c", &format!("while [ ! -e {} ]; do sleep 0.05; done; exit 7", go.display())]);
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();

    eventually(WAIT, "a supervisor session", || gateway.state.has_session().then_some(())).await;
    let instance_id = match gateway.state.supervisor_messages().first() {
        Some(Sup::Hello(hello)) => {
            assert_eq!(hello.sandbox_id, SANDBOX_ID);
            assert!(uuid::Uuid::parse_str(&hello.instance_id).is_ok(), "{hello:?}");
            hello.instance_id.clone()
        }
        other => panic!("the first supervisor message is not hello: {other:?}"),
    };

    let mut pipe = gateway.state.open_relay(None).await.expect("an SSH relay");
    let mut banner = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 256];
        while !banner.windows(8).any(|w| w == b"SSH-2.0-") {
            let n = pipe.stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the relay ended before the SSH banner");
            banner.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no SSH banner through the relay: {:?}", String::from_utf8_lossy(&banner));
    drop(pipe);

    let remote = relay_open::Target::Tcp(TcpRelayTarget { host: "192.0.2.10".into(), port: 22 });
    let refused = gateway.state.open_relay(Some(remote)).await.err().expect("a non-loopback TCP relay is refused");
    assert!(refused.contains("loopback"), "{refused}");

    std::fs::write(&go, "").unwrap();
    let output = tokio::task::spawn_blocking(move || wait_output(child, Duration::from_secs(40))).await.unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(7), "{err}");
    let exits: Vec<_> = gateway
        .state
        .calls_of("ReportMainProcessExit")
        .into_iter()
        .filter_map(|c| match c.payload {
            Payload::Exit(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!((exits[0].exit_code, exits[0].instance_id.as_str()), (7, instance_id.as_str()));
    assert_eq!(exits[0].sandbox_id, SANDBOX_ID);
    let shipped = gateway.state.log_lines();
    // The workload's end is an OCSF Process Activity: its shorthand, with level OCSF.
    let ended =
        shipped.iter().find(|l| l.message.starts_with("PROC:TERMINATE ")).expect("the workload's end is shipped");
    assert_eq!((ended.level.as_str(), ended.target.as_str()), ("OCSF", "ocsf"), "{ended:?}");
    assert!(ended.message.starts_with("PROC:TERMINATE [LOW] ") && ended.message.ends_with(" [exit:7]"), "{ended:?}");
    assert_eq!((ended.fields["code"].as_str(), ended.fields["ocsf.severity_id"].as_str()), ("7", "2"), "{ended:?}");
    let launched =
        shipped.iter().find(|l| l.message.starts_with("PROC:LAUNCH [INFO] ")).expect("the launch is shipped");
    assert_eq!(launched.level, "OCSF", "{launched:?}");
    assert!(shipped.iter().all(|l| (l.level == "OCSF") == (l.target == "ocsf")), "{shipped:?}");
}

#[test]
fn an_endpoint_without_a_token_stops_the_agent_with_64() {
    let fixture = Fixture::new();
    let mut cmd = agent_support::bin();
    cmd.args(["agent", "--nested", "--tls-dir"]).arg(fixture.tls()).args([
        "--endpoint",
        "http://127.0.0.1:9",
        "--sandbox-id",
        "sb-1",
    ]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no sandbox token") && err.contains("OPENSHELL_SANDBOX_TOKEN"), "{err}");
}
