//! Placeholder substitution in a request head (`SecretStore::substitute`), every key bound
//! to the request's host. Properties: an accepted head never holds `openshell:resolve:env:`
//! (raw, percent-decoded, or inside Basic credentials), never a secret whose placeholder the
//! request did not name, and the keys reported used are named secret keys that have a value.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use openshell_sandbox::config::Secret;
use openshell_sandbox::proxy::credentials::{
    BindingEndpoint, Destination, PLACEHOLDER_PREFIX, ProviderEnvironment, SecretStore, placeholder,
};

/// Keys, none a prefix of another, and values no input is likely to hold by chance.
const SECRETS: [(&str, &str); 4] =
    [("API_KEY", "Qx7-aaaa-1"), ("TOKEN", "Qx7-bbbb-2"), ("PASS_1", "Qx7:cc cc&=3"), ("USER", "Qx7+dd/d%4")];
const HEADERS: [&str; 5] = ["authorization", "x-api-key", "proxy-authorization", "cookie", "x-custom"];

#[derive(Arbitrary, Debug)]
struct Input {
    /// Which keys have a value (bit i for SECRETS[i]); the others are unresolved.
    present: u8,
    /// Which present keys are non-secret.
    non_secret: u8,
    target: String,
    headers: Vec<(u8, Vec<u8>)>,
}

/// Lenient Basic decoding: what an upstream may read out of the token.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) if b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every text a reader of the head may see: raw values, Basic credentials decoded, the
/// target raw and percent-decoded.
fn views(parts: &http::request::Parts) -> Vec<String> {
    let mut out = Vec::new();
    for value in parts.headers.values() {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if let Some((scheme, token)) = text.split_once(' ')
            && scheme.eq_ignore_ascii_case("basic")
            && let Ok(decoded) = LENIENT.decode(token.trim())
        {
            out.push(String::from_utf8_lossy(&decoded).into_owned());
        }
        out.push(text);
    }
    let target = parts.uri.to_string();
    out.push(percent_decoded(&target));
    out.push(target);
    out
}

fuzz_target!(|input: Input| {
    let Ok(uri) = input.target.parse::<http::Uri>() else { return };
    let mut builder = http::Request::builder().uri(uri);
    for (name, value) in &input.headers {
        let Ok(value) = http::HeaderValue::from_bytes(value) else { return };
        builder = builder.header(HEADERS[usize::from(*name) % HEADERS.len()], value);
    }
    let Ok(request) = builder.body(()) else { return };
    let (mut parts, ()) = request.into_parts();

    let mut environment = BTreeMap::new();
    let mut non_secret_keys = BTreeSet::new();
    for (i, (key, value)) in SECRETS.iter().enumerate() {
        if input.present & (1 << i) != 0 {
            environment.insert((*key).to_owned(), Secret::new(*value));
            if input.non_secret & (1 << i) != 0 {
                non_secret_keys.insert((*key).to_owned());
            }
        }
    }
    let bound = vec![BindingEndpoint { host: "h.example".into(), port: 443, path: String::new() }];
    let bindings = environment.keys().map(|k| (k.clone(), bound.clone())).collect();
    let env = ProviderEnvironment { environment, revision: 1, non_secret_keys, bindings, ..Default::default() };
    let store = SecretStore::from_provider(&env).expect("the fixed secrets are valid");

    let before = views(&parts).join("\n");
    let named: BTreeSet<&str> = SECRETS.iter().map(|(k, _)| *k).filter(|k| before.contains(&placeholder(k))).collect();
    let to = Destination::plain("h.example", 443, &percent_decoded(parts.uri.path()), false);
    let Ok(injection) = store.substitute(&mut parts, to, true) else { return };
    let used = injection.keys();
    let after = views(&parts);

    for view in &after {
        assert!(!view.contains(PLACEHOLDER_PREFIX), "a placeholder is forwarded: {view:?}\nbefore: {before:?}");
        for (key, value) in SECRETS {
            if view.contains(value) && !before.contains(value) {
                assert!(named.contains(key), "the secret of `{key}`, which the request did not name: {view:?}");
                let secret = !env.non_secret_keys.contains(key);
                assert!(!secret || used.iter().any(|u| u == key), "`{key}` was swapped in but not reported used");
            }
        }
    }
    for key in used {
        assert!(named.contains(key.as_str()), "`{key}` reported used but not named: {before:?}");
        assert!(env.environment.contains_key(key), "`{key}` used without a value");
    }
});
