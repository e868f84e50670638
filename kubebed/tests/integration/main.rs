//! The test bed's own tests: the API server stand-in over HTTP (always run), pods on a real bed
//! (`bed_pods::`, root and network namespaces; ignored in a bare `cargo test`, run by
//! `scripts/test.sh` where root and network namespaces are, reported as skipped otherwise), and
//! the project's manifests against the bed's validation. The project's end-to-end tests that
//! run Spark and `submit` on the bed are in `e2e/`.

mod apiserver;
mod bed_pods;
mod manifests;
