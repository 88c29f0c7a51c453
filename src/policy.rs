//! The sandbox policy: loading and validating OpenShell policy YAML (or the gateway's
//! equivalent message) into a [`Policy`], and deciding connections and requests with
//! the Rego rules in `policies/sandbox-policy.rego` through regorus.

pub mod address;
mod engine;
pub mod host;
pub mod model;
mod path_scope;
pub mod request;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use engine::{FlatEndpoint, L4Decision, L7Decision, L7Request, PolicyEngine};
pub use model::Policy;
pub use validate::{Issue, validate};

use crate::{Exit, ExitStatus};

/// The Rego rules built into the binary.
pub const BUILTIN_RULES: &str = include_str!("../policies/sandbox-policy.rego");

/// Failures of loading a policy or its rules.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy or rules file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file was for ("policy file", "Rego rules").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The policy is not valid; every problem is listed.
    #[error("{}", InvalidList { source_name, issues })]
    Invalid {
        /// Where the policy came from (a file path, or "the gateway's policy").
        source_name: String,
        /// Every problem found.
        issues: Vec<Issue>,
    },
    /// The Rego rules do not compile or do not answer the expected rules.
    #[error("Rego rules {source_name} are not usable: {message}")]
    Rules {
        /// Where the rules came from.
        source_name: String,
        /// The compiler's or evaluator's message.
        message: String,
    },
}

impl ExitStatus for PolicyError {
    fn exit_status(&self) -> Exit {
        match self {
            PolicyError::Read { .. } => Exit::Usage,
            PolicyError::Invalid { .. } | PolicyError::Rules { .. } => Exit::InvalidPolicy,
        }
    }
}

impl PolicyError {
    /// The error on one line, for a status the gateway stores and a denial's reason:
    /// `invalid policy <source>: <issue>; <issue>`.
    pub fn summary(&self) -> String {
        match self {
            PolicyError::Invalid { source_name, issues } => {
                let issues: Vec<String> = issues.iter().map(ToString::to_string).collect();
                format!("invalid policy {source_name}: {}", issues.join("; "))
            }
            other => other.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; "),
        }
    }
}

struct InvalidList<'a> {
    source_name: &'a str,
    issues: &'a [Issue],
}

impl fmt::Display for InvalidList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(f, "invalid policy {} ({n} error{}):", self.source_name, if n == 1 { "" } else { "s" })?;
        for issue in self.issues {
            write!(f, "\n  {issue}")?;
        }
        Ok(())
    }
}

/// Rego rules: the built-in ones or a replacement file (`OPENSHELL_POLICY_RULES`).
#[derive(Clone, Debug)]
pub struct RegoRules {
    /// Name used in error messages (the file path, or `builtin:sandbox-policy.rego`).
    pub name: String,
    /// The Rego source.
    pub text: String,
}

impl RegoRules {
    /// The rules embedded in the binary.
    pub fn builtin() -> Self {
        RegoRules { name: "builtin:sandbox-policy.rego".into(), text: BUILTIN_RULES.into() }
    }

    /// The built-in rules, or the file at `path` when one is given.
    pub fn load(path: Option<&Path>) -> Result<Self, PolicyError> {
        match path {
            None => Ok(Self::builtin()),
            Some(p) => std::fs::read_to_string(p)
                .map(|text| RegoRules { name: p.display().to_string(), text })
                .map_err(|source| PolicyError::Read { what: "Rego rules", path: p.to_owned(), source }),
        }
    }
}

/// The one warning about `binaries` entries, when the policy has any.
pub fn ignored_binaries_note(policy: &Policy) -> Option<String> {
    match policy.ignored_binaries {
        0 => None,
        n => Some(format!(
            "{n} `binaries` {} ignored: binary identity does not exist in the sidecar topology",
            if n == 1 { "entry is" } else { "entries are" }
        )),
    }
}

/// Logs what a loaded policy contains that is accepted but not applied.
pub fn log_warnings(policy: &Policy) {
    if let Some(note) = ignored_binaries_note(policy) {
        tracing::warn!("{note}");
    }
}

/// Parses and validates policy YAML; `source_name` names it in errors.
pub fn parse_yaml(text: &str, source_name: &str) -> Result<Policy, PolicyError> {
    let invalid = |issues| PolicyError::Invalid { source_name: source_name.to_owned(), issues };
    if text.trim().is_empty() {
        return Err(invalid(vec![Issue {
            path: String::new(),
            line: None,
            message: "the policy is empty; it needs at least `version: 1`".into(),
        }]));
    }
    let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
    // The YAML scanner can mark a line past the end (a tag followed by a NUL byte, say):
    // the last line is named instead.
    let last_line = line_count(text);
    let within = |mut issues: Vec<Issue>| {
        for issue in &mut issues {
            issue.line = issue.line.map(|l| l.min(last_line));
        }
        invalid(issues)
    };
    let root = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| within(vec![yaml_issue(&e)]))?;
    validate(&root).map_err(within)
}

/// The number of lines of `text` as YAML counts them (`\r\n`, `\n` or a bare `\r` ends one).
fn line_count(text: &str) -> usize {
    let bytes = text.as_bytes();
    let breaks = bytes
        .iter()
        .enumerate()
        .filter(|(i, b)| **b == b'\n' || (**b == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count();
    breaks + 1
}

/// Reads, parses and validates a policy file.
pub fn load_file(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        what: "policy file",
        path: path.to_owned(),
        source,
    })?;
    parse_yaml(&text, &path.display().to_string())
}

fn yaml_issue(e: &marked_yaml::LoadError) -> Issue {
    use marked_yaml::LoadError as E;
    let (marker, message) = match e {
        E::TopLevelMustBeMapping(m) => {
            (Some(m), "the top level must be a mapping (`version: 1`, `network_policies: ...`)".to_owned())
        }
        E::TopLevelMustBeSequence(m) => (Some(m), "unexpected list at the top level".to_owned()),
        E::UnexpectedAnchor(m) => (Some(m), "YAML anchors and aliases are not accepted in a policy".to_owned()),
        E::MappingKeyMustBeScalar(m) => (Some(m), "a mapping key must be a plain value".to_owned()),
        E::UnexpectedTag(m) => (Some(m), "YAML tags (`!tag`) are not accepted in a policy".to_owned()),
        E::ScanError(m, err) => (Some(m), format!("not valid YAML: {}", err.info())),
        E::DuplicateKey(d) => {
            (d.key.span().start(), format!("key `{}` appears twice in the same mapping", d.key.as_str()))
        }
    };
    Issue { path: String::new(), line: marker.map(|m| m.line()).filter(|l| *l > 0), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues(text: &str) -> Vec<Issue> {
        match parse_yaml(text, "t.yaml") {
            Err(PolicyError::Invalid { issues, .. }) => issues,
            other => panic!("expected an invalid policy, got {other:?}"),
        }
    }

    #[test]
    fn an_issue_never_names_a_line_past_the_end() {
        // Found by the policy_yaml fuzz target: the scanner marked line 2 of a one-line text.
        let found = issues("!\u{0}1");
        assert!(!found.is_empty());
        assert!(found.iter().all(|i| i.line == Some(1)), "{found:?}");
    }

    #[test]
    fn a_summary_is_one_line_naming_every_issue() {
        let err = parse_yaml(
            "version: 1\nnetwork_policies:\n  a: {endpoints: [{host: \"*\", port: 443, protocl: rest}]}\n",
            "t.yaml",
        )
        .unwrap_err();
        let summary = err.summary();
        assert!(summary.starts_with("invalid policy t.yaml: network_policies.a.endpoints[0]"), "{summary}");
        assert!(summary.contains("; ") && summary.contains("protocl") && !summary.contains('\n'), "{summary}");
        let rules = PolicyError::Rules { source_name: "r.rego".into(), message: "line 1\n  caused by: x".into() };
        assert_eq!(rules.summary(), "Rego rules r.rego are not usable: line 1; caused by: x");
    }

    #[test]
    fn lines_are_counted_as_yaml_counts_them() {
        assert_eq!(line_count(""), 1);
        assert_eq!(line_count("a\r\nb\rc\n"), 4);
        let found = issues("\r\r- 1\n");
        assert_eq!(found[0].line, Some(3), "{found:?}");
    }
}
