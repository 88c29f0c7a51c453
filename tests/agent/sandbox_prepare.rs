//! `ChildSandbox::prepare` refusals and custom seccomp profiles: every refusal names the
//! input at fault and carries the documented exit status; a profile file really filters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use openshell_sandbox::config::SeccompChoice;
use openshell_sandbox::policy::Policy;
use openshell_sandbox::policy::model::{Compatibility, FilesystemPolicy, LandlockPolicy, ProcessPolicy};
use openshell_sandbox::sandbox::{ChildSandbox, SandboxError, harden_supervisor};
use openshell_sandbox::{Exit, ExitStatus};

fn policy(read_only: &[&str], compatibility: Compatibility, user: Option<&str>) -> Policy {
    Policy {
        version: 1,
        filesystem_policy: FilesystemPolicy {
            include_workdir: false,
            read_only: read_only.iter().map(PathBuf::from).collect(),
            read_write: Vec::new(),
        },
        landlock: LandlockPolicy { compatibility },
        process: ProcessPolicy { run_as_user: user.map(str::to_owned), run_as_group: None },
        network_policies: BTreeMap::new(),
        ignored_binaries: 0,
    }
}

fn prepare(policy: &Policy, seccomp: &SeccompChoice) -> Result<std::sync::Arc<ChildSandbox>, SandboxError> {
    ChildSandbox::prepare(policy, seccomp, Path::new("/"), false)
}

const SYSTEM: [&str; 5] = ["/usr", "/bin", "/lib", "/lib64", "/etc"];

#[test]
fn hard_requirement_refuses_to_start_when_a_path_cannot_be_enforced() {
    let mut paths = SYSTEM.to_vec();
    paths.push("/no/such/openshell-path");
    let err =
        prepare(&policy(&paths, Compatibility::HardRequirement, Some("nobody")), &SeccompChoice::Off).unwrap_err();
    assert!(matches!(err, SandboxError::LandlockMissingPaths { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/openshell-path"), "{err}");
    assert_eq!(err.exit_status(), Exit::InvalidPolicy);

    // best_effort names the path in a warning, skips it and runs on.
    let sandbox = prepare(&policy(&paths, Compatibility::BestEffort, Some("nobody")), &SeccompChoice::Off).unwrap();
    assert!(sandbox.landlock_enabled());
    let mut command = Command::new("/bin/true");
    sandbox.apply(&mut command);
    assert!(command.status().unwrap().success());
}

#[test]
fn a_missing_profile_file_is_a_clear_usage_error() {
    let choice = SeccompChoice::Profile(PathBuf::from("/no/such/openshell-seccomp.json"));
    let err = prepare(&policy(&[], Compatibility::BestEffort, Some("nobody")), &choice).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/no/such/openshell-seccomp.json") && text.contains("OPENSHELL_SECCOMP"), "{text}");
    assert_eq!(err.exit_status(), Exit::Usage);
}

#[test]
fn a_profile_file_is_compiled_and_enforced() {
    let dir = std::env::temp_dir().join(format!("openshell-seccomp-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"main": {"mismatch_action": "allow", "match_action": {"errno": 1},
            "filter": [{"syscall": "mkdir", "comment": "test"}, {"syscall": "mkdirat", "comment": "test"}]}}"#,
    )
    .unwrap();
    let sandbox =
        prepare(&policy(&[], Compatibility::BestEffort, Some("nobody")), &SeccompChoice::Profile(profile)).unwrap();
    let target = dir.join("made");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut command = Command::new("/bin/mkdir");
    command.arg(&target);
    sandbox.apply(&mut command);
    let out = command.output().unwrap();
    assert!(!out.status.success() && !target.exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn root_and_unknown_users_are_refused_by_name() {
    for root in ["root", "0"] {
        let err = prepare(&policy(&[], Compatibility::BestEffort, Some(root)), &SeccompChoice::Off).unwrap_err();
        assert!(matches!(err, SandboxError::RootIdentity { .. }) && err.exit_status() == Exit::InvalidPolicy, "{err}");
    }
    // No run_as_user: the default user `sandbox`, which must exist.
    let default = prepare(&policy(&[], Compatibility::BestEffort, None), &SeccompChoice::Off);
    match nix::unistd::User::from_name("sandbox").unwrap() {
        Some(user) => assert_eq!(default.unwrap().user().unwrap().uid, user.uid.as_raw()),
        None => {
            let err = default.unwrap_err().to_string();
            assert!(err.contains("`sandbox`") && err.contains("useradd"), "{err}");
        }
    }
}

#[test]
fn harden_supervisor_makes_the_process_not_dumpable() {
    harden_supervisor().unwrap();
    assert!(!nix::sys::prctl::get_dumpable().unwrap());
}
