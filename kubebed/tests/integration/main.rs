//! The test bed's own tests: the API server stand-in over HTTP (always run), pods on a real bed
//! (`bed_pods::`, root and network namespaces), and unmodified Spark in `k8s://` mode with the
//! project's services deployed from `k8s/` (`bed_spark::`, also Java and pyspark). The last two
//! groups are ignored in a bare `cargo test`; `scripts/test.sh` runs them where their
//! components are, and reports them as skipped otherwise.

mod apiserver;
mod bed_pods;
mod bed_spark;
mod bed_submit;
mod common;
mod manifests;
