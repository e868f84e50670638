//! Spark's network crypto (`spark.network.crypto.enabled=true`, `network-common`'s
//! `crypto/AuthEngine`): an X25519 key exchange whose public keys travel AES-GCM-sealed under
//! a key derived from the application's secret, then one of two channel ciphers over every
//! later byte of the connection.
//!
//! - [`auth`]: the `AuthMessage` (tag `0xFB`), both sides of the exchange and the session
//!   keys of both `spark.network.crypto.authEngineVersion`s;
//! - [`ctr`]: `AES/CTR/NoPadding` (the default), one key stream per direction;
//! - [`gcm`]: `AES/GCM/NoPadding`, Spark's framed streaming AEAD (Tink's
//!   `AesGcmHkdfStreaming` segments behind an 8-byte length);
//! - [`digest`]: SASL's DIGEST-MD5 confidentiality layer (`auth-conf`, RC4), for
//!   `spark.authenticate.enableSaslEncryption=true`;
//! - [`detect`]: which cipher and version a client chose, read from its first encrypted
//!   bytes, so that one service serves applications with any of these settings.
//!
//! Nothing here trusts a length it reads: every decoder is bounded, and a failure is an
//! error for the one connection that sent it.

pub mod auth;
pub mod ctr;
pub mod detect;
pub mod digest;
pub mod gcm;

use bytes::BytesMut;

/// A channel cipher, by Spark's name for it (`spark.network.crypto.cipher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// `AES/CTR/NoPadding`: a key stream, no integrity (Spark's default).
    Ctr,
    /// `AES/GCM/NoPadding`: authenticated segments.
    Gcm,
}

impl Cipher {
    /// Spark's name.
    pub fn spark_name(self) -> &'static str {
        match self {
            Self::Ctr => "AES/CTR/NoPadding",
            Self::Gcm => "AES/GCM/NoPadding",
        }
    }

    /// Parses Spark's name (any case) or the short `ctr` / `gcm`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "aes/ctr/nopadding" | "ctr" => Some(Self::Ctr),
            "aes/gcm/nopadding" | "gcm" => Some(Self::Gcm),
            _ => None,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.spark_name())
    }
}

/// `spark.network.crypto.authEngineVersion`: 1 uses the raw X25519 secret as the session key
/// (AES-256), 2 derives a 16-byte key from it with HKDF (AES-128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineVersion {
    /// Version 1 (Spark's default).
    V1,
    /// Version 2.
    V2,
}

impl EngineVersion {
    /// The number Spark's setting takes.
    pub fn number(self) -> u8 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }
}

/// A failed handshake or a channel that no longer decrypts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A malformed message.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A message sealed with another secret, or altered.
    #[error("authentication failed: {0}")]
    Authentication(&'static str),
    /// A length out of the accepted range.
    #[error("{what} of {len} bytes out of range")]
    Length {
        /// What was measured.
        what: &'static str,
        /// The length read.
        len: u64,
    },
    /// The random source or a primitive failed.
    #[error("crypto primitive failed: {0}")]
    Primitive(&'static str),
}

/// The encrypting half of a channel: every byte this side writes goes through it.
#[derive(Debug)]
pub enum Sealer {
    /// AES-CTR.
    Ctr(ctr::CtrStream),
    /// Spark's AES-GCM messages.
    Gcm(gcm::GcmSealer),
    /// SASL DIGEST-MD5 `auth-conf`.
    Sasl(digest::SaslWrap),
}

impl Sealer {
    /// Appends the ciphertext of `plain` to `out`. With GCM, `plain` becomes one message.
    pub fn seal(&mut self, plain: &[u8], out: &mut BytesMut) {
        match self {
            Self::Ctr(c) => {
                let start = out.len();
                out.extend_from_slice(plain);
                c.apply(&mut out[start..]);
            }
            Self::Gcm(g) => g.seal(plain, out),
            Self::Sasl(w) => w.seal(plain, out),
        }
    }

    /// Ciphertext bytes `plain_len` bytes of plaintext take in one call of [`Self::seal`].
    pub fn sealed_len(&self, plain_len: usize) -> usize {
        match self {
            Self::Ctr(_) => plain_len,
            Self::Gcm(g) => g.sealed_len(plain_len),
            Self::Sasl(w) => w.sealed_len(plain_len),
        }
    }
}

/// The decrypting half of a channel.
#[derive(Debug)]
pub enum Opener {
    /// AES-CTR.
    Ctr(ctr::CtrStream),
    /// Spark's AES-GCM messages.
    Gcm(gcm::GcmOpener),
    /// SASL DIGEST-MD5 `auth-conf`.
    Sasl(digest::SaslUnwrap),
}

impl Opener {
    /// Moves what can be decrypted from `raw` to `out` (as plaintext); keeps an incomplete
    /// GCM segment in `raw` until the rest arrives.
    ///
    /// # Errors
    /// A malformed or forged message: the connection must be closed.
    pub fn open(&mut self, raw: &mut BytesMut, out: &mut BytesMut) -> Result<(), CryptoError> {
        match self {
            Self::Ctr(c) => {
                c.apply(&mut raw[..]);
                out.extend_from_slice(raw);
                raw.clear();
                Ok(())
            }
            Self::Gcm(g) => g.open(raw, out),
            Self::Sasl(u) => u.open(raw, out),
        }
    }
}
