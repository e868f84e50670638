//! Which channel cipher and engine version a client chose. Spark never says: both sides
//! read them from their own configuration, so Spark's JVM service serves only applications
//! configured like itself. The client writes first after the handshake, and its first nine
//! bytes tell:
//!
//! - GCM starts with its message length and a header-length byte that is 24 (16-byte key,
//!   version 2) or 40 (32-byte key, version 1), both in the clear;
//! - CTR starts with a frame (8-byte length, 1-byte type), which decrypts to a plausible
//!   length and a request type under exactly one version's key.
//!
//! A random stream passes either test with a probability below 2⁻⁴⁰, and a GCM guess is
//! then confirmed by the tag of the first segment; anything ambiguous is refused.

use super::auth::SessionSecrets;
use super::ctr::CtrStream;
use super::{Cipher, EngineVersion};

/// Bytes needed to decide.
pub const NEEDED: usize = 9;

/// The outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// Fewer than [`NEEDED`] bytes so far.
    NeedMore,
    /// The client's choice.
    Found(Cipher, EngineVersion),
    /// Neither cipher (or both): close the connection.
    Unknown,
}

/// Frame types a client sends: `ChunkFetchRequest`, `RpcRequest`, `StreamRequest`,
/// `OneWayMessage`, `UploadStream`, `MergedBlockMetaRequest`.
const CLIENT_TYPES: [u8; 6] = [0, 3, 6, 9, 10, 11];

/// Reads the client's choice from its first bytes; only `allowed` ciphers are considered.
/// `max_frame` bounds a frame's length and `max_message` a GCM message's.
pub fn detect(
    secrets: &SessionSecrets,
    first: &[u8],
    allowed: &[Cipher],
    max_frame: u64,
    max_message: u64,
) -> Detected {
    if first.len() < NEEDED {
        return Detected::NeedMore;
    }
    let mut found = Vec::new();
    let len = u64::from_be_bytes(first[..8].try_into().expect("8 bytes"));
    if allowed.contains(&Cipher::Gcm) {
        let version = match first[8] {
            40 => Some(EngineVersion::V1),
            24 => Some(EngineVersion::V2),
            _ => None,
        };
        if let Some(v) = version
            && len >= 8 + u64::from(first[8]) + 16
            && len <= max_message
        {
            found.push((Cipher::Gcm, v));
        }
    }
    if allowed.contains(&Cipher::Ctr) {
        let iv = secrets.client_to_server_iv();
        for v in [EngineVersion::V1, EngineVersion::V2] {
            let Ok(mut c) = CtrStream::new(&secrets.key(v), &iv) else {
                continue;
            };
            let mut head = [0u8; NEEDED];
            head.copy_from_slice(&first[..NEEDED]);
            c.apply(&mut head);
            let frame_len = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
            if (13..=max_frame.saturating_add(8)).contains(&frame_len)
                && CLIENT_TYPES.contains(&head[8])
            {
                found.push((Cipher::Ctr, v));
            }
        }
    }
    match found.as_slice() {
        [(c, v)] => Detected::Found(*c, *v),
        _ => Detected::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut as _, BytesMut};

    use super::*;
    use crate::crypto::auth::{ClientHandshake, respond};

    fn session() -> (SessionSecrets, SessionSecrets) {
        let (client, challenge) = ClientHandshake::start("app", b"secret").unwrap();
        let (response, server) = respond(b"secret", &challenge).unwrap();
        (client.finish(&response).unwrap(), server)
    }

    #[test]
    fn each_choice_is_recognised() {
        let both = [Cipher::Ctr, Cipher::Gcm];
        for cipher in both {
            for v in [EngineVersion::V1, EngineVersion::V2] {
                let (client, server) = session();
                let (_, mut seal) = client.client_channel(cipher, v, 1 << 20).unwrap();
                let mut frame = BytesMut::new();
                frame.put_u64(21);
                frame.put_u8(3);
                frame.put_slice(&[0; 12]);
                let mut wire = BytesMut::new();
                seal.seal(&frame, &mut wire);
                assert_eq!(
                    detect(&server, &wire[..8], &both, 1 << 20, 1 << 20),
                    Detected::NeedMore
                );
                assert_eq!(
                    detect(&server, &wire, &both, 1 << 20, 1 << 20),
                    Detected::Found(cipher, v),
                    "{cipher} v{}",
                    v.number()
                );
                let other = [if cipher == Cipher::Ctr {
                    Cipher::Gcm
                } else {
                    Cipher::Ctr
                }];
                assert_eq!(
                    detect(&server, &wire, &other, 1 << 20, 1 << 20),
                    Detected::Unknown
                );
            }
        }
    }

    #[test]
    fn plaintext_and_noise_are_not_mistaken() {
        let (_, server) = session();
        let both = [Cipher::Ctr, Cipher::Gcm];
        let mut plain = BytesMut::new();
        plain.put_u64(21);
        plain.put_u8(3);
        assert_eq!(
            detect(&server, &plain, &both, 1 << 20, 1 << 20),
            Detected::Unknown
        );
        assert_eq!(
            detect(&server, &[0xff; 9], &both, 1 << 20, 1 << 20),
            Detected::Unknown
        );
    }
}
