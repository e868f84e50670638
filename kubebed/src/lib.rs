//! A one-machine Kubernetes test bed, so that unmodified Spark runs in `k8s://` mode and the
//! project's manifests are deployed as on a cluster:
//!
//! - [`store`], [`api`]: an API server stand-in speaking Kubernetes' REST wire format;
//! - [`resources`], [`selector`], [`patch`], [`validate`], [`status`]: its pieces;
//! - [`kubelet`]: node agents running pods as processes in their own network and mount
//!   namespaces; [`net`]: the pod network; [`images`]: images mapped to local files;
//! - [`controllers`]: scheduler, DaemonSets, Deployments, Service endpoints; [`rollout`]: what
//!   the DaemonSet and Deployment controllers decide, as pure functions;
//! - [`bed`]: all of it together, with `apply` of manifest files;
//! - [`testing`]: what the tests that run on a bed share (this crate's and `e2e/`'s).
//!
//! `kubebed/README.md` lists what differs from a real cluster.

pub mod api;
pub mod authn;
pub mod bed;
pub mod cli;
pub mod controllers;
pub mod images;
pub mod kubelet;
pub mod net;
pub mod patch;
pub mod resources;
pub mod rollout;
pub mod selector;
pub mod status;
pub mod store;
pub mod testing;
pub mod tls;
pub mod validate;
