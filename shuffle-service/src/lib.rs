//! External shuffle service for Spark on Kubernetes.
//!
//! Executors write sort-shuffle output (`.data` + `.index`) into their local directories on
//! node-local volumes; the service serves those blocks to reducers so that executors can go
//! away, and deletes an application's data when its driver deregisters or dies.
//!
//! Modules:
//! - [`core`]: the shared core (registrations, volumes, blocks, writes, removal, cleanup),
//!   used by every front end;
//! - [`service`]: the gRPC front end (`shuffle.v1`);
//! - [`spark`]: Spark's own protocol (port 7337), the front end unmodified executors use;
//! - [`registry`], [`db`]: registrations in memory and in SQLite;
//! - [`volume`], [`layout`], [`blocks`], [`writer`]: Spark's on-disk format on the volumes;
//! - [`cleanup`], [`lifecycle`]: deletion and application liveness;
//! - [`admin`], [`metrics`], [`server`], [`config`].

pub mod admin;
pub mod blocks;
pub mod cleanup;
pub mod config;
pub mod core;
pub mod db;
pub mod error;
pub mod execfs;
pub mod grpc_metrics;
pub mod lifecycle;
pub mod linger;
pub mod lograte;
pub mod memory;
pub mod metrics;
pub mod registry;
pub mod request;
pub mod server;
pub mod service;
pub mod spark;
pub mod volume;
pub mod writer;

pub use service_runtime::shutdown;
pub use spark_protocol::{ids, layout};

pub use config::Config;
pub use core::Core;
pub use error::{Result, ShuffleError};
pub use server::run;
