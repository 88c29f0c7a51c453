//! The gateway client against the test gateway on real sockets: the startup retries on
//! UNAVAILABLE, the bearer token on every call (re-read from its file), token file
//! errors, and mTLS with test certificates (the CA as the only root, the server-name
//! override, a certificate from another CA refused).

use crate::support::gateway as gateway_support;

use std::collections::HashMap;
use std::time::Duration;

use gateway_support::certs::{TestCa, client_files, server_tls};
use gateway_support::{Payload, SANDBOX_ID, TOKEN, TestGateway};
use openshell_sandbox::config::TokenSource;
use openshell_sandbox::gateway::backoff::RetrySchedule;
use openshell_sandbox::gateway::config::fetch_with_retries;
use openshell_sandbox::gateway::proto::PolicyStatus;
use openshell_sandbox::gateway::proto::sandbox::{NetworkEndpoint, NetworkPolicyRule, SandboxPolicy};
use openshell_sandbox::gateway::{GatewayClient, GatewayError};
use openshell_sandbox::{Exit, ExitStatus};
use tonic::Code;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn short_schedule() -> RetrySchedule {
    RetrySchedule { delays: vec![ms(20), ms(40), ms(80), ms(80)] }
}

fn policy(host: &str) -> SandboxPolicy {
    let endpoint = NetworkEndpoint { host: host.into(), port: 443, ..Default::default() };
    SandboxPolicy {
        version: 1,
        network_policies: HashMap::from([(
            "p".to_owned(),
            NetworkPolicyRule { endpoints: vec![endpoint], ..Default::default() },
        )]),
        ..Default::default()
    }
}

#[tokio::test]
async fn get_sandbox_config_is_retried_on_unavailable_then_succeeds() {
    let gw = TestGateway::start().await;
    gw.state.set_policy(policy("api.example.com"), 3, "hash-1", 7);
    gw.state.set_provider_revision(2);
    gw.state.fail("GetSandboxConfig", 3, Code::Unavailable);
    let client = GatewayClient::new(&gw.client_config()).unwrap();

    let config = fetch_with_retries(&client, &short_schedule()).await.unwrap();
    assert_eq!((config.origin.version, config.policy_hash.as_str()), (3, "hash-1"));
    assert_eq!((config.config_revision, config.provider_env_revision), (7, 2));
    assert!(config.policy.network_policies["p"].endpoints[0].host.to_string() == "api.example.com");

    let calls = gw.state.calls_of("GetSandboxConfig");
    assert_eq!(calls.iter().map(|c| c.failed).collect::<Vec<_>>(), [true, true, true, false]);
    for (i, expected) in [ms(20), ms(40), ms(80)].into_iter().enumerate() {
        let waited = calls[i + 1].at - calls[i].at;
        assert!(waited >= expected, "try {} came {waited:?} after the previous one, expected {expected:?}", i + 2);
    }
    assert!(calls.iter().all(|c| c.sandbox_id == SANDBOX_ID));
}

#[tokio::test]
async fn five_unavailable_answers_end_with_exit_69() {
    let gw = TestGateway::start().await;
    gw.state.set_policy(policy("api.example.com"), 1, "h", 1);
    gw.state.fail("GetSandboxConfig", 5, Code::Unavailable);
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let err = fetch_with_retries(&client, &short_schedule()).await.unwrap_err();
    assert!(matches!(err, GatewayError::GetSandboxConfig(_)), "{err:?}");
    assert_eq!(err.exit_status(), Exit::Unavailable);
    assert_eq!(gw.state.calls_of("GetSandboxConfig").len(), 5, "the contract's 5 tries");
}

#[tokio::test]
async fn other_errors_are_not_retried() {
    let gw = TestGateway::start().await;
    gw.state.fail("GetSandboxConfig", 1, Code::PermissionDenied);
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let err = fetch_with_retries(&client, &short_schedule()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
    assert_eq!(err.exit_status(), Exit::Usage);
    assert!(err.to_string().contains("OPENSHELL_SANDBOX_TOKEN"), "{err}");
    assert_eq!(gw.state.calls_of("GetSandboxConfig").len(), 1);
}

#[tokio::test]
async fn an_unreachable_gateway_is_unavailable_and_named() {
    let mut gw = TestGateway::start().await;
    gw.stop().await;
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let err = fetch_with_retries(&client, &RetrySchedule { delays: vec![ms(10)] }).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(err.exit_status(), Exit::Unavailable);
    let text = err.to_string();
    assert!(text.contains(&gw.url()) && text.contains("OPENSHELL_ENDPOINT"), "{text}");
}

#[tokio::test]
async fn an_invalid_startup_policy_is_reported_failed_and_exits_65() {
    let gw = TestGateway::start().await;
    gw.state.set_policy(policy("exa mple.com"), 5, "bad", 1);
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let err = fetch_with_retries(&client, &short_schedule()).await.unwrap_err();
    assert_eq!(err.exit_status(), Exit::InvalidPolicy);
    let text = err.to_string();
    assert!(
        text.starts_with("invalid policy from the gateway (1 error):\n  network_policies.p.endpoints[0].host"),
        "{text}"
    );
    let reports = gw.state.calls_of("ReportPolicyStatus");
    let Payload::PolicyStatus(report) = &reports[0].payload else { panic!() };
    assert_eq!((report.version, report.status()), (5, PolicyStatus::Failed));
    // The status the gateway stores reads as one line.
    assert!(
        report.load_error.starts_with("invalid policy from the gateway: network_policies.p.endpoints[0].host: "),
        "{}",
        report.load_error
    );
    assert!(!report.load_error.contains('\n'));
}

/// Every unary method once; returns how many calls that made.
async fn call_every_unary_method(client: &GatewayClient) -> usize {
    client.get_sandbox_config().await.unwrap();
    client.report_policy_status(1, PolicyStatus::Loaded, "").await.unwrap();
    client.get_provider_environment().await.unwrap();
    client.get_inference_bundle().await.unwrap();
    client.report_main_process_exit_once("instance", 0).await.unwrap();
    5
}

#[tokio::test]
async fn every_call_carries_the_token_reread_from_its_file() {
    let gw = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandbox.jwt");
    std::fs::write(&path, "first-token\n").unwrap();
    let client = GatewayClient::new(&gw.client_config_with(TokenSource::File(path.clone()), None)).unwrap();

    let n = call_every_unary_method(&client).await;
    std::fs::write(&path, "  rotated-token  \n").unwrap();
    call_every_unary_method(&client).await;

    let calls = gw.state.calls();
    assert_eq!(calls.len(), 2 * n);
    let methods: Vec<&str> = calls.iter().map(|c| c.method).collect();
    assert_eq!(
        &methods[..n],
        [
            "GetSandboxConfig",
            "ReportPolicyStatus",
            "GetSandboxProviderEnvironment",
            "GetInferenceBundle",
            "ReportMainProcessExit"
        ]
    );
    for call in &calls[..n] {
        assert_eq!(call.token.as_deref(), Some("Bearer first-token"), "{}", call.method);
    }
    for call in &calls[n..] {
        assert_eq!(call.token.as_deref(), Some("Bearer rotated-token"), "{}", call.method);
    }
}

#[tokio::test]
async fn the_environment_token_is_sent() {
    let gw = TestGateway::start().await;
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    client.get_sandbox_config().await.unwrap();
    assert_eq!(gw.state.calls()[0].token.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
}

#[tokio::test]
async fn a_missing_token_file_is_a_clear_error_and_nothing_is_sent() {
    let gw = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.jwt");
    let client = GatewayClient::new(&gw.client_config_with(TokenSource::File(path.clone()), None)).unwrap();

    let err = client.check_token().unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    let err = client.get_sandbox_config().await.unwrap_err();
    assert!(matches!(err, GatewayError::Token { .. }), "{err:?}");
    assert_eq!(err.exit_status(), Exit::Usage);
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()) && text.contains("OPENSHELL_SANDBOX_TOKEN"), "{text}");
    assert!(gw.state.calls().is_empty(), "a call without a token must not be sent");
}

#[tokio::test]
async fn mtls_with_test_certificates_works() {
    let ca = TestCa::new("gateway CA");
    let gw = TestGateway::start_tls(server_tls(&ca, &["127.0.0.1"], &ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let tls = client_files(dir.path(), &ca, Some(&ca));
    let config = gw.client_config_with(TokenSource::File(token_file(dir.path())), Some(tls));
    let client = GatewayClient::new(&config).unwrap();
    client.get_sandbox_config().await.unwrap();
    assert_eq!(gw.state.calls_of("GetSandboxConfig")[0].token.as_deref(), Some("Bearer file-token"));
}

#[tokio::test]
async fn the_server_name_override_is_what_is_verified() {
    let ca = TestCa::new("gateway CA");
    let gw = TestGateway::start_tls(server_tls(&ca, &["gateway.internal"], &ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let tls = client_files(dir.path(), &ca, Some(&ca));
    let mut config = gw.client_config_with(TokenSource::File(token_file(dir.path())), Some(tls));

    // The endpoint is 127.0.0.1, which the certificate does not name.
    let err = GatewayClient::new(&config).unwrap().get_sandbox_config().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("certificate is not valid for `127.0.0.1` (it names gateway.internal)"), "{text}");
    assert!(text.contains("OPENSHELL_GATEWAY_TLS_SERVER_NAME") && !text.contains("DnsName"), "{text}");

    config.server_name = Some("gateway.internal".into());
    GatewayClient::new(&config).unwrap().get_sandbox_config().await.unwrap();
    assert_eq!(gw.state.calls_of("GetSandboxConfig").len(), 1);
}

#[tokio::test]
async fn a_gateway_certificate_from_another_ca_is_refused() {
    let trusted = TestCa::new("trusted CA");
    let other = TestCa::new("other CA");
    let gw = TestGateway::start_tls(server_tls(&other, &["127.0.0.1"], &trusted)).await;
    let dir = tempfile::tempdir().unwrap();
    let tls = client_files(dir.path(), &trusted, Some(&trusted));
    let client =
        GatewayClient::new(&gw.client_config_with(TokenSource::File(token_file(dir.path())), Some(tls))).unwrap();
    let err = client.get_sandbox_config().await.unwrap_err();
    assert_eq!(err.exit_status(), Exit::Unavailable);
    let text = err.to_string();
    assert!(
        text.contains("certificate is not issued by the CA in OPENSHELL_TLS_CA"),
        "the cause should be named: {text}"
    );
    assert!(text.contains(&dir.path().join("ca.pem").display().to_string()), "{text}");
    assert!(gw.state.calls().is_empty(), "nothing may reach a gateway that was not verified");
}

#[tokio::test]
async fn a_gateway_that_wants_a_client_certificate_names_the_missing_one() {
    let ca = TestCa::new("gateway CA");
    let gw = TestGateway::start_tls(server_tls(&ca, &["127.0.0.1"], &ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let tls = client_files(dir.path(), &ca, None);
    let client =
        GatewayClient::new(&gw.client_config_with(TokenSource::File(token_file(dir.path())), Some(tls))).unwrap();
    for _ in 0..3 {
        let text = client.get_sandbox_config().await.unwrap_err().to_string();
        assert!(
            text.contains(
                "TLS with the gateway failed: the gateway asked for a client certificate and none is configured"
            ) || text.contains("TLS with the gateway failed: the gateway closed the connection"),
            "{text}"
        );
        assert!(text.contains("set OPENSHELL_TLS_CERT and OPENSHELL_TLS_KEY"), "{text}");
        assert!(!text.contains("see the gateway's logs") && !text.contains("transport error"), "{text}");
    }
    assert!(gw.state.calls().is_empty());
}

#[tokio::test]
async fn unusable_tls_files_are_named() {
    let gw = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let mut tls = client_files(dir.path(), &ca, Some(&ca));
    let mut config = gw.client_config();
    config.endpoint.tls = true;
    std::fs::write(&tls.ca, "not a certificate").unwrap();
    config.tls = Some(tls.clone());
    let err = GatewayClient::new(&config).unwrap_err();
    assert!(err.to_string().contains("OPENSHELL_TLS_CA") && err.to_string().contains("ca.pem"), "{err}");
    assert_eq!(err.exit_status(), Exit::Usage);
    tls.ca = dir.path().join("nope.pem");
    config.tls = Some(tls);
    let err = GatewayClient::new(&config).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

fn token_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("sandbox.jwt");
    std::fs::write(&path, "file-token\n").unwrap();
    path
}
