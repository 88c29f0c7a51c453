//! End to end on plain network namespaces (no Podman), in every `cargo test`: the proxy
//! binary in a "proxy" namespace joined by veth pairs to an "agent" namespace that has no
//! route out, and to an "upstream" namespace serving HTTP and HTTPS. Only 10.231.11.0/24
//! and 10.231.12.0/24 inside namespaces this test creates are ever dialled. One upstream
//! port is intercepted (`protocol: rest`) to check the credential placeholder swap. A
//! second topology serves clients that ignore the proxy: the policy DNS, the agent's route
//! of the synthetic range, the transparent listeners (docs/transparent.md).

use crate::support::e2e as e2e_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e_support::{BIN, HELLO, Output, Upstream, UpstreamTls, must, netns_add, netns_delete, run, wait_for};
use openshell_sandbox::volume::{self, READY_FILE};

/// Every namespace of this test starts with this, then the pid of the run.
const PREFIX: &str = "ose2e-";
const PROXY_INT: Ipv4Addr = Ipv4Addr::new(10, 231, 11, 2);
const AGENT: Ipv4Addr = Ipv4Addr::new(10, 231, 11, 3);
const PROXY_EXT: Ipv4Addr = Ipv4Addr::new(10, 231, 12, 2);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(10, 231, 12, 10);
const HTTP_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
/// The intercepted HTTPS port (and the unused plain port of that second upstream).
const INSPECTED_PORT: u16 = 9443;
const INSPECTED_HTTP_PORT: u16 = 8090;
/// The provider secret: only the proxy's env file holds it.
const SECRET: &str = "netns-secret-8d2e4b7a1c";
const PROXY_PORT: u16 = 3128;
const STEP: Duration = Duration::from_secs(20);
/// Where `ip netns exec NS` finds the files it mounts over /etc for NS.
const ETC_NETNS: &str = "/etc/netns";

/// The three namespaces, the upstream and the proxy process; Drop (also on panic) kills
/// the processes and deletes the namespaces, which destroys the veths.
struct Topology {
    agent: String,
    proxy_ns: String,
    upstream_ns: String,
    dir: tempfile::TempDir,
    proxy: Option<Child>,
    upstream: Option<Upstream>,
    inspected: Option<Upstream>,
    /// Directories of /etc/netns this topology wrote (removed with it).
    etc: Vec<PathBuf>,
}

impl Topology {
    fn build() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let id = format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        // Leftovers of killed runs: namespaces named after a pid that no longer exists.
        for stale in e2e_support::stale_names(e2e_support::netns_list(), PREFIX) {
            eprintln!("sweeping the namespace {stale} of a dead run");
            netns_delete(&stale);
        }
        let etc = std::fs::read_dir(ETC_NETNS).into_iter().flatten().flatten();
        for stale in e2e_support::stale_names(etc.filter_map(|e| e.file_name().into_string().ok()), PREFIX) {
            let _ = std::fs::remove_dir_all(Path::new(ETC_NETNS).join(stale));
        }
        let topo = Topology {
            agent: format!("{PREFIX}{id}-agent"),
            proxy_ns: format!("{PREFIX}{id}-proxy"),
            upstream_ns: format!("{PREFIX}{id}-upstream"),
            dir: tempfile::tempdir().unwrap(),
            proxy: None,
            upstream: None,
            inspected: None,
            etc: Vec::new(),
        };
        for ns in [&topo.agent, &topo.proxy_ns, &topo.upstream_ns] {
            netns_add(ns);
        }
        // Interface names: at most 15 characters, unique per run (they live only inside
        // this run's namespaces, so even a pid reuse cannot collide).
        let short = format!("{}", std::process::id() % 10_000_000);
        topo.veth(&topo.agent, &format!("ea{short}"), AGENT, &topo.proxy_ns, &format!("ei{short}"), PROXY_INT);
        topo.veth(&topo.proxy_ns, &format!("ex{short}"), PROXY_EXT, &topo.upstream_ns, &format!("eu{short}"), UPSTREAM);
        topo
    }

    /// A veth pair between two namespaces, each end with its /24 address and up.
    fn veth(&self, ns_a: &str, a: &str, ip_a: Ipv4Addr, ns_b: &str, b: &str, ip_b: Ipv4Addr) {
        let ip = |args: &[&str]| must(Command::new("ip").args(args), STEP);
        ip(&["link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b]);
        for (ns, dev, addr) in [(ns_a, a, ip_a), (ns_b, b, ip_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// A file `ip netns exec NS` mounts over /etc/NAME (its documented mechanism).
    fn etc_file(&mut self, ns: &str, name: &str, text: &str) {
        let dir = Path::new(ETC_NETNS).join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
        self.etc.push(dir);
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Starts the proxy binary inside the proxy namespace with `policy` and the flags
    /// `extra`; returns how long `.ready` took.
    fn start_proxy(&mut self, roots: &Path, policy: &str, extra: &[&str]) -> Duration {
        let policy_path = self.dir.path().join("policy.yaml");
        std::fs::write(&policy_path, policy).unwrap();
        let provider = self.dir.path().join("provider.env");
        std::fs::write(&provider, format!("[e2e]\nE2E_TOKEN={SECRET}\n")).unwrap();
        let log = self.dir.path().join("proxy.log");
        let started = Instant::now();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.proxy_ns, BIN, "proxy"])
            .arg("--policy")
            .arg(&policy_path)
            .args(["--listen", &SocketAddr::from((PROXY_INT, PROXY_PORT)).to_string()])
            .arg("--tls-dir")
            .arg(self.tls_dir())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(extra)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            // The "system roots" the proxy bundles into ca-bundle.pem: the upstream's CA.
            .env("SSL_CERT_FILE", roots)
            .env("OPENSHELL_UPSTREAM_CA_FILE", roots)
            .env("OPENSHELL_PROVIDER_ENV_FILE", &provider)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.proxy = Some(child);
        let ready = self.tls_dir().join(READY_FILE);
        wait_for(".ready from the proxy", STEP, || {
            if let Some(status) = self.proxy.as_mut().unwrap().try_wait().unwrap() {
                panic!("the proxy exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            ready.exists().then_some(())
        });
        started.elapsed()
    }

    /// `curl` run inside the agent namespace with only PATH and `env` set.
    fn agent_curl(&self, env: &[(&str, String)], args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.agent, "curl", "-sS", "-m", "10"]).args(args);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (key, value) in env {
            cmd.env(key, value);
        }
        run(&mut cmd, STEP)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut child) = self.proxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.upstream.take();
        self.inspected.take();
        for ns in [&self.agent, &self.proxy_ns, &self.upstream_ns] {
            netns_delete(ns);
        }
        for dir in &self.etc {
            let _ = std::fs::remove_dir_all(dir);
        }
        // Only when empty: another run may be using it.
        let _ = std::fs::remove_dir(ETC_NETNS);
    }
}

#[test]
fn agent_reaches_upstream_only_through_the_proxy() {
    let _one = e2e_support::one_at_a_time();
    if let Some(reason) = e2e_support::netns_unsupported() {
        eprintln!("SKIPPED agent_reaches_upstream_only_through_the_proxy: {reason}");
        return;
    }
    let whole = Instant::now();
    let mut topo = Topology::build();
    let tls = UpstreamTls::new(IpAddr::V4(UPSTREAM));
    topo.upstream = Some(Upstream::start(
        &topo.upstream_ns,
        SocketAddr::from((UPSTREAM, HTTP_PORT)),
        SocketAddr::from((UPSTREAM, HTTPS_PORT)),
        tls.config.clone(),
    ));
    topo.inspected = Some(Upstream::start(
        &topo.upstream_ns,
        SocketAddr::from((UPSTREAM, INSPECTED_HTTP_PORT)),
        SocketAddr::from((UPSTREAM, INSPECTED_PORT)),
        tls.config.clone(),
    ));
    let roots = topo.dir.path().join("roots.pem");
    std::fs::write(&roots, &tls.ca_pem).unwrap();
    let policy = e2e_support::policy_inspected(IpAddr::V4(UPSTREAM), HTTP_PORT, HTTPS_PORT, INSPECTED_PORT);
    let to_ready = topo.start_proxy(&roots, &policy, &[]);

    // .ready names the listener the agent side uses.
    let ready = volume::read_ready(&topo.tls_dir()).unwrap();
    assert_eq!(ready.proxy_listen, SocketAddr::from((PROXY_INT, PROXY_PORT)));
    let proxy_url = format!("http://{PROXY_INT}:{PROXY_PORT}");
    let http_url = format!("http://{UPSTREAM}:{HTTP_PORT}/index.txt");
    let https_url = format!("https://{UPSTREAM}:{HTTPS_PORT}/index.txt");
    let via_proxy = vec![
        ("HTTP_PROXY", proxy_url.clone()),
        ("http_proxy", proxy_url.clone()),
        ("HTTPS_PROXY", proxy_url.clone()),
        ("https_proxy", proxy_url.clone()),
    ];

    // Through the proxy: plain HTTP (forwarded) and HTTPS (CONNECT, L4 relay), the latter
    // verified against ca-bundle.pem, which carries the system roots and the sandbox CA.
    let out = topo.agent_curl(&via_proxy, &[&http_url]);
    assert!(out.ok() && out.stdout == HELLO, "HTTP through the proxy: {}", out.all());
    let mut env = via_proxy.clone();
    env.push(("SSL_CERT_FILE", topo.tls_dir().join("ca-bundle.pem").display().to_string()));
    let out = topo.agent_curl(&env, &[&https_url]);
    assert!(out.ok() && out.stdout == HELLO, "HTTPS through the proxy with ca-bundle.pem: {}", out.all());
    // Control: ca.pem alone lacks the upstream's root, so the same request fails to verify.
    let mut env = via_proxy.clone();
    env.push(("SSL_CERT_FILE", topo.tls_dir().join("ca.pem").display().to_string()));
    let out = topo.agent_curl(&env, &[&https_url]);
    assert_eq!(out.code, Some(60), "HTTPS trusting only ca.pem must fail verification: {}", out.all());

    // Without the proxy: no route at all.
    let out = topo.agent_curl(&[], &["-v", &http_url]);
    assert!(!out.ok() && out.stderr.contains("Network is unreachable"), "direct: {}", out.all());
    let err = e2e_support::direct_connect_error(&topo.agent, SocketAddr::from((UPSTREAM, HTTP_PORT)));
    assert_eq!(err.kind(), std::io::ErrorKind::NetworkUnreachable, "direct connect: {err}");
    let err = e2e_support::direct_connect_error(&topo.agent, SocketAddr::from((PROXY_EXT, PROXY_PORT)));
    assert_eq!(err.kind(), std::io::ErrorKind::NetworkUnreachable, "the proxy's outer address: {err}");

    // A host the policy does not name: 403 with the JSON body, for forward and CONNECT.
    let out = topo.agent_curl(&via_proxy, &["-w", "\n%{http_code}", "http://denied.example/"]);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or_default();
    assert_eq!(code, "403", "denied host: {}", out.all());
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    assert_eq!(json["error"], "policy_denied", "{json}");
    assert_eq!(json["host"], "denied.example", "{json}");
    let out = topo.agent_curl(&via_proxy, &["-w", "%{http_connect}", "https://denied.example/"]);
    assert!(!out.ok() && out.stdout.ends_with("403"), "denied CONNECT: {}", out.all());
    // The upstream's address on a port the policy does not list is denied too.
    let out = topo.agent_curl(&via_proxy, &["-o", "/dev/null", "-w", "%{http_code}", &format!("http://{UPSTREAM}:9/")]);
    assert_eq!(out.stdout, "403", "unlisted port: {}", out.all());

    // Credential swap on the intercepted port: child-env.json holds only the placeholder,
    // the request carries it, the upstream sees the secret, and no file of the shared dir
    // holds the secret.
    let child_env = volume::read_child_env(&topo.tls_dir()).unwrap();
    let placeholder = "openshell:resolve:env:E2E_TOKEN";
    assert_eq!(child_env.get("E2E_TOKEN").map(String::as_str), Some(placeholder), "{child_env:?}");
    let mut env = via_proxy.clone();
    env.push(("SSL_CERT_FILE", topo.tls_dir().join("ca-bundle.pem").display().to_string()));
    let auth = format!("Authorization: Bearer {placeholder}");
    let out = topo.agent_curl(&env, &["-H", &auth, &format!("https://{UPSTREAM}:{INSPECTED_PORT}/swap")]);
    assert!(out.ok() && out.stdout == HELLO, "curl with the placeholder: {}", out.all());
    let heads = topo.inspected.as_ref().unwrap().heads();
    let swap = heads.iter().find(|head| head.starts_with("GET /swap ")).unwrap_or_else(|| panic!("{heads:?}"));
    let auth = swap.lines().find(|line| line.to_ascii_lowercase().starts_with("authorization:"));
    assert_eq!(auth.map(|l| l[14..].trim()), Some(&*format!("Bearer {SECRET}")), "upstream head: {swap}");
    for entry in std::fs::read_dir(topo.tls_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read(&path).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&text).contains(SECRET), "the secret is in {}", path.display());
    }

    drop(topo);
    eprintln!("figures (netns): proxy start to .ready {:?}; whole run {:?}", to_ready, whole.elapsed());
}

#[test]
fn clients_that_ignore_the_proxy_reach_allowed_names_transparently() {
    if let Some(reason) = e2e_support::netns_unsupported() {
        eprintln!("SKIPPED clients_that_ignore_the_proxy_reach_allowed_names_transparently: {reason}");
        return;
    }
    const ECHO_PORT: u16 = 7000;
    let mut topo = Topology::build();
    let tls = UpstreamTls::for_names(&["allowed.example"]);
    let https = SocketAddr::from((UPSTREAM, 443));
    let upstream = Upstream::start(&topo.upstream_ns, SocketAddr::from((UPSTREAM, 80)), https, tls.config.clone());
    topo.upstream = Some(upstream);
    let echo = e2e_support::in_netns(&topo.upstream_ns, || std::net::TcpListener::bind((UPSTREAM, ECHO_PORT)).unwrap());
    std::thread::spawn(move || {
        for mut stream in echo.incoming().flatten() {
            std::thread::spawn(move || std::io::copy(&mut stream.try_clone().unwrap(), &mut stream));
        }
    });
    let roots = topo.dir.path().join("roots.pem");
    std::fs::write(&roots, &tls.ca_pem).unwrap();
    let (proxy_ns, agent) = (topo.proxy_ns.clone(), topo.agent.clone());
    topo.etc_file(&proxy_ns, "hosts", &format!("{UPSTREAM} allowed.example echo.example\n"));
    topo.etc_file(&agent, "resolv.conf", &format!("nameserver {PROXY_INT}\n"));
    must(Command::new("ip").args(["-n", &agent, "route", "add", "198.18.0.0/15", "via", &PROXY_INT.to_string()]), STEP);
    // The binding only because start_proxy gives every proxy the provider env file.
    let policy = format!(
        "version: 1\nnetwork_policies:\n  t:\n    endpoints:\n      - host: allowed.example\n        port: 443\n        \
         protocol: rest\n        allowed_ips: [\"{UPSTREAM}/32\"]\n        credential_binding: {{provider: e2e}}\n        \
         rules:\n          \
         - allow: {{method: GET, path: /index.txt}}\n      \
         - {{host: echo.example, port: {ECHO_PORT}, protocol: tcp, allowed_ips: [\"{UPSTREAM}/32\"]}}\n"
    );
    let dns = SocketAddr::from((PROXY_INT, 53)).to_string();
    topo.start_proxy(&roots, &policy, &["--dns-listen", &dns, "--allowed-clients", "10.231.11.0/24"]);
    let getent = |name: &str| run(Command::new("ip").args(["netns", "exec", &agent, "getent", "hosts", name]), STEP);

    // Names: allowed ones get synthetic addresses, others NXDOMAIN.
    let out = getent("echo.example");
    let echo: Ipv4Addr =
        out.stdout.split_whitespace().next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{}", out.all()));
    assert!(echo.octets()[..2] == [198, 18] || echo.octets()[..2] == [198, 19], "{echo}");
    assert_eq!(getent("denied.example").code, Some(2), "a name no policy allows");

    // Intercepted HTTPS over HTTP/2, the L7 rules applied; another SNI on the address refused.
    let env = [("SSL_CERT_FILE", topo.tls_dir().join("ca-bundle.pem").display().to_string())];
    let w = ["-w", "\n%{http_code} %{http_version}"];
    let out = topo.agent_curl(&env, &[&w[..], &["https://allowed.example/index.txt"]].concat());
    assert_eq!(out.stdout, format!("{HELLO}\n200 2"), "allowed: {}", out.all());
    let out = topo.agent_curl(&env, &[&w[..], &["https://allowed.example/secret"]].concat());
    assert!(out.stdout.ends_with("\n403 2") && out.stdout.contains("policy_denied"), "denied path: {}", out.all());
    let out =
        topo.agent_curl(&env, &["--connect-to", "other.example:443:allowed.example:443", "https://other.example/"]);
    assert_eq!(out.code, Some(35), "another SNI: {}", out.all());
    let heads = topo.upstream.as_ref().unwrap().heads();
    assert!(heads.len() == 1 && heads[0].starts_with("GET /index.txt "), "{heads:?}");

    // Raw TCP: the echo at its synthetic address; an address never handed out is reset.
    let exchange = |addr: Ipv4Addr| {
        e2e_support::in_netns(&agent, move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect_timeout(&SocketAddr::from((addr, ECHO_PORT)), STEP)?;
            stream.set_read_timeout(Some(STEP))?;
            stream.write_all(b"ping")?;
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).map(|()| buf)
        })
    };
    assert_eq!(exchange(echo).unwrap(), *b"ping");
    let reset = exchange(Ipv4Addr::new(198, 19, 255, 254)).unwrap_err();
    assert_eq!(reset.kind(), std::io::ErrorKind::ConnectionReset, "{reset}");
}
