//! `loadtest staging-dedup`: whether the answer time of `PUT /api/v1/blobs/{sha256}` tells a
//! tenant that another namespace stores the content (a timing side channel of the
//! deduplication).
//!
//! For each size and run, namespace `owner` stores a file X (not timed). Then a namespace
//! that holds nothing, `probe-<run>`, sends X (held by another namespace) and a new file Y of
//! the same size, in alternating order so that neither case always runs first, over one
//! kept-alive connection. Reported per size: the median answer time of each case, their
//! ratio, the median of the paired differences and the share of runs where the held file was
//! answered faster (about 0.5 when the two cannot be told apart). For contrast it also times
//! the probe's body-less second send of X, which the server answers at once (the namespace
//! holds it itself: that tells the sender only about its own files), and checks that a
//! body-less send of another namespace's file is refused.

use std::time::Instant;

use anyhow::ensure;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::procs::{start_staging, work_dir};
use crate::staging::pseudo_random_seeded;
use crate::stats::{median, round};

/// Arguments of `loadtest staging-dedup`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// File sizes to compare, in bytes (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [4096usize, 1 << 20, 32 << 20])]
    sizes: Vec<usize>,
    /// Runs of each size (medians are reported).
    #[arg(long, default_value_t = 21)]
    runs: usize,
    /// Control run: `owner` stores an unrelated file, so that both cases send new content;
    /// what differs between them then is the method's own bias.
    #[arg(long)]
    control: bool,
    /// Work directory (must be on the disk under test); default: target/loadtest.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// Runs the benchmark and returns the report.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let work = work_dir(args.dir.as_deref())?;
    let (_server, api) = start_staging(&work.path().join("staging"), &[]).await?;
    // One connection at a time, kept alive: no connection set-up inside a timing.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;

    let mut results = Vec::new();
    for (s, &size) in args.sizes.iter().enumerate() {
        let (mut held, mut new, mut own, mut diffs) = (vec![], vec![], vec![], vec![]);
        for run in 0..args.runs {
            let seed = (s * 1_000_000 + run * 2) as u64;
            let x = pseudo_random_seeded(size, seed);
            let y = pseudo_random_seeded(size, seed + 1);
            let probe = format!("probe-{s}-{run}");
            let stored = if args.control {
                pseudo_random_seeded(size, u64::MAX - seed)
            } else {
                x.clone()
            };
            ensure!(
                put(&client, &api, "owner", &stored).await?.0 == 201,
                "owner send"
            );
            let (mut t_held, mut t_new) = (0.0, 0.0);
            for case in 0..2 {
                if (case + run) % 2 == 0 {
                    let (status, t) = put(&client, &api, &probe, &x).await?;
                    ensure!(status == 201, "held file answered {status}");
                    t_held = t;
                } else {
                    let (status, t) = put(&client, &api, &probe, &y).await?;
                    ensure!(status == 201, "new file answered {status}");
                    t_new = t;
                }
            }
            held.push(t_held);
            new.push(t_new);
            diffs.push(t_held - t_new);
            let (status, t) = put_as(&client, &api, &probe, &hex(&x), &[]).await?;
            ensure!(status == 200, "own file answered {status}");
            own.push(t);
        }
        // Knowing another namespace's digest is no way to claim its file without the bytes.
        let x = pseudo_random_seeded(size, (s * 1_000_000) as u64);
        let sha = hex(&x);
        let bodyless = client
            .put(format!(
                "{api}/api/v1/blobs/{sha}?namespace=probe-bodyless-{s}"
            ))
            .send()
            .await?
            .status()
            .as_u16();
        let faster = diffs.iter().filter(|d| **d < 0.0).count() as f64 / diffs.len() as f64;
        eprintln!(
            "{size} B: held by another {:.3} ms, new {:.3} ms, own {:.3} ms",
            median(&held),
            median(&new),
            median(&own)
        );
        results.push(json!({
            "size_bytes": size,
            "held_by_another_ms": round(median(&held), 3),
            "new_ms": round(median(&new), 3),
            "held_vs_new": round(median(&held) / median(&new).max(1e-9), 3),
            "median_paired_difference_ms": round(median(&diffs), 3),
            "held_answered_faster_share": round(faster, 2),
            "own_held_ms": round(median(&own), 3),
            "bodyless_send_of_another_namespaces_file": bodyless,
        }));
    }
    Ok(json!({
        "benchmark": "staging-dedup",
        "control": args.control,
        "runs": args.runs,
        "sizes": results,
    }))
}

/// Sends `bytes` as a blob of `ns`; the status and the time to the answer's end, in ms.
async fn put(
    client: &reqwest::Client,
    api: &str,
    ns: &str,
    bytes: &[u8],
) -> anyhow::Result<(u16, f64)> {
    put_as(client, api, ns, &hex(bytes), bytes).await
}

/// Sends `bytes` as the blob `sha` of `ns`.
async fn put_as(
    client: &reqwest::Client,
    api: &str,
    ns: &str,
    sha: &str,
    bytes: &[u8],
) -> anyhow::Result<(u16, f64)> {
    let url = format!("{api}/api/v1/blobs/{sha}?namespace={ns}");
    let body = bytes.to_vec();
    let start = Instant::now();
    let res = client.put(url).body(body).send().await?;
    let status = res.status().as_u16();
    res.bytes().await?;
    Ok((status, start.elapsed().as_secs_f64() * 1e3))
}

fn hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
