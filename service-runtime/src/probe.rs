//! Kubernetes probes over a Unix socket.
//!
//! A service serves its health routes on a socket in its container's own filesystem, and its
//! `probe` command, run by an exec probe, asks that socket. No other pod can reach the socket,
//! so the probes keep answering whatever the TCP listeners are sent: with `hostNetwork`, every
//! pod of a node shares the kubelet's address, and a tenant holding the connections a TCP
//! listener allows one address would otherwise make the kubelet restart the service.
//!
//! Limits: [`MAX_CONNECTIONS`] at once (more are closed at once), [`CONNECTION_TIMEOUT`] for
//! a connection's whole life, one request per connection, answers read up to
//! [`MAX_ANSWER`] bytes by the client.

use std::convert::Infallible;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Probe connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 8;
/// A probe connection's whole life, request and answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer the client reads.
pub const MAX_ANSWER: u64 = 64 << 10;

/// The probes' socket, bound.
#[derive(Debug)]
pub struct ProbeSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ProbeSocket {
    /// Binds `path` (mode 0600). A socket left there by an earlier process is replaced;
    /// anything else at the path is refused.
    ///
    /// # Errors
    /// The path holds something other than a socket, or binding fails.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves `service` (HTTP/1.1, one request per connection) until `stop` is cancelled,
    /// then waits for the connections in progress and removes the socket.
    pub async fn serve<S, B>(self, service: S, stop: CancellationToken)
    where
        S: tower::Service<
                http::Request<Incoming>,
                Response = http::Response<B>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let tracker = TaskTracker::new();
        loop {
            let sock = tokio::select! {
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        tracing::warn!(error = %e, "probe socket: accept failed");
                        // Out of descriptors and the like: let them come back.
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        }
                    }
                },
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tracker.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(CONNECTION_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(sock), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The path is not an absolute request path of visible ASCII.
    #[error("probe path {0:?} must start with '/' and hold visible ASCII only")]
    Path(String),
    /// The socket could not be reached or the exchange failed.
    #[error("probe socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The answer was not HTTP.
    #[error("probe socket {0}: the answer is not HTTP")]
    NotHttp(PathBuf),
    /// The service answered with a status other than 200.
    #[error("{status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The answer's body.
        body: String,
    },
}

/// Asks the service behind `socket` for `path` (`/healthz`, `/readyz`) within `timeout`, and
/// returns the body of a 200 answer.
///
/// # Errors
/// See [`ProbeError`].
pub fn probe(socket: &Path, path: &str, timeout: Duration) -> Result<String, ProbeError> {
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProbeError::Path(path.to_owned()));
    }
    let io_err = |source| ProbeError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut conn = std::os::unix::net::UnixStream::connect(socket).map_err(io_err)?;
    conn.set_read_timeout(Some(timeout)).map_err(io_err)?;
    conn.set_write_timeout(Some(timeout)).map_err(io_err)?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(io_err)?;
    let mut answer = Vec::new();
    conn.take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(io_err)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ProbeError::NotHttp(socket.to_owned()))?;
    if status == 200 {
        Ok(body.to_owned())
    } else {
        Err(ProbeError::Status {
            status,
            body: body.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(
        status: u16,
    ) -> impl tower::Service<
        http::Request<Incoming>,
        Response = http::Response<String>,
        Error = Infallible,
        Future = std::future::Ready<Result<http::Response<String>, Infallible>>,
    > + Clone {
        tower::service_fn(move |req: http::Request<Incoming>| {
            let res = http::Response::builder()
                .status(status)
                .body(format!("asked {}", req.uri().path()))
                .expect("valid response");
            std::future::ready(Ok(res))
        })
    }

    async fn ask(socket: PathBuf, path: &'static str) -> Result<String, ProbeError> {
        tokio::task::spawn_blocking(move || probe(&socket, path, Duration::from_secs(5)))
            .await
            .expect("probe thread")
    }

    #[tokio::test]
    async fn a_probe_reads_the_answer_and_the_socket_goes_with_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.sock");
        let socket = ProbeSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let stop = CancellationToken::new();
        let served = tokio::spawn(socket.serve(service(200), stop.clone()));
        assert_eq!(ask(path.clone(), "/readyz").await.unwrap(), "asked /readyz");
        stop.cancel();
        served.await.unwrap();
        assert!(!path.exists());
        assert!(matches!(
            ask(path, "/healthz").await,
            Err(ProbeError::Io { .. })
        ));
    }

    #[tokio::test]
    async fn a_status_other_than_200_fails_the_probe_with_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.sock");
        let socket = ProbeSocket::bind(&path).unwrap();
        let stop = CancellationToken::new();
        let served = tokio::spawn(socket.serve(service(503), stop.clone()));
        match ask(path, "/readyz").await {
            Err(ProbeError::Status { status, body }) => {
                assert_eq!((status, body.as_str()), (503, "asked /readyz"));
            }
            other => panic!("{other:?}"),
        }
        stop.cancel();
        served.await.unwrap();
    }

    #[test]
    fn a_stale_socket_is_replaced_and_anything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = ProbeSocket::bind(&path).unwrap();
            drop(first);
            // The file stays behind a process that did not remove it: the next one replaces it.
            assert!(path.exists());
            ProbeSocket::bind(&path).unwrap();
            let file = dir.path().join("file");
            std::fs::write(&file, "data").unwrap();
            let err = ProbeSocket::bind(&file).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(std::fs::read(&file).unwrap(), b"data");
        });
    }

    #[test]
    fn request_paths_are_checked_before_anything_is_sent() {
        for bad in ["readyz", "/ready z", "/x\r\nHost: y", ""] {
            assert!(matches!(
                probe(Path::new("/nonexistent"), bad, Duration::from_secs(1)),
                Err(ProbeError::Path(_))
            ));
        }
    }
}
