//! gRPC schema of the shuffle service (`shuffle.v1`), generated at build time with protox
//! (no protoc), plus the protocol constants shared by servers and clients.

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod shuffle {
    /// Version 1 of the API.
    pub mod v1 {
        tonic::include_proto!("shuffle.v1");
    }
}

pub use shuffle::v1;

/// Metadata key carrying `Bearer <token>` on every app-scoped or admin call.
pub const AUTHORIZATION: &str = "authorization";

/// Encoded file descriptor set of the schema, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shuffle_descriptor.bin"));

/// Largest data chunk the service puts in one FetchBlocks message, and the size a
/// WriteMapOutput client should use. Small enough that what a stream queues between the disk
/// and the socket stays small with many streams, large enough to amortise per-message costs.
pub const CHUNK_BYTES: usize = 256 << 10;
