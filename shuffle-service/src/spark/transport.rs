//! How a connection's bytes meet the socket: plain TCP (`sendmsg` for frames, `sendfile` for
//! block bodies, readiness-based reads) or TLS (`spark.ssl.rpc.enabled=true`; rustls, block
//! bodies read in 256 KiB pieces and written through it); network crypto's sealer sits in
//! front of either.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use spark_protocol::crypto::Sealer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::channel::Out;

/// Plaintext read and sealed at once with network crypto (one GCM message at most this
/// large).
pub(crate) const COPY_CHUNK: usize = 256 << 10;
/// Plaintext read at once for TLS (four records): rustls holds its own records besides, so
/// a smaller piece keeps a TLS connection's memory near that of an encrypted one.
pub(crate) const TLS_COPY_CHUNK: usize = 64 << 10;

/// An accepted connection.
pub(crate) enum Wire {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS, handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The reading half.
pub(crate) enum ReadSide {
    /// Plain TCP.
    Tcp(Arc<TcpStream>),
    /// TLS.
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The writing half.
pub(crate) enum WriteSide {
    /// Plain TCP.
    Tcp(Arc<TcpStream>),
    /// TLS.
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl Wire {
    /// Splits the connection; the TCP socket is returned too, to be closed gracefully.
    pub(crate) fn split(self) -> (ReadSide, WriteSide, Option<Arc<TcpStream>>) {
        match self {
            Self::Tcp(s) => {
                let s = Arc::new(s);
                (
                    ReadSide::Tcp(Arc::clone(&s)),
                    WriteSide::Tcp(Arc::clone(&s)),
                    Some(s),
                )
            }
            Self::Tls(t) => {
                let (r, w) = tokio::io::split(*t);
                (ReadSide::Tls(r), WriteSide::Tls(w), None)
            }
        }
    }
}

impl ReadSide {
    /// Reads what is there into `buf`, at most `max` bytes (0 at EOF).
    pub(crate) async fn read(&mut self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        let mut buf = buf.limit(max);
        match self {
            Self::Tcp(s) => loop {
                s.readable().await?;
                match s.try_read_buf(&mut buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            Self::Tls(r) => r.read_buf(&mut buf).await,
        }
    }
}

impl WriteSide {
    /// Ends a TLS session with its `close_notify`.
    pub(crate) async fn finish(&mut self) {
        if let Self::Tls(w) = self {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
        }
    }
}

fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")
}

/// Waits until the socket takes more bytes; a client that reads nothing for `stall` is cut
/// off (Spark's client gives up on a quiet connection after its own timeout anyway).
async fn writable(stream: &TcpStream, stall: Duration) -> io::Result<()> {
    match tokio::time::timeout(stall, stream.writable()).await {
        Ok(r) => r,
        Err(_) => Err(stalled()),
    }
}

/// Bytes waiting to be written (with `sendmsg` on TCP); with network crypto, sealed first.
pub(crate) struct Outbox {
    parts: VecDeque<Bytes>,
    stall: Duration,
    /// The channel's encryption, once the handshake completed.
    sealer: Option<Sealer>,
    /// Plaintext waiting to be sealed or queued.
    staged: BytesMut,
}

impl Outbox {
    /// An empty outbox; a client that takes nothing for `stall` is cut off.
    pub(crate) fn new(stall: Duration) -> Self {
        Self {
            parts: VecDeque::new(),
            stall,
            sealer: None,
            staged: BytesMut::new(),
        }
    }

    /// Whether network crypto encrypts what is sent.
    pub(crate) fn sealing(&self) -> bool {
        self.sealer.is_some()
    }

    /// Queues bytes.
    pub(crate) fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if self.sealer.is_some() {
            self.staged.extend_from_slice(&b);
            if self.staged.len() >= COPY_CHUNK {
                self.seal_staged();
            }
        } else {
            // A copied body still staged goes first.
            self.seal_staged();
            self.parts.push_back(b);
        }
    }

    /// Queues a frame or starts encrypting, in the reader's order.
    pub(crate) fn control(&mut self, out: Out) {
        match out {
            Out::Frame(b) => self.push(b),
            Out::Seal(s) => {
                // Frames queued so far go in the clear (the handshake's reply among them).
                self.seal_staged();
                self.sealer = Some(s);
            }
        }
    }

    /// Moves staged plaintext to the queue, sealed when the channel is encrypted.
    fn seal_staged(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        match &mut self.sealer {
            None => self.parts.push_back(self.staged.split().freeze()),
            Some(Sealer::Ctr(c)) => {
                c.apply(&mut self.staged);
                self.parts.push_back(self.staged.split().freeze());
            }
            Some(sealer) => {
                let mut out = BytesMut::with_capacity(sealer.sealed_len(self.staged.len()));
                sealer.seal(&self.staged, &mut out);
                self.staged.clear();
                self.parts.push_back(out.freeze());
            }
        }
    }

    /// Sends `len` bytes of `file` from `offset` through user space, a piece at a time
    /// (encrypted channels, TLS).
    pub(crate) async fn send_copied(
        &mut self,
        wr: &mut WriteSide,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let chunk = if self.sealing() {
            COPY_CHUNK
        } else {
            TLS_COPY_CHUNK
        };
        let mut off = offset;
        let end = offset + len;
        while off < end {
            let n = usize::try_from((end - off).min(chunk as u64)).unwrap_or(chunk);
            let at = self.staged.len();
            self.staged.resize(at + n, 0);
            file.read_exact_at(&mut self.staged[at..], off)?;
            off += n as u64;
            if self.staged.len() >= chunk {
                self.seal_staged();
                self.flush(wr, true).await?;
            }
        }
        Ok(())
    }

    /// Sends a block body: `sendfile` on a plain channel, copied otherwise.
    pub(crate) async fn send_file(
        &mut self,
        wr: &mut WriteSide,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        match wr {
            WriteSide::Tcp(s) if !self.sealing() => {
                let s = Arc::clone(s);
                self.flush(wr, true).await?;
                send_file(&s, self.stall, file, offset, len).await
            }
            _ => self.send_copied(wr, file, offset, len).await,
        }
    }

    /// Writes everything; with `more`, tells the kernel that more data follows at once
    /// (`MSG_MORE`: a frame header and its sendfile body leave in the same segments).
    pub(crate) async fn flush(&mut self, wr: &mut WriteSide, more: bool) -> io::Result<()> {
        if !more {
            self.seal_staged();
        }
        match wr {
            WriteSide::Tcp(s) => self.flush_tcp(s, more).await,
            WriteSide::Tls(w) => {
                // Vectored: rustls fills whole records from many frames and bodies.
                while !self.parts.is_empty() {
                    let slices = self.slices();
                    let n = tokio::time::timeout(self.stall, w.write_vectored(&slices))
                        .await
                        .map_err(|_| stalled())??;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    self.advance(n);
                }
                if !more {
                    tokio::time::timeout(self.stall, w.flush())
                        .await
                        .map_err(|_| stalled())??;
                }
                Ok(())
            }
        }
    }

    /// The queue's first parts, for one vectored write.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        self.parts
            .iter()
            .take(64)
            .map(|b| IoSlice::new(b))
            .collect()
    }

    /// Drops `n` written bytes from the front of the queue.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let front = self.parts.front_mut().expect("written bytes were queued");
            if front.len() <= n {
                n -= front.len();
                self.parts.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    async fn flush_tcp(&mut self, stream: &TcpStream, more: bool) -> io::Result<()> {
        use rustix::net::{SendAncillaryBuffer, SendFlags};
        let flags = if more {
            SendFlags::MORE | SendFlags::NOSIGNAL
        } else {
            SendFlags::NOSIGNAL
        };
        while !self.parts.is_empty() {
            writable(stream, self.stall).await?;
            let slices = self.slices();
            let sent = stream.try_io(Interest::WRITABLE, || {
                rustix::net::sendmsg(stream, &slices, &mut SendAncillaryBuffer::default(), flags)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Sends `len` bytes of `file` from `offset` with `sendfile`, no user-space copy.
async fn send_file(
    stream: &TcpStream,
    stall: Duration,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let mut off = offset;
    let end = offset + len;
    while off < end {
        writable(stream, stall).await?;
        let want = usize::try_from((end - off).min(1 << 30)).unwrap_or(1 << 30);
        match stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, file, Some(&mut off), want).map_err(io::Error::from)
        }) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "data file shrank while being sent",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
