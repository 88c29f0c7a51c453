//! The configuration layers. Each struct is both a set of command-line flags (with their
//! `OPENSHELL_*` environment variables, which clap reads) and a TOML table, so a setting
//! has one definition, one `///` line and one name everywhere. Every field is optional
//! here; [`super::resolve`] applies precedence (flag > env > file) and the defaults.

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;

use clap::Args;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `[log]`: how the supervisor logs.
#[derive(Args, Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogLayer {
    /// Log line format: `text`, `json` (one JSON object per line) or `ocsf` (audit events as
    /// OCSF 1.8.0 JSON lines, other lines as JSON). Default: text.
    #[arg(long, global = true, env = "OPENSHELL_LOG_FORMAT", value_name = "FORMAT")]
    #[serde(rename = "format", skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log filter in tracing's EnvFilter syntax, like `info` or `openshell_sandbox=debug`. Default: info.
    #[arg(long, global = true, env = "OPENSHELL_LOG_LEVEL", value_name = "FILTER")]
    #[serde(rename = "level", skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// File that audit events are appended to as OCSF JSON lines, whatever the log format. Default: none.
    #[arg(long, global = true, env = "OPENSHELL_OCSF_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsf_file: Option<PathBuf>,
}

/// Log line format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// Audit events as OCSF 1.8.0 JSON lines (docs/audit.md); other lines as JSON.
    Ocsf,
}

/// What a policy source does with a new policy that fails validation (the candidate is
/// always rejected whole).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationFailureMode {
    /// Quarantine: the policy in force is deactivated too, and all egress is denied (naming
    /// the failure) until a valid policy loads.
    #[default]
    #[value(name = "fail_closed")]
    FailClosed,
    /// The last valid policy stays in force.
    #[value(name = "retain_last_valid")]
    RetainLastValid,
}

impl ValidationFailureMode {
    /// The gateway's `policy_validation_failure_mode`: empty means `fail_closed`, and so does
    /// a value this supervisor does not know (`Err` carries it, to be logged).
    pub fn from_gateway(value: &str) -> Result<Self, (Self, String)> {
        match value {
            "" | "fail_closed" => Ok(ValidationFailureMode::FailClosed),
            "retain_last_valid" => Ok(ValidationFailureMode::RetainLastValid),
            other => Err((ValidationFailureMode::FailClosed, other.to_owned())),
        }
    }

    /// The name used in settings and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationFailureMode::FailClosed => "fail_closed",
            ValidationFailureMode::RetainLastValid => "retain_last_valid",
        }
    }
}

/// `[sandbox]`: settings both modes share.
#[derive(Args, Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommonLayer {
    /// Shared TLS volume: the proxy writes the CA, child-env.json and .ready here; the agent reads them. Default: /openshell-tls.
    #[arg(long, env = "OPENSHELL_TLS_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
    /// Local policy YAML; when set it wins over the gateway's policy. Default: none (policy from the gateway).
    #[arg(long, env = "OPENSHELL_POLICY_DATA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    /// Rego file replacing the built-in rules (policies/sandbox-policy.rego). Default: the built-in rules.
    #[arg(long, env = "OPENSHELL_POLICY_RULES", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_rules: Option<PathBuf>,
    /// Seconds between policy polls (gateway) or policy file checks (local). Default: 10.
    #[arg(long, env = "OPENSHELL_POLICY_POLL_INTERVAL_SECS", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_poll_interval_secs: Option<NonZeroU64>,
}

/// `[gateway]`: how to reach the OpenShell gateway. Secrets are never here: the token
/// comes from `OPENSHELL_SANDBOX_TOKEN` or the file named by `token_file`.
#[derive(Args, Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayLayer {
    /// Gateway gRPC endpoint, `http://host:port` or `https://host:port`. Default: none (no gateway).
    #[arg(long, env = "OPENSHELL_ENDPOINT", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// CA certificate (PEM) that is the only trusted root for an https endpoint. Default: none.
    #[arg(long = "gateway-tls-ca", env = "OPENSHELL_TLS_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to an https endpoint. Default: none.
    #[arg(long = "gateway-tls-cert", env = "OPENSHELL_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Path of the client certificate's private key (PEM). Default: none.
    #[arg(long = "gateway-tls-key", env = "OPENSHELL_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// TLS server name to verify instead of the endpoint's host. Default: the endpoint's host.
    #[arg(long = "gateway-tls-server-name", env = "OPENSHELL_GATEWAY_TLS_SERVER_NAME", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// File holding the sandbox JWT (read and trimmed on every call). Default: none; OPENSHELL_SANDBOX_TOKEN wins.
    #[arg(long = "sandbox-token-file", env = "OPENSHELL_SANDBOX_TOKEN_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// This sandbox's id, sent with every gateway call. Required with an endpoint.
    #[arg(long, env = "OPENSHELL_SANDBOX_ID", value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// This sandbox's name, for logs. Default: none.
    #[arg(long, env = "OPENSHELL_SANDBOX", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_name: Option<String>,
}

/// `[proxy]`: the egress proxy sidecar.
#[derive(Args, Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyLayer {
    /// Address of the HTTP CONNECT and forward proxy. Default: 0.0.0.0:3128.
    #[arg(long, env = "OPENSHELL_PROXY_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Address of the TCP forward to the gateway (bound only with a gateway endpoint). Default: 0.0.0.0:8081.
    #[arg(long, env = "OPENSHELL_FORWARD_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_listen: Option<SocketAddr>,
    /// Private state (the CA key, mode 0600); never the shared TLS dir. Default: /var/lib/openshell/proxy.
    #[arg(long, env = "OPENSHELL_PROXY_STATE_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Development and tests only: allow upstreams on loopback addresses. Default: false.
    #[arg(long, env = "OPENSHELL_ALLOW_LOOPBACK_UPSTREAMS", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_loopback_upstreams: Option<bool>,
    /// Comma-separated CIDRs of clients allowed to connect; others are closed at accept. Default: any client.
    #[arg(long, env = "OPENSHELL_PROXY_ALLOWED_CLIENTS", value_name = "CIDRS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_clients: Option<Vec<IpNet>>,
    /// Hosts tried in order when the gateway endpoint's host does not resolve or refuses. Default: host.containers.internal,host.docker.internal.
    #[arg(long, env = "OPENSHELL_GATEWAY_FALLBACK_HOSTS", value_name = "HOSTS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_fallback_hosts: Option<Vec<String>>,
    /// Local provider credentials: `[provider]` sections of `KEY=VALUE` lines, each key sent only where the policy's `credential_binding` names its provider; reloaded on change. Default: none.
    #[arg(long, env = "OPENSHELL_PROVIDER_ENV_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_env_file: Option<PathBuf>,
    /// What a changed local policy file that fails validation does: `fail_closed` denies all egress until the file is valid again, `retain_last_valid` keeps the last valid policy. (A gateway's policy follows the gateway's own setting.) Default: fail_closed.
    #[arg(long, env = "OPENSHELL_POLICY_VALIDATION_FAILURE_MODE", value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_validation_failure_mode: Option<ValidationFailureMode>,
    /// Local inference routes (YAML) for inference.local. Default: none.
    #[arg(long, env = "OPENSHELL_INFERENCE_ROUTES", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference_routes: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for upstream TLS, besides the system roots. Default: none.
    #[arg(long, env = "OPENSHELL_UPSTREAM_CA_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ca_file: Option<PathBuf>,
    /// Largest request head (request line and headers) accepted, in bytes; larger gets 431. Default: 65536.
    #[arg(long, env = "OPENSHELL_PROXY_MAX_HEAD_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_head_bytes: Option<NonZeroUsize>,
    /// Most client connections served at once; one more gets a fast 503. Default: 4096.
    #[arg(long, env = "OPENSHELL_PROXY_MAX_CONNECTIONS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<NonZeroUsize>,
    /// Seconds a client has to send a complete request head (slowloris guard). Default: 10.
    #[arg(long, env = "OPENSHELL_PROXY_HEADER_TIMEOUT_SECS", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout_secs: Option<NonZeroU64>,
    /// Seconds a connection or tunnel may stay silent both ways before it is closed. Default: 300.
    #[arg(long, env = "OPENSHELL_PROXY_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<NonZeroU64>,
    /// Seconds to connect to an upstream before answering 504. Default: 10.
    #[arg(long, env = "OPENSHELL_PROXY_CONNECT_TIMEOUT_SECS", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<NonZeroU64>,
    /// Seconds to wait for an upstream's response head, once the request body is sent, before
    /// answering 504. Default: 120.
    #[arg(long, env = "OPENSHELL_PROXY_RESPONSE_TIMEOUT_SECS", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_timeout_secs: Option<NonZeroU64>,
    /// Seconds open connections may drain after SIGTERM before they are cut. Default: 10.
    #[arg(long, env = "OPENSHELL_PROXY_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_secs: Option<NonZeroU64>,
    /// Address (UDP and TCP) of the policy DNS for clients that ignore the proxy, like 10.89.10.2:53; with it the proxy also takes 198.18.0.0/15 as its own (needs CAP_NET_ADMIN once) and serves the policy's ports transparently (docs/transparent.md). Default: none (off).
    #[arg(long, env = "OPENSHELL_DNS_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_listen: Option<SocketAddr>,
    /// Most names the policy DNS holds a synthetic address for at once; when all are in use, new names get SERVFAIL. Default: 16384.
    #[arg(long, env = "OPENSHELL_DNS_MAX_NAMES", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_max_names: Option<NonZeroUsize>,
    /// Seconds a name keeps its synthetic address after its last answer or connection; only then may the address go to another name. Default: 900.
    #[arg(long, env = "OPENSHELL_DNS_NAME_LIFETIME_SECS", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name_lifetime_secs: Option<NonZeroU64>,
}

/// `[agent_net]`: the agent's network holder (`openshell-sandbox agent-net`).
#[derive(Args, Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentNetLayer {
    /// The proxy's address on the internal network: the agent's route to 198.18.0.0/15 goes through it. Required.
    #[arg(long, env = "OPENSHELL_AGENT_NET_VIA", value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<std::net::Ipv4Addr>,
}

/// `[agent]`: the agent supervisor.
#[derive(Args, Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentLayer {
    /// Unix socket of the SSH server (mode 0600; the gateway's relays arrive here). Default: /run/openshell/ssh.sock.
    #[arg(long, env = "OPENSHELL_SSH_SOCKET_PATH", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_socket: Option<PathBuf>,
    /// Optional TCP address for local SSH with public keys from --authorized-keys. Default: none.
    #[arg(long, env = "OPENSHELL_SSH_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_listen: Option<SocketAddr>,
    /// authorized_keys file for the TCP SSH listener (required with --ssh-listen). Default: none.
    #[arg(long, env = "OPENSHELL_SSH_AUTHORIZED_KEYS", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<PathBuf>,
    /// Ed25519 host key (OpenSSH format); created with mode 0600 when missing. Default: a fresh key each start.
    #[arg(long = "ssh-host-key", env = "OPENSHELL_SSH_HOST_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_key: Option<PathBuf>,
    /// Seconds to wait for the proxy's .ready before exiting 69. Default: 30.
    #[arg(long, env = "OPENSHELL_PROXY_READY_TIMEOUT_SECS", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_timeout_secs: Option<NonZeroU64>,
    /// seccomp for children: `off`, `baseline` (policies/seccomp-baseline.json) or a profile path. Default: off.
    #[arg(long, env = "OPENSHELL_SECCOMP", value_name = "PROFILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
    /// Working directory of the workload and SSH sessions. Default: the supervisor's working directory.
    #[arg(long, env = "OPENSHELL_WORKDIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
}

/// The TOML file: one table per layer. Unknown keys are errors.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// `[log]`
    pub log: LogLayer,
    /// `[sandbox]`
    pub sandbox: CommonLayer,
    /// `[gateway]`
    pub gateway: GatewayLayer,
    /// `[proxy]`
    pub proxy: ProxyLayer,
    /// `[agent]`
    pub agent: AgentLayer,
    /// `[agent_net]`
    pub agent_net: AgentNetLayer,
}
