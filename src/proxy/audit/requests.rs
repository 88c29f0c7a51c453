//! Audit events of single requests: L7 decisions on inspected connections (HTTP Activity),
//! upstream failures, inference calls (API Activity) and refused DNS names.

use crate::policy::L7Decision;
use crate::proxy::answer::Refusal;
use crate::telemetry::audit;
use crate::telemetry::ocsf::{Activity, Api, Class, Endpoint, Event, Finding, Http, Severity, Tokens, Verdict};

use super::{Action, graded, rule};

/// One judged request: where it went and what it asked (the path as judged, no query).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `https` on an inspected TLS connection, `http` for a plain request.
    pub scheme: &'static str,
    /// The host the client asked for.
    pub host: &'a str,
    /// Its port.
    pub port: u16,
    /// The method.
    pub method: &'a str,
    /// The path as judged.
    pub path: &'a str,
}

impl<'a> Request<'a> {
    fn event(&self, severity: Severity, message: &'a str) -> Event<'a> {
        let mut event = Event::new(Class::Http, Activity::http(self.method), severity, message);
        let (method, host, port, path) = (self.method, self.host, self.port, self.path);
        event.http = Some(Http { method, scheme: self.scheme, host, port, path, status: None });
        event.dst = Some(Endpoint::host(host, port));
        event.unmapped.kind = Some("l7");
        event
    }
}

/// The decision on one request of an inspected connection: forwarded (`Allow`, or
/// `Audit` for a would-be denial under `enforcement: audit`) with the names of the
/// credentials swapped in, or refused (`refusal`). A placeholder sent where its key is not
/// bound is also a finding.
pub fn l7_decision(
    request: &Request<'_>,
    decision: Option<&L7Decision>,
    credentials: &str,
    reason: &str,
    refusal: Option<&Refusal>,
) {
    let (action, verdict, severity) = match (refusal, decision) {
        (Some(refusal), _) => {
            let (verdict, severity) = graded(refusal);
            (Action::Deny, verdict, severity)
        }
        (None, Some(d)) if !d.allow => (Action::Audit, Verdict::Observed, Severity::Low),
        (None, _) => (Action::Allow, Verdict::Allowed, Severity::Informational),
    };
    let mut event = request.event(severity, "l7 decision");
    event.verdict = Some(verdict);
    let (policy, rule_id) = (decision.and_then(|d| d.policy.as_deref()), decision.and_then(|d| d.rule.as_deref()));
    event.rule = rule(policy, rule_id);
    event.unmapped.credentials = (!credentials.is_empty()).then_some(credentials);
    if verdict != Verdict::Allowed {
        event.detail = Some(reason);
    }
    if let Some(refusal) = refusal {
        event.code = Some(refusal.error());
        if let Some(http) = &mut event.http {
            http.status = Some(refusal.status().as_u16());
        }
    }
    let Request { host, port, method, path, .. } = *request;
    audit!(
        INFO,
        event,
        action = action.as_str(),
        kind = "l7",
        host,
        port,
        policy,
        rule = rule_id,
        reason,
        method,
        path,
        credentials
    );
    if let Some(refusal @ Refusal::CredentialNotBound(_)) = refusal {
        let title = "credential placeholder sent to an endpoint its key is not bound to";
        let mut finding = Event::new(Class::Finding, Activity::CREATE, Severity::High, title);
        finding.verdict = Some(Verdict::Denied);
        finding.finding = Some(Finding { title, kind: "credential_not_bound" });
        finding.dst = Some(Endpoint::host(host, port));
        finding.detail = Some(refusal.reason());
        finding.rule = event.rule;
        audit!(WARN, finding, action = Action::Deny.as_str(), kind = "l7", host, port, reason = refusal.reason());
    }
}

/// A request whose upstream failed: no answer head in time (504) or a broken exchange
/// (502). `kind` is `l7` or `inference`, as in the request's decision event.
pub fn upstream_failed(kind: &'static str, request: &Request<'_>, refusal: &Refusal) {
    let (error, reason) = (refusal.error(), refusal.reason());
    let mut event = request.event(Severity::Low, "upstream exchange failed");
    event.verdict = Some(Verdict::Failed);
    event.detail = Some(reason);
    event.code = Some(error);
    event.unmapped.kind = Some(kind);
    if let Some(http) = &mut event.http {
        http.status = Some(refusal.status().as_u16());
    }
    let Request { host, port, method, path, .. } = *request;
    audit!(WARN, event, action = Action::Error.as_str(), kind, host, port, method, path, error, reason);
}

/// An `inference.local` request refused before any route saw it.
pub fn inference_refused(method: &str, path: &str, refusal: &Refusal) {
    let (verdict, severity) = graded(refusal);
    let mut event = Event::new(Class::Api, Activity::api(method), severity, "inference request refused");
    event.verdict = Some(verdict);
    event.api = Some(Api { method, path, status: Some(refusal.status().as_u16()), ..Api::default() });
    event.detail = Some(refusal.reason());
    event.code = Some(refusal.error());
    event.unmapped.kind = Some("inference");
    let reason = refusal.reason();
    audit!(INFO, event, action = Action::Deny.as_str(), kind = "inference", method, path, reason);
}

/// An `inference.local` request routed and answered: its route, model and provider, the
/// answer's status, the token counts when the answer carried them, and the latency to the
/// end of the answer.
pub fn inference_answered(api: &Api<'_>) {
    let ok = api.status.is_some_and(|s| s < 400);
    let severity = if ok { Severity::Informational } else { Severity::Low };
    let mut event = Event::new(Class::Api, Activity::api(api.method), severity, "inference request routed");
    event.verdict = Some(if ok { Verdict::Allowed } else { Verdict::Failed });
    event.api = Some(*api);
    event.unmapped.kind = Some("inference");
    let (method, path, route, model) = (api.method, api.path, api.route, api.model);
    let tokens = api.tokens.and_then(|t: Tokens| t.total);
    audit!(
        INFO,
        event,
        action = Action::Allow.as_str(),
        kind = "inference",
        route,
        model,
        method,
        path,
        status = api.status,
        latency_ms = api.latency_ms,
        tokens
    );
}

/// A name the policy DNS answered NXDOMAIN (Network Activity Refuse on port 53's client).
pub fn dns_refused(name: &str) {
    let reason = "no network policy allows this name; answered NXDOMAIN";
    let mut event = Event::new(Class::Network, Activity::REFUSE, Severity::Medium, "name refused");
    event.verdict = Some(Verdict::Denied);
    event.dst = Some(Endpoint { hostname: Some(name), ..Endpoint::default() });
    event.detail = Some(reason);
    event.unmapped.kind = Some("dns");
    audit!(INFO, event, action = Action::Deny.as_str(), kind = "dns", host = name, reason);
}
