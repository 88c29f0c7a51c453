//! The local inference routes file (`OPENSHELL_INFERENCE_ROUTES`), read into the same
//! [`InferenceBundle`] the gateway's `GetInferenceBundle` gives. Every problem is reported
//! with its YAML path and line; an API key is never echoed.
//!
//! ```yaml
//! routes:
//!   - name: default                       # required, unique
//!     base_url: https://api.openai.com/v1 # required, http or https, no user:password@
//!     protocols: [openai]                 # required, at least one
//!     api_key: sk-...                     # optional (a local server may need none)
//!     model_id: gpt-4o-mini               # optional: empty keeps the caller's model
//!     provider_type: openai               # optional
//!     timeout_secs: 60                    # optional; 0 or absent: the response timeout
//!     model_in_path: false                # optional: the model id goes in the URL path (needs model_id)
//!     request_path_override: ":predict"   # optional: replaces the request's path (see inference::upstream_uri)
//! ```

mod bundle;
mod handle;

pub use bundle::{InferenceBundle, Route};
pub use handle::RoutesHandle;

use std::path::{Path, PathBuf};

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use crate::config::Secret;
use crate::policy::Issue;
use crate::{Exit, ExitStatus};

/// The revision given to a bundle read from the local file.
pub const FILE_REVISION: &str = "local-file";

const ROUTE_KEYS: &[&str] = &[
    "name",
    "base_url",
    "protocols",
    "api_key",
    "model_id",
    "provider_type",
    "timeout_secs",
    "model_in_path",
    "request_path_override",
];

/// Failures of reading the routes file. Both exit 64.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The file could not be read.
    #[error("cannot read the inference routes file {path} (OPENSHELL_INFERENCE_ROUTES): {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid routes document.
    #[error("the inference routes file {} is invalid:\n  {}", path.display(), issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        issues: Vec<Issue>,
    },
}

impl ExitStatus for RoutesError {
    fn exit_status(&self) -> Exit {
        Exit::Usage
    }
}

/// Validates the contents of the routes file `path` into a bundle (revision [`FILE_REVISION`]).
pub fn parse_routes_file(bytes: &[u8], path: &Path) -> Result<InferenceBundle, RoutesError> {
    let text = std::str::from_utf8(bytes).map_err(|e| RoutesError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let routes = parse_routes(text).map_err(|issues| RoutesError::Invalid { path: path.to_owned(), issues })?;
    Ok(InferenceBundle { routes, revision: FILE_REVISION.to_owned(), generated_at_ms: 0 })
}

/// Parses a routes document; `Err` holds every issue in document order.
pub fn parse_routes(text: &str) -> Result<Vec<Route>, Vec<Issue>> {
    let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
    let root = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| vec![yaml_issue(&e)])?;
    let mut cx = Cx::default();
    let routes = document(&mut cx, &root);
    if cx.issues.is_empty() { Ok(routes) } else { Err(cx.issues) }
}

fn document(cx: &mut Cx, root: &Node) -> Vec<Route> {
    let Some(map) = cx.mapping("", root) else { return Vec::new() };
    cx.known_keys("", map, &["routes"]);
    let Some(node) = map.get_node("routes") else {
        cx.issue(
            "routes",
            root,
            "missing: the file needs `routes:` with a list of routes (it may be empty: `routes: []`)",
        );
        return Vec::new();
    };
    let Some(items) = node.as_sequence() else {
        cx.issue("routes", node, "expected a list of routes (`- name: ...` items)");
        return Vec::new();
    };
    let mut names: Vec<&str> = Vec::new();
    let mut routes = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("routes[{i}]");
        let name_node = item.as_mapping().and_then(|m| m.get_node("name"));
        if let Some(name) = name_node.and_then(Node::as_scalar).map(|s| s.as_str()) {
            if names.contains(&name) {
                cx.issue(
                    &format!("{path}.name"),
                    name_node.unwrap_or(item),
                    format!("the route name `{name}` is used twice"),
                );
            }
            names.push(name);
        }
        routes.extend(route(cx, &path, item));
    }
    routes
}

fn route(cx: &mut Cx, path: &str, node: &Node) -> Option<Route> {
    let map = cx.mapping(path, node)?;
    cx.known_keys(path, map, ROUTE_KEYS);
    let at = |key: &str| map.get_node(key).unwrap_or(node);
    let name = cx.text(path, map, "name", true).filter(|n| {
        let ok = !n.is_empty();
        if !ok {
            cx.issue(&format!("{path}.name"), at("name"), "must not be empty");
        }
        ok
    });
    let base_url = cx
        .text(path, map, "base_url", true)
        .filter(|url| cx.check_url(&format!("{path}.base_url"), at("base_url"), url));
    let protocols = cx.protocols(path, map, node);
    let api_key = cx.text(path, map, "api_key", false).unwrap_or_default();
    if api_key.contains(['\r', '\n', '\0']) {
        cx.issue(
            &format!("{path}.api_key"),
            at("api_key"),
            "contains a line break or NUL byte; an API key is one line",
        );
    }
    let model_id = cx.text(path, map, "model_id", false).unwrap_or_default();
    let provider_type = cx.text(path, map, "provider_type", false).unwrap_or_default();
    let timeout = match map.get_node("timeout_secs") {
        None => None,
        Some(n) => match n.as_scalar().and_then(|s| s.as_str().parse::<u64>().ok()) {
            Some(0) => None,
            Some(secs) => Some(std::time::Duration::from_secs(secs)),
            None => {
                cx.issue(&format!("{path}.timeout_secs"), n, "expected a whole number of seconds (0 or absent: none)");
                None
            }
        },
    };
    let model_in_path = match map.get_node("model_in_path") {
        None => false,
        Some(n) => match n.as_scalar().map(|s| s.as_str()) {
            Some("true") => true,
            Some("false") => false,
            _ => {
                cx.issue(&format!("{path}.model_in_path"), n, "expected true or false");
                false
            }
        },
    };
    if model_in_path && model_id.is_empty() {
        cx.issue(
            &format!("{path}.model_in_path"),
            at("model_in_path"),
            "needs model_id: the model that goes in the path",
        );
    }
    let request_path_override = cx.text(path, map, "request_path_override", false);
    Some(Route {
        name: name?,
        base_url: base_url?,
        protocols: protocols?,
        api_key: Secret::new(api_key),
        model_id,
        provider_type,
        timeout,
        model_in_path,
        request_path_override,
    })
}

#[derive(Default)]
struct Cx {
    issues: Vec<Issue>,
}

impl Cx {
    fn issue(&mut self, path: &str, node: &Node, message: impl Into<String>) {
        let line = node.span().start().map(|m| m.line()).filter(|l| *l > 0);
        self.issues.push(Issue { path: path.to_owned(), line, message: message.into() });
    }

    fn mapping<'a>(&mut self, path: &str, node: &'a Node) -> Option<&'a MarkedMappingNode> {
        let found = node.as_mapping();
        if found.is_none() {
            self.issue(path, node, "expected a mapping of `key: value` entries");
        }
        found
    }

    fn known_keys(&mut self, path: &str, map: &MarkedMappingNode, allowed: &[&str]) {
        for (key, value) in map.iter() {
            if !allowed.contains(&key.as_str()) {
                let at = if path.is_empty() { key.as_str().to_owned() } else { format!("{path}.{}", key.as_str()) };
                self.issue(&at, value, format!("unknown key `{}`; allowed here: {}", key.as_str(), allowed.join(", ")));
            }
        }
    }

    /// A string value; reports a missing required key or a non-scalar.
    fn text(&mut self, path: &str, map: &MarkedMappingNode, key: &str, required: bool) -> Option<String> {
        let at = format!("{path}.{key}");
        match map.get_node(key) {
            None if required => {
                let line = map.span().start().map(|m| m.line()).filter(|l| *l > 0);
                self.issues.push(Issue { path: at, line, message: "missing (required)".into() });
                None
            }
            None => None,
            Some(Node::Scalar(s)) => Some(s.as_str().to_owned()),
            Some(n) => {
                self.issue(&at, n, "expected a single value");
                None
            }
        }
    }

    /// Checks a base URL without echoing it (it could hold credentials).
    fn check_url(&mut self, path: &str, node: &Node, url: &str) -> bool {
        let problem = match url.parse::<http::Uri>() {
            Err(_) => Some("is not a URL"),
            Ok(uri) if !matches!(uri.scheme_str(), Some("http" | "https")) => {
                Some("must start with https:// or http://")
            }
            Ok(uri) if uri.authority().is_none_or(|a| a.host().is_empty()) => Some("has no host"),
            Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
                Some("must not hold user:password@; put the key in api_key")
            }
            Ok(uri) if uri.query().is_some() => Some("must not have a query"),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            self.issue(path, node, problem);
        }
        problem.is_none()
    }

    fn protocols(&mut self, path: &str, map: &MarkedMappingNode, node: &Node) -> Option<Vec<String>> {
        let at = format!("{path}.protocols");
        let Some(list) = map.get_node("protocols") else {
            self.issue(&at, node, "missing (required): the API shapes the route serves, like [openai] or [anthropic]");
            return None;
        };
        let items: Option<Vec<String>> =
            list.as_sequence().and_then(|s| s.iter().map(|n| n.as_scalar().map(|s| s.as_str().to_owned())).collect());
        match items {
            Some(items) if !items.is_empty() && items.iter().all(|p| !p.is_empty()) => Some(items),
            _ => {
                self.issue(&at, list, "expected a non-empty list of protocol names, like [openai]");
                None
            }
        }
    }
}

fn yaml_issue(e: &marked_yaml::LoadError) -> Issue {
    use marked_yaml::LoadError as E;
    let (marker, message) = match e {
        E::TopLevelMustBeMapping(m) => (Some(m), "the top level must be a mapping with `routes:`".to_owned()),
        E::TopLevelMustBeSequence(m) => (Some(m), "unexpected list at the top level".to_owned()),
        E::UnexpectedAnchor(m) => (Some(m), "YAML anchors and aliases are not accepted".to_owned()),
        E::MappingKeyMustBeScalar(m) => (Some(m), "a mapping key must be a plain value".to_owned()),
        E::UnexpectedTag(m) => (Some(m), "YAML tags (`!tag`) are not accepted".to_owned()),
        E::ScanError(m, err) => (Some(m), format!("not valid YAML: {}", err.info())),
        E::DuplicateKey(d) => (d.key.span().start(), format!("key `{}` appears twice", d.key.as_str())),
    };
    Issue { path: String::new(), line: marker.map(|m| m.line()).filter(|l| *l > 0), message }
}

#[cfg(test)]
mod tests;
