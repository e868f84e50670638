//! The HTTP client of the client commands: TLS trust (system roots, or `--ca-file`), failures
//! described by their cause (connection refused, DNS, TLS, timeout) rather than "error sending
//! request", and the commands' one retry policy ([`Backoff`]: one formula, a deadline when the
//! command has one, and [`Backoff::wait`], where every retry loop waits, [`send`]'s included).

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
    build(builder(ca_file, connect_timeout, read_timeout)?)
}

/// [`client`] that follows no redirect: its caller reads a 3xx answer itself (`fetch`, which
/// sends the download token to the server only, never to the host a redirect names).
///
/// # Errors
/// As [`client`].
pub fn client_without_redirects(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
) -> Result<reqwest::Client, ClientError> {
    build(
        builder(ca_file, connect_timeout, read_timeout)?
            .redirect(reqwest::redirect::Policy::none()),
    )
}

fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, ClientError> {
    builder
        .build()
        .map_err(|e| ClientError::new(super::EXIT_FAILURE, format!("HTTP client: {e}")))
}

fn builder(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
) -> Result<reqwest::ClientBuilder, ClientError> {
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
    Ok(builder)
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
    send_with(command, &mut Backoff::new(retries), make).await
}

/// [`send`] drawing on a caller's [`Backoff`], so that a caller that also retries on the
/// answer (5xx, 429) spends one budget for both.
///
/// # Errors
/// As [`send`].
pub async fn send_with(
    command: &str,
    backoff: &mut Backoff,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, ClientError> {
    loop {
        match make().send().await {
            Ok(r) => return Ok(r),
            Err(e) => {
                let why = describe(&e);
                if !(transient(&e) && backoff.wait(command, &why).await) {
                    let tries = if backoff.attempt() > 1 {
                        format!(" (after {} attempts)", backoff.attempt())
                    } else {
                        String::new()
                    };
                    return Err(ClientError::new(
                        super::EXIT_UNAVAILABLE,
                        format!("{why}{tries}"),
                    ));
                }
            }
        }
    }
}

/// Longest pause between two attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// The one retry policy of the client commands: after the first attempt fails, pauses of
/// 1 s, 2 s, 4 s, 8 s, then [`BACKOFF_CAP`], for at most `retries` more attempts, and none
/// that would end past a deadline when one is set.
#[derive(Debug, Clone)]
pub struct Backoff {
    retries: u32,
    /// Attempts made so far, the one under way included.
    attempt: u32,
    deadline: Option<std::time::Instant>,
}

impl Backoff {
    /// A policy allowing `retries` retries, with the first attempt under way.
    #[must_use]
    pub fn new(retries: u32) -> Self {
        Self {
            retries,
            attempt: 1,
            deadline: None,
        }
    }

    /// No retry whose pause would end at or after `deadline`.
    #[must_use]
    pub fn until(mut self, deadline: std::time::Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The pause before the next attempt, counting that attempt, or `None` when no attempt is
    /// left.
    pub fn next_pause(&mut self) -> Option<Duration> {
        if self.attempt > self.retries {
            return None;
        }
        let pause = Duration::from_millis(500u64 << self.attempt.min(5)).min(BACKOFF_CAP);
        if self
            .deadline
            .is_some_and(|d| std::time::Instant::now() + pause >= d)
        {
            return None;
        }
        self.attempt += 1;
        Some(pause)
    }

    /// Attempts made so far, the one under way included.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Waits before the next attempt, having said on standard error that `command` failed
    /// with `why` and when it retries; `false` at once when no attempt is left (the caller then
    /// fails with its own error). Every retry loop of the commands waits here.
    pub async fn wait(&mut self, command: &str, why: &str) -> bool {
        let Some(pause) = self.next_pause() else {
            return false;
        };
        self.announce(command, why, pause);
        tokio::time::sleep(pause).await;
        true
    }

    /// Says on standard error that `command` failed with `why` and retries after `pause`.
    fn announce(&self, command: &str, why: &str, pause: Duration) {
        eprintln!(
            "staging-server {command}: {why}; retrying in {} (attempt {} of {})",
            humantime::format_duration(pause),
            self.attempt,
            self.retries + 1
        );
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::{BACKOFF_CAP, Backoff};
    use std::time::{Duration, Instant};

    #[test]
    fn pauses_double_up_to_the_cap_and_stop_after_the_retries() {
        let mut b = Backoff::new(7);
        let pauses: Vec<u64> = std::iter::from_fn(|| b.next_pause())
            .map(|p| p.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
        assert_eq!(b.attempt(), 8);
        assert!(
            pauses
                .iter()
                .all(|p| Duration::from_millis(*p) <= BACKOFF_CAP)
        );
    }

    #[test]
    fn no_retry_ends_past_the_deadline() {
        let mut b = Backoff::new(5).until(Instant::now() + Duration::from_millis(1500));
        assert_eq!(b.next_pause(), Some(Duration::from_secs(1)));
        assert_eq!(
            b.next_pause(),
            None,
            "a 2 s pause would end past the deadline"
        );
        assert_eq!(Backoff::new(0).next_pause(), None);
    }
}

#[cfg(test)]
mod wait_tests {
    use super::Backoff;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn waits_the_pause_then_refuses_when_no_attempt_is_left() {
        let mut b = Backoff::new(2);
        let start = tokio::time::Instant::now();
        assert!(b.wait("test", "refused").await);
        assert!(b.wait("test", "refused").await);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(!b.wait("test", "refused").await);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(b.attempt(), 3);
    }
}
