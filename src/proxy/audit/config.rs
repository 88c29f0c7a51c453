//! Audit events of the proxy's configuration (Device Config State Change): a policy
//! generation loaded, rejected or quarantined, recovered from quarantine, and provider
//! credentials that cannot be used for want of a binding.

use crate::telemetry::audit;
use crate::telemetry::ocsf::{Activity, Class, Event, Severity};

use super::Action;

/// `state_id` 1: egress disabled.
const DISABLED: (u32, &str) = (1, "Disabled");
/// `state_id` 2: a policy in force.
const ENABLED: (u32, &str) = (2, "Enabled");

fn config_event<'a>(message: &'a str, severity: Severity, state: (u32, &'static str), success: bool) -> Event<'a> {
    let mut event = Event::new(Class::Config, Activity::LOG, severity, message);
    event.state = Some(state);
    event.success = Some(success);
    event
}

/// Policy generation `generation` is in force.
pub fn policy_loaded(generation: u64) {
    let mut event = config_event("policy generation installed", Severity::Informational, ENABLED, true);
    event.unmapped.generation = Some(generation);
    audit!(INFO, event, action = "load", generation);
}

/// A new policy failed validation and what was in force stays (`retain_last_valid`).
pub fn policy_rejected(reason: &str, quarantined: bool) {
    let message = if quarantined {
        "a new policy was rejected; the proxy stays quarantined: retain_last_valid has no valid policy to return to"
    } else {
        "a new policy was rejected; the last valid policy stays in force (retain_last_valid)"
    };
    let mut event = config_event(message, Severity::Medium, (99, "Rejected"), false);
    event.detail = Some(reason);
    audit!(WARN, event, action = "reject", reason);
}

/// The policy source rejected a new policy under `fail_closed`: generation `generation`
/// denies all egress with `reason`, and connections decided before it are closed.
pub fn policy_quarantined(generation: u64, reason: &str) {
    let message = format!("policy quarantined: generation {generation} denies all egress until a valid policy loads");
    let mut event = config_event(&message, Severity::High, DISABLED, false);
    event.detail = Some(reason);
    event.unmapped.generation = Some(generation);
    audit!(ERROR, event, action = Action::Quarantine.as_str(), generation, reason);
}

/// A valid policy loaded after a quarantine, as generation `generation`.
pub fn policy_recovered(generation: u64) {
    let message = format!("policy recovered from quarantine as generation {generation}");
    let mut event = config_event(&message, Severity::Informational, ENABLED, true);
    event.unmapped.generation = Some(generation);
    audit!(INFO, event, action = Action::Recover.as_str(), generation);
}

/// Provider credentials (`keys`, names only) that have no endpoint binding: never swapped
/// into any request.
pub fn credentials_unbound(keys: &str) {
    let message = "provider credentials without an endpoint binding are never swapped in";
    let mut event = config_event(message, Severity::Low, (99, "Unbound"), false);
    event.unmapped.credentials = Some(keys);
    audit!(WARN, event, action = "unbound", credentials = keys);
}
