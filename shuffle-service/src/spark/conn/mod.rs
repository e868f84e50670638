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
//!
//! - [`reader`]: frames in, control replies, requests queued;
//! - [`prepare`]: blocks resolved and opened on the blocking pool;
//! - [`writer`]: replies and bodies out;
//! - here: the three tasks wired together, and the one function that counts Spark's requests.

mod prepare;
mod reader;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::admission::Ticket;
use super::budget::FrameMemory;
use super::channel::Out;
use super::deadline::{Activity, Deadline};
use super::handler::Shared;
use super::transport::Wire;
use crate::core::{Block, Executor};
use crate::metrics::Metrics;
use reader::Reader;
use spark_protocol::frame::StreamChunkId;

/// Limits of one connection and the budgets shared by all.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
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
pub(crate) async fn serve(
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

    let preparer = tokio::spawn(prepare::prepare_loop(
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
            let r =
                writer::write_loop(&mut wr, ctl_rx, prep_rx, &cancel, &activity, &shared, stall)
                    .await;
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

/// Counts one Spark request in the RPC metrics, the one place they are counted (the gRPC API's
/// are counted by a layer, `crate::grpc_metrics`): `shuffle_rpcs_total` under the method
/// `spark/<name>` by outcome, and `shuffle_rpc_duration_seconds` with the time to the answer
/// when one is given (RPCs; chunk and stream requests are counted when written, without it).
fn count_request(metrics: &Metrics, name: &str, ok: bool, elapsed: Option<Duration>) {
    let method = format!("spark/{name}");
    metrics
        .rpcs
        .with_label_values(&[method.as_str(), if ok { "OK" } else { "FAILED" }])
        .inc();
    if let Some(elapsed) = elapsed {
        metrics
            .rpc_duration
            .with_label_values(&[method.as_str()])
            .observe(elapsed.as_secs_f64());
    }
}
