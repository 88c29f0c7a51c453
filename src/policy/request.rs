//! The parts of an HTTP request the L7 rules read, in the two forms they read them. Allow
//! rules read the query one strict way (split at `&`, percent- and `+`-decoded, names as
//! sent). Deny rules read the request the widest way, so that a deny matches whenever some
//! upstream could see what it forbids (fail closed): every reading of the query, the path
//! in ASCII lower case with and without a trailing slash, the method in upper case.

use std::collections::{BTreeMap, BTreeSet};

use percent_encoding::percent_decode_str;

/// How many times a deny reading percent-decodes a query name or value (a value decoded
/// once by a gateway and again by the application is read as the application reads it).
const MAX_DECODES: usize = 3;

/// Parses a query string (without the `?`) into every value of every parameter: the strict
/// reading allow rules use.
pub fn parse_query(query: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    out
}

/// Every value any reading of the query gives each parameter, keyed by the parameter's name
/// in ASCII lower case (ASP.NET and others match names case-insensitively). The readings:
/// pairs separated by `&` alone, or by `&` and `;` (some servers split at `;` too); names
/// and values as sent, and percent-decoded up to [`MAX_DECODES`] times, with `+` kept or
/// read as a space at each step. A parameter without `=` has the empty value.
pub fn query_readings(query: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let pairs = query.split('&').chain(query.split(['&', ';']));
    for pair in pairs.filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let values = spellings(value);
        for name in spellings(name) {
            out.entry(name.to_ascii_lowercase()).or_default().extend(values.iter().cloned());
        }
    }
    out
}

/// `raw` as sent, then decoded up to [`MAX_DECODES`] times, each step with `+` kept and
/// with `+` read as a space.
fn spellings(raw: &str) -> BTreeSet<String> {
    let plus_as_space = |s: &str| s.replace('+', " ");
    let mut level: BTreeSet<String> = [raw.to_owned(), plus_as_space(raw)].into();
    let mut out = level.clone();
    for _ in 0..MAX_DECODES {
        level = level
            .iter()
            .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
            .flat_map(|d| [plus_as_space(&d), d])
            .filter(|s| !out.contains(s))
            .collect();
        if level.is_empty() {
            break;
        }
        out.extend(level.iter().cloned());
    }
    out
}

/// The forms of a canonical path deny rules are matched against: ASCII lower case (IIS and
/// other case-insensitive upstreams), with and without a trailing slash (most upstreams
/// serve `/x` and `/x/` as one resource).
pub fn deny_paths(path: &str) -> Vec<String> {
    let lower = path.to_ascii_lowercase();
    let other = match lower.strip_suffix('/') {
        Some("") => return vec![lower],
        Some(trimmed) => trimmed.to_owned(),
        None => format!("{lower}/"),
    };
    vec![lower, other]
}

/// The patterns a deny rule's path glob stands for against [`deny_paths`]: the glob in
/// ASCII lower case and, when it ends in `/**`, the prefix itself (a deny on `/x/**` covers
/// `/x` and `/x/`).
pub fn deny_patterns(glob: &str) -> Vec<String> {
    let lower = glob.to_ascii_lowercase();
    match lower.strip_suffix("/**").map(|p| if p.is_empty() { "/" } else { p }.to_owned()) {
        Some(prefix) => vec![lower, prefix],
        None => vec![lower],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_encoded_parameters() {
        let q = parse_query("a=1&b=x%20y&a=2&c&d=e+f");
        assert_eq!(q["a"], vec!["1", "2"]);
        assert_eq!(q["b"], vec!["x y"]);
        assert_eq!(q["c"], vec![""]);
        assert_eq!(q["d"], vec!["e f"]);
        assert!(parse_query("").is_empty());
    }

    fn has(query: &str, name: &str, value: &str) -> bool {
        query_readings(query).get(name).is_some_and(|vs| vs.contains(value))
    }

    #[test]
    fn deny_readings_cover_every_way_a_server_may_read_the_query() {
        let service = "git-receive-pack";
        for query in [
            "service=git-receive-pack",
            "service=x&service=git-receive-pack",
            "service=git-receive-pack&service=x",
            "SERVICE=git-receive-pack",
            "Service=x&sErViCe=git-receive-pack",
            "x=1;service=git-receive-pack",
            "x=1&y=2;SERVICE=git-receive-pack",
            "%73ervice=git-receive-pack",
            "%2573ervice=git-receive-pack",
            "service=git%2Dreceive%2Dpack",
            "service=git%252Dreceive-pack",
            "service=x&%53ERVICE=git%2dreceive-pack",
        ] {
            assert!(has(query, "service", service), "{query}: {:?}", query_readings(query));
        }
        // `+` read as a space, and kept; a `%2B` decoded to `+`, and further to a space.
        assert!(has("q=a+b", "q", "a b") && has("q=a+b", "q", "a+b"));
        assert!(has("q=a%2Bb", "q", "a+b") && has("q=a%2Bb", "q", "a b"));
        // The `&`-only reading stays: the value holding the `;` is read whole too.
        assert!(has("x=1;service=y", "x", "1;service=y") && has("x=1;service=y", "x", "1"));
        // No value, an empty value.
        assert!(has("service", "service", "") && has("service=", "service", ""));
        assert!(query_readings("").is_empty() && query_readings("&&").is_empty());
        // A name only ever appears in lower case; the strict reading keeps it as sent.
        assert!(!query_readings("SERVICE=x").contains_key("SERVICE"));
        assert_eq!(parse_query("SERVICE=x").keys().collect::<Vec<_>>(), ["SERVICE"]);
    }

    #[test]
    fn decoding_is_bounded() {
        let deep = format!("q=%25{}41", "25".repeat(5));
        let readings = query_readings(&deep);
        assert!(readings["q"].len() <= 1 + MAX_DECODES, "{readings:?}");
        assert!(!readings["q"].contains("A"), "decoded at most {MAX_DECODES} times: {readings:?}");
    }

    #[test]
    fn deny_path_forms() {
        assert_eq!(deny_paths("/Admin/Users"), ["/admin/users", "/admin/users/"]);
        assert_eq!(deny_paths("/x/"), ["/x/", "/x"]);
        assert_eq!(deny_paths("/"), ["/"]);
        assert_eq!(deny_patterns("/Admin/**"), ["/admin/**", "/admin"]);
        assert_eq!(deny_patterns("/**"), ["/**", "/"]);
        assert_eq!(deny_patterns("/x/*"), ["/x/*"]);
        assert_eq!(deny_patterns("**"), ["**"]);
    }
}
