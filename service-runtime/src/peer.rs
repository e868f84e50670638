//! Who a connection comes from, for limits that one client must not exhaust on its own (a
//! listener's connection slots, a shared memory budget). An IPv4 peer is its address; an IPv6
//! peer is the network of a configurable prefix length around its address: /128 by default,
//! because inside a cluster the network assigns each pod its address and a node's pods share
//! one range (often a /64), so a wider group would let one pod spend its neighbours' share;
//! /64 where clients are hosts on networks that hand each a whole /64, in which they pick new
//! addresses at will (privacy addresses) and a per-address limit would not bind them. IPv4 addresses mapped into IPv6 (a
//! dual-stack listener on `[::]`) count as the IPv4 address.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The prefix length IPv6 peers are grouped by unless configured otherwise: one address.
pub const DEFAULT_IPV6_PREFIX: u8 = 128;

/// The group a peer address belongs to for per-peer limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 network: its address (the bits past the prefix zero) and prefix length.
    V6(u128, u8),
}

impl PeerKey {
    /// The group of `ip`, IPv6 addresses grouped by their first `ipv6_prefix` bits (0 to
    /// 128; larger values count as 128).
    #[must_use]
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Self::V4(a),
            IpAddr::V6(a) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Self::V6(a.to_bits() & mask, prefix)
            }
        }
    }
}

impl From<IpAddr> for PeerKey {
    fn from(ip: IpAddr) -> Self {
        Self::new(ip, DEFAULT_IPV6_PREFIX)
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(a) => a.fmt(f),
            Self::V6(net, prefix) => write!(f, "{}/{prefix}", Ipv6Addr::from_bits(*net)),
        }
    }
}

/// Counts per peer (or per any other key: a namespace, a credential), shared by the holders of
/// [`PeerCount`] guards: each key's entry goes when its count falls to zero, so the map holds
/// only keys with something open.
#[derive(Debug, Clone)]
pub struct PeerCounts<K = PeerKey> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K> Default for PeerCounts<K> {
    fn default() -> Self {
        Self {
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// `n` counted for one key; uncounted when dropped.
#[derive(Debug)]
pub struct PeerCount<K: Eq + Hash + Clone = PeerKey> {
    counts: PeerCounts<K>,
    peer: K,
    n: usize,
}

impl<K: Eq + Hash + Clone> PeerCounts<K> {
    /// Counts `n` more for `peer` when its count stays within `max`; `None` otherwise.
    #[must_use]
    pub fn try_add(&self, peer: K, n: usize, max: usize) -> Option<PeerCount<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.entry(peer.clone()).or_insert(0);
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
    pub fn get(&self, peer: &K) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(peer).copied().unwrap_or(0)
    }

    fn sub(&self, peer: &K, n: usize) {
        if n == 0 {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = counts.get_mut(peer) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                counts.remove(peer);
            }
        }
    }
}

impl<K: Eq + Hash + Clone> PeerCount<K> {
    /// How much this guard counts.
    #[must_use]
    pub fn n(&self) -> usize {
        self.n
    }

    /// Uncounts `n` of this guard's count now (at most what it holds).
    pub fn release(&mut self, n: usize) {
        let n = n.min(self.n);
        self.counts.sub(&self.peer, n);
        self.n -= n;
    }

    /// Adds `other`'s count (for the same key) to this guard.
    pub fn merge(&mut self, mut other: PeerCount<K>) {
        debug_assert!(self.peer == other.peer);
        self.n += std::mem::take(&mut other.n);
    }
}

impl<K: Eq + Hash + Clone> Drop for PeerCount<K> {
    fn drop(&mut self) {
        self.counts.sub(&self.peer, self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_grouped_by_64_share_their_network_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(PeerKey::new(a, 64), PeerKey::new(b, 64));
        assert_ne!(PeerKey::new(a, 64), PeerKey::new(c, 64));
        assert_ne!(PeerKey::from(a), PeerKey::from(b));
        assert_eq!(PeerKey::new(a, 64).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(PeerKey::from(mapped), PeerKey::from(v4));
        assert_ne!(
            PeerKey::from(v4),
            PeerKey::from("10.0.0.8".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn the_ipv6_prefix_length_is_configurable_from_one_address_to_everything() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::2".parse().unwrap();
        assert_ne!(PeerKey::new(a, 128), PeerKey::new(b, 128));
        assert_eq!(PeerKey::new(a, 128).to_string(), "2001:db8:1:2::1/128");
        assert_eq!(PeerKey::new(a, 200), PeerKey::new(a, 128));
        assert_eq!(PeerKey::new(a, 112), PeerKey::new(b, 112));
        assert_eq!(PeerKey::new(a, 0), PeerKey::new("::1".parse().unwrap(), 0));
        assert_eq!(PeerKey::new(a, 0).to_string(), "::/0");
        let v4: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(
            PeerKey::new(v4, 0),
            PeerKey::V4("10.0.0.7".parse().unwrap())
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
        assert_eq!(counts.get(&p), 4);
        a.release(2);
        assert_eq!((a.n(), counts.get(&p)), (1, 2));
        a.merge(c);
        assert_eq!((a.n(), counts.get(&p)), (2, 2));
        drop(a);
        drop(b);
        assert_eq!((counts.get(&p), counts.get(&q)), (0, 0));
        assert!(counts.counts.lock().unwrap().is_empty());
    }
}
