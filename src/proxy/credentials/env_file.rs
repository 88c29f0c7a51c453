//! The `OPENSHELL_PROVIDER_ENV_FILE` format: `[provider]` section lines, each followed by
//! that provider's `KEY=VALUE` lines. Errors name the line and the key, never the line's
//! text (a mistyped line may be a secret).

use std::collections::BTreeMap;
use std::path::Path;

use super::snapshot::check_entry;
use super::{CredentialError, is_key};
use crate::config::Secret;
use crate::policy::model::is_provider_name;

/// One credential of the file.
#[derive(Debug)]
pub struct Entry {
    /// The variable name.
    pub key: String,
    /// Its 1-based line.
    pub line: usize,
    /// The value.
    pub value: Secret,
    /// The provider section it is in: policy endpoints with
    /// `credential_binding: {provider: NAME}` are where it may go.
    pub provider: String,
}

/// Parses a provider env file into its entries, in file order.
///
/// - Lines are separated by LF. A CR anywhere is refused (convert CRLF files to LF), as is
///   a NUL byte; the file must be UTF-8.
/// - Blank lines and lines whose first non-blank character is `#` are skipped.
/// - `[NAME]` starts the section of provider NAME (letters, digits, `_`, `-`, `.`); every
///   key belongs to the section above it. A key before any section is refused, saying how
///   to bind it.
/// - An `export ` prefix is accepted and ignored, so a shell-sourceable file works.
/// - The key is the text before the first `=` (surrounding blanks ignored) and must be an
///   environment variable name; a key may appear once.
/// - The value is everything after the first `=`, verbatim: no quote removal, no trimming,
///   no escapes. An empty value is allowed.
pub fn parse_env_file(bytes: &[u8], path: &Path) -> Result<Vec<Entry>, CredentialError> {
    let malformed = |line: usize, message: String| CredentialError::Malformed { path: path.to_owned(), line, message };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        malformed(line, "not UTF-8 text".into())
    })?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut provider: Option<String> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let content = raw.trim_start_matches([' ', '\t']);
        if content.trim_end_matches([' ', '\t']).is_empty() || content.starts_with('#') {
            if raw.contains(['\r', '\0']) {
                return Err(malformed(line, "a blank or comment line contains a CR or NUL byte".into()));
            }
            continue;
        }
        if let Some(section) = content.strip_prefix('[') {
            let name = section.trim_end_matches([' ', '\t']).strip_suffix(']').map(|n| n.trim_matches([' ', '\t']));
            match name.filter(|n| is_provider_name(n)) {
                Some(name) => provider = Some(name.to_owned()),
                None => {
                    return Err(malformed(
                        line,
                        "a section line is `[NAME]`, NAME of letters, digits, `_`, `-` and `.`".into(),
                    ));
                }
            }
            continue;
        }
        let content = content.strip_prefix("export ").map_or(content, |c| c.trim_start_matches([' ', '\t']));
        let Some((key, value)) = content.split_once('=') else {
            return Err(malformed(line, "expected KEY=VALUE (no `=` on this line)".into()));
        };
        let key = key.trim_matches([' ', '\t']);
        if !is_key(key) {
            let shown = if key.len() <= 64 && !key.contains(['\r', '\0']) { key } else { "(unprintable)" };
            return Err(malformed(
                line,
                format!("`{shown}` is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        if let Some(first) = seen.insert(key.to_owned(), line) {
            return Err(malformed(line, format!("`{key}` is set again (first on line {first}); set each key once")));
        }
        let place = format!("line {line} of {}", path.display());
        check_entry(key, value, &place)?;
        let Some(provider) = &provider else {
            return Err(CredentialError::Unbound {
                key: key.to_owned(),
                place,
                hint: "put it under a `[NAME]` line naming its provider, and add `credential_binding: {provider: NAME}` to the policy endpoints it may be sent to".to_owned(),
            });
        };
        out.push(Entry { key: key.to_owned(), line, value: Secret::new(value), provider: provider.clone() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<(String, usize, String)>, CredentialError> {
        let entries = parse_env_file(format!("[p]\n{text}").as_bytes(), Path::new("/run/provider.env"))?;
        Ok(entries.into_iter().map(|e| (e.key, e.line - 1, e.value.expose().to_owned())).collect())
    }

    fn err(text: &str) -> String {
        parse(text).expect_err(text).to_string()
    }

    #[test]
    fn keys_values_comments_blanks_and_export() {
        let text =
            "# provider keys\n\nAPI_KEY=sk-1=2 \n  export TOKEN=t\n\t# indented comment\nEMPTY=\n Q = \"quoted\"";
        let got = parse(text).unwrap();
        let want = [("API_KEY", 3, "sk-1=2 "), ("TOKEN", 4, "t"), ("EMPTY", 6, ""), ("Q", 7, " \"quoted\"")];
        assert_eq!(got, want.map(|(k, l, v)| (k.to_owned(), l, v.to_owned())));
        assert!(parse("").unwrap().is_empty());
        assert!(parse("\n\n# only\n").unwrap().is_empty());
    }

    #[test]
    fn a_cr_or_nul_is_refused_naming_key_and_line_but_not_the_value() {
        let e = err("OK=1\nAPI_KEY=hunter2\r\n");
        assert!(e.contains("`API_KEY`") && e.contains("line 3 of /run/provider.env"), "{e}");
        assert!(e.contains("carriage return") && !e.contains("hunter2"), "{e}");
        let e = err("A=1\nB=x\0hunter2");
        assert!(e.contains("`B`") && e.contains("NUL") && !e.contains("hunter2"), "{e}");
        assert!(err("A=1\n\r\n").contains("line 3"));
    }

    #[test]
    fn malformed_lines_are_refused_without_echoing_them() {
        let e = err("A=1\nsk-live-hunter2\n");
        assert!(e.contains("/run/provider.env line 3") && e.contains("no `=`") && !e.contains("hunter2"), "{e}");
        assert!(err("1BAD=x").contains("`1BAD` is not an environment variable name"));
        assert!(err("BAD-KEY=x").contains("`BAD-KEY`"));
        assert!(err("=x").contains("line 2"));
        let long = format!("{}=x", "K-".repeat(100));
        assert!(err(&long).contains("(unprintable)"));
    }

    #[test]
    fn a_key_set_twice_is_refused() {
        let e = err("A=1\nB=2\nA=3");
        assert!(e.contains("line 4") && e.contains("`A` is set again (first on line 2)"), "{e}");
    }

    #[test]
    fn non_utf8_is_refused_naming_the_line() {
        let e = parse_env_file(b"A=1\nB=\xff\xfe", Path::new("/f")).unwrap_err().to_string();
        assert!(e.contains("/f line 2") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn sections_name_the_provider_of_their_keys() {
        let text = "[github]\nGITHUB_TOKEN=ghp\n  [ anthropic.v1 ]  \nANTHROPIC_API_KEY=sk\nB=2\n";
        let entries = parse_env_file(text.as_bytes(), Path::new("/f")).unwrap();
        let got: Vec<(&str, &str, usize)> =
            entries.iter().map(|e| (e.key.as_str(), e.provider.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [("GITHUB_TOKEN", "github", 2), ("ANTHROPIC_API_KEY", "anthropic.v1", 4), ("B", "anthropic.v1", 5)]
        );
        for bad in ["[]", "[a b]", "[x", "[a/b]"] {
            let e = parse_env_file(format!("{bad}\nA=1").as_bytes(), Path::new("/f")).unwrap_err().to_string();
            assert!(e.contains("/f line 1") && e.contains("`[NAME]`"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_key_outside_a_section_is_refused_saying_how_to_bind_it() {
        let e = parse_env_file(b"# keys\nAPI_KEY=hunter2\n[p]\nB=1", Path::new("/f")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("`API_KEY`") && text.contains("line 2 of /f") && !text.contains("hunter2"), "{text}");
        assert!(text.contains("`[NAME]`") && text.contains("credential_binding: {provider: NAME}"), "{text}");
        assert_eq!(crate::ExitStatus::exit_status(&e), crate::Exit::Usage);
    }
}
