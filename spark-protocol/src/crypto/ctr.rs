//! `AES/CTR/NoPadding` as Spark's `CtrTransportCipher` runs it: one key stream per direction
//! over every byte after the handshake, the 16-byte IV as the first 128-bit big-endian
//! counter block. AES-128 or AES-256 by the key's length (engine version 2 or 1).

use aes::{Aes128, Aes256};
use ctr::cipher::{KeyIvInit as _, StreamCipher as _};

use super::CryptoError;

type Ctr128 = ctr::Ctr128BE<Aes128>;
type Ctr256 = ctr::Ctr128BE<Aes256>;

/// A key stream at its current position.
pub enum CtrStream {
    /// A 16-byte key.
    Aes128(Box<Ctr128>),
    /// A 32-byte key.
    Aes256(Box<Ctr256>),
}

impl std::fmt::Debug for CtrStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Aes128(_) => "CtrStream(AES-128)",
            Self::Aes256(_) => "CtrStream(AES-256)",
        })
    }
}

impl CtrStream {
    /// A stream for `key` (16 or 32 bytes) from `iv`.
    ///
    /// # Errors
    /// A key of another length.
    pub fn new(key: &[u8], iv: &[u8; 16]) -> Result<Self, CryptoError> {
        match key.len() {
            16 => Ok(Self::Aes128(Box::new(Ctr128::new(key.into(), iv.into())))),
            32 => Ok(Self::Aes256(Box::new(Ctr256::new(key.into(), iv.into())))),
            n => Err(CryptoError::Length {
                what: "AES key",
                len: n as u64,
            }),
        }
    }

    /// Encrypts or decrypts `data` in place, advancing the stream.
    pub fn apply(&mut self, data: &mut [u8]) {
        match self {
            Self::Aes128(c) => c.apply_keystream(data),
            Self::Aes256(c) => c.apply_keystream(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nist_sp800_38a_f5_1_aes128_ctr() {
        let key = hex::decode("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        let iv: [u8; 16] = hex::decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
            .unwrap()
            .try_into()
            .unwrap();
        let mut data =
            hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
                .unwrap();
        // Split across calls: the stream keeps its position inside a block.
        let mut c = CtrStream::new(&key, &iv).unwrap();
        let (a, b) = data.split_at_mut(7);
        c.apply(a);
        c.apply(b);
        assert_eq!(
            hex::encode(&data),
            "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
        );
    }

    #[test]
    fn counter_carries_across_the_whole_block() {
        // Java's and OpenSSL's CTR increment all 128 bits.
        let key = [7u8; 32];
        let iv = [0xffu8; 16];
        let mut one = CtrStream::new(&key, &iv).unwrap();
        let mut buf = [0u8; 48];
        one.apply(&mut buf);
        let mut two = CtrStream::new(&key, &[0u8; 16]).unwrap();
        let mut second = [0u8; 16];
        two.apply(&mut second);
        assert_eq!(&buf[16..32], &second);
    }

    #[test]
    fn refuses_other_key_lengths() {
        assert!(CtrStream::new(&[0; 24], &[0; 16]).is_err());
    }
}
