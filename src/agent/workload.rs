//! The workload (docs/architecture.md, "Agent mode", step 7): the command after `--`,
//! started like every other child, in a session of its own: on a pty of its own when the supervisor has a
//! terminal (see [`super::terminal`]), else with the supervisor's stdio. SIGTERM and SIGINT
//! are passed on to its process group; its exit status becomes the supervisor's (128 + n
//! when signal n ended it).

use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use super::audit;
use super::child::{Launcher, Session};
use super::terminal::Outer;
use crate::{Exit, ExitStatus};

/// Failures of running the workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The command could not be started.
    #[error("cannot start the workload `{command}`: {source}")]
    Spawn {
        /// The program.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The workload's pty could not be set up.
    #[error("cannot give the workload a terminal of its own: {0}")]
    Terminal(std::io::Error),
    /// Signal handling or waiting failed.
    #[error("cannot supervise the workload: {0}")]
    Supervise(std::io::Error),
}

impl ExitStatus for WorkloadError {
    fn exit_status(&self) -> Exit {
        match self {
            // The shell's conventions: 127 not found, 126 found but not executable.
            WorkloadError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Exit::Workload(127),
            WorkloadError::Spawn { .. } => Exit::Workload(126),
            WorkloadError::Terminal(_) | WorkloadError::Supervise(_) => Exit::Internal,
        }
    }
}

/// Runs `argv` to its end and returns its status as the supervisor's.
pub async fn run(launcher: &Launcher, argv: &[String]) -> Result<Exit, WorkloadError> {
    let Some((program, args)) = argv.split_first() else { return Ok(Exit::Success) };
    // The workload shows on the supervisor's terminal, so it gets the supervisor's TERM.
    let term = std::env::var("TERM").ok();
    let outer = Outer::detect();
    let session = if outer.is_some() { Session::Terminal } else { Session::New };
    let mut command = launcher.command(program, term.as_deref(), session);
    command.args(args).stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    let pty = outer.map(|outer| outer.attach(launcher, &mut command)).transpose().map_err(WorkloadError::Terminal)?;
    let mut term_signal = signal(SignalKind::terminate()).map_err(WorkloadError::Supervise)?;
    let mut int_signal = signal(SignalKind::interrupt()).map_err(WorkloadError::Supervise)?;
    let mut relay = pty.map(|pty| pty.relay()).transpose().map_err(WorkloadError::Terminal)?;
    // `command`, with the parent's copies of the pty slave, is gone after this statement.
    let mut child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|source| WorkloadError::Spawn { command: program.clone(), source })?;
    // It leads its own session, so its pid is also its process group.
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1).map(Pid::from_raw);
    audit::launched("workload", Path::new(program), pid.map(|p| p.as_raw() as u32));
    if let Some(Err(e)) = relay.as_mut().map(|r| r.raw_mode()) {
        tracing::warn!("cannot put the terminal in raw mode, keys are line-buffered and echoed twice: {e}");
    }
    let status = loop {
        let forward = tokio::select! {
            status = child.wait() => break status.map_err(WorkloadError::Supervise)?,
            _ = term_signal.recv() => Signal::SIGTERM,
            _ = int_signal.recv() => Signal::SIGINT,
        };
        tracing::info!(signal = forward.as_str(), "passing the signal on to the workload");
        if let Some(pid) = pid {
            let _ = killpg(pid, forward);
        }
    };
    if let Some(relay) = relay {
        relay.finish().await;
    }
    audit::ended("workload", Path::new(program), pid.map(|p| p.as_raw() as u32), &status);
    let exit = exit_of(status);
    Ok(exit)
}

/// The supervisor's exit status for the workload's.
pub fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Exit::Success,
        (Some(code), _) => Exit::Workload(u8::try_from(code).unwrap_or(255)),
        (None, Some(signal)) => Exit::Workload(u8::try_from(128 + signal).unwrap_or(255)),
        (None, None) => Exit::Workload(255),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn statuses_map_like_a_shell() {
        assert_eq!(exit_of(std::process::ExitStatus::from_raw(0)), Exit::Success);
        assert_eq!(exit_of(std::process::ExitStatus::from_raw(3 << 8)).code(), 3);
        assert_eq!(exit_of(std::process::ExitStatus::from_raw(libc::SIGTERM)).code(), 143);
        assert_eq!(exit_of(std::process::ExitStatus::from_raw(libc::SIGKILL)).code(), 137);
    }
}
