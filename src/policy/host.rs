//! Endpoint host patterns: exact names, IP literals and label globs (`*` is one DNS
//! label or part of one, `**` is one or more leading labels). Patterns are checked and
//! compiled here; the Rego rules match them with the regex and suffix computed here.

mod destination;

use std::fmt;
use std::net::IpAddr;

use serde::{Serialize, Serializer};

pub use destination::{DestinationHost, unbracketed};

/// A validated `host` value, lower case, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// A DNS name or IP literal that must match exactly.
    Exact(String),
    /// A pattern with `*` or `**` labels.
    Glob {
        /// The pattern as written (normalised).
        pattern: String,
        /// Anchored regular expression equivalent to the pattern.
        regex: String,
        /// The literal tail after the last wildcard label (a cheap pre-filter).
        suffix: String,
    },
}

impl HostPattern {
    /// Parses and validates a pattern; the error says what is allowed.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("host is empty; give a DNS name, an IP address or a pattern like `*.example.com`".into());
        }
        if let Ok(ip) = unbracketed(trimmed).parse::<IpAddr>() {
            return Ok(HostPattern::Exact(ip.to_string()));
        }
        if !trimmed.is_ascii() {
            return Err(format!(
                "host `{trimmed}` is not ASCII; write an internationalised name in its `xn--` (punycode) form"
            ));
        }
        let host = trimmed.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        if host.len() > 253 {
            return Err(format!("host `{host}` is longer than 253 characters"));
        }
        let labels: Vec<&str> = host.split('.').collect();
        for label in &labels {
            check_label(host, label)?;
        }
        if !host.contains('*') {
            return Ok(HostPattern::Exact(host.to_owned()));
        }
        if host == "*" || host == "**" {
            return Err(format!(
                "host `{host}` alone would allow every host; name a domain, for example `*.example.com` or `**.example.com`"
            ));
        }
        if labels.len() <= 2 {
            return Err(format!(
                "host `{host}` puts a wildcard in a name of two labels or fewer, which would allow a whole top-level domain; use at least three labels, like `*.example.com`"
            ));
        }
        if labels.iter().skip(1).any(|l| l.contains("**")) || (labels[0].contains("**") && labels[0] != "**") {
            return Err(format!("host `{host}`: `**` may only stand alone as the first label, as in `**.example.com`"));
        }
        Ok(compile_glob(host, &labels))
    }

    /// The pattern as a string (what the policy says).
    pub fn as_str(&self) -> &str {
        match self {
            HostPattern::Exact(h) => h,
            HostPattern::Glob { pattern, .. } => pattern,
        }
    }

    /// Whether the normalised destination `host` (see [`normalize_destination`]) matches,
    /// as the Rego rules decide it: exact names and addresses equal, globs by their regex.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Glob { regex, .. } => regex::Regex::new(regex).is_ok_and(|r| r.is_match(host)),
        }
    }

    /// True for an exact name or address (SSRF rules trust exact names more than globs).
    pub fn is_exact(&self) -> bool {
        matches!(self, HostPattern::Exact(_))
    }
}

fn check_label(host: &str, label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err(format!("host `{host}` has an empty label (two dots in a row, or a leading dot)"));
    }
    if label.len() > 63 {
        return Err(format!("host `{host}` has a label longer than 63 characters"));
    }
    if let Some(bad) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*'))) {
        return Err(format!(
            "host `{host}` contains `{bad}`; a host holds letters, digits, `-`, `_`, dots and the wildcards `*` and `**`"
        ));
    }
    if !label.contains("**") && label.matches('*').count() > 1 {
        return Err(format!("host `{host}`: a label may hold one `*` (label `{label}`)"));
    }
    Ok(())
}

fn compile_glob(host: &str, labels: &[&str]) -> HostPattern {
    let mut regex = String::from("^");
    for (i, label) in labels.iter().enumerate() {
        if *label == "**" {
            // One or more whole labels, each followed by its dot.
            regex.push_str(r"(?:[^.]+\.)+");
            continue;
        }
        match label.split_once('*') {
            None => regex.push_str(&regex::escape(label)),
            Some(("", "")) => regex.push_str("[^.]+"),
            Some((pre, post)) => {
                regex.push_str(&regex::escape(pre));
                regex.push_str("[^.]*");
                regex.push_str(&regex::escape(post));
            }
        }
        if i + 1 < labels.len() {
            regex.push_str(r"\.");
        }
    }
    regex.push('$');
    let last_wild = labels.iter().rposition(|l| l.contains('*')).unwrap_or(0);
    let suffix = labels[last_wild + 1..].iter().map(|l| format!(".{l}")).collect::<String>();
    HostPattern::Glob { pattern: host.to_owned(), regex, suffix }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Normalises a destination host the way patterns are normalised: ASCII lower case, no
/// trailing dot, IPv6 without brackets. `None` when it cannot be a host at all.
pub fn normalize_destination(host: &str) -> Option<String> {
    if let Ok(ip) = unbracketed(host).parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> (String, String) {
        match HostPattern::parse(p).unwrap() {
            HostPattern::Glob { regex, suffix, .. } => (regex, suffix),
            other => panic!("{p} parsed as {other:?}"),
        }
    }

    fn matches(p: &str, host: &str) -> bool {
        let (re, suffix) = glob(p);
        host.ends_with(&suffix) && regex::Regex::new(&re).unwrap().is_match(host)
    }

    #[test]
    fn exact_names_are_lowercased_without_trailing_dot() {
        assert_eq!(HostPattern::parse("API.GitHub.com.").unwrap(), HostPattern::Exact("api.github.com".into()));
        assert_eq!(HostPattern::parse("[::1]").unwrap(), HostPattern::Exact("::1".into()));
        assert_eq!(HostPattern::parse("10.0.0.5").unwrap(), HostPattern::Exact("10.0.0.5".into()));
    }

    #[test]
    fn single_star_is_exactly_one_label() {
        assert!(matches("*.example.com", "api.example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "apiexample.com"));
    }

    #[test]
    fn star_inside_a_label() {
        assert!(matches("*-api.example.com", "eu-api.example.com"));
        assert!(!matches("*-api.example.com", "eu-api.x.example.com"));
        assert!(!matches("*-api.example.com", "api.example.com"));
        assert!(matches("api-*.example.com", "api-1.example.com"));
    }

    #[test]
    fn double_star_is_one_or_more_leading_labels() {
        assert!(matches("**.example.com", "a.example.com"));
        assert!(matches("**.example.com", "a.b.c.example.com"));
        assert!(!matches("**.example.com", "example.com"));
        assert!(!matches("**.example.com", "badexample.com"));
    }

    #[test]
    fn regex_metacharacters_are_literal() {
        assert!(!matches("*.exa-ple.com", "a.exa-ple.comx"));
        let (re, _) = glob("*.a_b.com");
        assert!(re.contains("a_b"));
    }

    #[test]
    fn refusals_say_what_is_allowed() {
        for (p, needle) in [
            ("*", "alone would allow every host"),
            ("**", "alone would allow every host"),
            ("*.com", "two labels or fewer"),
            ("api.**.com", "first label"),
            ("a**.example.com", "first label"),
            ("*a*.example.com", "one `*`"),
            ("exa mple.com", "contains ` `"),
            ("a..b.com", "empty label"),
            ("", "host is empty"),
            ("bücher.example", "punycode"),
        ] {
            let err = HostPattern::parse(p).unwrap_err();
            assert!(err.contains(needle), "{p}: {err}");
        }
    }

    #[test]
    fn destinations_normalise_like_patterns() {
        assert_eq!(normalize_destination("API.Example.COM.").as_deref(), Some("api.example.com"));
        assert_eq!(normalize_destination("[2001:db8::1]").as_deref(), Some("2001:db8::1"));
        assert_eq!(normalize_destination("a b"), None);
        assert_eq!(normalize_destination(""), None);
    }
}
