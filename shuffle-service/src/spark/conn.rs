//! One Spark connection: a reader that decodes frames and answers control RPCs at once, a
//! preparer that resolves and opens blocks off the async threads in request order, and a
//! writer that prefers control replies and sends block bodies from file to socket with
//! `sendfile` (small bodies are read into memory within a budget and written in batches).
//!
//! ```text
//! socket ──reader──┬── control replies ─────────────────────────┐
//!                  └── chunk/stream requests ──preparer── blocks ┴──writer── socket
//! ```
//! A malformed frame closes only its connection; closing never deletes data.
//! When a connection is closed before its client leaves: [`super::deadline`]; what its
//! partly received frames may hold: [`super::budget`].

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::admission::Ticket;
use super::budget::{FrameMemory, declared_frame};
use super::channel::{Inbound, Out};
use super::deadline::{Activity, Deadline};
use super::frame::{self, FrameDecoder, FrameError, Message, StreamChunkId};
use super::handler::{Action, NewChannel, Session, Shared, failure_text};
use super::transport::{Outbox, ReadSide, Wire, WriteSide};
use crate::core::{Block, Executor};

/// Limits of one connection and the budgets shared by all.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame accepted from a client (contents, without the length field).
    pub max_frame: usize,
    /// Largest frame accepted before the client authenticated (SASL and `AuthEngine`
    /// messages are a few hundred bytes), when authentication is on.
    pub preauth_max_frame: usize,
    /// Memory for partly received frames, shared by all connections.
    pub frame_memory: FrameMemory,
    /// A connection quiet this long in both directions, or in the middle of a frame and
    /// receiving nothing this long, is closed (the client reconnects).
    pub idle_timeout: Duration,
    /// A connection not authenticated this long after it opened is closed (when
    /// authentication is on).
    pub auth_timeout: Duration,
    /// Bodies up to this size are read into memory and batched; larger ones use sendfile.
    pub small_body: u64,
    /// Memory for block bodies per connection.
    pub connection_memory: usize,
    /// Memory for block bodies across connections, shared.
    pub global_memory: Arc<Semaphore>,
    /// Open block files across connections, shared.
    pub open_files: Arc<Semaphore>,
}

/// Requests resolved per blocking task.
const BATCH: usize = 32;
/// Chunk and stream requests queued per connection before the reader stops reading.
const DATA_QUEUE: usize = 256;
/// Prepared batches queued for the writer.
const PREPARED_QUEUE: usize = 2;
/// Control replies queued for the writer.
const CONTROL_QUEUE: usize = 64;
/// Deferred RPCs (registrations, removals) running at once per connection.
const DEFERRED: usize = 16;
/// Bytes a read may add to a connection's buffers.
const READ_CHUNK: usize = 16 << 10;
/// Memory permits are counted in KiB.
const UNIT: u64 = 1024;
/// Largest in-frame body Spark's decoder takes (a frame must stay below 2 GiB).
const MAX_IN_FRAME: u64 = i32::MAX as u64 - 64;

enum ReplyTo {
    Chunk(StreamChunkId),
    Stream(String),
}

struct DataJob {
    reply: ReplyTo,
    target: Result<(Arc<Executor>, Block), String>,
}

enum Body {
    None,
    Mem(Bytes),
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
}

struct Prepared {
    /// `spark/ChunkFetchRequest` or `spark/StreamRequest`, for the RPC metric.
    method: &'static str,
    head: Bytes,
    body: Body,
    block_bytes: Option<u64>,
    permits: Vec<OwnedSemaphorePermit>,
}

/// Serves one connection from `peer` until the client leaves, a protocol error, a deadline or
/// `stop`.
pub async fn serve(
    wire: Wire,
    peer: SocketAddr,
    ticket: &mut Ticket,
    shared: Arc<Shared>,
    limits: Limits,
    stop: CancellationToken,
) {
    let (rd, mut wr, tcp) = wire.split();
    let conn_cancel = CancellationToken::new();
    let activity = Arc::new(Activity::new());
    let (ctl_tx, ctl_rx) = mpsc::channel::<Out>(CONTROL_QUEUE);
    let (data_tx, data_rx) = mpsc::channel::<DataJob>(DATA_QUEUE);
    let (prep_tx, prep_rx) = mpsc::channel::<Vec<Prepared>>(PREPARED_QUEUE);
    let conn_memory = Arc::new(Semaphore::new(
        (limits.connection_memory as u64 / UNIT).max(1) as usize,
    ));

    let preparer = tokio::spawn(prepare_loop(
        shared.clone(),
        data_rx,
        prep_tx,
        conn_memory,
        limits.clone(),
    ));
    let writer = tokio::spawn({
        let cancel = conn_cancel.clone();
        let activity = Arc::clone(&activity);
        let shared = shared.clone();
        let stall = limits.idle_timeout;
        async move {
            let r = write_loop(&mut wr, ctl_rx, prep_rx, &cancel, &activity, &shared, stall).await;
            if let Err(e) = &r {
                tracing::debug!(error = %e, "connection write failed");
            }
            cancel.cancel();
            wr.finish().await;
        }
    });
    let authenticated = AtomicBool::new(false);
    let evicted = ticket.evicted();
    let reader = Reader {
        ticket,
        rd,
        peer,
        shared: &shared,
        limits: &limits,
        ctl: ctl_tx,
        data: data_tx,
        deferred: Arc::new(Semaphore::new(DEFERRED)),
        activity: &activity,
        authenticated: &authenticated,
    };
    // Raced against the whole reader, so that a client is cut off at the deadline wherever
    // the reader waits (a read, the frame budget, a full reply queue).
    let auth_deadline = async {
        tokio::time::sleep(limits.auth_timeout).await;
        if authenticated.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = reader.run(&stop, &conn_cancel) => r,
        () = auth_deadline => Err(Close::Deadline(Deadline::Auth)),
        // Only a connection that has not authenticated is ever evicted.
        () = evicted.cancelled() => Err(Close::Deadline(Deadline::Evicted)),
    };
    match result {
        Ok(()) => {}
        Err(Close::Deadline(d)) => {
            shared
                .core
                .metrics()
                .spark_connections_closed
                .with_label_values(&[d.label()])
                .inc();
            tracing::debug!(peer = %peer, reason = d.label(), "closing connection at a deadline");
            // Nothing the writer still holds is worth waiting for.
            conn_cancel.cancel();
        }
        Err(Close::Protocol(e)) => {
            shared.core.metrics().spark_frames_rejected.inc();
            if let Some(left_out) = shared.logs.malformed.check() {
                tracing::warn!(peer = %peer, error = %e, left_out, "closing connection after a malformed frame");
            }
            conn_cancel.cancel();
        }
        Err(Close::Policy(e)) => {
            tracing::debug!(peer = %peer, reason = %e, "closing connection");
        }
    }
    // The reader's senders are gone: the preparer and writer finish what was asked, then end.
    let _ = preparer.await;
    let _ = writer.await;
    // A connection that never authenticated (with authentication on) is owed nothing: it is
    // closed at once, so that its slot is free at once.
    if authenticated.load(Ordering::SeqCst)
        && let Some(stream) = tcp.and_then(|s| Arc::try_unwrap(s).ok())
    {
        crate::linger::close(stream).await;
    }
}

enum Close {
    Protocol(String),
    Policy(String),
    Deadline(Deadline),
}

struct Reader<'a> {
    /// The connection's share (its peer's, then once authenticated its application's).
    ticket: &'a mut Ticket,
    rd: ReadSide,
    peer: SocketAddr,
    shared: &'a Arc<Shared>,
    limits: &'a Limits,
    ctl: mpsc::Sender<Out>,
    data: mpsc::Sender<DataJob>,
    deferred: Arc<Semaphore>,
    activity: &'a Activity,
    /// Set once the client authenticated (or at once when authentication is off).
    authenticated: &'a AtomicBool,
}

impl Reader<'_> {
    async fn run(
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
        let m = self.shared.core.metrics();
        let method = format!("spark/{name}");
        m.rpcs
            .with_label_values(&[method.as_str(), if ok { "OK" } else { "FAILED" }])
            .inc();
        m.rpc_duration
            .with_label_values(&[method.as_str()])
            .observe(start.elapsed().as_secs_f64());
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
                            let method = format!("spark/{name}");
                            metrics
                                .rpcs
                                .with_label_values(&[
                                    method.as_str(),
                                    if r.is_ok() { "OK" } else { "FAILED" },
                                ])
                                .inc();
                            metrics
                                .rpc_duration
                                .with_label_values(&[method.as_str()])
                                .observe(start.elapsed().as_secs_f64());
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
pub fn parse_stream_id(s: &str) -> Option<(i64, i32)> {
    let (a, b) = s.split_once('_')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

async fn prepare_loop(
    shared: Arc<Shared>,
    mut jobs_rx: mpsc::Receiver<DataJob>,
    out: mpsc::Sender<Vec<Prepared>>,
    conn_memory: Arc<Semaphore>,
    limits: Limits,
) {
    while let Some(first) = jobs_rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < BATCH {
            match jobs_rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        // One open-file permit per job, held by file bodies until they are sent.
        let Ok(files) = Arc::clone(&limits.open_files)
            .acquire_many_owned(jobs.len() as u32)
            .await
        else {
            return;
        };
        let core = shared.core.clone();
        let conn_memory = Arc::clone(&conn_memory);
        let limits2 = limits.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            prepare_batch(&core, jobs, files, &conn_memory, &limits2)
        })
        .await;
        let Ok(prepared) = prepared else {
            tracing::error!("block preparation panicked");
            return;
        };
        if out.send(prepared).await.is_err() {
            return;
        }
    }
}

fn method(reply: &ReplyTo) -> &'static str {
    match reply {
        ReplyTo::Chunk(_) => "spark/ChunkFetchRequest",
        ReplyTo::Stream(_) => "spark/StreamRequest",
    }
}

fn failure(reply: &ReplyTo, error: String) -> Prepared {
    let m = match reply {
        ReplyTo::Chunk(id) => Message::ChunkFetchFailure(*id, error),
        ReplyTo::Stream(s) => Message::StreamFailure {
            stream_id: s.clone(),
            error,
        },
    };
    Prepared {
        method: method(reply),
        head: m.to_bytes(),
        body: Body::None,
        block_bytes: None,
        permits: Vec::new(),
    }
}

/// A block whose file is open, ready to be sent.
struct Opened {
    reply: ReplyTo,
    head: Bytes,
    file: std::fs::File,
    offset: u64,
    len: u64,
}

/// A resolved request: an open block, or the failure to send instead.
enum Resolved {
    Open(Opened),
    Failed(Prepared),
}

/// Resolves and opens one block.
fn open_block(core: &crate::Core, job: DataJob) -> Resolved {
    match try_open_block(core, job) {
        Ok(o) => Resolved::Open(o),
        Err(p) => Resolved::Failed(*p),
    }
}

fn try_open_block(core: &crate::Core, job: DataJob) -> Result<Opened, Box<Prepared>> {
    let (exec, block) = match job.target {
        Ok(t) => t,
        Err(e) => return Err(Box::new(failure(&job.reply, e))),
    };
    let opened = core
        .open_block(&exec, &block)
        .map(|b| (b.file, b.offset, b.len));
    let (file, offset, len) = match opened {
        Ok(x) => x,
        Err(crate::ShuffleError::BlockNotFound(_)) if matches!(block, Block::File(_)) => {
            let text = match &job.reply {
                ReplyTo::Chunk(_) => "Chunk was not found".to_owned(),
                ReplyTo::Stream(s) => format!("Stream '{s}' was not found."),
            };
            return Err(Box::new(failure(&job.reply, text)));
        }
        Err(e) => {
            core.metrics().spark_block_failures.inc();
            return Err(Box::new(failure(&job.reply, failure_text(&e))));
        }
    };
    let head = match &job.reply {
        ReplyTo::Chunk(id) => {
            if len > MAX_IN_FRAME {
                return Err(Box::new(failure(
                    &job.reply,
                    format!(
                        "block of {len} bytes does not fit a frame; fetch it to disk (StreamRequest)"
                    ),
                )));
            }
            Bytes::copy_from_slice(&frame::chunk_success_header(*id, len))
        }
        ReplyTo::Stream(s) => Message::StreamResponse {
            stream_id: s.clone(),
            byte_count: len as i64,
        }
        .to_bytes(),
    };
    Ok(Opened {
        reply: job.reply,
        head,
        file,
        offset,
        len,
    })
}

/// Resolves and opens a batch (blocking I/O). Small bodies are read into one buffer, within
/// the memory budgets (without budget they go by sendfile like large ones); each file body
/// keeps one open-file permit until it is sent.
fn prepare_batch(
    core: &crate::Core,
    jobs: Vec<DataJob>,
    mut files: OwnedSemaphorePermit,
    conn_memory: &Arc<Semaphore>,
    limits: &Limits,
) -> Vec<Prepared> {
    let opened: Vec<Resolved> = jobs.into_iter().map(|j| open_block(core, j)).collect();
    fn open(r: &Resolved) -> Option<&Opened> {
        match r {
            Resolved::Open(o) => Some(o),
            Resolved::Failed(_) => None,
        }
    }
    let small = |o: &Opened| o.len > 0 && o.len <= limits.small_body;
    let small_total: u64 = opened
        .iter()
        .filter_map(open)
        .filter(|o| small(o))
        .map(|o| o.len)
        .sum();
    let mut budget = Vec::new();
    if small_total > 0 {
        let units = u32::try_from(small_total.div_ceil(UNIT)).unwrap_or(u32::MAX);
        if let Ok(c) = Arc::clone(conn_memory).try_acquire_many_owned(units)
            && let Ok(g) = Arc::clone(&limits.global_memory).try_acquire_many_owned(units)
        {
            budget = vec![c, g];
        }
    }
    let in_memory = !budget.is_empty();
    // Read every small body into one buffer, then hand out slices of it.
    let mut buf = BytesMut::new();
    let mut ranges = Vec::with_capacity(opened.len());
    for o in &opened {
        let Some(o) = open(o) else {
            ranges.push(None);
            continue;
        };
        if in_memory && small(o) {
            let start = buf.len();
            buf.resize(start + o.len as usize, 0);
            match o.file.read_exact_at(&mut buf[start..], o.offset) {
                Ok(()) => ranges.push(Some(Ok(start..buf.len()))),
                Err(e) => {
                    buf.truncate(start);
                    ranges.push(Some(Err(format!("read failed: {e}"))));
                }
            }
        } else {
            ranges.push(None);
        }
    }
    let bodies = buf.freeze();
    let mut out = Vec::with_capacity(opened.len());
    for (o, range) in opened.into_iter().zip(ranges) {
        let o = match o {
            Resolved::Open(o) => o,
            Resolved::Failed(failed) => {
                out.push(failed);
                continue;
            }
        };
        let mut p = Prepared {
            method: method(&o.reply),
            head: o.head,
            body: Body::None,
            block_bytes: Some(o.len),
            permits: Vec::new(),
        };
        match range {
            Some(Ok(r)) => p.body = Body::Mem(bodies.slice(r)),
            Some(Err(e)) => p = failure(&o.reply, e),
            None if o.len == 0 => {}
            None => {
                if let Some(f) = files.split(1) {
                    p.permits.push(f);
                }
                p.body = Body::File {
                    file: o.file,
                    offset: o.offset,
                    len: o.len,
                };
            }
        }
        out.push(p);
    }
    // The writer holds a batch's permits until the whole batch is written.
    if let Some(first) = out.first_mut() {
        first.permits.append(&mut budget);
    }
    out
}

async fn write_loop(
    wr: &mut WriteSide,
    mut ctl: mpsc::Receiver<Out>,
    mut data: mpsc::Receiver<Vec<Prepared>>,
    cancel: &CancellationToken,
    activity: &Activity,
    shared: &Shared,
    stall: Duration,
) -> io::Result<()> {
    let metrics = shared.core.metrics();
    let mut out = Outbox::new(stall);
    let (mut ctl_open, mut data_open) = (true, true);
    // Budget permits of bodies in the outbox, released once written.
    let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
    while ctl_open || data_open {
        let batch = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            c = ctl.recv(), if ctl_open => match c {
                Some(o) => { out.control(o); None }
                None => { ctl_open = false; None }
            },
            d = data.recv(), if data_open => match d {
                Some(b) => Some(b),
                None => { data_open = false; None }
            },
        };
        for p in batch.into_iter().flatten() {
            // Control replies go first, between block frames.
            while let Ok(o) = ctl.try_recv() {
                out.control(o);
            }
            out.push(p.head);
            held.extend(p.permits);
            match p.body {
                Body::None => {}
                Body::Mem(b) => out.push(b),
                Body::File { file, offset, len } => {
                    out.send_file(wr, &file, offset, len).await?;
                }
            }
            if let Some(n) = p.block_bytes {
                metrics.blocks_served.inc();
                metrics.bytes_served.inc_by(n);
            }
            metrics
                .rpcs
                .with_label_values(&[
                    p.method,
                    if p.block_bytes.is_some() {
                        "OK"
                    } else {
                        "FAILED"
                    },
                ])
                .inc();
        }
        while let Ok(o) = ctl.try_recv() {
            out.control(o);
        }
        out.flush(wr, false).await?;
        held.clear();
        activity.touch();
    }
    Ok(())
}
