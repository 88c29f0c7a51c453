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

/// Every value any reading of the query gives each parameter, names and values in ASCII
/// lower case (ASP.NET and others match names case-insensitively, and many applications
/// values too; deny globs are lowered to match). The readings: pairs separated by `&`
/// alone, or by `&` and `;` (some servers split at `;` too), in the query as sent and in
/// the whole query percent-decoded once (a server that decodes before it splits reads
/// `a%26service%3Dx` as two pairs); names and values as sent, and
/// percent-decoded up to [`MAX_DECODES`] times, with `+` kept or read as a space at each
/// step; each of those also trimmed of whitespace and cut at a NUL (as a C string ends).
/// A parameter without `=` has the empty value.
pub fn query_readings(query: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for query in whole_decodings(query) {
        let pairs = query.split('&').chain(query.split(['&', ';']));
        for pair in pairs.filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let values = spellings(value);
            for name in spellings(name) {
                out.entry(name).or_default().extend(values.iter().cloned());
            }
        }
    }
    out
}

/// `query` as sent, and percent-decoded whole once when that changes it.
fn whole_decodings(query: &str) -> Vec<String> {
    let decoded = percent_decode_str(query).decode_utf8_lossy().into_owned();
    if decoded == query { vec![decoded] } else { vec![query.to_owned(), decoded] }
}

/// `raw` as sent, then decoded up to [`MAX_DECODES`] times, each step with `+` kept and
/// with `+` read as a space; every one in ASCII lower case, as it is and trimmed of
/// whitespace, whole and cut at its first NUL.
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
    let cut = |s: &str| s.split('\0').next().unwrap_or_default().to_owned();
    out.iter()
        .flat_map(|s| [s.clone(), cut(s)])
        .flat_map(|s| [s.trim().to_owned(), s])
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

/// The forms of a canonical path deny rules are matched against: ASCII lower case (IIS and
/// other case-insensitive upstreams), with and without a trailing slash (most upstreams
/// serve `/x` and `/x/` as one resource), and with the last segment's extension removed
/// from its first or its last `.` (Rails formats and Spring's suffix matching serve
/// `/admin.json` as `/admin`).
pub fn deny_paths(path: &str) -> Vec<String> {
    let lower = path.to_ascii_lowercase();
    let trimmed = lower.strip_suffix('/').filter(|t| !t.is_empty()).unwrap_or(&lower).to_owned();
    let mut out = vec![lower.clone()];
    let mut add = |form: String| {
        if !out.contains(&form) {
            out.push(form);
        }
    };
    if trimmed != "/" {
        add(format!("{trimmed}/"));
        add(trimmed.clone());
    }
    let (dir, last) = trimmed.rsplit_once('/').unwrap_or(("", &trimmed));
    for stem in [last.split_once('.'), last.rsplit_once('.')].into_iter().flatten().map(|(stem, _)| stem) {
        if !stem.is_empty() {
            add(format!("{dir}/{stem}"));
            add(format!("{dir}/{stem}/"));
        }
    }
    out
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

/// A deny rule's query matchers as [`query_readings`] meets them: names and globs in ASCII
/// lower case.
pub fn deny_query_globs(query: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, globs) in query {
        out.entry(name.to_ascii_lowercase()).or_default().extend(globs.iter().map(|g| g.to_ascii_lowercase()));
    }
    out
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
    fn values_are_read_lowered_trimmed_cut_at_nul_and_decoded_before_the_split() {
        let service = "git-receive-pack";
        for query in [
            "service=GIT-RECEIVE-PACK",
            "service=git-receive-pack%00",
            "service=git-receive-pack%00.x",
            "service=git-receive-pack%20",
            "service=+git-receive-pack",
            "service=%09git-receive-pack%0A",
            "service%3Dgit-receive-pack",
            "service=git-upload-pack%26service%3Dgit-receive-pack",
            "x=1%26SERVICE=git-receive-pack",
        ] {
            assert!(has(query, "service", service), "{query}: {:?}", query_readings(query));
        }
        for query in ["service=git-receive-packs", "service=git-receive-pac", "service=x%00git-receive-pack"] {
            assert!(!has(query, "service", service), "{query}: {:?}", query_readings(query));
        }
    }

    #[test]
    fn decoding_is_bounded() {
        // Once whole, then up to MAX_DECODES times per value.
        let deep = format!("q=%25{}41", "25".repeat(4));
        let readings = query_readings(&deep);
        assert!(readings["q"].iter().all(|v| v.contains('%')), "{readings:?}");
        assert!(!readings["q"].contains("a"), "decoded at most {} times: {readings:?}", MAX_DECODES + 1);
    }

    #[test]
    fn deny_path_forms() {
        assert_eq!(deny_paths("/Admin/Users"), ["/admin/users", "/admin/users/"]);
        assert_eq!(deny_paths("/x/"), ["/x/", "/x"]);
        assert_eq!(deny_paths("/"), ["/"]);
        assert_eq!(deny_paths("/Admin.JSON"), ["/admin.json", "/admin.json/", "/admin", "/admin/"]);
        assert_eq!(
            deny_paths("/a/x.tar.gz/"),
            ["/a/x.tar.gz/", "/a/x.tar.gz", "/a/x", "/a/x/", "/a/x.tar", "/a/x.tar/"]
        );
        assert_eq!(deny_paths("/.well-known"), ["/.well-known", "/.well-known/"]);
        assert_eq!(deny_patterns("/Admin/**"), ["/admin/**", "/admin"]);
        assert_eq!(deny_patterns("/**"), ["/**", "/"]);
        assert_eq!(deny_patterns("/x/*"), ["/x/*"]);
        assert_eq!(deny_patterns("**"), ["**"]);
    }
}
