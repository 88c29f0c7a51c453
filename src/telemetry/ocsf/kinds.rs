//! The OCSF enumerations an [`super::Event`] is made of: its class (with category and
//! profiles), activity, severity, and the verdict of a security control (`action_id`,
//! `disposition_id`, `status_id`).

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
    /// Every class, in a fixed order.
    pub const ALL: [Class; 7] =
        [Class::Network, Class::Http, Class::Ssh, Class::Process, Class::Finding, Class::Config, Class::Api];

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
    pub(super) fn action(self) -> (u32, &'static str) {
        match self {
            Verdict::Allowed | Verdict::Failed => (1, "Allowed"),
            Verdict::Denied | Verdict::Rejected => (2, "Denied"),
            Verdict::Observed => (3, "Observed"),
        }
    }

    pub(super) fn disposition(self) -> (u32, &'static str) {
        match self {
            Verdict::Allowed => (1, "Allowed"),
            Verdict::Denied => (2, "Blocked"),
            Verdict::Observed => (15, "Detected"),
            Verdict::Rejected => (25, "Rejected"),
            Verdict::Failed => (27, "Error"),
        }
    }

    pub(super) fn success(self) -> bool {
        matches!(self, Verdict::Allowed | Verdict::Observed)
    }
}
