//! Audit events of the agent, as OCSF ([`crate::telemetry::ocsf`]): SSH Activity for
//! connections, keys and refused forwards; Process Activity for the workload and each SSH
//! child. Events of one SSH connection share its scope's uid (docs/audit.md).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use crate::telemetry::audit;
use crate::telemetry::ocsf::{Activity, Class, Endpoint, Event, Process, Scope, Severity, Verdict};

/// An SSH connection accepted: on TCP from `peer`, or on the gateway's Unix socket.
pub fn ssh_opened(peer: Option<SocketAddr>) {
    let message = if peer.is_some() { "SSH connection on TCP" } else { "SSH connection on the Unix socket" };
    let mut event = Event::new(Class::Ssh, Activity::OPEN, Severity::Informational, message);
    event.verdict = Some(Verdict::Allowed);
    event.src = peer.map(Endpoint::addr);
    let peer = peer.map(|p| p.to_string());
    audit!(INFO, event, peer);
}

/// An SSH connection ended after `duration`.
pub fn ssh_closed(peer: Option<SocketAddr>, duration: Duration) {
    let mut event = Event::new(Class::Ssh, Activity::CLOSE, Severity::Informational, "SSH connection closed");
    event.success = Some(true);
    event.src = peer.map(Endpoint::addr);
    let duration_ms = duration.as_millis() as u64;
    event.duration_ms = Some(duration_ms);
    audit!(INFO, event, duration_ms);
}

/// A public key offered by `user` on TCP, accepted or refused.
pub fn ssh_key(user: &str, accepted: bool) {
    let (verdict, severity, message) = if accepted {
        (Verdict::Allowed, Severity::Informational, "SSH public key accepted on TCP")
    } else {
        (Verdict::Denied, Severity::Medium, "SSH public key refused")
    };
    let mut event = Event::new(Class::Ssh, Activity::OPEN, severity, message);
    event.verdict = Some(verdict);
    event.ssh_user = Some(user);
    event.src = Scope::current().and_then(|s| s.peer).map(Endpoint::addr);
    if !accepted {
        event.detail = Some("the key is not in the authorized keys, or keys are not accepted on this listener");
    }
    audit!(INFO, event, user);
}

/// Something an SSH client asked that the agent refuses: a forward (`to`, when it names a
/// destination) or a subsystem; `reason` says which and why.
pub fn ssh_refused(to: Option<(&str, u16)>, reason: &str) {
    let mut event = Event::new(Class::Ssh, Activity::REFUSE, Severity::Medium, reason);
    event.verdict = Some(Verdict::Denied);
    event.dst = to.map(|(host, port)| Endpoint::host(host, port));
    event.detail = Some(reason);
    let (host, port) = to.unzip();
    audit!(WARN, event, host, port, reason);
}

/// A process the agent started: the workload, or an SSH `exec`/`shell`/`sftp` child.
/// Only the program's name is recorded, never its arguments.
pub fn launched(kind: &'static str, program: &Path, pid: Option<u32>) {
    let name = program_name(program);
    let mut event = Event::new(Class::Process, Activity::LAUNCH, Severity::Informational, "process started");
    event.success = Some(true);
    event.process = Some(Process { pid, name: &name, exit_code: None });
    event.unmapped.kind = Some(kind);
    audit!(INFO, event, kind, pid, program = %name);
}

/// A process the agent started has ended with `status` (a signal counts as 128 + its number).
pub fn ended(kind: &'static str, program: &Path, pid: Option<u32>, status: &ExitStatus) {
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(255);
    let name = program_name(program);
    let severity = if code == 0 { Severity::Informational } else { Severity::Low };
    let mut event = Event::new(Class::Process, Activity::TERMINATE, severity, "process ended");
    event.success = Some(code == 0);
    event.process = Some(Process { pid, name: &name, exit_code: Some(code) });
    event.unmapped.kind = Some(kind);
    audit!(INFO, event, kind, pid, program = %name, code);
}

fn program_name(program: &Path) -> String {
    program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned()
}
