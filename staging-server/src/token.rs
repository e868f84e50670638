//! Download tokens: JWTs (HS256, pinned) scoped to one resource.
//!
//! Claims: `iss` = `staging-server`, `aud` = `staging-download`, `sub` = resource id, `jti` =
//! random token id (recorded in SQLite for revocation), `iat`, `exp`. Expiry is checked against
//! the injected clock rather than jsonwebtoken's system clock, so that it agrees with the
//! lifecycle logic. `alg` must be HS256: `none` and every other algorithm fail verification.
//!
//! The signing key comes from configuration or is generated on first start and persisted with
//! mode 0600 in the data directory, so tokens survive restarts and replicas can share a key.

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

/// Issues and verifies download tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    kid: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Keys from raw secret bytes.
    pub fn from_secret(secret: &[u8]) -> Self {
        use sha2::Digest as _;
        let kid = hex::encode(&sha2::Sha256::digest(secret)[..8]);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_audience(&[DOWNLOAD_AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        // Checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            kid,
        }
    }

    /// Loads the configured key, or the persisted one, or generates and persists a new one.
    ///
    /// # Errors
    /// Secret-file errors, or [`Error::Io`] writing the new key.
    pub fn load_or_generate(configured: Option<&[u8]>, data_dir: &Path) -> Result<Self> {
        if let Some(key) = configured {
            return Ok(Self::from_secret(key));
        }
        let path = data_dir.join(KEY_FILE_NAME);
        match secret::read_secret_file(&path) {
            Ok(text) => {
                let key = hex::decode(text.trim())
                    .map_err(|_| Error::config(format!("{} is not hex", path.display())))?;
                if key.len() < GENERATED_KEY_BYTES {
                    return Err(Error::config(format!("{} is too short", path.display())));
                }
                Ok(Self::from_secret(&key))
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; GENERATED_KEY_BYTES];
                rand::fill(&mut key[..]);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?;
                f.write_all(hex::encode(key).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Error::io(&path, e))?;
                tracing::info!(path = %path.display(), "generated a new token signing key");
                Ok(Self::from_secret(&key))
            }
            Err(e) => Err(e),
        }
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

    /// Verifies signature, algorithm, issuer, audience and expiry.
    ///
    /// # Errors
    /// [`TokenError`] saying why the token is refused.
    pub fn verify(&self, token: &str, now_ms: UnixMillis) -> Result<Verified, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_)
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_)
                | ErrorKind::InvalidAlgorithmName => TokenError::Malformed,
                _ => TokenError::Invalid,
            })?;
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

    #[test]
    fn generated_key_persists_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = TokenKeys::load_or_generate(None, dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = TokenKeys::load_or_generate(None, dir.path()).unwrap();
        let (tok, _) = a.issue(ResourceId::random(), NOW, NOW + 1000);
        assert!(b.verify(&tok, NOW).is_ok());
    }
}
