use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::config::Secret;

fn provider(pairs: &[(&str, &str)], non_secret: &[&str]) -> ProviderEnvironment {
    ProviderEnvironment {
        environment: pairs.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect(),
        revision: 7,
        non_secret_keys: non_secret.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn placeholders_and_keys() {
    assert_eq!(placeholder("API_KEY"), "openshell:resolve:env:API_KEY");
    assert_eq!(placeholder_key("openshell:resolve:env:API_KEY"), Some("API_KEY"));
    for s in
        ["openshell:resolve:env:", "openshell:resolve:env:A-B", "xopenshell:resolve:env:A", "openshell:resolve:env:A "]
    {
        assert_eq!(placeholder_key(s), None, "{s}");
    }
    assert!(is_key("_A1") && !is_key("1A") && !is_key("") && !is_key("A.B"));
}

#[test]
fn child_env_maps_secrets_to_placeholders_and_keeps_non_secrets() {
    let store =
        SecretStore::from_provider(&provider(&[("API_KEY", "sk-1"), ("REGION", "eu-west-1")], &["REGION"])).unwrap();
    let env = store.child_env();
    let want: BTreeMap<String, String> = [
        ("API_KEY".to_owned(), "openshell:resolve:env:API_KEY".to_owned()),
        ("REGION".to_owned(), "eu-west-1".to_owned()),
    ]
    .into();
    assert_eq!(env, want);
    let dir = tempfile::tempdir().unwrap();
    crate::volume::write_child_env(dir.path(), &env).unwrap();
    assert_eq!(crate::volume::read_child_env(dir.path()).unwrap(), want);
}

#[test]
fn unsafe_provider_values_are_refused_naming_the_key_only() {
    for (value, what) in [("a\r\nX-Evil: 1", "carriage return"), ("a\nb", "line feed"), ("a\0b", "NUL")] {
        let e = SecretStore::from_provider(&provider(&[("OK", "v"), ("TOKEN", value)], &[])).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("`TOKEN`") && text.contains(what) && text.contains("gateway"), "{text}");
        assert!(!text.contains("X-Evil") && !format!("{e:?}").contains("X-Evil"), "{text}");
        assert_eq!(e.exit_status(), Exit::Usage);
    }
    let e = SecretStore::from_provider(&provider(&[("BAD-KEY", "v")], &[])).unwrap_err();
    assert!(e.to_string().contains("`BAD-KEY`"));
}

#[test]
fn a_bad_install_keeps_the_previous_credentials() {
    let store = SecretStore::from_provider(&provider(&[("A", "one")], &[])).unwrap();
    assert!(store.install(&provider(&[("A", "two\n")], &[])).is_err());
    assert_eq!(store.snapshot().get("A").unwrap().expose(), "one");
    store.install(&provider(&[("B", "three")], &[])).unwrap();
    assert!(store.snapshot().get("A").is_none());
    assert_eq!(store.snapshot().keys().collect::<Vec<_>>(), ["B"]);
}

#[test]
fn debug_output_never_shows_a_value() {
    let store = SecretStore::from_provider(&provider(&[("A", "hunter2-secret")], &[])).unwrap();
    let debug = format!("{store:?} {:?}", store.snapshot());
    assert!(!debug.contains("hunter2") && debug.contains("redacted"), "{debug}");
}

/// `store` with changes of its file counting at once (no settle time).
fn unsettled(mut store: SecretStore) -> SecretStore {
    let file = store.file.take().map(|f| f.into_inner().unwrap().with_settle(Duration::ZERO));
    store.file = file.map(std::sync::Mutex::new);
    store
}

#[test]
fn file_store_loads_and_reloads_on_change_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider.env");
    std::fs::write(&path, "[p]\nAPI_KEY=first\n").unwrap();
    let store = unsettled(SecretStore::from_file(&path).unwrap());
    assert_eq!(store.snapshot().get("API_KEY").unwrap().expose(), "first");
    assert!(!store.reload_if_changed().unwrap(), "unchanged file");
    let old = store.snapshot();

    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, "[p]\nAPI_KEY=second-value\nOTHER=x\n").unwrap();
    assert!(store.reload_if_changed().unwrap());
    assert_eq!(store.snapshot().get("API_KEY").unwrap().expose(), "second-value");
    assert_eq!(old.get("API_KEY").unwrap().expose(), "first", "a taken snapshot does not change");
    assert!(!store.reload_if_changed().unwrap());
    assert_eq!(store.child_env()["OTHER"], "openshell:resolve:env:OTHER");
}

#[test]
fn a_bad_reload_keeps_the_last_good_file_and_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider.env");
    std::fs::write(&path, "[p]\nAPI_KEY=good\n").unwrap();
    let store = unsettled(SecretStore::from_file(&path).unwrap());
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, "[p]\nAPI_KEY=bad\r\n").unwrap();
    let e = store.reload_if_changed().unwrap_err().to_string();
    assert!(e.contains("`API_KEY`") && e.contains("line 2") && !e.contains("bad\r"), "{e}");
    assert_eq!(store.snapshot().get("API_KEY").unwrap().expose(), "good");
    assert!(!store.reload_if_changed().unwrap(), "the same bad file is not reported again");

    let tmp = dir.path().join("provider.env.tmp");
    std::fs::write(&tmp, "[p]\nAPI_KEY=renamed\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(store.reload_if_changed().unwrap(), "an atomic replace is seen");
    assert_eq!(store.snapshot().get("API_KEY").unwrap().expose(), "renamed");
}

#[test]
fn a_half_written_env_file_is_not_picked_up_before_it_settles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider.env");
    std::fs::write(&path, "[p]\nAPI_KEY=first\n").unwrap();
    let mut store = SecretStore::from_file(&path).unwrap();
    let file = store.file.take().map(|f| f.into_inner().unwrap().with_settle(Duration::from_millis(300)));
    store.file = file.map(std::sync::Mutex::new);
    // A writer half way: the prefix is a valid file whose value is cut.
    std::fs::write(&path, "[p]\nAPI_KEY=sec").unwrap();
    assert!(!store.reload_if_changed().unwrap(), "a fresh change waits");
    std::fs::write(&path, "[p]\nAPI_KEY=second-value\n").unwrap();
    assert!(!store.reload_if_changed().unwrap(), "a change still changing waits");
    assert_eq!(store.snapshot().get("API_KEY").unwrap().expose(), "first");
    assert!(store.settles_in().is_some());
    std::thread::sleep(Duration::from_millis(350));
    assert!(store.reload_if_changed().unwrap(), "a settled change applies");
    assert_eq!(store.snapshot().get("API_KEY").unwrap().expose(), "second-value", "the cut value never applied");
}

#[test]
fn missing_file_is_an_error_naming_the_path() {
    let e = SecretStore::from_file(Path::new("/nonexistent/provider.env")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/provider.env"));
    assert_eq!(e.exit_status(), Exit::Usage);
    assert!(!SecretStore::empty().reload_if_changed().unwrap());
    assert!(SecretStore::empty().child_env().is_empty());
}

#[test]
fn env_file_keys_the_policy_does_not_bind_are_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider.env");
    std::fs::write(&path, "[github]\nGITHUB_TOKEN=ghp-x\n[slack]\nSLACK_TOKEN=xoxb-x\n").unwrap();
    let store = SecretStore::from_file(&path).unwrap();
    let policy = |extra: &str| {
        let yaml = format!(
            "version: 1\nnetwork_policies:\n  p:\n    endpoints:\n      - {{host: api.github.com, port: 443, protocol: rest, access: full, credential_binding: {{provider: github}}}}\n{extra}"
        );
        crate::policy::parse_yaml(&yaml, "test.yaml").unwrap()
    };
    let unbound: Vec<String> = store.unbound(&policy("")).iter().map(ToString::to_string).collect();
    assert_eq!(unbound.len(), 1, "{unbound:?}");
    assert!(
        unbound[0].contains("`SLACK_TOKEN` (provider `slack` in ")
            && unbound[0].contains("credential_binding: {provider: slack}")
    );
    assert!(!unbound[0].contains("xoxb"), "{unbound:?}");
    let l4 = "      - {host: slack.com, port: 443, credential_binding: {provider: slack}}\n";
    assert_eq!(store.unbound(&policy(l4)).len(), 1, "an L4 endpoint is never inspected: it binds nothing");
    let l7 =
        "      - {host: slack.com, port: 443, protocol: rest, access: full, credential_binding: {provider: slack}}\n";
    assert!(store.unbound(&policy(l7)).is_empty());
    assert!(SecretStore::from_provider(&provider(&[("A", "v")], &[])).unwrap().unbound(&policy("")).is_empty());
}

#[test]
fn an_expired_value_is_refused_and_asks_for_a_refetch() {
    let bound = vec![super::BindingEndpoint { host: "h.example".into(), port: 443, path: String::new() }];
    let mut env = provider(&[("OLD", "old-value"), ("NEW", "new-value"), ("NEVER", "n")], &[]);
    env.bindings = ["OLD", "NEW", "NEVER"].iter().map(|k| (k.to_string(), bound.clone())).collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    env.expires_at_ms =
        [("OLD".to_owned(), now - 1), ("NEW".to_owned(), now + 600_000), ("NEVER".to_owned(), 0)].into();
    let store = SecretStore::from_provider(&env).unwrap();
    let to = Destination::plain("h.example", 443, "/", false);
    let snapshot = store.snapshot();
    assert_eq!(snapshot.resolve("NEW", &to).unwrap(), "new-value");
    assert_eq!(snapshot.resolve("NEVER", &to).unwrap(), "n");
    let notified = store.expired();
    let e = snapshot.resolve("OLD", &to).unwrap_err();
    assert!(matches!(&e, CredentialError::Expired { key } if key == "OLD"), "{e}");
    let refusal = e.refusal();
    assert_eq!((refusal.error(), refusal.status()), ("credential_expired", http::StatusCode::FORBIDDEN));
    let waited = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(Duration::from_secs(1), notified.notified()).await });
    assert!(waited.is_ok(), "the refetch was asked for");
}
