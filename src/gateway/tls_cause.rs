//! Why TLS to an `https://` gateway failed, in words: the rustls error found in a failed
//! call's error chain (or the broken connection a gateway that wants a client certificate
//! leaves behind), named with the setting that fixes it. When a call only saw its
//! connection close (the TLS alert went to the connection, not to the call), a probe
//! handshake with the same settings finds the cause.

use std::error::Error;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gateway expects first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// What the client was configured with: for the messages, and for a probe handshake.
#[derive(Clone)]
pub(crate) struct TlsFacts {
    /// `OPENSHELL_TLS_CA`.
    pub ca: PathBuf,
    /// Whether `OPENSHELL_TLS_CERT` / `OPENSHELL_TLS_KEY` are set.
    pub client_cert: bool,
    /// The name the gateway's certificate must hold.
    pub server_name: String,
    /// The endpoint's host and port.
    pub address: (String, u16),
    /// The same trust and client certificate as the gRPC channel's.
    pub config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The rustls configuration holds the client key: never printed.
        f.debug_struct("TlsFacts")
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert)
            .field("server_name", &self.server_name)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Whether `error`'s chain says only that the connection closed under the call (a
/// cancelled stream, a closed or reset connection) without saying why.
pub(crate) fn closed_under_call(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(status) = e.downcast_ref::<tonic::Status>()
            && status.code() == tonic::Code::Cancelled
        {
            return true;
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && (hyper.is_closed() || hyper.is_canceled() || hyper.is_incomplete_message())
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && is_closed(io.kind())
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Connects to the gateway with the client's TLS settings, sends the HTTP/2 preface and
/// reads the first answer (a refused client certificate is told only after the TLS 1.3
/// handshake): the TLS failure met, if any, within `timeout`.
pub(crate) async fn probe(tls: &TlsFacts, timeout: Duration) -> Option<String> {
    let attempt = async {
        let tcp = TcpStream::connect((tls.address.0.as_str(), tls.address.1)).await.ok()?;
        let name = ServerName::try_from(tls.server_name.clone()).ok()?;
        let mut stream = match tokio_rustls::TlsConnector::from(tls.config.clone()).connect(name, tcp).await {
            Ok(stream) => stream,
            Err(e) => return diagnose(&e, tls),
        };
        if let Err(e) = stream.write_all(H2_PREFACE).await {
            return diagnose(&e, tls);
        }
        let mut first = [0u8; 64];
        match stream.read(&mut first).await {
            Ok(0) => diagnose(&io::Error::from(io::ErrorKind::UnexpectedEof), tls),
            Ok(_) => None,
            Err(e) => diagnose(&e, tls),
        }
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

/// The failure found in `error`'s chain: what went wrong and how to fix it.
pub(crate) fn diagnose(error: &(dyn Error + 'static), tls: &TlsFacts) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(rustls_cause(found, tls));
        }
        if let Some(found) = e.downcast_ref::<io::Error>() {
            if let Some(inner) = found.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(rustls_cause(inner, tls));
            }
            if let Some(alert) = alert_text(found) {
                return Some(rustls_cause(&rustls::Error::AlertReceived(alert), tls));
            }
            if let Some(text) = closed_without_certificate(found, tls) {
                return Some(text);
            }
        }
        cause = e.source();
    }
    None
}

/// How every message of this module begins.
pub(crate) const PREFIX: &str = "TLS with the gateway failed: ";

const SET_CERT: &str = "set OPENSHELL_TLS_CERT and OPENSHELL_TLS_KEY to the sandbox's client certificate and key";

fn rustls_cause(e: &rustls::Error, tls: &TlsFacts) -> String {
    let ca = tls.ca.display();
    let name = &tls.server_name;
    let (cause, fix) = match e {
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) if !tls.client_cert => {
            ("the gateway asked for a client certificate and none is configured".to_owned(), SET_CERT.to_owned())
        }
        rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) && tls.client_cert => (
            format!("the gateway refused the client certificate (alert {alert:?})"),
            "OPENSHELL_TLS_CERT must be issued by a CA the gateway trusts for sandboxes, with its key in OPENSHELL_TLS_KEY".to_owned(),
        ),
        rustls::Error::AlertReceived(alert) if !tls.client_cert => (
            format!("the gateway ended the handshake (alert {alert:?}) and no client certificate is configured"),
            format!("if the gateway requires mutual TLS, {SET_CERT}"),
        ),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => (
            format!("the gateway's certificate is not issued by the CA in OPENSHELL_TLS_CA ({ca})"),
            "point OPENSHELL_TLS_CA at the CA that issued the gateway's certificate".to_owned(),
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => (
            format!("the gateway's certificate is not valid for `{name}`"),
            "use an endpoint host the certificate names, or set OPENSHELL_GATEWAY_TLS_SERVER_NAME to one".to_owned(),
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { presented, .. }) => (
            format!(
                "the gateway's certificate is not valid for `{name}` (it names {})",
                presented.iter().map(|p| unwrap_debug(p)).collect::<Vec<_>>().join(", ")
            ),
            "use an endpoint host the certificate names, or set OPENSHELL_GATEWAY_TLS_SERVER_NAME to one".to_owned(),
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => ("the gateway's certificate has expired".to_owned(), "renew the gateway's certificate".to_owned()),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => (
            "the gateway's certificate is not valid yet".to_owned(),
            "check the clocks of this host and of the CA".to_owned(),
        ),
        other => (format!("{other}"), "check the gateway's TLS settings and OPENSHELL_TLS_*".to_owned()),
    };
    format!("{PREFIX}{cause}; {fix}")
}

/// An alert read after the handshake reaches the caller as text only: `received fatal
/// alert: CertificateRequired`.
fn alert_text(e: &io::Error) -> Option<AlertDescription> {
    let text = e.get_ref()?.to_string();
    let name = text.strip_prefix("received fatal alert: ")?;
    (0..=u8::MAX).map(AlertDescription::from).find(|a| format!("{a:?}") == name)
}

/// An alert that says the client's certificate was missing or not accepted.
fn is_certificate_alert(alert: AlertDescription) -> bool {
    use AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
    )
}

/// A gateway that requires a client certificate may close the connection before its alert
/// is read: the client sees only a broken pipe or a reset.
fn closed_without_certificate(e: &io::Error, tls: &TlsFacts) -> Option<String> {
    (is_closed(e.kind()) && !tls.client_cert).then(|| {
        format!(
            "{PREFIX}the gateway closed the connection ({e}) and no client certificate is configured, which is how a gateway that requires one answers; {SET_CERT}"
        )
    })
}

fn is_closed(kind: io::ErrorKind) -> bool {
    use io::ErrorKind as K;
    matches!(kind, K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof)
}

/// `DnsName("gw.internal")` (how rustls names what a certificate presents) as `gw.internal`.
fn unwrap_debug(text: &str) -> &str {
    match (text.find("(\""), text.strip_suffix("\")")) {
        (Some(start), Some(rest)) if start + 2 <= rest.len() => &rest[start + 2..],
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(client_cert: bool) -> TlsFacts {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsFacts {
            ca: "/etc/openshell/ca.pem".into(),
            client_cert,
            server_name: "gw.internal".into(),
            address: ("127.0.0.1".into(), 1),
            config: Arc::new(config),
        }
    }

    fn wrapped(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn the_cause_is_found_inside_io_errors_and_named_with_its_fix() {
        let e = wrapped(rustls::Error::AlertReceived(AlertDescription::CertificateRequired));
        let text = diagnose(&e, &facts(false)).unwrap();
        assert!(text.contains("asked for a client certificate and none is configured"), "{text}");
        assert!(text.contains("OPENSHELL_TLS_CERT"), "{text}");

        let text_only = io::Error::new(io::ErrorKind::InvalidData, "received fatal alert: CertificateRequired");
        assert_eq!(diagnose(&text_only, &facts(false)).unwrap(), text);

        let e = wrapped(rustls::Error::AlertReceived(AlertDescription::UnknownCA));
        assert!(diagnose(&e, &facts(true)).unwrap().contains("refused the client certificate"));

        let e = wrapped(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        let text = diagnose(&e, &facts(true)).unwrap();
        assert!(text.contains("not issued by the CA in OPENSHELL_TLS_CA (/etc/openshell/ca.pem)"), "{text}");

        let e = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("gw.internal").unwrap(),
            presented: vec!["DnsName(\"other.internal\")".into()],
        });
        let text = diagnose(&wrapped(e), &facts(true)).unwrap();
        assert!(text.contains("not valid for `gw.internal` (it names other.internal)"), "{text}");
        assert!(text.contains("OPENSHELL_GATEWAY_TLS_SERVER_NAME"), "{text}");
    }

    #[test]
    fn only_a_connection_closed_under_the_call_asks_for_a_probe() {
        let closed = tonic::Status::from_error(Box::new(io::Error::from(io::ErrorKind::ConnectionReset)));
        assert!(closed_under_call(&closed));
        assert!(closed_under_call(&tonic::Status::cancelled("operation was canceled")));
        assert!(!closed_under_call(&tonic::Status::unavailable("tcp connect error")));
        assert!(!closed_under_call(&tonic::Status::permission_denied("no")));
    }

    #[test]
    fn a_broken_pipe_without_a_client_certificate_names_the_likely_cause() {
        let e = io::Error::from(io::ErrorKind::BrokenPipe);
        let text = diagnose(&e, &facts(false)).unwrap();
        assert!(
            text.contains("closed the connection") && text.contains("no client certificate is configured"),
            "{text}"
        );
        assert!(diagnose(&e, &facts(true)).is_none(), "with a certificate a broken pipe is no TLS cause");
        assert!(diagnose(&io::Error::from(io::ErrorKind::ConnectionRefused), &facts(false)).is_none());
    }
}
