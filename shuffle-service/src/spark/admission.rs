//! Who holds the Spark port's connections: a peer's share, then an application's.
//!
//! Without authentication a connection has no identity but its address, and it counts
//! against that address's share (`--spark-max-connections-per-peer`) for its whole life;
//! beyond the share a new connection is closed at once.
//!
//! With authentication, an address is a weak identity: in the DaemonSet every executor of a
//! node, whatever its tenant, connects from the node's address (host network). So a
//! connection counts against its address only until it authenticates, and then against its
//! application (`--spark-max-connections-per-app`; beyond it the connection is closed). When
//! an address already holds its share of unauthenticated connections, its oldest is closed to
//! admit the new one, instead of the new one being refused: a tenant that keeps opening
//! connections it never authenticates cannot lock out the other executors of its node, whose
//! clients authenticate within a round trip or two, unless it opens a whole share of new
//! connections within each of their handshakes. A closed connection counts against its peer
//! until its slot is free (it is closed at once, its TLS handshake abandoned), and a peer never
//! holds more than twice its share of the listener's slots, closed ones included.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use service_runtime::peer::{PeerCount, PeerCounts, PeerKey};
use spark_protocol::ids::AppId;
use tokio_util::sync::CancellationToken;

/// The shares, shared by the listener's connections.
#[derive(Debug)]
pub(crate) struct Admission {
    per_peer: usize,
    per_app: usize,
    /// Whether connections become an application's once authenticated (authentication on).
    by_app: bool,
    state: Mutex<State>,
    /// Authenticated connections per application.
    apps: PeerCounts<AppId>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Each peer's connections counted against it, oldest first, with how to close them (a
    /// cancelled token: closed to make room, its slot not free yet).
    peers: HashMap<PeerKey, VecDeque<(u64, CancellationToken)>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its peer holds its share (authentication off), or twice its share counting the
    /// connections closed to make room whose slots are not free yet (authentication on).
    Peer,
    /// Its application holds its share.
    App,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    held: Held,
    evicted: CancellationToken,
}

#[derive(Debug)]
enum Held {
    Peer(PeerKey),
    /// Authenticated: the application's count, given back when dropped.
    App {
        _count: PeerCount<AppId>,
    },
    Nothing,
}

/// What [`Admission::admit`] did besides admitting.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    /// Whether the peer's oldest unauthenticated connection was closed to make room.
    pub evicted_another: bool,
}

impl Admission {
    /// Shares of `per_peer` connections per peer and `per_app` per application; `by_app` when
    /// authentication is on.
    #[must_use]
    pub(crate) fn new(per_peer: usize, per_app: usize, by_app: bool) -> Arc<Self> {
        Arc::new(Self {
            per_peer: per_peer.max(1),
            per_app: per_app.max(1),
            by_app,
            state: Mutex::new(State::default()),
            apps: PeerCounts::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer`.
    ///
    /// # Errors
    /// [`Refused::Peer`] when the peer holds its share and connections cannot authenticate,
    /// or holds twice its share counting connections closed to make room.
    pub(crate) fn admit(self: &Arc<Self>, peer: PeerKey) -> Result<(Ticket, Admitted), Refused> {
        let mut state = self.state();
        let id = state.next;
        state.next += 1;
        let mut admitted = Admitted::default();
        if let Some(held) = state.peers.get_mut(&peer) {
            let live = held.iter().filter(|(_, t)| !t.is_cancelled()).count();
            if live >= self.per_peer {
                // Closed ones hold their slots a moment longer: a peer holds at most twice its
                // share.
                if !self.by_app || held.len() >= 2 * self.per_peer {
                    return Err(Refused::Peer);
                }
                if let Some((_, oldest)) = held.iter().find(|(_, t)| !t.is_cancelled()) {
                    oldest.cancel();
                    admitted.evicted_another = true;
                }
            }
        }
        let evicted = CancellationToken::new();
        state
            .peers
            .entry(peer)
            .or_default()
            .push_back((id, evicted.clone()));
        Ok((
            Ticket {
                admission: Arc::clone(self),
                id,
                held: Held::Peer(peer),
                evicted,
            },
            admitted,
        ))
    }

    fn leave_peer(&self, state: &mut State, peer: PeerKey, id: u64) {
        if let Some(held) = state.peers.get_mut(&peer) {
            held.retain(|(i, _)| *i != id);
            if held.is_empty() {
                state.peers.remove(&peer);
            }
        }
    }

    /// Connections counted against `peer` now, closed ones whose slots are not free yet
    /// included.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn peer_count(&self, peer: PeerKey) -> usize {
        self.state().peers.get(&peer).map_or(0, VecDeque::len)
    }

    /// Connections counted against `app` now.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn app_count(&self, app: &AppId) -> usize {
        self.apps.get(app)
    }
}

impl Ticket {
    /// Cancelled when the connection is closed to make room for a newer one of its peer.
    #[must_use]
    pub(crate) fn evicted(&self) -> CancellationToken {
        self.evicted.clone()
    }

    /// The connection authenticated as `app`: with authentication on, it leaves its peer's
    /// share for its application's.
    ///
    /// # Errors
    /// [`Refused::App`] when the application holds its share (the ticket then holds nothing).
    pub(crate) fn authenticated(&mut self, app: &AppId) -> Result<(), Refused> {
        if !self.admission.by_app || !matches!(self.held, Held::Peer(_)) {
            return Ok(());
        }
        if let Held::Peer(peer) = std::mem::replace(&mut self.held, Held::Nothing) {
            let mut state = self.admission.state();
            self.admission.leave_peer(&mut state, peer, self.id);
        }
        let count = self
            .admission
            .apps
            .try_add(app.clone(), 1, self.admission.per_app)
            .ok_or(Refused::App)?;
        self.held = Held::App { _count: count };
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // An application's count goes with its guard.
        if let Held::Peer(peer) = std::mem::replace(&mut self.held, Held::Nothing) {
            let mut state = self.admission.state();
            self.admission.leave_peer(&mut state, peer, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> PeerKey {
        PeerKey::new(ip.parse().unwrap(), 128)
    }

    fn app(id: &str) -> AppId {
        id.parse().unwrap()
    }

    #[test]
    fn without_authentication_a_peer_beyond_its_share_is_refused() {
        let a = Admission::new(2, 10, false);
        let first = a.admit(peer("10.0.0.1")).unwrap();
        let _second = a.admit(peer("10.0.0.1")).unwrap();
        assert_eq!(a.admit(peer("10.0.0.1")).unwrap_err(), Refused::Peer);
        assert!(a.admit(peer("10.0.0.2")).is_ok());
        drop(first);
        assert!(a.admit(peer("10.0.0.1")).is_ok());
    }

    #[test]
    fn with_authentication_the_oldest_stranger_of_a_full_peer_makes_room() {
        let a = Admission::new(2, 10, true);
        let (oldest, _) = a.admit(peer("10.0.0.1")).unwrap();
        let (second, _) = a.admit(peer("10.0.0.1")).unwrap();
        let (newest, admitted) = a.admit(peer("10.0.0.1")).unwrap();
        assert!(admitted.evicted_another);
        assert!(oldest.evicted().is_cancelled());
        assert!(!second.evicted().is_cancelled() && !newest.evicted().is_cancelled());
        // The closed one counts until its slot is free.
        assert_eq!(a.peer_count(peer("10.0.0.1")), 3);
        drop(oldest);
        assert_eq!(a.peer_count(peer("10.0.0.1")), 2);
    }

    #[test]
    fn a_peer_never_holds_more_than_twice_its_share_closed_connections_included() {
        let a = Admission::new(2, 10, true);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(a.admit(peer("10.0.0.1")).unwrap().0);
        }
        // Two open, two closed whose slots are not free yet: the next one is refused.
        assert_eq!(
            held.iter().filter(|t| t.evicted().is_cancelled()).count(),
            2
        );
        assert_eq!(a.admit(peer("10.0.0.1")).unwrap_err(), Refused::Peer);
        assert!(a.admit(peer("10.0.0.2")).is_ok());
        // A closed one's slot freed: room again.
        held.remove(0);
        assert!(a.admit(peer("10.0.0.1")).is_ok());
    }

    #[test]
    fn authenticated_connections_leave_their_peer_for_their_application() {
        let a = Admission::new(1, 2, true);
        let (mut one, _) = a.admit(peer("10.0.0.1")).unwrap();
        one.authenticated(&app("app-1")).unwrap();
        assert_eq!(a.peer_count(peer("10.0.0.1")), 0);
        // The peer's share is free again: a second executor of the node authenticates too.
        let (mut two, admitted) = a.admit(peer("10.0.0.1")).unwrap();
        assert!(!admitted.evicted_another && !one.evicted().is_cancelled());
        two.authenticated(&app("app-1")).unwrap();
        // The application holds its share: a third is refused, another application is not.
        let (mut three, _) = a.admit(peer("10.0.0.1")).unwrap();
        assert_eq!(
            three.authenticated(&app("app-1")).unwrap_err(),
            Refused::App
        );
        drop(three);
        let (mut other, _) = a.admit(peer("10.0.0.1")).unwrap();
        other.authenticated(&app("app-2")).unwrap();
        assert_eq!(a.app_count(&app("app-1")), 2);
        drop(one);
        drop(two);
        drop(other);
        assert_eq!(a.app_count(&app("app-1")), 0);
        assert_eq!(a.app_count(&app("app-2")), 0);
        assert!(a.state().peers.is_empty());
    }

    #[test]
    fn without_authentication_the_application_share_does_not_apply() {
        let a = Admission::new(4, 1, false);
        let (mut one, _) = a.admit(peer("10.0.0.1")).unwrap();
        let (mut two, _) = a.admit(peer("10.0.0.1")).unwrap();
        one.authenticated(&app("app-1")).unwrap();
        two.authenticated(&app("app-1")).unwrap();
        assert_eq!(a.peer_count(peer("10.0.0.1")), 2);
    }
}
