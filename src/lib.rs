//! `openshell-sandbox`: the sandbox supervisor of the OpenShell proxy-sidecar topology.
//! One binary, two roles: the egress proxy sidecar (`proxy`) and the agent supervisor
//! (`agent`). This root wires the command line to the modes and maps errors to the exit
//! codes ([`Exit`]; docs/architecture.md, "Exit codes").

#![deny(unsafe_code)]

pub mod agent;
pub mod agent_net;
pub mod cli;
pub mod config;
mod exit;
pub mod gateway;
mod health;
pub mod policy;
mod policy_cmd;
pub mod proxy;
pub mod route;
pub mod sandbox;
pub mod shutdown;
pub mod telemetry;
pub mod volume;
pub mod watch;

pub use exit::{Exit, ExitStatus};

use cli::{AgentArgs, Cli, Command, Mode, ModeCommand, ProxyArgs};
use config::layers::LogLayer;
use config::{AgentConfig, CommonConfig, ConfigError, FileConfig, ProxyConfig};

/// Everything that can end the process with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad policy or rules.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// Logging could not be set up.
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    /// Proxy mode failed.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    /// Agent mode failed.
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    /// The agent's network holder failed.
    #[error(transparent)]
    AgentNet(#[from] agent_net::AgentNetError),
}

impl ExitStatus for Error {
    fn exit_status(&self) -> Exit {
        match self {
            Error::Config(e) => e.exit_status(),
            Error::Policy(e) => e.exit_status(),
            Error::Telemetry(_) => Exit::Usage,
            Error::Proxy(e) => e.exit_status(),
            Error::Agent(e) => e.exit_status(),
            Error::AgentNet(e) => e.exit_status(),
        }
    }
}

/// Runs what the command line asks for and returns the exit status.
pub fn run(cli: Cli) -> Result<Exit, Error> {
    cli.secrets.refuse()?;
    let file = config::read_file(cli.config.as_deref())?;
    let Some(command) = cli.command else {
        return Err(cli::required_mode_from_env()
            .err()
            .unwrap_or(ConfigError::Missing { message: "no subcommand".into() })
            .into());
    };
    match command {
        Command::Proxy(args) => {
            let config = proxy_config(&cli.log, &args, &file)?;
            // The gateway's log layer exists from the first line; its queue is shipped
            // once the runtime runs (the log stream is the first call of the startup).
            let (layer, queue) = log_queue(config.gateway.as_ref());
            telemetry::init_with(logging(&config.common, "proxy", &args.gateway, &file), layer)?;
            Ok(proxy::run(config, queue)?)
        }
        Command::Agent(args) => {
            let gateway = args.gateway.clone();
            let config = agent_config(&cli.log, args, &file)?;
            let (layer, queue) = log_queue(config.gateway.as_ref());
            telemetry::init_with(logging(&config.common, "agent", &gateway, &file), layer)?;
            Ok(agent::run(config, queue)?)
        }
        Command::Policy(cmd) => Ok(policy_cmd::run(cmd)?),
        Command::AgentNet(args) => {
            let via = agent_net::via(&args, &file.agent_net)?;
            let format = cli.log.log_format.or(file.log.log_format).unwrap_or_default();
            let level =
                cli.log.log_level.clone().or_else(|| file.log.log_level.clone()).unwrap_or_else(|| "info".into());
            telemetry::init(format, &level)?;
            Ok(agent_net::run(via)?)
        }
        Command::Healthcheck(select) => match mode_command(select.mode)? {
            ModeCommand::Proxy(args) => Ok(health::proxy(&proxy_config(&cli.log, &args, &file)?)),
            ModeCommand::Agent(args) => Ok(health::agent(&agent_config(&cli.log, args, &file)?)),
        },
        Command::Config(select) => {
            let json = match mode_command(select.mode)? {
                ModeCommand::Proxy(args) => serde_json::to_string_pretty(&proxy_config(&cli.log, &args, &file)?),
                ModeCommand::Agent(args) => serde_json::to_string_pretty(&agent_config(&cli.log, args, &file)?),
            };
            println!("{}", json.unwrap_or_default());
            Ok(Exit::Success)
        }
    }
}

/// The mode subcommand given, or the environment's mode with flags from the environment.
fn mode_command(given: Option<ModeCommand>) -> Result<ModeCommand, ConfigError> {
    if let Some(mode) = given {
        return Ok(mode);
    }
    let from_env = |e: clap::Error| ConfigError::Invalid { setting: "environment", message: e.to_string() };
    Ok(match cli::required_mode_from_env()? {
        Mode::Proxy => ModeCommand::Proxy(cli::env_only::<ProxyArgs>("proxy").map_err(from_env)?),
        Mode::Agent | Mode::Nested => ModeCommand::Agent(cli::env_only::<AgentArgs>("agent").map_err(from_env)?),
    })
}

/// With a gateway, the log layer (installed with telemetry, so it sees the first line)
/// and its queue (shipped once the mode's runtime runs).
fn log_queue(
    gateway: Option<&config::GatewayConfig>,
) -> (Option<gateway::logs::LogLayer>, Option<gateway::logs::LogQueue>) {
    match gateway {
        Some(g) => {
            let (layer, queue) = gateway::logs::queue(&g.sandbox_id, gateway::logs::DEFAULT_CAPACITY);
            (Some(layer), Some(queue))
        }
        None => (None, None),
    }
}

/// What the mode's logging needs: format, filter, the OCSF file, and the sandbox's identity
/// (id and name from the gateway settings, which name it even without an endpoint).
fn logging<'a>(
    common: &'a CommonConfig,
    feature: &'static str,
    gateway: &config::layers::GatewayLayer,
    file: &FileConfig,
) -> telemetry::Logging<'a> {
    let given = |flag: &Option<String>, file: &Option<String>| {
        flag.clone().or_else(|| file.clone()).filter(|s| !s.trim().is_empty())
    };
    let id = given(&gateway.sandbox_id, &file.gateway.sandbox_id);
    let name = given(&gateway.sandbox_name, &file.gateway.sandbox_name);
    telemetry::Logging {
        format: common.log_format,
        level: &common.log_level,
        ocsf_file: common.ocsf_file.clone(),
        identity: telemetry::ocsf::Identity::new(feature, id, name),
    }
}

fn env_token() -> Option<String> {
    std::env::var(config::TOKEN_ENV).ok()
}

fn proxy_config(log: &LogLayer, args: &ProxyArgs, file: &FileConfig) -> Result<ProxyConfig, ConfigError> {
    let common = CommonConfig::resolve(log, &args.common, file);
    ProxyConfig::resolve(common, &args.gateway, &args.proxy, file, env_token())
}

fn agent_config(log: &LogLayer, args: AgentArgs, file: &FileConfig) -> Result<AgentConfig, ConfigError> {
    let common = CommonConfig::resolve(log, &args.common, file);
    let nested = args.nested || std::env::var("OPENSHELL_MODE").is_ok_and(|m| m.trim() == "nested");
    AgentConfig::resolve(common, &args.gateway, &args.agent, file, env_token(), nested, args.command)
}
