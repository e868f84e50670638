//! How many Kubernetes API reviews one client may cause: a token bucket per client address,
//! so that a caller sending unknown tokens (or one token with ever new namespaces) cannot
//! drive the API server at will.
//!
//! A client is its IPv4 address, or the /64 prefix of its IPv6 address (one host commonly
//! holds a whole /64). Each client may cause `burst` reviews at once and `per_minute` more
//! per minute after that. Only reviews that reach the API server take from the bucket;
//! answers from the cache are free. The table holds at most [`MAX_CLIENTS`] clients: when it
//! is full, clients whose bucket has refilled are forgotten first (they lose nothing), and
//! only if that frees nothing is the table emptied.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients tracked at once.
const MAX_CLIENTS: usize = 10_000;

/// The key of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey(IpAddr);

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let mut s = v6.segments();
                    s[4..].fill(0);
                    Self(IpAddr::V6(s.into()))
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-client review budget.
#[derive(Debug)]
pub(crate) struct ReviewLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

impl ReviewLimit {
    /// `burst` reviews at once, `per_minute` more each minute (both at least 1).
    pub(crate) fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one review from `client`'s budget; when it is spent, how long until the next.
    pub(crate) fn take(&self, client: IpAddr) -> Result<(), Duration> {
        self.take_at(client, Instant::now())
    }

    fn take_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = ClientKey::of(client);
        if !buckets.contains_key(&key) && buckets.len() >= MAX_CLIENTS {
            let full = |b: &Bucket| self.level(b, now) >= self.burst;
            buckets.retain(|_, b| !full(b));
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
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

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.per_second;
        (b.tokens + refill).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_client() {
        let limit = ReviewLimit::new(60, 3);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limit.take_at(a, t0), Ok(()));
        }
        let wait = limit.take_at(a, t0).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another client has its own budget.
        assert_eq!(limit.take_at(b, t0), Ok(()));
        // One per second at 60 a minute.
        assert_eq!(limit.take_at(a, t0 + Duration::from_secs(1)), Ok(()));
        assert!(limit.take_at(a, t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64() {
        let limit = ReviewLimit::new(1, 1);
        let t0 = Instant::now();
        assert_eq!(limit.take_at("2001:db8::1".parse().unwrap(), t0), Ok(()));
        assert!(
            limit
                .take_at("2001:db8::ffff:2".parse().unwrap(), t0)
                .is_err()
        );
        assert_eq!(
            limit.take_at("2001:db8:0:1::1".parse().unwrap(), t0),
            Ok(())
        );
        assert_eq!(
            limit.take_at("::ffff:10.0.0.9".parse().unwrap(), t0),
            Ok(())
        );
        assert!(limit.take_at("10.0.0.9".parse().unwrap(), t0).is_err());
    }
}
