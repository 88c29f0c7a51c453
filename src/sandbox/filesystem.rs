//! Landlock from `filesystem_policy`: the ruleset is created and filled in the supervisor
//! (path opening and allocation are not allowed after fork); each child only calls
//! `landlock_restrict_self` on the kept ruleset fd.
//!
//! The ruleset handles every filesystem right of the kernel's own ABI (capped at the newest
//! the crate knows), so nothing the kernel can check is left unchecked. `hard_requirement`
//! refuses to start unless the policy is enforced as written: Landlock present, at least
//! ABI 3 (below it `read_only` files can still be truncated), and every listed path present
//! (a rule binds an existing inode; a path created later would not be covered).
//! Only filesystem rights are handled: network egress is the proxy's, and Landlock scopes
//! (abstract sockets, signals) are not part of the policy.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, PathFdError, Ruleset, RulesetAttr,
    RulesetCreatedAttr,
};

use super::SandboxError;
use crate::policy::model::{Compatibility, FilesystemPolicy};

/// The newest ABI this build knows; rights beyond the kernel's are reported as missing.
const NEWEST: ABI = ABI::V10;
/// The oldest ABI that enforces `read_only` as written (ABI 3 added `Truncate`).
const REQUIRED: ABI = ABI::V3;

/// What the kernel lets us enforce, decided before any path is opened.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The ABI the ruleset is built at: the kernel's, capped at [`NEWEST`].
    pub abi: ABI,
    /// Rights known to this build that the kernel cannot enforce (warned about).
    pub lacking: BitFlags<AccessFs>,
}

/// Builds the ruleset for `policy`; `None` when the policy lists no paths, or when Landlock
/// is missing under `best_effort`.
pub fn prepare(
    policy: &FilesystemPolicy,
    compat: Compatibility,
    workdir: &Path,
) -> Result<Option<OwnedFd>, SandboxError> {
    if policy.is_empty() {
        return Ok(None);
    }
    let Some(plan) = plan(kernel_abi(), compat)? else { return Ok(None) };
    if !plan.lacking.is_empty() {
        tracing::warn!(
            kernel_abi = %plan.abi,
            lacking = ?plan.lacking,
            "the kernel's Landlock lacks some access rights; children run without them"
        );
    }
    let read = AccessFs::from_read(plan.abi);
    let all = AccessFs::from_all(plan.abi);
    let workdir = policy.include_workdir.then_some(workdir);
    let wanted = (policy.read_only.iter().map(|p| (p.as_path(), read)))
        .chain(policy.read_write.iter().map(PathBuf::as_path).chain(workdir).map(|p| (p, all)));
    let mut rules = Vec::new();
    let mut missing = Vec::new();
    for (path, access) in wanted {
        match open(path) {
            Ok(Some((fd, is_dir))) => {
                rules.push(PathBeneath::new(fd, if is_dir { access } else { access & AccessFs::from_file(plan.abi) }))
            }
            Ok(None) => missing.push(path.to_path_buf()),
            Err(source) => return Err(SandboxError::LandlockPath { path: path.to_path_buf(), source }),
        }
    }
    if !missing.is_empty() {
        let paths = missing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        if compat == Compatibility::HardRequirement {
            return Err(SandboxError::LandlockMissingPaths { paths });
        }
        tracing::warn!(%paths, "filesystem_policy paths do not exist; skipped (access to them stays denied)");
    }
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>)))
        .map_err(|source| SandboxError::Landlock { source })?;
    let fd: Option<OwnedFd> = ruleset.into();
    fd.map(Some).ok_or(SandboxError::LandlockUnavailable { compat: compat.as_str(), kernel_abi: 0 })
}

/// Decides what to enforce from the kernel's Landlock ABI version (`<= 0`: none).
pub fn plan(kernel_abi: i64, compat: Compatibility) -> Result<Option<Plan>, SandboxError> {
    // The crate prefers fixed ABIs; here the kernel's own version is the point (the brief of
    // this module: enforce everything the running kernel can), and `from` caps it at NEWEST.
    let abi = ABI::from(i32::try_from(kernel_abi).unwrap_or(i32::MAX));
    let hard = compat == Compatibility::HardRequirement;
    if abi == ABI::Unsupported || (hard && abi < REQUIRED) {
        if hard {
            return Err(SandboxError::LandlockUnavailable { compat: compat.as_str(), kernel_abi });
        }
        if abi == ABI::Unsupported {
            tracing::warn!(
                "the kernel has no Landlock: filesystem_policy is NOT enforced (landlock.compatibility is best_effort)"
            );
            return Ok(None);
        }
    }
    Ok(Some(Plan { abi, lacking: AccessFs::from_all(NEWEST) & !AccessFs::from_all(abi) }))
}

/// The kernel's Landlock ABI version; negative when Landlock is missing or disabled.
#[allow(unsafe_code)]
fn kernel_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the kernel reads no
    // memory and only returns the ABI version (or -1 with errno).
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    }
}

/// Opens `path` with O_PATH; `None` when it does not exist.
fn open(path: &Path) -> Result<Option<(PathFd, bool)>, io::Error> {
    let is_dir = match std::fs::metadata(path) {
        Ok(m) => m.is_dir(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match PathFd::new(path) {
        Ok(fd) => Ok(Some((fd, is_dir))),
        Err(PathFdError::OpenCall { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(PathFdError::OpenCall { source, .. }) => Err(source),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_effort_runs_on_without_what_the_kernel_lacks() {
        assert_eq!(plan(0, Compatibility::BestEffort).unwrap(), None);
        assert_eq!(plan(-1, Compatibility::BestEffort).unwrap(), None);
        let old = plan(1, Compatibility::BestEffort).unwrap().unwrap();
        assert!(old.lacking.contains(AccessFs::Truncate | AccessFs::Refer));
        let newest = plan(99, Compatibility::BestEffort).unwrap().unwrap();
        assert_eq!((newest.abi, newest.lacking), (NEWEST, BitFlags::EMPTY));
    }

    #[test]
    fn hard_requirement_refuses_a_kernel_that_cannot_enforce_read_only() {
        for abi in [-1, 0, 1, 2] {
            let err = plan(abi, Compatibility::HardRequirement).unwrap_err();
            assert!(err.to_string().contains("hard_requirement"), "{err}");
        }
        let seven = plan(7, Compatibility::HardRequirement).unwrap().unwrap();
        assert_eq!(seven.abi, ABI::V7);
        assert!(seven.lacking.contains(AccessFs::ResolveUnix) && !seven.lacking.contains(AccessFs::IoctlDev));
    }

    #[test]
    fn an_empty_policy_builds_no_ruleset() {
        let policy = FilesystemPolicy::default();
        assert!(prepare(&policy, Compatibility::HardRequirement, Path::new("/")).unwrap().is_none());
    }

    #[test]
    fn missing_paths_are_skipped_under_best_effort_and_refused_under_hard_requirement() {
        let policy = FilesystemPolicy {
            include_workdir: false,
            read_only: vec!["/usr".into(), "/no/such/dir-a".into()],
            read_write: vec!["/no/such/dir-b".into()],
        };
        let err = prepare(&policy, Compatibility::HardRequirement, Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("/no/such/dir-a, /no/such/dir-b"), "{err}");
        assert!(prepare(&policy, Compatibility::BestEffort, Path::new("/")).unwrap().is_some());
    }
}
