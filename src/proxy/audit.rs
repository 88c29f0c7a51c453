//! Audit events of the proxy, as OCSF ([`crate::telemetry::ocsf`]): one per decision
//! (Network Activity for tunnels, HTTP Activity for requests), one when an allowed
//! connection or request closes, findings for bypass attempts, and config state changes
//! for the policy (docs/audit.md). Each also keeps its flat fields for text and JSON logs.

mod config;
mod requests;

use std::time::Duration;

pub use config::{credentials_unbound, policy_loaded, policy_quarantined, policy_recovered, policy_rejected};
pub use requests::{Request, dns_refused, inference_answered, inference_refused, l7_decision, upstream_failed};

use crate::policy::{L4Decision, PolicyEngine};
use crate::telemetry::audit;
use crate::telemetry::ocsf::{Activity, Class, Endpoint, Event, Finding, Http, Rule, Severity, Verdict};

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

    /// Whether the connection ended without trouble.
    fn clean(self) -> bool {
        matches!(self, Outcome::Eof | Outcome::Idle | Outcome::Shutdown)
    }
}

/// What was asked: a CONNECT tunnel or one absolute-form request.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// `connect`, `http` or `transparent`.
    pub kind: &'static str,
    /// Destination host as asked.
    pub host: &'a str,
    /// Destination port.
    pub port: u16,
    /// Method and path of a plain HTTP request (absolute-form or transparent).
    pub request: Option<(&'a str, &'a str)>,
}

impl<'a> Subject<'a> {
    /// The event of this subject: HTTP Activity for a request (its activity the method),
    /// else Network Activity with `activity`.
    fn event(&self, activity: Activity, severity: Severity, message: &'a str) -> Event<'a> {
        let mut event = match self.request {
            Some((method, path)) => {
                let mut event = Event::new(Class::Http, Activity::http(method), severity, message);
                event.http =
                    Some(Http { method, scheme: "http", host: self.host, port: self.port, path, status: None });
                event
            }
            None => Event::new(Class::Network, activity, severity, message),
        };
        event.dst = Some(Endpoint::host(self.host, self.port));
        event.unmapped.kind = Some(self.kind);
        event
    }
}

/// The `firewall_rule` of a decision by `policy` (none when no policy decided).
fn rule<'a>(policy: Option<&'a str>, rule: Option<&'a str>) -> Option<Rule<'a>> {
    policy.map(|policy| Rule { policy, rule })
}

/// How a refusal is graded: a policy denial (403) is Medium; a malformed request or a
/// failed upstream is Low.
fn graded(refusal: &Refusal) -> (Verdict, Severity) {
    match refusal.status().as_u16() {
        403 => (Verdict::Denied, Severity::Medium),
        502 | 504 => (Verdict::Failed, Severity::Low),
        _ => (Verdict::Rejected, Severity::Low),
    }
}

/// The id of the first endpoint an L4 decision matched, like `github.endpoints[0]`.
pub fn rule_of<'a>(engine: &'a PolicyEngine, decision: &L4Decision) -> Option<&'a str> {
    decision.endpoints.first().and_then(|i| engine.endpoint(*i)).map(|e| e.id.as_str())
}

/// An allowed decision.
pub fn allowed(subject: &Subject<'_>, policy: Option<&str>, rule_id: Option<&str>, reason: &str) {
    let mut event = subject.event(Activity::OPEN, Severity::Informational, "allowed");
    event.verdict = Some(Verdict::Allowed);
    event.rule = rule(policy, rule_id);
    let (method, path) = subject.request.unzip();
    audit!(
        INFO,
        event,
        action = Action::Allow.as_str(),
        kind = subject.kind,
        host = subject.host,
        port = subject.port,
        policy,
        rule = rule_id,
        reason,
        method,
        path
    );
}

/// A refusal: policy, SSRF, malformed request or unreachable upstream.
pub fn denied(subject: &Subject<'_>, refusal: &Refusal, policy: Option<&str>, rule_id: Option<&str>) {
    let (verdict, severity) = graded(refusal);
    let activity = if verdict == Verdict::Failed { Activity::FAIL } else { Activity::REFUSE };
    let mut event = subject.event(activity, severity, "refused");
    event.verdict = Some(verdict);
    event.rule = rule(policy, rule_id);
    event.detail = Some(refusal.reason());
    event.code = Some(refusal.error());
    if let Some(http) = &mut event.http {
        http.status = Some(refusal.status().as_u16());
    }
    let (method, path) = subject.request.unzip();
    let action = if refusal.is_denial() { Action::Deny } else { Action::Error };
    audit!(
        INFO,
        event,
        action = action.as_str(),
        kind = subject.kind,
        host = subject.host,
        port = subject.port,
        policy,
        rule = rule_id,
        error = refusal.error(),
        reason = refusal.reason(),
        method,
        path
    );
}

/// A refusal that looks like an attempt to get around the policy (an address the policy
/// DNS did not hand out, a TLS name other than the one resolved): the refusal, then a
/// Detection Finding naming it.
pub fn bypass(subject: &Subject<'_>, title: &str, reason: &str, policy: Option<&str>, rule_id: Option<&str>) {
    denied(subject, &Refusal::Policy { reason: reason.to_owned(), policy: None }, policy, rule_id);
    let mut finding = Event::new(Class::Finding, Activity::CREATE, Severity::High, title);
    finding.verdict = Some(Verdict::Denied);
    finding.finding = Some(Finding { title, kind: "bypass" });
    finding.dst = Some(Endpoint::host(subject.host, subject.port));
    finding.detail = Some(reason);
    finding.rule = rule(policy, rule_id);
    audit!(
        WARN,
        finding,
        action = Action::Deny.as_str(),
        kind = subject.kind,
        host = subject.host,
        port = subject.port,
        reason
    );
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

/// The one `close` event shape: Network Activity Close (Reset when a quarantine cut it),
/// or the HTTP Activity of a forwarded request with its status.
fn close_event(
    subject: &Subject<'_>,
    status: Option<u16>,
    bytes: (u64, u64),
    duration: Duration,
    outcome: Outcome,
    requests: Option<u64>,
) {
    let (sent, received) = bytes;
    let duration_ms = duration.as_millis() as u64;
    let activity = if outcome == Outcome::Quarantined { Activity::RESET } else { Activity::CLOSE };
    let severity = if outcome.clean() { Severity::Informational } else { Severity::Low };
    let mut event = subject.event(activity, severity, "closed");
    event.success = Some(outcome.clean());
    event.traffic = Some((sent, received));
    event.duration_ms = Some(duration_ms);
    event.unmapped.outcome = Some(outcome.as_str());
    event.unmapped.requests = requests;
    if let Some(http) = &mut event.http {
        http.status = status;
    }
    let (method, path) = subject.request.unzip();
    audit!(
        INFO,
        event,
        action = Action::Close.as_str(),
        kind = subject.kind,
        host = subject.host,
        port = subject.port,
        method,
        path,
        status,
        bytes_sent = sent,
        bytes_received = received,
        duration_ms,
        outcome = outcome.as_str(),
        requests
    );
}
