//! The gateway area, one test binary: the gateway client, pollers, supervisor session and
//! log shipping against the test gateway, and both modes of the built binary fed by it. The
//! tests are in `tests/gateway/`, the shared rigs (the test gateway among them) in
//! `tests/support/`; `cargo test --test gateway gateway::session::` runs one file.

mod support;

mod gateway {
    mod agent;
    mod client;
    mod config;
    mod logs;
    mod proxy;
    mod session;
}
