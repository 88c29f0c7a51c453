//! Enforcement for agent children: stdio as their only descriptors, privilege drop,
//! no_new_privs, capability bounding set, Landlock and seccomp, applied in one order
//! between fork and exec.
//!
//! Interface contract (agent mode builds on it): everything that can fail for a policy
//! reason is resolved once by [`ChildSandbox::prepare`] before any child is spawned; each
//! spawn then calls [`ChildSandbox::apply`] as the *last* `pre_exec` step of its command
//! (after setsid / controlling terminal), so seccomp is installed just before exec.
//! Submodules: `identity` (who), `filesystem` (Landlock), `seccomp` (profiles), `enforce`
//! (the ordered steps), `syscalls` (the real system calls behind them).

mod enforce;
mod filesystem;
mod identity;
mod seccomp;
mod syscalls;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::SeccompChoice;
use crate::policy::Policy;
use crate::{Exit, ExitStatus};

pub use identity::DEFAULT_USER;
pub use seccomp::BASELINE as SECCOMP_BASELINE;

/// Failures of preparing the child sandbox. (A failure inside a child fails that spawn
/// with the step's errno and a note on the child's stderr naming the step.)
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A user or group named by the policy does not exist.
    #[error(
        "{field}: there is no {what} `{name}` on this system; create it (`{what}add --system {name}`) or set {field} to an existing {what} or a number"
    )]
    UnknownIdentity { field: &'static str, what: &'static str, name: String },
    /// Looking a user or group up failed.
    #[error("looking up the {what} `{name}` in the user database failed: {source}")]
    Lookup { what: &'static str, name: String, source: nix::Error },
    /// The policy would make children root.
    #[error("{field}: `{value}`: children never run as root; name an unprivileged user or group such as `sandbox`")]
    RootIdentity { field: &'static str, value: String },
    /// A numeric uid without a passwd entry and no group given.
    #[error(
        "process.run_as_user: uid {uid} has no /etc/passwd entry, so it has no primary group; set process.run_as_group"
    )]
    NoPrimaryGroup { uid: u32 },
    /// `hard_requirement` and a kernel that cannot enforce the filesystem policy.
    #[error(
        "landlock.compatibility is {compat} but this kernel cannot enforce filesystem_policy (Landlock ABI {kernel_abi}; at least 3 is needed, 0 or less means Landlock is missing or disabled): boot a kernel with Landlock enabled (lsm=...,landlock) or set landlock.compatibility: best_effort"
    )]
    LandlockUnavailable { compat: &'static str, kernel_abi: i64 },
    /// `hard_requirement` and paths that do not exist.
    #[error(
        "landlock.compatibility is hard_requirement but these filesystem_policy paths do not exist: {paths}; create them or remove them from the policy"
    )]
    LandlockMissingPaths { paths: String },
    /// A filesystem_policy path could not be opened.
    #[error("opening the filesystem_policy path {} for Landlock failed: {source}", path.display())]
    LandlockPath { path: PathBuf, source: std::io::Error },
    /// The Landlock ruleset could not be built.
    #[error("building the Landlock ruleset failed: {source}")]
    Landlock { source: landlock::RulesetError },
    /// The seccomp profile file could not be read.
    #[error(
        "reading the seccomp profile {} (--seccomp / OPENSHELL_SECCOMP) failed: {source}; give an existing profile file, `baseline` or `off`", path.display()
    )]
    SeccompRead { path: PathBuf, source: std::io::Error },
    /// The seccomp profile is not valid.
    #[error("the seccomp profile {} (--seccomp / OPENSHELL_SECCOMP) is invalid: {reason}", path.display())]
    SeccompProfile { path: PathBuf, reason: String },
    /// The supervisor cannot change identities or drop capabilities.
    #[error(
        "agent mode cannot drop children's privileges: the supervisor lacks {missing}; run it as root with these capabilities, or set OPENSHELL_MODE=nested when an outer sandbox already confines the agent"
    )]
    NotPrivileged { missing: String },
    /// The kernel's highest capability number could not be read.
    #[error("reading /proc/sys/kernel/cap_last_cap failed: {reason}; is /proc mounted?")]
    CapLastCap { reason: String },
    /// The kernel cannot keep the supervisor's descriptors from children.
    #[error(
        "this kernel cannot mark the supervisor's descriptors close-on-exec for its children (close_range with CLOSE_RANGE_CLOEXEC, Linux 5.11 or later): {source}; children would inherit them, so agent mode does not start: run it on Linux 5.11 or later"
    )]
    CloseRange { source: std::io::Error },
    /// The supervisor could not be made non-dumpable.
    #[error("making the supervisor non-dumpable (prctl PR_SET_DUMPABLE 0) failed: {source}")]
    Dumpable { source: nix::Error },
}

impl ExitStatus for SandboxError {
    fn exit_status(&self) -> Exit {
        match self {
            SandboxError::UnknownIdentity { .. }
            | SandboxError::RootIdentity { .. }
            | SandboxError::NoPrimaryGroup { .. }
            | SandboxError::LandlockMissingPaths { .. } => Exit::InvalidPolicy,
            SandboxError::LandlockUnavailable { .. } | SandboxError::CloseRange { .. } => Exit::Unavailable,
            SandboxError::SeccompRead { .. }
            | SandboxError::SeccompProfile { .. }
            | SandboxError::NotPrivileged { .. } => Exit::Usage,
            SandboxError::Lookup { .. }
            | SandboxError::LandlockPath { .. }
            | SandboxError::Landlock { .. }
            | SandboxError::CapLastCap { .. }
            | SandboxError::Dumpable { .. } => Exit::Internal,
        }
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
    /// `None`: unenforced (nested mode).
    steps: Option<enforce::Steps>,
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
        syscalls::probe_close_range().map_err(|source| SandboxError::CloseRange { source })?;
        if nested {
            tracing::warn!("nested mode: children run as the supervisor, without privilege drop, Landlock or seccomp");
            return Ok(Self::unenforced());
        }
        check_privileges(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())?;
        let user = identity::resolve(&policy.process)?;
        let landlock = filesystem::prepare(&policy.filesystem_policy, policy.landlock.compatibility, workdir)?;
        let seccomp = seccomp::prepare(seccomp)?;
        let last_cap = last_cap()?;
        tracing::info!(
            user = %user.name,
            uid = user.uid,
            gid = user.gid,
            landlock = landlock.is_some(),
            seccomp_filters = seccomp.len(),
            "children run sandboxed"
        );
        let steps =
            enforce::Steps { groups: user.groups.clone(), gid: user.gid, uid: user.uid, last_cap, landlock, seccomp };
        Ok(Arc::new(ChildSandbox { user: Some(user), steps: Some(steps) }))
    }

    /// No enforcement: children run as the supervisor, as in nested mode (they still get
    /// stdio only; `prepare` checks that the kernel can do that).
    pub fn unenforced() -> Arc<Self> {
        Arc::new(ChildSandbox { user: None, steps: None })
    }

    /// The identity children run as; `None` when they run as the supervisor (nested).
    pub fn user(&self) -> Option<&ChildUser> {
        self.user.as_ref()
    }

    /// Whether Landlock is applied to children.
    pub fn landlock_enabled(&self) -> bool {
        self.steps.as_ref().is_some_and(|s| s.landlock.is_some())
    }

    /// How many seccomp filters children get (0: seccomp off or unenforced).
    pub fn seccomp_filters(&self) -> usize {
        self.steps.as_ref().map_or(0, |s| s.seccomp.len())
    }

    /// Registers the enforcement steps as a `pre_exec` hook of `command`. Call it after
    /// every other `pre_exec` registration: hooks run in registration order and seccomp
    /// must come last. A failing step makes the spawn fail with that step's error.
    /// Unenforced, the hook still keeps every descriptor but stdio from the child.
    #[allow(unsafe_code)]
    pub fn apply(self: &Arc<Self>, command: &mut std::process::Command) {
        let sandbox = Arc::clone(self);
        let hook = move || {
            enforce::enforce(sandbox.steps.as_ref(), &mut syscalls::Real).map_err(|failed| {
                syscalls::report_failure(failed.step);
                failed.error
            })
        };
        // SAFETY: the hook runs between fork and exec and is async-signal-safe: it only reads
        // what `prepare` built before the fork and makes raw system calls (no allocation, no
        // locks); a failure is reported with a static string written to fd 2.
        unsafe { command.pre_exec(hook) };
    }
}

/// Fails early, with the fix, when the supervisor could not apply the steps: each spawn
/// would otherwise fail with a bare EPERM. `status` is the text of /proc/self/status.
fn check_privileges(status: &str) -> Result<(), SandboxError> {
    const NEEDED: [(u32, &str); 3] = [(6, "CAP_SETGID"), (7, "CAP_SETUID"), (8, "CAP_SETPCAP")];
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = NEEDED.iter().filter(|(bit, _)| effective & (1 << bit) == 0).map(|(_, n)| *n).collect();
    if missing.is_empty() { Ok(()) } else { Err(SandboxError::NotPrivileged { missing: missing.join(", ") }) }
}

/// The kernel's highest capability number, so that every capability is dropped.
fn last_cap() -> Result<u32, SandboxError> {
    let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .map_err(|e| SandboxError::CapLastCap { reason: e.to_string() })?;
    text.trim().parse().map_err(|e| SandboxError::CapLastCap { reason: format!("`{}`: {e}", text.trim()) })
}

/// Makes the supervisor itself not dumpable (no core dumps, no ptrace attach by the
/// children's uid), before any child exists.
pub fn harden_supervisor() -> Result<(), SandboxError> {
    nix::sys::prctl::set_dumpable(false).map_err(|source| SandboxError::Dumpable { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisor_needs_the_identity_and_capability_privileges() {
        assert!(check_privileges("Name:\tx\nCapEff:\t000001ffffffffff\n").is_ok());
        assert!(check_privileges("CapEff:\t00000000000001c0\n").is_ok());
        let err = check_privileges("CapEff:\t0000000000000080\n").unwrap_err().to_string();
        assert!(
            err.contains("CAP_SETGID, CAP_SETPCAP") && !err.contains("CAP_SETUID") && err.contains("nested"),
            "{err}"
        );
        let err = check_privileges("no such line").unwrap_err().to_string();
        assert!(err.contains("CAP_SETGID, CAP_SETUID, CAP_SETPCAP"), "{err}");
    }
}
