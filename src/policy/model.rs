//! The normalised sandbox policy: what a validated YAML file (or gateway message) means.
//! Every value here has passed validation; defaults are already applied, hosts are lower
//! case, methods upper case, presets expanded into rules.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;

use super::host::HostPattern;
pub use super::path_scope::PathScope;

/// A whole policy document after validation.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Policy {
    /// Schema version; only `1` exists.
    pub version: u32,
    /// Paths for Landlock (agent mode only).
    pub filesystem_policy: FilesystemPolicy,
    /// How strictly Landlock must be applied (agent mode only).
    pub landlock: LandlockPolicy,
    /// Identity of the workload's processes (agent mode only).
    pub process: ProcessPolicy,
    /// Egress allow-list, keyed by the policy's key in the YAML map (sorted).
    pub network_policies: BTreeMap<String, NetworkPolicy>,
    /// How many `binaries` entries were accepted and ignored (binary identity does not exist here).
    #[serde(skip)]
    pub ignored_binaries: usize,
}

/// `filesystem_policy`: what the workload may read and write once Landlock is on.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FilesystemPolicy {
    /// Also allow read-write access to the working directory. Default false.
    pub include_workdir: bool,
    /// Absolute paths the workload may read (and execute) but not modify.
    pub read_only: Vec<PathBuf>,
    /// Absolute paths the workload may read and modify.
    pub read_write: Vec<PathBuf>,
}

impl FilesystemPolicy {
    /// Landlock is applied only when the policy lists paths.
    pub fn is_empty(&self) -> bool {
        self.read_only.is_empty() && self.read_write.is_empty() && !self.include_workdir
    }
}

/// `landlock`: what to do when the kernel cannot enforce the filesystem policy.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LandlockPolicy {
    /// `best_effort` (default) or `hard_requirement`.
    pub compatibility: Compatibility,
}

/// `landlock.compatibility`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compatibility {
    /// Warn and run on without what the kernel lacks.
    #[default]
    BestEffort,
    /// Refuse to start when the kernel cannot enforce every rule.
    HardRequirement,
}

impl Compatibility {
    /// The value as written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::BestEffort => "best_effort",
            Compatibility::HardRequirement => "hard_requirement",
        }
    }
}

/// `process`: the identity children run as. Root is refused by validation.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ProcessPolicy {
    /// User name or numeric uid; `None` means the default user `sandbox`.
    pub run_as_user: Option<String>,
    /// Group name or numeric gid; `None` means the user's primary group.
    pub run_as_group: Option<String>,
}

/// `network_policies.<key>`: one named group of allowed endpoints.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NetworkPolicy {
    /// Display name; defaults to the map key.
    pub name: String,
    /// At least one endpoint.
    pub endpoints: Vec<Endpoint>,
}

/// One allowed destination and what may be sent to it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Endpoint {
    /// Exact host, IP literal or label glob.
    pub host: HostPattern,
    /// Allowed destination ports (from `port` or `ports`), sorted, no duplicates.
    pub ports: Vec<u16>,
    /// `protocol`: `rest`/`websocket` inspect requests; `tcp` and `None` relay bytes (L4).
    /// Only `tcp` admits arbitrary bytes on transparent connections (docs/transparent.md).
    pub protocol: Option<Protocol>,
    /// Whether CONNECT tunnels to this endpoint are intercepted (`terminate`) or relayed (`skip`).
    pub tls: TlsMode,
    /// `enforce` (default; a denied request gets 403) or `audit` (forwarded, logged).
    pub enforcement: Enforcement,
    /// The `access` preset the rules came from, if any (kept for display).
    pub access: Option<Access>,
    /// Allow rules (the preset's expansion when `access` is used).
    pub rules: Vec<L7Rule>,
    /// Deny rules; a matching deny wins over any allow.
    pub deny_rules: Vec<L7Rule>,
    /// Private address ranges this endpoint may resolve to (SSRF exceptions).
    pub allowed_ips: Vec<IpNet>,
    /// Accept `%2F` in request paths (off by default: it hides path segments from rules).
    pub allow_encoded_slash: bool,
    /// `credential_binding.provider`: the provider (a `[name]` section of the local provider
    /// env file) whose credentials may be swapped into requests to this endpoint. Default none.
    pub credential_binding: Option<String>,
    /// `path`: where on this endpoint its bound credentials may be used. Default: every path.
    pub path: Option<PathScope>,
    /// `request_body_credential_rewrite`: placeholders in JSON, form and `text/*` request
    /// bodies (up to 256 KiB) are swapped too. Default false.
    pub request_body_credential_rewrite: bool,
}

/// A provider name: what a `[NAME]` line of the provider env file and a
/// `credential_binding.provider` hold (letters, digits, `_`, `-`, `.`; at most 128).
pub fn is_provider_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl Endpoint {
    /// Requests to this endpoint are judged one by one (`rest` or `websocket`).
    pub fn inspects(&self) -> bool {
        self.protocol.is_some_and(Protocol::inspects)
    }

    /// Requests on a CONNECT tunnel to this endpoint are decrypted and judged one by one.
    pub fn intercepts_tls(&self) -> bool {
        self.inspects() && self.tls == TlsMode::Terminate
    }

    /// `protocol: tcp`: any bytes may be relayed, also on transparent connections.
    pub fn is_raw_tcp(&self) -> bool {
        self.protocol == Some(Protocol::Tcp)
    }
}

/// `protocol`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP requests judged by the L7 rules.
    Rest,
    /// Like `rest`; the upgrade request is judged, then frames are relayed.
    Websocket,
    /// Raw TCP: bytes relayed, never parsed; the one kind a transparent client may send
    /// anything to (database drivers, SSH, any protocol).
    Tcp,
}

impl Protocol {
    /// Whether requests are inspected (HTTP judged by the L7 rules).
    pub fn inspects(self) -> bool {
        matches!(self, Protocol::Rest | Protocol::Websocket)
    }

    /// The protocol's name as written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Rest => "rest",
            Protocol::Websocket => "websocket",
            Protocol::Tcp => "tcp",
        }
    }
}

/// `tls`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Intercept TLS when the endpoint has a protocol (the default).
    #[default]
    Terminate,
    /// Never intercept: the client talks TLS to the real server.
    Skip,
}

/// `enforcement`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// A denied request is answered 403 (the default: fail closed).
    #[default]
    Enforce,
    /// A denied request is forwarded and logged as a would-be denial.
    Audit,
}

impl Enforcement {
    /// The value as written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Audit => "audit",
        }
    }
}

/// `access` presets.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// GET, HEAD, OPTIONS on any path.
    ReadOnly,
    /// read-only plus POST, PUT, PATCH.
    ReadWrite,
    /// Any method on any path.
    Full,
}

impl Access {
    /// The preset's name as written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
            Access::Full => "full",
        }
    }

    /// The methods the preset allows; empty means any method.
    pub fn methods(self) -> &'static [&'static str] {
        match self {
            Access::ReadOnly => &["GET", "HEAD", "OPTIONS"],
            Access::ReadWrite => &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"],
            Access::Full => &[],
        }
    }
}

/// One allow or deny rule: all of its parts must match.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct L7Rule {
    /// Upper-case methods; empty means any method.
    pub methods: Vec<String>,
    /// Path glob: `*` within one segment, `**` across segments.
    pub path: String,
    /// Query parameter name to globs; every value of the parameter must match one glob.
    pub query: BTreeMap<String, Vec<String>>,
}

impl L7Rule {
    /// A rule that matches every request with one of `methods` (any when empty).
    pub fn any_path(methods: &[&str]) -> Self {
        L7Rule {
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            path: "**".to_owned(),
            query: BTreeMap::new(),
        }
    }
}
