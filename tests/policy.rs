//! The policy and command-line area, one test binary: policy cases through the real loader,
//! validator and Rego engine, and the binary as users run it (mode dispatch, configuration,
//! `policy check` / `policy eval`, `healthcheck`). The tests are in `tests/policy/`;
//! `cargo test --test policy policy::cli::` runs one file.

mod policy {
    mod cases;
    mod cli;
}
