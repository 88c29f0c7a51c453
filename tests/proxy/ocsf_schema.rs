//! The OCSF harness itself (`support::ocsf`): one realistic hand-written event per class the
//! sandbox emits passes, and each event turned invalid (no metadata, an enum value out of
//! range, an unknown or misplaced field, a wrong type_uid, version or profile set) is refused
//! with the JSON pointer of the fault.
//
// What OCSF 1.8.0 demands of each class, as vendored (tests/ocsf/1.8.0/, with our profiles):
//
// | class                           | required beyond the base fields  | at least one of            |
// |---------------------------------|----------------------------------|----------------------------|
// | 4001 network_activity           | -                                | dst_endpoint, src_endpoint |
// | 4002 http_activity              | -                                | http_request, http_response|
// | 4007 ssh_activity               | -                                | dst_endpoint, src_endpoint |
// | 1007 process_activity           | actor, device, process           | -                          |
// | 2004 detection_finding          | finding_info                     | -                          |
// | 5019 device_config_state_change | device                           | -                          |
// | 6003 api_activity               | actor, api, src_endpoint         | -                          |
//
// Base fields, required in every class: activity_id, category_uid, class_uid, metadata,
// severity_id, time (integer, ms since the epoch), type_uid. (The export also marks `cloud`
// and `osint` required; they belong to the cloud and osint profiles, which we do not declare.)
// Objects: metadata requires product and version; product at least one of name/uid; feature
// name/uid; device requires type_id and one of ip/uid/name/hostname/instance_uid/
// interface_uid/interface_name; network_endpoint (src_, dst_, proxy_endpoint) one of ip/uid/
// name/hostname/svc_name/instance_uid/interface_uid/interface_name/domain; connection_info
// requires direction_id; firewall_rule one of name/uid; policy one of name/type/uid;
// http_response requires code; url one of url_string/path; actor one of process/user/
// invoked_by/session/app_name/app_uid; process one of pid/uid/cpid; user one of account/name/
// uid; container one of uid/name; api requires operation; service one of name/uid;
// finding_info requires uid; ai_model requires name and ai_provider; message_context one of
// service/application (token counts alone are not enough).
//
// Where 1.8.0 differs from docs (the research brief) or surprises:
// - ai_model and message_context exist in api_activity only with the ai_operation profile,
//   so 6003 is generated with it and must declare it.
// - detection_finding's status_id is the finding's state: 0 Unknown, 1 New, 2 In Progress,
//   3 Suppressed, 4 Resolved, 5 Archived, 6 Deleted, 99 Other (not 1 Success / 2 Failure).
// - http_request.http_method is an enum: OPTIONS GET HEAD POST PUT DELETE TRACE CONNECT PATCH;
//   any other method fails, so it must be left out (activity_id 99 Other) for other methods.
// - Every activity_id enum also has 0 Unknown and 99 Other; device.type_id has no sandbox
//   value (0 Unknown .. 15 Load Balancer, 99 Other), hence 99 with type "Sandbox".
// - The container profile adds no top-level field to any class: `container` lives inside
//   device, process and the endpoints.

use crate::support::ocsf::{self, VERSION};

use serde_json::{Value, json};

const TIME: u64 = 1_764_806_400_000;
const SANDBOX_ID: &str = "7f1c2d9e-5b4a-4e8f-9a61-2c3d4e5f6a7b";
const NETWORK_PROFILES: [&str; 4] = ["host", "security_control", "container", "network_proxy"];
const PROFILES: [&str; 3] = ["host", "security_control", "container"];

fn metadata(feature: &str, profiles: &[&str]) -> Value {
    json!({
        "version": VERSION,
        "product": {
            "name": "openshell-sandbox",
            "vendor_name": "OpenShell",
            "version": "0.1.0",
            "feature": { "name": feature },
        },
        "profiles": profiles,
        "uid": "0b9a7c52-1f3e-4d6a-8c2b-9e8f7a6b5c4d",
        "correlation_uid": "conn-17",
    })
}

fn device() -> Value {
    json!({
        "type_id": 99,
        "type": "Sandbox",
        "uid": SANDBOX_ID,
        "hostname": "sandbox-7f1c",
        "container": { "name": "openshell-proxy" },
    })
}

fn firewall_rule() -> Value {
    json!({ "name": "github", "uid": "github/0", "type": "policy" })
}

/// 4001 Open: a CONNECT to api.github.com:443 allowed by the policy `github`.
fn network_open() -> Value {
    json!({
        "class_uid": 4001, "category_uid": 4, "activity_id": 1, "type_uid": 400101,
        "class_name": "Network Activity", "activity_name": "Open",
        "severity_id": 1, "severity": "Informational", "time": TIME,
        "action_id": 1, "action": "Allowed", "disposition_id": 1, "disposition": "Allowed",
        "status_id": 1, "status": "Success", "message": "CONNECT api.github.com:443 allowed",
        "src_endpoint": { "ip": "10.200.0.2", "port": 51724 },
        "dst_endpoint": { "hostname": "api.github.com", "port": 443 },
        "proxy_endpoint": { "ip": "10.200.0.1", "port": 3128 },
        "connection_info": { "uid": "conn-17", "direction_id": 2, "protocol_name": "tcp" },
        "firewall_rule": firewall_rule(),
        "device": device(),
        "metadata": metadata("proxy", &NETWORK_PROFILES),
    })
}

/// 4002 Get: an inspected GET answered 200, forwarded under the policy `github`.
fn http_get() -> Value {
    json!({
        "class_uid": 4002, "category_uid": 4, "activity_id": 3, "type_uid": 400203,
        "severity_id": 1, "time": TIME, "action_id": 1, "disposition_id": 1, "status_id": 1,
        "http_request": {
            "http_method": "GET",
            "url": { "scheme": "https", "hostname": "api.github.com", "port": 443, "path": "/user" },
        },
        "http_response": { "code": 200 },
        "dst_endpoint": { "hostname": "api.github.com", "port": 443 },
        "connection_info": { "uid": "conn-17", "direction_id": 2, "protocol_name": "tcp" },
        "firewall_rule": firewall_rule(),
        "device": device(),
        "metadata": metadata("proxy", &NETWORK_PROFILES),
    })
}

/// 4007 Open: an SSH connection to the agent, authenticated by public key.
fn ssh_open() -> Value {
    json!({
        "class_uid": 4007, "category_uid": 4, "activity_id": 1, "type_uid": 400701,
        "severity_id": 1, "time": TIME, "action_id": 1, "disposition_id": 1, "status_id": 1,
        "auth_type_id": 6, "auth_type": "Public Key",
        "src_endpoint": { "ip": "10.89.0.1", "port": 40312 },
        "dst_endpoint": { "ip": "10.89.0.5", "port": 2222 },
        "connection_info": { "uid": "ssh-3", "direction_id": 1, "protocol_name": "tcp" },
        "actor": { "user": { "name": "sandbox" }, "session": { "uid": "ssh-3", "is_remote": true } },
        "device": device(),
        "metadata": metadata("agent", &NETWORK_PROFILES),
    })
}

/// 1007 Launch: the exec child of an SSH session started.
fn process_launch() -> Value {
    json!({
        "class_uid": 1007, "category_uid": 1, "activity_id": 1, "type_uid": 100701,
        "severity_id": 1, "time": TIME, "status_id": 1, "launch_type_id": 1,
        "actor": { "session": { "uid": "ssh-3", "is_remote": true } },
        "process": { "pid": 4242, "name": "bash" },
        "device": device(),
        "metadata": metadata("agent", &PROFILES),
    })
}

/// 2004 Create: a proxy bypass attempt (a raw TCP connection to an address the policy DNS
/// never handed out).
fn finding_bypass() -> Value {
    json!({
        "class_uid": 2004, "category_uid": 2, "activity_id": 1, "type_uid": 200401,
        "severity_id": 4, "time": TIME, "status_id": 1, "status": "New",
        "action_id": 2, "disposition_id": 2, "is_alert": true, "confidence_id": 3,
        "finding_info": { "uid": "f3b1c0de-6a0e-4c8e-b3f1-5d2a9e7c4b10", "title": "Proxy bypass attempt", "types": ["bypass"] },
        "device": device(),
        "metadata": metadata("proxy", &PROFILES),
    })
}

/// 5019 Log: policy generation 3 installed.
fn config_loaded() -> Value {
    json!({
        "class_uid": 5019, "category_uid": 5, "activity_id": 1, "type_uid": 501901,
        "severity_id": 1, "time": TIME, "status_id": 1, "state_id": 2, "state": "Enabled",
        "message": "policy loaded",
        "device": device(),
        "unmapped": { "generation": 3, "policy_hash": "9c1e0f" },
        "metadata": metadata("proxy", &PROFILES),
    })
}

/// 6003 Create: an inference call routed to a provider, with its model and token counts.
fn api_inference() -> Value {
    let mut profiles = PROFILES.to_vec();
    profiles.push("ai_operation");
    json!({
        "class_uid": 6003, "category_uid": 6, "activity_id": 1, "type_uid": 600301,
        "severity_id": 1, "time": TIME, "duration": 812,
        "action_id": 1, "disposition_id": 1, "status_id": 1,
        "api": { "operation": "POST /v1/chat/completions", "service": { "name": "openai" } },
        "actor": { "app_name": "openshell-sandbox" },
        "src_endpoint": { "ip": "10.200.0.2", "port": 51730 },
        "ai_model": { "name": "gpt-4o", "ai_provider": "openai" },
        "message_context": {
            "service": { "name": "openai" },
            "prompt_tokens": 512, "completion_tokens": 128, "total_tokens": 640,
        },
        "device": device(),
        "metadata": metadata("proxy", &profiles),
    })
}

fn every_class() -> [Value; 7] {
    [network_open(), http_get(), ssh_open(), process_launch(), finding_bypass(), config_loaded(), api_inference()]
}

/// `validate` refuses `event` with an error at `pointer` whose message contains `naming`.
fn assert_refused(event: &Value, pointer: &str, naming: &str) {
    let errors = ocsf::validate(event).expect_err(&format!("refused: {event}"));
    let at = format!("{pointer}: ");
    let found = errors.iter().any(|error| error.starts_with(&at) && error.contains(naming));
    assert!(found, "{pointer} and {naming} named among {errors:#?}");
}

/// `event` with `value` at `pointer` (its parent must exist).
fn set(mut event: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    let parent = event.pointer_mut(parent).and_then(Value::as_object_mut).expect("an object at the parent");
    parent.insert(key.to_owned(), value);
    event
}

/// `event` without the fields at `pointers`.
fn without(mut event: Value, pointers: &[&str]) -> Value {
    for pointer in pointers {
        let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
        let parent = event.pointer_mut(parent).and_then(Value::as_object_mut).expect("an object at the parent");
        parent.remove(key).expect("the field to remove");
    }
    event
}

/// The profiles `event` declares, changed by `change`.
fn profiles(event: &Value, change: impl FnOnce(&mut Vec<Value>)) -> Value {
    let mut profiles = event["metadata"]["profiles"].as_array().expect("declared profiles").clone();
    change(&mut profiles);
    Value::Array(profiles)
}

#[test]
fn one_event_of_each_class_is_valid() {
    for event in every_class() {
        ocsf::assert_valid(&event);
    }
}

#[test]
fn profiles_in_any_order_are_valid() {
    for event in every_class() {
        let reversed = profiles(&event, |profiles| profiles.reverse());
        ocsf::assert_valid(&set(event, "/metadata/profiles", reversed));
    }
}

#[test]
fn an_event_without_metadata_is_refused() {
    for event in every_class() {
        assert_refused(&without(event, &["/metadata"]), "(root)", "\"metadata\" is a required property");
    }
}

#[test]
fn an_enum_value_out_of_range_is_refused() {
    for event in every_class() {
        assert_refused(&set(event.clone(), "/severity_id", json!(42)), "/severity_id", "42 is not one of");
        assert_refused(&set(event, "/device/type_id", json!(42)), "/device/type_id", "42 is not one of");
    }
}

#[test]
fn an_unknown_or_misplaced_field_is_refused() {
    for event in every_class() {
        let container = json!({ "name": "openshell-proxy" });
        assert_refused(&set(event.clone(), "/container", container), "(root)", "'container' was unexpected");
        assert_refused(
            &set(event, "/metadata/sandbox_id", json!(SANDBOX_ID)),
            "/metadata",
            "'sandbox_id' was unexpected",
        );
    }
    // ai_operation's fields in a class generated without it.
    let ai_model = json!({ "name": "gpt-4o", "ai_provider": "openai" });
    assert_refused(&set(network_open(), "/ai_model", ai_model), "(root)", "'ai_model' was unexpected");
}

#[test]
fn a_type_uid_of_another_activity_or_class_is_refused() {
    for event in every_class() {
        // Activity 99 of the same class is in the schema's enum: only the formula check sees it.
        let other_activity = event["class_uid"].as_u64().unwrap() * 100 + 99;
        assert_refused(&set(event.clone(), "/type_uid", json!(other_activity)), "/type_uid", "activity_id");
        assert_refused(&set(event, "/type_uid", json!(300201)), "/type_uid", "300201");
    }
}

#[test]
fn a_wrong_version_or_profile_set_is_refused() {
    for event in every_class() {
        assert_refused(&set(event.clone(), "/metadata/version", json!("1.3.0")), "/metadata/version", "1.3.0");
        let short = profiles(&event, |profiles| drop(profiles.pop()));
        assert_refused(&set(event.clone(), "/metadata/profiles", short), "/metadata/profiles", "schema's profiles");
        let doubled = profiles(&event, |profiles| profiles.push(json!("host")));
        assert_refused(&set(event.clone(), "/metadata/profiles", doubled), "/metadata/profiles", "schema's profiles");
        assert_refused(&without(event, &["/metadata/profiles"]), "/metadata/profiles", "missing");
    }
    // A profile the class's schema was not generated with: network_proxy applies to the
    // network classes only.
    let finding = finding_bypass();
    let network_proxy = profiles(&finding, |profiles| profiles.push(json!("network_proxy")));
    assert_refused(&set(finding, "/metadata/profiles", network_proxy), "/metadata/profiles", "network_proxy");
}

#[test]
fn a_class_outside_the_vendored_seven_is_refused() {
    assert_refused(&set(network_open(), "/class_uid", json!(4003)), "/class_uid", "4003 is none of");
    assert_refused(&without(network_open(), &["/class_uid"]), "/class_uid", "missing");
}

#[test]
fn a_missing_class_requirement_is_refused() {
    assert_refused(&without(network_open(), &["/src_endpoint", "/dst_endpoint"]), "(root)", "src_endpoint");
    assert_refused(&without(ssh_open(), &["/src_endpoint", "/dst_endpoint"]), "(root)", "src_endpoint");
    assert_refused(&without(http_get(), &["/http_request", "/http_response"]), "(root)", "http_response");
    assert_refused(&without(process_launch(), &["/process"]), "(root)", "\"process\"");
    assert_refused(&without(finding_bypass(), &["/finding_info"]), "(root)", "\"finding_info\"");
    assert_refused(&without(config_loaded(), &["/device"]), "(root)", "\"device\"");
    assert_refused(&without(api_inference(), &["/api"]), "(root)", "\"api\"");
    assert_refused(&without(network_open(), &["/connection_info/direction_id"]), "/connection_info", "direction_id");
    assert_refused(&without(http_get(), &["/http_response/code"]), "/http_response", "\"code\"");
    // Token counts alone: message_context wants a service or an application as well.
    assert_refused(&without(api_inference(), &["/message_context/service"]), "/message_context", "application");
}

#[test]
fn assert_valid_shows_the_event_and_every_error() {
    let event = set(network_open(), "/severity_id", json!(42));
    let event = set(event, "/metadata/version", json!("1.3.0"));
    let panic = std::panic::catch_unwind(|| ocsf::assert_valid(&event)).expect_err("an invalid event panics");
    let message = panic.downcast_ref::<String>().expect("a formatted panic message");
    assert!(message.contains("/severity_id: 42"), "{message}");
    assert!(message.contains("/metadata/version: \"1.3.0\""), "{message}");
    assert!(message.contains("\"hostname\": \"api.github.com\""), "the event pretty-printed: {message}");
}
