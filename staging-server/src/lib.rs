//! Resource staging server for Spark on Kubernetes.
//!
//! The client commands stage a submitter's local jars and files, as one bundle (`upload`) or
//! as a submission of content-addressed files (`submit`), and get back a resource id and a
//! download token; driver and executor init-containers download them with that token
//! (`fetch`). This crate is the server (`serve`); the binary also runs the client commands of
//! `staging-client` ([`cli`]).
//!
//! Modules:
//! - [`config`]: flags, env and TOML → validated [`Config`] (with the settings of the owner
//!   watch and of the Kubernetes reviews).
//! - `state`: shared state ([`AppState`]), data-directory lock, crash recovery.
//! - `routes`: the v0 (fork-compatible) and v1 HTTP APIs and the operational endpoints;
//!   `api_error`: the one mapping of failures to HTTP answers, above everything else.
//! - [`ingest`]: the streamed upload pipeline (limits, digest, quotas, atomic commit).
//! - [`db`], [`store`]: SQLite metadata (resources, tokens, the content-addressed files of
//!   submissions, running counters of what each namespace and credential is charged, the
//!   schema) and `object_store` bytes; `instance`: which server owns a store prefix (and so
//!   which orphans it may delete).
//! - [`token`], [`auth`]: download JWTs and upload bearer tokens.
//! - [`kube`]: the Kubernetes API: the owner watch that ends a resource with its owner pods;
//!   `kube_auth`: the API client, and the reviews of Kubernetes credentials (cached,
//!   rate-limited per client) that the shared state holds.
//! - [`lifecycle`]: deletion and the expiry sweeper.
//! - `server`: accept loop, limits and graceful drain ([`run`]).
//! - `error`: the crate error ([`Error`]) of start-up and of the layers below the HTTP edge;
//!   `store_error`: the store's failures, which it carries;
//!   `metrics`: the server's Prometheus metrics; `pace`, `reserve`, `secret`: upload pacing,
//!   the disk reserve, secret files.
//!
//! Modules that only the server uses are private; the public ones are those the integration
//! tests and the binary reach into.
//!
//! The contract shared with the client commands (ids, file names, JSON bodies, labels) is
//! `staging-api`; the commands `upload`, `fetch` and `submit` are `staging-client`, which this
//! binary runs.

mod api_error;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
mod error;
pub mod ingest;
mod instance;
pub mod kube;
mod kube_auth;
pub mod lifecycle;
mod metrics;
mod multipart;
mod pace;
pub mod replica;
mod reserve;
mod routes;
mod secret;
mod server;
mod state;
pub mod store;
mod store_error;
mod tls_watch;
pub mod token;
mod writes;

pub use service_runtime::{shutdown, size};

/// The log filter when `RUST_LOG` is not set: what an operator sees by default.
pub const DEFAULT_LOG_FILTER: &str = "staging_server=info,tower_http=info";

pub use config::Config;
pub use error::{Error, Result};
pub use routes::{admin_router, router};
pub use server::{Listeners, run};
pub use state::{AppState, Overrides};
