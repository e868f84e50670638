//! Spark's own shuffle protocol, so that unmodified Spark executors (`spark.shuffle.service.
//! enabled=true`) register with this service and fetch from it. A front end over the same
//! [`Core`](crate::Core) as the gRPC API.
//!
//! - [`wire`], [`frame`], [`message`]: the byte formats (`Encoders`, transport frames,
//!   `BlockTransferMessage`), every decoder bounds-checked;
//! - [`sasl`], [`secrets`]: DIGEST-MD5 authentication with shared or per-application secrets;
//! - [`handler`], [`stream`], [`checksum`]: what each message does;
//! - [`conn`], [`listener`]: connections, budgets, zero-copy sends.

pub mod checksum;
pub mod client;
pub mod conn;
pub mod frame;
pub mod handler;
pub mod listener;
pub mod message;
pub mod sasl;
pub mod secrets;
pub mod stream;
pub mod wire;
