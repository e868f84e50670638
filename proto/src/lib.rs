//! gRPC schema of the shuffle service (`shuffle.v1`), generated at build time without protoc.
