//! The DIGEST-MD5 confidentiality layer (qop `auth-conf`, RFC 2831 §2.3–2.4) as Java's SASL
//! implementation runs it, for `spark.authenticate.enableSaslEncryption=true`; cipher `rc4`
//! (the only one this side offers, one of Java's two "high" ciphers).
//!
//! Keys from the binary H(A1) of the handshake: Kic/Kis = MD5(H(A1) ‖ "Digest session key to
//! {client-to-server|server-to-client} signing key magic constant"), Kcc/Kcs = MD5(H(A1) ‖
//! "Digest H(A1) to {client-to-server|server-to-client} sealing key magic constant"). A
//! message is `RC4(msg ‖ HMAC-MD5(Ki, seq ‖ msg)[..10]) ‖ 00 01 ‖ seq` (sequence numbers from
//! 0 per direction, RC4 one stream per direction). Spark frames each wrapped piece of at most
//! 64 KiB of plaintext behind an 8-byte length that counts itself (`SaslEncryption`).

use bytes::{Buf as _, BufMut as _, BytesMut};
use md5::{Digest as _, Md5};
use rc4::{KeyInit as _, Rc4, StreamCipher as _};
use subtle::ConstantTimeEq as _;

use super::CryptoError;

/// Plaintext per wrapped piece (Spark's `spark.network.sasl.maxEncryptedBlockSize` default).
pub const MAX_PIECE: usize = 64 << 10;
const MAC: usize = 10;
/// Bytes a wrapped piece adds: MAC, message type, sequence number.
const OVERHEAD: usize = MAC + 2 + 4;

fn md5_cat(a: &[u8], b: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(a);
    h.update(b);
    h.finalize().into()
}

/// HMAC-MD5 (RFC 2104) of `parts`, truncated to the 10 bytes DIGEST-MD5 sends.
fn hmac_md5(key: &[u8; 16], parts: &[&[u8]]) -> [u8; MAC] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Md5::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Md5::new();
    outer.update(opad);
    outer.update(inner);
    let full: [u8; 16] = outer.finalize().into();
    full[..MAC].try_into().expect("10 bytes")
}

struct Keys {
    kic: [u8; 16],
    kis: [u8; 16],
    kcc: [u8; 16],
    kcs: [u8; 16],
}

fn keys(ha1: &[u8; 16]) -> Keys {
    Keys {
        kic: md5_cat(
            ha1,
            b"Digest session key to client-to-server signing key magic constant",
        ),
        kis: md5_cat(
            ha1,
            b"Digest session key to server-to-client signing key magic constant",
        ),
        kcc: md5_cat(
            ha1,
            b"Digest H(A1) to client-to-server sealing key magic constant",
        ),
        kcs: md5_cat(
            ha1,
            b"Digest H(A1) to server-to-client sealing key magic constant",
        ),
    }
}

/// One direction's wrapping.
pub struct SaslWrap {
    ki: [u8; 16],
    rc4: Box<Rc4<rc4::consts::U16>>,
    seq: u32,
}

/// One direction's unwrapping, with Spark's framing.
pub struct SaslUnwrap {
    ki: [u8; 16],
    rc4: Box<Rc4<rc4::consts::U16>>,
    seq: u32,
    max_piece: usize,
}

impl std::fmt::Debug for SaslWrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaslWrap(rc4)")
    }
}

impl std::fmt::Debug for SaslUnwrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaslUnwrap(rc4)")
    }
}

fn rc4(key: &[u8; 16]) -> Box<Rc4<rc4::consts::U16>> {
    Box::new(Rc4::new(key.into()))
}

/// The server's halves from the handshake's binary H(A1); pieces larger than `max_piece`
/// from the client are refused.
pub fn server(ha1: &[u8; 16], max_piece: usize) -> (SaslUnwrap, SaslWrap) {
    let k = keys(ha1);
    (
        SaslUnwrap {
            ki: k.kic,
            rc4: rc4(&k.kcc),
            seq: 0,
            max_piece,
        },
        SaslWrap {
            ki: k.kis,
            rc4: rc4(&k.kcs),
            seq: 0,
        },
    )
}

/// The client's halves.
pub fn client(ha1: &[u8; 16], max_piece: usize) -> (SaslUnwrap, SaslWrap) {
    let k = keys(ha1);
    (
        SaslUnwrap {
            ki: k.kis,
            rc4: rc4(&k.kcs),
            seq: 0,
            max_piece,
        },
        SaslWrap {
            ki: k.kic,
            rc4: rc4(&k.kcc),
            seq: 0,
        },
    )
}

impl SaslWrap {
    /// Bytes of `plain_len` bytes once framed and wrapped.
    pub fn sealed_len(&self, plain_len: usize) -> usize {
        let pieces = plain_len.div_ceil(MAX_PIECE).max(1);
        plain_len + pieces * (8 + OVERHEAD)
    }

    /// Appends `plain`, wrapped in pieces of at most 64 KiB, each behind its length.
    pub fn seal(&mut self, plain: &[u8], out: &mut BytesMut) {
        for piece in plain.chunks(MAX_PIECE) {
            let seq = self.seq.to_be_bytes();
            self.seq = self.seq.wrapping_add(1);
            let mac = hmac_md5(&self.ki, &[&seq, piece]);
            out.put_u64((8 + piece.len() + OVERHEAD) as u64);
            let at = out.len();
            out.put_slice(piece);
            out.put_slice(&mac);
            self.rc4.apply_keystream(&mut out[at..]);
            out.put_slice(&[0, 1]);
            out.put_slice(&seq);
        }
    }
}

impl SaslUnwrap {
    /// Moves every complete piece of `raw` to `out`, unwrapped.
    ///
    /// # Errors
    /// A length out of range, a MAC that does not match, a sequence number out of order.
    pub fn open(&mut self, raw: &mut BytesMut, out: &mut BytesMut) -> Result<(), CryptoError> {
        while raw.len() >= 8 {
            let len = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
            if len < (8 + OVERHEAD) as u64 || len > (8 + OVERHEAD + self.max_piece) as u64 {
                return Err(CryptoError::Length {
                    what: "SASL piece",
                    len,
                });
            }
            let len = len as usize;
            if raw.len() < len {
                return Ok(());
            }
            raw.advance(8);
            let mut piece = raw.split_to(len - 8);
            let body = piece.len() - 6;
            let (sealed, trailer) = piece.split_at_mut(body);
            if trailer[..2] != [0, 1] {
                return Err(CryptoError::Malformed("SASL message type"));
            }
            let seq: [u8; 4] = trailer[2..].try_into().expect("4 bytes");
            self.rc4.apply_keystream(sealed);
            let (msg, mac) = sealed.split_at(sealed.len() - MAC);
            let expected = hmac_md5(&self.ki, &[&seq, msg]);
            if !bool::from(expected.ct_eq(mac)) {
                return Err(CryptoError::Authentication("SASL MAC"));
            }
            if u32::from_be_bytes(seq) != self.seq {
                return Err(CryptoError::Malformed("SASL sequence number"));
            }
            self.seq = self.seq.wrapping_add(1);
            out.extend_from_slice(msg);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2202_hmac_md5_test_case_2() {
        // Key "Jefe" (padded to 16 bytes with zeros gives the same HMAC: keys are zero-padded).
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_md5(&key, &[b"what do ya want ", b"for nothing?"])),
            hex::encode(&hex::decode("750c783e6ab0b503eaa86e310a5db738").unwrap()[..10])
        );
    }

    #[test]
    fn both_sides_fit_and_tampering_fails() {
        let ha1 = [5u8; 16];
        let (mut s_open, mut s_seal) = server(&ha1, MAX_PIECE);
        let (mut c_open, mut c_seal) = client(&ha1, MAX_PIECE);
        for n in [1usize, 100, MAX_PIECE, MAX_PIECE + 1, 200_000] {
            let plain: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut wire = BytesMut::new();
            c_seal.seal(&plain, &mut wire);
            assert_eq!(wire.len(), c_seal.sealed_len(n));
            let mut out = BytesMut::new();
            // In pieces of 1000 bytes.
            let mut raw = BytesMut::new();
            for chunk in wire.chunks(1000) {
                raw.extend_from_slice(chunk);
                s_open.open(&mut raw, &mut out).unwrap();
            }
            assert_eq!(&out[..], &plain[..]);
            let mut wire = BytesMut::new();
            s_seal.seal(&plain, &mut wire);
            let mut out = BytesMut::new();
            c_open.open(&mut wire, &mut out).unwrap();
            assert_eq!(&out[..], &plain[..]);
        }
        let mut wire = BytesMut::new();
        c_seal.seal(b"x", &mut wire);
        wire[9] ^= 1;
        assert!(s_open.open(&mut wire, &mut BytesMut::new()).is_err());
        let mut wire = BytesMut::new();
        wire.put_u64(1 << 40);
        assert!(s_open.open(&mut wire, &mut BytesMut::new()).is_err());
    }
}
