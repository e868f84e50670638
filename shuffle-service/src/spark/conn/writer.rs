//! The writer of a connection: sends control replies first, between block frames, and block
//! bodies from memory in batches or from file to socket with `sendfile`; it releases each
//! batch's budget once written and counts what it served.

use std::io;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Body, Prepared, count_request};
use crate::spark::channel::Out;
use crate::spark::deadline::Activity;
use crate::spark::handler::Shared;
use crate::spark::transport::{Outbox, WriteSide};

pub(super) async fn write_loop(
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
            count_request(metrics, p.method, p.block_bytes.is_some(), None);
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
