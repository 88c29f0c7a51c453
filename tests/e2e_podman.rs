//! End to end on real Podman (root, podman + runc + netavark + iptables, as `.ci/run`
//! installs them): the image built from the repository's Dockerfile with the binary this
//! `cargo test` built, one sandbox laid out as the Podman driver does (proxy on the
//! internal and the bridge network, agent on the internal one only, the shared TLS
//! volume), and the checks of issue 7 that the built modes allow. Addresses are
//! 10.231.1.0/24 and 10.231.2.0/24 inside a network namespace made for the run.
//!
//! Not yet checked, because they are not built: the exec session through the gateway
//! relay and the credential placeholder swap (L7 interception). They are left out, not
//! faked; see the comments at the end of the test.

#[path = "e2e_support/lib.rs"]
mod e2e_support;
#[path = "e2e_podman/sandbox.rs"]
mod sandbox;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use e2e_support::{BIN, HELLO, Output, Upstream, UpstreamTls, run, wait_for};
use openshell_sandbox::volume::{self, READY_FILE};
use sandbox::{HOST_MOUNTS, RUN_LABEL, STEP, Sandbox};

const PROXY_INT: Ipv4Addr = Ipv4Addr::new(10, 231, 1, 2);
const AGENT: Ipv4Addr = Ipv4Addr::new(10, 231, 1, 3);
const PROXY_EXT: Ipv4Addr = Ipv4Addr::new(10, 231, 2, 2);
/// The bridge network's gateway: the upstream listens there, in the outer namespace, on
/// the bridge side (where the internet would be).
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(10, 231, 2, 1);
const HTTP_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
const PROXY_PORT: u16 = 3128;

/// Set `OPENSHELL_E2E_PODMAN=required` (CI does) to fail instead of skipping when podman
/// or root is missing.
fn unsupported() -> Option<String> {
    let reason = e2e_support::netns_unsupported().or_else(|| {
        ["podman", "nsenter", "runc"]
            .into_iter()
            .find(|cmd| !e2e_support::has_command(cmd))
            .map(|cmd| format!("`{cmd}` is not installed (apt-get install podman runc netavark iptables)"))
    })?;
    if std::env::var("OPENSHELL_E2E_PODMAN").as_deref() == Ok("required") {
        panic!("OPENSHELL_E2E_PODMAN=required but {reason}");
    }
    Some(reason)
}

/// `-v` arguments for the host directories the base image borrows.
fn host_mounts() -> Vec<String> {
    HOST_MOUNTS
        .iter()
        .filter(|dir| Path::new(dir).exists())
        .flat_map(|dir| ["-v".to_owned(), format!("{dir}:{dir}:ro")])
        .collect()
}

/// The label `key` of a container, network or volume.
fn label(sb: &Sandbox, kind: &str, name: &str, key: &str) -> String {
    let labels = if kind == "container" { ".Config.Labels" } else { ".Labels" };
    let format = format!("{{{{index {labels} \"{key}\"}}}}");
    sb.p(&[kind, "inspect", "--format", &format, name]).stdout.trim().to_owned()
}

/// Owned arguments from pieces.
fn args(pieces: &[&[&str]]) -> Vec<String> {
    pieces.iter().flat_map(|piece| piece.iter().map(|s| (*s).to_owned())).collect()
}

/// `podman ARGS` with owned arguments.
fn p(sb: &Sandbox, args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.p(&args)
}

/// `podman exec AGENT ARGS`, bounded.
fn agent_exec(sb: &Sandbox, args: &[&str]) -> Output {
    let agent = format!("{}-agent", sb.name);
    run(sb.podman().args(["exec", &agent]).args(args), STEP)
}

#[test]
fn sidecar_topology_on_podman() {
    if let Some(reason) = unsupported() {
        eprintln!("SKIPPED sidecar_topology_on_podman: {reason}");
        return;
    }
    let whole = Instant::now();
    let mut sb = Sandbox::new();
    let n = sb.name.clone();
    let run_label = format!("{RUN_LABEL}={}", sb.id);
    let sandbox_label = format!("openshell.sandbox={n}");
    let built = Instant::now();
    sb.base_image();
    sb.build_image(Path::new(BIN));
    let build_time = built.elapsed();

    // The upstream, bound in the outer namespace before the networks exist (0.0.0.0).
    let tls = UpstreamTls::new(IpAddr::V4(UPSTREAM));
    let _upstream = Upstream::start(
        &sb.outer,
        SocketAddr::from(([0, 0, 0, 0], HTTP_PORT)),
        SocketAddr::from(([0, 0, 0, 0], HTTPS_PORT)),
        tls.config.clone(),
    );
    let files = tempfile::tempdir().unwrap();
    let policy = files.path().join("policy.yaml");
    std::fs::write(&policy, e2e_support::policy(IpAddr::V4(UPSTREAM), HTTP_PORT, HTTPS_PORT)).unwrap();
    let roots = files.path().join("roots.pem");
    std::fs::write(&roots, &tls.ca_pem).unwrap();

    // Networks and the volume, each with the run's labels.
    let (int, ext, vol) = (format!("{n}-int"), format!("{n}-ext"), format!("{n}-tls"));
    let labels = ["--label", &run_label, "--label", &sandbox_label];
    p(
        &sb,
        &args(&[&["network", "create", "--internal", "--disable-dns", "--subnet", "10.231.1.0/24"], &labels, &[&int]]),
    );
    p(&sb, &args(&[&["network", "create", "--disable-dns", "--subnet", "10.231.2.0/24"], &labels, &[&ext]]));
    p(&sb, &args(&[&["volume", "create"], &labels, &[&vol]]));
    let mountpoint = PathBuf::from(sb.p(&["volume", "inspect", "--format", "{{.Mountpoint}}", &vol]).stdout.trim());

    // The proxy: both networks, the volume read-write, our binary as the entrypoint.
    let proxy = format!("{n}-proxy");
    let mounts = host_mounts();
    let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let policy_mount = format!("{}:/etc/openshell/policy.yaml:ro", policy.display());
    // The proxy's "system roots" are the upstream's test CA, mounted where the image
    // keeps the roots, so ca-bundle.pem carries it.
    let roots_mount = format!("{}:/etc/ssl/certs/ca-certificates.crt:ro", roots.display());
    let started = Instant::now();
    let (int_ip, ext_ip) = (format!("{int}:ip={PROXY_INT}"), format!("{ext}:ip={PROXY_EXT}"));
    let (rw, listen) = (format!("{vol}:/openshell-tls:rw"), format!("OPENSHELL_PROXY_LISTEN=0.0.0.0:{PROXY_PORT}"));
    #[rustfmt::skip]
    let proxy_args = args(&[&["run", "-d", "--name", &proxy, "--label", "openshell.role=proxy"], &labels, &mounts, &[
        "--network", &int_ip, "--network", &ext_ip,
        "-v", &rw, "-v", &policy_mount, "-v", &roots_mount,
        "-e", "OPENSHELL_MODE=proxy", "-e", "OPENSHELL_POLICY_DATA=/etc/openshell/policy.yaml",
        "-e", &listen, "-e", "OPENSHELL_TLS_DIR=/openshell-tls",
        &sb.image,
    ]]);
    p(&sb, &proxy_args);
    wait_for(".ready in the volume", STEP, || {
        if mountpoint.join(READY_FILE).exists() {
            return Some(());
        }
        let state = sb.p(&["inspect", "--format", "{{.State.Status}}", &proxy]).stdout;
        if state.trim() == "exited" {
            let logs = run(sb.podman().args(["logs", &proxy]), STEP);
            panic!("the proxy container exited before .ready: {}", logs.all());
        }
        None
    });
    let to_ready = started.elapsed();
    let ready = volume::read_ready(&mountpoint).unwrap();
    assert_eq!(ready.proxy_listen, SocketAddr::from(([0, 0, 0, 0], PROXY_PORT)));
    assert!(!mountpoint.join("ca-key.pem").exists(), "the CA key stays out of the shared volume");
    let health = run(sb.podman().args(["healthcheck", "run", &proxy]), STEP);
    assert!(health.ok(), "the image's HEALTHCHECK in proxy mode: {}", health.all());

    // The agent: only the internal network, the volume read-only, started after .ready.
    let agent = format!("{n}-agent");
    let proxy_url = format!("http://{PROXY_INT}:{PROXY_PORT}");
    let (agent_ip, ro) = (format!("{int}:ip={AGENT}"), format!("{vol}:/openshell-tls:ro"));
    let proxy_vars: Vec<String> = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"]
        .iter()
        .map(|var| format!("{var}={proxy_url}"))
        .collect();
    let proxy_env: Vec<&str> = proxy_vars.iter().flat_map(|var| ["-e", var.as_str()]).collect();
    #[rustfmt::skip]
    let agent_args = args(&[&["run", "-d", "--name", &agent, "--label", "openshell.role=agent"], &labels, &mounts, &proxy_env, &[
        "--network", &agent_ip, "-v", &ro,
        "-e", "OPENSHELL_PROXY_MODE=sidecar", "-e", "OPENSHELL_TLS_DIR=/openshell-tls",
        "-e", "SSL_CERT_FILE=/openshell-tls/ca-bundle.pem",
        // Agent mode is not on main yet: the agent container runs `sleep` in place of
        // our entrypoint until it is.
        "--entrypoint", "/usr/bin/sleep", &sb.image, "infinity",
    ]]);
    let agent_started = Instant::now();
    p(&sb, &agent_args);
    wait_for("a first exec in the agent", STEP, || agent_exec(&sb, &["true"]).ok().then_some(()));
    let to_first_exec = agent_started.elapsed();

    // Labels on the three kinds of resources.
    assert_eq!(label(&sb, "container", &proxy, "openshell.role"), "proxy");
    assert_eq!(label(&sb, "container", &agent, "openshell.role"), "agent");
    for (kind, name) in
        [("container", &proxy), ("container", &agent), ("network", &int), ("network", &ext), ("volume", &vol)]
    {
        assert_eq!(label(&sb, kind, name, RUN_LABEL), sb.id, "{kind} {name}");
        assert_eq!(label(&sb, kind, name, "openshell.sandbox"), n, "{kind} {name}");
    }

    // Through the proxy: HTTP forwarded, HTTPS tunnelled (L4, no `protocol`) and verified
    // against ca-bundle.pem through SSL_CERT_FILE.
    let http_url = format!("http://{UPSTREAM}:{HTTP_PORT}/index.txt");
    let https_url = format!("https://{UPSTREAM}:{HTTPS_PORT}/index.txt");
    let out = agent_exec(&sb, &["curl", "-sS", "-m", "10", &http_url]);
    assert!(out.ok() && out.stdout == HELLO, "HTTP through the proxy: {}", out.all());
    let out = agent_exec(&sb, &["curl", "-sS", "-m", "10", &https_url]);
    assert!(out.ok() && out.stdout == HELLO, "HTTPS through the proxy: {}", out.all());
    let out = agent_exec(&sb, &["env", "SSL_CERT_FILE=/openshell-tls/ca.pem", "curl", "-sS", "-m", "10", &https_url]);
    assert_eq!(out.code, Some(60), "trusting only ca.pem must fail to verify the upstream: {}", out.all());

    // Without the proxy variables: no route.
    let unset = ["env", "-u", "HTTP_PROXY", "-u", "http_proxy", "-u", "HTTPS_PROXY", "-u", "https_proxy"];
    for url in [&http_url, &https_url] {
        let out = agent_exec(&sb, &[&unset[..], &["curl", "-sS", "-v", "-m", "10", url]].concat());
        assert!(!out.ok() && out.stderr.contains("Network is unreachable"), "direct {url}: {}", out.all());
    }
    let out = agent_exec(&sb, &["ip", "route", "show", "default"]);
    assert!(out.ok() && out.stdout.trim().is_empty(), "the agent has no default route: {}", out.all());

    // A denied host: 403 with the JSON body.
    let out = agent_exec(&sb, &["curl", "-sS", "-m", "10", "-w", "\n%{http_code}", "http://denied.example/"]);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or_default();
    assert_eq!(code, "403", "denied host: {}", out.all());
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    assert_eq!(json["error"], "policy_denied", "{json}");

    // The agent reads the volume but cannot write it.
    let out = agent_exec(&sb, &["sh", "-c", "cat /openshell-tls/ca.pem >/dev/null && touch /openshell-tls/x"]);
    assert!(!out.ok() && out.stderr.contains("Read-only file system"), "agent write to the volume: {}", out.all());

    // Not yet (not built on main): an exec session through the gateway relay, and the
    // credential placeholder swap (the upstream sees the secret, `env` shows only the
    // placeholder) need the gateway wiring and L7 interception.

    // Deleting in the driver's order leaves nothing.
    sb.delete();
    let left = sb.leftovers();
    assert!(left.is_empty(), "left after delete: {left:?}");
    eprintln!(
        "figures (podman): image build {build_time:?}; proxy `podman run` to .ready {to_ready:?}; \
         agent start to first exec {to_first_exec:?}; whole run {:?}",
        whole.elapsed()
    );
}
