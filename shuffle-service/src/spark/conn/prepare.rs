//! The preparer of a connection: resolves and opens the blocks of chunk and stream requests
//! in request order, in batches on the blocking pool, reads small bodies into memory within
//! the connection's and the service's budgets, and hands the writer each block ready to send
//! (or the failure to send instead).

use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{BATCH, Body, DataJob, Limits, MAX_IN_FRAME, Prepared, ReplyTo, UNIT};
use crate::core::Block;
use crate::error::failure_text;
use crate::spark::handler::Shared;
use spark_protocol::frame::{self, Message};

pub(super) async fn prepare_loop(
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
        ReplyTo::Chunk(_) => "ChunkFetchRequest",
        ReplyTo::Stream(_) => "StreamRequest",
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
