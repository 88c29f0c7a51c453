//! Validation of an endpoint's credential keys: `credential_binding`, `path` and
//! `request_body_credential_rewrite`. They apply on inspected endpoints only (elsewhere no
//! credential is ever swapped), so they are accepted anywhere, as the gateway sends them.

use marked_yaml::types::MarkedMappingNode;

use super::{Cx, get};
use crate::policy::model::{PathScope, is_provider_name};

/// The credential keys of one endpoint, validated.
pub(super) struct CredentialFields {
    pub binding: Option<String>,
    pub path: Option<PathScope>,
    pub body_rewrite: bool,
}

pub(super) fn fields(cx: &mut Cx, path: &str, map: &MarkedMappingNode) -> CredentialFields {
    let binding = get(map, "credential_binding").and_then(|node| {
        let at = format!("{path}.credential_binding");
        let m = cx.mapping(&at, node)?;
        cx.known_keys(&at, m, &["provider"]);
        let Some(n) = get(m, "provider") else {
            cx.issue(
                &at,
                node,
                "`credential_binding` needs `provider: NAME` (a `[NAME]` section of the provider env file)",
            );
            return None;
        };
        let name = cx.scalar(&format!("{at}.provider"), n)?.as_str().trim();
        if !is_provider_name(name) {
            let message = format!("`{name}` is not a provider name; use letters, digits, `_`, `-` and `.`");
            cx.issue(&format!("{at}.provider"), n, message);
            return None;
        }
        Some(name.to_owned())
    });
    let scope = get(map, "path").and_then(|n| {
        let at = format!("{path}.path");
        let s = cx.scalar(&at, n)?;
        PathScope::parse(s.as_str()).map_err(|e| cx.issue(&at, n, e)).ok()
    });
    let body_rewrite = get(map, "request_body_credential_rewrite")
        .and_then(|n| cx.bool(&format!("{path}.request_body_credential_rewrite"), n))
        .unwrap_or(false);
    CredentialFields { binding, path: scope.filter(|s| *s != PathScope::Any), body_rewrite }
}
