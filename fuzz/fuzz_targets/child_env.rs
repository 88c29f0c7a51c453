//! `child-env.json` as the agent reads it: every accepted key is an environment variable
//! name, no value holds NUL, and the reader accepts exactly what an independent check of
//! the same JSON accepts, with the same contents.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use openshell_sandbox::volume::{VolumeError, parse_child_env};

fn env_name(k: &str) -> bool {
    let mut bytes = k.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/shared/tls/child-env.json");
    let result = parse_child_env(path, data);
    // The oracle: the same bytes as generic JSON (later duplicate keys win, as in the reader).
    let expected = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) if env_name(&k) && !s.contains('\0') => Some((k, s)),
                _ => None,
            })
            .collect::<Option<std::collections::BTreeMap<_, _>>>(),
        _ => None,
    };
    match result {
        Ok(env) => {
            for (k, v) in &env {
                assert!(env_name(k), "accepted a key that is not an environment variable name: {k:?}");
                assert!(!v.contains('\0'), "accepted a value with NUL for {k:?}");
            }
            assert_eq!(Some(&env), expected.as_ref(), "accepted what the oracle refuses, or with other contents");
        }
        Err(e) => {
            assert!(expected.is_none(), "refused a valid file: {e}");
            assert!(matches!(e, VolumeError::Malformed { .. }), "{e}");
            assert!(e.to_string().contains("/shared/tls/child-env.json"), "the error names the file: {e}");
        }
    }
});
