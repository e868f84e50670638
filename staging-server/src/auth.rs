//! Credentials on requests: upload bearer tokens (held hashed, compared in constant time) and
//! the parsing of `Authorization` headers.
//!
//! Tokens are never logged. The tracing layer records method, route and status only, and no
//! error message here repeats a presented credential.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

/// How a request presented its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: <token>`, as the fork's clients send it (v0 only).
    Raw,
}

/// Why an upload credential was refused; also the auth-failure metric's reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadAuthError {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`.
    Malformed,
    /// A token that matches none of the configured ones.
    Invalid,
}

impl UploadAuthError {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Invalid => "invalid",
        }
    }
}

/// An `Authorization` header that is present but unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedCredential;

/// Extracts the credential from the `Authorization` header.
///
/// `Bearer` is matched case-insensitively (RFC 9110 §11.1). With `allow_raw`, a value without a
/// scheme is taken whole, for fork clients. Returns `Ok(None)` when the header is absent.
///
/// # Errors
/// [`MalformedCredential`] when a header is present but unusable (not UTF-8, empty, or
/// another scheme).
pub fn credential(
    headers: &HeaderMap,
    allow_raw: bool,
) -> Result<Option<(&str, Scheme)>, MalformedCredential> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| MalformedCredential)?.trim();
    if let Some((scheme, rest)) = value.split_once(' ') {
        if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
            return Ok(Some((rest.trim(), Scheme::Bearer)));
        }
        return Err(MalformedCredential);
    }
    if allow_raw && !value.is_empty() {
        return Ok(Some((value, Scheme::Raw)));
    }
    Err(MalformedCredential)
}

/// The configured upload credentials.
#[derive(Clone)]
pub struct UploadAuth {
    /// SHA-256 of each accepted token; the clear tokens are dropped after start-up.
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for UploadAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadAuth")
            .field("tokens", &self.hashes.len())
            .finish()
    }
}

impl UploadAuth {
    /// Hashes the configured tokens. No tokens means anonymous upload (validated at config
    /// time to be loopback-only unless explicitly allowed).
    pub fn new(tokens: &[String]) -> Self {
        Self {
            hashes: tokens
                .iter()
                .map(|t| service_runtime::token::hash(t))
                .collect(),
        }
    }

    /// Whether uploads need a token.
    pub fn required(&self) -> bool {
        !self.hashes.is_empty()
    }

    /// Checks a request's upload credential.
    ///
    /// Every configured hash is compared, without early exit, so timing reveals neither which
    /// token matched nor how much of it.
    ///
    /// # Errors
    /// [`UploadAuthError`] saying why.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), UploadAuthError> {
        if !self.required() {
            return Ok(());
        }
        let token = match credential(headers, false) {
            Ok(Some((t, _))) => t,
            Ok(None) => return Err(UploadAuthError::Missing),
            Err(MalformedCredential) => return Err(UploadAuthError::Malformed),
        };
        if service_runtime::token::matches_any(token, &self.hashes) {
            Ok(())
        } else {
            Err(UploadAuthError::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn checks_bearer_tokens() {
        let auth = UploadAuth::new(&[
            "a-long-upload-token-1".into(),
            "another-upload-token".into(),
        ]);
        assert_eq!(auth.check(&headers("Bearer another-upload-token")), Ok(()));
        assert_eq!(auth.check(&headers("bearer a-long-upload-token-1")), Ok(()));
        assert_eq!(
            auth.check(&headers("Bearer nope")),
            Err(UploadAuthError::Invalid)
        );
        assert_eq!(
            auth.check(&headers("Basic eA==")),
            Err(UploadAuthError::Malformed)
        );
        assert_eq!(
            auth.check(&headers("another-upload-token")),
            Err(UploadAuthError::Malformed)
        );
        assert_eq!(auth.check(&HeaderMap::new()), Err(UploadAuthError::Missing));
        assert_eq!(UploadAuth::new(&[]).check(&HeaderMap::new()), Ok(()));
    }

    #[test]
    fn raw_credentials_only_where_allowed() {
        assert_eq!(
            credential(&headers("tok"), true),
            Ok(Some(("tok", Scheme::Raw)))
        );
        assert_eq!(credential(&headers("tok"), false), Err(MalformedCredential));
        assert_eq!(
            credential(&headers("Bearer tok"), false),
            Ok(Some(("tok", Scheme::Bearer)))
        );
    }
}
