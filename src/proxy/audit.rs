//! Audit events: one per policy decision, one when an allowed connection or request
//! closes, and one when the policy is quarantined or recovers, under the
//! `openshell::audit` target (docs/architecture.md, "Per connection").

use std::time::Duration;

use crate::policy::{L4Decision, PolicyEngine};
use crate::telemetry::AUDIT_TARGET;

use super::answer::Refusal;

/// What an audit event records: its `action` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A decision that lets the connection or request through.
    Allow,
    /// An L7 would-be denial under `enforcement: audit`, forwarded.
    Audit,
    /// A refusal by policy (or by the credentials it binds).
    Deny,
    /// A refusal for the request's form, or an upstream that failed.
    Error,
    /// An allowed connection or request has ended.
    Close,
    /// A rejected policy quarantined egress.
    Quarantine,
    /// A valid policy ended a quarantine.
    Recover,
}

impl Action {
    /// The field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Audit => "audit",
            Action::Deny => "deny",
            Action::Error => "error",
            Action::Close => "close",
            Action::Quarantine => "quarantine",
            Action::Recover => "recover",
        }
    }
}

/// How an allowed connection or request ended: the `outcome` of its `close` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ended normally (the client closed, or the body was complete).
    Eof,
    /// It was silent longer than the idle timeout.
    Idle,
    /// An I/O or protocol error.
    Error,
    /// A body was dropped before its end (the client went away).
    Aborted,
    /// The proxy is shutting down.
    Shutdown,
    /// The policy it was allowed under was quarantined.
    Quarantined,
}

impl Outcome {
    /// The field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Eof => "eof",
            Outcome::Idle => "idle",
            Outcome::Error => "error",
            Outcome::Aborted => "aborted",
            Outcome::Shutdown => "shutdown",
            Outcome::Quarantined => "quarantined",
        }
    }
}

/// What was asked: a CONNECT tunnel or one absolute-form request.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// `connect` or `http`.
    pub kind: &'static str,
    /// Destination host as asked.
    pub host: &'a str,
    /// Destination port.
    pub port: u16,
    /// Method and path of an absolute-form request.
    pub request: Option<(&'a str, &'a str)>,
}

/// The id of the first endpoint an L4 decision matched, like `github.endpoints[0]`.
pub fn rule<'a>(engine: &'a PolicyEngine, decision: &L4Decision) -> Option<&'a str> {
    decision.endpoints.first().and_then(|i| engine.endpoint(*i)).map(|e| e.id.as_str())
}

/// An allowed decision.
pub fn allowed(subject: &Subject<'_>, policy: Option<&str>, rule: Option<&str>, reason: &str) {
    let (method, path) = subject.request.unzip();
    tracing::info!(
        target: AUDIT_TARGET,
        action = Action::Allow.as_str(),
        kind = subject.kind,
        host = subject.host,
        port = subject.port,
        policy,
        rule,
        reason,
        method,
        path,
        "allowed"
    );
}

/// A refusal: policy, SSRF, malformed request or unreachable upstream.
pub fn denied(subject: &Subject<'_>, refusal: &Refusal, policy: Option<&str>, rule: Option<&str>) {
    let (method, path) = subject.request.unzip();
    let action = if refusal.is_denial() { Action::Deny } else { Action::Error };
    tracing::info!(
        target: AUDIT_TARGET,
        action = action.as_str(),
        kind = subject.kind,
        host = subject.host,
        port = subject.port,
        policy,
        rule,
        error = refusal.error(),
        reason = refusal.reason(),
        method,
        path,
        "refused"
    );
}

/// The policy source rejected a new policy under `fail_closed`: generation `generation`
/// denies all egress with `reason`, and connections decided before it are closed.
pub fn policy_quarantined(generation: u64, reason: &str) {
    tracing::error!(target: AUDIT_TARGET, action = Action::Quarantine.as_str(), generation, reason, "policy quarantined");
}

/// A valid policy loaded after a quarantine, as generation `generation`.
pub fn policy_recovered(generation: u64) {
    tracing::info!(target: AUDIT_TARGET, action = Action::Recover.as_str(), generation, "policy recovered from quarantine");
}

/// An allowed tunnel or forwarded request has ended: the upstream's status (requests),
/// bytes (client to upstream, upstream to client), duration, and how it ended.
pub fn closed(subject: &Subject<'_>, status: Option<u16>, bytes: (u64, u64), duration: Duration, outcome: Outcome) {
    close_event(subject, status, bytes, duration, outcome, None);
}

/// An inspected (TLS-intercepted) connection has ended: the same `close` event as a tunnel's,
/// plus the number of requests it carried. `bytes_sent` / `bytes_received` count what crossed
/// the client's side of the interception as it travels on the wire (TLS records included,
/// like a tunnel's bytes): read from the client, and written to the client.
pub fn inspected_closed(subject: &Subject<'_>, bytes: (u64, u64), duration: Duration, outcome: Outcome, requests: u64) {
    close_event(subject, None, bytes, duration, outcome, Some(requests));
}

/// The one `close` event shape.
fn close_event(
    subject: &Subject<'_>,
    status: Option<u16>,
    bytes: (u64, u64),
    duration: Duration,
    outcome: Outcome,
    requests: Option<u64>,
) {
    let (sent, received) = bytes;
    let (method, path) = subject.request.unzip();
    tracing::info!(
        target: AUDIT_TARGET,
        action = Action::Close.as_str(),
        kind = subject.kind,
        host = subject.host,
        port = subject.port,
        method,
        path,
        status,
        bytes_sent = sent,
        bytes_received = received,
        duration_ms = duration.as_millis() as u64,
        outcome = outcome.as_str(),
        requests,
        "closed"
    );
}
