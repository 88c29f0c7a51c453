//! The agent's SSH server driven by the real OpenSSH client (`ssh`, `sftp`): exec with exit
//! statuses and signals, the child environment, git over SSH refused, sftp put and get,
//! `direct-tcpip` to loopback only, and public-key auth on the TCP listener.

use crate::support::agent as agent_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use agent_support::{Fixture, PLACEHOLDER, PROXY, common_options, run, ssh_tcp_port};

#[test]
fn exec_reports_exit_status_zero_three_and_a_signal() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    let (code, out, err) = run(&mut agent.ssh(&["sandbox@agent", "echo hello"]));
    assert_eq!((code, out.as_str()), (0, "hello\n"), "stderr: {err}");
    let (code, _, err) = run(&mut agent.ssh(&["sandbox@agent", "echo oops >&2; exit 3"]));
    assert_eq!(code, 3);
    assert!(err.contains("oops"), "stderr is relayed: {err}");
    // exit-signal: OpenSSH exits 255 and names the signal.
    let (code, _, err) = run(&mut agent.ssh(&["-v", "sandbox@agent", "kill -TERM $$"]));
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("signal TERM") || err.contains("exit-signal"), "{err}");
}

#[test]
fn exec_streams_more_than_a_window_both_ways() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    let mut child = agent
        .ssh(&["sandbox@agent", "wc -c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // More than the SSH window (2 MiB), so the window must be re-opened as the child reads.
    let input = vec![b'x'; 5 << 20];
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = agent_support::wait_output(child, std::time::Duration::from_secs(60));
    writer.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (5 << 20).to_string());
    // And the other way: more output than one window, all of it before the exit status.
    let (code, out, err) = run(&mut agent.ssh(&["sandbox@agent", "head -c 5242880 /dev/zero | tr '\\0' y; exit 4"]));
    assert_eq!(code, 4, "{err}");
    assert_eq!(out.len(), 5 << 20);
    assert!(out.bytes().all(|b| b == b'y'));
}

#[test]
fn input_nobody_reads_does_not_hold_up_the_exit_status() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    // A background process keeps stdin open without reading it; the shell exits at once.
    let line = "exec 3<&0; sleep 20 0<&3 >/dev/null 2>&1 & exec 0</dev/null 3<&-; sleep 1; exit 5";
    let mut child = agent.ssh(&["sandbox@agent", line]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let out = agent_support::wait_output(child, std::time::Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn a_child_is_hung_up_when_its_client_goes_away() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    let mut client =
        agent.ssh(&["sandbox@agent", "echo $$; exec sleep 60"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(client.stdout.take().unwrap()), &mut line).unwrap();
    let proc = std::path::PathBuf::from(format!("/proc/{}", line.trim()));
    assert!(proc.exists(), "the remote child runs: {line}");
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Gone, or a zombie about to be reaped by the supervisor.
    while proc.exists() && !std::fs::read_to_string(proc.join("stat")).unwrap_or_default().contains(") Z") {
        assert!(std::time::Instant::now() < deadline, "the child outlived its SSH connection");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn children_get_the_built_environment() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    let (code, out, err) = run(&mut agent.ssh(&["-o", "SetEnv=INJECTED=1", "sandbox@agent", "env"]));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&format!("HTTP_PROXY={PROXY}").as_str()), "{out}");
    assert!(lines.contains(&format!("https_proxy={PROXY}").as_str()), "{out}");
    assert!(lines.contains(&format!("{}={}", PLACEHOLDER.0, PLACEHOLDER.1).as_str()), "{out}");
    assert!(lines.contains(&"OPENSHELL_SANDBOX=1"), "{out}");
    assert!(lines.contains(&"TERM=dumb"), "no pty, no terminal type: {out}");
    assert!(lines.contains(&"GIT_CONFIG_VALUE_0=never"), "{out}");
    assert!(!out.contains("secret-token-value"), "the sandbox token never reaches a child: {out}");
    assert!(!out.contains("OPENSHELL_SANDBOX_TOKEN"), "{out}");
    assert!(!out.contains("INJECTED"), "env requests are ignored: {out}");
    let control: Vec<&&str> = lines.iter().filter(|l| l.starts_with("OPENSHELL_")).collect();
    assert_eq!(control, [&"OPENSHELL_SANDBOX=1"]);
}

#[test]
fn git_over_ssh_fails_with_a_clear_message() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    let (code, _, err) = run(&mut agent.ssh(&["sandbox@agent", "git clone git@example.invalid:x/y.git clone"]));
    assert_ne!(code, 0);
    assert!(err.contains("transport 'ssh' not allowed"), "{err}");
    assert!(!fixture.work().join("clone").exists());
    // The second guard, for tools that bypass git's protocol setting.
    let line = "git -c protocol.ssh.allow=always -c protocol.allow=always ls-remote ssh://git@example.invalid/x/y.git; \
                sh -c \"$GIT_SSH_COMMAND git@example.invalid git-upload-pack\"";
    let (code, _, err) = run(&mut agent.ssh(&["sandbox@agent", line]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SSH disabled: use HTTPS"), "{err}");
}

#[test]
fn sftp_put_and_get() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    let local = fixture.path().join("local.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let back = fixture.path().join("back.bin");
    let batch = fixture.path().join("batch");
    std::fs::write(&batch, format!("put {} uploaded.bin\nget uploaded.bin {}\n", local.display(), back.display()))
        .unwrap();
    let mut sftp = agent.ssh_base("sftp");
    sftp.arg("-b").arg(&batch).arg("sandbox@agent");
    let (code, _, err) = run(&mut sftp);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(fixture.work().join("uploaded.bin")).unwrap(), data, "put lands in the work dir");
    assert_eq!(std::fs::read(&back).unwrap(), data, "get returns it");
}

#[test]
fn direct_tcpip_reaches_loopback_only() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut ping = [0u8; 4];
        conn.read_exact(&mut ping).unwrap();
        conn.write_all(b"pong").unwrap();
    });
    let mut child = agent
        .ssh(&["-W", &format!("127.0.0.1:{port}"), "sandbox@agent"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ping").unwrap();
    let out = agent_support::wait_output(child, std::time::Duration::from_secs(30));
    assert_eq!(out.stdout, b"pong", "stderr: {}", String::from_utf8_lossy(&out.stderr));
    server.join().unwrap();

    let (code, _, err) = run(&mut agent.ssh(&["-v", "-W", "10.255.255.1:80", "sandbox@agent"]));
    assert_ne!(code, 0);
    assert!(err.contains("administratively prohibited"), "{err}");
    let (code, _, err) = run(&mut agent.ssh(&["-v", "-W", "example.com:443", "sandbox@agent"]));
    assert_ne!(code, 0);
    assert!(err.contains("administratively prohibited"), "{err}");
}

#[test]
fn remote_forwarding_is_refused() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    // Port 0: the server would pick one (`-R` with a port of its choosing).
    let spec = "127.0.0.1:0:127.0.0.1:22";
    let (code, _, err) = run(&mut agent.ssh(&["-o", "ExitOnForwardFailure=yes", "-R", spec, "sandbox@agent", "true"]));
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("remote port forwarding failed"), "{err}");
}

#[test]
fn tcp_listener_accepts_authorized_keys_only() {
    let fixture = Fixture::new();
    let keygen = |name: &str| {
        let path = fixture.path().join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        path
    };
    let good = keygen("good");
    let bad = keygen("bad");
    let authorized = fixture.path().join("authorized_keys");
    std::fs::copy(good.with_extension("pub"), &authorized).unwrap();
    let host_key = fixture.path().join("keys/host_ed25519");
    let log = fixture.path().join("agent.log");
    let agent = fixture.start_logging(std::fs::File::create(&log).unwrap(), |cmd| {
        cmd.args(["--log-format", "ocsf", "--ssh-listen", "127.0.0.1:0", "--authorized-keys"]).arg(&authorized);
        cmd.arg("--ssh-host-key").arg(&host_key);
    });
    let port = ssh_tcp_port(&log);
    let mode = std::fs::metadata(&host_key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the created host key is private");
    let socket_mode = std::fs::metadata(&agent.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(socket_mode, 0o600, "the SSH socket is private");
    let tcp = |key: &std::path::Path| {
        let mut cmd = Command::new("ssh");
        cmd.args(common_options()).args(["-o", "IdentitiesOnly=yes", "-i"]).arg(key).args([
            "-p",
            &port.to_string(),
            "sandbox@127.0.0.1",
            "echo ok",
        ]);
        run(&mut cmd)
    };
    let (code, out, err) = tcp(&good);
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");
    let (code, _, err) = tcp(&bad);
    assert_eq!(code, 255);
    assert!(err.contains("Permission denied"), "{err}");
    ssh_events_are_valid_ocsf_joined_by_connection(&log);
}

/// The OCSF events of the two TCP connections above: the good key's connection opens, has
/// its key accepted, launches and ends a child and closes, all under one correlation uid;
/// the bad key's refusal is its own connection's.
fn ssh_events_are_valid_ocsf_joined_by_connection(log: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let events = loop {
        let text = std::fs::read_to_string(log).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|e| e.get("class_uid").is_some())
            .collect();
        let closes = events.iter().filter(|e| e["class_uid"] == 4007 && e["activity_id"] == 2).count();
        if closes >= 2 {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "two SSH closes: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    events.iter().for_each(crate::support::ocsf::assert_valid);
    let key = |accepted: bool| {
        events
            .iter()
            .find(|e| e["class_uid"] == 4007 && e["auth_type_id"] == 6 && (e["action_id"] == 1) == accepted)
            .unwrap_or_else(|| panic!("no key event ({accepted}): {events:#?}"))
    };
    let (good, bad) = (key(true), key(false));
    assert_eq!(
        (good["actor"]["user"]["name"].as_str(), good["src_endpoint"]["ip"].as_str()),
        (Some("sandbox"), Some("127.0.0.1"))
    );
    let uid = good["metadata"]["correlation_uid"].as_str().unwrap();
    assert_ne!(bad["metadata"]["correlation_uid"].as_str(), Some(uid), "another connection, another uid");
    let of_good: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e["metadata"]["correlation_uid"] == uid)
        .map(|e| (e["class_uid"].as_u64().unwrap(), e["activity_id"].as_u64().unwrap()))
        .collect();
    for step in [(4007, 1), (1007, 1), (1007, 2), (4007, 2)] {
        assert!(of_good.contains(&step), "{step:?} in the good connection's events: {of_good:?}");
    }
    let child = events.iter().find(|e| e["class_uid"] == 1007 && e["metadata"]["correlation_uid"] == uid).unwrap();
    assert_eq!(child["actor"]["session"]["uid"], uid, "{child}");
    assert!(!events.iter().any(|e| e.to_string().contains("echo ok")), "no command line in an event");
}
