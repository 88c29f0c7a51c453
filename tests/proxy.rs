//! The proxy area, one test binary: the in-process proxy and the built binary in proxy mode
//! on real sockets (CONNECT, absolute-form HTTP, hostile input, faults, reload, SSRF forms,
//! startup, the policy DNS). The tests are in `tests/proxy/`, the shared rigs in
//! `tests/support/`; `cargo test --test proxy proxy::faults::` runs one file.

mod support;

mod proxy {
    mod bad_input;
    mod connect;
    mod dns;
    mod faults;
    mod http;
    mod ocsf;
    mod ocsf_schema;
    pub(crate) mod process;
    mod reload;
    mod ssrf_forms;
    mod startup;
}
