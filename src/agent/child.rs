//! Starting children (SSH sessions and the workload) under one set of rules: the child
//! environment built from nothing, the working directory, an optional new session with a
//! controlling terminal, and the sandbox's enforcement as the last `pre_exec` step.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::env::{ChildEnvSource, Identity};
use crate::sandbox::ChildSandbox;

/// How a child relates to sessions and terminals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Session {
    /// Stays in the supervisor's session and process group (the workload).
    Inherit,
    /// Leads a new session (and process group), so signals reach all it starts.
    New,
    /// Leads a new session whose controlling terminal is its stdin (a pty slave).
    Terminal,
}

/// Starts children; shared by every SSH connection and the workload.
#[derive(Debug)]
pub struct Launcher {
    sandbox: Arc<ChildSandbox>,
    env: ChildEnvSource,
    workdir: PathBuf,
}

impl Launcher {
    /// `workdir` is every child's working directory.
    pub fn new(sandbox: Arc<ChildSandbox>, env: ChildEnvSource, workdir: PathBuf) -> Self {
        Launcher { sandbox, env, workdir }
    }

    /// Who children run as.
    pub fn identity(&self) -> &Identity {
        self.env.identity()
    }

    /// The sandbox's child user; `None` when children run as the supervisor.
    pub fn sandbox_user(&self) -> Option<&crate::sandbox::ChildUser> {
        self.sandbox.user()
    }

    /// The children's working directory.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// A command for `program` with the child environment (`term` for `TERM`), the working
    /// directory, the session hook and, registered last, the sandbox. Stdio is the caller's.
    pub fn command(&self, program: impl AsRef<OsStr>, term: Option<&str>, session: Session) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        command.env_clear().envs(self.env.env(term)).current_dir(&self.workdir);
        match session {
            Session::Inherit => {}
            Session::New => new_session(&mut command, false),
            Session::Terminal => new_session(&mut command, true),
        }
        // Hooks run in registration order: the sandbox's must be the last one.
        self.sandbox.apply(&mut command);
        command
    }

    /// A command running `line` through the user's shell (`shell -c line`), as sshd does.
    pub fn shell_command(
        &self,
        line: impl AsRef<OsStr>,
        term: Option<&str>,
        session: Session,
    ) -> std::process::Command {
        let shell = self.identity().shell().to_owned();
        let mut command = self.command(&shell, term, session);
        command.arg("-c").arg(line);
        command
    }

    /// An interactive login shell (`argv[0]` starts with `-`).
    pub fn login_shell(&self, term: Option<&str>, session: Session) -> std::process::Command {
        let shell = self.identity().shell().to_owned();
        let name = shell.file_name().map_or_else(|| "sh".into(), |n| n.to_string_lossy().into_owned());
        let mut command = self.command(&shell, term, session);
        command.arg0(format!("-{name}"));
        command
    }
}

/// Registers `setsid()` and, with `terminal`, `TIOCSCTTY` on stdin, between fork and exec.
#[allow(unsafe_code)]
fn new_session(command: &mut std::process::Command, terminal: bool) {
    // SAFETY: the hook runs in the forked child before exec and calls only setsid(2) and
    // ioctl(2), both async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launcher(dir: &Path) -> Launcher {
        let sandbox = ChildSandbox::unenforced();
        let env = ChildEnvSource::new(Identity::of(&sandbox), dir);
        Launcher::new(sandbox, env, dir.to_owned())
    }

    #[test]
    fn children_get_the_built_environment_and_workdir_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = launcher(dir.path()).shell_command("env; pwd", Some("vt100"), Session::New).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("OPENSHELL_SANDBOX=1\n"), "{text}");
        assert!(text.contains("TERM=vt100\n"), "{text}");
        assert!(!text.contains("CARGO"), "the supervisor's environment does not leak: {text}");
        assert!(text.trim_end().ends_with(&dir.path().display().to_string()), "{text}");
    }

    #[test]
    fn a_new_session_leads_its_own_session() {
        let dir = tempfile::tempdir().unwrap();
        // Field 6 of /proc/PID/stat is the session id.
        let line = "cut -d' ' -f6 /proc/$$/stat; echo $$";
        let out = launcher(dir.path()).shell_command(line, None, Session::New).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 2, "{text}");
        assert_eq!(fields[0], fields[1], "the child leads its session: {text}");
        let out = launcher(dir.path()).shell_command(line, None, Session::Inherit).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_ne!(fields[0], fields[1], "an inheriting child does not: {text}");
    }
}
