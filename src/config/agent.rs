//! Agent-mode settings, resolved: the SSH server, readiness wait, seccomp choice and
//! the workload command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::layers::{AgentLayer, FileConfig, GatewayLayer};
use super::{CommonConfig, ConfigError, GatewayConfig, as_secs, secs};

/// Default SSH socket.
pub const DEFAULT_SSH_SOCKET: &str = "/run/openshell/ssh.sock";

/// Which seccomp filter children get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompChoice {
    /// No filter (the default: seccomp is opt-in).
    Off,
    /// The built-in `policies/seccomp-baseline.json`.
    Baseline,
    /// A profile file in the same JSON format.
    Profile(PathBuf),
}

impl SeccompChoice {
    fn parse(value: &str) -> Self {
        match value.trim() {
            "" | "off" | "none" | "false" | "0" => SeccompChoice::Off,
            "baseline" | "on" | "true" | "1" => SeccompChoice::Baseline,
            path => SeccompChoice::Profile(PathBuf::from(path)),
        }
    }
}

/// Everything agent mode needs.
#[derive(Clone, Debug, Serialize)]
pub struct AgentConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// The gateway (through the proxy's forward), when an endpoint is configured.
    pub gateway: Option<GatewayConfig>,
    /// SSH Unix socket. Default /run/openshell/ssh.sock.
    pub ssh_socket: PathBuf,
    /// Optional TCP SSH listener (public-key auth only).
    pub ssh_listen: Option<SocketAddr>,
    /// authorized_keys for the TCP listener.
    pub authorized_keys: Option<PathBuf>,
    /// Host key file; `None` means a fresh key each start.
    pub host_key: Option<PathBuf>,
    /// Wait for the proxy's .ready. Default 30 s.
    #[serde(serialize_with = "as_secs")]
    pub ready_timeout: Duration,
    /// seccomp for children. Default off.
    pub seccomp: SeccompChoice,
    /// Working directory of children; `None` means the supervisor's.
    pub workdir: Option<PathBuf>,
    /// Nested mode: no Landlock, seccomp or privilege drop.
    pub nested: bool,
    /// The workload command (after `--`); empty means serve SSH until SIGTERM.
    pub command: Vec<String>,
}

impl AgentConfig {
    /// Applies precedence and defaults.
    pub fn resolve(
        common: CommonConfig,
        gateway_cli: &GatewayLayer,
        cli: &AgentLayer,
        file: &FileConfig,
        env_token: Option<String>,
        nested: bool,
        command: Vec<String>,
    ) -> Result<Self, ConfigError> {
        let gateway = GatewayConfig::resolve(gateway_cli, &file.gateway, env_token)?;
        let f = &file.agent;
        let ssh_listen = cli.ssh_listen.or(f.ssh_listen);
        let authorized_keys = cli.authorized_keys.clone().or_else(|| f.authorized_keys.clone());
        if ssh_listen.is_some() && authorized_keys.is_none() {
            return Err(ConfigError::Missing {
                message: "--ssh-listen needs --authorized-keys (OPENSHELL_SSH_AUTHORIZED_KEYS): the TCP listener accepts public keys only".into(),
            });
        }
        Ok(AgentConfig {
            common,
            gateway,
            ssh_socket: cli
                .ssh_socket
                .clone()
                .or_else(|| f.ssh_socket.clone())
                .unwrap_or_else(|| DEFAULT_SSH_SOCKET.into()),
            ssh_listen,
            authorized_keys,
            host_key: cli.host_key.clone().or_else(|| f.host_key.clone()),
            ready_timeout: secs(cli.ready_timeout_secs.or(f.ready_timeout_secs), 30),
            seccomp: cli.seccomp.as_deref().or(f.seccomp.as_deref()).map_or(SeccompChoice::Off, SeccompChoice::parse),
            workdir: cli.workdir.clone().or_else(|| f.workdir.clone()),
            nested,
            command,
        })
    }
}
