//! A destination host read once where the proxy first reads a target (a CONNECT
//! authority, an absolute-form URI, a transparent connection's resolved name): the name
//! as the client wrote it and the normalised name the policy, DNS and SSRF rules use.

use super::normalize_destination;

/// A valid destination host, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationHost {
    /// As written, without IPv6 brackets: what answers and audit lines show.
    shown: String,
    /// [`normalize_destination`]'s form: what the policy matches and DNS resolves.
    name: String,
}

impl DestinationHost {
    /// Parses a host as a client named it (IPv6 literals with or without brackets);
    /// `None` when it cannot be a host at all.
    pub fn parse(raw: &str) -> Option<Self> {
        let name = normalize_destination(raw)?;
        Some(DestinationHost { shown: unbracketed(raw).to_owned(), name })
    }

    /// The host as the client wrote it, without IPv6 brackets (`[::1]` is `::1`).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The normalised name: ASCII lower case, no trailing dot, IPv6 without brackets.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `host` without the brackets of an IPv6 literal (`[::1]` is `::1`); anything else as is.
pub fn unbracketed(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_written_form_and_the_normalised_name() {
        let host = DestinationHost::parse("API.Example.COM.").unwrap();
        assert_eq!((host.shown(), host.name()), ("API.Example.COM.", "api.example.com"));
        let literal = DestinationHost::parse("[2001:DB8::1]").unwrap();
        assert_eq!((literal.shown(), literal.name()), ("2001:DB8::1", "2001:db8::1"));
        let bare = DestinationHost::parse("::1").unwrap();
        assert_eq!((bare.shown(), bare.name()), ("::1", "::1"));
        for invalid in ["", "a b", "[]", "a..b", "[example.com"] {
            assert_eq!(DestinationHost::parse(invalid), None, "{invalid}");
        }
    }

    #[test]
    fn only_a_bracketed_pair_is_removed() {
        assert_eq!(unbracketed("[::1]"), "::1");
        assert_eq!(unbracketed("[::1"), "[::1");
        assert_eq!(unbracketed("example.com"), "example.com");
    }
}
