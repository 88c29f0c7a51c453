//! The command line: subcommands, their flags (each with its `OPENSHELL_*` variable),
//! and the mode dispatch on `OPENSHELL_MODE` / `OPENSHELL_PROXY_MODE` when no
//! subcommand is given.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, FromArgMatches, Parser, Subcommand};

use crate::config::ConfigError;
use crate::config::layers::{AgentLayer, AgentNetLayer, CommonLayer, GatewayLayer, LogLayer, ProxyLayer};

/// The sandbox supervisor of the OpenShell proxy-sidecar topology.
#[derive(Parser, Debug)]
#[command(name = "openshell-sandbox", version, propagate_version = true)]
#[command(
    after_help = "With no subcommand the mode comes from the environment: OPENSHELL_MODE=proxy (proxy sidecar), \
OPENSHELL_PROXY_MODE=sidecar (agent supervisor) or OPENSHELL_MODE=nested (agent without enforcement)."
)]
pub struct Cli {
    /// TOML configuration file; flags and OPENSHELL_* variables override it. Default: none.
    #[arg(long, global = true, env = "OPENSHELL_SANDBOX_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Logging.
    #[command(flatten)]
    pub log: LogLayer,
    /// Flags that would carry secrets: present only to refuse them with a clear message.
    #[command(flatten)]
    pub secrets: SecretFlags,
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Secrets on the command line are visible to every process (`ps`); these flags exist
/// only so that using one gets a message saying where the secret belongs.
#[derive(Args, Debug, Default)]
pub struct SecretFlags {
    #[arg(long = "sandbox-token", global = true, hide = true, value_name = "TOKEN")]
    sandbox_token: Option<String>,
    #[arg(long = "token", global = true, hide = true, value_name = "TOKEN")]
    token: Option<String>,
    #[arg(long = "api-key", global = true, hide = true, value_name = "KEY")]
    api_key: Option<String>,
}

impl SecretFlags {
    /// Refuses any secret given on the command line.
    pub fn refuse(&self) -> Result<(), ConfigError> {
        let refuse =
            |key: &str, fix| ConfigError::SecretNotAllowed { place: "the command line".into(), key: key.into(), fix };
        if self.sandbox_token.is_some() || self.token.is_some() {
            let flag = if self.token.is_some() { "--token" } else { "--sandbox-token" };
            return Err(refuse(
                flag,
                "set OPENSHELL_SANDBOX_TOKEN, or OPENSHELL_SANDBOX_TOKEN_FILE to a file holding the token",
            ));
        }
        if self.api_key.is_some() {
            return Err(refuse(
                "--api-key",
                "provider credentials come from the gateway or from OPENSHELL_PROVIDER_ENV_FILE",
            ));
        }
        Ok(())
    }
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the egress proxy sidecar (also selected by OPENSHELL_MODE=proxy).
    Proxy(ProxyArgs),
    /// Run the agent supervisor (also selected by OPENSHELL_PROXY_MODE=sidecar or OPENSHELL_MODE=nested).
    Agent(AgentArgs),
    /// Validate a policy file or explain one decision.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Exit 0 only when this mode is serving (for container HEALTHCHECKs).
    Healthcheck(ModeSelect),
    /// Print the effective configuration of a mode (flags > environment > file > defaults) as JSON.
    Config(ModeSelect),
    /// Hold the agent's network namespace: route 198.18.0.0/15 via the proxy, drop every capability, wait for SIGTERM (docs/podman.md).
    AgentNet(AgentNetLayer),
}

/// Proxy-mode flags.
#[derive(Args, Debug, Clone, Default)]
pub struct ProxyArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonLayer,
    /// Gateway settings.
    #[command(flatten)]
    pub gateway: GatewayLayer,
    /// Proxy settings.
    #[command(flatten)]
    pub proxy: ProxyLayer,
}

/// Agent-mode flags.
#[derive(Args, Debug, Clone, Default)]
pub struct AgentArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonLayer,
    /// Gateway settings.
    #[command(flatten)]
    pub gateway: GatewayLayer,
    /// Agent settings.
    #[command(flatten)]
    pub agent: AgentLayer,
    /// Run without Landlock, seccomp or privilege drop (as OPENSHELL_MODE=nested).
    #[arg(long)]
    pub nested: bool,
    /// The workload: a command and its arguments, after `--`. Without one, serve SSH until SIGTERM.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// A mode for `healthcheck` and `config`; without one, the mode comes from the environment.
#[derive(Args, Debug)]
pub struct ModeSelect {
    /// The mode.
    #[command(subcommand)]
    pub mode: Option<ModeCommand>,
}

/// A mode with its flags.
#[derive(Subcommand, Debug, Clone)]
pub enum ModeCommand {
    /// Proxy mode.
    Proxy(ProxyArgs),
    /// Agent mode.
    Agent(AgentArgs),
}

/// `policy` subcommands.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file: print the normalised policy (exit 0) or every error (exit 65).
    Check {
        /// The policy YAML.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Explain one decision: exit 0 allowed, 1 denied, 65 invalid policy.
    Eval(EvalArgs),
}

/// `policy eval` arguments.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The policy YAML.
    pub file: PathBuf,
    /// Destination host.
    #[arg(long)]
    pub host: String,
    /// Destination port.
    #[arg(long)]
    pub port: u16,
    /// HTTP method as the client sends it (case-sensitive, as the proxy judges it), for an
    /// L7 decision (with --path).
    #[arg(long, requires = "path")]
    pub method: Option<String>,
    /// HTTP path with optional `?query`, for an L7 decision (with --method).
    #[arg(long, requires = "method")]
    pub path: Option<String>,
    /// Print `{"decision","policy","rule","reason"}` as JSON.
    #[arg(long)]
    pub json: bool,
    /// Rego file replacing the built-in rules. Default: the built-in rules.
    #[arg(long, env = "OPENSHELL_POLICY_RULES", value_name = "FILE")]
    pub policy_rules: Option<PathBuf>,
}

/// The run modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The proxy sidecar.
    Proxy,
    /// The agent supervisor.
    Agent,
    /// The agent supervisor without enforcement.
    Nested,
}

const NO_MODE: &str = "no mode selected: run `openshell-sandbox proxy` or `openshell-sandbox agent`, or set \
OPENSHELL_MODE=proxy (proxy sidecar), OPENSHELL_PROXY_MODE=sidecar (agent supervisor) or OPENSHELL_MODE=nested \
(agent without enforcement)";

/// The mode the environment selects, if any; contradictory or unknown values are errors.
pub fn mode_from_env(mode: Option<&str>, proxy_mode: Option<&str>) -> Result<Option<Mode>, ConfigError> {
    let mode = mode.map(str::trim).filter(|m| !m.is_empty());
    let proxy_mode = proxy_mode.map(str::trim).filter(|m| !m.is_empty());
    let sidecar = match proxy_mode {
        None => false,
        Some("sidecar") => true,
        Some(other) => {
            return Err(ConfigError::Invalid {
                setting: "OPENSHELL_PROXY_MODE",
                message: format!("`{other}` is not a proxy mode; the only value is `sidecar` (agent supervisor)"),
            });
        }
    };
    match mode {
        None => Ok(sidecar.then_some(Mode::Agent)),
        Some("nested") => Ok(Some(Mode::Nested)),
        Some("proxy") if sidecar => Err(ConfigError::Invalid {
            setting: "OPENSHELL_MODE",
            message: "OPENSHELL_MODE=proxy and OPENSHELL_PROXY_MODE=sidecar contradict each other: the proxy \
                      container sets only OPENSHELL_MODE=proxy, the agent container only OPENSHELL_PROXY_MODE=sidecar"
                .into(),
        }),
        Some("proxy") => Ok(Some(Mode::Proxy)),
        Some(other) => Err(ConfigError::Invalid {
            setting: "OPENSHELL_MODE",
            message: format!(
                "`{other}` is not a mode; use `proxy` or `nested` (or OPENSHELL_PROXY_MODE=sidecar for the agent)"
            ),
        }),
    }
}

/// The mode from this process's environment; none is an error naming the choices.
pub fn required_mode_from_env() -> Result<Mode, ConfigError> {
    let var = |k| std::env::var(k).ok();
    mode_from_env(var("OPENSHELL_MODE").as_deref(), var("OPENSHELL_PROXY_MODE").as_deref())?
        .ok_or_else(|| ConfigError::Missing { message: NO_MODE.into() })
}

/// Parses the command line. With no subcommand, the mode the environment selects is
/// inserted as the subcommand, so its flags and `OPENSHELL_*` variables apply as usual.
pub fn parse(args: Vec<OsString>) -> Result<Cli, ParseError> {
    use clap::CommandFactory;
    let command = Cli::command();
    let subcommand = |a: &str| a == "help" || command.get_subcommands().any(|sub| sub.get_name() == a);
    let before_dashes = args.iter().skip(1).take_while(|a| *a != "--");
    let has_subcommand = before_dashes.clone().any(|a| a.to_str().is_some_and(subcommand));
    let asks_help = before_dashes.clone().any(|a| ["-h", "--help", "-V", "--version"].iter().any(|f| a == f));
    let mut args = args;
    if !has_subcommand && !asks_help {
        let mode = required_mode_from_env().map_err(ParseError::Mode)?;
        args.insert(1.min(args.len()), if mode == Mode::Proxy { "proxy" } else { "agent" }.into());
    }
    Cli::try_parse_from(&args).map_err(|e| ParseError::Clap(with_env_source(e, &args)))
}

/// clap names the flag of a bad value even when the value came from its environment
/// variable; this adds which variable it was, so the user knows what to fix.
fn with_env_source(mut error: clap::Error, args: &[OsString]) -> clap::Error {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return error;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return error };
    let flag = arg.split_whitespace().next().unwrap_or_default().to_owned();
    let on_command_line =
        args.iter().any(|a| a.to_str().is_some_and(|a| a == flag || a.starts_with(&format!("{flag}="))));
    let long = flag.trim_start_matches("--");
    if let (false, Some(env)) = (on_command_line, env_of(&Cli::command(), long)) {
        let hint = format!("the value comes from the environment variable {env}");
        error.insert(ContextKind::Suggested, ContextValue::StyledStrs(vec![hint.into()]));
    }
    error
}

fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|sub| env_of(sub, long)))
}

/// Why the command line was not accepted.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own error (including --help and --version, which are not failures).
    Clap(clap::Error),
    /// No or a contradictory mode in the environment.
    Mode(ConfigError),
}

/// Flags of `T` as the environment (and clap defaults) alone set them: for `healthcheck`
/// and `config` without a mode subcommand.
pub fn env_only<T: Args + FromArgMatches>(name: &'static str) -> Result<T, clap::Error> {
    let cmd = T::augment_args(clap::Command::new(name).no_binary_name(true));
    T::from_arg_matches(&cmd.try_get_matches_from(Vec::<OsString>::new())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_environment() {
        assert_eq!(mode_from_env(Some("proxy"), None).unwrap(), Some(Mode::Proxy));
        assert_eq!(mode_from_env(None, Some("sidecar")).unwrap(), Some(Mode::Agent));
        assert_eq!(mode_from_env(Some("nested"), Some("sidecar")).unwrap(), Some(Mode::Nested));
        assert_eq!(mode_from_env(Some(""), None).unwrap(), None);
        assert_eq!(mode_from_env(None, None).unwrap(), None);
        assert!(mode_from_env(Some("proxy"), Some("sidecar")).unwrap_err().to_string().contains("contradict"));
        assert!(mode_from_env(Some("agent"), None).unwrap_err().to_string().contains("not a mode"));
        assert!(mode_from_env(None, Some("inline")).unwrap_err().to_string().contains("sidecar"));
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_is_taken_without_a_mode_in_the_environment() {
        use clap::CommandFactory;
        if std::env::var_os("OPENSHELL_MODE").is_some() || std::env::var_os("OPENSHELL_PROXY_MODE").is_some() {
            return;
        }
        for sub in Cli::command().get_subcommands() {
            let parsed = parse(["openshell-sandbox", sub.get_name()].map(OsString::from).to_vec());
            assert!(!matches!(parsed, Err(ParseError::Mode(_))), "{}: {parsed:?}", sub.get_name());
        }
        let args = ["openshell-sandbox", "agent-net", "--via", "10.0.0.2"].map(OsString::from).to_vec();
        assert!(matches!(parse(args), Ok(Cli { command: Some(Command::AgentNet(_)), .. })));
    }

    #[test]
    fn secret_flags_are_refused_without_echoing_them() {
        let cli = Cli::try_parse_from(["openshell-sandbox", "proxy", "--sandbox-token", "eyJ.abc"]).unwrap();
        let err = cli.secrets.refuse().unwrap_err().to_string();
        assert!(err.contains("--sandbox-token") && err.contains("OPENSHELL_SANDBOX_TOKEN"), "{err}");
        assert!(!err.contains("eyJ.abc"));
    }
}
