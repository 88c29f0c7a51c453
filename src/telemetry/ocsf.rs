//! Audit events as OCSF 1.8.0: one [`Event`] type for the seven classes the sandbox emits
//! (network, HTTP, SSH, process, detection finding, config state, API), its one-line
//! shorthand ([`shorthand`]) and its JSON lines ([`sink`]). docs/audit.md maps each event.

mod json;
mod kinds;
mod scope;
mod shorthand;
mod sink;

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

pub use kinds::{Activity, Class, Severity, Verdict};
pub use scope::{Scope, inherit, scoped};
pub use sink::{Identity, Output, SinkError, emit, install};

/// The OCSF version every event declares and is validated against.
pub const VERSION: &str = "1.8.0";

/// One OCSF event. Built by the emitting module, written by [`emit`]: the base attributes
/// and `metadata`/`device` are filled in at serialization; every other attribute is set
/// only where the class has it. No attribute ever holds a query, a header or a secret.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    /// The class.
    pub class: Class,
    /// `activity_id` / `activity_name`.
    pub activity: Activity,
    /// `severity_id`.
    pub severity: Severity,
    /// `action_id`, `disposition_id` and `status_id`, for security controls.
    pub verdict: Option<Verdict>,
    /// `status_id` / `status` without a control (config, process, API): success or failure.
    pub success: Option<bool>,
    /// `message`: what happened, in a few words.
    pub message: &'a str,
    /// `status_detail`: why (the reason of a refusal).
    pub detail: Option<&'a str>,
    /// `status_code`: the HTTP status or the error code.
    pub code: Option<&'a str>,
    /// `src_endpoint`.
    pub src: Option<Endpoint<'a>>,
    /// `dst_endpoint`.
    pub dst: Option<Endpoint<'a>>,
    /// `firewall_rule`: the policy and the rule that decided.
    pub rule: Option<Rule<'a>>,
    /// `traffic`: `bytes_out` (client to upstream) and `bytes_in` (back).
    pub traffic: Option<(u64, u64)>,
    /// `duration`, ms: how long the connection or session lasted.
    pub duration_ms: Option<u64>,
    /// `http_request` and `http_response`.
    pub http: Option<Http<'a>>,
    /// SSH `auth_type_id` (6 Public Key) and the user (`actor.user.name`).
    pub ssh_user: Option<&'a str>,
    /// `process`: pid and name (and `exit_code` when it ended).
    pub process: Option<Process<'a>>,
    /// `finding_info`: title and type; the finding is an alert.
    pub finding: Option<Finding<'a>>,
    /// `state_id` / `state` of a config change: 1 Disabled, 2 Enabled, 99 with a name.
    pub state: Option<(u32, &'a str)>,
    /// `api`, `ai_model` and `message_context`: an inference call.
    pub api: Option<Api<'a>>,
    /// `unmapped`: the sandbox's own fields (rule kinds, outcome, generation, key names).
    pub unmapped: Unmapped<'a>,
}

impl<'a> Event<'a> {
    /// An event of `class` with nothing but its activity, severity and message.
    pub fn new(class: Class, activity: Activity, severity: Severity, message: &'a str) -> Self {
        Event {
            class,
            activity,
            severity,
            verdict: None,
            success: None,
            message,
            detail: None,
            code: None,
            src: None,
            dst: None,
            rule: None,
            traffic: None,
            duration_ms: None,
            http: None,
            ssh_user: None,
            process: None,
            finding: None,
            state: None,
            api: None,
            unmapped: Unmapped::default(),
        }
    }

    /// `type_uid`: class times 100 plus activity.
    pub fn type_uid(&self) -> u32 {
        self.class.uid() * 100 + self.activity.0
    }

    /// The one-line shorthand pushed to the gateway and shown in text logs.
    pub fn shorthand(&self) -> shorthand::Shorthand<'_, 'a> {
        shorthand::Shorthand(self)
    }

    /// `status_id` and `status`. A finding's status is its own state: New.
    fn status(&self) -> Option<(u32, &'static str)> {
        if self.class == Class::Finding {
            return Some((1, "New"));
        }
        let success = self.verdict.map(Verdict::success).or(self.success)?;
        Some(if success { (1, "Success") } else { (2, "Failure") })
    }
}

/// A network endpoint: a host name or an address, and a port.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Endpoint<'a> {
    /// `hostname`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<&'a str>,
    /// `ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl<'a> Endpoint<'a> {
    /// A destination as asked: an address when `host` is one, else a host name.
    pub fn host(host: &'a str, port: u16) -> Self {
        match host.parse::<IpAddr>() {
            Ok(ip) => Endpoint { hostname: None, ip: Some(ip), port: Some(port) },
            Err(_) => Endpoint { hostname: Some(host), ip: None, port: Some(port) },
        }
    }

    /// A socket address.
    pub fn addr(addr: SocketAddr) -> Self {
        Endpoint { hostname: None, ip: Some(addr.ip().to_canonical()), port: Some(addr.port()) }
    }
}

/// The policy (`firewall_rule.name`) and endpoint rule (`firewall_rule.uid`) that decided.
#[derive(Clone, Copy, Debug)]
pub struct Rule<'a> {
    /// The policy's name.
    pub policy: &'a str,
    /// The rule's id, like `github.endpoints[0]`.
    pub rule: Option<&'a str>,
}

/// One HTTP exchange: no query, no header.
#[derive(Clone, Copy, Debug)]
pub struct Http<'a> {
    /// `http_method`.
    pub method: &'a str,
    /// `url.scheme`: `http` or `https`.
    pub scheme: &'static str,
    /// `url.hostname`.
    pub host: &'a str,
    /// `url.port`.
    pub port: u16,
    /// `url.path`, without the query.
    pub path: &'a str,
    /// `http_response.code`, when there is an answer.
    pub status: Option<u16>,
}

/// A process: `pid`, `name`, and `exit_code` when it ended.
#[derive(Clone, Copy, Debug)]
pub struct Process<'a> {
    /// The pid.
    pub pid: Option<u32>,
    /// The program's name (never its arguments).
    pub name: &'a str,
    /// The exit code, for a Terminate.
    pub exit_code: Option<i32>,
}

/// What a finding found.
#[derive(Clone, Copy, Debug)]
pub struct Finding<'a> {
    /// `finding_info.title`.
    pub title: &'a str,
    /// `finding_info.types[0]`, like `bypass` or `credential_not_bound`.
    pub kind: &'static str,
}

/// An inference call: route, model, provider, token counts and latency.
#[derive(Clone, Copy, Debug, Default)]
pub struct Api<'a> {
    /// `api.operation`: method and path.
    pub method: &'a str,
    /// The path, with the method in `api.operation`.
    pub path: &'a str,
    /// `api.service.name`: the route.
    pub route: Option<&'a str>,
    /// `ai_model.name`.
    pub model: Option<&'a str>,
    /// `ai_model.ai_provider`.
    pub provider: Option<&'a str>,
    /// `message_context`: prompt, completion, total tokens, when the answer carried them.
    pub tokens: Option<Tokens>,
    /// `http_response.code` of the answer, when there was one.
    pub status: Option<u16>,
    /// Latency to the end of the answer, ms (`duration`).
    pub latency_ms: Option<u64>,
}

/// Token counts from an inference answer's `usage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Prompt (input) tokens.
    pub prompt: Option<u64>,
    /// Completion (output) tokens.
    pub completion: Option<u64>,
    /// Total tokens.
    pub total: Option<u64>,
}

/// The sandbox's own fields, in `unmapped`: never a value from a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Unmapped<'a> {
    /// How the destination was reached: `connect`, `http`, `l7`, `transparent`, `dns`, `inference`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'a str>,
    /// How a connection ended: `eof`, `idle`, `error`, `aborted`, `shutdown`, `quarantined`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'a str>,
    /// Requests an inspected connection carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// The policy generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Credential key names (never values) swapped into a request, or without a binding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<&'a str>,
    /// Where a config came from: `file`, `gateway`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
}

impl Unmapped<'_> {
    fn is_empty(&self) -> bool {
        *self == Unmapped::default()
    }
}
