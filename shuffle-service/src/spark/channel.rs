//! What a connection's bytes go through after authentication: nothing (plaintext and SASL),
//! or network crypto's cipher, which the client picks and the reader recognises from its
//! first encrypted bytes ([`detect`]). The reader hands the writer its [`Sealer`] through
//! the control queue, behind the handshake's own (plaintext) reply.

use bytes::{Bytes, BytesMut};
use spark_protocol::crypto::auth::SessionSecrets;
use spark_protocol::crypto::detect::{self, Detected};
use spark_protocol::crypto::{Cipher, Opener, Sealer};

/// What the reader asks the writer to do, in order.
pub(crate) enum Out {
    /// Send a frame.
    Frame(Bytes),
    /// Encrypt everything from here on.
    Seal(Sealer),
}

/// The reader's side of the channel.
#[derive(Debug, Default)]
pub(crate) enum Inbound {
    /// No cipher.
    #[default]
    Plain,
    /// Handshake done; the client's first encrypted bytes will tell the cipher.
    Pending(SessionSecrets),
    /// Decrypting.
    Open(Opener),
}

impl Inbound {
    /// Whether bytes from the socket must be decrypted.
    pub(crate) fn encrypted(&self) -> bool {
        !matches!(self, Self::Plain)
    }

    /// Decrypts what `raw` holds into `plain`. Returns the writer's sealer when this call
    /// recognised the client's cipher.
    ///
    /// # Errors
    /// A cipher that cannot be recognised (or is not allowed), or bytes that fail to decrypt.
    pub(crate) fn decrypt(
        &mut self,
        raw: &mut BytesMut,
        plain: &mut BytesMut,
        allowed: &[Cipher],
        max_frame: u64,
    ) -> Result<Option<(Sealer, Cipher, u8)>, String> {
        let max_message = max_message(max_frame);
        let mut sealer = None;
        if let Self::Pending(keys) = self {
            match detect::detect(keys, raw, allowed, max_frame, max_message) {
                Detected::NeedMore => return Ok(None),
                Detected::Unknown => {
                    return Err(format!(
                        "the client's channel cipher is none of {} (spark.network.crypto.cipher)",
                        allowed
                            .iter()
                            .map(|c| c.spark_name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                Detected::Found(cipher, version) => {
                    let (opener, s) = keys
                        .server_channel(cipher, version, max_message)
                        .map_err(|e| e.to_string())?;
                    sealer = Some((s, cipher, version.number()));
                    *self = Self::Open(opener);
                }
            }
        }
        if let Self::Open(o) = self {
            o.open(raw, plain).map_err(|e| e.to_string())?;
        }
        Ok(sealer)
    }
}

/// Largest GCM message a client may send: a largest frame, its headers and tags.
fn max_message(max_frame: u64) -> u64 {
    max_frame + max_frame / 1024 + 4096
}
