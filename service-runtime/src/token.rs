//! Bearer tokens are kept as SHA-256 hashes and compared in constant time.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The stored form of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` hashes to any of `hashes`, in time independent of which (or whether one)
/// matches.
pub fn matches_any(token: &str, hashes: &[[u8; 32]]) -> bool {
    let h = hash(token);
    let mut ok = subtle::Choice::from(0);
    for a in hashes {
        ok |= a.ct_eq(&h);
    }
    bool::from(ok)
}

/// Whether `token` hashes to `stored`, in constant time.
pub fn matches(token: &str, stored: &[u8; 32]) -> bool {
    bool::from(stored.ct_eq(&hash(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_compare() {
        let h = hash("abc");
        assert!(matches("abc", &h));
        assert!(!matches("abd", &h));
        assert!(matches_any("abc", &[hash("x"), h]));
        assert!(!matches_any("abc", &[]));
    }
}
