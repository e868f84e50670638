#![allow(missing_docs)]
//! Integration tests of the staging server: one binary, servers on port 0, no sleeps.

mod blobs;
mod cli;
mod common;
mod crash;
mod downloads;
mod driver_end;
mod external;
mod fetch;
mod full_disk;
mod idle;
mod instances;
mod kube_auth;
mod lifecycle;
mod outage;
mod owners;
mod replicas;
mod slow;
mod store_proxy;
mod submissions;
mod tenants;
mod tls;
mod tokens;
mod uploads;
