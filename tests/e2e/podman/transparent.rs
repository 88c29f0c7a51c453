//! The transparent cases (issue 15): with the proxy variables unset in the agent, names
//! resolve through the policy DNS to synthetic addresses the agent routes to the proxy.
//! `wget` and curl (HTTP/1.1 and HTTP/2) reach an intercepted HTTPS host whose L7 rules
//! apply, plain HTTP is judged by its `Host` (another SNI or Host than the name resolved is
//! refused), a raw TCP client reaches a `protocol: tcp` echo; a denied name is NXDOMAIN (audited), a real address unreachable, an address never
//! handed out reset; a reload removing the echo stops new connections to its address at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use super::e2e_support::{HELLO, Output, Upstream, in_netns, run, wait_for};
use super::sandbox::STEP;
use super::steps::{Run, agent_exec};

/// The intercepted HTTPS (and plain HTTP) host: `protocol: rest`, GET /index.txt and
/// /bytes/* allowed, every other request denied.
pub const ALLOWED: &str = "allowed.example";
/// The raw TCP host: `protocol: tcp`, an echo server.
pub const ECHO: &str = "echo.example";
/// Names the proxy resolves to the upstream (its /etc/hosts).
pub const NAMES: &[&str] = &[ALLOWED, ECHO];
pub const ECHO_PORT: u16 = 7000;
/// The upstream's ports for [`ALLOWED`] (the transparent listeners take the same ports).
pub const PLAIN_PORT: u16 = 80;
pub const TLS_PORT: u16 = 443;

/// Removes the proxy variables for one command.
pub const UNSET: &[&str] = &["env", "-u", "HTTP_PROXY", "-u", "http_proxy", "-u", "HTTPS_PROXY", "-u", "https_proxy"];

/// A raw TCP client: connects, sends `ping`, prints what comes back (`closed` for an
/// orderly close) or the error's type and errno.
const TCP_CLIENT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(b"ping")
    print(s.recv(64).decode() or "closed")
except OSError as e:
    print(type(e).__name__, e.errno)
"#;

/// The policy section of the transparent cases; `echo` keeps the echo endpoint, else
/// another name holds its port (so its listener stays: the refusal is the decision's).
pub fn policy(upstream: Ipv4Addr, echo: bool) -> String {
    let mut yaml = format!(
        "  transparent:\n    name: e2e transparent\n    endpoints:\n      \
         - host: {ALLOWED}\n        ports: [{PLAIN_PORT}, {TLS_PORT}]\n        protocol: rest\n        \
         allowed_ips: [\"{upstream}/32\"]\n        rules:\n          \
         - allow: {{method: GET, path: /index.txt}}\n          - allow: {{method: GET, path: \"/bytes/*\"}}\n"
    );
    let host = if echo { ECHO } else { "other.example" };
    yaml.push_str(&format!(
        "      - {{host: {host}, port: {ECHO_PORT}, protocol: tcp, allowed_ips: [\"{upstream}/32\"]}}\n"
    ));
    yaml
}

/// An echo server on `0.0.0.0:ECHO_PORT` in the namespace `netns`, on `runtime`.
pub fn echo_server(runtime: &tokio::runtime::Runtime, netns: &str) {
    let listener = in_netns(netns, || {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], ECHO_PORT))).unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    });
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
}

/// Runs ARGS in the agent with the proxy variables unset.
fn direct(r: &Run, args: &[&str]) -> Output {
    agent_exec(&r.sb, &[UNSET, args].concat())
}

fn tcp(r: &Run, host: &str, port: u16) -> String {
    let out = direct(r, &["python3", "-c", TCP_CLIENT, host, &port.to_string()]);
    assert!(out.ok(), "the TCP client: {}", out.all());
    out.stdout.trim().to_owned()
}

fn proxy_logs(r: &Run) -> String {
    run(r.sb.podman().args(["logs", &r.proxy]), STEP).all()
}

/// The cases, in order; `named` is the upstream behind [`ALLOWED`].
pub fn checks(r: &Run, named: &Upstream, upstream: Ipv4Addr) {
    let wget = ["wget", "-q", "-T", "10", "-O", "-", "--ca-certificate=/openshell-tls/ca-bundle.pem"];
    let curl = ["curl", "-sS", "-m", "10", "-w", "\n%{http_code} %{http_version}"];
    let index = format!("https://{ALLOWED}/index.txt");
    let secret = format!("https://{ALLOWED}/secret");

    // The agent resolves through the policy DNS: a synthetic address.
    let out = direct(r, &["getent", "hosts", ALLOWED]);
    assert!(out.ok() && out.stdout.starts_with("198.1"), "{ALLOWED} resolved: {}", out.all());

    // Intercepted HTTPS: wget (HTTP/1.1) and curl (HTTP/2 by ALPN), one allowed and one
    // denied request each; the denied ones never leave.
    let out = direct(r, &[&wget[..], &[&index]].concat());
    assert!(out.ok() && out.stdout == HELLO, "wget to the allowed host: {}", out.all());
    let out = direct(r, &[&wget[..], &["--content-on-error", &secret]].concat());
    assert!(out.code == Some(8) && out.stdout.contains("policy_denied"), "wget, a denied path: {}", out.all());
    let out = direct(r, &[&curl[..], &[&index]].concat());
    assert_eq!(out.stdout, format!("{HELLO}\n200 2"), "curl over HTTP/2: {}", out.all());
    let out = direct(r, &[&curl[..], &[&secret]].concat());
    assert!(out.stdout.ends_with("\n403 2") && out.stdout.contains("policy_denied"), "h2 denied: {}", out.all());
    // Plain HTTP, judged by its Host.
    let plain = format!("http://{ALLOWED}/index.txt");
    let out = direct(r, &["curl", "-sS", "-m", "10", &plain]);
    assert!(out.ok() && out.stdout == HELLO, "plain HTTP: {}", out.all());
    let out = direct(r, &[&curl[..], &[&format!("http://{ALLOWED}/secret")]].concat());
    assert!(out.stdout.ends_with("\n403 1.1") && out.stdout.contains("policy_denied"), "plain denied: {}", out.all());
    // The host is the name the client resolved: another SNI or Host on its address is refused.
    let other = format!("other.example:{TLS_PORT}:{ALLOWED}:{TLS_PORT}");
    let out = direct(r, &["curl", "-sS", "-m", "10", "--connect-to", &other, "https://other.example/index.txt"]);
    assert_eq!(out.code, Some(35), "another SNI on {ALLOWED}'s address: {}", out.all());
    let out = direct(r, &[&curl[..], &["-H", "Host: other.example", &plain]].concat());
    assert!(out.stdout.ends_with("\n403 1.1") && out.stdout.contains("other.example"), "another Host: {}", out.all());
    let heads = named.heads();
    let host = |head: &String| head.to_ascii_lowercase().contains(&format!("\nhost: {ALLOWED}"));
    assert!(heads.len() == 3 && heads.iter().all(|h| h.starts_with("GET /index.txt ") && host(h)), "{heads:?}");

    // Raw TCP to the `protocol: tcp` endpoint.
    assert_eq!(tcp(r, ECHO, ECHO_PORT), "ping", "the echo through the transparent listener");

    // A name no policy allows: NXDOMAIN, audited with the name.
    let out = direct(r, &["getent", "hosts", "denied.example"]);
    assert_eq!(out.code, Some(2), "denied name: {}", out.all());
    let out = direct(r, &["wget", "-T", "10", "-O", "-", "https://denied.example/"]);
    assert!(!out.ok() && out.stderr.contains("unable to resolve"), "wget to a denied name: {}", out.all());
    let logs = proxy_logs(r);
    let audited = logs.lines().any(|l| l.contains("denied.example") && l.contains("NXDOMAIN"));
    assert!(audited, "no audit event names the denied name: {logs}");

    // A real address is unreachable; a synthetic one never handed out is reset.
    assert_eq!(tcp(r, &upstream.to_string(), ECHO_PORT), "OSError 101", "a direct IP");
    assert_eq!(tcp(r, "198.19.255.254", ECHO_PORT), "ConnectionResetError 104", "an address never handed out");

    // A reload removing the echo: its address is refused from the next connection on, and
    // the name is NXDOMAIN; the other host still works.
    let out = direct(r, &["getent", "hosts", ECHO]);
    let echo = out.stdout.split_whitespace().next().unwrap_or_else(|| panic!("{}", out.all())).to_owned();
    let installed = |logs: &str| logs.matches("policy generation installed").count();
    let before = installed(&proxy_logs(r));
    let base = std::fs::read_to_string(r.file("policy.yaml")).unwrap();
    let without = base.replace(&policy(upstream, true), &policy(upstream, false));
    assert_ne!(base, without);
    std::fs::write(r.file("policy.yaml"), without).unwrap();
    let written = Instant::now();
    wait_for("the reload", STEP, || (installed(&proxy_logs(r)) > before).then_some(()));
    let reload = written.elapsed();
    assert_eq!(tcp(r, &echo, ECHO_PORT), "ConnectionResetError 104", "{echo} after the reload");
    let out = direct(r, &["getent", "hosts", ECHO]);
    assert_eq!(out.code, Some(2), "a removed name: {}", out.all());
    let out = direct(r, &[&wget[..], &[&index]].concat());
    assert!(out.ok() && out.stdout == HELLO, "the host kept: {}", out.all());
    eprintln!("transparent: the policy file written to the reload installed {reload:?} (1 s poll)");
}

/// The figures: new connection + GET, and a download, by the transparent path and by the
/// proxied (CONNECT) path to the same intercepted host in the same run.
pub fn figures(r: &Run) {
    const ROUNDS: usize = 20;
    const MIB: usize = 32;
    let loop_of = |url: &str, format: &str, rounds: usize| {
        format!("for i in $(seq {rounds}); do curl -sS -o /dev/null -m 60 -w '{format}\\n' {url} || exit 1; done")
    };
    let index = format!("https://{ALLOWED}/index.txt");
    let bytes = format!("https://{ALLOWED}/bytes/{}", MIB << 20);
    let mut lines = Vec::new();
    for (path, proxied) in [("transparent", false), ("proxied (CONNECT)", true)] {
        let exec = |script: String| {
            let out =
                if proxied { agent_exec(&r.sb, &["sh", "-c", &script]) } else { direct(r, &["sh", "-c", &script]) };
            assert!(out.ok(), "{path}: {}", out.all());
            let mut values: Vec<f64> = out.stdout.lines().map(|l| l.trim().parse().unwrap()).collect();
            values.sort_by(f64::total_cmp);
            values
        };
        let times = exec(loop_of(&index, "%{time_total}", ROUNDS));
        let speeds = exec(loop_of(&bytes, "%{speed_download}", 3));
        lines.push(format!(
            "{path}: new connection + GET median {:.1} ms (min {:.1}, max {:.1}, {ROUNDS} rounds); \
             {MIB} MiB download median {:.0} MiB/s",
            times[ROUNDS / 2] * 1e3,
            times[0] * 1e3,
            times[ROUNDS - 1] * 1e3,
            speeds[1] / f64::from(1 << 20),
        ));
    }
    eprintln!("figures (transparent vs proxied, curl in the agent):\n  {}", lines.join("\n  "));
}
