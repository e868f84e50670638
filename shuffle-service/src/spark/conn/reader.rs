//! The reader of a connection: decodes frames (decrypting them once a handshake set up
//! encryption), answers control RPCs at once or off the read loop (registrations, removals),
//! and queues chunk and stream requests for the preparer. It alone decides when a connection
//! closes for a protocol error, a policy or a deadline; the frame budget bounds what it holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Close, DataJob, Limits, READ_CHUNK, ReplyTo, count_request};
use crate::spark::admission::Ticket;
use crate::spark::budget::declared_frame;
use crate::spark::channel::{Inbound, Out};
use crate::spark::deadline::{Activity, Deadline};
use crate::spark::handler::{Action, NewChannel, Session, Shared};
use crate::spark::transport::ReadSide;
use spark_protocol::frame::{FrameDecoder, FrameError, Message};

pub(super) struct Reader<'a> {
    /// The connection's share (its peer's, then once authenticated its application's).
    pub(super) ticket: &'a mut Ticket,
    pub(super) rd: ReadSide,
    pub(super) peer: SocketAddr,
    pub(super) shared: &'a Arc<Shared>,
    pub(super) limits: &'a Limits,
    pub(super) ctl: mpsc::Sender<Out>,
    pub(super) data: mpsc::Sender<DataJob>,
    pub(super) deferred: Arc<Semaphore>,
    pub(super) activity: &'a Activity,
    /// Set once the client authenticated (or at once when authentication is off).
    pub(super) authenticated: &'a AtomicBool,
}

impl Reader<'_> {
    pub(super) async fn run(
        mut self,
        stop: &CancellationToken,
        cancel: &CancellationToken,
    ) -> Result<(), Close> {
        let mut session = Session::new(self.shared);
        let mut reserved = self.limits.frame_memory.reservation(self.peer.ip());
        // Plaintext frames, and (with network crypto) the bytes not yet decrypted.
        let mut buf = BytesMut::with_capacity(16 << 10);
        let mut raw = BytesMut::new();
        let mut inbound = Inbound::Plain;
        loop {
            if inbound.encrypted() {
                match inbound.decrypt(
                    &mut raw,
                    &mut buf,
                    &self.shared.ciphers,
                    self.limits.max_frame as u64,
                ) {
                    Ok(None) => {}
                    Ok(Some((sealer, cipher, version))) => {
                        tracing::debug!(%cipher, version, "network crypto channel");
                        self.send(Out::Seal(sealer)).await?;
                    }
                    Err(e) => {
                        self.shared.core.metrics().spark_auth_failures.inc();
                        return Err(Close::Protocol(e));
                    }
                }
            }
            loop {
                // Before authentication only the handshake's small messages are legitimate.
                let authorized = session.authorized(self.shared);
                if authorized && !self.authenticated.load(Ordering::SeqCst) {
                    if let Some(app) = &session.client {
                        self.ticket
                            .authenticated(app)
                            .map_err(|_| Close::Deadline(Deadline::AppShare))?;
                    }
                    self.authenticated.store(true, Ordering::SeqCst);
                }
                let max_frame = if authorized {
                    self.limits.max_frame
                } else {
                    self.limits.preauth_max_frame
                };
                match FrameDecoder::new(max_frame).decode(&mut buf) {
                    Ok(Some(m)) => {
                        self.handle(&mut session, m).await?;
                        if let Some(channel) = session.take_crypto() {
                            // Whatever follows the handshake is ciphertext.
                            raw.extend_from_slice(&buf.split());
                            inbound = match channel {
                                NewChannel::Pending(keys) => Inbound::Pending(keys),
                                NewChannel::Ready(open, seal) => {
                                    self.send(Out::Seal(seal)).await?;
                                    Inbound::Open(open)
                                }
                            };
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(FrameError::Length(n)) if !authorized => {
                        self.shared
                            .core
                            .metrics()
                            .spark_preauth_frames_refused
                            .inc();
                        return Err(Close::Protocol(format!(
                            "frame length {n} before authentication (at most {max_frame} bytes until then)"
                        )));
                    }
                    Err(FrameError::Length(n)) => {
                        return Err(Close::Protocol(format!("frame length {n} out of range")));
                    }
                    Err(FrameError::Decode(e)) => return Err(Close::Protocol(e.to_string())),
                }
            }
            // What the buffers will hold until the frame they begin is complete (the whole
            // declared length, as soon as its header is in), reserved from the shared budget.
            let max_frame = if session.authorized(self.shared) {
                self.limits.max_frame
            } else {
                self.limits.preauth_max_frame
            };
            let held = buf.len().max(declared_frame(&buf, max_frame)) + raw.len() + READ_CHUNK;
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = cancel.cancelled() => return Ok(()),
                r = reserved.cover(held, self.limits.idle_timeout) => if let Err(e) = r {
                    if let Some(limit) = e.limit() {
                        self.shared
                            .core
                            .metrics()
                            .spark_frame_memory_waits_failed
                            .with_label_values(&[limit])
                            .inc();
                    }
                    return Err(Close::Policy(e.to_string()));
                },
            }
            let target = if inbound.encrypted() {
                &mut raw
            } else {
                &mut buf
            };
            target.reserve(READ_CHUNK);
            let read = self.rd.read(target, READ_CHUNK);
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = cancel.cancelled() => return Ok(()),
                r = tokio::time::timeout(self.limits.idle_timeout, read) => match r {
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(_)) => self.activity.touch(),
                    Ok(Err(e)) => return Err(Close::Policy(format!("read failed: {e}"))),
                    Err(_) => {
                        // In the middle of a frame only the client's bytes count: replies
                        // going out meanwhile do not complete it.
                        if !buf.is_empty() || !raw.is_empty() {
                            return Err(Close::Deadline(Deadline::StalledFrame));
                        }
                        if self.activity.idle() >= self.limits.idle_timeout {
                            return Err(Close::Deadline(Deadline::Idle));
                        }
                    }
                },
            }
        }
    }

    fn count(&self, name: &str, ok: bool, start: Instant) {
        count_request(self.shared.core.metrics(), name, ok, Some(start.elapsed()));
    }

    async fn control(&self, frame: Message) -> Result<(), Close> {
        self.send(Out::Frame(frame.to_bytes())).await
    }

    async fn send(&self, out: Out) -> Result<(), Close> {
        self.ctl
            .send(out)
            .await
            .map_err(|_| Close::Policy("writer gone".into()))
    }

    async fn data(&self, job: DataJob) -> Result<(), Close> {
        self.data
            .send(job)
            .await
            .map_err(|_| Close::Policy("writer gone".into()))
    }

    async fn handle(&self, session: &mut Session, m: Message) -> Result<(), Close> {
        match m {
            Message::RpcRequest { request_id, body } => {
                let start = Instant::now();
                let mut name = "Unknown";
                match session.rpc(self.shared, body, &mut name) {
                    Action::Reply(r) => {
                        self.count(name, r.is_ok(), start);
                        self.control(reply(request_id, r)).await?;
                    }
                    Action::FailAndClose(e) => {
                        self.count(name, false, start);
                        self.control(reply(request_id, Err(e.clone()))).await?;
                        return Err(Close::Policy(e));
                    }
                    Action::Later(work) => {
                        let permit = Arc::clone(&self.deferred)
                            .acquire_owned()
                            .await
                            .map_err(|_| Close::Policy("closed".into()))?;
                        let ctl = self.ctl.clone();
                        let metrics = self.shared.core.metrics().clone();
                        tokio::spawn(async move {
                            let r = work.await;
                            count_request(&metrics, name, r.is_ok(), Some(start.elapsed()));
                            let _ = ctl.send(Out::Frame(reply(request_id, r).to_bytes())).await;
                            drop(permit);
                        });
                    }
                }
            }
            Message::OneWayMessage(body) => {
                let name = session.one_way(self.shared, body);
                self.count(name, true, Instant::now());
            }
            Message::ChunkFetchRequest(id) => {
                if !session.authorized(self.shared) {
                    return Err(Close::Policy("chunk fetch before authentication".into()));
                }
                let target = session.streams.take(id.stream_id, id.chunk_index);
                self.data(DataJob {
                    reply: ReplyTo::Chunk(id),
                    target,
                })
                .await?;
            }
            Message::StreamRequest(name) => {
                if !session.authorized(self.shared) {
                    return Err(Close::Policy("stream request before authentication".into()));
                }
                let target = match parse_stream_id(&name) {
                    Some((s, c)) => session.streams.take(s, c),
                    None => Err(format!("Stream '{name}' was not found.")),
                };
                self.data(DataJob {
                    reply: ReplyTo::Stream(name),
                    target,
                })
                .await?;
            }
            Message::UploadStream { request_id, .. } => {
                // The body follows outside the frame; rather than read it, close.
                self.control(reply(
                    request_id,
                    Err(
                        "uploads (push-based shuffle) are not accepted by this shuffle service"
                            .into(),
                    ),
                ))
                .await?;
                return Err(Close::Policy("upload stream refused".into()));
            }
            Message::MergedBlockMetaRequest { request_id, .. } => {
                self.control(reply(
                    request_id,
                    Err("push-based shuffle is not served by this shuffle service".into()),
                ))
                .await?;
            }
            other => {
                return Err(Close::Protocol(format!(
                    "{} is a response; clients may not send it",
                    other.name()
                )));
            }
        }
        Ok(())
    }
}

fn reply(request_id: i64, r: Result<Bytes, String>) -> Message {
    match r {
        Ok(body) => Message::RpcResponse { request_id, body },
        Err(error) => Message::RpcFailure { request_id, error },
    }
}

/// `"<streamId>_<chunkIndex>"`.
pub(crate) fn parse_stream_id(s: &str) -> Option<(i64, i32)> {
    let (a, b) = s.split_once('_')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}
