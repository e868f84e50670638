//! The project's end-to-end tests on the kubebed test bed (the harness is this package's
//! library): unmodified Spark with the shuffle service deployed from `k8s/shuffle-service/`
//! (`spark::`), `staging-server submit` with the staging server deployed from
//! `k8s/staging-server/` (`submit::`) and its replicated variant on an S3-protocol bucket
//! through a pod deletion and a rollout (`replicated::`), and `loadtest dra`'s harness on a
//! small workload (`dra::`). Ignored in a bare `cargo test`; `scripts/test.sh` runs them as root where Java and
//! pyspark are, and reports them as skipped otherwise.

mod dra;
mod replicated;
mod spark;
mod submit;
