//! Audit events as OCSF 1.8.0: one [`Event`] type for the seven classes the sandbox emits
//! (network, HTTP, SSH, process, detection finding, config state, API), its one-line
//! shorthand ([`shorthand`]) and its JSON lines ([`sink`]). docs/audit.md maps each event.

mod json;
mod scope;
mod shorthand;
mod sink;

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

pub use scope::{Scope, inherit, scoped};
pub use sink::{Identity, Output, SinkError, emit, install};

/// The OCSF version every event declares and is validated against.
pub const VERSION: &str = "1.8.0";

/// The classes the sandbox emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Network Activity (4001): proxy connections, tunnels, DNS refusals.
    Network,
    /// HTTP Activity (4002): absolute-form and inspected requests.
    Http,
    /// SSH Activity (4007): the agent's SSH server.
    Ssh,
    /// Process Activity (1007): the workload and SSH children.
    Process,
    /// Detection Finding (2004): bypass attempts, placeholders sent where they are not bound.
    Finding,
    /// Device Config State Change (5019): policy, credentials and routes loaded or rejected.
    Config,
    /// API Activity (6003): inference calls.
    Api,
}

impl Class {
    /// `class_uid`.
    pub fn uid(self) -> u32 {
        match self {
            Class::Network => 4001,
            Class::Http => 4002,
            Class::Ssh => 4007,
            Class::Process => 1007,
            Class::Finding => 2004,
            Class::Config => 5019,
            Class::Api => 6003,
        }
    }

    /// `class_name`.
    pub fn name(self) -> &'static str {
        match self {
            Class::Network => "Network Activity",
            Class::Http => "HTTP Activity",
            Class::Ssh => "SSH Activity",
            Class::Process => "Process Activity",
            Class::Finding => "Detection Finding",
            Class::Config => "Device Config State Change",
            Class::Api => "API Activity",
        }
    }

    /// `category_uid` and `category_name`.
    pub fn category(self) -> (u32, &'static str) {
        match self {
            Class::Network | Class::Http | Class::Ssh => (4, "Network Activity"),
            Class::Process => (1, "System Activity"),
            Class::Finding => (2, "Findings"),
            Class::Config => (5, "Discovery"),
            Class::Api => (6, "Application Activity"),
        }
    }

    /// The profiles an event of this class declares in `metadata.profiles` (those of the
    /// OCSF 1.8.0 profiles this class takes; tests/ocsf/README.md).
    pub fn profiles(self) -> &'static [&'static str] {
        match self {
            Class::Network | Class::Http | Class::Ssh => &["host", "security_control", "container", "network_proxy"],
            Class::Process | Class::Finding | Class::Config => &["host", "security_control", "container"],
            // `ai_operation` brings `ai_model` and `message_context` (token counts).
            Class::Api => &["host", "security_control", "container", "ai_operation"],
        }
    }
}

/// `activity_id` and `activity_name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity(pub u32, pub &'static str);

impl Activity {
    /// Network and SSH: a connection opened (or its opening was decided).
    pub const OPEN: Activity = Activity(1, "Open");
    /// Network and SSH: a connection closed.
    pub const CLOSE: Activity = Activity(2, "Close");
    /// Network and SSH: a connection cut.
    pub const RESET: Activity = Activity(3, "Reset");
    /// Network and SSH: a connection that could not be made.
    pub const FAIL: Activity = Activity(4, "Fail");
    /// Network and SSH: a connection refused.
    pub const REFUSE: Activity = Activity(5, "Refuse");
    /// Process: launched.
    pub const LAUNCH: Activity = Activity(1, "Launch");
    /// Process: ended.
    pub const TERMINATE: Activity = Activity(2, "Terminate");
    /// Finding: created.
    pub const CREATE: Activity = Activity(1, "Create");
    /// Config state: logged.
    pub const LOG: Activity = Activity(1, "Log");

    /// HTTP Activity's activity for a method (`Other` for methods OCSF does not list).
    pub fn http(method: &str) -> Activity {
        match method {
            "CONNECT" => Activity(1, "Connect"),
            "DELETE" => Activity(2, "Delete"),
            "GET" => Activity(3, "Get"),
            "HEAD" => Activity(4, "Head"),
            "OPTIONS" => Activity(5, "Options"),
            "POST" => Activity(6, "Post"),
            "PUT" => Activity(7, "Put"),
            "TRACE" => Activity(8, "Trace"),
            "PATCH" => Activity(9, "Patch"),
            _ => Activity(99, "Other"),
        }
    }

    /// API Activity's activity for an HTTP method: reads are Read, the rest Create.
    pub fn api(method: &str) -> Activity {
        match method {
            "GET" | "HEAD" => Activity(2, "Read"),
            "PUT" | "PATCH" => Activity(3, "Update"),
            "DELETE" => Activity(4, "Delete"),
            _ => Activity(1, "Create"),
        }
    }
}

/// `severity_id`, as OpenShell grades: allowed Informational, operational trouble Low,
/// denials Medium, findings High.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// 1: allowed, successful.
    Informational = 1,
    /// 2: operational trouble (an upstream failed, a config note).
    Low = 2,
    /// 3: a denial, a policy violation.
    Medium = 3,
    /// 4: a security finding, egress quarantined.
    High = 4,
}

impl Severity {
    /// `severity`.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Informational => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
        }
    }
}

/// The outcome triple of a security control: `action_id`, `disposition_id`, `status_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let through: action Allowed, disposition Allowed, status Success.
    Allowed,
    /// Refused by policy: action Denied, disposition Blocked, status Failure.
    Denied,
    /// A would-be denial let through under `enforcement: audit`: action Observed,
    /// disposition Detected, status Success.
    Observed,
    /// Refused for its form: action Denied, disposition Rejected, status Failure.
    Rejected,
    /// Let through, then the upstream failed: action Allowed, disposition Error, status Failure.
    Failed,
}

impl Verdict {
    fn action(self) -> (u32, &'static str) {
        match self {
            Verdict::Allowed | Verdict::Failed => (1, "Allowed"),
            Verdict::Denied | Verdict::Rejected => (2, "Denied"),
            Verdict::Observed => (3, "Observed"),
        }
    }

    fn disposition(self) -> (u32, &'static str) {
        match self {
            Verdict::Allowed => (1, "Allowed"),
            Verdict::Denied => (2, "Blocked"),
            Verdict::Observed => (15, "Detected"),
            Verdict::Rejected => (25, "Rejected"),
            Verdict::Failed => (27, "Error"),
        }
    }

    fn success(self) -> bool {
        matches!(self, Verdict::Allowed | Verdict::Observed)
    }
}

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
    /// `traffic` (`bytes_out` client to upstream, `bytes_in` back) and `duration` (ms).
    pub traffic: Option<(u64, u64, u64)>,
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
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Unmapped<'a> {
    /// How the destination was reached: `connect`, `http`, `l7`, `transparent`, `dns`, `inference`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'a str>,
    /// The refusal's error code, like `policy_denied`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
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
        matches!(
            self,
            Unmapped {
                kind: None,
                error: None,
                outcome: None,
                requests: None,
                generation: None,
                credentials: None,
                source: None
            }
        )
    }
}
