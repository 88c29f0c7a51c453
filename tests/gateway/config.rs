//! The pollers against the test gateway: a changed policy (revision or hash) is applied
//! and reported LOADED; an invalid one is reported FAILED with the error while the last
//! good policy stays; a provider revision change yields the new environment; the
//! inference bundle is polled and the last good one kept while the gateway fails.

use crate::support::gateway as gateway_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_support::{Payload, TestGateway, eventually};
use openshell_sandbox::config::ValidationFailureMode;
use openshell_sandbox::gateway::GatewayClient;
use openshell_sandbox::gateway::backoff::{Backoff, RetrySchedule};
use openshell_sandbox::gateway::config::{ConfigPoller, PolicySink, PollOutcome, SandboxConfig, fetch_with_retries};
use openshell_sandbox::gateway::inference::InferencePoller;
use openshell_sandbox::gateway::proto::inference::{GetInferenceBundleResponse, ResolvedRoute};
use openshell_sandbox::gateway::proto::sandbox::{NetworkEndpoint, NetworkPolicyRule, SandboxPolicy};
use openshell_sandbox::gateway::proto::{
    GetSandboxProviderEnvironmentResponse, PolicyStatus, ReportPolicyStatusRequest, StaticCredentialBinding,
    StaticCredentialEndpoint,
};
use openshell_sandbox::gateway::provider::ProviderPoller;
use openshell_sandbox::proxy::credentials::{
    BindingEndpoint, CredentialError, Destination, ProviderEnvironment, SecretStore, placeholder,
};
use openshell_sandbox::proxy::l7::routes::InferenceBundle;
use openshell_sandbox::shutdown::Shutdown;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(30);

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

fn host_of(config: &SandboxConfig) -> String {
    config.policy.network_policies["p"].endpoints[0].host.to_string()
}

fn reports(gw: &TestGateway) -> Vec<ReportPolicyStatusRequest> {
    gw.state
        .calls_of("ReportPolicyStatus")
        .into_iter()
        .filter(|c| !c.failed)
        .map(|c| match c.payload {
            Payload::PolicyStatus(r) => r,
            other => panic!("{other:?}"),
        })
        .collect()
}

type Installed = Arc<Mutex<Vec<SandboxConfig>>>;

/// A sink that records what it installed, refusing hosts named "refused.example".
fn policy_store() -> (Installed, impl Fn(SandboxConfig) -> Result<(), String> + Send + Sync) {
    let store = Arc::new(Mutex::new(Vec::new()));
    let sink_store = store.clone();
    let sink = move |config: SandboxConfig| {
        if host_of(&config) == "refused.example" {
            return Err("the engine refused the policy".to_owned());
        }
        sink_store.lock().unwrap().push(config);
        Ok(())
    };
    (store, sink)
}

async fn started(gw: &TestGateway) -> (GatewayClient, SandboxConfig) {
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let initial = fetch_with_retries(&client, &RetrySchedule::startup()).await.unwrap();
    (client, initial)
}

#[tokio::test]
async fn a_changed_policy_is_applied_and_reported_loaded() {
    let gw = TestGateway::start().await;
    gw.state.set_policy(policy("one.example"), 1, "h1", 1);
    let (client, initial) = started(&gw).await;
    let (store, sink) = policy_store();
    let shutdown = Shutdown::new();
    shutdown.spawn(ConfigPoller::new(client, sink, POLL).starting_from(&initial).run(shutdown.clone()));

    // Unchanged revision and hash: polled, not reloaded, not reported.
    eventually(WAIT, "three polls", || (gw.state.calls_of("GetSandboxConfig").len() >= 4).then_some(())).await;
    assert!(store.lock().unwrap().is_empty());
    assert!(reports(&gw).is_empty());

    // A new revision and hash.
    gw.state.set_policy(policy("two.example"), 2, "h2", 2);
    eventually(WAIT, "the new policy", || (store.lock().unwrap().len() == 1).then_some(())).await;
    assert_eq!(host_of(&store.lock().unwrap()[0]), "two.example");
    let report = eventually(WAIT, "LOADED", || reports(&gw).pop()).await;
    assert_eq!((report.version, report.status(), report.load_error.as_str()), (2, PolicyStatus::Loaded, ""));
    assert_eq!(report.sandbox_id, gateway_support::SANDBOX_ID);

    // Only the hash changes: applied too.
    gw.state.set_policy(policy("three.example"), 3, "h3", 2);
    eventually(WAIT, "the third policy", || (store.lock().unwrap().len() == 2).then_some(())).await;
    assert_eq!(host_of(&store.lock().unwrap()[1]), "three.example");
    eventually(WAIT, "the second LOADED", || (reports(&gw).len() == 2).then_some(())).await;
    shutdown.drain(WAIT).await;
}

#[tokio::test]
async fn an_invalid_policy_is_reported_failed_and_the_last_good_one_stays() {
    let gw = TestGateway::start().await;
    gw.state.set_policy(policy("good.example"), 1, "h1", 1);
    let (client, initial) = started(&gw).await;
    let (store, sink) = policy_store();
    let mut poller = ConfigPoller::new(client, sink, POLL).starting_from(&initial);

    gw.state.set_policy(policy("bad host"), 2, "h2", 2);
    let PollOutcome::Failed { version: 2, error } = poller.poll_once().await.unwrap() else {
        panic!("expected FAILED")
    };
    assert!(error.contains("network_policies.p.endpoints[0].host"), "{error}");
    assert!(store.lock().unwrap().is_empty(), "nothing installed: the last good policy stays");
    let report = reports(&gw).pop().unwrap();
    assert_eq!(
        (report.version, report.status(), report.load_error.as_str()),
        (2, PolicyStatus::Failed, error.as_str())
    );

    // The same bad revision is not reported again on later polls.
    assert_eq!(poller.poll_once().await.unwrap(), PollOutcome::Unchanged);
    assert_eq!(reports(&gw).len(), 1);

    // A policy the sink refuses (engine build failure) is FAILED with the sink's text.
    gw.state.set_policy(policy("refused.example"), 3, "h3", 3);
    assert_eq!(
        poller.poll_once().await.unwrap(),
        PollOutcome::Failed { version: 3, error: "the engine refused the policy".into() }
    );
    assert_eq!(reports(&gw).pop().unwrap().load_error, "the engine refused the policy");

    // A fixed policy is LOADED.
    gw.state.set_policy(policy("fixed.example"), 4, "h4", 4);
    assert_eq!(poller.poll_once().await.unwrap(), PollOutcome::Loaded { version: 4 });
    assert_eq!(host_of(&store.lock().unwrap()[0]), "fixed.example");
    let statuses: Vec<(u32, PolicyStatus)> = reports(&gw).iter().map(|r| (r.version, r.status())).collect();
    assert_eq!(statuses, [(2, PolicyStatus::Failed), (3, PolicyStatus::Failed), (4, PolicyStatus::Loaded)]);
}

#[tokio::test]
async fn a_status_the_gateway_did_not_take_is_sent_again() {
    let gw = TestGateway::start().await;
    gw.state.set_policy(policy("one.example"), 1, "h1", 1);
    let (client, initial) = started(&gw).await;
    let (_store, sink) = policy_store();
    let mut poller = ConfigPoller::new(client, sink, POLL).starting_from(&initial);
    gw.state.set_policy(policy("two.example"), 2, "h2", 2);
    gw.state.fail("ReportPolicyStatus", 1, Code::Unavailable);
    assert_eq!(poller.poll_once().await.unwrap(), PollOutcome::Loaded { version: 2 });
    assert!(reports(&gw).is_empty());
    assert_eq!(poller.poll_once().await.unwrap(), PollOutcome::Unchanged);
    let statuses: Vec<(u32, PolicyStatus)> = reports(&gw).iter().map(|r| (r.version, r.status())).collect();
    assert_eq!(statuses, [(2, PolicyStatus::Loaded)]);
}

#[tokio::test]
async fn a_poll_while_the_gateway_is_down_keeps_the_policy() {
    let mut gw = TestGateway::start().await;
    gw.state.set_policy(policy("one.example"), 1, "h1", 1);
    let (client, initial) = started(&gw).await;
    let (store, sink) = policy_store();
    let mut poller = ConfigPoller::new(client, sink, POLL).starting_from(&initial);
    gw.stop().await;
    assert!(poller.poll_once().await.unwrap_err().is_unavailable());
    gw.state.set_policy(policy("two.example"), 2, "h2", 2);
    gw.restart().await;
    assert_eq!(poller.poll_once().await.unwrap(), PollOutcome::Loaded { version: 2 });
    assert_eq!(host_of(&store.lock().unwrap()[0]), "two.example");
}

/// A sink that records every install and every rejection with its mode.
#[derive(Clone, Default)]
struct Recorder {
    installed: Arc<Mutex<Vec<String>>>,
    rejected: Arc<Mutex<Vec<(String, ValidationFailureMode)>>>,
}

impl PolicySink for Recorder {
    fn install(&self, config: SandboxConfig) -> Result<(), String> {
        self.installed.lock().unwrap().push(host_of(&config));
        Ok(())
    }

    fn reject(&self, error: &str, mode: ValidationFailureMode) {
        self.rejected.lock().unwrap().push((error.to_owned(), mode));
    }
}

#[tokio::test]
async fn each_rejection_reaches_the_sink_with_the_gateways_failure_mode() {
    let gw = TestGateway::start().await;
    gw.state.set_policy(policy("good.example"), 1, "h1", 1);
    let (client, initial) = started(&gw).await;
    let recorder = Recorder::default();
    let mut poller = ConfigPoller::new(client, recorder.clone(), POLL).starting_from(&initial);
    let modes = [
        ("", ValidationFailureMode::FailClosed),
        ("retain_last_valid", ValidationFailureMode::RetainLastValid),
        ("fail_closed", ValidationFailureMode::FailClosed),
        ("a_mode_from_the_future", ValidationFailureMode::FailClosed),
    ];
    for (revision, (sent, want)) in (2..).zip(modes) {
        gw.state.set_failure_mode(sent);
        gw.state.set_policy(policy("bad host"), revision, &format!("h{revision}"), u64::from(revision));
        assert!(matches!(poller.poll_once().await.unwrap(), PollOutcome::Failed { .. }));
        let (error, mode) = recorder.rejected.lock().unwrap().last().cloned().unwrap();
        assert_eq!(mode, want, "mode `{sent}`");
        assert!(error.starts_with("invalid policy from the gateway: network_policies.p.endpoints[0].host"), "{error}");
    }
    assert!(recorder.installed.lock().unwrap().is_empty());
    assert_eq!(reports(&gw).len(), 4, "every rejection is reported FAILED");
}

#[tokio::test]
async fn the_global_policy_is_applied_and_never_reported() {
    let gw = TestGateway::start().await;
    gw.state.set_global(Some(7));
    gw.state.set_policy(policy("bad host"), 1, "h1", 1);
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    assert!(
        fetch_with_retries(&client, &RetrySchedule::startup()).await.is_err(),
        "an invalid global policy ends startup"
    );
    assert!(reports(&gw).is_empty(), "no sandbox version is reported for the global policy");

    gw.state.set_policy(policy("global.example"), 1, "h2", 2);
    let initial = fetch_with_retries(&client, &RetrySchedule::startup()).await.unwrap();
    assert_eq!((initial.origin.global, initial.origin.reported()), (Some(7), false));
    let recorder = Recorder::default();
    let mut poller = ConfigPoller::new(client, recorder.clone(), POLL).starting_from(&initial);
    gw.state.set_policy(policy("global-two.example"), 1, "h3", 3);
    assert_eq!(poller.poll_once().await.unwrap(), PollOutcome::Loaded { version: 1 });
    gw.state.set_policy(policy("bad host"), 1, "h4", 4);
    assert!(matches!(poller.poll_once().await.unwrap(), PollOutcome::Failed { .. }));
    assert_eq!(recorder.rejected.lock().unwrap().len(), 1, "a rejected global policy still quarantines");
    assert!(reports(&gw).is_empty(), "{:?}", reports(&gw));

    // The sandbox's own policy again: reported.
    gw.state.set_global(None);
    gw.state.set_policy(policy("own.example"), 2, "h5", 5);
    assert_eq!(poller.poll_once().await.unwrap(), PollOutcome::Loaded { version: 2 });
    assert_eq!(*recorder.installed.lock().unwrap(), ["global-two.example", "own.example"]);
    let statuses: Vec<(u32, PolicyStatus)> = reports(&gw).iter().map(|r| (r.version, r.status())).collect();
    assert_eq!(statuses, [(2, PolicyStatus::Loaded)]);
}

/// `GITHUB_TOKEN` bound to `api.github.com:443` under `/repos`; `GITHUB_USER` not secret.
fn env(pairs: &[(&str, &str)], revision: u64) -> GetSandboxProviderEnvironmentResponse {
    let endpoint = StaticCredentialEndpoint { host: "api.github.com".into(), port: 443, path: "/repos".into() };
    let binding = StaticCredentialBinding { endpoints: vec![endpoint], ..Default::default() };
    GetSandboxProviderEnvironmentResponse {
        environment: pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        provider_env_revision: revision,
        non_secret_environment_keys: vec!["GITHUB_USER".into()],
        static_credential_bindings: [("GITHUB_TOKEN".to_owned(), binding)].into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_provider_revision_change_yields_the_new_environment() {
    let gw = TestGateway::start().await;
    gw.state.set_policy(policy("one.example"), 1, "h1", 1);
    gw.state.set_provider_revision(1);
    gw.state.set_provider_env(env(&[("GITHUB_TOKEN", "ghp_first"), ("GITHUB_USER", "octo")], 1));
    let (client, initial) = started(&gw).await;
    let first = client.get_provider_environment().await.unwrap();
    assert_eq!(first.environment["GITHUB_TOKEN"].expose(), "ghp_first");
    let bound = BindingEndpoint { host: "api.github.com".into(), port: 443, path: "/repos".into() };
    assert_eq!(first.bindings["GITHUB_TOKEN"], [bound]);
    assert!(!first.is_secret("GITHUB_USER") && first.is_secret("GITHUB_TOKEN"));
    let debug = format!("{first:?}");
    assert!(debug.contains("GITHUB_TOKEN") && !debug.contains("ghp_first"), "{debug}");

    let installed: Arc<Mutex<Vec<ProviderEnvironment>>> = Arc::default();
    let sink_installed = installed.clone();
    let sink = move |env: ProviderEnvironment| {
        sink_installed.lock().unwrap().push(env);
        Ok(())
    };
    let (_store, policy_sink) = policy_store();
    let shutdown = Shutdown::new();
    let config_poller = ConfigPoller::new(client.clone(), policy_sink, POLL).starting_from(&initial);
    let provider_poller =
        ProviderPoller::new(client, sink, config_poller.provider_revisions(), initial.provider_env_revision)
            .with_backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(50)));
    shutdown.spawn(config_poller.run(shutdown.clone()));
    shutdown.spawn(provider_poller.run(shutdown.clone()));

    // The revision does not change: no fetch.
    eventually(WAIT, "three polls", || (gw.state.calls_of("GetSandboxConfig").len() >= 4).then_some(())).await;
    assert_eq!(gw.state.calls_of("GetSandboxProviderEnvironment").len(), 1);

    // A new revision (the first fetch fails: retried).
    gw.state.set_provider_env(env(&[("GITHUB_TOKEN", "ghp_second")], 2));
    gw.state.fail("GetSandboxProviderEnvironment", 1, Code::Unavailable);
    gw.state.set_provider_revision(2);
    let env = eventually(WAIT, "the new environment", || installed.lock().unwrap().first().cloned()).await;
    assert_eq!(env.environment["GITHUB_TOKEN"].expose(), "ghp_second");
    assert_eq!(env.revision, 2);
    let calls = gw.state.calls_of("GetSandboxProviderEnvironment");
    assert_eq!(calls.iter().map(|c| c.failed).collect::<Vec<_>>(), [false, true, false]);
    for call in calls {
        let Payload::ProviderEnv(request) = call.payload else { panic!() };
        assert!(request.supports_static_credential_bindings, "without it the gateway strips every bound secret");
        assert_eq!(request.sandbox_id, gateway_support::SANDBOX_ID);
    }
    shutdown.drain(WAIT).await;
    assert_eq!(installed.lock().unwrap().len(), 1);
}

/// An expired value is refused and makes the provider poller fetch again although the
/// announced revision did not change; the fresh value is then swapped in.
#[tokio::test]
async fn an_expired_value_is_refused_and_fetched_again() {
    let gw = TestGateway::start().await;
    gw.state.set_policy(policy("one.example"), 1, "h1", 1);
    gw.state.set_provider_revision(1);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut expired = env(&[("GITHUB_TOKEN", "ghp_expired")], 1);
    expired.credential_expires_at_ms = [("GITHUB_TOKEN".to_owned(), now - 1)].into();
    gw.state.set_provider_env(expired);
    let (client, initial) = started(&gw).await;
    let store = Arc::new(SecretStore::from_provider(&client.get_provider_environment().await.unwrap()).unwrap());
    let sink_store = store.clone();
    let sink = move |env: ProviderEnvironment| sink_store.install(&env).map_err(|e| e.to_string());
    let (_config, policy_sink) = policy_store();
    let shutdown = Shutdown::new();
    let config_poller = ConfigPoller::new(client.clone(), policy_sink, POLL).starting_from(&initial);
    let provider_poller =
        ProviderPoller::new(client, sink, config_poller.provider_revisions(), initial.provider_env_revision)
            .refetch_on(store.expired());
    shutdown.spawn(config_poller.run(shutdown.clone()));
    shutdown.spawn(provider_poller.run(shutdown.clone()));

    let request = || {
        let header = format!("Bearer {}", placeholder("GITHUB_TOKEN"));
        http::Request::get("/repos/o/r").header("authorization", header).body(()).unwrap().into_parts().0
    };
    let to = || Destination::plain("api.github.com", 443, "/repos/o/r", false);
    let mut parts = request();
    let e = store.substitute(&mut parts, to(), true).unwrap_err();
    assert!(matches!(&e, CredentialError::Expired { key } if key == "GITHUB_TOKEN"), "{e}");
    assert!(parts.headers["authorization"].to_str().unwrap().contains("openshell:resolve:env:"));

    gw.state.set_provider_env(env(&[("GITHUB_TOKEN", "ghp_fresh")], 1));
    let fetched = || (gw.state.calls_of("GetSandboxProviderEnvironment").len() >= 2).then_some(());
    eventually(WAIT, "a fetch for the expired value", fetched).await;
    let parts = eventually(WAIT, "the fresh value in force", || {
        let mut parts = request();
        store.substitute(&mut parts, to(), true).ok().map(|_| parts)
    })
    .await;
    assert_eq!(parts.headers["authorization"], "Bearer ghp_fresh");
    assert_eq!(gw.state.calls_of("GetSandboxProviderEnvironment").len(), 2, "one fetch, no revision change");
    let mut parts = request();
    let e = store.substitute(&mut parts, Destination::plain("api.github.com", 443, "/user", false), true).unwrap_err();
    assert!(matches!(e, CredentialError::NotBound { .. }), "outside the binding's path: {e}");
    shutdown.trigger();
}

fn bundle(revision: &str, key: &str) -> GetInferenceBundleResponse {
    GetInferenceBundleResponse {
        routes: vec![ResolvedRoute {
            name: "default".into(),
            base_url: "https://api.example.com/v1".into(),
            protocols: vec!["openai".into()],
            api_key: key.into(),
            model_id: "model-1".into(),
            provider_type: "openai".into(),
            timeout_secs: 30,
            model_in_path: true,
            request_path_override: Some(":predict".into()),
        }],
        revision: revision.into(),
        generated_at_ms: 1,
    }
}

#[tokio::test]
async fn the_inference_bundle_is_polled_and_the_last_good_one_kept_on_error() {
    let gw = TestGateway::start().await;
    gw.state.set_bundle(bundle("r1", "sk-first"));
    let client = GatewayClient::new(&gw.client_config()).unwrap();
    let installed: Arc<Mutex<Vec<InferenceBundle>>> = Arc::default();
    let sink_installed = installed.clone();
    let sink = move |b: InferenceBundle| {
        sink_installed.lock().unwrap().push(b);
        Ok(())
    };
    let shutdown = Shutdown::new();
    shutdown.spawn(InferencePoller::new(client, sink).with_interval(POLL).run(shutdown.clone()));

    let first = eventually(WAIT, "the first bundle", || installed.lock().unwrap().first().cloned()).await;
    assert_eq!(first.revision, "r1");
    assert_eq!(first.routes[0].api_key.expose(), "sk-first");
    assert_eq!(first.routes[0].timeout, Some(Duration::from_secs(30)));
    assert_eq!(
        (first.routes[0].model_in_path, first.routes[0].request_path_override.as_deref()),
        (true, Some(":predict"))
    );
    assert!(!format!("{first:?}").contains("sk-first"));

    // The gateway fails for a while: nothing is installed, the last good bundle stays.
    gw.state.fail("GetInferenceBundle", 3, Code::Unavailable);
    gw.state.set_bundle(bundle("r2", "sk-second"));
    let second = eventually(WAIT, "the second bundle", || installed.lock().unwrap().get(1).cloned()).await;
    assert_eq!(second.routes[0].api_key.expose(), "sk-second");
    let calls = gw.state.calls_of("GetInferenceBundle");
    assert_eq!(calls.iter().filter(|c| c.failed).count(), 3);
    assert!(calls.iter().all(|c| c.token.as_deref() == Some("Bearer test-sandbox-jwt")));
    // Polls of the same revision do not reinstall, though the gateway stamps each answer anew.
    let polls = calls.len();
    eventually(WAIT, "more polls", || (gw.state.calls_of("GetInferenceBundle").len() >= polls + 3).then_some(())).await;
    shutdown.drain(WAIT).await;
    assert_eq!(installed.lock().unwrap().len(), 2);
}
