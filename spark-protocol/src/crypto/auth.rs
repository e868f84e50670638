//! The `AuthEngine` exchange (Spark 4.3.0's `AuthEngine`, `AuthMessage`, `AuthRpcHandler`).
//!
//! ```text
//! client → server  RpcRequest  AuthMessage(appId, salt, AES-GCM(client X25519 public key))
//! server → client  RpcResponse AuthMessage(appId, salt', AES-GCM(server X25519 public key))
//! ```
//! Each public key is sealed with AES-128-GCM (12-byte IV first, tag last) under
//! HKDF-SHA256(ikm = the application's secret, salt, info = aad, 16 bytes), with
//! aad = appId ‖ salt ‖ transcript; the transcript is empty for the challenge and the encoded
//! challenge for the response. Both sides then hold the X25519 shared secret and the
//! transcript of both messages, from which [`SessionSecrets`] derives the channel keys.
//! A wrong secret fails the challenge's tag: the server answers nothing useful and closes.

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use bytes::{BufMut as _, Bytes, BytesMut};

use super::ctr::CtrStream;
use super::gcm::{GcmOpener, GcmSealer};
use super::{Cipher, CryptoError, EngineVersion, Opener, Sealer};
use crate::message::AUTH_ENGINE_TAG;
use crate::wire::{self, DecodeError, Reader};

const KEY_LEN: usize = 16;
const PUBLIC_KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Bytes of a sealed public key: IV, key, tag.
pub const SEALED_KEY_LEN: usize = NONCE_LEN + PUBLIC_KEY_LEN + TAG_LEN;
/// Longest salt accepted (Spark sends 16 bytes).
const MAX_SALT: usize = 64;

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869), as Tink's `Hkdf.computeHkdf("HMACSHA256", ...)`.
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, Len(len))
        .expect("HKDF output of at most 255 hash lengths");
    let mut out = vec![0u8; len];
    okm.fill(&mut out).expect("output length matches");
    out
}

/// One message of the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthMessage {
    /// The application (`spark.app.id`), whose secret seals the key.
    pub app_id: String,
    /// The HKDF salt, sent in the clear.
    pub salt: Bytes,
    /// The sealed X25519 public key.
    pub ciphertext: Bytes,
}

impl AuthMessage {
    /// The encoded message (the RPC body), tag byte first.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(
            1 + wire::string_len(&self.app_id) + 8 + self.salt.len() + self.ciphertext.len(),
        );
        b.put_u8(AUTH_ENGINE_TAG);
        wire::put_string(&mut b, &self.app_id);
        wire::put_byte_array(&mut b, &self.salt);
        wire::put_byte_array(&mut b, &self.ciphertext);
        b.freeze()
    }

    /// Decodes an RPC body that starts with the tag byte.
    ///
    /// # Errors
    /// Another tag, a truncated field, trailing bytes, or a salt or sealed key of an
    /// impossible length.
    pub fn decode(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        if r.u8("auth message tag")? != AUTH_ENGINE_TAG {
            return Err(DecodeError::Invalid("auth message tag"));
        }
        let app_id = r.string("app id")?;
        let salt = r.byte_array("salt")?;
        let ciphertext = r.byte_array("sealed key")?;
        r.finish()?;
        if salt.is_empty() || salt.len() > MAX_SALT {
            return Err(DecodeError::Invalid("salt length"));
        }
        if ciphertext.len() != SEALED_KEY_LEN {
            return Err(DecodeError::Invalid("sealed key length"));
        }
        Ok(Self {
            app_id,
            salt,
            ciphertext,
        })
    }
}

fn aad(app_id: &str, salt: &[u8], transcript: &[u8]) -> Vec<u8> {
    [app_id.as_bytes(), salt, transcript].concat()
}

fn kek(secret: &[u8], salt: &[u8], aad: &[u8]) -> LessSafeKey {
    let k = hkdf_sha256(secret, salt, aad, KEY_LEN);
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &k).expect("16-byte key"))
}

fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CryptoError::Primitive("random"))?;
    Ok(b)
}

fn seal_key(
    secret: &[u8],
    app_id: &str,
    public: &[u8],
    transcript: &[u8],
) -> Result<AuthMessage, CryptoError> {
    let salt = random::<KEY_LEN>()?;
    let aad = aad(app_id, &salt, transcript);
    let key = kek(secret, &salt, &aad);
    let iv = random::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(SEALED_KEY_LEN);
    out.extend_from_slice(&iv);
    out.extend_from_slice(public);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(&aad[..]),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Primitive("AES-GCM seal"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(AuthMessage {
        app_id: app_id.to_owned(),
        salt: Bytes::copy_from_slice(&salt),
        ciphertext: Bytes::from(out),
    })
}

fn open_key(
    secret: &[u8],
    msg: &AuthMessage,
    transcript: &[u8],
) -> Result<[u8; PUBLIC_KEY_LEN], CryptoError> {
    if msg.ciphertext.len() != SEALED_KEY_LEN {
        return Err(CryptoError::Malformed("sealed key"));
    }
    let aad = aad(&msg.app_id, &msg.salt, transcript);
    let key = kek(secret, &msg.salt, &aad);
    let iv: [u8; NONCE_LEN] = msg.ciphertext[..NONCE_LEN].try_into().expect("IV length");
    let mut sealed = msg.ciphertext[NONCE_LEN..].to_vec();
    let public = key
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(&aad[..]),
            &mut sealed,
        )
        .map_err(|_| CryptoError::Authentication("sealed public key (wrong secret?)"))?;
    public
        .try_into()
        .map_err(|_| CryptoError::Malformed("public key"))
}

fn agree(private: EphemeralPrivateKey, peer: &[u8]) -> Result<[u8; 32], CryptoError> {
    agreement::agree_ephemeral(
        private,
        UnparsedPublicKey::new(&X25519, peer),
        CryptoError::Authentication("X25519 agreement"),
        |s| {
            s.try_into()
                .map_err(|_| CryptoError::Primitive("X25519 secret length"))
        },
    )
}

fn ephemeral() -> Result<(EphemeralPrivateKey, Vec<u8>), CryptoError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let private = EphemeralPrivateKey::generate(&X25519, &rng)
        .map_err(|_| CryptoError::Primitive("X25519 key generation"))?;
    let public = private
        .compute_public_key()
        .map_err(|_| CryptoError::Primitive("X25519 public key"))?
        .as_ref()
        .to_vec();
    Ok((private, public))
}

/// What both sides know after the exchange; the channel keys derive from it.
pub struct SessionSecrets {
    shared: [u8; 32],
    transcript: Vec<u8>,
}

impl std::fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecrets(..)")
    }
}

impl SessionSecrets {
    /// The session key of `version`: the raw X25519 secret (32 bytes) for 1,
    /// HKDF(secret, transcript, "derivedKey", 16) for 2.
    pub fn key(&self, version: EngineVersion) -> Vec<u8> {
        match version {
            EngineVersion::V1 => self.shared.to_vec(),
            EngineVersion::V2 => hkdf_sha256(&self.shared, &self.transcript, b"derivedKey", 16),
        }
    }

    /// The CTR IV of the bytes the client sends: HKDF info `outputIv` (Spark's client takes
    /// `serverIv` as its *output* IV and the server the same as its *input* IV).
    pub fn client_to_server_iv(&self) -> [u8; 16] {
        hkdf_sha256(&self.shared, &self.transcript, b"outputIv", 16)
            .try_into()
            .expect("16 bytes")
    }

    /// The CTR IV of the bytes the server sends: HKDF info `inputIv`.
    pub fn server_to_client_iv(&self) -> [u8; 16] {
        hkdf_sha256(&self.shared, &self.transcript, b"inputIv", 16)
            .try_into()
            .expect("16 bytes")
    }

    /// The server's halves of the channel.
    ///
    /// # Errors
    /// None in practice (the key lengths are fixed); kept for the primitives' results.
    pub fn server_channel(
        &self,
        cipher: Cipher,
        version: EngineVersion,
        max_message: u64,
    ) -> Result<(Opener, Sealer), CryptoError> {
        self.channel(cipher, version, max_message, false)
    }

    /// The client's halves of the channel.
    ///
    /// # Errors
    /// As [`Self::server_channel`].
    pub fn client_channel(
        &self,
        cipher: Cipher,
        version: EngineVersion,
        max_message: u64,
    ) -> Result<(Opener, Sealer), CryptoError> {
        self.channel(cipher, version, max_message, true)
    }

    fn channel(
        &self,
        cipher: Cipher,
        version: EngineVersion,
        max_message: u64,
        client: bool,
    ) -> Result<(Opener, Sealer), CryptoError> {
        let key = self.key(version);
        Ok(match cipher {
            Cipher::Ctr => {
                let (up, down) = (self.client_to_server_iv(), self.server_to_client_iv());
                let (input, output) = if client { (down, up) } else { (up, down) };
                (
                    Opener::Ctr(CtrStream::new(&key, &input)?),
                    Sealer::Ctr(CtrStream::new(&key, &output)?),
                )
            }
            Cipher::Gcm => (
                Opener::Gcm(GcmOpener::new(&key, max_message)?),
                Sealer::Gcm(GcmSealer::new(&key)?),
            ),
        })
    }
}

/// The server's answer to a client's challenge, sealed with the application's `secret`.
///
/// # Errors
/// The challenge was not sealed with `secret` (or was altered): authentication failed.
pub fn respond(
    secret: &[u8],
    challenge: &AuthMessage,
) -> Result<(AuthMessage, SessionSecrets), CryptoError> {
    let client_public = open_key(secret, challenge, &[])?;
    let (private, public) = ephemeral()?;
    let challenge_bytes = challenge.to_bytes();
    let response = seal_key(secret, &challenge.app_id, &public, &challenge_bytes)?;
    let shared = agree(private, &client_public)?;
    let mut transcript = challenge_bytes.to_vec();
    transcript.extend_from_slice(&response.to_bytes());
    Ok((response, SessionSecrets { shared, transcript }))
}

/// The client's side: a challenge, then the session from the server's response.
pub struct ClientHandshake {
    secret: Vec<u8>,
    private: EphemeralPrivateKey,
    challenge: AuthMessage,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientHandshake({})", self.challenge.app_id)
    }
}

impl ClientHandshake {
    /// A fresh key pair and the challenge to send.
    ///
    /// # Errors
    /// The random source failed.
    pub fn start(app_id: &str, secret: &[u8]) -> Result<(Self, AuthMessage), CryptoError> {
        let (private, public) = ephemeral()?;
        let challenge = seal_key(secret, app_id, &public, &[])?;
        Ok((
            Self {
                secret: secret.to_vec(),
                private,
                challenge: challenge.clone(),
            },
            challenge,
        ))
    }

    /// Checks the server's response and derives the session.
    ///
    /// # Errors
    /// A response not sealed with the same secret, or for another application.
    pub fn finish(self, response: &AuthMessage) -> Result<SessionSecrets, CryptoError> {
        if response.app_id != self.challenge.app_id {
            return Err(CryptoError::Authentication(
                "response for another application",
            ));
        }
        let challenge_bytes = self.challenge.to_bytes();
        let server_public = open_key(&self.secret, response, &challenge_bytes)?;
        let shared = agree(self.private, &server_public)?;
        let mut transcript = challenge_bytes.to_vec();
        transcript.extend_from_slice(&response.to_bytes());
        Ok(SessionSecrets { shared, transcript })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_auth_message_encoding() {
        // `../shared/reference/spark-ess-protocol.md` §5.3.
        let m = AuthMessage {
            app_id: "app-1".into(),
            salt: Bytes::from_static(&[1, 2]),
            ciphertext: Bytes::from_static(&[3]),
        };
        assert_eq!(
            hex::encode(m.to_bytes()),
            "fb000000056170702d3100000002010200000001 03".replace(' ', "")
        );
    }

    #[test]
    fn rfc5869_test_case_1() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        assert_eq!(
            hex::encode(hkdf_sha256(&ikm, &salt, &info, 42)),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn both_sides_agree_and_a_wrong_secret_fails() {
        let (client, challenge) = ClientHandshake::start("app-1", b"s3cret").unwrap();
        let wire = AuthMessage::decode(challenge.to_bytes()).unwrap();
        let (response, server) = respond(b"s3cret", &wire).unwrap();
        let client = client
            .finish(&AuthMessage::decode(response.to_bytes()).unwrap())
            .unwrap();
        for v in [EngineVersion::V1, EngineVersion::V2] {
            assert_eq!(client.key(v), server.key(v));
        }
        assert_eq!(client.key(EngineVersion::V1).len(), 32);
        assert_eq!(client.key(EngineVersion::V2).len(), 16);
        assert_ne!(client.client_to_server_iv(), client.server_to_client_iv());

        let (_, challenge) = ClientHandshake::start("app-1", b"other").unwrap();
        assert!(matches!(
            respond(b"s3cret", &challenge),
            Err(CryptoError::Authentication(_))
        ));
    }

    #[test]
    fn channels_of_both_sides_fit_together() {
        let (client, challenge) = ClientHandshake::start("a", b"k").unwrap();
        let (response, server) = respond(b"k", &challenge).unwrap();
        let client = client.finish(&response).unwrap();
        for cipher in [Cipher::Ctr, Cipher::Gcm] {
            for v in [EngineVersion::V1, EngineVersion::V2] {
                let (mut c_open, mut c_seal) = client.client_channel(cipher, v, 1 << 20).unwrap();
                let (mut s_open, mut s_seal) = server.server_channel(cipher, v, 1 << 20).unwrap();
                for msg in [&b"request"[..], b"second"] {
                    let mut wire = BytesMut::new();
                    c_seal.seal(msg, &mut wire);
                    assert_ne!(&wire[..], msg);
                    let mut out = BytesMut::new();
                    s_open.open(&mut wire, &mut out).unwrap();
                    assert_eq!(&out[..], msg);
                    let mut wire = BytesMut::new();
                    s_seal.seal(msg, &mut wire);
                    let mut out = BytesMut::new();
                    c_open.open(&mut wire, &mut out).unwrap();
                    assert_eq!(&out[..], msg);
                }
            }
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let ok = ClientHandshake::start("a", b"k").unwrap().1.to_bytes();
        for n in 0..ok.len() {
            assert!(AuthMessage::decode(ok.slice(..n)).is_err());
        }
        let mut long = BytesMut::from(&ok[..]);
        long.put_u8(0);
        assert!(AuthMessage::decode(long.freeze()).is_err());
        let mut other = BytesMut::from(&ok[..]);
        other[0] = 0xEA;
        assert!(AuthMessage::decode(other.freeze()).is_err());
    }
}
