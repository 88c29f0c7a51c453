//! One sandbox on real Podman, as the Podman driver lays it out: an outer network
//! namespace per run (podman's bridges and netavark's rules live there, never on the
//! host), an `--internal` network, a bridge network, the shared TLS volume, the image
//! built from the repository's Dockerfile, and the run-id labels the sweep relies on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::e2e::{self as e2e_support, Output, must, run};

/// Every resource name of this test starts with this, then the pid of the run.
pub const PREFIX: &str = "ose2p";
/// Label carrying the run id on every container, network, volume and image.
pub const RUN_LABEL: &str = "openshell.e2e-run";
/// The base image (an empty root file system, imported, never pulled); kept as a cache.
/// Bump the tag when its contents change.
pub const BASE_IMAGE: &str = "localhost/openshell-e2e-base:3";
/// Host directories mounted read-only into the containers: the base image has an empty
/// /usr, so glibc (for the binary) and curl, git, ssh, sh come from the host.
pub const HOST_MOUNTS: &[&str] =
    &["/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/share", "/etc/alternatives"];
pub const STEP: Duration = Duration::from_secs(60);

/// One run's names and the podman command line that reaches its outer namespace.
pub struct Sandbox {
    /// The run id (the test's pid).
    pub id: String,
    /// Name prefix of every resource, `ose2p<pid>`.
    pub name: String,
    /// The outer network namespace.
    pub outer: String,
    /// CONTAINERS_CONF (runc, ulimits this machine allows).
    pub conf: PathBuf,
    /// The image built for this run.
    pub image: String,
    /// Set once `delete` ran, so Drop does not repeat it.
    pub deleted: bool,
}

impl Sandbox {
    /// Names for this run; sweeps the leftovers of killed runs first, then creates the
    /// outer namespace.
    pub fn new() -> Self {
        let id = std::process::id().to_string();
        let name = format!("{PREFIX}{id}");
        let sandbox = Sandbox {
            outer: format!("{name}-host"),
            image: format!("localhost/openshell-sandbox:{name}"),
            conf: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/containers.conf"),
            id,
            name,
            deleted: false,
        };
        sandbox.sweep();
        e2e_support::netns_add(&sandbox.outer);
        sandbox
    }

    /// `podman` on the host (images only: they need no network).
    pub fn host_podman(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.conf);
        cmd
    }

    /// `podman` inside the outer namespace: `nsenter --net=` enters only the network
    /// namespace (`ip netns exec` would add a private mount namespace that hides
    /// podman's own mounts from later calls).
    pub fn podman(&self) -> Command {
        self.podman_in(&self.outer)
    }

    fn podman_in(&self, outer: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{outer}")).arg("podman").env("CONTAINERS_CONF", &self.conf);
        cmd
    }

    /// `podman ARGS`, which must succeed.
    pub fn p(&self, args: &[&str]) -> Output {
        must(self.podman().args(args), STEP)
    }

    /// Names (one per line) a podman listing prints.
    fn names(&self, args: &[&str]) -> Vec<String> {
        let out = run(self.host_podman().args(args), STEP);
        out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    /// Everything a dead run left behind: containers, networks, volumes, images, outer
    /// namespaces named after a pid that no longer exists. Live runs are left alone.
    fn sweep(&self) {
        let stale = |names: Vec<String>| e2e_support::stale_names(names, PREFIX);
        // A dead run's containers and networks are removed from inside its outer
        // namespace while it still exists, so netavark can tear its rules down there.
        let podman_for = |name: &str| {
            let outer = format!("{}-host", name.split_once('-').map_or(name, |(run, _)| run));
            if Path::new("/run/netns").join(&outer).exists() { self.podman_in(&outer) } else { self.host_podman() }
        };
        for container in stale(self.names(&["ps", "-a", "--format", "{{.Names}}"])) {
            eprintln!("sweeping the container {container} of a dead run");
            // --depend: the agent goes with the network holder it joined.
            let _ = run(podman_for(&container).args(["rm", "-f", "--depend", "-t", "0", &container]), STEP);
        }
        for network in stale(self.names(&["network", "ls", "--format", "{{.Name}}"])) {
            eprintln!("sweeping the network {network} of a dead run");
            let _ = run(podman_for(&network).args(["network", "rm", "-f", &network]), STEP);
        }
        for volume in stale(self.names(&["volume", "ls", "--format", "{{.Name}}"])) {
            eprintln!("sweeping the volume {volume} of a dead run");
            let _ = run(self.host_podman().args(["volume", "rm", "-f", &volume]), STEP);
        }
        let images: Vec<String> = self
            .names(&["images", "--format", "{{.Tag}}", "--filter", "reference=localhost/openshell-sandbox"])
            .into_iter()
            .collect();
        for tag in stale(images) {
            eprintln!("sweeping the image openshell-sandbox:{tag} of a dead run");
            let _ = run(self.host_podman().args(["rmi", "-f", &format!("localhost/openshell-sandbox:{tag}")]), STEP);
        }
        for netns in stale(e2e_support::netns_list()) {
            eprintln!("sweeping the namespace {netns} of a dead run");
            e2e_support::netns_delete(&netns);
        }
    }

    /// Imports the base image unless it exists: an empty root file system with the
    /// usr-merged symlinks, host names looked up in /etc/hosts then DNS, a tiny passwd/group
    /// with the `sandbox` user children run as (uid 1000, shell /bin/sh), and an empty system
    /// root bundle (the test mounts its own roots into the proxy). 0.3 s, no registry.
    pub fn base_image(&self) {
        if run(self.host_podman().args(["image", "exists", BASE_IMAGE]), STEP).ok() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for dir in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/share", "usr/local/bin", "etc/ssl/certs"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        for dir in ["tmp", "var/tmp", "proc", "sys", "dev", "root", "run", "home/sandbox"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        for link in ["bin", "lib", "lib64", "sbin"] {
            std::os::unix::fs::symlink(format!("usr/{link}"), r.join(link)).unwrap();
        }
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
             sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\nnogroup:x:65534:\nsandbox:x:1000:\n").unwrap();
        std::fs::write(r.join("etc/nsswitch.conf"), "hosts: files dns\npasswd: files\ngroup: files\n").unwrap();
        std::fs::write(r.join("etc/ssl/certs/ca-certificates.crt"), "").unwrap();
        let script = format!(
            "chmod 1777 tmp var/tmp && chown 1000:1000 home/sandbox && tar -C {} -c . | podman import -q - {BASE_IMAGE} >/dev/null",
            r.display()
        );
        must(Command::new("sh").args(["-c", &script]).current_dir(r).env("CONTAINERS_CONF", &self.conf), STEP);
    }

    /// Builds the repository's Dockerfile, target `prebuilt`, with the binary `cargo test`
    /// built, from the base image; the context holds only what that target copies, so
    /// nothing is compiled again.
    pub fn build_image(&self, binary: &Path) {
        let context = tempfile::tempdir().unwrap();
        let c = context.path();
        std::fs::create_dir_all(c.join("bin")).unwrap();
        let target = c.join("bin/openshell-sandbox");
        if std::fs::hard_link(binary, &target).is_err() {
            std::fs::copy(binary, &target).unwrap();
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let copy = format!("cp -r {} {}", repo.join("policies").display(), c.display());
        must(Command::new("sh").args(["-c", &copy]), STEP);
        let label = format!("{RUN_LABEL}={}", self.id);
        let base = format!("RUST_IMAGE={BASE_IMAGE}");
        let runtime = format!("RUNTIME_IMAGE={BASE_IMAGE}");
        must(
            self.host_podman()
                // --layers=false: no intermediate stage image is left behind.
                .args(["build", "-q", "--layers=false", "--format", "docker", "--label", &label])
                .args(["--target", "prebuilt", "--build-arg", "PREBUILT=bin/openshell-sandbox"])
                .args(["--build-arg", &base, "--build-arg", &runtime, "-t", &self.image, "-f"])
                .arg(repo.join("Dockerfile"))
                .arg(c),
            Duration::from_secs(180),
        );
    }

    /// Deletes the sandbox in the driver's order: agent, its network holder, proxy, volume,
    /// networks; then the image and the outer namespace (which takes netavark's rules with it).
    pub fn delete(&mut self) {
        self.deleted = true;
        for container in ["agent", "agent-net", "proxy"] {
            let _ = run(self.podman().args(["rm", "-f", "-t", "0", &format!("{}-{container}", self.name)]), STEP);
        }
        let _ = run(self.podman().args(["volume", "rm", "-f", &format!("{}-tls", self.name)]), STEP);
        for network in ["int", "ext"] {
            let _ = run(self.podman().args(["network", "rm", "-f", &format!("{}-{network}", self.name)]), STEP);
        }
        let _ = run(self.host_podman().args(["rmi", "-f", &self.image]), STEP);
        e2e_support::netns_delete(&self.outer);
    }

    /// What is left of this run: containers, volumes, images with its label, networks
    /// with its name, its outer namespace.
    pub fn leftovers(&self) -> Vec<String> {
        let label = format!("label={RUN_LABEL}={}", self.id);
        let mut left = self.names(&["ps", "-a", "--filter", &label, "--format", "container {{.Names}}"]);
        left.extend(self.names(&["volume", "ls", "--filter", &label, "--format", "volume {{.Name}}"]));
        left.extend(self.names(&["images", "-a", "--filter", &label, "--format", "image {{.ID}}"]));
        let networks = self.names(&["network", "ls", "--format", "{{.Name}}"]);
        left.extend(networks.into_iter().filter(|n| n.starts_with(&self.name)).map(|n| format!("network {n}")));
        if e2e_support::netns_list().contains(&self.outer) {
            left.push(format!("netns {}", self.outer));
        }
        left
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.deleted {
            self.delete();
        }
    }
}
