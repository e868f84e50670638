//! External shuffle service for Spark on Kubernetes.
//!
//! Executors write sort-shuffle output (`.data` + `.index`) into their local directories on
//! node-local volumes; the service serves those blocks to reducers so that executors can go
//! away, and deletes an application's data when its driver deregisters or dies.
//!
//! Modules (those named in brackets are public: the entry points, and what the loadtest's
//! pod-watch benchmark and the integration tests drive directly):
//! - [`core`]: the shared core used by every front end; it alone touches executor
//!   directories (registrations in memory and in SQLite, volumes, Spark's on-disk layout,
//!   block reads, writes, cleanup), through handles opened beneath each volume root;
//! - `service`: the gRPC front end (`shuffle.v1`);
//! - `spark`: Spark's own protocol (port 7337), the front end unmodified executors use;
//! - `lifecycle`: the timers of application liveness (idle TTL, vanished directories);
//! - [`kube`]: application ends and Spark secrets from Spark's pods on Kubernetes;
//! - `listen`: the gRPC and admin listeners' connection caps, deadlines and idle close;
//! - `admin`, `metrics`, `error`, [`server`], [`config`], [`lograte`].

mod admin;
pub mod config;
pub mod core;
mod error;
mod grpc_metrics;
pub mod kube;
mod lifecycle;
mod linger;
mod listen;
pub mod lograte;
mod memory;
mod metrics;
pub mod server;
mod service;
mod spark;
mod tls;

pub use config::Config;
pub use core::Core;
pub use error::{Result, ShuffleError};
pub use server::run;
