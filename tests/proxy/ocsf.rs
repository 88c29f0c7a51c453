//! Audit events as OCSF: every emitter of both modes, called as the product calls it inside
//! one connection scope, writes an event that validates against the OCSF 1.8.0 schema of its
//! class, carries the sandbox id and the scope's correlation ids, and has the shorthand the
//! gateway shows; the binary in `ocsf` format writes them as JSON lines on stderr and to
//! `OPENSHELL_OCSF_FILE`, the decision and the close of one connection sharing one uid.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use openshell_sandbox::agent::audit as agent_audit;
use openshell_sandbox::policy::L7Decision;
use openshell_sandbox::policy::model::Enforcement;
use openshell_sandbox::proxy::answer::Refusal;
use openshell_sandbox::proxy::audit::{self, Outcome, Request, Subject};
use openshell_sandbox::telemetry::ocsf::{Api, Scope, Tokens, scoped};
use serde_json::Value;

use crate::support::{capture, ocsf};

/// A value that must never reach an event (as a query would carry it).
const QUERY_VALUE: &str = "q-OCSF-VALUE-77";

fn decision(allow: bool) -> L7Decision {
    L7Decision {
        allow,
        policy: Some("github".into()),
        rule: Some("github.endpoints[0].rules[0]".into()),
        reason: "matched rule github.endpoints[0].rules[0]".into(),
        enforcement: if allow { Enforcement::Enforce } else { Enforcement::Audit },
    }
}

/// Every proxy and agent emitter, once or more per shape.
fn emit_every_kind() {
    let tunnel = Subject { kind: "connect", host: "api.github.com", port: 443, request: None };
    let plain = Subject { kind: "http", host: "10.0.0.7", port: 8080, request: Some(("GET", "/a")) };
    let odd = Subject { kind: "http", host: "::1", port: 80, request: Some(("PROPFIND", "/dav")) };
    audit::allowed(&tunnel, Some("github"), Some("github.endpoints[0]"), "allowed by github");
    audit::allowed(&plain, Some("local"), None, "allowed by local");
    let policy = Refusal::Policy { reason: "no network policy allows blocked.example:443".into(), policy: None };
    audit::denied(&Subject { host: "blocked.example", ..tunnel }, &policy, None, None);
    audit::denied(&odd, &Refusal::BadRequest("a bad request".into()), None, None);
    audit::denied(&plain, &Refusal::Timeout("10.0.0.7:8080 did not answer".into()), Some("local"), None);
    audit::closed(&tunnel, None, (100, 2000), Duration::from_millis(12), Outcome::Eof);
    audit::closed(&plain, Some(200), (80, 5), Duration::from_millis(3), Outcome::Aborted);
    audit::inspected_closed(&tunnel, (10, 20), Duration::from_secs(1), Outcome::Quarantined, 4);
    let transparent = Subject { kind: "transparent", host: "198.18.0.9", port: 443, request: None };
    audit::bypass(
        &transparent,
        "connection to an address the policy DNS did not hand out",
        "not handed out",
        None,
        None,
    );

    let request = Request { scheme: "https", host: "api.github.com", port: 443, method: "DELETE", path: "/repos/o/r" };
    audit::l7_decision(&request, Some(&decision(true)), "GITHUB_TOKEN", "allowed", None);
    audit::l7_decision(&request, Some(&decision(false)), "", "would be denied: DELETE", None);
    let deny = Refusal::Policy { reason: "DELETE is not allowed".into(), policy: Some("github".into()) };
    audit::l7_decision(&request, Some(&decision(false)), "", deny.reason(), Some(&deny));
    let unbound = Refusal::CredentialNotBound("GITHUB_TOKEN is not bound to evil.example:443".into());
    let evil = Request { host: "evil.example", method: "POST", ..request };
    audit::l7_decision(&evil, Some(&decision(true)), "", unbound.reason(), Some(&unbound));
    audit::upstream_failed("l7", &request, &Refusal::Unreachable("reset".into()));

    audit::inference_refused("POST", "/v1/nothing", &Refusal::Policy { reason: "not served".into(), policy: None });
    let tokens = Some(Tokens { prompt: Some(12), completion: Some(30), total: Some(42) });
    audit::inference_answered(&Api {
        method: "POST",
        path: "/v1/chat/completions",
        route: Some("default"),
        model: Some("gpt-4o-mini"),
        provider: Some("openai"),
        tokens,
        status: Some(200),
        latency_ms: Some(31),
    });
    audit::inference_answered(&Api { method: "GET", path: "/v1/models", status: Some(502), ..Api::default() });
    audit::dns_refused("not-allowed.example");

    audit::policy_loaded(3);
    audit::policy_rejected("invalid policy: version must be 1", false);
    audit::policy_quarantined(4, "policy quarantined until a valid policy loads: invalid");
    audit::policy_recovered(5);
    audit::credentials_unbound("A_KEY,B_KEY");

    agent_audit::ssh_opened(Some("10.89.0.2:50000".parse().unwrap()));
    agent_audit::ssh_opened(None);
    agent_audit::ssh_key("dev", true);
    agent_audit::ssh_key("mallory", false);
    agent_audit::ssh_refused(Some(("10.0.0.1", 80)), "refused an SSH forward: only loopback destinations are allowed");
    agent_audit::ssh_refused(None, "refused the SSH subsystem `x`");
    agent_audit::ssh_closed(Some("10.89.0.2:50000".parse().unwrap()), Duration::from_millis(2500));
    agent_audit::launched("exec", Path::new("/bin/sh"), Some(42));
    agent_audit::ended("exec", Path::new("/bin/sh"), Some(42), &std::process::ExitStatus::from_raw(3 << 8));
    agent_audit::ended("workload", Path::new("sleep"), Some(43), &std::process::ExitStatus::from_raw(9));
}

fn events_of(uid: &str) -> Vec<Value> {
    capture::ocsf()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("each OCSF line is one JSON object"))
        .filter(|e| e["metadata"]["correlation_uid"] == uid)
        .collect()
}

#[tokio::test]
async fn every_emitter_writes_a_valid_event_of_its_class_in_its_scope() {
    capture::text(); // starts the capture
    let peer: SocketAddr = "10.89.0.2:41000".parse().unwrap();
    let scope = Scope::new(Some(peer));
    let uid = scope.uid.to_string();
    scoped(scope, async { emit_every_kind() }).await;

    let events = events_of(&uid);
    assert_eq!(events.len(), 35, "one line per event: {events:#?}");
    for event in &events {
        ocsf::assert_valid(event);
        assert_eq!(event["device"]["uid"], capture::SANDBOX_ID, "{event}");
        assert_eq!(
            (event["device"]["type_id"].as_u64(), event["device"]["type"].as_str()),
            (Some(99), Some("Sandbox"))
        );
        assert!(event["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36), "an event uid: {event}");
        let class = event["class_uid"].as_u64().unwrap();
        if [4001, 4002, 4007].contains(&class) {
            assert_eq!(event["connection_info"]["uid"], uid.as_str(), "{event}");
        }
        if [4001, 4002].contains(&class) && event["unmapped"]["kind"] != "dns" {
            let src = &event["src_endpoint"];
            assert_eq!((src["ip"].as_str(), src["port"].as_u64()), (Some("10.89.0.2"), Some(41000)), "{event}");
        }
        if [4007, 1007, 6003].contains(&class) {
            assert_eq!(event["actor"]["session"]["uid"], uid.as_str(), "{event}");
        }
    }
    let classes: BTreeSet<u64> = events.iter().filter_map(|e| e["class_uid"].as_u64()).collect();
    assert_eq!(classes, BTreeSet::from([1007, 2004, 4001, 4002, 4007, 5019, 6003]));
    let find = |pred: &dyn Fn(&Value) -> bool| events.iter().find(|e| pred(e)).cloned().expect("such an event");

    let close = find(&|e| e["class_uid"] == 4001 && e["activity_id"] == 2);
    assert_eq!(
        (close["traffic"]["bytes_out"].as_u64(), close["traffic"]["bytes_in"].as_u64()),
        (Some(100), Some(2000))
    );
    assert_eq!(close["duration"], 12);
    let reset = find(&|e| e["class_uid"] == 4001 && e["activity_id"] == 3);
    assert_eq!(
        (reset["unmapped"]["outcome"].as_str(), reset["unmapped"]["requests"].as_u64()),
        (Some("quarantined"), Some(4))
    );
    let other = find(&|e| e["class_uid"] == 4002 && e["activity_id"] == 99);
    assert!(other["http_request"].get("http_method").is_none(), "a method OCSF does not list is left out: {other}");
    let observed = find(&|e| e["action_id"] == 3);
    assert_eq!((observed["disposition_id"].as_u64(), observed["severity_id"].as_u64()), (Some(15), Some(2)));
    let finding = find(&|e| e["class_uid"] == 2004 && e["finding_info"]["types"][0] == "credential_not_bound");
    assert_eq!((finding["is_alert"].as_bool(), finding["status_id"].as_u64()), (Some(true), Some(1)));
    assert_eq!(finding["resources"][0]["name"], "evil.example:443", "{finding}");
    let api = find(&|e| e["class_uid"] == 6003 && e["activity_id"] == 1 && e["status_id"] == 1);
    assert_eq!(api["ai_model"], serde_json::json!({"name": "gpt-4o-mini", "ai_provider": "openai"}));
    assert_eq!(api["message_context"]["total_tokens"], 42);
    assert_eq!(
        (api["api"]["operation"].as_str(), api["duration"].as_u64()),
        (Some("POST /v1/chat/completions"), Some(31))
    );
    let ssh_close = find(&|e| e["class_uid"] == 4007 && e["activity_id"] == 2);
    assert_eq!((ssh_close["duration"].as_u64(), ssh_close["status_id"].as_u64()), (Some(2500), Some(1)));
    let exit = find(&|e| e["class_uid"] == 1007 && e["process"]["pid"] == 43);
    assert_eq!((exit["exit_code"].as_i64(), exit["process"]["name"].as_str()), (Some(137), Some("sleep")));

    let text = capture::text();
    for shorthand in [
        "NET:OPEN [INFO] ALLOWED api.github.com:443 [policy:github]",
        "HTTP:GET [INFO] ALLOWED GET http://10.0.0.7:8080/a [policy:local]",
        "NET:REFUSE [MED] DENIED blocked.example:443 [reason:no network policy allows blocked.example:443]",
        "HTTP:PROPFIND [LOW] DENIED PROPFIND http://[::1]/dav [reason:a bad request]",
        "HTTP:DELETE [LOW] OBSERVED DELETE https://api.github.com/repos/o/r [policy:github] [reason:would be denied: DELETE]",
        "FINDING:BLOCKED [HIGH] DENIED \"credential placeholder sent to an endpoint its key is not bound to\" evil.example:443",
        "API:CREATE [INFO] ALLOWED POST /v1/chat/completions [route:default] [model:gpt-4o-mini] [tokens:42]",
        "CONFIG:DISABLED [HIGH] policy quarantined: generation 4 denies all egress until a valid policy loads",
        "SSH:OPEN [INFO] ALLOWED 10.89.0.2:41000 [auth:publickey user:dev]",
        "SSH:REFUSE [MED] DENIED 10.0.0.1:80",
        "SSH:CLOSE [INFO] 10.89.0.2:50000",
        "PROC:TERMINATE [LOW] sh(42) [exit:3]",
    ] {
        assert!(text.contains(shorthand), "{shorthand}\n{text}");
    }
}

#[test]
fn the_binary_in_ocsf_format_writes_valid_events_to_stderr_and_the_file() {
    let up_port = crate::proxy::process::hello_upstream();
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "version: 1\nnetwork_policies:\n  local:\n    endpoints:\n      - host: 127.0.0.1\n        port: {up_port}\n"
    );
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    let file = dir.path().join("audit.ocsf.jsonl");
    let file_arg = file.display().to_string();
    let args = ["--allow-loopback-upstreams", "--log-format", "ocsf", "--ocsf-file", &file_arg, "--sandbox-id", "sb-7"];
    let mut proc = crate::proxy::process::spawn(dir.path(), &args);
    let listen = crate::proxy::process::wait_ready(dir.path(), &mut proc).proxy_listen;
    let send = |request: String| crate::proxy::process::send(listen, &request);
    let target = format!("http://127.0.0.1:{up_port}/a?secret={QUERY_VALUE}");
    let (client_port, ok) = send(format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    assert!(ok.ends_with("hello"), "{ok}");
    let (_, denied) = send("CONNECT blocked.example:443 HTTP/1.1\r\nHost: blocked.example:443\r\n\r\n".into());
    assert!(denied.starts_with("HTTP/1.1 403 "), "{denied}");
    assert_eq!(proc.terminate().code(), Some(0));

    let log = proc.log();
    assert!(!log.contains(QUERY_VALUE) && !log.contains("openshell::audit"), "{log}");
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).expect("every stderr line is JSON")).collect();
    let events: Vec<&Value> = lines.iter().filter(|e| e.get("class_uid").is_some()).collect();
    assert!(lines.len() > events.len(), "the other lines stay JSON: {log}");
    for event in &events {
        ocsf::assert_valid(event);
        assert_eq!(event["device"]["uid"], "sb-7", "{event}");
        assert_eq!(event["metadata"]["product"]["feature"]["name"], "proxy");
    }
    let request = |activity: u64| {
        events
            .iter()
            .find(|e| {
                e["class_uid"] == 4002
                    && e["activity_id"] == 3
                    && e["http_response"]["code"].is_null() == (activity == 1)
            })
            .unwrap_or_else(|| panic!("no GET event ({activity}): {log}"))
    };
    let (decided, closed) = (request(1), request(2));
    assert_eq!(decided["http_request"]["url"]["path"], "/a");
    assert_eq!(
        (closed["http_response"]["code"].as_u64(), closed["traffic"]["bytes_in"].as_u64()),
        (Some(200), Some(5))
    );
    assert_eq!(
        decided["metadata"]["correlation_uid"], closed["metadata"]["correlation_uid"],
        "one connection, one uid"
    );
    assert_eq!(decided["src_endpoint"]["port"].as_u64(), Some(u64::from(client_port)));
    let refused = events.iter().find(|e| e["class_uid"] == 4001 && e["action_id"] == 2).expect("the CONNECT denial");
    assert_eq!(refused["dst_endpoint"], serde_json::json!({"hostname": "blocked.example", "port": 443}));
    assert_ne!(refused["metadata"]["correlation_uid"], decided["metadata"]["correlation_uid"]);

    let written = std::fs::read_to_string(&file).unwrap();
    let from_file: Vec<Value> = written.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(from_file.len(), events.len(), "the file has every event and nothing else");
    assert!(from_file.iter().zip(&events).all(|(a, b)| a["metadata"]["uid"] == b["metadata"]["uid"]));
}

#[test]
fn an_ocsf_file_that_cannot_be_opened_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), "version: 1\nnetwork_policies: {}\n").unwrap();
    let missing = dir.path().join("no-such-dir/audit.jsonl");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_openshell-sandbox"))
        .args(["proxy", "--policy"])
        .arg(dir.path().join("policy.yaml"))
        .arg("--tls-dir")
        .arg(dir.path().join("tls"))
        .arg("--ocsf-file")
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{err}");
    assert!(err.contains(&missing.display().to_string()) && err.contains("OPENSHELL_OCSF_FILE"), "{err}");
    assert!(!dir.path().join("tls/.ready").exists(), "nothing started");
}
