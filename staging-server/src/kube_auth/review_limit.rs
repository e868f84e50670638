//! Budgets of Kubernetes API reviews: token buckets keyed by whom a review is charged to.
//!
//! [`super::review`] keeps three of them:
//!
//! - *failures per client address* ([`PeerKey`]): a TokenReview that does not authenticate
//!   the token (an unknown, guessed or expired token) costs its caller's address. Reviews of
//!   valid tokens cost nothing there, and answers from the cache are free, so behind a proxy
//!   or SNAT, where many users share one address, one caller sending junk tokens spends only
//!   the budget for reviews of tokens not in the cache: identities already reviewed keep
//!   working. A client is its IPv4 address, or its IPv6 address or the network of
//!   `--kube-auth-ipv6-prefix` bits around it (64 where one host holds a whole /64 and can
//!   rotate through it);
//! - *per identity*: a SubjectAccessReview that refuses costs the reviewed identity (a valid
//!   token asking for ever new namespaces), and so does the review of each of its new tokens
//!   (tokens minted in bulk; beyond this budget such a review costs the address as a failure);
//! - *all reviews*, one bucket: every review that reaches the API server, whatever its
//!   outcome, so that many callers together cannot drive it harder than the operator allows.
//!
//! A review takes from the buckets before it is sent (so that concurrent requests cannot
//! overdraw them) and [`ReviewLimit::refund`] gives the failure budget back when it succeeds.
//! Each keyed bucket may hold `burst` reviews and refills `per_minute`. The table holds at
//! most [`MAX_KEYS`] keys: when it is full, keys whose bucket has refilled are forgotten first
//! (they lose nothing), and only if that frees nothing is the table emptied (the global
//! bucket still bounds the API server's load then).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at once per budget.
const MAX_KEYS: usize = 10_000;

/// The budget key of a client address: the grouping of the services' other per-peer limits
/// (IPv4 as is, IPv6 by the configured prefix length, IPv4-mapped as IPv4).
pub(crate) use service_runtime::peer::PeerKey;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per key.
#[derive(Debug)]
pub(crate) struct ReviewLimit<K> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> ReviewLimit<K> {
    /// `burst` reviews at once, `per_minute` more each minute (both at least 1).
    pub(crate) fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one review from `key`'s budget; when it is spent, how long until the next.
    pub(crate) fn take(&self, key: &K) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }

    /// Gives back one review taken from `key` (it succeeded).
    pub(crate) fn refund(&self, key: &K) {
        self.refund_at(key, Instant::now());
    }

    fn take_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= MAX_KEYS {
            let full = |b: &Bucket| self.level(b, now) >= self.burst;
            buckets.retain(|_, b| !full(b));
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let level = self.level(bucket, now);
        if level >= 1.0 {
            *bucket = Bucket {
                tokens: level - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket {
                tokens: level,
                at: now,
            };
            Err(Duration::from_secs_f64((1.0 - level) / self.per_second))
        }
    }

    fn refund_at(&self, key: &K, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(key) {
            *bucket = Bucket {
                tokens: (self.level(bucket, now) + 1.0).min(self.burst),
                at: now,
            };
        }
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.per_second;
        (b.tokens + refill).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> PeerKey {
        PeerKey::from(ip.parse::<std::net::IpAddr>().unwrap())
    }

    #[test]
    fn burst_then_refill_per_client() {
        let limit = ReviewLimit::new(60, 3);
        let t0 = Instant::now();
        let (a, b) = (peer("10.0.0.1"), peer("10.0.0.2"));
        for _ in 0..3 {
            assert_eq!(limit.take_at(&a, t0), Ok(()));
        }
        let wait = limit.take_at(&a, t0).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another client has its own budget.
        assert_eq!(limit.take_at(&b, t0), Ok(()));
        // One per second at 60 a minute.
        assert_eq!(limit.take_at(&a, t0 + Duration::from_secs(1)), Ok(()));
        assert!(limit.take_at(&a, t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn an_ipv6_host_grouped_by_64_is_its_slash_64() {
        let peer = |ip: &str| PeerKey::new(ip.parse().unwrap(), 64);
        let limit = ReviewLimit::new(1, 1);
        let t0 = Instant::now();
        assert_eq!(limit.take_at(&peer("2001:db8::1"), t0), Ok(()));
        // Rotating within the /64 does not help.
        assert!(limit.take_at(&peer("2001:db8::ffff:2"), t0).is_err());
        assert!(
            limit
                .take_at(&peer("2001:db8:0:0:1234:5678:9abc:def0"), t0)
                .is_err()
        );
        assert_eq!(limit.take_at(&peer("2001:db8:0:1::1"), t0), Ok(()));
        assert_eq!(limit.take_at(&peer("::ffff:10.0.0.9"), t0), Ok(()));
        assert!(limit.take_at(&peer("10.0.0.9"), t0).is_err());
    }

    #[test]
    fn a_refund_gives_back_what_a_success_took_and_no_more() {
        let limit = ReviewLimit::new(1, 2);
        let t0 = Instant::now();
        let a = peer("10.0.0.1");
        // Successful reviews cost nothing in the end, however many.
        for _ in 0..10 {
            assert_eq!(limit.take_at(&a, t0), Ok(()));
            limit.refund_at(&a, t0);
        }
        // Failures spend the budget.
        assert_eq!(limit.take_at(&a, t0), Ok(()));
        assert_eq!(limit.take_at(&a, t0), Ok(()));
        assert!(limit.take_at(&a, t0).is_err());
        // A refund never lifts a bucket past its burst, and a key never seen gets nothing.
        for _ in 0..5 {
            limit.refund_at(&a, t0);
        }
        assert_eq!(limit.take_at(&a, t0), Ok(()));
        assert_eq!(limit.take_at(&a, t0), Ok(()));
        assert!(limit.take_at(&a, t0).is_err());
        limit.refund_at(&peer("10.0.0.2"), t0);
        assert!(limit.buckets.lock().unwrap().len() == 1);
    }

    #[test]
    fn a_full_table_forgets_refilled_keys_first() {
        let limit = ReviewLimit::new(60, 2);
        let t0 = Instant::now();
        let spent = "spent".to_owned();
        limit.take_at(&spent, t0).unwrap();
        limit.take_at(&spent, t0).unwrap();
        for i in 0..MAX_KEYS - 1 {
            let k = format!("k{i}");
            limit.take_at(&k, t0).unwrap();
            limit.refund_at(&k, t0);
        }
        // The table is full; a new key pushes out the refilled ones, not the spent one.
        limit.take_at(&"new".to_owned(), t0).unwrap();
        assert!(limit.take_at(&spent, t0).is_err());
    }
}
