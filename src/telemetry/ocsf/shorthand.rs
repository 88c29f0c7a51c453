//! The one-line form of an event, as OpenShell's gateway shows it:
//! `CLASS:ACTIVITY [SEV] ACTION DETAILS [policy:NAME] [reason:...]`, for example
//! `NET:OPEN [INFO] ALLOWED api.github.com:443 [policy:github]`.

use std::fmt::{self, Display, Formatter, Write};

use super::{Class, Endpoint, Event, Severity, Verdict};

/// The longest reason shown; longer ones end in `...`.
const REASON_CHARS: usize = 80;

/// [`Event::shorthand`]: formats on demand.
pub struct Shorthand<'e, 'a>(pub(super) &'e Event<'a>);

impl Display for Shorthand<'_, '_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let e = self.0;
        f.write_str(tag(e.class))?;
        f.write_char(':')?;
        match (e.class, &e.http, &e.state, e.verdict) {
            (Class::Http, Some(http), _, _) => upper(f, http.method)?,
            (Class::Config, _, Some((_, state)), _) => upper(f, state)?,
            (Class::Finding, _, _, Some(verdict)) => upper(f, verdict.disposition().1)?,
            _ => upper(f, e.activity.1)?,
        }
        write!(f, " [{}]", severity(e.severity))?;
        if let Some(verdict) = e.verdict {
            f.write_char(' ')?;
            upper(f, verdict.action().1)?;
        }
        f.write_char(' ')?;
        details(e, f)?;
        if let Some(rule) = &e.rule {
            write!(f, " [policy:{}]", rule.policy)?;
        }
        let refused =
            matches!(e.verdict, Some(Verdict::Denied | Verdict::Rejected | Verdict::Failed | Verdict::Observed))
                || e.success == Some(false);
        if let (true, Some(reason)) = (refused, e.detail) {
            f.write_str(" [reason:")?;
            clipped(f, reason, REASON_CHARS)?;
            f.write_char(']')?;
        }
        Ok(())
    }
}

fn details(e: &Event<'_>, f: &mut Formatter<'_>) -> fmt::Result {
    match e.class {
        Class::Http => match &e.http {
            Some(http) => {
                let default = if http.scheme == "https" { 443 } else { 80 };
                write!(f, "{} {}://{}", http.method, http.scheme, bracketed(http.host))?;
                if http.port != default {
                    write!(f, ":{}", http.port)?;
                }
                f.write_str(http.path)
            }
            None => f.write_str(e.message),
        },
        Class::Process => match &e.process {
            Some(p) => {
                f.write_str(p.name)?;
                if let Some(pid) = p.pid {
                    write!(f, "({pid})")?;
                }
                if let Some(code) = p.exit_code {
                    write!(f, " [exit:{code}]")?;
                }
                Ok(())
            }
            None => f.write_str(e.message),
        },
        Class::Finding => match &e.finding {
            Some(finding) => {
                write!(f, "\"{}\"", finding.title)?;
                if let Some(dst) = &e.dst {
                    f.write_char(' ')?;
                    endpoint(f, dst)?;
                }
                Ok(())
            }
            None => f.write_str(e.message),
        },
        Class::Api => match &e.api {
            Some(api) => {
                write!(f, "{} {}", api.method, api.path)?;
                if let Some(route) = api.route {
                    write!(f, " [route:{route}]")?;
                }
                if let Some(model) = api.model {
                    write!(f, " [model:{model}]")?;
                }
                if let Some(total) = api.tokens.and_then(|t| t.total) {
                    write!(f, " [tokens:{total}]")?;
                }
                Ok(())
            }
            None => f.write_str(e.message),
        },
        Class::Ssh => {
            match (&e.src, &e.dst) {
                (_, Some(dst)) if e.verdict == Some(Verdict::Denied) => endpoint(f, dst)?,
                (Some(src), _) => endpoint(f, src)?,
                _ => f.write_str(e.message)?,
            }
            if let Some(user) = e.ssh_user {
                write!(f, " [auth:publickey user:{user}]")?;
            }
            Ok(())
        }
        Class::Network => match &e.dst {
            Some(dst) => endpoint(f, dst),
            None => f.write_str(e.message),
        },
        Class::Config => f.write_str(e.message),
    }
}

fn endpoint(f: &mut Formatter<'_>, e: &Endpoint<'_>) -> fmt::Result {
    match (e.hostname, e.ip) {
        (Some(host), _) => f.write_str(bracketed(host).as_ref())?,
        (None, Some(std::net::IpAddr::V6(ip))) => write!(f, "[{ip}]")?,
        (None, Some(ip)) => write!(f, "{ip}")?,
        (None, None) => f.write_char('-')?,
    }
    match e.port {
        Some(port) => write!(f, ":{port}"),
        None => Ok(()),
    }
}

fn bracketed(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') { format!("[{host}]").into() } else { host.into() }
}

fn tag(class: Class) -> &'static str {
    match class {
        Class::Network => "NET",
        Class::Http => "HTTP",
        Class::Ssh => "SSH",
        Class::Process => "PROC",
        Class::Finding => "FINDING",
        Class::Config => "CONFIG",
        Class::Api => "API",
    }
}

fn severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Informational => "INFO",
        Severity::Low => "LOW",
        Severity::Medium => "MED",
        Severity::High => "HIGH",
    }
}

fn upper(f: &mut Formatter<'_>, word: &str) -> fmt::Result {
    word.chars().try_for_each(|c| f.write_char(c.to_ascii_uppercase()))
}

/// At most `max` characters of `text` on one line, `...` when cut.
fn clipped(f: &mut Formatter<'_>, text: &str, max: usize) -> fmt::Result {
    let mut chars = text.chars().map(|c| if c.is_control() { ' ' } else { c });
    for c in chars.by_ref().take(max) {
        f.write_char(c)?;
    }
    if chars.next().is_some() { f.write_str("...") } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::super::{Activity, Http, Rule};
    use super::*;

    #[test]
    fn each_class_has_its_form() {
        let mut open = Event::new(Class::Network, Activity::OPEN, Severity::Informational, "allowed");
        open.verdict = Some(Verdict::Allowed);
        open.dst = Some(Endpoint::host("api.github.com", 443));
        open.rule = Some(Rule { policy: "github", rule: None });
        assert_eq!(open.shorthand().to_string(), "NET:OPEN [INFO] ALLOWED api.github.com:443 [policy:github]");

        let mut denied = Event::new(Class::Http, Activity::http("POST"), Severity::Medium, "refused");
        denied.verdict = Some(Verdict::Denied);
        denied.http = Some(Http {
            method: "POST",
            scheme: "https",
            host: "api.github.com",
            port: 443,
            path: "/user/repos",
            status: None,
        });
        let long = "x".repeat(100);
        denied.detail = Some(&long);
        let text = denied.shorthand().to_string();
        assert_eq!(
            text,
            format!("HTTP:POST [MED] DENIED POST https://api.github.com/user/repos [reason:{}...]", "x".repeat(80))
        );

        let mut v6 = Event::new(Class::Network, Activity::REFUSE, Severity::Medium, "refused");
        v6.verdict = Some(Verdict::Denied);
        v6.dst = Some(Endpoint::host("::1", 8080));
        v6.detail = Some("loopback\nis private");
        assert_eq!(v6.shorthand().to_string(), "NET:REFUSE [MED] DENIED [::1]:8080 [reason:loopback is private]");

        let mut config = Event::new(Class::Config, Activity::LOG, Severity::High, "policy generation 4 quarantined");
        config.state = Some((1, "Disabled"));
        config.success = Some(false);
        config.detail = Some("invalid");
        assert_eq!(
            config.shorthand().to_string(),
            "CONFIG:DISABLED [HIGH] policy generation 4 quarantined [reason:invalid]"
        );
    }
}
