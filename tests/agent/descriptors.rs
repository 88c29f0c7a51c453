//! Descriptors the supervisor inherited without close-on-exec (a file, a socket) never
//! reach its children: the workload, SSH exec with and without a pty, nested or sandboxed,
//! list exactly 0, 1, 2 and the listing's own directory handle in /proc/self/fd.

use crate::support::agent as agent_support;

use std::os::fd::OwnedFd;
use std::process::Command;

use agent_support::{Fixture, inherit_fd, only_stdio, run};

const LIST: &str = "exec ls -l /proc/self/fd";

/// A file and a socket, as descriptors 50 and 51 of the agent.
fn leak_into(fixture: &Fixture, cmd: &mut Command) {
    let file = std::fs::File::open(fixture.path().join("policy.yaml")).unwrap();
    let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    inherit_fd(cmd, OwnedFd::from(file), 50);
    inherit_fd(cmd, OwnedFd::from(socket), 51);
}

fn check_ssh_children(fixture: &Fixture) {
    let agent = fixture.start(|cmd| leak_into(fixture, cmd));
    for args in [&["sandbox@agent", LIST][..], &["-tt", "sandbox@agent", LIST]] {
        let (code, out, err) = run(&mut agent.ssh(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        only_stdio(&out);
    }
}

fn check_workload(fixture: &Fixture) {
    let mut cmd = fixture.agent_command();
    leak_into(fixture, &mut cmd);
    cmd.args(["--", "ls", "-l", "/proc/self/fd"]);
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{err}");
    only_stdio(&out);
}

#[test]
fn nested_children_get_stdio_only() {
    let fixture = Fixture::new();
    check_ssh_children(&fixture);
    check_workload(&fixture);
}

#[test]
fn sandboxed_children_get_stdio_only() {
    let Some(fixture) = Fixture::enforced_as("54321", 54321) else { return };
    check_ssh_children(&fixture);
    check_workload(&fixture);
}
