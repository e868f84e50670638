//! External shuffle service for Spark on Kubernetes.
//!
//! Serves Spark sort-shuffle output (`.data` + `.index`) from node-local volumes so that
//! executors can go away without losing their shuffle data. The service core (volumes,
//! registrations, block resolution, cleanup) is being built; see the README for status.

pub use shuffle_proto as proto;
