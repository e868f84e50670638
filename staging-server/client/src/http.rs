//! The HTTP client of the client commands: TLS trust (system roots, or `--ca-file`), and
//! failures described by their cause (connection refused, DNS, TLS, timeout) rather than
//! "error sending request".

use std::path::Path;
use std::time::Duration;

use super::{ClientError, EXIT_USAGE};

/// Builds the client: system roots plus the certificates of `ca_file` (PEM), if given.
///
/// # Errors
/// A usage error when the CA file cannot be read or holds no certificate.
pub fn client(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder().connect_timeout(connect_timeout);
    if let Some(t) = read_timeout {
        builder = builder.read_timeout(t);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            ClientError::new(EXIT_USAGE, format!("--ca-file {}: {e}", path.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ClientError::new(EXIT_USAGE, format!("--ca-file {}: {e}", path.display()))
        })?;
        if certs.is_empty() {
            return Err(ClientError::new(
                EXIT_USAGE,
                format!("--ca-file {}: no PEM certificate in it", path.display()),
            ));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| ClientError::new(super::EXIT_FAILURE, format!("HTTP client: {e}")))
}

/// Refuses to send a credential worth more than this server's own (`what`, e.g. the user's
/// Kubernetes token) over plain `http://`, except to this machine (loopback), where nothing
/// crosses a network.
///
/// # Errors
/// A usage error naming the server and the way out (`https://`).
pub fn require_private_transport(server: &str, what: &str) -> Result<(), ClientError> {
    let url = url::Url::parse(server)
        .map_err(|e| ClientError::new(EXIT_USAGE, format!("--server {server}: {e}")))?;
    if url.scheme() != "http" {
        return Ok(());
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if loopback {
        return Ok(());
    }
    Err(ClientError::new(
        EXIT_USAGE,
        format!(
            "refusing to send {what} to {server} over plain http:// (anyone on the way could \
             read and reuse it); use the server's https:// URL (with --ca-file for a private CA), \
             or --allow-plain-http where the network is encrypted by other means"
        ),
    ))
}

/// Whether a failed request may succeed when repeated (the server was not reached, or the
/// connection broke).
#[must_use]
pub fn transient(e: &reqwest::Error) -> bool {
    !is_tls(e) && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
}

fn chain(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        out.push_str(&err.to_string());
        out.push_str(": ");
        cur = err.source();
    }
    out
}

fn io_kind(e: &reqwest::Error) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

fn is_tls(e: &reqwest::Error) -> bool {
    let text = chain(e).to_ascii_lowercase();
    text.contains("certificate") || text.contains("tls") || text.contains("handshake")
}

/// One sentence saying why a request failed.
#[must_use]
pub fn describe(e: &reqwest::Error) -> String {
    let text = chain(e);
    let lower = text.to_ascii_lowercase();
    let host = e
        .url()
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port_or_known_default().unwrap_or(0)
            )
        })
        .unwrap_or_else(|| "the server".into());
    if is_tls(e) {
        let hint = if lower.contains("unknownissuer")
            || lower.contains("unknown issuer")
            || lower.contains("invalid peer certificate")
        {
            " (the server's certificate is not signed by a trusted CA: pass its CA with --ca-file)"
        } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            " (the certificate does not name this host)"
        } else if lower.contains("expired") {
            " (the certificate has expired)"
        } else {
            ""
        };
        return format!(
            "TLS with {host} failed{hint}: {}",
            text.trim_end_matches(": ")
        );
    }
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        return format!("cannot resolve {host} (DNS)");
    }
    match io_kind(e) {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            return format!(
                "connection to {host} refused (is the server running, and the port right?)"
            );
        }
        Some(std::io::ErrorKind::ConnectionReset) => {
            return format!("connection to {host} reset");
        }
        _ => {}
    }
    if e.is_timeout() {
        return format!("{host} did not answer in time");
    }
    if e.is_connect() {
        return format!("cannot connect to {host}: {}", text.trim_end_matches(": "));
    }
    text.trim_end_matches(": ").to_owned()
}

/// Sends the request built by `make` until an answer arrives, retrying transient failures
/// `retries` times with a growing pause and saying so on standard error.
///
/// # Errors
/// [`super::EXIT_UNAVAILABLE`] after the last attempt, or at once for a failure that
/// repeating cannot mend (TLS).
pub async fn send(
    command: &str,
    retries: u32,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, ClientError> {
    let mut attempt = 0u32;
    loop {
        match make().send().await {
            Ok(r) => return Ok(r),
            Err(e) => {
                let why = describe(&e);
                if !transient(&e) || attempt >= retries {
                    let tries = if attempt > 0 {
                        format!(" (after {} attempts)", attempt + 1)
                    } else {
                        String::new()
                    };
                    return Err(ClientError::new(
                        super::EXIT_UNAVAILABLE,
                        format!("{why}{tries}"),
                    ));
                }
                attempt += 1;
                let pause =
                    Duration::from_millis(500u64 << attempt.min(5)).min(Duration::from_secs(10));
                eprintln!(
                    "staging-server {command}: {why}; retrying in {} (attempt {} of {})",
                    humantime::format_duration(pause),
                    attempt + 1,
                    retries + 1
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
}
