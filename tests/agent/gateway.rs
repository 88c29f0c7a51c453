//! Agent mode with its policy from the gateway (no local file): the real binary fetches
//! `GetSandboxConfig` from the test gateway with the sandbox token, then serves SSH; a
//! gateway that sends no policy stops it with exit 65.

use crate::support::agent as agent_support;
use crate::support::gateway as gateway_support;

use std::process::Command;
use std::time::Duration;

use agent_support::{Fixture, run};
use gateway_support::{SANDBOX_ID, TOKEN, TestGateway};
use openshell_sandbox::gateway::proto::sandbox::SandboxPolicy;

fn agent_from_gateway(fixture: &Fixture, gateway: &TestGateway) -> Command {
    let mut cmd = agent_support::bin();
    cmd.args(["agent", "--nested", "--tls-dir"])
        .arg(fixture.tls())
        .arg("--ssh-socket")
        .arg(fixture.socket())
        .arg("--endpoint")
        .arg(gateway.url())
        .env("OPENSHELL_SANDBOX_TOKEN", TOKEN)
        .env("OPENSHELL_SANDBOX_ID", SANDBOX_ID);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_comes_from_the_gateway_when_no_file_is_given() {
    let fixture = Fixture::new();
    let gateway = TestGateway::start().await;
    gateway.state.set_policy(SandboxPolicy { version: 1, ..Default::default() }, 1, "h1", 1);
    let mut child = agent_from_gateway(&fixture, &gateway).spawn().unwrap();
    let socket = fixture.socket();
    let listening = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "the agent serves SSH once the gateway's policy is loaded");
    let calls = gateway.state.calls_of("GetSandboxConfig");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].token.as_deref().is_some_and(|t| t.ends_with(TOKEN)), "{calls:?}");
    assert_eq!(calls[0].sandbox_id, SANDBOX_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_a_policy_stops_the_agent_with_65() {
    let fixture = Fixture::new();
    let gateway = TestGateway::start().await;
    let mut cmd = agent_from_gateway(&fixture, &gateway);
    let (code, _, err) = tokio::task::spawn_blocking(move || run(&mut cmd)).await.unwrap();
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("no policy"), "{err}");
}
