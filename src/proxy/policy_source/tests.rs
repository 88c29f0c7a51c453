use std::time::Duration;

use super::*;

const FAIL_CLOSED: ValidationFailureMode = ValidationFailureMode::FailClosed;

fn engine(host: &str, generation: u64) -> PolicyEngine {
    let yaml =
        format!("version: 1\nnetwork_policies:\n  p:\n    endpoints:\n      - host: {host}\n        port: 443\n");
    PolicyEngine::new(policy::parse_yaml(&yaml, "test").unwrap(), &RegoRules::builtin(), generation).unwrap()
}

#[test]
fn retain_last_valid_keeps_the_policy_and_fail_closed_quarantines_it() {
    let handle = PolicyHandle::new(engine("a.example.com", 1));
    handle.reject("invalid policy from the gateway: x: bad", ValidationFailureMode::RetainLastValid);
    assert_eq!(handle.current().generation(), 1);
    assert!(handle.current().network("a.example.com", 443).allow);

    handle.reject("invalid policy from the gateway: x: bad", FAIL_CLOSED);
    let current = handle.current();
    assert_eq!(current.generation(), 2);
    let decision = current.network("a.example.com", 443);
    assert!(!decision.allow);
    assert_eq!(
        decision.reason,
        "policy quarantined until a valid policy loads: invalid policy from the gateway: x: bad"
    );

    handle.reject("another", ValidationFailureMode::RetainLastValid);
    assert!(handle.current().quarantine().is_some(), "retain has no valid policy to return to");
    handle.install(engine("a.example.com", handle.next_generation()));
    assert!(handle.current().quarantine().is_none() && handle.current().network("a.example.com", 443).allow);
}

#[tokio::test]
async fn a_quarantine_revokes_the_generations_before_it_only() {
    let handle = PolicyHandle::new(engine("a.example.com", 1));
    let before = handle.revoked(1);
    handle.install(engine("a.example.com", 2));
    let reload = handle.revoked(1);
    tokio::pin!(reload);
    assert!(tokio::time::timeout(Duration::from_millis(50), &mut reload).await.is_err(), "a reload revokes nothing");
    handle.reject("bad", FAIL_CLOSED);
    handle.install(engine("a.example.com", 4));
    // Seen even when a valid policy followed before the waiter looked.
    tokio::time::timeout(Duration::from_secs(5), before).await.expect("generation 1 revoked");
    tokio::time::timeout(Duration::from_secs(5), reload).await.expect("generation 1 revoked");
    let after = handle.revoked(4);
    assert!(tokio::time::timeout(Duration::from_millis(50), after).await.is_err(), "a later generation stays");
}

#[tokio::test]
async fn a_pinned_connection_is_told_to_close_then_cut() {
    let handle = PolicyHandle::new(engine("a.example.com", 1));
    let shutdown = Shutdown::new();
    // One connection closes when told; one ignores it and is cut after the grace time.
    let polite = handle.serve_pinned(1, &shutdown, |s| async move {
        s.signalled().await;
        "closed"
    });
    let stubborn = handle.serve_pinned(1, &shutdown, |_| std::future::pending::<()>());
    let later = handle.serve_pinned(2, &shutdown, |s| async move { s.signalled().await });
    let quarantine = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle.reject("bad", FAIL_CLOSED);
    };
    let started = std::time::Instant::now();
    let (polite, stubborn, ()) = tokio::join!(polite, stubborn, quarantine);
    assert_eq!(polite, Some("closed"));
    assert_eq!(stubborn, None);
    assert!(started.elapsed() >= QUARANTINE_GRACE && started.elapsed() < QUARANTINE_GRACE * 5);
    assert!(!shutdown.is_triggered(), "the process goes on");
    let later = tokio::time::timeout(Duration::from_millis(50), later).await;
    assert!(later.is_err(), "a connection of the quarantined generation itself is not revoked by it");
}
