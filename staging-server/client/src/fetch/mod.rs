//! `staging-server fetch`: the init-container. Streams a bundle to a temporary file, verifies
//! its sha256, unpacks it safely into the destination and writes the list of files.
//!
//! Network errors, timeouts and 5xx/408/429 answers are retried with exponential backoff,
//! resuming with `Range` + `If-Range` where the server allows; 401/403, 404 and 410 (bytes lost
//! from the store) fail at once with their own exit codes (no five-minute hang as in the fork).
//!
//! A server with presigned downloads on may redirect a download (307) to the object store: the
//! bytes then come from there, never with the token, and are checked against the size and
//! digest of the redirect; whatever goes wrong at the store, the download is asked of the
//! server again with `?redirect=false`.

mod files;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::{
    ClientError, EXIT_AUTH, EXIT_FAILURE, EXIT_INTEGRITY, EXIT_NOT_FOUND, EXIT_UNAVAILABLE,
    EXIT_UNSAFE_ARCHIVE, EXIT_USAGE, server_message,
};
use service_runtime::size::ByteSize;
use staging_bundle::extract::{self, ExtractError, ExtractLimits};

/// Arguments of `fetch`.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Server base URL.
    #[arg(long, env = "STAGING_SERVER")]
    pub server: String,
    /// Resource id.
    #[arg(long, env = "STAGING_RESOURCE_ID")]
    pub id: String,
    /// File holding the download token (a mounted Secret key).
    #[arg(long, env = "STAGING_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Directory to unpack into (must exist; existing files are never overwritten).
    #[arg(long, env = "STAGING_DEST")]
    pub dest: PathBuf,
    /// Where to write the list of extracted files (default: <dest>/.staged-files).
    #[arg(long)]
    pub file_list: Option<PathBuf>,
    /// Expected sha256 (hex); the server's digest is always checked too.
    #[arg(long)]
    pub sha256: Option<String>,
    /// PEM CA certificates trusted for the server, beside the system roots.
    #[arg(long, env = "STAGING_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Use the fork's v0 download route instead of v1.
    #[arg(long)]
    pub v0: bool,
    /// Connection timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Longest wait for data on an open connection.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
    /// Deadline for the whole fetch, retries included.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Attempts after the first one.
    #[arg(long, default_value_t = 6)]
    pub retries: u32,
    /// Cap on archive entries.
    #[arg(long, default_value_t = ExtractLimits::default().max_entries)]
    pub max_entries: u64,
    /// Cap on one file's size.
    #[arg(long, default_value = "2GiB")]
    pub max_entry_size: ByteSize,
    /// Cap on the total unpacked size.
    #[arg(long, default_value = "8GiB")]
    pub max_total_size: ByteSize,
    /// Cap on the decompression ratio.
    #[arg(long, default_value_t = ExtractLimits::default().max_ratio)]
    pub max_ratio: u64,
}

/// Runs `fetch` and returns the exit code.
pub async fn main(args: FetchArgs) -> ExitCode {
    crate::exit(
        run(args).await.map(|files| {
            for f in files {
                println!("{f}");
            }
        }),
        "fetch",
    )
}

/// Fetches and unpacks; returns the extracted file names.
///
/// # Errors
/// [`ClientError`] with the exit code.
pub async fn run(args: FetchArgs) -> Result<Vec<String>, ClientError> {
    // `--timeout` bounds the whole fetch: the listing and every file's download, retries
    // included.
    let deadline = Instant::now() + args.timeout;
    let token = std::fs::read_to_string(&args.token_file)
        .map_err(|e| ClientError::new(EXIT_USAGE, format!("{}: {e}", args.token_file.display())))?
        .trim()
        .to_owned();
    match std::fs::metadata(&args.dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ClientError::new(
                EXIT_USAGE,
                format!("--dest {} is not a directory", args.dest.display()),
            ));
        }
        Err(e) => {
            return Err(ClientError::new(
                EXIT_USAGE,
                format!(
                    "--dest {}: {e} (the destination directory must exist)",
                    args.dest.display()
                ),
            ));
        }
    }
    // One client, so one connection carries the listing and every file in turn.
    let client = http_client(&args)?;
    if !args.v0
        && let Some(files) = files::listing(&args, &client, &token, deadline).await?
    {
        return files::fetch(&args, &client, &token, files, deadline).await;
    }
    let expected = args
        .sha256
        .as_deref()
        .map(|h| staging_api::ids::Sha256Digest::from_hex(h).map(|d| d.to_hex()))
        .transpose()
        .map_err(|e| ClientError::new(EXIT_USAGE, e.to_string()))?;
    let archive = tempfile::Builder::new()
        .prefix(".fetch-")
        .suffix(".part")
        .tempfile_in(&args.dest)
        .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", args.dest.display())))?;
    let (digest, server_digest) = download(
        &args,
        &client,
        &bundle_url(&args),
        &token,
        archive.path(),
        deadline,
    )
    .await?;
    for (what, want) in [("server", server_digest), ("expected", expected)] {
        if let Some(want) = want
            && want != digest
        {
            return Err(ClientError::new(
                EXIT_INTEGRITY,
                format!("downloaded sha256 {digest} does not match the {what} digest {want}"),
            ));
        }
    }
    let limits = ExtractLimits {
        max_entries: args.max_entries,
        max_entry_bytes: args.max_entry_size.0,
        max_total_bytes: args.max_total_size.0,
        max_ratio: args.max_ratio,
    };
    let path = archive.path().to_owned();
    let dest = args.dest.clone();
    let names = tokio::task::spawn_blocking(move || extract::extract(&path, &dest, limits))
        .await
        .map_err(|e| ClientError::new(EXIT_FAILURE, e.to_string()))?
        .map_err(|e| match e {
            ExtractError::Unsafe(_) | ExtractError::Corrupt(_) => {
                ClientError::new(EXIT_UNSAFE_ARCHIVE, e.to_string())
            }
            other => ClientError::new(EXIT_FAILURE, other.to_string()),
        })?;
    drop(archive);
    write_file_list(&args, &names)?;
    Ok(names)
}

/// Writes the paths of the fetched files to `--file-list` (default `<dest>/.staged-files`).
///
/// # Errors
/// The list cannot be written.
pub(super) fn write_file_list(args: &FetchArgs, names: &[String]) -> Result<(), ClientError> {
    let list = args
        .file_list
        .clone()
        .unwrap_or_else(|| args.dest.join(".staged-files"));
    let text: String = names
        .iter()
        .map(|n| format!("{}\n", args.dest.join(n).display()))
        .collect();
    std::fs::write(&list, text)
        .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", list.display())))
}

/// The bundle's URL.
fn bundle_url(args: &FetchArgs) -> String {
    let base = args.server.trim_end_matches('/');
    if args.v0 {
        format!("{base}/api/v0/resources/{}", args.id)
    } else {
        format!("{base}/api/v1/resources/{}/content", args.id)
    }
}

/// The HTTP client of `fetch`. It follows no redirect by itself: a download redirected to the
/// object store is fetched by [`from_store`], without the token.
fn http_client(args: &FetchArgs) -> Result<reqwest::Client, ClientError> {
    crate::http::client_without_redirects(
        args.ca_file.as_deref(),
        args.connect_timeout,
        Some(args.read_timeout),
    )
}

/// What a download has received so far.
struct Progress {
    hasher: Sha256,
    offset: u64,
    /// The server's validator, for resuming with `If-Range`.
    etag: Option<String>,
    /// The server's digest (hex), from `Repr-Digest`.
    server_digest: Option<String>,
}

impl Progress {
    fn new() -> Self {
        Self {
            hasher: Sha256::new(),
            offset: 0,
            etag: None,
            server_digest: None,
        }
    }

    /// Empties the file and forgets what was received: the next bytes are the whole body.
    fn restart(&mut self, file: &mut std::fs::File) -> Result<(), ClientError> {
        use std::io::Seek as _;
        file.set_len(0)
            .and_then(|()| file.rewind().map(|_| ()))
            .map_err(|e| ClientError::new(EXIT_FAILURE, e.to_string()))?;
        *self = Self::new();
        Ok(())
    }
}

/// Downloads `url` into `path` with retries, none past `deadline`; returns the local digest and
/// the server's digest.
///
/// The server may answer a download with a redirect to a presigned URL of the object store:
/// the bytes are then fetched from there (without the token, which is the server's) and checked
/// against the size and digest the redirect carries. If the store fails in any way (an error
/// answer, a connection that fails or breaks, other bytes), the same download is asked of the
/// server again with the redirect refused, at once and with the retries left.
pub(super) async fn download(
    args: &FetchArgs,
    client: &reqwest::Client,
    url: &str,
    token: &str,
    path: &Path,
    deadline: Instant,
) -> Result<(String, Option<String>), ClientError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", path.display())))?;
    let mut progress = Progress::new();
    let mut url = url.to_owned();
    let mut redirects = true;
    let mut backoff = crate::http::Backoff::new(args.retries).until(deadline);
    loop {
        let failure = match attempt_once(client, &url, token, &mut file, &mut progress, deadline)
            .await
        {
            Ok(()) => break,
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(why)) => why,
            Err(Attempt::Redirected(to)) if redirects => {
                let refused = match to {
                    Ok(to) => {
                        match from_store(client, &to, &mut file, &mut progress, deadline).await {
                            Ok(()) => break,
                            Err(Interrupted::Local(e)) => return Err(e),
                            Err(Interrupted::Transfer(why)) => why,
                        }
                    }
                    Err(why) => why,
                };
                eprintln!(
                    "staging-server fetch: {refused}; downloading through the server instead"
                );
                progress.restart(&mut file)?;
                url = without_redirect(&url)?;
                redirects = false;
                continue;
            }
            Err(Attempt::Redirected(_)) => {
                return Err(ClientError::new(
                    EXIT_FAILURE,
                    "the server redirected a download that asked to be served directly",
                ));
            }
        };
        if !backoff.wait("fetch", &failure).await {
            return Err(ClientError::new(
                EXIT_UNAVAILABLE,
                format!("giving up after {} attempts: {failure}", backoff.attempt()),
            ));
        }
    }
    Ok((
        hex::encode(progress.hasher.finalize()),
        progress.server_digest,
    ))
}

/// `url` asking the server for the bytes themselves, never a redirect to the store.
fn without_redirect(url: &str) -> Result<String, ClientError> {
    let mut u = reqwest::Url::parse(url)
        .map_err(|e| ClientError::new(EXIT_USAGE, format!("--server: {e}")))?;
    u.query_pairs_mut()
        .append_pair(staging_api::wire::REDIRECT_PARAM, "false");
    Ok(u.into())
}

/// A download the server redirected to the object store.
#[derive(Debug)]
struct Redirect {
    /// The presigned URL.
    location: reqwest::Url,
    /// The object's size, from the redirect.
    size: u64,
    /// The object's digest (hex), from the redirect's `Repr-Digest`.
    sha256: String,
    /// The server's validator.
    etag: Option<String>,
}

enum Attempt {
    Retry(String),
    Fatal(ClientError),
    /// The server answered 307: the bytes are at the store (or, `Err`, the redirect was not
    /// one to follow, for this reason).
    Redirected(Result<Redirect, String>),
}

async fn attempt_once(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    file: &mut std::fs::File,
    progress: &mut Progress,
    deadline: Instant,
) -> Result<(), Attempt> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut req = client.get(url).bearer_auth(token).timeout(remaining);
    if progress.offset > 0
        && let Some(tag) = progress.etag.as_deref()
    {
        req = req
            .header("range", format!("bytes={}-", progress.offset))
            .header("if-range", tag);
    }
    let resp = req.send().await.map_err(request_failure)?;
    let status = resp.status().as_u16();
    match status {
        200 => {
            // A full body: start over (first attempt, or the server ignored the range).
            progress.restart(file).map_err(Attempt::Fatal)?;
            progress.etag = header(&resp, "etag");
            progress.server_digest =
                header(&resp, "repr-digest").and_then(|d| parse_repr_digest(&d));
        }
        206 if progress.offset > 0 => {}
        307 => return Err(Attempt::Redirected(redirect(url, &resp))),
        401 | 403 | 404 | 410 => {
            let body = resp.text().await.unwrap_or_default();
            // 410: the resource is known but its bytes are lost; retrying cannot help.
            let code = if status == 404 || status == 410 {
                EXIT_NOT_FOUND
            } else {
                EXIT_AUTH
            };
            return Err(Attempt::Fatal(ClientError::new(
                code,
                format!("server answered {status}: {}", server_message(&body)),
            )));
        }
        408 | 429 | 500..=599 => return Err(Attempt::Retry(format!("server answered {status}"))),
        _ => {
            let body = resp.text().await.unwrap_or_default();
            return Err(Attempt::Fatal(ClientError::new(
                EXIT_FAILURE,
                format!("server answered {status}: {}", server_message(&body)),
            )));
        }
    }
    Ok(receive(resp, file, progress, None).await?)
}

/// Why a transfer stopped.
enum Interrupted {
    /// The other side did not deliver (a broken connection; from the store, any failure):
    /// another attempt may.
    Transfer(String),
    /// The download cannot be written here: no attempt would help.
    Local(ClientError),
}

impl From<Interrupted> for Attempt {
    fn from(i: Interrupted) -> Self {
        match i {
            Interrupted::Transfer(why) => Self::Retry(why),
            Interrupted::Local(e) => Self::Fatal(e),
        }
    }
}

/// The store's part of a redirected download: a plain GET of the presigned URL, with no
/// credential of the server's, whose bytes must have the size and digest the redirect named.
async fn from_store(
    client: &reqwest::Client,
    to: &Redirect,
    file: &mut std::fs::File,
    progress: &mut Progress,
    deadline: Instant,
) -> Result<(), Interrupted> {
    progress.restart(file).map_err(Interrupted::Local)?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    // No bearer token, no header of the server's request: the URL alone grants the object.
    let resp = client
        .get(to.location.clone())
        .timeout(remaining)
        .send()
        .await
        .map_err(|e| {
            Interrupted::Transfer(format!(
                "the object store failed ({})",
                crate::http::describe(&e)
            ))
        })?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(Interrupted::Transfer(format!(
            "the object store answered {}",
            resp.status().as_u16()
        )));
    }
    receive(resp, file, progress, Some(to.size))
        .await
        .map_err(|e| match e {
            Interrupted::Transfer(why) => {
                Interrupted::Transfer(format!("the object store failed ({why})"))
            }
            local => local,
        })?;
    let digest = hex::encode(progress.hasher.clone().finalize());
    if progress.offset != to.size || digest != to.sha256 {
        return Err(Interrupted::Transfer(format!(
            "the object store sent {} bytes of sha256 {digest}, not the {} bytes of sha256 {} the server named",
            progress.offset, to.size, to.sha256
        )));
    }
    progress.etag.clone_from(&to.etag);
    progress.server_digest = Some(to.sha256.clone());
    Ok(())
}

/// The store download a 307 answer names, or why it names none to follow.
fn redirect(url: &str, resp: &reqwest::Response) -> Result<Redirect, String> {
    let location = header(resp, "location")
        .ok_or_else(|| "the server's redirect has no Location".to_owned())?;
    // A relative Location is resolved against the request's URL, as RFC 9110 says.
    let location = reqwest::Url::parse(url)
        .and_then(|base| base.join(&location))
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| "the server's redirect names no http(s) URL".to_owned())?;
    let sha256 = header(resp, "repr-digest")
        .and_then(|d| parse_repr_digest(&d))
        .ok_or_else(|| "the server's redirect carries no sha-256 Repr-Digest".to_owned())?;
    let size = header(resp, staging_api::wire::OBJECT_SIZE_HEADER)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| "the server's redirect carries no object size".to_owned())?;
    Ok(Redirect {
        location,
        size,
        sha256,
        etag: header(resp, "etag"),
    })
}

fn request_failure(e: reqwest::Error) -> Attempt {
    if crate::http::transient(&e) {
        Attempt::Retry(crate::http::describe(&e))
    } else {
        Attempt::Fatal(ClientError::new(
            EXIT_UNAVAILABLE,
            crate::http::describe(&e),
        ))
    }
}

/// Bytes gathered before they are written: one write off the runtime's threads per this much.
const WRITE_BATCH: usize = 1 << 20;

/// Appends the body to the file and the digest, then makes the file durable. The writes and
/// the fsync run off the runtime's threads, in batches of [`WRITE_BATCH`] bytes, so a
/// process running many fetches at once (or a slow disk) never stalls the others' transfers.
/// A body that runs past `limit` bytes in all (the size a redirect named) is cut off there:
/// whatever the store sends, no more than that reaches the disk.
async fn receive(
    resp: reqwest::Response,
    file: &std::fs::File,
    progress: &mut Progress,
    limit: Option<u64>,
) -> Result<(), Interrupted> {
    let mut body = resp.bytes_stream();
    let mut batch = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // What arrived before the break is written, so a resumption asks for the rest.
                write_batch(file, batch, false).await?;
                return Err(Interrupted::Transfer(crate::http::describe(&e)));
            }
        };
        if let Some(limit) = limit
            && progress.offset + chunk.len() as u64 > limit
        {
            return Err(Interrupted::Transfer(format!(
                "more than the {limit} bytes the server named"
            )));
        }
        progress.hasher.update(&chunk);
        progress.offset += chunk.len() as u64;
        batch.extend_from_slice(&chunk);
        if batch.len() >= WRITE_BATCH {
            batch = write_batch(file, batch, false).await?;
        }
    }
    write_batch(file, batch, true).await.map(drop)
}

/// Writes `batch` at the file's offset on a blocking thread (and, with `sync`, flushes the
/// file to disk); gives the buffer back, emptied.
async fn write_batch(
    file: &std::fs::File,
    mut batch: Vec<u8>,
    sync: bool,
) -> Result<Vec<u8>, Interrupted> {
    let written = |e: std::io::Error| {
        Interrupted::Local(ClientError::new(
            EXIT_FAILURE,
            format!("writing the download: {e}"),
        ))
    };
    // A second handle on the same open file: it shares the offset, and moves to the thread.
    let mut f = file.try_clone().map_err(written)?;
    tokio::task::spawn_blocking(move || {
        f.write_all(&batch)?;
        if sync {
            f.sync_all()?;
        }
        batch.clear();
        Ok(batch)
    })
    .await
    .map_err(|e| Interrupted::Local(ClientError::new(EXIT_FAILURE, e.to_string())))?
    .map_err(written)
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The hex sha-256 of an RFC 9530 `Repr-Digest: sha-256=:<base64>:` value.
fn parse_repr_digest(v: &str) -> Option<String> {
    use base64::Engine as _;
    v.split(',').find_map(|m| {
        let (alg, val) = m.trim().split_once('=')?;
        if !alg.eq_ignore_ascii_case("sha-256") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(val.trim().trim_matches(':'))
            .ok()?;
        (raw.len() == 32).then(|| hex::encode(raw))
    })
}
