//! The bundle of a staged resource: the submitter's files as one tar.gz.
//!
//! - [`create`]: written on a blocking thread while the upload sends it (no temporary file);
//! - [`extract`]: the init-container's extraction, which accepts regular files named by one
//!   valid path component only and bounds entries, sizes and the compression ratio.
//!
//! A crate of its own so that what parses untrusted archives is small and is fuzzed without
//! the client's HTTP and Kubernetes dependencies.

pub mod create;
pub mod extract;
