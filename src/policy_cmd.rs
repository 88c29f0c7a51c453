//! `policy check` and `policy eval`: the policy engine explained on the command line,
//! with exit statuses scripts can use (0 valid/allowed, 1 denied, 65 invalid).

use std::fmt::Write as _;

use serde_json::json;

use crate::Exit;
use crate::cli::{EvalArgs, PolicyCommand};
use crate::policy::model::{Endpoint, L7Rule, Policy, Protocol};
use crate::policy::{self, PolicyEngine, PolicyError, RegoRules};
use crate::proxy::l7::judge::decide;

/// Runs a `policy` subcommand; output goes to stdout, errors to the caller.
pub fn run(cmd: PolicyCommand) -> Result<Exit, PolicyError> {
    match cmd {
        PolicyCommand::Check { file, json } => {
            let policy = policy::load_file(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&policy).unwrap_or_default());
            } else {
                print!("{}", render(&file.display().to_string(), &policy));
            }
            Ok(Exit::Success)
        }
        PolicyCommand::Eval(args) => eval(args),
    }
}

fn eval(args: EvalArgs) -> Result<Exit, PolicyError> {
    let policy = policy::load_file(&args.file)?;
    let rules = RegoRules::load(args.policy_rules.as_deref())?;
    let engine = PolicyEngine::new(policy, &rules, 1)?;
    let l4 = engine.evaluate_network(&args.host, args.port);
    let (allow, policy_key, rule, reason, what) = match (&args.method, &args.path) {
        (Some(method), Some(target)) if l4.allow => {
            let what = format!("{method} {target} to {}:{}", args.host, args.port);
            // The proxy's own judgement: the same canonical path, the same reading of the query.
            match decide(&engine, &args.host, args.port, method, &[], target) {
                Ok((_, d)) => {
                    let reason = match (d.allow, d.enforcement) {
                        (false, policy::model::Enforcement::Audit) => {
                            format!("{} (audit mode: forwarded and logged)", d.reason)
                        }
                        _ => d.reason,
                    };
                    (d.allow, d.policy, d.rule, reason, what)
                }
                Err(e) => (false, None, None, format!("the proxy refuses the path with 400: {e}"), what),
            }
        }
        _ => {
            let rule = l4.endpoints.first().and_then(|i| engine.endpoint(*i)).map(|e| e.id.clone());
            (l4.allow, l4.policy, rule, l4.reason, format!("connection to {}:{}", args.host, args.port))
        }
    };
    let decision = if allow { "allow" } else { "deny" };
    if args.json {
        println!("{}", json!({ "decision": decision, "policy": policy_key, "rule": rule, "reason": reason }));
    } else {
        println!("{decision}: {what}");
        println!("  policy: {}", policy_key.as_deref().unwrap_or("-"));
        println!("  rule:   {}", rule.as_deref().unwrap_or("-"));
        println!("  reason: {reason}");
    }
    Ok(if allow { Exit::Success } else { Exit::No })
}

/// A readable summary of a valid policy: one line per endpoint, one per rule.
fn render(source: &str, p: &Policy) -> String {
    let endpoints: usize = p.network_policies.values().map(|n| n.endpoints.len()).sum();
    let mut out = format!(
        "{source}: valid (version {}, {} network policies, {endpoints} endpoints)\n",
        p.version,
        p.network_policies.len()
    );
    if let Some(note) = policy::ignored_binaries_note(p) {
        let _ = writeln!(out, "note: {note}");
    }
    let fs = &p.filesystem_policy;
    let paths = |v: &[std::path::PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        out,
        "filesystem_policy: include_workdir={} read_only=[{}] read_write=[{}]",
        fs.include_workdir,
        paths(&fs.read_only),
        paths(&fs.read_write)
    );
    let _ = writeln!(out, "landlock: compatibility={}", p.landlock.compatibility.as_str());
    let _ = writeln!(
        out,
        "process: run_as_user={} run_as_group={}",
        p.process.run_as_user.as_deref().unwrap_or("sandbox (default)"),
        p.process.run_as_group.as_deref().unwrap_or("(the user's group)")
    );
    out.push_str("network_policies:\n");
    for (key, np) in &p.network_policies {
        let _ = writeln!(out, "  {key} ({}):", np.name);
        for ep in &np.endpoints {
            let _ = writeln!(out, "    {}", endpoint_line(ep));
            for r in &ep.rules {
                let _ = writeln!(out, "      allow {}", rule_line(r));
            }
            for r in &ep.deny_rules {
                let _ = writeln!(out, "      deny  {}", rule_line(r));
            }
        }
    }
    out
}

fn endpoint_line(ep: &Endpoint) -> String {
    let ports = ep.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let mut line = format!("{}:{ports}", ep.host);
    match ep.protocol {
        None => line.push_str(" L4 (bytes relayed, no inspection)"),
        Some(Protocol::Tcp) => line.push_str(" tcp (bytes relayed, also on transparent connections)"),
        Some(proto) => {
            let _ = write!(line, " {}", proto.as_str());
            line.push_str(if ep.intercepts_tls() { " tls=terminate" } else { " tls=skip" });
            let _ = write!(line, " enforcement={}", ep.enforcement.as_str());
            if let Some(a) = ep.access {
                let _ = write!(line, " access={}", a.as_str());
            }
        }
    }
    if !ep.allowed_ips.is_empty() {
        let ips = ep.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let _ = write!(line, " allowed_ips={ips}");
    }
    if ep.allow_encoded_slash {
        line.push_str(" allow_encoded_slash");
    }
    if let Some(provider) = &ep.credential_binding {
        let _ = write!(line, " credentials={provider}");
        if let Some(path) = &ep.path {
            let _ = write!(line, " path={path}");
        }
    }
    if ep.request_body_credential_rewrite {
        line.push_str(" body_rewrite");
    }
    line
}

fn rule_line(r: &L7Rule) -> String {
    let methods = if r.methods.is_empty() { "*".to_owned() } else { r.methods.join(",") };
    let mut line = format!("{methods} {}", r.path);
    for (k, globs) in &r.query {
        let _ = write!(line, " ?{k}={}", globs.join("|"));
    }
    line
}
