//! The physical limit beside the servers of `spark-fetch`: a minimal server that answers the
//! same fetches with nothing but the work the bytes need, one thread per connection with
//! blocking sockets, index files parsed once, data files kept open:
//!
//! - plain: the frame header, then `sendfile` from the page cache;
//! - network crypto (`ctr`, `gcm`): the same handshake, then each body read with `pread` in
//!   256 KiB pieces and sealed with the cheapest cipher path this machine has (AWS-LC's
//!   AES-GCM, AES-NI CTR), header and piece in one message;
//! - TLS: rustls (AWS-LC) over the blocking socket, header and piece in one write.
//!
//! No limits, no validation, no metrics: it is a measuring stick, run as `loadtest
//! limit-server` in its own process so that its CPU is counted apart from the client's.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use spark_protocol::crypto::auth::{AuthMessage, respond};
use spark_protocol::crypto::detect::{Detected, detect};
use spark_protocol::crypto::{Cipher, Opener, Sealer};
use spark_protocol::frame::{FrameDecoder, Message, StreamChunkId, chunk_success_header};
use spark_protocol::ids::{MapId, ShuffleId};
use spark_protocol::layout;
use spark_protocol::message::{BlockTransferMessage as Btm, RpcPayload};

/// Arguments of the hidden `limit-server` command.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// The executor's local directories (as registered).
    #[arg(long)]
    dir: Vec<PathBuf>,
    /// The secret of the network-crypto handshake.
    #[arg(long)]
    secret: Option<String>,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

/// A connection's socket, plain or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl std::io::Read for Io {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(b),
            Self::Tls(t) => t.read(b),
        }
    }
}

impl std::io::Write for Io {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(b),
            Self::Tls(t) => t.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(t) => t.flush(),
        }
    }
}

fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    Ok(Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?,
    ))
}

/// One block: its data file and range.
type Block = (Arc<std::fs::File>, u64, u64);

#[derive(Default)]
struct Files {
    offsets: HashMap<(i32, i64), Vec<u64>>,
    data: HashMap<(i32, i64), Arc<std::fs::File>>,
}

impl Files {
    fn block(&mut self, dirs: &[PathBuf], s: i32, m: i64, r: i32) -> anyhow::Result<Block> {
        let (sid, mid) = (ShuffleId::new(s)?, MapId::new(m)?);
        if let std::collections::hash_map::Entry::Vacant(e) = self.offsets.entry((s, m)) {
            let p = layout::placement(dirs, 64, &layout::index_file(sid, mid));
            e.insert(layout::parse_index(&p, &std::fs::read(&p)?)?);
            let d = layout::placement(dirs, 64, &layout::data_file(sid, mid));
            self.data.insert((s, m), Arc::new(std::fs::File::open(d)?));
        }
        let o = &self.offsets[&(s, m)];
        let r = usize::try_from(r)?;
        let (start, end) = (o[r], o[r + 1]);
        Ok((Arc::clone(&self.data[&(s, m)]), start, end - start))
    }
}

/// Serves until killed.
pub(crate) fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let listener = TcpListener::bind(&args.listen)?;
    let dirs = Arc::new(args.dir);
    let secret = Arc::new(args.secret);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_config(c, k)?),
        _ => None,
    };
    for s in listener.incoming() {
        let s = s?;
        s.set_nodelay(true)?;
        let (dirs, secret, tls) = (Arc::clone(&dirs), Arc::clone(&secret), tls.clone());
        std::thread::spawn(move || {
            let io = match tls {
                None => Io::Plain(s),
                Some(config) => match rustls::ServerConnection::new(config) {
                    Ok(c) => Io::Tls(Box::new(rustls::StreamOwned::new(c, s))),
                    Err(_) => return,
                },
            };
            let _ = conn(io, &dirs, secret.as_deref());
        });
    }
    Ok(serde_json::Value::Null)
}

fn write_plain(s: &mut Io, b: &[u8], more: bool) -> anyhow::Result<()> {
    use rustix::net::SendFlags;
    let Io::Plain(s) = s else {
        return Ok(s.write_all(b)?);
    };
    let flags = if more {
        SendFlags::MORE | SendFlags::NOSIGNAL
    } else {
        SendFlags::NOSIGNAL
    };
    let mut off = 0;
    while off < b.len() {
        off += rustix::net::send(&*s, &b[off..], flags)?;
    }
    Ok(())
}

fn conn(mut s: Io, dirs: &[PathBuf], secret: Option<&str>) -> anyhow::Result<()> {
    let decoder = FrameDecoder::new(64 << 20);
    let mut files = Files::default();
    let mut streams: HashMap<i64, Vec<Block>> = HashMap::new();
    let mut next_stream = 1i64;
    let (mut buf, mut raw) = (BytesMut::new(), BytesMut::new());
    let mut pending_keys = None;
    let mut chan: Option<(Opener, Sealer)> = None;
    let mut piece = vec![0u8; 256 << 10];
    let mut out = BytesMut::new();
    let mut read = vec![0u8; 64 << 10];
    loop {
        let n = s.read(&mut read)?;
        if n == 0 {
            return Ok(());
        }
        if pending_keys.is_none() && chan.is_none() {
            buf.extend_from_slice(&read[..n]);
        } else {
            raw.extend_from_slice(&read[..n]);
            if let Some(keys) = &pending_keys {
                match detect(keys, &raw, &[Cipher::Ctr, Cipher::Gcm], 64 << 20, 65 << 20) {
                    Detected::NeedMore => continue,
                    Detected::Unknown => bail!("unknown cipher"),
                    Detected::Found(c, v) => chan = Some(keys.server_channel(c, v, 65 << 20)?),
                }
                pending_keys = None;
            }
            if let Some((o, _)) = &mut chan {
                o.open(&mut raw, &mut buf)?;
            }
        }
        while let Some(m) = decoder.decode(&mut buf)? {
            let reply = |m: Message| m.to_bytes();
            match m {
                Message::RpcRequest { request_id, body } => {
                    let resp: Bytes = match RpcPayload::decode(body)? {
                        RpcPayload::AuthEngine(b) => {
                            let secret = secret.context("no secret")?;
                            let (r, keys) = respond(secret.as_bytes(), &AuthMessage::decode(b)?)?;
                            // The reply goes in the clear; the client's next bytes are not.
                            write_plain(
                                &mut s,
                                &reply(Message::RpcResponse {
                                    request_id,
                                    body: r.to_bytes(),
                                }),
                                false,
                            )?;
                            pending_keys = Some(keys);
                            raw.extend_from_slice(&buf.split());
                            break;
                        }
                        RpcPayload::Block(Btm::RegisterExecutor { .. }) => Bytes::new(),
                        RpcPayload::Block(Btm::FetchShuffleBlocks {
                            shuffle_id,
                            map_ids,
                            reduce_ids,
                            ..
                        }) => {
                            let mut blocks = Vec::new();
                            for (m, rs) in map_ids.iter().zip(&reduce_ids) {
                                for r in rs {
                                    blocks.push(files.block(dirs, shuffle_id, *m, *r)?);
                                }
                            }
                            let id = next_stream;
                            next_stream += 1;
                            let n = blocks.len() as i32;
                            streams.insert(id, blocks);
                            Btm::StreamHandle {
                                stream_id: id,
                                num_chunks: n,
                            }
                            .to_bytes()
                        }
                        other => bail!("not served: {other:?}"),
                    };
                    let frame = reply(Message::RpcResponse {
                        request_id,
                        body: resp,
                    });
                    send(&mut s, &mut chan, &frame, &mut out)?;
                }
                Message::ChunkFetchRequest(id) => {
                    let (file, off, len) = {
                        let st = streams.get(&id.stream_id).context("stream")?;
                        let b = &st[usize::try_from(id.chunk_index)?];
                        (Arc::clone(&b.0), b.1, b.2)
                    };
                    let head = chunk_success_header(
                        StreamChunkId {
                            stream_id: id.stream_id,
                            chunk_index: id.chunk_index,
                        },
                        len,
                    );
                    match (&mut chan, &mut s) {
                        (None, Io::Plain(_)) => {
                            write_plain(&mut s, &head, true)?;
                            let mut o = off;
                            while o < off + len {
                                let want = usize::try_from(off + len - o)?;
                                let Io::Plain(sock) = &s else { unreachable!() };
                                if rustix::fs::sendfile(sock, &*file, Some(&mut o), want)? == 0 {
                                    bail!("short file");
                                }
                            }
                        }
                        _ => {
                            // Header and the first piece in one sealed message or write.
                            let mut o = off;
                            let mut first = true;
                            while o < off + len || first {
                                let k = usize::try_from((off + len - o).min(piece.len() as u64))?;
                                file.read_exact_at(&mut piece[..k], o)?;
                                o += k as u64;
                                let mut plain = Vec::with_capacity(k + 21);
                                if first {
                                    plain.extend_from_slice(&head);
                                    first = false;
                                }
                                plain.extend_from_slice(&piece[..k]);
                                send(&mut s, &mut chan, &plain, &mut out)?;
                            }
                        }
                    }
                    if id.chunk_index + 1 == streams[&id.stream_id].len() as i32 {
                        streams.remove(&id.stream_id);
                    }
                }
                other => bail!("not served: {}", other.name()),
            }
        }
    }
}

/// Writes `plain`, sealed when the channel is encrypted.
fn send(
    s: &mut Io,
    chan: &mut Option<(Opener, Sealer)>,
    plain: &[u8],
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    match chan {
        None => Ok(s.write_all(plain)?),
        Some((_, sealer)) => {
            out.clear();
            sealer.seal(plain, out);
            Ok(s.write_all(out)?)
        }
    }
}
