//! The end-to-end area, one test binary: the sidecar topology on plain network namespaces
//! and on real Podman, each skipping (or failing, as `OPENSHELL_E2E_PODMAN=required` asks)
//! where the machine cannot run it. The tests are in `tests/e2e/`, the shared rigs in
//! `tests/support/`; they take [`support::e2e::one_at_a_time`] so that they run one after
//! the other, as separate binaries did.

mod support;

mod e2e {
    mod netns;
    mod podman;
}
