//! Integration tests of the shuffle service: servers bind port 0 before they are spawned, and
//! readiness is signalled, never slept for. What must happen over a network (the pod watches
//! deciding, a connection deadline firing, a metric moving) is waited for by polling with a
//! deadline; a few waits show that nothing happens within a time (the pod watches' quiet
//! periods, a stalled client), and so can pass wrongly on a slow machine but never fail
//! wrongly.
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
