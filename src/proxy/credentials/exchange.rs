//! One inspected request's credentials from judgement to answer: the head swapped when the
//! judgement forwards it, then the body, then `Accept-Encoding: identity` when anything was
//! swapped in; and the answer scrubbed of every secret value and every form of one the
//! proxy wrote into this request.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response};
use hyper::body::Incoming;

use super::binding::Destination;
use super::scrub::{self, Scrubber};
use super::substitute::{self, Resolver};
use super::{CredentialError, Snapshot, body};
use crate::proxy::answer::{self, Body};
use crate::proxy::counted::Source;
use crate::proxy::l7::deny::Refused;
use crate::proxy::l7::judge::Verdict;
use crate::proxy::l7::session::{audit_forward, audit_refusal};

/// The body stage of a judged request to `host:port` (see [`Injection::finish_request`]),
/// then its audit event. `Ok`: forward the head with this body, and scrub the answer with
/// the injection; `Err`: the answer refusing it (nothing goes upstream) and the request body,
/// whatever of it was not read yet, to drain once the answer is sent.
pub async fn finish(
    verdict: Verdict,
    parts: &mut Parts,
    incoming: Incoming,
    (host, port): (&str, u16),
    idle: Duration,
) -> Result<(Injection, Source), (Response<Body>, Incoming)> {
    let method = parts.method.as_str().to_owned();
    match verdict {
        Verdict::Forward { decision, mut credentials } => match credentials.finish_request(parts, incoming, idle).await
        {
            Ok(body) => {
                audit_forward(host, port, &method, &decision, &credentials);
                Ok((credentials, body))
            }
            Err((e, unread)) => {
                let refused = Refused { host, port, method: &method, path: credentials.path() };
                let refusal = e.refusal();
                audit_refusal(host, port, &method, credentials.path(), Some(&decision), &refusal);
                Err((refused.answer(&refusal), unread))
            }
        },
        // A judged refusal left the target as judged.
        Verdict::Refuse { refusal, path, decision, .. } => {
            audit_refusal(host, port, &method, parts.uri.path(), decision.as_ref(), &refusal);
            Err((Refused { host, port, method: &method, path: &path }.answer(&refusal), incoming))
        }
    }
}

/// What one forwarded request carries, and how its answer is scrubbed.
pub struct Injection {
    snapshot: Arc<Snapshot>,
    to: Destination,
    /// Placeholders are swapped (false for an audited would-be denial: they stay literal).
    swap: bool,
    keys: Vec<String>,
    forms: Vec<(Vec<u8>, Vec<u8>)>,
    /// The answer has no body (a HEAD request).
    bodiless: bool,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The encoded forms are secrets too: counted, never shown.
        f.debug_struct("Injection")
            .field("to", &self.to)
            .field("swap", &self.swap)
            .field("keys", &self.keys)
            .field("forms", &self.forms.len())
            .finish_non_exhaustive()
    }
}

impl Injection {
    /// Swaps the head's placeholders for `to` when `swap` (see [`super::SecretStore::substitute`]).
    pub(super) fn head(
        snapshot: Arc<Snapshot>,
        to: Destination,
        swap: bool,
        parts: &mut Parts,
    ) -> Result<Self, CredentialError> {
        let mut injection = Injection {
            snapshot,
            to,
            swap,
            keys: Vec::new(),
            forms: Vec::new(),
            bodiless: parts.method == Method::HEAD,
        };
        if swap {
            let mut r = Resolver::new(&injection.snapshot, &injection.to);
            substitute::request(&mut r, parts)?;
            let (keys, forms) = (r.used, r.forms);
            injection.keys = keys;
            injection.forms = forms;
        }
        Ok(injection)
    }

    /// The secret keys swapped in so far (names only: log them).
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The canonical path as judged, placeholders as the client sent them (for logs and
    /// answers: the forwarded path may hold a secret).
    pub fn path(&self) -> &str {
        &self.to.path
    }

    /// The body stage (see [`body`]), then `Accept-Encoding: identity` when a secret was
    /// swapped in, so the answer can be scrubbed. `idle` bounds reading a body whole. `Err`
    /// holds the body (what of it is not read yet) with the refusal.
    pub async fn finish_request(
        &mut self,
        parts: &mut Parts,
        incoming: Incoming,
        idle: Duration,
    ) -> Result<Source, (CredentialError, Incoming)> {
        let source = if self.swap && !self.to.cleartext && self.snapshot.keys().next().is_some() {
            let mut r = Resolver::new(&self.snapshot, &self.to);
            r.used = std::mem::take(&mut self.keys);
            r.forms = std::mem::take(&mut self.forms);
            let result = body::body(&mut r, parts, incoming, idle).await;
            (self.keys, self.forms) = (r.used, r.forms);
            result?
        } else {
            incoming.into()
        };
        if !self.keys.is_empty() {
            parts.headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        Ok(source)
    }

    /// The answer to forward, scrubbed when there is anything to scrub (see
    /// [`scrub::answer`]); a compressed answer is refused only when this request carried a
    /// secret (nothing else of the agent's could come back in it).
    pub fn response(&self, response: Response<Incoming>) -> Result<Response<Body>, String> {
        match self.scrubber() {
            Some(scrubber) => scrub::answer(&scrubber, response, !self.keys.is_empty(), self.bodiless),
            None => Ok(response.map(answer::boxed)),
        }
    }

    /// Scrubs the head (headers, reason phrase) of an answer whose body is not forwarded
    /// through [`Self::response`] (a `101`).
    pub fn scrub_head<B>(&self, response: &mut Response<B>) {
        if let Some(scrubber) = self.scrubber() {
            scrubber.headers(response.headers_mut());
            scrubber.reason(response.extensions_mut());
        }
    }

    /// The snapshot's scrubber, with this request's encoded forms added when it has any.
    fn scrubber(&self) -> Option<Arc<Scrubber>> {
        if self.forms.is_empty() {
            return self.snapshot.scrubber().cloned();
        }
        let pairs = self.snapshot.scrub_pairs().chain(self.forms.iter().cloned());
        Scrubber::new(pairs).map(Arc::new)
    }
}
