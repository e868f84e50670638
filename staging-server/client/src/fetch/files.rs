//! `fetch` of a submission (a resource of separate files): each file is downloaded with the
//! same retries and resumption as a bundle, checked against the digest the submission names,
//! and moved into the destination under its name. A file already there with the right digest
//! (a restarted init-container) is kept; any other existing file is never overwritten.

use std::path::Path;

use super::{FetchArgs, download};
use crate::{
    ClientError, EXIT_AUTH, EXIT_FAILURE, EXIT_INTEGRITY, EXIT_NOT_FOUND, EXIT_UNAVAILABLE,
    EXIT_UNSAFE_ARCHIVE, server_message,
};
use staging_api::bodies::{FileMeta, ResourceMetadata};
use staging_api::names;

/// The files of the resource, or `None` when it is a bundle.
///
/// # Errors
/// [`ClientError`] with the exit code.
pub(super) async fn listing(
    args: &FetchArgs,
    client: &reqwest::Client,
    token: &str,
    deadline: std::time::Instant,
) -> Result<Option<Vec<FileMeta>>, ClientError> {
    let url = format!(
        "{}/api/v1/resources/{}",
        args.server.trim_end_matches('/'),
        args.id
    );
    // One budget for the failures of the connection and the server's 5xx/408/429 answers.
    let mut backoff = crate::http::Backoff::new(args.retries).until(deadline);
    loop {
        let resp = crate::http::send_with("fetch", &mut backoff, || {
            client.get(&url).bearer_auth(token).timeout(args.timeout)
        })
        .await?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if matches!(status, 408 | 429 | 500..=599)
            && backoff
                .wait("fetch", &format!("server answered {status}"))
                .await
        {
            continue;
        }
        match status {
            200 => {
                let meta: ResourceMetadata = serde_json::from_str(&body).map_err(|e| {
                    ClientError::new(EXIT_FAILURE, format!("unexpected answer: {e}"))
                })?;
                return Ok(meta.files);
            }
            401 | 403 => {
                return Err(ClientError::new(
                    EXIT_AUTH,
                    format!("server answered {status}: {}", server_message(&body)),
                ));
            }
            404 | 410 => {
                return Err(ClientError::new(
                    EXIT_NOT_FOUND,
                    format!("server answered {status}: {}", server_message(&body)),
                ));
            }
            _ => {
                return Err(ClientError::new(
                    if status >= 500 {
                        EXIT_UNAVAILABLE
                    } else {
                        EXIT_FAILURE
                    },
                    format!("server answered {status}: {}", server_message(&body)),
                ));
            }
        }
    }
}

/// Downloads every file into the destination; returns their names.
///
/// # Errors
/// [`ClientError`] with the exit code.
pub(super) async fn fetch(
    args: &FetchArgs,
    client: &reqwest::Client,
    token: &str,
    files: Vec<FileMeta>,
    deadline: std::time::Instant,
) -> Result<Vec<String>, ClientError> {
    if files.len() as u64 > args.max_entries {
        return Err(ClientError::new(
            EXIT_UNSAFE_ARCHIVE,
            format!(
                "{} files exceed --max-entries {}",
                files.len(),
                args.max_entries
            ),
        ));
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    if total > args.max_total_size.0 {
        return Err(ClientError::new(
            EXIT_UNSAFE_ARCHIVE,
            format!(
                "{total} bytes exceed --max-total-size {}",
                args.max_total_size.0
            ),
        ));
    }
    let mut done = Vec::with_capacity(files.len());
    for f in files {
        names::validate(&f.name).map_err(|e| ClientError::new(EXIT_UNSAFE_ARCHIVE, e))?;
        if f.size > args.max_entry_size.0 {
            return Err(ClientError::new(
                EXIT_UNSAFE_ARCHIVE,
                format!("{} ({} bytes) exceeds --max-entry-size", f.name, f.size),
            ));
        }
        let target = args.dest.join(&f.name);
        if already_there(&target, &f.sha256)? {
            done.push(f.name);
            continue;
        }
        let part = tempfile::Builder::new()
            .prefix(".fetch-")
            .suffix(".part")
            .tempfile_in(&args.dest)
            .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", args.dest.display())))?;
        let url = format!(
            "{}/api/v1/resources/{}/files/{}",
            args.server.trim_end_matches('/'),
            args.id,
            f.name
        );
        let (digest, server_digest) =
            download(args, client, &url, token, part.path(), deadline).await?;
        for (what, want) in [
            ("listed", Some(f.sha256.clone())),
            ("server", server_digest),
        ] {
            if let Some(want) = want
                && want != digest
            {
                return Err(ClientError::new(
                    EXIT_INTEGRITY,
                    format!(
                        "{}: downloaded sha256 {digest} does not match the {what} digest {want}",
                        f.name
                    ),
                ));
            }
        }
        set_readable(part.path())?;
        part.persist_noclobber(&target).map_err(|e| {
            ClientError::new(
                EXIT_FAILURE,
                format!(
                    "{}: {} (existing files are never overwritten)",
                    target.display(),
                    e.error
                ),
            )
        })?;
        done.push(f.name);
    }
    // The renames durable too, so that a restarted init-container after a crash finds each
    // file whole or not at all.
    let dest = args.dest.clone();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dest)?.sync_all())
        .await
        .map_err(|e| ClientError::new(EXIT_FAILURE, e.to_string()))?
        .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", args.dest.display())))?;
    super::write_file_list(args, &done)?;
    Ok(done)
}

/// Whether `target` exists with the digest `sha256`; an existing file of other content is an
/// error.
fn already_there(target: &Path, sha256: &str) -> Result<bool, ClientError> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ClientError::new(
            EXIT_FAILURE,
            format!("{}: {e}", target.display()),
        )),
        Ok(m) if m.is_file() => {
            let (have, _) = crate::stage::hash_file(target).map_err(|e| {
                ClientError::new(EXIT_FAILURE, format!("{}: {e}", target.display()))
            })?;
            if have == sha256 {
                Ok(true)
            } else {
                Err(ClientError::new(
                    EXIT_FAILURE,
                    format!(
                        "{} exists with other content; existing files are never overwritten",
                        target.display()
                    ),
                ))
            }
        }
        Ok(_) => Err(ClientError::new(
            EXIT_UNSAFE_ARCHIVE,
            format!("{} exists and is not a regular file", target.display()),
        )),
    }
}

/// Mode 0644, as files unpacked from a bundle.
fn set_readable(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", path.display())))
}
