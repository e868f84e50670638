//! `AES/GCM/NoPadding` as Spark's `GcmTransportCipher` frames it. Each message is
//!
//! ```text
//! i64 total length (these 8 bytes included)
//! header: u8 header length (1 + key length + 7) | salt (key length) | nonce prefix (7)
//! segments of 32 768 bytes (32 752 of plaintext + 16 of tag), the last one shorter
//! ```
//!
//! The segment key is HKDF-SHA256(the session key, salt, info = the 8 length bytes); the
//! nonce of segment `i` is the prefix, `i` as a big-endian u32 and 1 for the last segment
//! (0 otherwise). Segments carry no associated data. These are Tink's `AesGcmHkdfStreaming`
//! segments with its header, as Spark 4.3.0 writes and reads them.

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use bytes::{Buf as _, BufMut as _, BytesMut};

use super::CryptoError;
use super::auth::hkdf_sha256;

/// Ciphertext bytes of a full segment.
pub const SEGMENT: usize = 32 * 1024;
/// Bytes of a GCM tag.
pub const TAG: usize = 16;
/// Plaintext bytes of a full segment.
pub const SEGMENT_PLAIN: usize = SEGMENT - TAG;
const NONCE_PREFIX: usize = 7;
const LENGTH: usize = 8;

fn header_len(key_len: usize) -> usize {
    1 + key_len + NONCE_PREFIX
}

fn segment_key(key: &[u8], salt: &[u8], total: u64) -> Result<LessSafeKey, CryptoError> {
    let k = hkdf_sha256(key, salt, &total.to_be_bytes(), key.len());
    let alg = if key.len() == 16 {
        &AES_128_GCM
    } else {
        &AES_256_GCM
    };
    UnboundKey::new(alg, &k)
        .map(LessSafeKey::new)
        .map_err(|_| CryptoError::Primitive("AES-GCM key"))
}

fn nonce(prefix: &[u8; NONCE_PREFIX], segment: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..NONCE_PREFIX].copy_from_slice(prefix);
    n[NONCE_PREFIX..11].copy_from_slice(&segment.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn check_key(key: &[u8]) -> Result<(), CryptoError> {
    match key.len() {
        16 | 32 => Ok(()),
        n => Err(CryptoError::Length {
            what: "AES key",
            len: n as u64,
        }),
    }
}

/// Seals each call's plaintext as one message under a fresh salt and nonce prefix.
pub struct GcmSealer {
    key: Vec<u8>,
}

impl std::fmt::Debug for GcmSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GcmSealer(AES-{})", self.key.len() * 8)
    }
}

impl GcmSealer {
    /// A sealer for the session key (16 or 32 bytes).
    ///
    /// # Errors
    /// A key of another length.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        check_key(key)?;
        Ok(Self { key: key.to_vec() })
    }

    /// Bytes of the message sealing `plain_len` bytes.
    pub fn sealed_len(&self, plain_len: usize) -> usize {
        let segments = plain_len.div_ceil(SEGMENT_PLAIN).max(1);
        LENGTH + header_len(self.key.len()) + plain_len + segments * TAG
    }

    /// Appends `plain` sealed as one message to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut BytesMut) {
        let total = self.sealed_len(plain.len());
        out.reserve(total);
        let mut salt = vec![0u8; self.key.len()];
        let mut prefix = [0u8; NONCE_PREFIX];
        // The system random source does not fail on Linux; a failure here would be a broken
        // host, on which no key can be trusted.
        aws_lc_rs::rand::fill(&mut salt).expect("system random source");
        aws_lc_rs::rand::fill(&mut prefix).expect("system random source");
        let key = segment_key(&self.key, &salt, total as u64).expect("valid key length");
        out.put_u64(total as u64);
        out.put_u8(header_len(self.key.len()) as u8);
        out.put_slice(&salt);
        out.put_slice(&prefix);
        let count = plain.len().div_ceil(SEGMENT_PLAIN).max(1);
        for (i, start) in (0..count).map(|i| (i, i * SEGMENT_PLAIN)) {
            let end = (start + SEGMENT_PLAIN).min(plain.len());
            let at = out.len();
            out.put_slice(&plain[start..end]);
            let tag = key
                .seal_in_place_separate_tag(
                    nonce(&prefix, i as u32, i + 1 == count),
                    Aad::empty(),
                    &mut out[at..],
                )
                .expect("segment fits AES-GCM");
            out.put_slice(tag.as_ref());
        }
    }
}

struct Message {
    total: u64,
    read: u64,
    key: LessSafeKey,
    prefix: [u8; NONCE_PREFIX],
    segment: u32,
}

/// Decrypts a stream of messages as they arrive.
pub struct GcmOpener {
    key: Vec<u8>,
    max_message: u64,
    current: Option<Message>,
}

impl std::fmt::Debug for GcmOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GcmOpener(AES-{})", self.key.len() * 8)
    }
}

impl GcmOpener {
    /// An opener for the session key; a message longer than `max_message` is refused.
    ///
    /// # Errors
    /// A key of another length.
    pub fn new(key: &[u8], max_message: u64) -> Result<Self, CryptoError> {
        check_key(key)?;
        Ok(Self {
            key: key.to_vec(),
            max_message,
            current: None,
        })
    }

    /// Moves every complete segment of `raw` to `out`, decrypted.
    ///
    /// # Errors
    /// A malformed header, an out-of-range length or a segment that fails its tag.
    pub fn open(&mut self, raw: &mut BytesMut, out: &mut BytesMut) -> Result<(), CryptoError> {
        let h = header_len(self.key.len());
        loop {
            let m = match &mut self.current {
                Some(m) => m,
                None => {
                    if raw.len() < LENGTH + h {
                        return Ok(());
                    }
                    let total = u64::from_be_bytes(raw[..LENGTH].try_into().expect("8 bytes"));
                    if total < (LENGTH + h) as u64 || total > self.max_message {
                        return Err(CryptoError::Length {
                            what: "GCM message",
                            len: total,
                        });
                    }
                    if usize::from(raw[LENGTH]) != h {
                        return Err(CryptoError::Malformed("GCM header"));
                    }
                    let salt = &raw[LENGTH + 1..LENGTH + 1 + self.key.len()];
                    let key = segment_key(&self.key, salt, total)?;
                    let prefix: [u8; NONCE_PREFIX] = raw[LENGTH + 1 + self.key.len()..LENGTH + h]
                        .try_into()
                        .expect("prefix length");
                    raw.advance(LENGTH + h);
                    self.current.insert(Message {
                        total,
                        read: (LENGTH + h) as u64,
                        key,
                        prefix,
                        segment: 0,
                    })
                }
            };
            let remaining = m.total - m.read;
            if remaining == 0 {
                self.current = None;
                continue;
            }
            let take = remaining.min(SEGMENT as u64) as usize;
            if take < TAG {
                return Err(CryptoError::Malformed("GCM segment shorter than its tag"));
            }
            if raw.len() < take {
                return Ok(());
            }
            let last = take as u64 == remaining;
            let mut seg = raw.split_to(take);
            let plain = m
                .key
                .open_in_place(nonce(&m.prefix, m.segment, last), Aad::empty(), &mut seg)
                .map_err(|_| CryptoError::Authentication("GCM segment tag"))?;
            out.extend_from_slice(plain);
            m.read += take as u64;
            m.segment = m
                .segment
                .checked_add(1)
                .ok_or(CryptoError::Malformed("GCM segment count"))?;
            if last {
                self.current = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(key_len: usize, sizes: &[usize], feed: usize) {
        let key = vec![3u8; key_len];
        let mut sealer = GcmSealer::new(&key).unwrap();
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let plain: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            let before = wire.len();
            sealer.seal(&plain, &mut wire);
            assert_eq!(wire.len() - before, sealer.sealed_len(n));
            assert_eq!(
                u64::from_be_bytes(wire[before..before + 8].try_into().unwrap()),
                sealer.sealed_len(n) as u64
            );
            expected.extend_from_slice(&plain);
        }
        let mut opener = GcmOpener::new(&key, 1 << 30).unwrap();
        let mut raw = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in wire.chunks(feed) {
            raw.extend_from_slice(piece);
            opener.open(&mut raw, &mut out).unwrap();
        }
        assert!(raw.is_empty());
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn messages_round_trip_in_any_pieces() {
        let sizes = [
            1,
            21,
            SEGMENT_PLAIN - 1,
            SEGMENT_PLAIN,
            SEGMENT_PLAIN + 1,
            3 * SEGMENT_PLAIN,
            100_000,
        ];
        for key_len in [16, 32] {
            for feed in [1, 7, 4096, 1 << 20] {
                round_trip(key_len, &sizes, feed);
            }
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_tag() {
        let key = [9u8; 16];
        let mut wire = BytesMut::new();
        GcmSealer::new(&key).unwrap().seal(b"hello", &mut wire);
        let n = wire.len();
        wire[n - 1] ^= 1;
        let mut out = BytesMut::new();
        let r = GcmOpener::new(&key, 1 << 20)
            .unwrap()
            .open(&mut wire, &mut out);
        assert!(matches!(r, Err(CryptoError::Authentication(_))), "{r:?}");
        assert!(out.is_empty());
    }

    #[test]
    fn lengths_and_headers_are_bounded() {
        let key = [9u8; 16];
        let mut o = GcmOpener::new(&key, 1000).unwrap();
        let mut raw = BytesMut::new();
        raw.put_u64(1 << 40);
        raw.put_u8(24);
        raw.put_slice(&[0; 23]);
        assert!(matches!(
            o.open(&mut raw, &mut BytesMut::new()),
            Err(CryptoError::Length { .. })
        ));
        let mut o = GcmOpener::new(&key, 1000).unwrap();
        let mut raw = BytesMut::new();
        raw.put_u64(100);
        raw.put_u8(40);
        raw.put_slice(&[0; 23]);
        assert!(matches!(
            o.open(&mut raw, &mut BytesMut::new()),
            Err(CryptoError::Malformed(_))
        ));
        // A segment shorter than a tag.
        let mut o = GcmOpener::new(&key, 1000).unwrap();
        let mut raw = BytesMut::new();
        raw.put_u64(8 + 24 + 3);
        raw.put_u8(24);
        raw.put_slice(&[0; 23 + 3]);
        assert!(o.open(&mut raw, &mut BytesMut::new()).is_err());
    }
}
