//! The small runtime pieces both services share, so that they behave the same way:
//!
//! - [`size`]: byte sizes in configuration (`512Mi`, `2GiB`, `100MB`), Kubernetes' units;
//! - [`duration`]: durations in configuration files (`30s`, `5m`), read as the flags read them;
//! - [`secret`]: secret files (refused when group or others may read them);
//! - [`token`]: SHA-256 token hashes compared in constant time;
//! - [`disk`]: whether an I/O error means a full disk (`ENOSPC`, `EDQUOT`);
//! - [`lock`]: one process per directory;
//! - [`sqlite`]: opening a database (WAL, busy timeout, an explicit `synchronous`);
//! - [`logging`]: `tracing` set-up from `RUST_LOG` and `LOG_FORMAT`;
//! - [`shutdown`]: the SIGTERM/SIGINT future;
//! - [`accept`]: the accept loop's step (connection caps, back-off, `TCP_NODELAY`);
//! - [`peer`]: who a connection comes from, for per-peer limits (IPv6 by a prefix length);
//! - [`probe`]: Kubernetes exec probes through a Unix socket no other pod can reach;
//! - [`progress`]: whether an HTTP connection's requests still move (idle and stall deadlines);
//! - [`tls`]: a TLS server certificate reloaded when its files change, and its expiry;
//! - [`rlimit`]: the open-file limit raised to the hard limit at start.

pub mod accept;
pub mod disk;
pub mod duration;
pub mod lock;
pub mod logging;
pub mod peer;
pub mod probe;
pub mod progress;
pub mod rlimit;
pub mod secret;
pub mod shutdown;
pub mod size;
pub mod sqlite;
pub mod tls;
pub mod token;
