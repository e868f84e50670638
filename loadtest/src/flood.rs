//! `loadtest shuffle-flood`: resident memory of the shuffle service before, during and after a
//! flood of Spark-protocol connections that each send one RPC and close; the question is
//! whether memory returns close to idle once the connections are gone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use spark_protocol::client::Client;
use spark_protocol::message::BlockTransferMessage as Btm;

use crate::procs::{vm_hwm, vm_rss, work_dir};
use crate::shuffle::{admin_metrics, metric, start_service};
use crate::stats::median;

/// Arguments of `shuffle-flood`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Connections held open at once (the service's default limit is 4096).
    #[arg(long, default_value_t = 4_000)]
    connections: usize,
    /// Floods (median reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Work directory; default target/loadtest.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Opens `n` connections, each answered once, and holds them.
async fn open(addr: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Client::connect(addr).await.context("connect")?;
        // An RPC the service answers with a failure: the connection's buffers and tasks exist.
        let _ = c
            .call(&Btm::GetLocalDirsForExecutors {
                app_id: "flood".into(),
                exec_ids: vec!["1".into()],
            })
            .await?;
        held.push(c);
    }
    Ok(held)
}

/// Waits (bounded) until the service counts no Spark connection.
async fn drained(admin: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&admin_metrics(admin).await?, "shuffle_spark_connections") != Some(0.0) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "connections not closed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the measurement.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let work = work_dir(args.dir.as_deref())?;
    let svc = start_service(work.path()).await?;
    // Let start-up settle (the first usage scan, the listeners).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = vm_rss(svc.pid)?;
    let (mut during, mut after) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let held = open(&svc.spark, args.connections).await?;
        during.push(vm_rss(svc.pid)? as f64);
        drop(held);
        drained(svc.admin).await?;
        // The allocator returns freed memory on its own schedule; sample for up to 2 s.
        let mut last = vm_rss(svc.pid)?;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = last.min(vm_rss(svc.pid)?);
        }
        after.push(last as f64);
        eprintln!(
            "flood {}: {} connections, RSS during {:.1} MiB, after {:.1} MiB",
            run + 1,
            args.connections,
            during[run] / 1048576.0,
            after[run] / 1048576.0
        );
    }
    let mib = |b: f64| (b / 1048576.0 * 10.0).round() / 10.0;
    Ok(json!({
        "benchmark": "shuffle-flood",
        "connections": args.connections,
        "runs": args.runs,
        "rss_idle_mib": mib(idle as f64),
        "rss_during_mib_median": mib(median(&during)),
        "rss_after_mib_median": mib(median(&after)),
        "rss_after_over_idle": ((median(&after) / idle as f64) * 100.0).round() / 100.0,
        "vm_hwm_mib": mib(vm_hwm(svc.pid)? as f64),
    }))
}
