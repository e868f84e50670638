//! TLS on the gRPC and admin listeners (each optional): handshakes on their own tasks
//! ([`service_runtime::tls::handshakes`]), the certificate reloaded when its files change.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::StreamExt as _;
use service_runtime::tls::{HANDSHAKE_TIMEOUT, ReloadingCert, TlsFiles, handshakes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::linger::Lingering;

/// Loads `files` and keeps them reloaded until `stop`; the server configuration for `alpn`.
///
/// # Errors
/// The files cannot be used.
pub fn server_config(
    files: &TlsFiles,
    alpn: &[&[u8]],
    reload_interval: std::time::Duration,
    stop: CancellationToken,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert = ReloadingCert::new(files.clone())?;
    let config = cert.server_config(alpn);
    tokio::spawn(cert.watch(reload_interval, async move { stop.cancelled().await }));
    Ok(config)
}

/// A gRPC connection over TLS.
#[derive(Debug)]
pub struct TlsConn(pub TlsStream<Lingering>);

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

/// TLS connections of a gRPC listener.
pub fn grpc_incoming(
    incoming: impl futures::Stream<Item = std::io::Result<Lingering>> + Send + 'static,
    config: Arc<rustls::ServerConfig>,
) -> impl futures::Stream<Item = std::io::Result<TlsConn>> + Send + 'static {
    handshakes(incoming, config, HANDSHAKE_TIMEOUT).map(|r| r.map(TlsConn))
}

/// The admin listener over TLS, for `axum::serve`.
pub struct TlsListener {
    local: std::net::SocketAddr,
    conns: Pin<Box<dyn futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send>>,
}

impl TlsListener {
    /// Serves TLS on `listener`.
    ///
    /// # Errors
    /// The listener has no local address.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let accepted = futures::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                s
            });
            Some((r, l))
        });
        Ok(Self {
            local,
            conns: Box::pin(handshakes(accepted, config, HANDSHAKE_TIMEOUT)),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.conns.next().await {
                Some(Ok(s)) => {
                    let peer = s
                        .get_ref()
                        .0
                        .peer_addr()
                        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                    return (s, peer);
                }
                Some(Err(_)) => {}
                // The accept task never ends while the listener lives.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
