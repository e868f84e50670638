//! Connection caps and deadlines of the gRPC and admin listeners.

use std::time::Duration;

/// Most gRPC connections at once.
pub const DEFAULT_GRPC_MAX_CONNECTIONS: usize = 1024;
/// Most gRPC connections one peer (an IPv4 address, an IPv6 address or network, see
/// [`DEFAULT_PEER_IPV6_PREFIX`]) holds at once: a sixteenth of
/// the cap, far above what one executor or driver opens.
pub const DEFAULT_GRPC_MAX_CONNECTIONS_PER_PEER: usize = 64;
/// Most admin connections at once (probes and scrapes).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Most admin connections one peer holds at once: the kubelet and a scraper each need one or
/// two, and with the DaemonSet on the host network any pod reaches the admin port, so one pod
/// must not be able to take the slots the kubelet's probes need.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS_PER_PEER: usize = 8;
/// The prefix length by which IPv6 peers are grouped for every per-peer cap and share: one
/// address, because in a cluster the network gives each pod its own and a node's pods share a
/// range (often a /64), so a wider group would let one pod spend its neighbours' share.
pub const DEFAULT_PEER_IPV6_PREFIX: u8 = service_runtime::peer::DEFAULT_IPV6_PREFIX;
/// A gRPC or admin connection must send its first byte within this.
pub const DEFAULT_CONNECTION_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// A gRPC or admin connection must finish TLS and send its first request head within this.
pub const DEFAULT_CONNECTION_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A gRPC or admin connection on which nothing moves this long is closed: no request in
/// progress, or requests in progress whose bodies move no byte either way.
pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Connection caps, deadlines and idle close of the gRPC and admin listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most gRPC connections.
    pub grpc_max_connections: usize,
    /// Most gRPC connections of one peer.
    pub grpc_max_connections_per_peer: usize,
    /// Most admin connections.
    pub admin_max_connections: usize,
    /// Most admin connections of one peer.
    pub admin_max_connections_per_peer: usize,
    /// IPv6 peers are grouped by this prefix length for the per-peer caps (the Spark port's
    /// too).
    pub peer_ipv6_prefix: u8,
    /// Deadline of a connection's first byte.
    pub first_byte_timeout: Duration,
    /// Deadline of the TLS handshake and first request head, from the accept.
    pub first_request_timeout: Duration,
    /// Close after this long with no request in progress, or with requests in progress whose
    /// bodies moved no byte (received from the client or taken for sending) for as long.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            grpc_max_connections: DEFAULT_GRPC_MAX_CONNECTIONS,
            grpc_max_connections_per_peer: DEFAULT_GRPC_MAX_CONNECTIONS_PER_PEER,
            admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            admin_max_connections_per_peer: DEFAULT_ADMIN_MAX_CONNECTIONS_PER_PEER,
            peer_ipv6_prefix: DEFAULT_PEER_IPV6_PREFIX,
            first_byte_timeout: DEFAULT_CONNECTION_FIRST_BYTE_TIMEOUT,
            first_request_timeout: DEFAULT_CONNECTION_FIRST_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_CONNECTION_IDLE_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.grpc_max_connections == 0
            || self.admin_max_connections == 0
            || self.grpc_max_connections_per_peer == 0
            || self.admin_max_connections_per_peer == 0
            || self.first_byte_timeout.is_zero()
            || self.idle_timeout.is_zero()
        {
            return Err(
                "gRPC and admin connection caps (per peer too), first-byte and idle timeouts must be positive"
                    .into(),
            );
        }
        if self.peer_ipv6_prefix > 128 {
            return Err("--peer-ipv6-prefix must be at most 128".into());
        }
        if self.first_request_timeout < self.first_byte_timeout {
            return Err("--connection-first-request-timeout must not be shorter than --connection-first-byte-timeout".into());
        }
        Ok(())
    }
}
