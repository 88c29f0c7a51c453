//! The OCSF 1.8.0 JSON of an [`Event`]: base attributes, `metadata`, `device`, then the
//! class's own attributes. The layout is checked against the vendored schema of each
//! class in the tests (tests/ocsf/).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;

use super::scope::Scope;
use super::sink::Identity;
use super::{Class, Endpoint, Event, Unmapped, VERSION};

/// The product every event names.
const PRODUCT: &str = "openshell-sandbox";
/// Its vendor.
const VENDOR: &str = "OpenShell";
/// `device.type_id` 99 (Other), named by `device.type`.
const DEVICE_OTHER: u32 = 99;
/// `connection_info.direction_id`: the proxy's connections leave the sandbox.
const OUTBOUND: u32 = 2;
/// `connection_info.direction_id`: SSH sessions come in.
const INBOUND: u32 = 1;
/// The service an inference call's messages went to when no route is named.
const INFERENCE_SERVICE: &str = "inference.local";
/// `auth_type_id` 6: Public Key.
const PUBLIC_KEY: u32 = 6;

#[derive(Serialize)]
struct Wire<'e> {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
    type_uid: u32,
    severity_id: u32,
    severity: &'static str,
    time: i64,
    message: &'e str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<&'e str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<&'e str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disposition_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disposition: Option<&'static str>,
    metadata: Metadata<'e>,
    device: &'e RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_endpoint: Option<Endpoint<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_endpoint: Option<Endpoint<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_info: Option<ConnectionInfo<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traffic: Option<Traffic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firewall_rule: Option<FirewallRule<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_request: Option<HttpRequest<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_response: Option<HttpResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_type_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finding_info: Option<FindingInfo<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_alert: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<[Resource<'e>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'e str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<Api<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ai_model: Option<AiModel<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_context: Option<MessageContext<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unmapped: Option<&'e Unmapped<'e>>,
}

#[derive(Serialize)]
struct Metadata<'e> {
    version: &'static str,
    product: &'e RawValue,
    profiles: &'e RawValue,
    uid: &'e str,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_uid: Option<&'e str>,
    log_provider: &'static str,
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
    feature: Feature,
}

#[derive(Serialize)]
struct Feature {
    name: &'static str,
}

#[derive(Serialize)]
struct Device<'e> {
    type_id: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    hostname: &'e str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'e str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'e str>,
}

#[derive(Serialize, Default)]
struct Actor<'e> {
    #[serde(skip_serializing_if = "Option::is_none")]
    app_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<ActorProcess>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<Session<'e>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'e>>,
}

#[derive(Serialize)]
struct ActorProcess {
    pid: u32,
    name: &'static str,
}

#[derive(Serialize)]
struct Session<'e> {
    uid: &'e str,
}

#[derive(Serialize)]
struct User<'e> {
    name: &'e str,
}

#[derive(Serialize)]
struct ConnectionInfo<'e> {
    uid: &'e str,
    direction_id: u32,
    protocol_name: &'static str,
}

#[derive(Serialize)]
struct Traffic {
    bytes_out: u64,
    bytes_in: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct FirewallRule<'e> {
    name: &'e str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'e str>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct HttpRequest<'e> {
    /// Only the methods OCSF lists (the activity is Other for the rest).
    #[serde(skip_serializing_if = "Option::is_none")]
    http_method: Option<&'e str>,
    url: Url<'e>,
}

#[derive(Serialize)]
struct Url<'e> {
    scheme: &'static str,
    hostname: &'e str,
    port: u16,
    path: &'e str,
}

#[derive(Serialize)]
struct HttpResponse {
    code: u16,
}

#[derive(Serialize)]
struct Process<'e> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    name: &'e str,
}

#[derive(Serialize)]
struct FindingInfo<'e> {
    uid: &'e str,
    title: &'e str,
    types: [&'static str; 1],
}

/// What a finding is about: the destination asked for.
#[derive(Serialize)]
struct Resource<'e> {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'e str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<std::net::IpAddr>,
}

#[derive(Serialize)]
struct Api<'e> {
    operation: &'e str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<Service<'e>>,
}

#[derive(Serialize)]
struct Service<'e> {
    name: &'e str,
}

#[derive(Serialize)]
struct AiModel<'e> {
    name: &'e str,
    ai_provider: &'e str,
}

#[derive(Serialize)]
struct MessageContext<'e> {
    service: Service<'e>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_tokens: Option<u64>,
}

/// A fresh event uid: a random UUID drawn once per process, its low bits counting events
/// (unique without a system call per event).
fn event_uid() -> uuid::Uuid {
    static BASE: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = *BASE.get_or_init(|| uuid::Uuid::new_v4().as_u128());
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    uuid::Uuid::from_u128(base ^ u128::from(count))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What every event of this process carries unchanged (`device`, `metadata.product`, each
/// class's `metadata.profiles`), serialized once.
pub(super) struct Fixed {
    device: Box<RawValue>,
    product: Box<RawValue>,
    profiles: [Box<RawValue>; Class::ALL.len()],
}

impl Fixed {
    pub(super) fn new(identity: &Identity) -> Self {
        let device = Device {
            type_id: DEVICE_OTHER,
            kind: "Sandbox",
            hostname: &identity.hostname,
            uid: identity.sandbox_id.as_deref(),
            name: identity.sandbox_name.as_deref(),
        };
        let product = Product {
            name: PRODUCT,
            vendor_name: VENDOR,
            version: env!("CARGO_PKG_VERSION"),
            feature: Feature { name: identity.feature },
        };
        Fixed { device: raw(&device), product: raw(&product), profiles: Class::ALL.map(|class| raw(&class.profiles())) }
    }
}

/// Plain data (strings, numbers, arrays of them) as a raw JSON value.
fn raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("plain data always serializes")
}

/// Appends the JSON of `event` (no newline) to `out`.
pub(super) fn write(
    out: &mut Vec<u8>,
    event: &Event<'_>,
    identity: &Identity,
    fixed: &Fixed,
) -> serde_json::Result<()> {
    let scope = Scope::current();
    let mut buffer = uuid::Uuid::encode_buffer();
    let event_uid = event_uid().hyphenated().encode_lower(&mut buffer);
    let operation = event.api.map(|api| format!("{} {}", api.method, api.path));
    serde_json::to_writer(out, &wire(event, identity, fixed, scope.as_ref(), event_uid, operation.as_deref()))
}

fn wire<'e>(
    e: &'e Event<'e>,
    identity: &'e Identity,
    fixed: &'e Fixed,
    scope: Option<&'e Scope>,
    event_uid: &'e str,
    operation: Option<&'e str>,
) -> Wire<'e> {
    let (category_uid, category_name) = e.class.category();
    let status = e.status();
    let network = matches!(e.class, Class::Network | Class::Http | Class::Ssh);
    let peer = scope.and_then(|s| s.peer).map(Endpoint::addr);
    let session = scope.map(|s| Session { uid: &s.uid });
    let supervisor = || ActorProcess { pid: std::process::id(), name: PRODUCT };
    let actor = match e.class {
        Class::Process => Some(Actor { process: Some(supervisor()), session, ..Actor::default() }),
        Class::Api => Some(Actor { app_name: Some(PRODUCT), session, ..Actor::default() }),
        Class::Ssh => Some(Actor { user: e.ssh_user.map(|name| User { name }), session, ..Actor::default() }),
        _ => None,
    };
    let this_host = Endpoint { hostname: Some(&identity.hostname), ..Endpoint::default() };
    let src = match e.class {
        Class::Api => e.src.or(peer).or(Some(this_host)),
        Class::Network | Class::Http | Class::Ssh => e.src.or(peer),
        // A finding names its destination as a resource; config and process have no endpoints.
        Class::Finding | Class::Config | Class::Process => None,
    };
    // A network event with neither end known (an SSH connection on the Unix socket) is
    // about this host.
    let dst = match (e.class, src, e.dst) {
        (Class::Finding, _, _) => None,
        (Class::Network | Class::Http | Class::Ssh, None, None) => Some(this_host),
        (_, _, dst) => dst,
    };
    let resource = e.dst.filter(|_| e.class == Class::Finding).map(|d| {
        let host = d.hostname.map(str::to_owned).or(d.ip.map(|ip| ip.to_string())).unwrap_or_default();
        let name = match d.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        [Resource { name, kind: "Destination", hostname: d.hostname, ip: d.ip }]
    });
    Wire {
        class_uid: e.class.uid(),
        class_name: e.class.name(),
        category_uid,
        category_name,
        activity_id: e.activity.0,
        activity_name: e.activity.1,
        type_uid: e.type_uid(),
        severity_id: e.severity as u32,
        severity: e.severity.name(),
        time: now_ms(),
        message: e.message,
        status_id: status.map(|s| s.0),
        status: status.map(|s| s.1),
        status_code: e.code,
        status_detail: e.detail,
        action_id: e.verdict.map(|v| v.action().0),
        action: e.verdict.map(|v| v.action().1),
        disposition_id: e.verdict.map(|v| v.disposition().0),
        disposition: e.verdict.map(|v| v.disposition().1),
        metadata: Metadata {
            version: VERSION,
            product: &fixed.product,
            profiles: &fixed.profiles[Class::ALL.iter().position(|c| *c == e.class).unwrap_or(0)],
            uid: event_uid,
            correlation_uid: scope.map(|s| &*s.uid),
            log_provider: identity.feature,
        },
        device: &fixed.device,
        actor,
        src_endpoint: src,
        dst_endpoint: dst,
        connection_info: scope.filter(|_| network).map(|s| ConnectionInfo {
            uid: &s.uid,
            direction_id: if e.class == Class::Ssh { INBOUND } else { OUTBOUND },
            protocol_name: "tcp",
        }),
        traffic: e.traffic.map(|(out, back)| Traffic { bytes_out: out, bytes_in: back, bytes: out + back }),
        duration: e.duration_ms.or(e.api.and_then(|a| a.latency_ms)),
        firewall_rule: e.rule.map(|r| FirewallRule { name: r.policy, uid: r.rule, kind: "policy" }),
        http_request: e.http.map(|h| HttpRequest {
            http_method: (e.activity.0 != 99).then_some(h.method),
            url: Url { scheme: h.scheme, hostname: h.host, port: h.port, path: h.path },
        }),
        http_response: e.http.and_then(|h| h.status).or(e.api.and_then(|a| a.status)).map(|code| HttpResponse { code }),
        auth_type_id: e.ssh_user.map(|_| PUBLIC_KEY),
        auth_type: e.ssh_user.map(|_| "Public Key"),
        process: e.process.map(|p| Process { pid: p.pid, name: p.name }),
        exit_code: e.process.and_then(|p| p.exit_code),
        finding_info: e.finding.map(|f| FindingInfo { uid: event_uid, title: f.title, types: [f.kind] }),
        is_alert: e.finding.map(|_| true),
        resources: resource,
        state_id: e.state.map(|s| s.0),
        state: e.state.map(|s| s.1),
        api: operation
            .map(|operation| Api { operation, service: e.api.and_then(|a| a.route).map(|name| Service { name }) }),
        ai_model: e.api.and_then(|a| Some(AiModel { name: a.model?, ai_provider: a.provider.unwrap_or("unknown") })),
        message_context: e.api.and_then(|a| Some((a.tokens?, a.route.unwrap_or(INFERENCE_SERVICE)))).map(
            |(t, name)| MessageContext {
                service: Service { name },
                prompt_tokens: t.prompt,
                completion_tokens: t.completion,
                total_tokens: t.total,
            },
        ),
        unmapped: (!e.unmapped.is_empty()).then_some(&e.unmapped),
    }
}
