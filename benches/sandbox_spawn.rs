//! Spawn cost of one agent child (`/bin/true`, spawned and waited for) without
//! enforcement, and with the whole sandbox: identity drop, empty bounding set,
//! no_new_privs, Landlock on the system paths and the baseline seccomp profile.
//! Needs root (the child drops to `nobody`); without it only the unenforced case runs.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use openshell_sandbox::config::SeccompChoice;
use openshell_sandbox::policy::parse_yaml;
use openshell_sandbox::sandbox::ChildSandbox;

const POLICY: &str = "
version: 1
filesystem_policy:
  read_only: [/usr, /bin, /lib, /lib64, /etc, /proc]
  read_write: [/tmp, /dev]
process:
  run_as_user: nobody
  run_as_group: nogroup
";

fn spawn_true(sandbox: &Arc<ChildSandbox>) {
    let mut command = Command::new("/bin/true");
    command.env_clear().current_dir("/");
    sandbox.apply(&mut command);
    let status = command.status().expect("spawn /bin/true");
    assert!(status.success(), "/bin/true failed: {status}");
}

fn spawn(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn_true");
    let open = ChildSandbox::unenforced();
    group.bench_function("unenforced", |b| b.iter(|| spawn_true(&open)));
    if nix::unistd::Uid::effective().is_root() {
        let policy = parse_yaml(POLICY, "bench policy").expect("bench policy is valid");
        let enforced = ChildSandbox::prepare(&policy, &SeccompChoice::Baseline, Path::new("/"), false)
            .expect("prepare the enforced sandbox");
        group.bench_function("landlock_seccomp_nobody", |b| b.iter(|| spawn_true(&enforced)));
    } else {
        eprintln!("not root: the enforced spawn is not measured");
    }
    group.finish();
}

criterion_group!(benches, spawn);
criterion_main!(benches);
