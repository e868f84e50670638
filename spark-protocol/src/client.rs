//! A minimal client of Spark's shuffle protocol: RPCs, pipelined chunk and stream fetches, the
//! SASL handshake and network crypto (`AuthEngine` with AES-CTR or AES-GCM). Used by the tests and the load generator; Spark's executors are the
//! real clients.

use std::io;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::crypto::auth::{AuthMessage, ClientHandshake};
use crate::crypto::{Cipher, EngineVersion, Opener, Sealer};
use crate::frame::{FrameDecoder, Message, StreamChunkId};
use crate::message::{BlockTransferMessage, SaslMessage};
use crate::sasl;

/// `ChunkFetchRequest`s for chunks `0..n` of a stream, back to back, as Spark pipelines them.
pub fn chunk_fetch_requests(stream_id: i64, n: i32) -> BytesMut {
    let mut req = BytesMut::new();
    for i in 0..n {
        Message::ChunkFetchRequest(StreamChunkId {
            stream_id,
            chunk_index: i,
        })
        .encode(&mut req);
    }
    req
}

/// A received message; `StreamResponse` carries its out-of-frame body.
#[derive(Debug)]
pub struct Inbound {
    /// The message.
    pub message: Message,
    /// The raw body of a `StreamResponse`.
    pub stream_body: Option<Bytes>,
}

/// One connection.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    next_id: i64,
    /// With network crypto: the channel's halves and the bytes not yet decrypted.
    opener: Option<Opener>,
    sealer: Option<Sealer>,
    raw: BytesMut,
}

fn proto(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Client {
    /// Connects.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::from_stream(TcpStream::connect(addr).await?)
    }

    /// A client on a connected socket (one bound to a chosen source address, say).
    ///
    /// # Errors
    /// Setting `TCP_NODELAY` failed.
    pub fn from_stream(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::with_capacity(1 << 20),
            decoder: FrameDecoder::new(i32::MAX as usize),
            next_id: 1,
            opener: None,
            sealer: None,
            raw: BytesMut::new(),
        })
    }

    /// Writes bytes, sealed when the channel is encrypted.
    async fn write(&mut self, b: &[u8]) -> io::Result<()> {
        match &mut self.sealer {
            Some(s) => {
                let mut out = BytesMut::with_capacity(s.sealed_len(b.len()));
                s.seal(b, &mut out);
                self.stream.write_all(&out).await
            }
            None => self.stream.write_all(b).await,
        }
    }

    /// Reads more plaintext into the buffer; 0 at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        let Some(opener) = &mut self.opener else {
            return self.stream.read_buf(&mut self.buf).await;
        };
        let before = self.buf.len();
        loop {
            opener.open(&mut self.raw, &mut self.buf).map_err(proto)?;
            if self.buf.len() > before {
                return Ok(self.buf.len() - before);
            }
            if self.stream.read_buf(&mut self.raw).await? == 0 {
                return Ok(0);
            }
        }
    }

    /// Sends raw bytes (tests of malformed input).
    ///
    /// # Errors
    /// Write errors.
    pub async fn send_raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.write(b).await
    }

    /// Sends one message.
    ///
    /// # Errors
    /// Write errors.
    pub async fn send(&mut self, m: &Message) -> io::Result<()> {
        self.write(&m.to_bytes()).await
    }

    /// Receives one message (EOF is `UnexpectedEof`), with the body of a `StreamResponse`.
    ///
    /// # Errors
    /// Read errors, EOF, malformed frames.
    pub async fn recv(&mut self) -> io::Result<Inbound> {
        let message = self.recv_frame().await?;
        let stream_body = if matches!(message, Message::StreamResponse { .. }) {
            let n = usize::try_from(message.trailing_body_len()).map_err(proto)?;
            Some(self.read_raw(n).await?)
        } else {
            None
        };
        Ok(Inbound {
            message,
            stream_body,
        })
    }

    /// Receives one frame, leaving any body that follows it unread.
    ///
    /// # Errors
    /// Read errors, EOF, malformed frames.
    pub async fn recv_frame(&mut self) -> io::Result<Message> {
        loop {
            if let Some(m) = self.decoder.decode(&mut self.buf).map_err(proto)? {
                return Ok(m);
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads `n` raw bytes (part of a body outside its frame).
    ///
    /// # Errors
    /// Read errors, EOF.
    pub async fn read_raw(&mut self, n: usize) -> io::Result<Bytes> {
        while self.buf.len() < n {
            self.buf.reserve(n - self.buf.len());
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Sends an RPC and waits for its reply: `Ok(Ok(body))`, or `Ok(Err(text))` for an
    /// `RpcFailure`.
    ///
    /// # Errors
    /// I/O errors or an unrelated reply.
    pub async fn rpc(&mut self, body: Bytes) -> io::Result<Result<Bytes, String>> {
        let request_id = self.next_id;
        self.next_id += 1;
        self.send(&Message::RpcRequest { request_id, body }).await?;
        match self.recv().await?.message {
            Message::RpcResponse {
                request_id: r,
                body,
            } if r == request_id => Ok(Ok(body)),
            Message::RpcFailure {
                request_id: r,
                error,
            } if r == request_id => Ok(Err(error)),
            other => Err(proto(format!("unexpected reply {}", other.name()))),
        }
    }

    /// Sends a shuffle message as an RPC and decodes the reply (empty replies are `None`).
    ///
    /// # Errors
    /// I/O errors or a malformed reply.
    pub async fn call(
        &mut self,
        m: &BlockTransferMessage,
    ) -> io::Result<Result<Option<BlockTransferMessage>, String>> {
        Ok(match self.rpc(m.to_bytes()).await? {
            Ok(b) if b.is_empty() => Ok(None),
            Ok(b) => Ok(Some(BlockTransferMessage::decode(b).map_err(proto)?)),
            Err(e) => Err(e),
        })
    }

    /// Fetches chunks `0..n` of a stream with pipelined `ChunkFetchRequest`s; each result is
    /// the chunk or the failure text.
    ///
    /// # Errors
    /// I/O errors or unexpected frames.
    pub async fn fetch_chunks(
        &mut self,
        stream_id: i64,
        n: i32,
    ) -> io::Result<Vec<Result<Bytes, String>>> {
        self.write(&chunk_fetch_requests(stream_id, n)).await?;
        let mut out: Vec<Option<Result<Bytes, String>>> = (0..n).map(|_| None).collect();
        for _ in 0..n {
            let (id, r) = match self.recv().await?.message {
                Message::ChunkFetchSuccess(id, b) => (id, Ok(b)),
                Message::ChunkFetchFailure(id, e) => (id, Err(e)),
                other => return Err(proto(format!("unexpected {}", other.name()))),
            };
            let slot = usize::try_from(id.chunk_index)
                .ok()
                .filter(|_| id.stream_id == stream_id)
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| proto("reply for another chunk"))?;
            *slot = Some(r);
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every chunk answered"))
            .collect())
    }

    /// Fetches chunks `0..n` as streams (`StreamRequest`, fetch-to-disk), replies in order.
    ///
    /// # Errors
    /// I/O errors or unexpected frames.
    pub async fn fetch_streams(
        &mut self,
        stream_id: i64,
        n: i32,
    ) -> io::Result<Vec<Result<Bytes, String>>> {
        let mut req = BytesMut::new();
        for i in 0..n {
            Message::StreamRequest(format!("{stream_id}_{i}")).encode(&mut req);
        }
        self.write(&req).await?;
        let mut out = Vec::new();
        for i in 0..n {
            let inbound = self.recv().await?;
            let want = format!("{stream_id}_{i}");
            out.push(match inbound.message {
                Message::StreamResponse { stream_id: s, .. } if s == want => {
                    Ok(inbound.stream_body.unwrap_or_default())
                }
                Message::StreamFailure {
                    stream_id: s,
                    error,
                } if s == want => Err(error),
                other => return Err(proto(format!("unexpected {}", other.name()))),
            });
        }
        Ok(out)
    }

    /// Runs Spark's SASL DIGEST-MD5 handshake for `app` with `secret` (qop `auth`).
    ///
    /// # Errors
    /// I/O errors; `Ok(Err(text))` when the service refuses.
    pub async fn authenticate(
        &mut self,
        app: &str,
        secret: &[u8],
    ) -> io::Result<Result<(), String>> {
        Ok(self.sasl(app, secret, false).await?.map(|_| ()))
    }

    /// Runs the SASL handshake with qop `auth-conf` (cipher `rc4`), then encrypts the
    /// connection as Spark does with `spark.authenticate.enableSaslEncryption=true`.
    ///
    /// # Errors
    /// I/O errors; `Ok(Err(text))` when the service refuses.
    pub async fn authenticate_sasl_encrypted(
        &mut self,
        app: &str,
        secret: &[u8],
    ) -> io::Result<Result<(), String>> {
        let ha1 = match self.sasl(app, secret, true).await? {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let (open, seal) = crate::crypto::digest::client(&ha1, 16 << 20);
        self.raw.extend_from_slice(&self.buf.split());
        self.opener = Some(Opener::Sasl(open));
        self.sealer = Some(Sealer::Sasl(seal));
        Ok(Ok(()))
    }

    async fn sasl(
        &mut self,
        app: &str,
        secret: &[u8],
        conf: bool,
    ) -> io::Result<Result<[u8; 16], String>> {
        let step = |payload: Vec<u8>| {
            SaslMessage {
                app_id: app.to_owned(),
                payload: Bytes::from(payload),
            }
            .to_bytes()
        };
        let challenge = match self.rpc(step(Vec::new())).await? {
            Ok(c) => String::from_utf8_lossy(&c).into_owned(),
            Err(e) => return Ok(Err(e)),
        };
        let nonce = challenge
            .split(',')
            .find_map(|d| d.strip_prefix("nonce="))
            .map(|n| n.trim_matches('"').to_owned())
            .ok_or_else(|| proto("challenge without nonce"))?;
        let mut raw = [0u8; 30];
        rand::fill(&mut raw[..]);
        let cnonce = B64.encode(raw);
        let password = sasl::encode(secret);
        let qop = if conf { "auth-conf" } else { "auth" };
        let input = sasl::DigestInput {
            password: &password,
            realm: sasl::REALM,
            nonce: &nonce,
            cnonce: &cnonce,
            nc: "00000001",
            authzid: None,
            uri: "null/default",
            qop,
        };
        let (response, ha1) = input.response("AUTHENTICATE");
        let cipher = if conf { ",cipher=\"rc4\"" } else { "" };
        let msg = format!(
            "charset=utf-8,username=\"{}\",realm=\"{}\",nonce=\"{nonce}\",nc=00000001,cnonce=\"{cnonce}\",digest-uri=\"null/default\",maxbuf=65536,response={response},qop={qop}{cipher}",
            sasl::encode(sasl::USER),
            sasl::REALM
        );
        match self.rpc(step(msg.into_bytes())).await? {
            Ok(fin) => {
                if fin == format!("rspauth={}", input.response("").0).as_bytes() {
                    Ok(Ok(ha1))
                } else {
                    Ok(Err("server proof does not match".into()))
                }
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// Runs Spark's network-crypto handshake (`AuthEngine`) for `app` with `secret`, then
    /// encrypts the connection with `cipher` as Spark's executors do with
    /// `spark.network.crypto.enabled=true`.
    ///
    /// # Errors
    /// I/O errors; `Ok(Err(text))` when the service refuses.
    pub async fn authenticate_crypto(
        &mut self,
        app: &str,
        secret: &[u8],
        cipher: Cipher,
        version: EngineVersion,
    ) -> io::Result<Result<(), String>> {
        let (handshake, challenge) = ClientHandshake::start(app, secret).map_err(proto)?;
        let response = match self.rpc(challenge.to_bytes()).await? {
            Ok(r) => AuthMessage::decode(r).map_err(proto)?,
            Err(e) => return Ok(Err(e)),
        };
        let keys = match handshake.finish(&response) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let (opener, sealer) = keys
            .client_channel(cipher, version, 1 << 31)
            .map_err(proto)?;
        // Bytes already read past the reply are ciphertext.
        self.raw.extend_from_slice(&self.buf.split());
        self.opener = Some(opener);
        self.sealer = Some(sealer);
        Ok(Ok(()))
    }
}
