//! Stages local files as a submission (content-addressed files, `POST /api/v1/submissions`):
//! hashes each file, asks the server to commit the submission, sends only the files the server
//! does not hold for the namespace, and asks again. Resubmitting the same files sends no file
//! bytes.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{ClientError, EXIT_AUTH, EXIT_FAILURE, EXIT_UNAVAILABLE, http, server_message};
use staging_api::bodies::{Created, MissingFiles, Submission, SubmissionFile};

/// Rounds of "commit, send what is missing": a file deleted by the server between the rounds
/// (its last submission ended) is sent again, within this bound.
const ROUNDS: usize = 3;

/// One local file and its name in the submission.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Path on this machine.
    pub path: PathBuf,
    /// Name in the destination directory (validated by the caller).
    pub name: String,
}

/// What to stage.
#[derive(Debug, Clone)]
pub struct StageRequest {
    /// Server base URL.
    pub server: String,
    /// Namespace of the job.
    pub namespace: String,
    /// Labels of the owner pods.
    pub labels: BTreeMap<String, String>,
    /// Absolute lifetime.
    pub ttl: Option<String>,
    /// Unused lifetime.
    pub unused_ttl: Option<String>,
    /// Upload credential (a shared upload token or a Kubernetes bearer token).
    pub credential: Option<String>,
    /// The files.
    pub files: Vec<LocalFile>,
    /// Retries of unreachable-server failures per request.
    pub retries: u32,
}

/// The staged submission: the server's answer ([`Created`]) and what was sent for it.
#[derive(Debug, Clone, Serialize)]
pub struct Staged {
    /// Resource id.
    pub id: String,
    /// Download token.
    pub token: String,
    /// Manifest digest.
    pub sha256: String,
    /// Total size of the files.
    pub size: u64,
    /// Expiry.
    pub expires_at: String,
    /// Files whose bytes were sent.
    pub sent_files: usize,
    /// Bytes sent for them.
    pub sent_bytes: u64,
}

/// SHA-256 (hex) and size of a file.
///
/// # Errors
/// I/O errors reading it.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Stages the files.
///
/// # Errors
/// [`ClientError`] with the exit code.
pub async fn stage(client: &reqwest::Client, req: &StageRequest) -> Result<Staged, ClientError> {
    let mut digests = Vec::with_capacity(req.files.len());
    for f in &req.files {
        let path = f.path.clone();
        let (sha, size) = tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .map_err(|e| ClientError::new(EXIT_FAILURE, e.to_string()))?
            .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", f.path.display())))?;
        digests.push((sha, size));
    }
    let base = req.server.trim_end_matches('/').to_owned();
    let submission = Submission {
        namespace: req.namespace.clone(),
        labels: req.labels.clone(),
        owner_pod_uid: None,
        ttl: req.ttl.clone(),
        unused_ttl: req.unused_ttl.clone(),
        files: req
            .files
            .iter()
            .zip(&digests)
            .map(|(f, (sha, _))| SubmissionFile {
                name: f.name.clone(),
                sha256: sha.clone(),
            })
            .collect(),
    };
    let body = serde_json::to_vec(&submission)
        .map_err(|e| ClientError::new(EXIT_FAILURE, e.to_string()))?;
    let mut sent_files = 0;
    let mut sent_bytes = 0;
    for _ in 0..ROUNDS {
        let url = format!("{base}/api/v1/submissions");
        let resp = http::send("submit", req.retries, || {
            with_credential(
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone()),
                req.credential.as_deref(),
            )
        })
        .await?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::new(EXIT_UNAVAILABLE, http::describe(&e)))?;
        match status.as_u16() {
            201 => {
                let created: Created = serde_json::from_str(&text).map_err(|e| {
                    ClientError::new(EXIT_FAILURE, format!("unexpected answer: {e}"))
                })?;
                return Ok(Staged {
                    id: created.id,
                    token: created.token,
                    sha256: created.sha256,
                    size: created.size,
                    expires_at: created.expires_at,
                    sent_files,
                    sent_bytes,
                });
            }
            409 => {
                let missing: MissingFiles = serde_json::from_str(&text).map_err(|e| {
                    ClientError::new(EXIT_FAILURE, format!("unexpected answer: {e}"))
                })?;
                for sha in missing.missing {
                    let Some((file, (_, size))) =
                        req.files.iter().zip(&digests).find(|(_, (d, _))| *d == sha)
                    else {
                        return Err(ClientError::new(
                            EXIT_FAILURE,
                            format!("the server asked for {sha}, which was not submitted"),
                        ));
                    };
                    put_file(client, req, &base, &file.path, &sha, *size).await?;
                    sent_files += 1;
                    sent_bytes += size;
                }
            }
            _ => return Err(answer_error(status, &text)),
        }
    }
    Err(ClientError::new(
        EXIT_UNAVAILABLE,
        format!("the server still missed files after {ROUNDS} rounds; retry"),
    ))
}

fn with_credential(
    b: reqwest::RequestBuilder,
    credential: Option<&str>,
) -> reqwest::RequestBuilder {
    match credential {
        Some(c) => b.bearer_auth(c),
        None => b,
    }
}

/// The error for a non-success answer.
pub(crate) fn answer_error(status: reqwest::StatusCode, body: &str) -> ClientError {
    let code = match status.as_u16() {
        401 | 403 => EXIT_AUTH,
        500..=599 if status.as_u16() != 507 => EXIT_UNAVAILABLE,
        _ => EXIT_FAILURE,
    };
    ClientError::new(
        code,
        format!("server answered {status}: {}", server_message(body)),
    )
}

async fn put_file(
    client: &reqwest::Client,
    req: &StageRequest,
    base: &str,
    path: &std::path::Path,
    sha: &str,
    size: u64,
) -> Result<(), ClientError> {
    // Namespaces are DNS labels: nothing to escape.
    let url = format!("{base}/api/v1/blobs/{sha}?namespace={}", req.namespace);
    let mut backoff = http::Backoff::new(req.retries);
    loop {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", path.display())))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
        let r = with_credential(
            client
                .put(&url)
                .header("content-type", "application/octet-stream")
                .header("content-length", size)
                .body(reqwest::Body::wrap_stream(stream)),
            req.credential.as_deref(),
        )
        .send()
        .await;
        match r {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let why = format!("sending {}: server answered 503", path.display());
                if status.as_u16() == 503 && backoff.wait("submit", &why).await {
                    continue;
                }
                return Err(answer_error(status, &text));
            }
            Err(e) => {
                let why = format!("sending {}: {}", path.display(), http::describe(&e));
                if !(http::transient(&e) && backoff.wait("submit", &why).await) {
                    return Err(ClientError::new(EXIT_UNAVAILABLE, why));
                }
            }
        }
    }
}
