//! Download tokens: JWTs (HS256, pinned) scoped to one resource.
//!
//! Claims: `iss` = `staging-server`, `aud` = `staging-download`, `sub` = resource id, `jti` =
//! random token id (recorded in SQLite for revocation), `iat`, `exp`. Expiry is checked against
//! the injected clock rather than jsonwebtoken's system clock, so that it agrees with the
//! lifecycle logic. `alg` must be HS256: `none` and every other algorithm fail verification.
//!
//! The signing key comes from configuration or is generated on first start and persisted with
//! mode 0600 in the data directory, so tokens survive restarts and replicas can share a key.
//!
//! Keys rotate: beside the one signing key, configuration may name keys that only verify (the
//! previous signing keys, until the tokens they signed have expired). Every token names the key
//! that signed it in its `kid` header: the first 8 bytes of the key's SHA-256, in hex, which
//! identifies the key without revealing it. Verification picks the key by `kid`; a `kid` no
//! configured key has is refused as invalid without trying any key, and a token without `kid` is
//! checked against the signing key alone, as before keys rotated.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::secret;
use staging_api::ids::ResourceId;

/// Token issuer claim.
pub const ISSUER: &str = "staging-server";
/// Audience of download tokens.
pub const DOWNLOAD_AUDIENCE: &str = "staging-download";
/// Length of a generated signing key.
const GENERATED_KEY_BYTES: usize = 32;
/// File name of the generated key in the data directory.
pub const KEY_FILE_NAME: &str = "signing.key";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    jti: String,
    iat: i64,
    exp: i64,
}

/// A verified token's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The resource the token grants.
    pub resource: String,
    /// Token id.
    pub jti: String,
    /// Expiry in seconds since the epoch.
    pub exp: i64,
}

/// Why a token was refused; also the `reason` label of the auth-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, or claims missing or malformed.
    Malformed,
    /// Wrong signature, algorithm, issuer or audience.
    Invalid,
    /// Past its `exp`.
    Expired,
}

impl TokenError {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
        }
    }
}

/// The `kid` of a key: the first 8 bytes of its SHA-256, in hex. It names the key in tokens and
/// logs without revealing it.
pub fn key_id(secret: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(secret)[..8])
}

/// One key that verifies tokens, with its `kid`.
#[derive(Clone)]
struct VerifyingKey {
    kid: String,
    decoding: DecodingKey,
}

/// Issues and verifies download tokens.
#[derive(Clone)]
pub struct TokenKeys {
    /// The signing key's `kid`, set in every token issued.
    kid: String,
    encoding: EncodingKey,
    /// The signing key first, then the keys that only verify; no two with one `kid`.
    verifying: Vec<VerifyingKey>,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .field("verify_only", &self.verify_only_kids())
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys from raw secret bytes: this key signs and verifies.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self::new(secret, &[])
    }

    /// `signing` signs new tokens and verifies; each of `verify_only` only verifies (a previous
    /// signing key, kept until the tokens it signed have expired). A key given twice counts
    /// once.
    pub fn new(signing: &[u8], verify_only: &[Vec<u8>]) -> Self {
        let kid = key_id(signing);
        let mut verifying = vec![VerifyingKey {
            kid: kid.clone(),
            decoding: DecodingKey::from_secret(signing),
        }];
        for key in verify_only {
            let kid = key_id(key);
            if verifying.iter().all(|k| k.kid != kid) {
                verifying.push(VerifyingKey {
                    kid,
                    decoding: DecodingKey::from_secret(key),
                });
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_audience(&[DOWNLOAD_AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        // Checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Self {
            kid,
            encoding: EncodingKey::from_secret(signing),
            verifying,
            validation,
        }
    }

    /// The signing key's `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `kid`s of the keys that only verify.
    pub fn verify_only_kids(&self) -> Vec<&str> {
        self.verifying[1..].iter().map(|k| k.kid.as_str()).collect()
    }

    /// Loads the configured signing key, or the persisted one, or generates and persists a new
    /// one; `verify_only` keys verify beside it. With a configured key, a key persisted in the
    /// data directory (generated before a key was configured) verifies too: the tokens it signed
    /// keep working until the file is deleted.
    ///
    /// # Errors
    /// Secret-file errors, or [`Error::Io`] writing the new key.
    pub fn load_or_generate(
        configured: Option<&[u8]>,
        verify_only: &[Vec<u8>],
        data_dir: &Path,
    ) -> Result<Self> {
        let path = data_dir.join(KEY_FILE_NAME);
        let Some(key) = configured else {
            return Ok(Self::new(&persisted_or_new(&path)?, verify_only));
        };
        let mut verify_only = verify_only.to_vec();
        match persisted(&path) {
            Ok(old) => {
                tracing::info!(
                    path = %path.display(),
                    kid = key_id(&old),
                    "the generated signing key verifies beside the configured one; delete it once its tokens have expired"
                );
                verify_only.push(old);
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            // Never a reason to refuse the start: the configured key does not need it.
            Err(e) => {
                tracing::warn!(path = %path.display(), cause = %e, "the generated signing key is left out");
            }
        }
        Ok(Self::new(key, &verify_only))
    }

    /// Issues a token for `resource` valid until `exp_ms`; returns the token and its id.
    ///
    /// # Panics
    /// Never in practice: HS256 signing of serialisable claims cannot fail.
    pub fn issue(
        &self,
        resource: ResourceId,
        now_ms: UnixMillis,
        exp_ms: UnixMillis,
    ) -> (String, String) {
        let mut jti_bytes = [0u8; 16];
        rand::fill(&mut jti_bytes[..]);
        let jti = hex::encode(jti_bytes);
        let claims = Claims {
            iss: ISSUER.into(),
            aud: DOWNLOAD_AUDIENCE.into(),
            sub: resource.to_string(),
            jti: jti.clone(),
            iat: now_ms / 1000,
            exp: exp_ms.saturating_add(999) / 1000,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail");
        (token, jti)
    }

    /// Verifies signature (with the key its `kid` names), algorithm, issuer, audience and
    /// expiry.
    ///
    /// # Errors
    /// [`TokenError`] saying why the token is refused: a `kid` of no configured key (a key
    /// removed after rotation, or never this server's) is [`TokenError::Invalid`].
    pub fn verify(&self, token: &str, now_ms: UnixMillis) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(refusal)?;
        let key = match header.kid.as_deref() {
            // Only the signing key: a token without kid never tries the others.
            None => &self.verifying[0],
            Some(kid) => self
                .verifying
                .iter()
                .find(|k| k.kid == kid)
                .ok_or(TokenError::Invalid)?,
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation)
            .map_err(refusal)?;
        if data.claims.exp.saturating_mul(1000) <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(Verified {
            resource: data.claims.sub,
            jti: data.claims.jti,
            exp: data.claims.exp,
        })
    }
}

/// The key persisted at `path` (hex).
fn persisted(path: &Path) -> Result<Vec<u8>> {
    let text = secret::read_secret_file(path)?;
    let key = hex::decode(text.trim())
        .map_err(|_| Error::config(format!("{} is not hex", path.display())))?;
    if key.len() < GENERATED_KEY_BYTES {
        return Err(Error::config(format!("{} is too short", path.display())));
    }
    Ok(key)
}

/// The key persisted at `path`, or a new one, persisted there with mode 0600.
fn persisted_or_new(path: &Path) -> Result<Vec<u8>> {
    match persisted(path) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; GENERATED_KEY_BYTES];
            rand::fill(&mut key[..]);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            f.write_all(hex::encode(key).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io(path, e))?;
            tracing::info!(path = %path.display(), "generated a new token signing key");
            Ok(key.to_vec())
        }
        r => r,
    }
}

/// Why jsonwebtoken refused a token.
fn refusal(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidAlgorithmName => TokenError::Malformed,
        _ => TokenError::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn round_trip_and_expiry() {
        let keys = TokenKeys::from_secret(&[7u8; 32]);
        let id = ResourceId::random();
        let (tok, jti) = keys.issue(id, NOW, NOW + 60_000);
        let v = keys.verify(&tok, NOW).unwrap();
        assert_eq!(v.resource, id.to_string());
        assert_eq!(v.jti, jti);
        assert_eq!(keys.verify(&tok, NOW + 61_000), Err(TokenError::Expired));
    }

    #[test]
    fn rejects_other_keys_and_alg_none() {
        let keys = TokenKeys::from_secret(&[7u8; 32]);
        let other = TokenKeys::from_secret(&[8u8; 32]);
        let (tok, _) = other.issue(ResourceId::random(), NOW, NOW + 60_000);
        assert_eq!(keys.verify(&tok, NOW), Err(TokenError::Invalid));

        let (tok, _) = keys.issue(ResourceId::random(), NOW, NOW + 60_000);
        let payload = tok.split('.').nth(1).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!("{}.{payload}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(keys.verify(&none, NOW).is_err());
        assert_eq!(keys.verify("not-a-jwt", NOW), Err(TokenError::Malformed));
    }

    const OLD: [u8; 32] = [1u8; 32];
    const NEW: [u8; 32] = [2u8; 32];

    /// A token for `id` signed by `key`, with `kid` in its header (or none).
    fn signed(key: &[u8], kid: Option<String>, id: ResourceId) -> String {
        let claims = Claims {
            iss: ISSUER.into(),
            aud: DOWNLOAD_AUDIENCE.into(),
            sub: id.to_string(),
            jti: "j".into(),
            iat: NOW / 1000,
            exp: NOW / 1000 + 60,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid;
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn kid_of(token: &str) -> Option<String> {
        jsonwebtoken::decode_header(token).unwrap().kid
    }

    #[test]
    fn tokens_name_their_key_by_a_digest_prefix_never_the_key() {
        let keys = TokenKeys::from_secret(&NEW);
        let (tok, _) = keys.issue(ResourceId::random(), NOW, NOW + 60_000);
        let kid = kid_of(&tok).unwrap();
        assert_eq!(kid, key_id(&NEW));
        assert_eq!(kid, keys.kid());
        assert_eq!(kid.len(), 16);
        assert!(!kid.contains(&hex::encode(NEW)[..16]));
        // Debug shows kids only.
        let printed = format!("{:?}", TokenKeys::new(&NEW, &[OLD.to_vec()]));
        assert!(printed.contains(&key_id(&OLD)), "{printed}");
        assert!(!printed.contains(&hex::encode(OLD)), "{printed}");
    }

    #[test]
    fn after_rotation_the_old_key_verifies_and_the_new_one_signs() {
        let id = ResourceId::random();
        let before = TokenKeys::from_secret(&OLD);
        let (old_tok, _) = before.issue(id, NOW, NOW + 60_000);

        let rotated = TokenKeys::new(&NEW, &[OLD.to_vec()]);
        assert_eq!(rotated.verify_only_kids(), [key_id(&OLD)]);
        assert_eq!(
            rotated.verify(&old_tok, NOW).unwrap().resource,
            id.to_string()
        );
        let (new_tok, _) = rotated.issue(id, NOW, NOW + 60_000);
        assert_eq!(kid_of(&new_tok), Some(key_id(&NEW)));
        assert!(rotated.verify(&new_tok, NOW).is_ok());
        // Expiry still applies to tokens of a verify-only key.
        assert_eq!(
            rotated.verify(&old_tok, NOW + 61_000),
            Err(TokenError::Expired)
        );

        // The old key removed: its tokens are refused, new ones still verify.
        let after = TokenKeys::from_secret(&NEW);
        assert_eq!(after.verify(&old_tok, NOW), Err(TokenError::Invalid));
        assert!(after.verify(&new_tok, NOW).is_ok());
    }

    #[test]
    fn the_kid_picks_the_key_and_an_unknown_kid_is_refused() {
        let id = ResourceId::random();
        let keys = TokenKeys::new(&NEW, &[OLD.to_vec()]);
        // A kid no configured key has.
        let unknown = signed(&NEW, Some("00112233445566ff".into()), id);
        assert_eq!(keys.verify(&unknown, NOW), Err(TokenError::Invalid));
        // The old key's kid over the new key's signature: checked with the old key only.
        let mixed = signed(&NEW, Some(key_id(&OLD)), id);
        assert_eq!(keys.verify(&mixed, NOW), Err(TokenError::Invalid));
        // Without kid: the signing key alone.
        assert!(keys.verify(&signed(&NEW, None, id), NOW).is_ok());
        assert_eq!(
            keys.verify(&signed(&OLD, None, id), NOW),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn configured_keys_come_before_the_generated_one() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_generate(Some(&NEW), &[OLD.to_vec()], dir.path()).unwrap();
        assert_eq!(keys.kid(), key_id(&NEW));
        assert!(!dir.path().join(KEY_FILE_NAME).exists());
        // The generated key signs when none is configured; verify-only keys join it.
        let keys =
            TokenKeys::load_or_generate(None, &[OLD.to_vec(), OLD.to_vec()], dir.path()).unwrap();
        assert_ne!(keys.kid(), key_id(&OLD));
        assert_eq!(keys.verify_only_kids(), [key_id(&OLD)]);
    }

    #[test]
    fn tokens_of_the_generated_key_verify_after_a_key_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let generated = TokenKeys::load_or_generate(None, &[], dir.path()).unwrap();
        let (tok, _) = generated.issue(ResourceId::random(), NOW, NOW + 60_000);
        let configured = TokenKeys::load_or_generate(Some(&NEW), &[], dir.path()).unwrap();
        assert_eq!(configured.kid(), key_id(&NEW));
        assert_eq!(configured.verify_only_kids(), [generated.kid()]);
        assert!(configured.verify(&tok, NOW).is_ok());
        // The file deleted, its tokens are refused.
        std::fs::remove_file(dir.path().join(KEY_FILE_NAME)).unwrap();
        let configured = TokenKeys::load_or_generate(Some(&NEW), &[], dir.path()).unwrap();
        assert_eq!(configured.verify(&tok, NOW), Err(TokenError::Invalid));
        // A file that is not a key does not hold the start.
        std::fs::write(dir.path().join(KEY_FILE_NAME), "not hex").unwrap();
        assert!(TokenKeys::load_or_generate(Some(&NEW), &[], dir.path()).is_ok());
    }

    #[test]
    fn generated_key_persists_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = TokenKeys::load_or_generate(None, &[], dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = TokenKeys::load_or_generate(None, &[], dir.path()).unwrap();
        let (tok, _) = a.issue(ResourceId::random(), NOW, NOW + 1000);
        assert!(b.verify(&tok, NOW).is_ok());
    }
}
