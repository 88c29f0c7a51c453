//! OCSF validation of audit events: the vendored OCSF 1.8.0 class schemas (`tests/ocsf/`,
//! see its README) plus what a schema cannot say: `type_uid` agrees with the class and
//! activity, `metadata.version` is the pinned one, `metadata.profiles` is the schema's set.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

/// The OCSF version the schemas were generated for and every event must declare.
pub const VERSION: &str = "1.8.0";

/// One vendored class schema: its `class_uid` and the schema file's text.
struct Class {
    uid: u64,
    schema: &'static str,
}

macro_rules! class {
    ($uid:literal, $name:literal) => {
        Class {
            uid: $uid,
            schema: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ocsf/1.8.0/", $name, ".json")),
        }
    };
}

/// The classes the sandbox emits, each as `scripts/ocsf-schemas.py` generated it.
const CLASSES: [Class; 7] = [
    class!(4001, "network_activity"),
    class!(4002, "http_activity"),
    class!(4007, "ssh_activity"),
    class!(1007, "process_activity"),
    class!(2004, "detection_finding"),
    class!(5019, "device_config_state_change"),
    class!(6003, "api_activity"),
];

/// A class schema compiled once, with the profiles it was generated with (sorted).
struct Compiled {
    validator: Validator,
    profiles: Vec<String>,
}

/// The compiled schema of `class_uid`, or `None` for a class that is not vendored.
fn compiled(class_uid: u64) -> Option<&'static Compiled> {
    static COMPILED: [OnceLock<Compiled>; CLASSES.len()] = [const { OnceLock::new() }; CLASSES.len()];
    let index = CLASSES.iter().position(|class| class.uid == class_uid)?;
    Some(COMPILED[index].get_or_init(|| compile(&CLASSES[index])))
}

fn compile(class: &Class) -> Compiled {
    let schema: Value = serde_json::from_str(class.schema).expect("a vendored OCSF schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a vendored OCSF schema compiles");
    // The generator names the profiles in the schema's $id: ...?profiles=a,b,c (sorted).
    let id = schema["$id"].as_str().expect("a vendored OCSF schema has an $id");
    let profiles = id.split_once("?profiles=").map_or("", |(_, list)| list);
    let profiles = profiles.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    Compiled { validator, profiles }
}

/// Checks `event` against the OCSF 1.8.0 schema of its `class_uid` and the rules above;
/// each error is `<JSON pointer>: <message>`.
pub fn validate(event: &Value) -> Result<(), Vec<String>> {
    let Some(class_uid) = event.get("class_uid").and_then(Value::as_u64) else {
        return Err(vec![format!("/class_uid: {} is not a class uid", shown(event.get("class_uid")))]);
    };
    let Some(class) = compiled(class_uid) else {
        let known: Vec<u64> = CLASSES.iter().map(|class| class.uid).collect();
        return Err(vec![format!("/class_uid: {class_uid} is none of the vendored classes {known:?}")]);
    };
    let mut errors: Vec<String> = class
        .validator
        .iter_errors(event)
        .map(|error| format!("{}: {}", pointer(error.instance_path().as_str()), message(&error)))
        .collect();

    let activity_id = event.get("activity_id").and_then(Value::as_u64);
    let type_uid = event.get("type_uid").and_then(Value::as_u64);
    if let (Some(activity_id), Some(type_uid)) = (activity_id, type_uid)
        && type_uid != class_uid * 100 + activity_id
    {
        errors.push(format!(
            "/type_uid: {type_uid} is not class_uid * 100 + activity_id = {}",
            class_uid * 100 + activity_id
        ));
    }
    if let Some(metadata) = event.get("metadata") {
        if let Some(version) = metadata.get("version")
            && version != VERSION
        {
            errors.push(format!("/metadata/version: {version} is not \"{VERSION}\""));
        }
        let mut declared: Option<Vec<&str>> = metadata
            .get("profiles")
            .and_then(Value::as_array)
            .and_then(|profiles| profiles.iter().map(Value::as_str).collect());
        if let Some(declared) = &mut declared {
            declared.sort_unstable();
        }
        if declared != Some(class.profiles.iter().map(String::as_str).collect()) {
            errors.push(format!(
                "/metadata/profiles: {} is not the schema's profiles {:?} (in any order)",
                shown(metadata.get("profiles")),
                class.profiles
            ));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Panics, showing the event and every error, unless `event` passes [`validate`].
#[track_caller]
pub fn assert_valid(event: &Value) {
    if let Err(errors) = validate(event) {
        let pretty = serde_json::to_string_pretty(event).expect("a JSON value prints");
        panic!("not a valid OCSF {VERSION} event:\n  {}\n{pretty}", errors.join("\n  "));
    }
}

/// An error's message; an `anyOf` (OCSF's at_least_one) names what each alternative
/// lacks instead of printing the whole instance.
fn message(error: &ValidationError) -> String {
    match error.kind() {
        ValidationErrorKind::AnyOf { context } => {
            let alternatives: Vec<String> =
                context.iter().map(|errors| errors.iter().map(message).collect::<Vec<_>>().join(", ")).collect();
            format!("none of anyOf holds: {}", alternatives.join(" | "))
        }
        _ => error.to_string(),
    }
}

/// A JSON pointer as an error shows it: the root is `(root)`, not the empty string.
fn pointer(path: &str) -> &str {
    if path.is_empty() { "(root)" } else { path }
}

/// A value as an error shows it, `missing` when absent.
fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "missing".to_owned(), Value::to_string)
}

/// Checks every OCSF JSON line of `lines` (as [`crate::support::capture::ocsf`] gives them).
pub fn assert_all_valid(lines: &str) {
    for line in lines.lines() {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("an OCSF line is not JSON ({e}): {line}"));
        assert_valid(&event);
    }
}
