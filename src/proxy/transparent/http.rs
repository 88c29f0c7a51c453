//! Plain HTTP on a transparent connection: each request must name, in its `Host` (and its
//! target, when absolute), the host the client resolved; it is then handled exactly as the
//! same request sent to the proxy in absolute form ([`crate::proxy::absolute`]): one
//! decision per request, the L7 rules of inspected endpoints, SSRF-checked forwarding.

use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::policy::host::normalize_destination;
use crate::proxy::absolute::{self, Kept};
use crate::proxy::answer::{Body, Refusal};
use crate::proxy::audit::{self, Subject};
use crate::proxy::ctx::Ctx;
use crate::proxy::drain::drained;
use crate::shutdown::Shutdown;

/// The smallest read buffer hyper accepts.
const HYPER_MIN_BUF: usize = 8192;

/// Serves HTTP/1.1 requests for `name:port` until the client closes, idles, or `stop`.
pub async fn serve<IO>(io: IO, name: Arc<str>, port: u16, ctx: Arc<Ctx>, stop: Shutdown)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kept = Arc::new(Kept::default());
    let service_ctx = ctx.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let (ctx, kept, name) = (service_ctx.clone(), kept.clone(), name.clone());
        async move { Ok::<_, std::convert::Infallible>(request(req, &name, port, ctx, kept).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .max_buf_size(ctx.limits.max_head_bytes.max(HYPER_MIN_BUF))
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.signalled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(ctx.limits.shutdown_grace, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(port, error = %e, "transparent HTTP connection ended with an error");
    }
}

/// One request: its hosts checked against `name`, then handled as absolute-form.
async fn request(mut req: Request<Incoming>, name: &str, port: u16, ctx: Arc<Ctx>, kept: Arc<Kept>) -> Response<Body> {
    let (method, path) = (req.method().as_str().to_owned(), req.uri().path().to_owned());
    let subject = Subject { kind: "transparent", host: name, port, request: Some((&method, &path)) };
    let refuse = |refusal: Refusal, req: Request<Incoming>| {
        audit::denied(&subject, &refusal, None, None);
        drained(refusal.response(name, port, subject.request), req.into_body())
    };
    let mut named = req.headers().get_all(header::HOST).iter().map(|v| v.to_str().ok()).collect::<Vec<_>>();
    if named.len() > 1 {
        return refuse(Refusal::BadRequest("the request has more than one `Host` header".into()), req);
    }
    named.extend(req.uri().authority().map(|a| Some(a.as_str())));
    for host in named {
        if let Err(reason) = names_the_host(host, name, port) {
            let refusal = Refusal::Policy { reason, policy: None };
            return refuse(refusal, req);
        }
    }
    let authority = if port == 80 { name.to_owned() } else { format!("{name}:{port}") };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Authority::try_from(authority).ok();
    parts.path_and_query = Some(req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    match Uri::from_parts(parts) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => return refuse(Refusal::BadRequest(format!("the request target is not usable: {e}")), req),
    }
    absolute::handle(req, ctx, kept).await
}

/// `Ok` when `value` (a `Host` or the target's authority) is `name`, with no port or `port`.
fn names_the_host(value: Option<&str>, name: &str, port: u16) -> Result<(), String> {
    let shown = value.unwrap_or("(not text)");
    let authority = value.and_then(|v| v.parse::<Authority>().ok());
    let same_host = authority.as_ref().and_then(|a| normalize_destination(a.host())).is_some_and(|h| h == name);
    let same_port = authority.as_ref().is_some_and(|a| a.port_u16().is_none_or(|p| p == port));
    if same_host && same_port && !shown.contains('@') {
        return Ok(());
    }
    Err(format!(
        "the request names `{shown}`, but this connection goes to {name}:{port}, the name the client resolved; send `Host: {name}`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_resolved_name_passes() {
        for ok in ["api.example.com", "API.example.com.", "api.example.com:8080"] {
            assert!(names_the_host(Some(ok), "api.example.com", 8080).is_ok(), "{ok}");
        }
        for bad in ["other.example.com", "api.example.com:80", "user@api.example.com", "api.example.com.evil", ""] {
            let err = names_the_host(Some(bad), "api.example.com", 8080).unwrap_err();
            assert!(err.contains("the name the client resolved"), "{bad}: {err}");
        }
        assert!(names_the_host(None, "api.example.com", 80).is_err(), "a Host that is not text");
    }
}
