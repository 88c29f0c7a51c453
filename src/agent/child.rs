//! Starting children (SSH sessions and the workload) under one set of rules: the child
//! environment built from nothing, the working directory, a new session (with a pty of its
//! own as controlling terminal, or none), and the sandbox's enforcement as the last
//! `pre_exec` step.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::termios::Termios;

use super::env::{ChildEnvSource, Identity};
use super::pty::{self, Master, Size};
use crate::sandbox::ChildSandbox;

/// How a child relates to sessions and terminals. Every child leads a new session (and
/// process group), so signals reach all it starts and no terminal of the supervisor's is
/// its controlling terminal (`TIOCSTI` works only there for an unprivileged process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Session {
    /// A new session without a controlling terminal.
    New,
    /// A new session whose controlling terminal is the first of its stdin, stdout and
    /// stderr that is a terminal: the pty slave from [`Launcher::open_pty`].
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

    /// The children's working directory.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// A command for `program` with the child environment (`term` for `TERM`), the working
    /// directory, the session hook and, registered last, the sandbox. Stdio is the caller's.
    pub fn command(&self, program: impl AsRef<OsStr>, term: Option<&str>, session: Session) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        command.env_clear().envs(self.env.env(term)).current_dir(&self.workdir);
        new_session(&mut command, session == Session::Terminal);
        // Hooks run in registration order: the sandbox's must be the last one.
        self.sandbox.apply(&mut command);
        command
    }

    /// A new pty pair for a child: the slave belongs to the user children run as (mode
    /// 0620, as sshd does), so the child may open it by the name `tty` prints.
    pub fn open_pty(&self, size: Size, modes: Option<&Termios>) -> std::io::Result<(Master, OwnedFd)> {
        let (master, slave) = pty::open(size, modes)?;
        if let Some(user) = self.sandbox.user() {
            nix::unistd::fchown(&slave, Some(user.uid.into()), Some(user.gid.into()))?;
            nix::sys::stat::fchmod(&slave, nix::sys::stat::Mode::from_bits_truncate(0o620))?;
        }
        Ok((master, slave))
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

/// Registers `setsid()` and, with `terminal`, `TIOCSCTTY` on the first of fds 0, 1 and 2
/// that is a terminal (the others answer ENOTTY), between fork and exec.
#[allow(unsafe_code)]
fn new_session(command: &mut std::process::Command, terminal: bool) {
    // SAFETY: the hook runs in the forked child before exec (after stdio is in place) and
    // calls only setsid(2) and ioctl(2), both async-signal-safe; it touches no memory of
    // the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if !terminal {
                return Ok(());
            }
            for fd in 0..3 {
                if libc::ioctl(fd, libc::TIOCSCTTY, 0) == 0 {
                    return Ok(());
                }
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::ENOTTY) {
                    return Err(error);
                }
            }
            Err(std::io::Error::from_raw_os_error(libc::ENOTTY))
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
    fn a_new_session_leads_its_own_session_without_a_terminal() {
        let dir = tempfile::tempdir().unwrap();
        // Field 6 of /proc/PID/stat is the session id, field 7 the controlling terminal.
        let line = "cut -d' ' -f6,7 /proc/$$/stat; echo $$";
        let out = launcher(dir.path()).shell_command(line, None, Session::New).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "{text}");
        assert_eq!(fields[0], fields[2], "the child leads its session: {text}");
        assert_eq!(fields[1], "0", "and has no controlling terminal: {text}");
    }

    #[tokio::test]
    async fn a_terminal_session_takes_the_pty_on_whichever_stdio_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = launcher(dir.path());
        // Only stdout is the pty: stdin is a pipe, so the hook must pass over fd 0.
        let (_master, slave) = launcher.open_pty(Size { cols: 80, rows: 24, ..Size::default() }, None).unwrap();
        let mut command =
            launcher.shell_command("test ! -t 0 && test -t 1 && : </dev/tty && echo ok >&2", None, Session::Terminal);
        command.stdin(std::process::Stdio::piped()).stdout(slave).stderr(std::process::Stdio::piped());
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "ok\n");
    }
}
