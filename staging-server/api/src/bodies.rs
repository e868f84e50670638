//! The JSON bodies of the server's routes, defined once: the server serialises its answers and
//! deserialises its requests with these types, and the client commands do the reverse.
//!
//! The shapes are a wire format: field names, `null`s and absent fields are what clients
//! already parse, so a change here is a change of the API. The tests below pin each body's
//! exact JSON.
//!
//! - v1 (`/api/v1/...`): [`Created`] (201 of an upload and of a submission), [`ResourceMetadata`]
//!   with [`FileMeta`], [`BlobReceived`], [`Submission`] with [`SubmissionFile`], [`MissingFiles`]
//!   (409 of a submission), and [`ErrorBody`], which every error answer carries.
//! - v0 (`/api/v0/...`, the shape the fork's Java client speaks): [`V0Owner`] (the
//!   `resourcesOwner` part) and [`V0Response`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{Labels, Namespace};

/// The `code` of a [`MissingFiles`] answer.
pub const MISSING_FILES: &str = "missing_files";

/// The 201 answer to an upload (`POST /api/v1/resources`) and to a submission
/// (`POST /api/v1/submissions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// Resource id.
    pub id: String,
    /// The first download token.
    pub token: String,
    /// SHA-256 (hex) of the bundle, or of a submission's manifest.
    pub sha256: String,
    /// Size in bytes (a submission: the sum of its files).
    pub size: u64,
    /// Namespace of the owner.
    pub namespace: String,
    /// Absolute expiry (RFC 3339).
    pub expires_at: String,
    /// Deleted if not downloaded by then (RFC 3339).
    pub unused_expires_at: String,
    /// Where the content is served (a submission: the prefix of its files).
    pub content_url: String,
}

/// A resource's metadata (`GET /api/v1/resources/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceMetadata {
    /// Resource id.
    pub id: String,
    /// Namespace of the owner.
    pub namespace: String,
    /// Labels of the owner pods.
    pub labels: BTreeMap<String, String>,
    /// The owner pod's uid (`null` when not given).
    pub owner_pod_uid: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 (hex) of the bundle or of the submission's manifest.
    pub sha256: String,
    /// Which API stored it: `v0`, `v1`, or `files` for a submission.
    pub api: String,
    /// Commit time (RFC 3339).
    pub committed_at: String,
    /// First download (RFC 3339), `null` before it.
    pub first_download_at: Option<String>,
    /// Absolute expiry (RFC 3339).
    pub expires_at: String,
    /// Deadline for a first download (RFC 3339), `null` once downloaded.
    pub unused_expires_at: Option<String>,
    /// The files of a submission (absent for a bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileMeta>>,
}

/// One file of a submission, as [`ResourceMetadata`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Name in the destination directory.
    pub name: String,
    /// SHA-256 (hex) of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The answer to a blob upload (`PUT /api/v1/blobs/{sha256}`): 201 with `stored: true` when
/// the bytes were received, 200 with `stored: false` when the namespace held the file already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobReceived {
    /// SHA-256 (hex) of the file.
    pub sha256: String,
    /// Whether this request's bytes were read and stored.
    pub stored: bool,
}

/// A submission (`POST /api/v1/submissions`). Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// Namespace of the owner.
    pub namespace: String,
    /// Labels of the owner pods (absent: none).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The owner pod's uid; left out of the body when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_pod_uid: Option<String>,
    /// Absolute lifetime (humantime, e.g. `24h`); `null`: the server's maximum.
    pub ttl: Option<String>,
    /// Unused lifetime (humantime); `null`: the server's default.
    pub unused_ttl: Option<String>,
    /// The files.
    pub files: Vec<SubmissionFile>,
}

/// One file named by a [`Submission`]. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmissionFile {
    /// Name in the destination directory.
    pub name: String,
    /// SHA-256 (hex) of the content.
    pub sha256: String,
}

/// The 409 answer to a submission naming files the namespace does not hold: send them with
/// `PUT /api/v1/blobs/{sha256}`, then submit again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingFiles {
    /// Always [`MISSING_FILES`].
    pub code: String,
    /// What to do, for people.
    pub message: String,
    /// SHA-256 (hex) of each file to send.
    pub missing: Vec<String>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (`bad_request`, `not_found`, ...).
    // A client also reads a `message` without a code (a proxy's answer, say).
    #[serde(default)]
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// The `resourcesOwner` part of a v0 upload. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct V0Owner {
    /// Namespace of the owner pods.
    pub owner_namespace: Namespace,
    /// Labels selecting the owner pods (absent: none).
    #[serde(default)]
    pub owner_labels: Labels,
    /// Kind of the owner; the server accepts `Pod` only.
    pub owner_type: String,
}

/// The answer to a v0 upload: the resource id and its download token (the fork's "secret").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V0Response {
    /// Resource id.
    pub resource_id: String,
    /// Download token.
    pub resource_secret: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn created() -> Created {
        Created {
            id: "r".into(),
            token: "t".into(),
            sha256: "ab".into(),
            size: 3,
            namespace: "ns".into(),
            expires_at: "2026-01-02T00:00:00Z".into(),
            unused_expires_at: "2026-01-01T00:30:00Z".into(),
            content_url: "/api/v1/resources/r/content".into(),
        }
    }

    #[test]
    fn created_is_eight_named_fields() {
        assert_eq!(
            serde_json::to_string(&created()).unwrap(),
            r#"{"id":"r","token":"t","sha256":"ab","size":3,"namespace":"ns","expires_at":"2026-01-02T00:00:00Z","unused_expires_at":"2026-01-01T00:30:00Z","content_url":"/api/v1/resources/r/content"}"#
        );
        let back: Created =
            serde_json::from_str(&serde_json::to_string(&created()).unwrap()).unwrap();
        assert_eq!(back, created());
    }

    #[test]
    fn metadata_of_a_bundle_has_nulls_and_no_files() {
        let m = ResourceMetadata {
            id: "r".into(),
            namespace: "ns".into(),
            labels: BTreeMap::from([("spark-role".into(), "driver".into())]),
            owner_pod_uid: None,
            size: 3,
            sha256: "ab".into(),
            api: "v1".into(),
            committed_at: "c".into(),
            first_download_at: None,
            expires_at: "e".into(),
            unused_expires_at: Some("u".into()),
            files: None,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"id":"r","namespace":"ns","labels":{"spark-role":"driver"},"owner_pod_uid":null,"size":3,"sha256":"ab","api":"v1","committed_at":"c","first_download_at":null,"expires_at":"e","unused_expires_at":"u"}"#
        );
        let files = ResourceMetadata {
            files: Some(vec![FileMeta {
                name: "a.jar".into(),
                sha256: "cd".into(),
                size: 1,
            }]),
            api: "files".into(),
            ..m
        };
        let v = serde_json::to_value(&files).unwrap();
        assert_eq!(
            v["files"],
            json!([{"name": "a.jar", "sha256": "cd", "size": 1}])
        );
        // What the client reads back is what was sent.
        let back: ResourceMetadata = serde_json::from_value(v).unwrap();
        assert_eq!(back, files);
    }

    #[test]
    fn a_submission_leaves_out_an_unknown_owner_pod_and_refuses_unknown_fields() {
        let s = Submission {
            namespace: "ns".into(),
            labels: BTreeMap::new(),
            owner_pod_uid: None,
            ttl: None,
            unused_ttl: Some("2h".into()),
            files: vec![SubmissionFile {
                name: "a.jar".into(),
                sha256: "ab".into(),
            }],
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"namespace":"ns","labels":{},"ttl":null,"unused_ttl":"2h","files":[{"name":"a.jar","sha256":"ab"}]}"#
        );
        let minimal: Submission =
            serde_json::from_value(json!({"namespace": "ns", "files": []})).unwrap();
        assert!(minimal.labels.is_empty() && minimal.ttl.is_none());
        assert!(
            serde_json::from_value::<Submission>(json!({"namespace": "ns", "files": [], "x": 1}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<Submission>(json!({
                "namespace": "ns", "files": [{"name": "a", "sha256": "ab", "size": 1}]
            }))
            .is_err()
        );
    }

    #[test]
    fn missing_files_blobs_and_errors() {
        let m = MissingFiles {
            code: MISSING_FILES.into(),
            message: "send".into(),
            missing: vec!["ab".into()],
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"code":"missing_files","message":"send","missing":["ab"]}"#
        );
        let b = BlobReceived {
            sha256: "ab".into(),
            stored: true,
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"sha256":"ab","stored":true}"#
        );
        let e = ErrorBody {
            code: "not_found".into(),
            message: "gone".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"not_found","message":"gone"}"#
        );
        let bare: ErrorBody = serde_json::from_str(r#"{"message":"m"}"#).unwrap();
        assert_eq!(bare.message, "m");
    }

    #[test]
    fn v0_bodies_keep_the_forks_camel_case() {
        let owner: V0Owner = serde_json::from_str(
            r#"{"ownerNamespace":"spark","ownerLabels":{"spark-app-selector":"a1"},"ownerType":"Pod"}"#,
        )
        .unwrap();
        assert_eq!(owner.owner_namespace.as_str(), "spark");
        assert_eq!(owner.owner_labels.as_map()["spark-app-selector"], "a1");
        let no_labels: V0Owner =
            serde_json::from_str(r#"{"ownerNamespace":"spark","ownerType":"Pod"}"#).unwrap();
        assert!(no_labels.owner_labels.as_map().is_empty());
        for bad in [
            r#"{"ownerNamespace":"Spark","ownerType":"Pod"}"#,
            r#"{"ownerNamespace":"spark","ownerType":"Pod","extra":1}"#,
            r#"{"ownerNamespace":"spark"}"#,
        ] {
            assert!(serde_json::from_str::<V0Owner>(bad).is_err(), "{bad}");
        }
        let r = V0Response {
            resource_id: "r".into(),
            resource_secret: "s".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"resourceId":"r","resourceSecret":"s"}"#
        );
    }
}
