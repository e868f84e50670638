//! Credentials on requests: upload bearer tokens (held hashed, compared in constant time) and
//! the parsing of `Authorization` headers.
//!
//! An upload token acts for every namespace unless it is limited to named ones: a token file
//! line (or an `--upload-tokens` entry) is `TOKEN [NAMESPACE ...]`, and a token followed by
//! namespaces uploads, submits and deletes in those namespaces only.
//!
//! Tokens are never logged. The tracing layer records method, route and status only, and no
//! error message here repeats a presented credential.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use staging_api::ids::{CredentialId, InvalidField, Namespace};

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
    /// A token limited to other namespaces.
    WrongNamespace,
}

impl UploadAuthError {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Invalid => "invalid",
            Self::WrongNamespace => "wrong_namespace",
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

/// One configured upload token: the secret and, when limited, its namespaces.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadToken {
    /// The token.
    pub secret: String,
    /// The namespaces it may act for; `None`: every namespace.
    pub namespaces: Option<Vec<Namespace>>,
}

impl std::fmt::Debug for UploadToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadToken")
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl From<&str> for UploadToken {
    /// A token for every namespace.
    fn from(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            namespaces: None,
        }
    }
}

impl UploadToken {
    /// Parses `TOKEN [NAMESPACE ...]` (whitespace-separated); `None` for a blank entry.
    ///
    /// # Errors
    /// [`InvalidField`] for a namespace that is not a namespace name.
    pub fn parse(entry: &str) -> Result<Option<Self>, InvalidField> {
        let mut words = entry.split_whitespace();
        let Some(secret) = words.next() else {
            return Ok(None);
        };
        let namespaces = words
            .map(str::parse::<Namespace>)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            secret: secret.to_owned(),
            namespaces: (!namespaces.is_empty()).then_some(namespaces),
        }))
    }
}

/// What a request's upload credential may act for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// No tokens are configured: anonymous upload.
    Anonymous,
    /// A token for every namespace.
    Any,
    /// A token limited to these namespaces.
    Namespaces(&'a [Namespace]),
}

impl Scope<'_> {
    /// Whether the credential may act for `namespace`.
    pub fn allows(&self, namespace: &Namespace) -> bool {
        match self {
            Self::Anonymous | Self::Any => true,
            Self::Namespaces(list) => list.contains(namespace),
        }
    }
}

/// The configured upload credentials.
#[derive(Clone)]
pub struct UploadAuth {
    /// SHA-256 of each accepted token, with its namespaces; the clear tokens are dropped
    /// after start-up.
    tokens: Vec<([u8; 32], Option<Vec<Namespace>>)>,
}

impl std::fmt::Debug for UploadAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadAuth")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl UploadAuth {
    /// Hashes the configured tokens. No tokens means anonymous upload (validated at config
    /// time to be loopback-only unless explicitly allowed).
    pub fn new(tokens: &[UploadToken]) -> Self {
        Self {
            tokens: tokens
                .iter()
                .map(|t| {
                    (
                        service_runtime::token::hash(&t.secret),
                        t.namespaces.clone(),
                    )
                })
                .collect(),
        }
    }

    /// Whether uploads need a token.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks a request's upload credential; what it may act for.
    ///
    /// # Errors
    /// [`UploadAuthError`] saying why.
    pub fn check(&self, headers: &HeaderMap) -> Result<Scope<'_>, UploadAuthError> {
        Ok(self.scope(self.matched(headers)?))
    }

    /// What the configured token `matched` (`None`: anonymous upload) may act for.
    fn scope(&self, matched: Option<usize>) -> Scope<'_> {
        match matched {
            None => Scope::Anonymous,
            Some(i) => match &self.tokens[i].1 {
                None => Scope::Any,
                Some(list) => Scope::Namespaces(list),
            },
        }
    }

    /// Checks a request's upload credential for `namespace`; which credential it is (the
    /// account its unnamed files are charged to beside the namespace).
    ///
    /// # Errors
    /// [`UploadAuthError`] saying why; [`UploadAuthError::WrongNamespace`] for a token
    /// limited to other namespaces.
    pub fn check_for(
        &self,
        headers: &HeaderMap,
        namespace: &Namespace,
    ) -> Result<CredentialId, UploadAuthError> {
        let matched = self.matched(headers)?;
        if !self.scope(matched).allows(namespace) {
            return Err(UploadAuthError::WrongNamespace);
        }
        Ok(self.credential_of(matched))
    }

    /// Which credential a request presents, whatever its namespace (for a v0 upload, whose
    /// namespace may come after its bundle).
    ///
    /// # Errors
    /// [`UploadAuthError`] saying why.
    pub fn credential(&self, headers: &HeaderMap) -> Result<CredentialId, UploadAuthError> {
        Ok(self.credential_of(self.matched(headers)?))
    }

    /// The credential of a matched token (`None`: anonymous).
    fn credential_of(&self, matched: Option<usize>) -> CredentialId {
        match matched {
            None => CredentialId::anonymous(),
            Some(i) => CredentialId::upload_token(&self.tokens[i].0),
        }
    }

    /// The index of the configured token the request presents (`None`: anonymous upload).
    ///
    /// Every configured hash is compared, without early exit, so timing reveals neither which
    /// token matched nor how much of it.
    fn matched(&self, headers: &HeaderMap) -> Result<Option<usize>, UploadAuthError> {
        if !self.required() {
            return Ok(None);
        }
        let token = match credential(headers, false) {
            Ok(Some((t, _))) => t,
            Ok(None) => return Err(UploadAuthError::Missing),
            Err(MalformedCredential) => return Err(UploadAuthError::Malformed),
        };
        let presented = service_runtime::token::hash(token);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, (hash, _)) in self.tokens.iter().enumerate() {
            let hit = hash.ct_eq(&presented);
            found |= hit;
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index.conditional_assign(&i, hit);
        }
        if !bool::from(found) {
            return Err(UploadAuthError::Invalid);
        }
        Ok(Some(index as usize))
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
        assert_eq!(
            auth.check(&headers("Bearer another-upload-token")),
            Ok(Scope::Any)
        );
        assert_eq!(
            auth.check(&headers("bearer a-long-upload-token-1")),
            Ok(Scope::Any)
        );
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
        assert_eq!(
            UploadAuth::new(&[]).check(&HeaderMap::new()),
            Ok(Scope::Anonymous)
        );
    }

    #[test]
    fn limited_tokens_act_for_their_namespaces_only() {
        let limited = UploadToken::parse("team-a-upload-token  team-a team-c")
            .unwrap()
            .unwrap();
        let auth = UploadAuth::new(&["every-namespace-token".into(), limited]);
        let (a, b, c): (Namespace, Namespace, Namespace) = (
            "team-a".parse().unwrap(),
            "team-b".parse().unwrap(),
            "team-c".parse().unwrap(),
        );
        let h = headers("Bearer team-a-upload-token");
        let limited_id = auth.check_for(&h, &a).unwrap();
        // One credential, whatever the namespace it acts for.
        assert_eq!(auth.check_for(&h, &c), Ok(limited_id.clone()));
        assert_eq!(auth.check_for(&h, &b), Err(UploadAuthError::WrongNamespace));
        let shared = headers("Bearer every-namespace-token");
        let shared_id = auth.check_for(&shared, &b).unwrap();
        assert_eq!(auth.check_for(&shared, &a), Ok(shared_id.clone()));
        assert_ne!(shared_id, limited_id);
        assert_eq!(
            UploadAuth::new(&[]).check_for(&HeaderMap::new(), &a),
            Ok(CredentialId::anonymous())
        );
        assert!(UploadToken::parse("tok Team_A").is_err());
        assert_eq!(UploadToken::parse("   ").unwrap(), None);
        assert_eq!(UploadToken::parse("tok").unwrap().unwrap().namespaces, None);
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
