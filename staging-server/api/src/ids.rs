//! Typed identifiers and validated owner fields.
//!
//! Everything that arrives from a client and could end up in a key, a query or a log line is
//! parsed into one of these types first. Object keys are built only from [`ResourceId`], which
//! the server generates, never from client-supplied strings.
//!
//! The id types are distinct, so one cannot be passed where another is expected:
//!
//! ```compile_fail
//! use staging_api::ids::{Namespace, ResourceId};
//! fn wants_id(_: ResourceId) {}
//! let ns: Namespace = "spark-jobs".parse().unwrap();
//! wants_id(ns);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// Maximum number of owner labels on one resource.
pub const MAX_LABELS: usize = 64;

/// A field that does not follow its grammar.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid {field}: {reason}")]
pub struct InvalidField {
    /// Which field was rejected.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidField {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

// === impl ResourceId ===

/// Server-generated id of a staged resource (a random v4 UUID, as the fork used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(Uuid);

impl ResourceId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for ResourceId {
    type Err = InvalidField;

    /// Accepts only the canonical lowercase hyphenated form, so one resource has one spelling.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = Uuid::try_parse(s).map_err(|_| InvalidField::new("resource id", "not a UUID"))?;
        if id.hyphenated().to_string() != s {
            return Err(InvalidField::new("resource id", "not in canonical form"));
        }
        Ok(Self(id))
    }
}

// === impl Namespace ===

/// A Kubernetes namespace name (RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Namespace(String);

impl Namespace {
    /// The namespace as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Namespace {
    type Err = InvalidField;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_dns1123_label(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidField::new(
                "namespace",
                "must be a lowercase RFC 1123 label of at most 63 characters",
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A label name or value body: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63.
fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

// === impl Labels ===

/// Kubernetes labels identifying the owner pods (an AND selector), validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Validates every key and value against the Kubernetes label grammar.
    ///
    /// # Errors
    /// [`InvalidField`] naming the first offending key or value.
    pub fn new(map: BTreeMap<String, String>) -> Result<Self, InvalidField> {
        if map.len() > MAX_LABELS {
            return Err(InvalidField::new(
                "labels",
                format!("at most {MAX_LABELS} labels"),
            ));
        }
        for (k, v) in &map {
            let name = match k.split_once('/') {
                Some((prefix, name)) => {
                    if !is_dns1123_subdomain(prefix) {
                        return Err(InvalidField::new(
                            "label key",
                            format!("prefix of {k:?} is not a DNS subdomain"),
                        ));
                    }
                    name
                }
                None => k.as_str(),
            };
            if !is_label_token(name) {
                return Err(InvalidField::new(
                    "label key",
                    format!("{k:?} is not a valid label name"),
                ));
            }
            if !v.is_empty() && !is_label_token(v) {
                return Err(InvalidField::new(
                    "label value",
                    format!("value of {k:?} is not a valid label value"),
                ));
            }
        }
        Ok(Self(map))
    }

    /// Parses a selector of the form `k1=v1,k2=v2` (empty string = no labels).
    ///
    /// # Errors
    /// [`InvalidField`] if a pair lacks `=`, repeats a key, or breaks the grammar.
    pub fn parse_selector(s: &str) -> Result<Self, InvalidField> {
        let mut map = BTreeMap::new();
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| InvalidField::new("labels", format!("{pair:?} is not key=value")))?;
            if map.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(InvalidField::new("labels", format!("key {k:?} repeated")));
            }
        }
        Self::new(map)
    }

    /// The labels as a map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        Self::new(map).map_err(serde::de::Error::custom)
    }
}

// === impl PodUid ===

/// UID of the owner pod (a Kubernetes object UID, which is a UUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PodUid(Uuid);

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for PodUid {
    type Err = InvalidField;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| InvalidField::new("owner pod uid", "not a UUID"))
    }
}

// === impl Sha256Digest ===

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Lowercase hex, as used in ETags and JSON.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Standard base64, as used in RFC 9530 digest fields.
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parses 64 hex digits (either case).
    ///
    /// # Errors
    /// [`InvalidField`] if the text is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, InvalidField> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| InvalidField::new("sha256", "must be 64 hex digits"))?;
        Ok(Self(out))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

// === impl CredentialId ===

/// Who sent a file: the upload credential its unnamed bytes are charged to beside its
/// namespace, so that a credential allowed in many namespaces (a shared upload token, an
/// identity with cluster-wide rights) does not get a fresh allowance for every namespace name
/// it makes up. A 64-bit fingerprint: the database never holds a token or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialId(String);

impl CredentialId {
    /// Uploads without a credential (no upload tokens configured, loopback only).
    pub fn anonymous() -> Self {
        Self("anonymous".into())
    }

    /// An upload token, from the SHA-256 the server keeps of it.
    pub fn upload_token(token_hash: &[u8; 32]) -> Self {
        Self(format!(
            "token:{}",
            fingerprint(&[b"upload-token", token_hash])
        ))
    }

    /// A Kubernetes identity as the API server reviewed it (user name and uid).
    pub fn kube(user: &str, uid: Option<&str>) -> Self {
        let uid = uid.unwrap_or_default();
        Self(format!(
            "kube:{}",
            fingerprint(&[b"kube-user", user.as_bytes(), uid.as_bytes()])
        ))
    }

    /// As stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// One read back from the server's own records (its database, its replicated log), which
    /// only ever hold values made by the constructors above.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first 8 bytes, in hex, of the SHA-256 of `parts` (each length-prefixed).
fn fingerprint(parts: &[&[u8]]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_follow_rfc1123() {
        assert!("spark-jobs".parse::<Namespace>().is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "../etc", "a/b", &"a".repeat(64)] {
            assert!(bad.parse::<Namespace>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn labels_follow_kubernetes_grammar() {
        assert!(Labels::parse_selector("spark-role=driver,app.kubernetes.io/name=x").is_ok());
        assert!(Labels::parse_selector("k=").is_ok());
        for bad in ["k", "k=v,k=w", "-k=v", "k=v v", "bad_prefix!/k=v", "k=../x"] {
            assert!(Labels::parse_selector(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn resource_ids_are_canonical() {
        let id = ResourceId::random();
        assert_eq!(id.to_string().parse::<ResourceId>(), Ok(id));
        assert!(id.to_string().to_uppercase().parse::<ResourceId>().is_err());
        assert!("../../etc/passwd".parse::<ResourceId>().is_err());
    }

    #[test]
    fn credential_ids_tell_credentials_apart_and_hide_them() {
        let a = CredentialId::upload_token(&[1; 32]);
        assert_eq!(a, CredentialId::upload_token(&[1; 32]));
        assert_ne!(a, CredentialId::upload_token(&[2; 32]));
        assert!(!a.as_str().contains(&hex::encode([1u8; 32])[..16]));
        assert_eq!(a.as_str().len(), "token:".len() + 16);
        // The uid is part of the identity; the parts cannot slide into each other.
        assert_ne!(
            CredentialId::kube("ab", Some("c")),
            CredentialId::kube("a", Some("bc"))
        );
        assert_ne!(
            CredentialId::kube("a", None),
            CredentialId::kube("a", Some("u"))
        );
        assert_ne!(
            CredentialId::anonymous(),
            CredentialId::kube("anonymous", None)
        );
    }
}
