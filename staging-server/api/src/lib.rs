//! The staging server's contract: what the server (`staging-server`) and its client commands
//! (`staging-client`) share, defined once.
//!
//! - [`bodies`]: the JSON bodies of every route (v1 and the fork's v0);
//! - [`ids`]: typed identifiers and validated owner fields (resource ids, namespaces, labels,
//!   digests);
//! - [`names`]: the rule for names of staged files;
//! - [`wire`]: the labels on the Kubernetes objects both sides read.

pub mod bodies;
pub mod ids;
pub mod names;
pub mod wire;
