//! Spark's own shuffle protocol, so that unmodified Spark executors (`spark.shuffle.service.
//! enabled=true`) register with this service and fetch from it. A front end over the same
//! [`Core`](crate::Core) as the gRPC API.
//!
//! - the byte formats, the DIGEST-MD5 exchange and a client are the `spark-protocol` crate's;
//! - [`request`]: block messages made into the core's typed requests;
//! - [`handler`], [`stream`]: what each message does (checksums from `spark-protocol`);
//! - [`conn`], [`listener`], [`budget`], [`deadline`]: connections, budgets, deadlines,
//!   zero-copy sends.

pub(crate) mod admission;
pub(crate) mod budget;
pub(crate) mod channel;
pub(crate) mod conn;
pub(crate) mod deadline;
pub(crate) mod handler;
pub(crate) mod listener;
pub(crate) mod request;
pub(crate) mod stream;
pub(crate) mod transport;
