//! Spark's own shuffle protocol, so that unmodified Spark executors (`spark.shuffle.service.
//! enabled=true`) register with this service and fetch from it. A front end over the same
//! [`Core`](crate::Core) as the gRPC API.
//!
//! - [`wire`], [`frame`], [`message`], [`sasl`], [`client`]: the byte formats and the
//!   DIGEST-MD5 exchange, from the `spark-protocol` crate (re-exported here);
//! - [`request`]: block messages made into the core's typed requests;
//! - [`handler`], [`stream`]: what each message does (checksums from `spark-protocol`);
//! - [`conn`], [`listener`], [`budget`], [`deadline`]: connections, budgets, deadlines,
//!   zero-copy sends.

pub mod admission;
pub mod budget;
pub mod channel;
pub mod conn;
pub mod deadline;
pub mod handler;
pub mod listener;
pub mod request;
pub mod stream;
pub mod transport;

pub use spark_protocol::{client, frame, message, sasl, wire};
