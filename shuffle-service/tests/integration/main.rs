//! Integration tests of the shuffle service: servers on port 0, no sleeps.
#![allow(missing_docs)]

mod common;
mod connections;
mod crash;
mod fetch;
mod isolation;
mod kube;
mod lifecycle;
mod links;
mod security;
mod spark_crypto;
mod spark_e2e;
mod spark_protocol;
mod tls;
