//! Enforcement for agent children: privilege drop, no_new_privs, capability bounding
//! set, Landlock and seccomp, applied in one order between fork and exec.
//!
//! Interface contract (agent mode builds on it): everything that can fail for a policy
//! reason is resolved once by [`ChildSandbox::prepare`] before any child is spawned; each
//! spawn then calls [`ChildSandbox::apply`] as the *last* `pre_exec` step of its command
//! (after setsid / controlling terminal), so seccomp is installed just before exec.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::SeccompChoice;
use crate::policy::Policy;
use crate::{Exit, ExitStatus};

/// Failures of preparing or applying the child sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Not built yet.
    #[error("the child sandbox is not built yet")]
    NotBuilt,
}

impl ExitStatus for SandboxError {
    fn exit_status(&self) -> Exit {
        Exit::Internal
    }
}

/// The identity children run as, resolved from `process.run_as_user` / `run_as_group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildUser {
    /// User name (from /etc/passwd, or the number as text when it has no entry).
    pub name: String,
    /// Numeric user id; never 0.
    pub uid: u32,
    /// Numeric primary group id; never 0.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
    /// Home directory (for `HOME`).
    pub home: PathBuf,
    /// Login shell (for `SHELL`).
    pub shell: PathBuf,
}

/// Everything a child needs, resolved before the first spawn and shared by all spawns.
#[derive(Debug)]
pub struct ChildSandbox {
    user: Option<ChildUser>,
}

impl ChildSandbox {
    /// Resolves the child identity, the Landlock rules and the seccomp filter for `policy`.
    /// `workdir` is the children's working directory (Landlock's `include_workdir`).
    /// `nested` means no enforcement at all (children run as the supervisor).
    pub fn prepare(
        policy: &Policy,
        seccomp: &SeccompChoice,
        workdir: &Path,
        nested: bool,
    ) -> Result<Arc<Self>, SandboxError> {
        let _ = (policy, seccomp, workdir, nested);
        Err(SandboxError::NotBuilt)
    }

    /// No enforcement: children run as the supervisor, as in nested mode.
    pub fn unenforced() -> Arc<Self> {
        Arc::new(ChildSandbox { user: None })
    }

    /// The identity children run as; `None` when they run as the supervisor (nested).
    pub fn user(&self) -> Option<&ChildUser> {
        self.user.as_ref()
    }

    /// Registers the enforcement steps as a `pre_exec` hook of `command`. Call it after
    /// every other `pre_exec` registration: hooks run in registration order and seccomp
    /// must come last. A failing step makes the spawn fail with that step's error.
    pub fn apply(self: &Arc<Self>, command: &mut std::process::Command) {
        let _ = command;
    }
}

/// Makes the supervisor itself not dumpable (no core dumps, no ptrace attach by the
/// children's uid), before any child exists.
pub fn harden_supervisor() -> Result<(), SandboxError> {
    Err(SandboxError::NotBuilt)
}
