//! The agent area, one test binary: the built binary in agent mode (SSH server driven by the
//! real OpenSSH client, ptys, signals, descriptors, enforcement) and the child sandbox it
//! applies (Landlock, seccomp, capabilities on real children). The tests are in
//! `tests/agent/`, the shared rigs in `tests/support/`; `cargo test --test agent agent::ssh::`
//! runs one file.

mod support;

mod agent {
    mod descriptors;
    mod enforced;
    mod gateway;
    mod pty;
    mod run;
    mod sandbox_children;
    mod sandbox_prepare;
    mod signal;
    mod ssh;
    mod terminal;
}
