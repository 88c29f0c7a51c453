//! `agent` as a process: the readiness wait's timeout (exit 69 naming the dir), the missing
//! policy source (exit 64), the workload's exit status becoming the supervisor's, SIGTERM
//! passed on to the workload, and a clean stop on SIGTERM without a workload.

use crate::support::agent as agent_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_support::{Fixture, run};
use openshell_sandbox::volume;

#[test]
fn ready_timeout_exits_69_naming_the_dir_and_the_missing_file() {
    let fixture = Fixture::new();
    let empty = fixture.path().join("empty-tls");
    std::fs::create_dir_all(&empty).unwrap();
    let started = Instant::now();
    let mut cmd = fixture.agent_command_in(&empty);
    cmd.arg("--ready-timeout-secs").arg("1");
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(&empty.display().to_string()), "{err}");
    assert!(err.contains(".ready does not exist"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    std::fs::copy(fixture.tls().join(".ready"), empty.join(".ready")).unwrap();
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("ca-bundle.pem does not exist"), "{err}");
}

#[test]
fn the_wait_for_ready_is_announced_once_with_the_files_the_dir_and_the_limit() {
    use std::io::BufRead;
    let fixture = Fixture::new();
    let late = fixture.path().join("late-tls");
    std::fs::create_dir_all(&late).unwrap();
    let mut cmd = fixture.agent_command_in(&late);
    cmd.args(["--ready-timeout-secs", "120"]);
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    // Said when the wait starts, long before the 120 s limit.
    let waiting = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("waiting for the proxy") => break line,
            Ok(_) => {}
            Err(_) => panic!("the agent never said that it waits for the proxy"),
        }
    };
    for part in [".ready", "ca-bundle.pem", &late.display().to_string(), "120s", "OPENSHELL_PROXY_READY_TIMEOUT_SECS"] {
        assert!(waiting.contains(part), "{part}: {waiting}");
    }
    // The proxy comes up: the agent goes on to serve, without saying it again.
    for file in [volume::CA_BUNDLE_FILE, volume::READY_FILE] {
        std::fs::copy(fixture.tls().join(file), late.join(file)).unwrap();
    }
    let mut agent = fixture.serving(child);
    assert_eq!(agent.stop(), Some(0));
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        rest.push(line);
    }
    assert!(!rest.iter().any(|l| l.contains("waiting for the proxy")), "{rest:?}");

    // Ready at the first look: nothing to say.
    let (_, _, err) = run(fixture.agent_command().args(["--", "true"]));
    assert!(!err.contains("waiting for the proxy") && err.contains("PROC:TERMINATE [INFO] true("), "{err}");
}

#[test]
fn no_policy_source_is_a_usage_error() {
    let fixture = Fixture::new();
    let mut cmd = agent_support::bin();
    cmd.args(["agent", "--nested", "--tls-dir"]).arg(fixture.tls()).arg("--ssh-socket").arg(fixture.socket());
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("OPENSHELL_POLICY_DATA"), "{err}");
}

#[test]
fn the_workload_status_becomes_the_supervisors() {
    let fixture = Fixture::new();
    let mut cmd = fixture.agent_command();
    cmd.args(["--", "sh", "-c", "test \"$OPENSHELL_SANDBOX\" = 1 && test -z \"$OPENSHELL_SANDBOX_TOKEN\" && exit 3"]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 3, "{err}");
    assert!(!fixture.socket().exists(), "the socket is removed at exit");

    let mut cmd = fixture.agent_command();
    cmd.args(["--", "sh", "-c", "kill -KILL $$"]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 128 + 9, "{err}");

    let mut cmd = fixture.agent_command();
    cmd.args(["--", "/nonexistent/tool"]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("/nonexistent/tool"), "{err}");
}

#[test]
fn sigterm_is_passed_on_to_the_workload() {
    let fixture = Fixture::new();
    let marker = fixture.path().join("got-term");
    let script = format!("trap 'echo term > {}; exit 42' TERM; while :; do sleep 0.05; done", marker.display());
    let mut agent = fixture.start(|cmd| {
        cmd.args(["--", "sh", "-c", &script]);
    });
    let status = agent.stop();
    assert_eq!(status, Some(42));
    assert!(marker.exists(), "the workload saw SIGTERM");
}

#[test]
fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
    let fixture = Fixture::new();
    let mut first = fixture.start(|_| {});
    let (code, _, err) = run(&mut fixture.agent_command());
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("another process serves this socket"), "{err}");
    assert_eq!(first.stop(), Some(0));
    // A stale socket (nobody listening) from a killed run is replaced.
    drop(std::os::unix::net::UnixListener::bind(fixture.socket()).unwrap());
    let mut second = fixture.start(|_| {});
    assert_eq!(second.stop(), Some(0));
}

#[test]
fn a_missing_workdir_is_a_usage_error() {
    let fixture = Fixture::new();
    std::fs::remove_dir(fixture.work()).unwrap();
    let (code, _, err) = run(&mut fixture.agent_command());
    assert_eq!(code, 64, "{err}");
    assert!(err.contains(&fixture.work().display().to_string()), "{err}");
}

#[test]
fn healthcheck_answers_for_a_serving_agent_only() {
    let fixture = Fixture::new();
    let health = || {
        let mut cmd = agent_support::bin();
        cmd.args(["healthcheck", "agent", "--ssh-socket"]).arg(fixture.socket());
        run(&mut cmd)
    };
    let (code, _, err) = health();
    assert_eq!(code, 1, "no agent yet: {err}");
    let mut agent = fixture.start(|_| {});
    let (code, _, err) = health();
    assert_eq!(code, 0, "{err}");
    agent.stop();
    let (code, _, _) = health();
    assert_eq!(code, 1);
}

#[test]
fn without_a_workload_sigterm_stops_the_server() {
    let fixture = Fixture::new();
    let mut agent = fixture.start(|_| {});
    // A connection is open while the server stops: it is closed, not waited for forever.
    let mut session = agent.ssh(&["sandbox@agent", "sleep 60"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(agent.stop(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(!fixture.socket().exists());
    if let Ok(child) = session.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn in_ocsf_format_the_workloads_launch_and_exit_are_valid_process_events() {
    let fixture = Fixture::new();
    let mut cmd = fixture.agent_command();
    cmd.args(["--log-format", "ocsf", "--sandbox-id", "sb-agent", "--", "sh", "-c", "exit 3"]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 3, "{err}");
    let lines: Vec<serde_json::Value> =
        err.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}"))).collect();
    let events: Vec<&serde_json::Value> = lines.iter().filter(|e| e.get("class_uid").is_some()).collect();
    events.iter().for_each(|e| crate::support::ocsf::assert_valid(e));
    let process = |activity: u64| {
        events
            .iter()
            .find(|e| e["class_uid"] == 1007 && e["activity_id"] == activity)
            .unwrap_or_else(|| panic!("no process event {activity}: {err}"))
    };
    let (launch, exit) = (process(1), process(2));
    assert_eq!(launch["process"]["pid"], exit["process"]["pid"], "{err}");
    assert_eq!((exit["process"]["name"].as_str(), exit["exit_code"].as_i64()), (Some("sh"), Some(3)));
    assert_eq!((exit["status_id"].as_u64(), exit["severity_id"].as_u64()), (Some(2), Some(2)));
    for event in [launch, exit] {
        assert_eq!(event["device"]["uid"], "sb-agent");
        assert_eq!(event["metadata"]["product"]["feature"]["name"], "agent");
        assert_eq!(event["actor"]["process"]["name"], "openshell-sandbox");
    }
    assert!(!err.contains("exit 3"), "no command line in any event or log line: {err}");
}
