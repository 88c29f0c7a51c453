//! The steps of the Podman test that touch one container or resource: starting the
//! proxy and the agent with the driver's arguments, waiting for `.ready`, labels, and
//! running a command in the agent over its SSH server.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::e2e_support::{Output, run, wait_for};
use super::gateway_support::{SANDBOX_ID, TOKEN};
use super::sandbox::{HOST_MOUNTS, RUN_LABEL, STEP, Sandbox};
use super::transparent::NAMES;
use super::{GATEWAY_PORT, PROXY_PORT, SSH_PORT};
use openshell_sandbox::volume::READY_FILE;

/// `-v` arguments for the host directories the base image borrows.
pub fn host_mounts() -> Vec<String> {
    HOST_MOUNTS
        .iter()
        .filter(|dir| Path::new(dir).exists())
        .flat_map(|dir| ["-v".to_owned(), format!("{dir}:{dir}:ro")])
        .collect()
}

/// The label `key` of a container, network or volume.
pub fn label(sb: &Sandbox, kind: &str, name: &str, key: &str) -> String {
    let labels = if kind == "container" { ".Config.Labels" } else { ".Labels" };
    let format = format!("{{{{index {labels} \"{key}\"}}}}");
    sb.p(&[kind, "inspect", "--format", &format, name]).stdout.trim().to_owned()
}

/// Owned arguments from pieces.
pub fn args(pieces: &[&[&str]]) -> Vec<String> {
    pieces.iter().flat_map(|piece| piece.iter().map(|s| (*s).to_owned())).collect()
}

/// `podman exec AGENT ARGS`, bounded: a process beside the supervisor, with the
/// container's environment.
pub fn podman_exec(sb: &Sandbox, args: &[&str]) -> Output {
    let agent = format!("{}-agent", sb.name);
    run(sb.podman().args(["exec", &agent]).args(args), STEP)
}

/// Runs ARGS in the agent as an exec session through the supervisor's SSH server (the
/// OpenSSH client inside the container, to its loopback listener), so the command gets
/// the child environment the supervisor builds.
pub fn agent_exec(sb: &Sandbox, args: &[&str]) -> Output {
    let line: Vec<String> = args.iter().map(|arg| format!("'{}'", arg.replace('\'', "'\\''"))).collect();
    let port = SSH_PORT.to_string();
    #[rustfmt::skip]
    let ssh = ["ssh", "-i", "/keys/id", "-p", &port, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "sandbox@127.0.0.1"];
    let line = line.join(" ");
    podman_exec(sb, &[&ssh[..], &[line.as_str()]].concat())
}

/// The names, files and shared arguments of one run.
pub struct Run {
    pub sb: Sandbox,
    pub files: tempfile::TempDir,
    pub int: String,
    pub ext: String,
    pub vol: String,
    pub proxy: String,
    pub agent: String,
    /// The holder of the agent's network namespace (`openshell-sandbox agent-net`).
    pub agent_net: String,
    /// Third octet of the internal network; the bridge network is the next one.
    pub net: u8,
    /// The volume's directory on the host (rootful podman).
    pub mountpoint: PathBuf,
}

impl Run {
    pub fn labels(&self) -> Vec<String> {
        let run = format!("{RUN_LABEL}={}", self.sb.id);
        let sandbox = format!("openshell.sandbox={}", self.sb.name);
        vec!["--label".into(), run, "--label".into(), sandbox]
    }

    /// `podman ARGS` with owned arguments.
    pub fn p(&self, args: &[String]) -> Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.sb.p(&args)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    /// Networks and the volume, each with the run's labels. The two /24s are picked per
    /// run (podman refuses a subnet another of its networks holds, so concurrent runs on
    /// one machine take the next free pair): internal 10.231.N.0/24, bridge N+1.
    pub fn create_networks_and_volume(&mut self) {
        let labels = self.labels();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let first = 2 * (std::process::id() % 100);
        let mut created = None;
        for attempt in 0..100 {
            let net = u8::try_from(20 + (first + 2 * attempt) % 200).expect("at most 218");
            let subnet = format!("10.231.{net}.0/24");
            #[rustfmt::skip]
            let out = run(self.sb.podman().args(args(&[&["network", "create", "--internal", "--disable-dns", "--subnet", &subnet], &labels, &[&self.int]])), STEP);
            if out.ok() {
                created = Some(net);
                break;
            }
            assert!(out.stderr.contains("already used"), "network create {}: {}", self.int, out.all());
        }
        let net = created.expect("a free pair of /24s in 10.231.20.0-10.231.219.0");
        self.net = net;
        let subnet = format!("10.231.{}.0/24", net + 1);
        let created = run(
            self.sb.podman().args(args(&[
                &["network", "create", "--disable-dns", "--subnet", &subnet],
                &labels,
                &[&self.ext],
            ])),
            STEP,
        );
        assert!(created.ok(), "network create {}: {}", self.ext, created.all());
        self.p(&args(&[&["volume", "create"], &labels, &[&self.vol]]));
        let mountpoint = self.sb.p(&["volume", "inspect", "--format", "{{.Mountpoint}}", &self.vol]).stdout;
        self.mountpoint = PathBuf::from(mountpoint.trim());
    }

    /// The proxy on the internal network.
    pub fn proxy_int(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.net, 2)
    }

    /// The agent.
    pub fn agent_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.net, 3)
    }

    /// The proxy on the bridge network.
    pub fn proxy_ext(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.net + 1, 2)
    }

    /// The bridge network's gateway: the upstream listens there, in the outer namespace,
    /// on the bridge side (where the internet would be).
    pub fn upstream(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.net + 1, 1)
    }

    /// The proxy: both networks, the volume read-write, our binary as the entrypoint.
    /// Its "system roots" are the upstream's test CA, mounted where the image keeps the
    /// roots, so ca-bundle.pem carries it; the same CA is its OPENSHELL_UPSTREAM_CA_FILE
    /// for the intercepted port. The gateway is the test gateway on the bridge side (it
    /// serves the provider credentials); the proxy forwards the agent's gateway traffic
    /// from its :8081. The policy DNS listens on the internal address (docs/podman.md,
    /// step 6): NET_ADMIN for the local route of the synthetic range, dropped before it
    /// serves; the names the transparent cases use resolve to the upstream in the proxy's
    /// /etc/hosts. The policy file is checked every second.
    pub fn start_proxy(&self) {
        let labels = self.labels();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let mounts = host_mounts();
        let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
        let policy = format!("{}:/etc/openshell/policy.yaml:ro", self.file("policy.yaml").display());
        let roots = format!("{}:/etc/ssl/certs/ca-certificates.crt:ro", self.file("roots.pem").display());
        let upstream_ca = format!("{}:/etc/openshell/upstream-ca.pem:ro", self.file("roots.pem").display());
        let (int_ip, ext_ip) =
            (format!("{}:ip={}", self.int, self.proxy_int()), format!("{}:ip={}", self.ext, self.proxy_ext()));
        let rw = format!("{}:/openshell-tls:rw", self.vol);
        let listen = format!("OPENSHELL_PROXY_LISTEN=0.0.0.0:{PROXY_PORT}");
        // The agent's internal subnet, and loopback for the image's HEALTHCHECK probe.
        let clients = format!("OPENSHELL_PROXY_ALLOWED_CLIENTS=10.231.{}.0/24,127.0.0.1/32", self.net);
        let endpoint = format!("OPENSHELL_ENDPOINT=http://{}:{GATEWAY_PORT}", self.upstream());
        let (token, id) = (format!("OPENSHELL_SANDBOX_TOKEN={TOKEN}"), format!("OPENSHELL_SANDBOX_ID={SANDBOX_ID}"));
        let dns = format!("OPENSHELL_DNS_LISTEN={}:53", self.proxy_int());
        let hosts: Vec<String> = NAMES.iter().map(|name| format!("--add-host={name}:{}", self.upstream())).collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        #[rustfmt::skip]
        self.p(&args(&[&["run", "-d", "--name", &self.proxy, "--label", "openshell.role=proxy"], &labels, &mounts, &hosts, &[
            "--network", &int_ip, "--network", &ext_ip, "--cap-add", "NET_ADMIN",
            "-e", &dns, "-e", "OPENSHELL_POLICY_POLL_INTERVAL_SECS=1", "-e", "OPENSHELL_LOG_FORMAT=ocsf",
            "-v", &rw, "-v", &policy, "-v", &roots, "-v", &upstream_ca,
            "-e", "OPENSHELL_MODE=proxy", "-e", "OPENSHELL_POLICY_DATA=/etc/openshell/policy.yaml",
            "-e", "OPENSHELL_UPSTREAM_CA_FILE=/etc/openshell/upstream-ca.pem",
            "-e", &listen, "-e", &clients, "-e", "OPENSHELL_TLS_DIR=/openshell-tls",
            "-e", &endpoint, "-e", &token, "-e", &id, "-e", "OPENSHELL_FORWARD_LISTEN=0.0.0.0:8081",
            &self.sb.image,
        ]]));
    }

    /// Waits for `.ready` in the volume, failing early with the logs if the proxy exits.
    pub fn wait_ready(&self) {
        wait_for(".ready in the volume", STEP, || {
            if self.mountpoint.join(READY_FILE).exists() {
                return Some(());
            }
            if self.sb.p(&["inspect", "--format", "{{.State.Status}}", &self.proxy]).stdout.trim() == "exited" {
                let logs = run(self.sb.podman().args(["logs", &self.proxy]), STEP);
                panic!("the proxy container exited before .ready: {}", logs.all());
            }
            None
        });
    }

    /// The holder of the agent's network namespace, on the internal network only: the
    /// policy DNS as its name server and, with NET_ADMIN until the route is set, the route
    /// of the synthetic range via the proxy; then it holds the namespace with no capability.
    pub fn start_agent_net(&self) {
        let labels = self.labels();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let mounts = host_mounts();
        let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
        let (ip, proxy) = (format!("{}:ip={}", self.int, self.agent_ip()), self.proxy_int().to_string());
        #[rustfmt::skip]
        self.p(&args(&[&["run", "-d", "--name", &self.agent_net, "--label", "openshell.role=agent-net"], &labels, &mounts, &[
            "--network", &ip, "--dns", &proxy, "--cap-add", "NET_ADMIN",
            &self.sb.image, "agent-net", "--via", &proxy,
        ]]));
        wait_for("the agent-net holder's route", STEP, || {
            let logs = run(self.sb.podman().args(["logs", &self.agent_net]), STEP).all();
            if self.sb.p(&["inspect", "--format", "{{.State.Status}}", &self.agent_net]).stdout.trim() == "exited" {
                panic!("the agent-net holder exited: {logs}");
            }
            logs.contains("agent network ready").then_some(())
        });
    }

    /// The agent: the holder's network namespace (the internal network only), the volume
    /// read-only, our entrypoint in agent mode with a workload that announces itself, a
    /// loopback SSH listener for the exec sessions, and the gateway reached through the
    /// proxy's forward (:8081) for the supervisor session and its relays.
    pub fn start_agent(&self) {
        let labels = self.labels();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let mounts = host_mounts();
        let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
        let proxy_url = format!("http://{}:{PROXY_PORT}", self.proxy_int());
        let proxy_vars: Vec<String> = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"]
            .iter()
            .map(|v| format!("{v}={proxy_url}"))
            .collect();
        let proxy_env: Vec<&str> = proxy_vars.iter().flat_map(|var| ["-e", var.as_str()]).collect();
        let (agent_net, ro) = (format!("container:{}", self.agent_net), format!("{}:/openshell-tls:ro", self.vol));
        let policy = format!("{}:/etc/openshell/policy.yaml:ro", self.file("policy.yaml").display());
        let keys = format!("{}:/keys:ro", self.file("keys").display());
        let ssh_listen = format!("OPENSHELL_SSH_LISTEN=127.0.0.1:{SSH_PORT}");
        let endpoint = format!("OPENSHELL_ENDPOINT=http://{}:8081", self.proxy_int());
        let (token, id) = (format!("OPENSHELL_SANDBOX_TOKEN={TOKEN}"), format!("OPENSHELL_SANDBOX_ID={SANDBOX_ID}"));
        #[rustfmt::skip]
        let common = [&["run", "-d", "--name", &self.agent, "--label", "openshell.role=agent"][..], &labels, &mounts, &proxy_env, &[
            "--network", &agent_net, "-v", &ro, "-v", &policy, "-v", &keys,
            "-e", "OPENSHELL_PROXY_MODE=sidecar", "-e", "OPENSHELL_TLS_DIR=/openshell-tls", "-e", "OPENSHELL_LOG_FORMAT=ocsf",
            "-e", "OPENSHELL_POLICY_DATA=/etc/openshell/policy.yaml",
            "-e", "SSL_CERT_FILE=/openshell-tls/ca-bundle.pem",
        ]].concat();
        #[rustfmt::skip]
        let tail = [
            "-e", &ssh_listen, "-e", "OPENSHELL_SSH_AUTHORIZED_KEYS=/keys/authorized_keys",
            "-e", &endpoint, "-e", &token, "-e", &id,
            &self.sb.image, "agent", "--", "sh", "-c", "echo workload-started; exec sleep infinity",
        ];
        self.p(&args(&[&common, &tail]));
    }

    pub fn agent_logs(&self) -> Output {
        run(self.sb.podman().args(["logs", &self.agent]), STEP)
    }
}
