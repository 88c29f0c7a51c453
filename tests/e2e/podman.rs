//! End to end on real Podman (root, podman + runc + netavark + iptables, as `.ci/run`
//! installs them): the image built from the repository's Dockerfile with the binary this
//! `cargo test` built, one sandbox laid out as the Podman driver does (proxy on the
//! internal and the bridge network, agent on the internal one only, the shared TLS
//! volume), and the checks of issue 7 that the built modes allow. Addresses are
//! two /24s of 10.231.0.0/16 inside a network namespace made for the run.
//!
//! The test gateway (tests/support/gateway.rs) runs on the bridge side; the proxy forwards
//! the agent's gateway traffic from its :8081. Exec sessions go through the gateway relay
//! (supervisor session, RelayStream, the agent's SSH server on its Unix socket) and, for
//! the bulk of the checks, through the agent's loopback TCP SSH listener.
//!
//! The proxy also serves the policy DNS and the transparent listeners, and the agent
//! joins the network namespace of an `agent-net` holder that routes the synthetic range
//! to the proxy (docs/podman.md): the cases of `podman/transparent.rs` run with the
//! proxy variables unset, the others through the proxy as before.

use crate::support::e2e as e2e_support;
use crate::support::gateway as gateway_support;
mod relay;
mod sandbox;
mod steps;
mod transparent;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

use e2e_support::{BIN, HELLO, Output, Upstream, UpstreamTls, must, run};
use openshell_sandbox::gateway::proto::{
    GetSandboxProviderEnvironmentResponse, StaticCredentialBinding, StaticCredentialEndpoint,
};
use openshell_sandbox::volume;
use sandbox::{RUN_LABEL, STEP, Sandbox};
use steps::{Run, agent_exec, label, podman_exec};

const HTTP_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
/// The upstream's HTTPS port the proxy intercepts (`protocol: rest`): credential swap.
const INSPECTED_PORT: u16 = 9443;
/// Plain HTTP of the second upstream (unused; [`Upstream`] serves both).
const INSPECTED_HTTP_PORT: u16 = 8090;
/// The provider secret: only the test gateway and the proxy hold it.
const SECRET: &str = "e2e-secret-5f1c9a0d7b3e";
const PROXY_PORT: u16 = 3128;
const SSH_PORT: u16 = 2222;
/// The test gateway, on the bridge side.
const GATEWAY_PORT: u16 = 50051;

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

#[test]
fn sidecar_topology_on_podman() {
    let _one = e2e_support::one_at_a_time();
    if let Some(reason) = unsupported() {
        eprintln!("SKIPPED sidecar_topology_on_podman: {reason}");
        return;
    }
    let whole = Instant::now();
    let sb = Sandbox::new();
    let built = Instant::now();
    sb.base_image();
    // OPENSHELL_E2E_BINARY tests another build of the binary (a release build, say).
    let binary = std::env::var_os("OPENSHELL_E2E_BINARY").map_or_else(|| PathBuf::from(BIN), PathBuf::from);
    sb.build_image(&binary);
    let build_time = built.elapsed();
    let n = sb.name.clone();
    let mut r = Run {
        files: tempfile::tempdir().unwrap(),
        int: format!("{n}-int"),
        ext: format!("{n}-ext"),
        vol: format!("{n}-tls"),
        proxy: format!("{n}-proxy"),
        agent: format!("{n}-agent"),
        agent_net: format!("{n}-agent-net"),
        net: 0,
        mountpoint: PathBuf::new(),
        sb,
    };
    r.create_networks_and_volume();
    let upstream = r.upstream();

    // The upstream, bound in the outer namespace (0.0.0.0: the bridge appears only when
    // the first container joins it).
    let tls = UpstreamTls::for_names(&[&upstream.to_string(), transparent::ALLOWED]);
    let _upstream = Upstream::start(
        &r.sb.outer,
        SocketAddr::from(([0, 0, 0, 0], HTTP_PORT)),
        SocketAddr::from(([0, 0, 0, 0], HTTPS_PORT)),
        tls.config.clone(),
    );
    let inspected = Upstream::start(
        &r.sb.outer,
        SocketAddr::from(([0, 0, 0, 0], INSPECTED_HTTP_PORT)),
        SocketAddr::from(([0, 0, 0, 0], INSPECTED_PORT)),
        tls.config.clone(),
    );
    // The transparent cases' host (by name) and echo.
    let named = Upstream::start(
        &r.sb.outer,
        SocketAddr::from(([0, 0, 0, 0], transparent::PLAIN_PORT)),
        SocketAddr::from(([0, 0, 0, 0], transparent::TLS_PORT)),
        tls.config.clone(),
    );
    let mut policy = e2e_support::policy_inspected(IpAddr::V4(upstream), HTTP_PORT, HTTPS_PORT, INSPECTED_PORT);
    policy.push_str(&transparent::policy(upstream, true));
    std::fs::write(r.file("policy.yaml"), policy).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    transparent::echo_server(&runtime, &r.sb.outer);
    let gateway_addr = SocketAddr::from(([0, 0, 0, 0], GATEWAY_PORT));
    let listener = e2e_support::in_netns(&r.sb.outer, move || std::net::TcpListener::bind(gateway_addr).unwrap());
    let gateway = runtime.block_on(async { gateway_support::TestGateway::start_on(listener) });
    // The credentials come from the gateway, bound to the inspected port's `/swap` (the real
    // gateway's shape: values with `static_credential_bindings`); E2E_REGION is not secret.
    let endpoint =
        StaticCredentialEndpoint { host: upstream.to_string(), port: INSPECTED_PORT.into(), path: "/swap".into() };
    let binding = StaticCredentialBinding { endpoints: vec![endpoint], ..Default::default() };
    gateway.state.set_provider_env(GetSandboxProviderEnvironmentResponse {
        environment: [("E2E_TOKEN", SECRET), ("E2E_REGION", "eu-e2e-1")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        provider_env_revision: 1,
        static_credential_bindings: [("E2E_TOKEN".to_owned(), binding)].into(),
        non_secret_environment_keys: vec!["E2E_REGION".into()],
        ..Default::default()
    });
    let relay_port = relay::listen(&runtime, gateway.state.clone());
    std::fs::write(r.file("roots.pem"), &tls.ca_pem).unwrap();
    std::fs::create_dir(r.file("keys")).unwrap();
    let key = r.file("keys/id");
    must(std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key), STEP);
    std::fs::copy(r.file("keys/id.pub"), r.file("keys/authorized_keys")).unwrap();

    // The agent starts first and must wait for .ready on its own: no workload, no SSH.
    r.start_agent_net();
    let agent_started = Instant::now();
    r.start_agent();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let logs = r.agent_logs();
    assert!(!logs.stdout.contains("workload-started"), "the workload ran before .ready: {}", logs.all());
    let state = r.sb.p(&["inspect", "--format", "{{.State.Status}}", &r.agent]).stdout;
    assert_eq!(state.trim(), "running", "the agent waits for .ready: {}", logs.all());
    assert!(!agent_exec(&r.sb, &["true"]).ok(), "an exec session before .ready");
    let started = Instant::now();
    r.start_proxy();
    r.wait_ready();
    let to_ready = started.elapsed();
    let ready_at = Instant::now();
    let ready = volume::read_ready(&r.mountpoint).unwrap();
    assert_eq!(ready.proxy_listen, SocketAddr::from(([0, 0, 0, 0], PROXY_PORT)));
    assert!(!r.mountpoint.join("ca-key.pem").exists(), "the CA key stays out of the shared volume");
    let health = run(r.sb.podman().args(["healthcheck", "run", &r.proxy]), STEP);
    assert!(health.ok(), "the image's HEALTHCHECK in proxy mode: {}", health.all());
    let mut last = None;
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !last.as_ref().is_some_and(Output::ok) {
        if Instant::now() > deadline {
            let last = last.map(|out| out.all()).unwrap_or_default();
            panic!("no exec in the agent within 30 s; last: {last}\nagent logs: {}", r.agent_logs().all());
        }
        last = Some(agent_exec(&r.sb, &["true"]));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let to_first_exec = agent_started.elapsed();
    let ready_to_first_exec = ready_at.elapsed();
    let logs = r.agent_logs();
    assert!(logs.stdout.contains("workload-started"), "the workload runs after .ready: {}", logs.all());
    let health = run(r.sb.podman().args(["healthcheck", "run", &r.agent]), STEP);
    assert!(health.ok(), "the image's HEALTHCHECK in agent mode: {}", health.all());
    // The session runs in the child environment, as the sandbox user, with no control
    // variable but OPENSHELL_SANDBOX.
    let out = agent_exec(&r.sb, &["sh", "-c", "id -u; env"]);
    assert!(out.ok() && out.stdout.starts_with("1000\n"), "exec as the sandbox user: {}", out.all());
    assert!(out.stdout.contains("\nOPENSHELL_SANDBOX=1\n"), "{}", out.all());
    assert!(!out.stdout.contains("OPENSHELL_PROXY_MODE") && !out.stdout.contains("OPENSHELL_SSH"), "{}", out.all());

    // Labels on the three kinds of resources.
    let sb = &r.sb;
    assert_eq!(label(sb, "container", &r.proxy, "openshell.role"), "proxy");
    assert_eq!(label(sb, "container", &r.agent, "openshell.role"), "agent");
    let all = [
        ("container", &r.proxy),
        ("container", &r.agent),
        ("container", &r.agent_net),
        ("network", &r.int),
        ("network", &r.ext),
        ("volume", &r.vol),
    ];
    for (kind, name) in all {
        assert_eq!(label(sb, kind, name, RUN_LABEL), sb.id, "{kind} {name}");
        assert_eq!(label(sb, kind, name, "openshell.sandbox"), n, "{kind} {name}");
    }

    // Through the proxy: HTTP forwarded, HTTPS tunnelled (L4, no `protocol`) and verified
    // against ca-bundle.pem through SSL_CERT_FILE.
    let http_url = format!("http://{upstream}:{HTTP_PORT}/index.txt");
    let https_url = format!("https://{upstream}:{HTTPS_PORT}/index.txt");
    let out = agent_exec(sb, &["curl", "-sS", "-m", "10", &http_url]);
    assert!(out.ok() && out.stdout == HELLO, "HTTP through the proxy: {}", out.all());
    let out = agent_exec(sb, &["curl", "-sS", "-m", "10", &https_url]);
    assert!(out.ok() && out.stdout == HELLO, "HTTPS through the proxy: {}", out.all());
    let out = agent_exec(sb, &["env", "SSL_CERT_FILE=/openshell-tls/ca.pem", "curl", "-sS", "-m", "10", &https_url]);
    assert_eq!(out.code, Some(60), "trusting only ca.pem must fail to verify the upstream: {}", out.all());

    // Without the proxy variables: no route.
    for url in [&http_url, &https_url] {
        let out = agent_exec(sb, &[transparent::UNSET, &["curl", "-sS", "-v", "-m", "10", url]].concat());
        assert!(!out.ok() && out.stderr.contains("Network is unreachable"), "direct {url}: {}", out.all());
    }
    let out = podman_exec(sb, &["ip", "route", "show", "default"]);
    assert!(out.ok() && out.stdout.trim().is_empty(), "the agent has no default route: {}", out.all());

    // Without the proxy variables, by name: the policy DNS and the transparent listeners.
    transparent::checks(&r, &named, upstream);

    // A denied host: 403 with the JSON body.
    let out = agent_exec(sb, &["curl", "-sS", "-m", "10", "-w", "\n%{http_code}", "http://denied.example/"]);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or_default();
    assert_eq!(code, "403", "denied host: {}", out.all());
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    assert_eq!(json["error"], "policy_denied", "{json}");

    // Git over SSH, in the child environment: both guards.
    let out = agent_exec(sb, &["git", "ls-remote", &format!("ssh://git@{upstream}/r.git")]);
    assert!(!out.ok() && out.stderr.contains("transport 'ssh' not allowed"), "git over SSH: {}", out.all());
    let out = agent_exec(sb, &["sh", "-c", "eval \"$GIT_SSH_COMMAND\" git@host git-upload-pack"]);
    assert!(out.code == Some(1) && out.stderr.contains("SSH disabled: use HTTPS"), "GIT_SSH_COMMAND: {}", out.all());

    // The agent reads the volume but cannot write it.
    let out = podman_exec(sb, &["sh", "-c", "cat /openshell-tls/ca.pem >/dev/null && touch /openshell-tls/x"]);
    assert!(!out.ok() && out.stderr.contains("Read-only file system"), "agent write to the volume: {}", out.all());

    // Credential swap: the agent holds only the placeholder (from child-env.json), and the
    // non-secret key's value; the proxy terminates TLS on the inspected port and the
    // upstream sees the secret on the bound path only.
    let placeholder = "openshell:resolve:env:E2E_TOKEN";
    let out = agent_exec(sb, &["env"]);
    assert!(out.ok() && out.stdout.contains(&format!("\nE2E_TOKEN={placeholder}\n")), "agent env: {}", out.all());
    assert!(out.stdout.contains("\nE2E_REGION=eu-e2e-1\n"), "a non-secret key as its value: {}", out.all());
    assert!(!out.stdout.contains(SECRET), "the secret leaked into the agent's env: {}", out.all());
    let other = format!("https://{upstream}:{INSPECTED_PORT}/other");
    let curl = format!("curl -sS -m 10 -w '\n%{{http_code}}' -H \"Authorization: Bearer $E2E_TOKEN\" {other}");
    let out = agent_exec(sb, &["sh", "-c", &curl]);
    assert!(
        out.stdout.ends_with("\n403") && out.stdout.contains("credential_not_bound"),
        "unbound path: {}",
        out.all()
    );
    let url = format!("https://{upstream}:{INSPECTED_PORT}/swap");
    let curl = format!("curl -sS -m 10 -H \"Authorization: Bearer $E2E_TOKEN\" {url}");
    let out = agent_exec(sb, &["sh", "-c", &curl]);
    assert!(out.ok() && out.stdout == HELLO, "curl with the placeholder: {}", out.all());
    let heads = inspected.heads();
    let swap = heads.iter().find(|head| head.starts_with("GET /swap ")).unwrap_or_else(|| panic!("{heads:?}"));
    let auth = swap.lines().find(|line| line.to_ascii_lowercase().starts_with("authorization:"));
    assert_eq!(auth.map(|l| l[14..].trim()), Some(&*format!("Bearer {SECRET}")), "upstream head: {swap}");
    assert!(!swap.contains(placeholder), "the placeholder reached the upstream: {swap}");
    assert!(!heads.iter().any(|head| head.starts_with("GET /other ")), "the refused request left: {heads:?}");
    for entry in std::fs::read_dir(&r.mountpoint).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read(&path).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&text).contains(SECRET), "the secret is in {}", path.display());
    }

    // An exec session through the gateway relay: the supervisor session reached the
    // gateway through the proxy's forward; the relay carries SSH to the agent.
    e2e_support::wait_for("the agent's supervisor session", STEP, || gateway.state.has_session().then_some(()));
    let out = relay::relay_exec(relay_port, &["sh", "-c", "id -u; curl -sS -m 10 \"$0\"", &https_url]);
    assert!(out.ok() && out.stdout == format!("1000\n{HELLO}"), "exec through the gateway relay: {}", out.all());
    let to_relay_exec = agent_started.elapsed();
    let calls = gateway.state.calls_of("RelayStream");
    assert!(!calls.is_empty(), "the exec went through RelayStream: {calls:?}");

    // One stream per sandbox: both containers' audit events reach the gateway as OCSF
    // shorthand lines under the one sandbox id, and their OCSF JSON lines (both run with
    // OPENSHELL_LOG_FORMAT=ocsf) validate and name the sandbox and the container.
    let shipped = e2e_support::wait_for("both containers' OCSF lines at the gateway", STEP, || {
        let ocsf: Vec<_> = gateway.state.log_lines().into_iter().filter(|l| l.level == "OCSF").collect();
        let has = |prefix: &str| ocsf.iter().any(|l| l.message.starts_with(prefix));
        (has("NET:OPEN [INFO] ALLOWED ") && has("SSH:OPEN [INFO] ALLOWED") && has("PROC:LAUNCH [INFO] "))
            .then_some(ocsf)
    });
    assert!(shipped.iter().all(|l| l.sandbox_id == gateway_support::SANDBOX_ID && l.target == "ocsf"), "{shipped:?}");
    let mut features = std::collections::BTreeSet::new();
    for container in [&r.proxy, &r.agent] {
        let logs = run(r.sb.podman().args(["logs", container]), STEP).all();
        let events: Vec<serde_json::Value> = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e.get("class_uid").is_some())
            .collect();
        assert!(!events.is_empty(), "OCSF lines from {container}: {logs}");
        for event in &events {
            crate::support::ocsf::assert_valid(event);
            assert_eq!(event["device"]["uid"], gateway_support::SANDBOX_ID, "{event}");
            features.insert(event["metadata"]["product"]["feature"]["name"].as_str().unwrap_or_default().to_owned());
        }
        assert!(!logs.contains(SECRET), "the secret is in the logs of {container}");
    }
    assert_eq!(features, ["agent", "proxy"].map(String::from).into(), "both containers, told apart");

    // The client list held: neither the startup warning nor a refused agent or health probe.
    let proxy_logs = run(r.sb.podman().args(["logs", &r.proxy]), STEP).all();
    assert!(!proxy_logs.contains("OPENSHELL_PROXY_ALLOWED_CLIENTS"), "proxy logs: {proxy_logs}");

    transparent::figures(&r);

    // Deleting in the driver's order leaves nothing.
    let mut sb = r.sb;
    sb.delete();
    let left = sb.leftovers();
    assert!(left.is_empty(), "left after delete: {left:?}");
    eprintln!(
        "figures (podman): image build {build_time:?}; proxy `podman run` to .ready {to_ready:?}; \
         agent start to first exec {to_first_exec:?} (.ready to first exec {ready_to_first_exec:?}); \
         agent start to the relay exec (after the other checks) {to_relay_exec:?}; whole run {:?}",
        whole.elapsed()
    );
}
