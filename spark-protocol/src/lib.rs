//! Spark's external shuffle service protocol (Spark 4.3.0, `network-common` and
//! `network-shuffle`), byte for byte: shared by the shuffle service, which serves it, and by
//! the tests and the load generator, which speak it as clients.
//!
//! - [`ids`]: Spark's identifiers (application, executor, shuffle, map, reduce), validated
//!   before any of them names a file;
//! - [`layout`]: Spark's on-disk layout of sort-shuffle output (placement, index files);
//! - [`checksum`]: Spark's shuffle checksums (Adler32, CRC32, CRC32C) and the diagnosis of a
//!   corrupt block (`DiagnoseCorruption`);
//! - [`wire`]: Spark's `Encoders` (strings, byte arrays, string arrays) with bounds-checked
//!   readers;
//! - [`frame`]: transport frames (`RpcRequest`, `ChunkFetchRequest`, `StreamResponse`, ...) and
//!   an incremental frame decoder;
//! - [`message`]: `BlockTransferMessage`s (`RegisterExecutor`, `FetchShuffleBlocks`, ...);
//! - [`sasl`]: the DIGEST-MD5 exchange of `spark.authenticate`;
//! - [`crypto`]: network crypto (`spark.network.crypto.enabled`): the `AuthEngine` exchange
//!   and the AES-CTR and AES-GCM channels;
//! - [`client`]: a small async client of the above.

pub mod checksum;
pub mod client;
pub mod crypto;
pub mod frame;
pub mod ids;
pub mod layout;
pub mod message;
pub mod sasl;
pub mod wire;
