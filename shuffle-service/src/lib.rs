//! External shuffle service for Spark on Kubernetes.
//!
//! Executors write sort-shuffle output (`.data` + `.index`) into their local directories on
//! node-local volumes; the service serves those blocks to reducers so that executors can go
//! away, and deletes an application's data when its driver deregisters or dies.
//!
//! Modules:
//! - [`core`]: the shared core used by every front end; it alone touches executor
//!   directories (registrations in memory and in SQLite, volumes, Spark's on-disk layout,
//!   block reads, writes, cleanup), through handles opened beneath each volume root;
//! - [`service`]: the gRPC front end (`shuffle.v1`);
//! - [`spark`]: Spark's own protocol (port 7337), the front end unmodified executors use;
//! - [`lifecycle`]: application liveness (idle TTL, vanished directories);
//! - [`kube`]: application ends and Spark secrets from Spark's pods on Kubernetes;
//! - [`listen`]: the gRPC and admin listeners' connection caps, deadlines and idle close;
//! - [`admin`], [`metrics`], [`server`], [`config`].

pub mod admin;
pub mod config;
pub mod core;
pub mod error;
pub mod grpc_metrics;
pub mod kube;
pub mod lifecycle;
pub mod linger;
pub mod listen;
pub mod lograte;
pub mod memory;
pub mod metrics;
pub mod server;
pub mod service;
pub mod spark;
pub mod tls;

pub use service_runtime::shutdown;
pub use spark_protocol::{ids, layout};

pub use config::Config;
pub use core::Core;
pub use error::{Result, ShuffleError};
pub use server::run;
