//! The accept loop's one step, shared by every TCP listener of both services: a cap on open
//! connections (beyond it a connection is closed at once, which HTTP and Spark clients retry),
//! optionally a cap per peer (see [`crate::peer`]) so that one client cannot take every slot
//! and lock the others out (the kubelet's probes, say), a short back-off when `accept` fails
//! (out of descriptors), `TCP_NODELAY`, and a prompt stop. Callers decide what to log and count
//! for each [`Accepted`] outcome.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::peer::{PeerCount, PeerCounts, PeerKey};

/// How long to wait after a failed `accept` before the next one, so that an exhausted
/// descriptor table does not turn the loop into a spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listener with a connection cap.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max_connections: usize,
    per_peer: Option<(PeerCounts, usize)>,
    ipv6_prefix: u8,
}

/// A connection's slot (and its peer's count): freed when dropped.
#[derive(Debug)]
pub struct Slot {
    _slot: OwnedSemaphorePermit,
    _peer: Option<PeerCount>,
}

/// A connection within the cap; the slot is freed when `permit` is dropped.
#[derive(Debug)]
pub struct Connection {
    /// The socket, with `TCP_NODELAY` set.
    pub stream: TcpStream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection's slot.
    pub permit: Slot,
}

/// Which cap closed a connection at its accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's cap.
    Cap,
    /// The cap per peer.
    PeerCap,
}

impl Refusal {
    /// Both, for metrics, in declaration order (`refusal as usize` indexes it).
    pub const ALL: [Self; 2] = [Self::Cap, Self::PeerCap];

    /// The metric label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Cap => "max_connections",
            Self::PeerCap => "max_connections_per_peer",
        }
    }
}

/// What one step of the loop produced.
#[derive(Debug)]
pub enum Accepted {
    /// A connection to serve.
    Open(Connection),
    /// A connection closed at once: a cap was reached.
    Refused(SocketAddr, Refusal),
    /// `accept` failed (typically `EMFILE`); the back-off has already been waited.
    Failed(io::Error),
}

impl Acceptor {
    /// Wraps `listener`, allowing at most `max_connections` open connections at once.
    #[must_use]
    pub fn new(listener: TcpListener, max_connections: usize) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            per_peer: None,
            ipv6_prefix: crate::peer::DEFAULT_IPV6_PREFIX,
        }
    }

    /// Also allows at most `max` open connections per peer (IPv6 peers grouped by [`crate::peer::DEFAULT_IPV6_PREFIX`] unless
    /// [`Self::ipv6_prefix`] says otherwise).
    #[must_use]
    pub fn per_peer(mut self, max: usize) -> Self {
        self.per_peer = Some((PeerCounts::default(), max));
        self
    }

    /// Groups IPv6 peers by their first `prefix` bits for [`Self::per_peer`].
    #[must_use]
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix;
        self
    }

    /// The cap.
    #[must_use]
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Connections open now.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }

    /// Waits for the next connection; `None` once `stop` is cancelled.
    pub async fn next(&self, stop: &CancellationToken) -> Option<Accepted> {
        let accepted = tokio::select! {
            () = stop.cancelled() => return None,
            a = self.listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => return Some(Accepted::Failed(e)),
                }
            }
        };
        // The listener's cap first, so that a full listener is reported as such whoever
        // connects; then the peer's share.
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            drop(stream);
            return Some(Accepted::Refused(peer, Refusal::Cap));
        };
        let peer_count = match &self.per_peer {
            None => None,
            Some((counts, max)) => {
                match counts.try_add(PeerKey::new(peer.ip(), self.ipv6_prefix), 1, *max) {
                    Some(c) => Some(c),
                    None => {
                        drop(stream);
                        return Some(Accepted::Refused(peer, Refusal::PeerCap));
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        Some(Accepted::Open(Connection {
            stream,
            peer,
            permit: Slot {
                _slot: slot,
                _peer: peer_count,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn refuses_beyond_the_cap_and_frees_slots() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new(listener, 1);
        let stop = CancellationToken::new();

        let _a = TcpStream::connect(addr).await.unwrap();
        let Some(Accepted::Open(first)) = acceptor.next(&stop).await else {
            panic!("first connection refused");
        };
        assert_eq!(acceptor.open_connections(), 1);

        let mut b = TcpStream::connect(addr).await.unwrap();
        assert!(matches!(
            acceptor.next(&stop).await,
            Some(Accepted::Refused(_, Refusal::Cap))
        ));
        // The refused connection is closed by the server.
        let mut buf = [0u8; 1];
        assert_eq!(b.read(&mut buf).await.unwrap_or(0), 0);

        drop(first);
        assert_eq!(acceptor.open_connections(), 0);
        let _c = TcpStream::connect(addr).await.unwrap();
        assert!(matches!(
            acceptor.next(&stop).await,
            Some(Accepted::Open(_))
        ));
    }

    #[tokio::test]
    async fn one_peer_gets_its_share_and_another_still_gets_in() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::new(listener, 4).per_peer(2);
        let stop = CancellationToken::new();
        let mut held = Vec::new();
        for _ in 0..2 {
            let c = TcpStream::connect(addr).await.unwrap();
            let Some(Accepted::Open(o)) = acceptor.next(&stop).await else {
                panic!("refused within the share");
            };
            held.push((c, o));
        }
        let _third = TcpStream::connect(addr).await.unwrap();
        assert!(matches!(
            acceptor.next(&stop).await,
            Some(Accepted::Refused(_, Refusal::PeerCap))
        ));
        // Another address of the loopback network is another peer.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let _other = other.connect(addr).await.unwrap();
        let Some(Accepted::Open(o)) = acceptor.next(&stop).await else {
            panic!("another peer was refused");
        };
        assert_eq!(o.peer.ip().to_string(), "127.0.0.2");
        // A freed connection gives the first peer its slot back.
        held.pop();
        let _again = TcpStream::connect(addr).await.unwrap();
        assert!(matches!(
            acceptor.next(&stop).await,
            Some(Accepted::Open(_))
        ));
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let acceptor = Acceptor::new(listener, 4);
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(acceptor.next(&stop).await.is_none());
    }
}
