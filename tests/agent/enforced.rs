//! Agent mode with enforcement (not nested), as root: SSH children and the workload run
//! as the policy's numeric user (no passwd entry: HOME `/`, SHELL `/bin/sh`), with an empty
//! capability bounding set; the pty is theirs; sftp (as `nobody`) writes files it owns.

use crate::support::agent as agent_support;

use std::os::unix::fs::MetadataExt;

use agent_support::{Fixture, run};

const UID: u32 = 54321;

/// The fixture with a policy that runs children as `UID` and a work dir they own.
fn enforced_fixture() -> Option<Fixture> {
    Fixture::enforced_as(&UID.to_string(), UID)
}

#[test]
fn ssh_children_run_as_the_policy_user_without_capabilities() {
    let Some(fixture) = enforced_fixture() else { return };
    let agent = fixture.start(|_| {});
    let line = "id -u; id -g; echo HOME=$HOME USER=$USER SHELL=$SHELL; grep -E '^Cap(Bnd|Eff)' /proc/self/status";
    let (code, out, err) = run(&mut agent.ssh(&["sandbox@agent", line]));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], [UID.to_string(), UID.to_string(), format!("HOME=/ USER={UID} SHELL=/bin/sh")], "{out}");
    assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
}

#[test]
fn the_pty_belongs_to_the_child_user() {
    let Some(fixture) = enforced_fixture() else { return };
    let agent = fixture.start(|_| {});
    let line = "t=$(tty); echo tty=$t; stat -c owner=%u:%g $t; echo x > $t && echo writable";
    let (code, out, err) = run(&mut agent.ssh(&["-tt", "sandbox@agent", line]));
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("tty=/dev/pts/"), "{out}");
    assert!(out.contains(&format!("owner={UID}:{UID}")), "{out}");
    assert!(out.contains("writable"), "{out}");
}

#[test]
fn sftp_writes_files_the_child_user_owns() {
    // sftp-server needs a passwd entry for its uid: `nobody` has one.
    const NOBODY: u32 = 65534;
    let Some(fixture) = Fixture::enforced_as("nobody", NOBODY) else { return };
    let agent = fixture.start(|_| {});
    let local = fixture.path().join("local.txt");
    std::fs::write(&local, "hello").unwrap();
    let batch = fixture.path().join("batch");
    std::fs::write(&batch, format!("put {} up.txt\n", local.display())).unwrap();
    let mut sftp = agent.ssh_base("sftp");
    sftp.arg("-b").arg(&batch).arg("sandbox@agent");
    let (code, _, err) = run(&mut sftp);
    assert_eq!(code, 0, "{err}");
    let meta = std::fs::metadata(fixture.work().join("up.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
}

#[test]
fn the_workload_runs_as_the_policy_user() {
    let Some(fixture) = enforced_fixture() else { return };
    let mut cmd = fixture.agent_command();
    cmd.args(["--", "sh", "-c", &format!("test $(id -u) = {UID} && exit 6")]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 6, "{err}");
}

#[test]
fn landlock_confines_ssh_children_to_the_policy_paths_and_the_workdir() {
    let Some(fixture) = enforced_fixture() else { return };
    let policy = format!(
        "version: 1\nprocess:\n  run_as_user: \"{UID}\"\n  run_as_group: \"{UID}\"\nfilesystem_policy:\n  \
         include_workdir: true\n  read_only: [/usr, /lib, /etc, /proc]\n  read_write: [/dev]\n"
    );
    std::fs::write(fixture.path().join("policy.yaml"), policy).unwrap();
    // Writable by the child user's permissions, so only Landlock can refuse the write.
    let outside = fixture.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    nix::unistd::chown(&outside, Some(UID.into()), Some(UID.into())).unwrap();
    let agent = fixture.start(|_| {});
    let line = format!(
        "echo in > inside.txt && echo wrote-workdir; head -c1 /etc/passwd >/dev/null && echo read-etc; \
         echo out > {}/x 2>/dev/null || echo denied-outside",
        outside.display()
    );
    let (code, out, err) = run(&mut agent.ssh(&["sandbox@agent", &line]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["wrote-workdir", "read-etc", "denied-outside"], "{err}");
    assert!(fixture.work().join("inside.txt").exists());
    assert!(!outside.join("x").exists());
}

#[test]
fn the_baseline_seccomp_profile_leaves_exec_and_pty_sessions_working() {
    let Some(fixture) = enforced_fixture() else { return };
    let agent = fixture.start(|cmd| {
        cmd.args(["--seccomp", "baseline"]);
    });
    let (code, out, err) = run(&mut agent.ssh(&["sandbox@agent", "echo ok; grep Seccomp: /proc/self/status"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok\n"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "the filter is installed: {out}");
    let (code, out, err) = run(&mut agent.ssh(&["-tt", "sandbox@agent", "tty; exit 3"]));
    assert_eq!(code, 3, "{out} {err}");
    assert!(out.contains("/dev/pts/"), "{out}");
}

#[test]
fn an_account_whose_shell_is_nologin_runs_commands_with_sh_logged_once() {
    const NOBODY: u32 = 65534;
    let passwd = nix::unistd::User::from_uid(NOBODY.into()).unwrap().expect("nobody has a passwd entry");
    assert!(passwd.shell.ends_with("nologin"), "this test needs nobody's shell to be nologin: {passwd:?}");
    let Some(fixture) = Fixture::enforced_as("nobody", NOBODY) else { return };
    let log_path = fixture.path().join("agent.log");
    let mut agent = fixture.start_logging(std::fs::File::create(&log_path).unwrap(), |_| {});
    for args in [
        &["sandbox@agent", "echo ran as $(id -un) with $SHELL"][..],
        &["-tt", "sandbox@agent", "echo ran as $(id -un) with $SHELL"],
    ] {
        for _ in 0..2 {
            let (code, out, err) = run(&mut agent.ssh(args));
            assert_eq!((code, out.trim_end()), (0, "ran as nobody with /bin/sh"), "{args:?}: {err}");
        }
    }
    assert_eq!(agent.stop(), Some(0));
    let log = std::fs::read_to_string(&log_path).unwrap();
    let replaced: Vec<&str> = log.lines().filter(|l| l.contains("login shell refuses logins")).collect();
    assert_eq!(replaced.len(), 1, "{log}");
    assert!(replaced[0].contains("nobody") && replaced[0].contains(&passwd.shell.display().to_string()), "{log}");

    // The workload runs its program directly; tools it starts run $SHELL -c.
    let mut cmd = fixture.agent_command();
    cmd.args(["--", "sh", "-c", "test \"$SHELL\" = /bin/sh && \"$SHELL\" -c 'exit 5'"]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 5, "{err}");
    assert_eq!(err.matches("login shell refuses logins").count(), 1, "{err}");
}
