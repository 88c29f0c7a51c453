//! The L7 area, one test binary: inspected connections (TLS termination, per-request rules,
//! deny readings, credentials, HTTP/2, `inference.local`, timeouts, close events, hardening)
//! in process and through the real proxy. The tests are in `tests/l7/`, the shared rigs in
//! `tests/support/`; `cargo test --test l7 l7::h2::` runs one file.

mod support;

mod l7 {
    mod close;
    mod credentials;
    mod deny_readings;
    mod h2;
    mod hardening;
    mod inference;
    mod judge;
    mod proxy;
    mod proxy_inference;
    mod session;
    mod timeout;
    mod tls;
}
