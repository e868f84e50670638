//! Label values that the code counting them enumerates: the metrics register each at zero,
//! so that every series exists before its first count.

/// Why the service closed a gRPC or admin connection (`crate::listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// No byte within the first-byte timeout.
    FirstByte,
    /// The TLS handshake failed or did not finish in time.
    TlsHandshake,
    /// No request head within the first-request timeout.
    FirstRequest,
    /// No request in progress for the idle timeout.
    Idle,
    /// Requests in progress whose bodies moved no byte for the idle timeout.
    Stalled,
}

impl CloseReason {
    /// Every reason, for metrics.
    pub(crate) const ALL: [Self; 5] = [
        Self::FirstByte,
        Self::TlsHandshake,
        Self::FirstRequest,
        Self::Idle,
        Self::Stalled,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::FirstByte => "first_byte_timeout",
            Self::TlsHandshake => "tls_handshake",
            Self::FirstRequest => "first_request_timeout",
            Self::Idle => "idle",
            Self::Stalled => "stalled",
        }
    }
}

/// Why the service closed a Spark connection: a deadline (`crate::spark::deadline`), or a
/// share (see [`crate::spark::admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// Not authenticated within the auth timeout.
    Auth,
    /// Quiet in both directions for the idle timeout.
    Idle,
    /// No byte for the idle timeout in the middle of a frame.
    StalledFrame,
    /// Not authenticated, and closed to admit a newer connection of its peer, which held its
    /// share ([`crate::spark::admission`]).
    Evicted,
    /// Authenticated as an application that holds its share of connections.
    AppShare,
}

impl Deadline {
    /// Every reason, for metrics.
    pub(crate) const ALL: [Self; 5] = [
        Self::Auth,
        Self::Idle,
        Self::StalledFrame,
        Self::Evicted,
        Self::AppShare,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Auth => "auth_timeout",
            Self::Idle => "idle",
            Self::StalledFrame => "stalled_frame",
            Self::Evicted => "evicted_for_newer",
            Self::AppShare => "application_share",
        }
    }
}

/// The limits of the Spark listener's frame memory (`crate::spark::budget`): the shared
/// budget, and a peer's share of it.
pub(crate) const FRAME_MEMORY_LIMITS: [&str; 2] = ["total", "peer_share"];
