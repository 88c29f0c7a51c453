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

/// A JSON object as its list of pairs, duplicates kept.
struct Pairs(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = m.next_entry()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(Visit)
    }
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/shared/tls/child-env.json");
    let result = parse_child_env(path, data);
    // The oracle: the same bytes as generic JSON pairs. Every value must be a string (even
    // one a later duplicate key replaces, as the typed reader requires); later keys win.
    let expected = serde_json::from_slice::<Pairs>(data).ok().and_then(|Pairs(pairs)| {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in pairs {
            let serde_json::Value::String(s) = v else { return None };
            map.insert(k, s);
        }
        map.iter().all(|(k, v)| env_name(k) && !v.contains('\0')).then_some(map)
    });
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
