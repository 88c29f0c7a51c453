//! The parts of an HTTP request the L7 rules read, in the form they read them: the query
//! string parsed into `{name: [values]}` (percent- and `+`-decoded, order kept).

use std::collections::BTreeMap;

/// Parses a query string (without the `?`) into every value of every parameter.
pub fn parse_query(query: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
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
}
