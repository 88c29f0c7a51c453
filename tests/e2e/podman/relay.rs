//! Exec sessions through the gateway relay: a loopback TCP listener in the test whose
//! every connection asks the test gateway for an SSH relay on the agent's supervisor
//! session (which reaches the gateway through the proxy's forward) and copies bytes both
//! ways, so the host's OpenSSH client talks to the agent's SSH server as a user's exec does.

use std::process::Command;
use std::sync::Arc;

use openshell_sandbox::gateway::proto::{SshRelayTarget, relay_open};

use super::e2e_support::{Output, run};
use super::gateway_support::State;
use super::sandbox::STEP;

/// Listens on 127.0.0.1:0 on `runtime`; returns the port. Each connection is one relay.
pub fn listen(runtime: &tokio::runtime::Runtime, state: Arc<State>) -> u16 {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                match state.open_relay(Some(relay_open::Target::Ssh(SshRelayTarget {}))).await {
                    Ok(mut pipe) => {
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut pipe.stream).await;
                    }
                    Err(e) => eprintln!("relay refused: {e}"),
                }
            });
        }
    });
    port
}

/// Runs ARGS in the agent through the relay: OpenSSH on the host, to [`listen`]'s port.
pub fn relay_exec(port: u16, args: &[&str]) -> Output {
    let line: Vec<String> = args.iter().map(|arg| format!("'{}'", arg.replace('\'', "'\\''"))).collect();
    let port = port.to_string();
    #[rustfmt::skip]
    let ssh = ["-p", &port, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "sandbox@127.0.0.1"];
    run(Command::new("ssh").args(ssh).arg(line.join(" ")), STEP)
}
