//! Who a connection comes from, for limits that one client must not exhaust on its own (a
//! listener's connection slots, a shared memory budget). An IPv4 peer is its address; an IPv6
//! peer is its /64, because one host is usually given a whole /64 and picks a new address in
//! it at will (privacy addresses), so a per-address limit would not bind it. IPv4 addresses
//! mapped into IPv6 (a dual-stack listener on `[::]`) count as the IPv4 address.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The group a peer address belongs to for per-peer limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl From<IpAddr> for PeerKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Self::V4(a),
            IpAddr::V6(a) => Self::V6((a.to_bits() >> 64) as u64),
        }
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(a) => a.fmt(f),
            Self::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*prefix) << 64)),
        }
    }
}

/// Counts per peer, shared by the holders of [`PeerCount`] guards: each peer's entry goes
/// when its count falls to zero, so the map holds only peers with something open.
#[derive(Debug, Clone, Default)]
pub struct PeerCounts {
    counts: Arc<Mutex<HashMap<PeerKey, usize>>>,
}

/// `n` counted for one peer; uncounted when dropped.
#[derive(Debug)]
pub struct PeerCount {
    counts: PeerCounts,
    peer: PeerKey,
    n: usize,
}

impl PeerCounts {
    /// Counts `n` more for `peer` when its count stays within `max`; `None` otherwise.
    #[must_use]
    pub fn try_add(&self, peer: PeerKey, n: usize, max: usize) -> Option<PeerCount> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.entry(peer).or_insert(0);
        if c.saturating_add(n) > max {
            if *c == 0 {
                counts.remove(&peer);
            }
            return None;
        }
        *c += n;
        Some(PeerCount {
            counts: self.clone(),
            peer,
            n,
        })
    }

    /// What `peer` has counted now.
    #[must_use]
    pub fn get(&self, peer: PeerKey) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&peer).copied().unwrap_or(0)
    }

    fn sub(&self, peer: PeerKey, n: usize) {
        if n == 0 {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = counts.get_mut(&peer) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                counts.remove(&peer);
            }
        }
    }
}

impl PeerCount {
    /// How much this guard counts.
    #[must_use]
    pub fn n(&self) -> usize {
        self.n
    }

    /// Uncounts `n` of this guard's count now (at most what it holds).
    pub fn release(&mut self, n: usize) {
        let n = n.min(self.n);
        self.counts.sub(self.peer, n);
        self.n -= n;
    }

    /// Adds `other`'s count (for the same peer) to this guard.
    pub fn merge(&mut self, mut other: PeerCount) {
        debug_assert_eq!(self.peer, other.peer);
        self.n += std::mem::take(&mut other.n);
    }
}

impl Drop for PeerCount {
    fn drop(&mut self) {
        self.counts.sub(self.peer, self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_are_grouped_by_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(PeerKey::from(a), PeerKey::from(b));
        assert_ne!(PeerKey::from(a), PeerKey::from(c));
        assert_eq!(PeerKey::from(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(PeerKey::from(mapped), PeerKey::from(v4));
        assert_ne!(
            PeerKey::from(v4),
            PeerKey::from("10.0.0.8".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn counts_are_bounded_per_peer_and_given_back() {
        let counts = PeerCounts::default();
        let p = PeerKey::from("10.0.0.1".parse::<IpAddr>().unwrap());
        let q = PeerKey::from("10.0.0.2".parse::<IpAddr>().unwrap());
        let mut a = counts.try_add(p, 3, 4).unwrap();
        assert!(counts.try_add(p, 2, 4).is_none());
        let b = counts.try_add(q, 4, 4).unwrap();
        let c = counts.try_add(p, 1, 4).unwrap();
        assert_eq!(counts.get(p), 4);
        a.release(2);
        assert_eq!((a.n(), counts.get(p)), (1, 2));
        a.merge(c);
        assert_eq!((a.n(), counts.get(p)), (2, 2));
        drop(a);
        drop(b);
        assert_eq!((counts.get(p), counts.get(q)), (0, 0));
        assert!(counts.counts.lock().unwrap().is_empty());
    }
}
