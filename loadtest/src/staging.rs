//! `loadtest staging`: the staging server against nginx and a plain disk write, same run,
//! same disk, interleaved runs, medians reported.
//!
//! - Upload: POST of an N MiB bundle (from memory) until the 201, versus writing the same
//!   bytes to a file on the same disk with `fsync` (the server's commit is durable too).
//! - Download: GET of the committed object through the API (token check, digest headers)
//!   versus nginx serving that very object file with sendfile.
//! - Small downloads: requests/s for a 4 KiB bundle at a given concurrency, versus nginx.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::nginx::Nginx;
use crate::procs::{start_staging, vm_hwm, work_dir};
use crate::stats::{mb_per_s, median, round};

/// Arguments of `loadtest staging`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Bundle size for the throughput runs, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Runs of each throughput measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Size of the small bundle for the requests/s runs.
    #[arg(long, default_value_t = 4096)]
    small_bytes: usize,
    /// Concurrent clients in the requests/s runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Duration of each requests/s run.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Work directory (must be on the disk under test); default: target/loadtest.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs the benchmark and returns the report.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let work = work_dir(args.dir.as_deref())?;
    let data_dir = work.path().join("staging");
    let (mut server, api) = start_staging(&data_dir, &["--max-upload-size", "4GiB"]).await?;
    let pid = server.id().context("server pid")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let idle_rss = vm_hwm(pid)?;

    let size = args.size_mib << 20;
    eprintln!("generating {} MiB", args.size_mib);
    let data = Bytes::from(pseudo_random(size as usize));

    // --- upload vs plain write -------------------------------------------------------------
    let mut write_mbps = Vec::new();
    let mut upload_mbps = Vec::new();
    let mut last: Option<(String, String)> = None;
    for i in 0..args.runs {
        let path = work.path().join(format!("plain-{i}"));
        let d = data.clone();
        let took = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
            let start = Instant::now();
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&d)?;
            f.sync_all()?;
            let took = start.elapsed();
            std::fs::remove_file(&path)?;
            Ok(took)
        })
        .await??;
        write_mbps.push(mb_per_s(size, took));

        let start = Instant::now();
        let res = client
            .post(format!("{api}/api/v1/resources?namespace=bench"))
            .header("content-type", "application/gzip")
            .body(data.clone())
            .send()
            .await?;
        if res.status() != 201 {
            bail!("upload answered {}", res.status());
        }
        let v: Value = res.json().await?;
        upload_mbps.push(mb_per_s(size, start.elapsed()));
        let id = v["id"].as_str().context("id")?.to_owned();
        let token = v["token"].as_str().context("token")?.to_owned();
        if let Some((old, tok)) = last.replace((id, token)) {
            client
                .delete(format!("{api}/api/v1/resources/{old}"))
                .bearer_auth(tok)
                .send()
                .await?;
        }
        eprintln!(
            "upload run {i}: write {:.0} MB/s, upload {:.0} MB/s",
            write_mbps[i], upload_mbps[i]
        );
    }
    let (id, token) = last.context("no upload")?;

    // --- download vs nginx -----------------------------------------------------------------
    let objects = data_dir.join("objects/resources");
    let nginx = Nginx::start(&objects, work.path()).await?;
    let nginx_url = format!("http://127.0.0.1:{}/{id}", nginx.port);
    let api_url = format!("{api}/api/v1/resources/{id}/content");
    let mut dl_api = Vec::new();
    let mut dl_nginx = Vec::new();
    for i in 0..args.runs {
        dl_nginx.push(mb_per_s(
            size,
            fetch(&client, &nginx_url, None, size).await?,
        ));
        dl_api.push(mb_per_s(
            size,
            fetch(&client, &api_url, Some(&token), size).await?,
        ));
        eprintln!(
            "download run {i}: nginx {:.0} MB/s, staging {:.0} MB/s",
            dl_nginx[i], dl_api[i]
        );
    }
    let loaded_rss = vm_hwm(pid)?;

    // --- small downloads: requests/s -------------------------------------------------------
    let small = Bytes::from(pseudo_random(args.small_bytes));
    let v: Value = client
        .post(format!("{api}/api/v1/resources?namespace=bench"))
        .header("content-type", "application/gzip")
        .body(small)
        .send()
        .await?
        .json()
        .await?;
    let small_id = v["id"].as_str().context("id")?.to_owned();
    let small_token = v["token"].as_str().context("token")?.to_owned();
    let small_api = format!("{api}/api/v1/resources/{small_id}/content");
    let small_nginx = format!("http://127.0.0.1:{}/{small_id}", nginx.port);
    let dur = Duration::from_secs(args.seconds);
    let mut rps_api = Vec::new();
    let mut rps_nginx = Vec::new();
    for i in 0..3 {
        rps_nginx.push(hammer(&client, &small_nginx, None, args.concurrency, dur).await?);
        rps_api.push(
            hammer(
                &client,
                &small_api,
                Some(&small_token),
                args.concurrency,
                dur,
            )
            .await?,
        );
        eprintln!(
            "small run {i}: nginx {:.0} req/s, staging {:.0} req/s",
            rps_nginx[i], rps_api[i]
        );
    }

    let _ = server.kill().await;
    let (w, u, dn, da) = (
        median(&write_mbps),
        median(&upload_mbps),
        median(&dl_nginx),
        median(&dl_api),
    );
    let (rn, ra) = (median(&rps_nginx), median(&rps_api));
    Ok(json!({
        "benchmark": "staging",
        "bundle_mib": args.size_mib,
        "runs": args.runs,
        "upload": {
            "plain_write_fsync_mb_s": round(w, 0),
            "staging_upload_mb_s": round(u, 0),
            "ratio": round(u / w, 3),
            "goal_ratio": 0.8,
            "samples": { "plain_write": write_mbps.iter().map(|x| round(*x, 0)).collect::<Vec<_>>(),
                         "upload": upload_mbps.iter().map(|x| round(*x, 0)).collect::<Vec<_>>() },
        },
        "download": {
            "nginx_mb_s": round(dn, 0),
            "staging_mb_s": round(da, 0),
            "ratio": round(da / dn, 3),
            "goal_ratio": 0.9,
            "samples": { "nginx": dl_nginx.iter().map(|x| round(*x, 0)).collect::<Vec<_>>(),
                         "staging": dl_api.iter().map(|x| round(*x, 0)).collect::<Vec<_>>() },
        },
        "small_downloads": {
            "bytes": args.small_bytes,
            "concurrency": args.concurrency,
            "nginx_req_s": round(rn, 0),
            "staging_req_s": round(ra, 0),
            "ratio": round(ra / rn, 3),
        },
        "staging_peak_rss_bytes": { "idle": idle_rss, "after_load": loaded_rss },
    }))
}

/// Downloads `url` once, discarding the body; returns the time taken.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    expect: u64,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await?;
    if !res.status().is_success() {
        bail!("GET {url}: {}", res.status());
    }
    let mut n = 0u64;
    let mut body = res.bytes_stream();
    while let Some(c) = body.next().await {
        n += c?.len() as u64;
    }
    if n != expect {
        bail!("GET {url}: {n} bytes, expected {expect}");
    }
    Ok(start.elapsed())
}

/// `concurrency` clients GET `url` in a loop for `dur`; returns completed requests per second.
async fn hammer(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    concurrency: usize,
    dur: Duration,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, token, done) = (
            client.clone(),
            url.to_owned(),
            token.map(str::to_owned),
            Arc::clone(&done),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut req = client.get(&url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let res = req.send().await?;
                if !res.status().is_success() {
                    bail!("GET {url}: {}", res.status());
                }
                res.bytes().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn pseudo_random(n: usize) -> Vec<u8> {
    pseudo_random_seeded(n, 0)
}

/// `n` incompressible bytes, different for each seed.
pub(crate) fn pseudo_random_seeded(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v
}
