//! The `path` of an endpoint (and of a gateway credential binding): where on the endpoint
//! its bound credentials may be used, judged on the canonical request path. A plain path is
//! a prefix on a segment boundary, `/x/**` means the same, and a pattern with `*` is a glob.

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};
use serde::{Serialize, Serializer};

/// A validated path scope.
#[derive(Clone, Debug)]
pub enum PathScope {
    /// Every path (`/`, `**`, `/**`, or an empty path from the gateway).
    Any,
    /// This path and everything below it: `/v1` covers `/v1` and `/v1/x`, not `/v10`.
    Prefix(String),
    /// A glob: `*` within one segment, `**` across segments (as in L7 rules).
    Glob {
        /// The pattern as written.
        pattern: String,
        /// Its compiled form.
        matcher: GlobMatcher,
    },
}

impl PathScope {
    /// Parses a scope; the error says what is allowed. An empty string is [`PathScope::Any`].
    pub fn parse(raw: &str) -> Result<Self, String> {
        let path = raw.trim();
        if matches!(path, "" | "/" | "**" | "/**") {
            return Ok(PathScope::Any);
        }
        let bad = |why: &str| {
            Err(format!(
                "path `{path}` {why}; write an absolute path like `/v1` (it covers `/v1/...`) or a glob like `/v1/*/messages`"
            ))
        };
        if !path.starts_with('/') {
            return bad("does not start with `/`");
        }
        if path.contains(['?', '#']) || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return bad("holds a query, a fragment, a space or a control character");
        }
        let trimmed = path.strip_suffix("/**").unwrap_or(path).trim_end_matches('/');
        if trimmed.split('/').skip(1).any(|s| s.is_empty() || s == "." || s == "..") {
            return bad("has an empty, `.` or `..` segment");
        }
        if !trimmed.contains('*') {
            return Ok(PathScope::Prefix(trimmed.to_owned()));
        }
        match GlobBuilder::new(path).literal_separator(true).build() {
            Ok(glob) => Ok(PathScope::Glob { pattern: path.to_owned(), matcher: glob.compile_matcher() }),
            Err(e) => bad(&format!("is not a valid glob ({e})")),
        }
    }

    /// Whether the canonical request path `path` (no query) is in scope.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathScope::Any => true,
            PathScope::Prefix(prefix) => {
                path.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathScope::Glob { matcher, .. } => matcher.is_match(path),
        }
    }

    /// The scope as written (normalised): `/` for every path.
    pub fn as_str(&self) -> &str {
        match self {
            PathScope::Any => "/",
            PathScope::Prefix(p) => p,
            PathScope::Glob { pattern, .. } => pattern,
        }
    }
}

impl PartialEq for PathScope {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Display for PathScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PathScope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        for raw in ["/v1", "/v1/", "/v1/**"] {
            let scope = PathScope::parse(raw).unwrap();
            assert_eq!(scope.as_str(), "/v1", "{raw}");
            for path in ["/v1", "/v1/", "/v1/messages", "/v1/a/b"] {
                assert!(scope.matches(path), "{raw} {path}");
            }
            for path in ["/v10", "/v1x/a", "/", "/v2/v1", "/V1"] {
                assert!(!scope.matches(path), "{raw} {path}");
            }
        }
    }

    #[test]
    fn any_and_globs() {
        for raw in ["", "/", "**", "/**", "  "] {
            let scope = PathScope::parse(raw).unwrap();
            assert!(scope.matches("/") && scope.matches("/a/b"), "{raw}");
        }
        let glob = PathScope::parse("/bot*/sendMessage").unwrap();
        assert!(glob.matches("/bot123/sendMessage"));
        assert!(!glob.matches("/bot1/x/sendMessage") && !glob.matches("/bot1/sendMessage/x"));
        let deep = PathScope::parse("/v1/**/files").unwrap();
        assert!(deep.matches("/v1/a/b/files") && !deep.matches("/v2/a/files"));
    }

    #[test]
    fn malformed_scopes_are_refused_with_a_hint() {
        for raw in ["v1", "/v1?x=1", "/a/../b", "/a//b", "/a/./b", "/a b", "/a\u{1}", "/a/*[", "/#x"] {
            let e = PathScope::parse(raw).unwrap_err();
            assert!(e.contains("write an absolute path"), "{raw}: {e}");
        }
    }
}
