//! The accept loop's one step, shared by every TCP listener of both services: a cap on open
//! connections (beyond it a connection is closed at once, which HTTP and Spark clients retry),
//! a short back-off when `accept` fails (out of descriptors), `TCP_NODELAY`, and a prompt stop.
//! Callers decide what to log and count for each [`Accepted`] outcome.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long to wait after a failed `accept` before the next one, so that an exhausted
/// descriptor table does not turn the loop into a spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listener with a connection cap.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max_connections: usize,
}

/// A connection within the cap; the slot is freed when `permit` is dropped.
#[derive(Debug)]
pub struct Connection {
    /// The socket, with `TCP_NODELAY` set.
    pub stream: TcpStream,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection's slot.
    pub permit: OwnedSemaphorePermit,
}

/// What one step of the loop produced.
#[derive(Debug)]
pub enum Accepted {
    /// A connection to serve.
    Open(Connection),
    /// A connection closed at once: the cap was reached.
    Refused(SocketAddr),
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
        }
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
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            drop(stream);
            return Some(Accepted::Refused(peer));
        };
        let _ = stream.set_nodelay(true);
        Some(Accepted::Open(Connection {
            stream,
            peer,
            permit,
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
            Some(Accepted::Refused(_))
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
    async fn stops_when_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let acceptor = Acceptor::new(listener, 4);
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(acceptor.next(&stop).await.is_none());
    }
}
