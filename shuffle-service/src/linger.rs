//! Lingering close: a server that closes a socket while the client's last bytes (a window
//! update, a request it will never get an answer to) sit unread makes the kernel send a reset,
//! and a reset can discard the tail of the response the client has not read yet. So a closed
//! connection first sends its FIN, then reads and discards what still arrives, until the client
//! closes too or [`LINGER`] passes (the way nginx's `lingering_close` works).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Longest a closed connection waits for the client to close its side.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// Closes `stream` gracefully (see the module documentation).
pub(crate) async fn close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 8192];
    let mut seen = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while seen < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
}

/// A server-side TCP stream that lingers when dropped, on a task of `tracker` (which the
/// server awaits before it exits).
#[derive(Debug)]
pub(crate) struct Lingering {
    inner: Option<TcpStream>,
    tracker: TaskTracker,
}

impl Lingering {
    /// Wraps an accepted stream.
    pub(crate) fn new(stream: TcpStream, tracker: TaskTracker) -> Self {
        Self {
            inner: Some(stream),
            tracker,
        }
    }

    fn io(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.inner.as_mut().expect("present until dropped"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if let Some(s) = self.inner.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            self.tracker.spawn(close(s));
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

impl Connected for Lingering {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner
            .as_ref()
            .expect("present until dropped")
            .connect_info()
    }
}
