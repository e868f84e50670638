//! `staging-server upload`: bundle local files into one tar.gz while streaming it to the
//! server, and print the resource id and download token (text, JSON, or a Kubernetes Secret
//! manifest holding the token).

use std::collections::HashSet;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use super::{ClientError, EXIT_AUTH, EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE, server_message};
use staging_api::bodies::Created;
use staging_api::names;
use staging_bundle::create::{self as bundle, Input};

/// How to print the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// `id` and `token` lines.
    Text,
    /// The server's JSON answer.
    Json,
    /// A Kubernetes Secret manifest with the id, token and digest.
    Secret,
}

/// Arguments of `upload`.
#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    /// Server base URL, e.g. http://staging.spark.svc:10000.
    #[arg(long, env = "STAGING_SERVER")]
    pub server: String,
    /// Namespace of the owner (the Spark application's namespace).
    #[arg(long, env = "STAGING_NAMESPACE", default_value = "default", value_parser = parse_namespace)]
    pub namespace: String,
    /// Owner label key=value (repeatable), e.g. spark-app-selector=spark-123.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<String>,
    /// UID of the owner pod, when known.
    #[arg(long)]
    pub owner_pod_uid: Option<String>,
    /// Absolute lifetime of the bundle (at most the server's maximum), e.g. 24h.
    #[arg(long, value_parser = super::submit::parse_duration_arg)]
    pub ttl: Option<String>,
    /// Delete the bundle if not downloaded within this time, e.g. 2h.
    #[arg(long, value_parser = super::submit::parse_duration_arg)]
    pub unused_ttl: Option<String>,
    /// PEM CA certificates trusted for the server, beside the system roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Retries of the first contact with an unreachable server.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// File holding the upload token.
    #[arg(long, env = "STAGING_UPLOAD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The upload token itself (prefer --token-file).
    #[arg(long, env = "STAGING_UPLOAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Name of the Secret printed with `--output secret`.
    #[arg(long, default_value = "spark-staged-resources")]
    pub secret_name: String,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Files to bundle (regular files; each is stored under its base name).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Checks `--namespace`.
///
/// # Errors
/// A sentence naming the accepted form.
pub fn parse_namespace(s: &str) -> Result<String, String> {
    s.parse::<staging_api::ids::Namespace>()
        .map(|_| s.to_owned())
        .map_err(|_| {
            "must be a Kubernetes namespace name: lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit (e.g. spark-jobs)".to_owned()
        })
}

/// Checks one `--label`.
///
/// # Errors
/// A sentence naming the accepted form.
pub fn parse_label(s: &str) -> Result<String, String> {
    if !s.contains('=') || s.contains(',') {
        return Err(
            "must be one key=value pair, e.g. spark-role=driver or app.kubernetes.io/name=etl"
                .into(),
        );
    }
    staging_api::ids::Labels::parse_selector(s)
        .map(|_| s.to_owned())
        .map_err(|e| {
            format!(
                "{e}; a label is key=value with Kubernetes label syntax, e.g. spark-role=driver"
            )
        })
}

/// Runs `upload` and returns the exit code.
pub async fn main(args: UploadArgs) -> ExitCode {
    super::exit(run(args).await.map(|out| print!("{out}")), "upload")
}

/// Uploads and returns what to print.
///
/// # Errors
/// [`ClientError`] with the exit code.
pub async fn run(args: UploadArgs) -> Result<String, ClientError> {
    let inputs = inputs(&args.files)?;
    let token = match (&args.token, &args.token_file) {
        (Some(_), Some(_)) => {
            return Err(ClientError::new(
                EXIT_USAGE,
                "give --token or --token-file, not both",
            ));
        }
        (Some(t), None) => Some(t.trim().to_owned()),
        (None, Some(p)) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| ClientError::new(EXIT_USAGE, format!("{}: {e}", p.display())))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let total: u64 = inputs
        .iter()
        .map(|i| std::fs::metadata(&i.path).map_or(0, |m| m.len()))
        .sum();
    let progress = (!args.no_progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} (compressed sent) {bytes_per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });

    let (rx, archiver) = bundle::spawn(inputs);
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let h = Arc::clone(&hasher);
    let bar = progress.clone();
    let stream = tokio_stream_from(rx).map(move |chunk| {
        if let Ok(c) = &chunk {
            h.lock().unwrap_or_else(|p| p.into_inner()).update(c);
            if let Some(b) = &bar {
                b.inc(c.len() as u64);
            }
        }
        chunk
    });

    let mut query = vec![
        ("namespace", args.namespace.clone()),
        ("labels", args.labels.join(",")),
    ];
    if let Some(u) = &args.owner_pod_uid {
        query.push(("owner_pod_uid", u.clone()));
    }
    if let Some(t) = &args.ttl {
        query.push(("ttl", t.clone()));
    }
    if let Some(t) = &args.unused_ttl {
        query.push(("unused_ttl", t.clone()));
    }
    let mut url = url::Url::parse(&format!(
        "{}/api/v1/resources",
        args.server.trim_end_matches('/')
    ))
    .map_err(|e| ClientError::new(EXIT_USAGE, format!("--server: {e}")))?;
    url.query_pairs_mut().extend_pairs(&query);
    let client = super::http::client(
        args.ca_file.as_deref(),
        std::time::Duration::from_secs(10),
        None,
    )?;
    // A first contact, retried: an unreachable server is reported (and waited for) before the
    // bundle is built.
    let ping = format!("{}/api/v0/ping", args.server.trim_end_matches('/'));
    super::http::send("upload", args.retries, || client.get(&ping)).await?;
    let mut req = client
        .post(url.clone())
        .header("content-type", "application/gzip")
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await;
    if let Some(b) = &progress {
        b.finish_and_clear();
    }
    // An archiver failure (unreadable file) surfaces here with its own message.
    if let Ok(Err(e)) = archiver.await
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(ClientError::new(
            EXIT_FAILURE,
            format!("building the bundle: {e}"),
        ));
    }
    let resp = resp.map_err(|e| ClientError::new(EXIT_UNAVAILABLE, super::http::describe(&e)))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| ClientError::new(EXIT_UNAVAILABLE, super::http::describe(&e)))?;
    if !status.is_success() {
        let code = match status.as_u16() {
            401 | 403 => EXIT_AUTH,
            500..=599 if status.as_u16() != 507 => EXIT_UNAVAILABLE,
            _ => EXIT_FAILURE,
        };
        return Err(ClientError::new(
            code,
            format!("server answered {status}: {}", server_message(&body)),
        ));
    }
    let created: Created = serde_json::from_str(&body)
        .map_err(|e| ClientError::new(EXIT_FAILURE, format!("unexpected answer: {e}")))?;
    let local = hex::encode(
        std::mem::take(&mut *hasher.lock().unwrap_or_else(|p| p.into_inner())).finalize(),
    );
    if local != created.sha256 {
        return Err(ClientError::new(
            super::EXIT_INTEGRITY,
            format!(
                "server stored sha256 {} but {local} was sent",
                created.sha256
            ),
        ));
    }
    Ok(match args.output {
        Output::Text => format!(
            "id: {}\ntoken: {}\nsha256: {}\nsize: {}\nexpires_at: {}\n",
            created.id, created.token, created.sha256, created.size, created.expires_at
        ),
        Output::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&created).unwrap_or(body)
        ),
        Output::Secret => secret_manifest(&args.secret_name, &args.namespace, &created),
    })
}

fn secret_manifest(name: &str, namespace: &str, c: &Created) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    {}: {}\n    {}: \"{}\"\ntype: Opaque\nstringData:\n  resource-id: \"{}\"\n  token: \"{}\"\n  sha256: \"{}\"\n",
        staging_api::wire::MANAGED_BY_LABEL,
        staging_api::wire::MANAGED_BY,
        staging_api::wire::RESOURCE_LABEL,
        c.id,
        c.id,
        c.token,
        c.sha256
    )
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Validates the inputs: regular files, valid unique base names.
fn inputs(files: &[PathBuf]) -> Result<Vec<Input>, ClientError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for path in files {
        let meta = std::fs::metadata(path)
            .map_err(|e| ClientError::new(EXIT_USAGE, format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(ClientError::new(
                EXIT_USAGE,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                ClientError::new(
                    EXIT_USAGE,
                    format!("{} has no usable file name", path.display()),
                )
            })?
            .to_owned();
        names::validate(&name).map_err(|e| ClientError::new(EXIT_USAGE, e))?;
        if !seen.insert(name.clone()) {
            return Err(ClientError::new(
                EXIT_USAGE,
                format!("two inputs are named {name}; rename one (the bundle is flat)"),
            ));
        }
        out.push(Input {
            path: path.clone(),
            name,
        });
    }
    Ok(out)
}
