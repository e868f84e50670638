//! A one-machine Kubernetes test bed, so that unmodified Spark runs in `k8s://` mode and the
//! project's manifests are deployed as on a cluster:
//!
//! - [`store`], [`api`]: an API server stand-in speaking Kubernetes' REST wire format;
//! - [`resources`], [`selector`], [`patch`], [`validate`], [`status`]: its pieces.
//!
//! `kubebed/README.md` lists what differs from a real cluster.

pub mod api;
pub mod cli;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod status;
pub mod store;
pub mod validate;
