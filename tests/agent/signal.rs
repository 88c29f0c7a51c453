//! SSH `signal` requests, which the OpenSSH client does not send: a russh client over the
//! Unix socket signals a running exec child (its trap decides the exit status) and kills
//! another one (the server answers with `exit-signal` KILL).

use crate::support::agent as agent_support;

use std::sync::Arc;
use std::time::Duration;

use agent_support::Fixture;
use russh::keys::PublicKeyOrCertificate;
use russh::{ChannelMsg, Sig};

struct AcceptAny;

impl russh::client::Handler for AcceptAny {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Runs `line`, waits for "ready" on stdout, sends `signal`, returns how the child ended.
async fn signal_exec(socket: &std::path::Path, line: &str, signal: Sig) -> ChannelMsg {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let config = Arc::new(russh::client::Config::default());
    let mut handle = russh::client::connect_stream(config, stream, AcceptAny).await.unwrap();
    assert!(handle.authenticate_none("sandbox").await.unwrap().success());
    let mut channel = handle.channel_open_session().await.unwrap();
    channel.exec(true, line).await.unwrap();
    let mut out = Vec::new();
    let ended = async {
        loop {
            match channel.wait().await.expect("the channel closed without an exit report") {
                ChannelMsg::Data { data } => {
                    out.extend_from_slice(&data);
                    if out.ends_with(b"ready\n") {
                        channel.signal(signal.clone()).await.unwrap();
                    }
                }
                msg @ (ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. }) => return msg,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), ended).await.expect("no exit report within 20 s")
}

#[tokio::test]
async fn signals_reach_the_child_and_exit_signals_come_back() {
    let fixture = Fixture::new();
    let socket = fixture.socket();
    // Blocks briefly until the agent listens; nothing else runs on this test's runtime yet.
    let agent = fixture.start(|_| {});

    let trapped = "trap 'exit 9' USR1; echo ready; while :; do sleep 0.05; done";
    match signal_exec(&socket, trapped, Sig::USR1).await {
        ChannelMsg::ExitStatus { exit_status } => assert_eq!(exit_status, 9),
        other => panic!("expected exit status 9, got {other:?}"),
    }
    match signal_exec(&socket, "echo ready; exec sleep 30", Sig::KILL).await {
        ChannelMsg::ExitSignal { signal_name, .. } => assert!(matches!(signal_name, Sig::KILL), "{signal_name:?}"),
        other => panic!("expected exit-signal KILL, got {other:?}"),
    }
    drop(agent);
}
