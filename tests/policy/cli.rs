//! The binary as users run it: mode dispatch, configuration precedence (one test per
//! step), refused secrets, `policy check` / `policy eval` exit codes and output, and
//! `healthcheck` against real sockets. Every child starts from an empty environment.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openshell-sandbox"));
    cmd.env_clear();
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cmd.output().unwrap();
    (status.code().unwrap_or(-1), String::from_utf8_lossy(&stdout).into(), String::from_utf8_lossy(&stderr).into())
}

fn policy_file(dir: &Path) -> PathBuf {
    let path = dir.join("p.yaml");
    std::fs::write(&path, "version: 1\nnetwork_policies:\n  a:\n    endpoints: [{host: api.example.com, port: 443, protocol: rest, access: read-only}]\n").unwrap();
    path
}

fn config_json(cmd: &mut Command) -> serde_json::Value {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "stderr: {err}");
    serde_json::from_str(&out).unwrap()
}

fn toml_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    path
}

// ------------------------------------------------------------------ precedence

#[test]
fn precedence_default() {
    let dir = tempfile::tempdir().unwrap();
    let v = config_json(bin().args(["config", "proxy", "--policy"]).arg(policy_file(dir.path())));
    assert_eq!(v["listen"], "0.0.0.0:3128");
    assert_eq!(v["common"]["tls_dir"], "/openshell-tls");
    assert_eq!(v["limits"]["header_timeout"], 10);
}

#[test]
fn precedence_file_over_default() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = toml_file(
        dir.path(),
        "[proxy]\nlisten = \"127.0.0.1:1111\"\nheader_timeout_secs = 7\n[sandbox]\ntls_dir = \"/from/file\"\n",
    );
    let v =
        config_json(bin().args(["config", "proxy", "--policy"]).arg(policy_file(dir.path())).arg("--config").arg(&cfg));
    assert_eq!(v["listen"], "127.0.0.1:1111");
    assert_eq!(v["limits"]["header_timeout"], 7);
    assert_eq!(v["common"]["tls_dir"], "/from/file");
}

#[test]
fn precedence_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = toml_file(dir.path(), "[proxy]\nlisten = \"127.0.0.1:1111\"\n[sandbox]\ntls_dir = \"/from/file\"\n");
    let v = config_json(
        bin()
            .args(["config", "proxy"])
            .env("OPENSHELL_POLICY_DATA", policy_file(dir.path()))
            .env("OPENSHELL_SANDBOX_CONFIG", &cfg)
            .env("OPENSHELL_PROXY_LISTEN", "127.0.0.1:2222")
            .env("OPENSHELL_TLS_DIR", "/from/env"),
    );
    assert_eq!(v["listen"], "127.0.0.1:2222");
    assert_eq!(v["common"]["tls_dir"], "/from/env");
}

#[test]
fn precedence_flag_over_env() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = toml_file(dir.path(), "[proxy]\nlisten = \"127.0.0.1:1111\"\n");
    let v = config_json(
        bin()
            .args(["config", "proxy", "--listen", "127.0.0.1:3333", "--tls-dir", "/from/flag", "--config"])
            .arg(&cfg)
            .env("OPENSHELL_POLICY_DATA", policy_file(dir.path()))
            .env("OPENSHELL_PROXY_LISTEN", "127.0.0.1:2222")
            .env("OPENSHELL_TLS_DIR", "/from/env"),
    );
    assert_eq!(v["listen"], "127.0.0.1:3333");
    assert_eq!(v["common"]["tls_dir"], "/from/flag");
}

#[test]
fn precedence_applies_to_agent_settings_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = toml_file(dir.path(), "[agent]\nready_timeout_secs = 5\nssh_socket = \"/file.sock\"\n");
    let v = config_json(
        bin().args(["config", "agent", "--config"]).arg(&cfg).env("OPENSHELL_SSH_SOCKET_PATH", "/env.sock"),
    );
    assert_eq!(v["ready_timeout"], 5);
    assert_eq!(v["ssh_socket"], "/env.sock");
    let v = config_json(
        bin()
            .args(["config", "agent", "--ssh-socket", "/flag.sock", "--config"])
            .arg(&cfg)
            .env("OPENSHELL_SSH_SOCKET_PATH", "/env.sock"),
    );
    assert_eq!(v["ssh_socket"], "/flag.sock");
}

#[test]
fn unknown_toml_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = toml_file(dir.path(), "[proxy]\nlisen = \"127.0.0.1:1\"\n");
    let (code, _, err) = run(bin().args(["config", "proxy", "--config"]).arg(&cfg));
    assert_eq!(code, 64);
    assert!(err.contains("unknown field `lisen`"), "{err}");
}

#[test]
fn invalid_environment_values_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(bin()
        .args(["config", "proxy", "--policy"])
        .arg(policy_file(dir.path()))
        .env("OPENSHELL_PROXY_HEADER_TIMEOUT_SECS", "0"));
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("header-timeout-secs"), "{err}");
    assert!(err.contains("the value comes from the environment variable OPENSHELL_PROXY_HEADER_TIMEOUT_SECS"), "{err}");
}

// ------------------------------------------------------------------ secrets

#[test]
fn a_token_on_the_command_line_is_refused() {
    let (code, _, err) = run(bin().args(["proxy", "--sandbox-token", "eyJsecret"]));
    assert_eq!(code, 64);
    assert!(err.contains("--sandbox-token") && err.contains("OPENSHELL_SANDBOX_TOKEN"), "{err}");
    assert!(!err.contains("eyJsecret"), "the secret must not be echoed");
}

#[test]
fn a_token_in_the_config_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = toml_file(dir.path(), "[gateway]\ntoken = \"eyJsecret\"\n");
    let (code, _, err) = run(bin().args(["config", "proxy", "--config"]).arg(&cfg));
    assert_eq!(code, 64);
    assert!(err.contains("`gateway.token`, a secret"), "{err}");
    assert!(!err.contains("eyJsecret"));
}

#[test]
fn the_token_never_appears_in_printed_config() {
    let dir = tempfile::tempdir().unwrap();
    let v = config_json(
        bin()
            .args(["config", "proxy"])
            .env("OPENSHELL_POLICY_DATA", policy_file(dir.path()))
            .env("OPENSHELL_ENDPOINT", "http://gw.example:8080")
            .env("OPENSHELL_SANDBOX_ID", "sbx-1")
            .env("OPENSHELL_SANDBOX_TOKEN", "eyJsecret"),
    );
    assert_eq!(v["gateway"]["token"]["Env"], "[redacted]");
    assert!(!v.to_string().contains("eyJsecret"));
}

#[test]
fn an_endpoint_without_a_token_is_refused() {
    let (code, _, err) = run(bin()
        .args(["config", "proxy"])
        .env("OPENSHELL_ENDPOINT", "http://gw.example:8080")
        .env("OPENSHELL_SANDBOX_ID", "sbx-1"));
    assert_eq!(code, 64);
    assert!(err.contains("no sandbox token") && err.contains("OPENSHELL_SANDBOX_TOKEN_FILE"), "{err}");
}

// ------------------------------------------------------------------ modes

#[test]
fn no_mode_names_the_modes_and_exits_64() {
    let (code, _, err) = run(&mut bin());
    assert_eq!(code, 64);
    for needle in ["OPENSHELL_MODE=proxy", "OPENSHELL_PROXY_MODE=sidecar", "OPENSHELL_MODE=nested"] {
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn openshell_mode_proxy_runs_the_proxy() {
    // No policy source: the proxy's own configuration check answers, so dispatch happened.
    let (code, _, err) = run(bin().env("OPENSHELL_MODE", "proxy"));
    assert_eq!(code, 64);
    assert!(err.contains("no policy source"), "{err}");
}

#[test]
fn the_environment_selects_the_mode_for_config_and_nested() {
    let v = config_json(
        bin().arg("config").env("OPENSHELL_PROXY_MODE", "sidecar").env("OPENSHELL_SSH_SOCKET_PATH", "/x.sock"),
    );
    assert_eq!(v["ssh_socket"], "/x.sock");
    assert_eq!(v["nested"], false);
    let v = config_json(bin().arg("config").env("OPENSHELL_MODE", "nested"));
    assert_eq!(v["nested"], true);
}

#[test]
fn an_unknown_mode_is_a_usage_error() {
    let (code, _, err) = run(bin().env("OPENSHELL_MODE", "sidecar"));
    assert_eq!(code, 64);
    assert!(err.contains("`sidecar` is not a mode"), "{err}");
}

#[test]
fn version_and_bad_flags() {
    let (code, out, _) = run(bin().arg("--version"));
    assert_eq!(code, 0);
    assert!(out.starts_with("openshell-sandbox "), "{out}");
    let (code, _, _) = run(bin().args(["policy", "check", "--bogus"]));
    assert_eq!(code, 64);
}

// ------------------------------------------------------------------ policy check / eval

#[test]
fn policy_check_prints_the_normalised_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(bin().args(["policy", "check"]).arg(policy_file(dir.path())));
    assert_eq!(code, 0);
    assert!(out.contains("valid (version 1, 1 network policies, 1 endpoints)"), "{out}");
    assert!(out.contains("api.example.com:443 rest tls=terminate enforcement=enforce access=read-only"), "{out}");
    let (code, out, _) = run(bin().args(["policy", "check", "--json"]).arg(policy_file(dir.path())));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["network_policies"]["a"]["endpoints"][0]["rules"][0]["methods"],
        serde_json::json!(["GET", "HEAD", "OPTIONS"])
    );
}

#[test]
fn policy_check_lists_every_error_and_exits_65() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - host: \"*\"\n        port: 0\n",
    )
    .unwrap();
    let (code, out, err) = run(bin().args(["policy", "check"]).arg(&path));
    assert_eq!(code, 65);
    assert!(out.is_empty());
    assert!(err.contains("(2 errors)"), "{err}");
    assert!(err.contains("network_policies.a.endpoints[0].host (line 5)"), "{err}");
    assert!(err.contains("network_policies.a.endpoints[0].port (line 6)"), "{err}");
}

#[test]
fn policy_check_of_a_missing_file_is_a_usage_error() {
    let (code, _, err) = run(bin().args(["policy", "check", "/nonexistent/p.yaml"]));
    assert_eq!(code, 64);
    assert!(err.contains("cannot read policy file /nonexistent/p.yaml"), "{err}");
}

#[test]
fn policy_eval_exit_codes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy_file(dir.path());
    let eval = |extra: &[&str]| run(bin().args(["policy", "eval"]).arg(&p).args(extra));

    let (code, out, _) =
        eval(&["--host", "api.example.com", "--port", "443", "--method", "GET", "--path", "/x", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"decision": "allow", "policy": "a", "rule": "a.endpoints[0].access(read-only)", "reason": "allowed by a.endpoints[0].access(read-only)"})
    );

    let (code, out, _) =
        eval(&["--host", "api.example.com", "--port", "443", "--method", "DELETE", "--path", "/x", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["reason"], "no rule of a allows DELETE /x");

    let (code, out, _) = eval(&["--host", "evil.example.com", "--port", "443"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("deny: connection to evil.example.com:443"), "{out}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 7\n").unwrap();
    let (code, _, _) = run(bin().args(["policy", "eval"]).arg(&bad).args(["--host", "a", "--port", "1"]));
    assert_eq!(code, 65);
}

// ------------------------------------------------------------------ healthcheck

#[test]
fn proxy_healthcheck_needs_ready_and_a_listening_port() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let check = || {
        run(bin()
            .args(["healthcheck", "proxy", "--policy"])
            .arg(policy_file(dir.path()))
            .arg("--tls-dir")
            .arg(dir.path())
            .args(["--listen", &addr]))
    };
    let (code, _, err) = check();
    assert_eq!(code, 1, "no .ready yet");
    assert!(err.contains(".ready does not exist"), "{err}");
    std::fs::write(dir.path().join(".ready"), "{}").unwrap();
    assert_eq!(check().0, 0);
    drop(listener);
    let (code, _, err) = check();
    assert_eq!(code, 1, "port closed");
    assert!(err.contains("does not accept connections"), "{err}");
}

#[test]
fn agent_healthcheck_needs_an_ssh_banner() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ssh.sock");
    let check = || {
        run(bin().args(["healthcheck"]).env("OPENSHELL_PROXY_MODE", "sidecar").env("OPENSHELL_SSH_SOCKET_PATH", &sock))
    };
    assert_eq!(check().0, 1, "no socket");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        for banner in [&b"HTTP/1.1 400 Bad\r\n"[..], b"SSH-2.0-test\r\n"] {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(banner).unwrap();
        }
    });
    let (code, _, err) = check();
    assert_eq!(code, 1);
    assert!(err.contains("not an SSH banner"), "{err}");
    assert_eq!(check().0, 0);
    server.join().unwrap();
}
