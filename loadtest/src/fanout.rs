//! `loadtest staging-fanout`: a job's init-containers starting at once. `--fetches` fetches
//! (1,000) of one submission (`--files` files of `--file-kib` each), at most `--concurrency`
//! in flight, each as an init-container runs it (`staging_client::fetch::run`: listing, every
//! file downloaded, its digest checked, written to its own directory), against:
//!
//! - **nginx** serving the same files to a fetcher that does what `fetch` does (download,
//!   digest, write): the physical limit of this machine;
//! - **one replica** of the staging server (release build, local store);
//! - with `--store-url`, one replica on that store serving the bytes, one answering with
//!   redirects to presigned URLs (`--presigned-downloads`: the bytes come from the store),
//!   and **three replicas** (`--replicated`) on that store behind a
//!   round-robin TCP proxy (the Service), rolled one by one in the middle of the run (a new
//!   replica ready, then an old one stopped with SIGTERM, as `maxSurge: 1, maxUnavailable: 0`
//!   does).
//!
//! Reported per case, medians of `--runs`: wall time until every fetch is staged, the
//! aggregate throughput, the per-fetch time (p50, p99, max), failed fetches, and the servers'
//! CPU-seconds per GB served. The fetch directories are deleted as soon as a fetch is
//! checked, so the run's disk use is `--concurrency` fetches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use staging_client::fetch::FetchArgs;
use staging_client::stage::{LocalFile, StageRequest, stage};
use tokio::sync::Semaphore;

use crate::nginx::Nginx;
use crate::procs::{start_staging, work_dir};
use crate::spark::{cpu_seconds, percentile};
use crate::stats::{median, round};

mod proxy;

/// Arguments of `loadtest staging-fanout`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Fetches of the submission (init-containers).
    #[arg(long, default_value_t = 1000)]
    fetches: usize,
    /// Fetches in flight at once.
    #[arg(long, default_value_t = 250)]
    concurrency: usize,
    /// Files in the submission.
    #[arg(long, default_value_t = 20)]
    files: usize,
    /// Size of each file, in KiB.
    #[arg(long, default_value_t = 256)]
    file_kib: usize,
    /// Runs of each case (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Object store of the replicated case (e.g. s3://bucket/prefix); without it, that case
    /// is left out.
    #[arg(long)]
    store_url: Option<String>,
    /// Store options of the replicated case (KEY=VALUE), repeatable.
    #[arg(long = "store-option")]
    store_options: Vec<String>,
    /// Work directory; default: target/loadtest.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// One run of one case.
#[derive(Debug, Default, Clone)]
struct Run {
    wall: f64,
    per_fetch: Vec<f64>,
    failed: usize,
    bytes: u64,
    cpu: f64,
}

impl Run {
    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.wall / 1e6
    }
    fn cpu_per_gb(&self) -> f64 {
        self.cpu / (self.bytes as f64 / 1e9)
    }
}

fn report(runs: &[Run]) -> Value {
    let pick = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    json!({
        "runs": runs.len(),
        "wall_s": round(pick(&|r| r.wall), 2),
        "throughput_mb_s": round(pick(&|r| r.mbps()), 1),
        "fetch_p50_s": round(pick(&|r| percentile(&mut r.per_fetch.clone(), 0.5)), 3),
        "fetch_p99_s": round(pick(&|r| percentile(&mut r.per_fetch.clone(), 0.99)), 3),
        "fetch_max_s": round(pick(&|r| percentile(&mut r.per_fetch.clone(), 1.0)), 3),
        // Every failed fetch of every run: the goal is none at all.
        "failed": runs.iter().map(|r| r.failed).sum::<usize>(),
        "server_cpu_s_per_gb": round(pick(&|r| r.cpu_per_gb()), 2),
    })
}

/// Runs `fetches` fetches, `concurrency` at a time, of `one(i, dir)`; per-fetch times and
/// failures.
async fn fan_out<F, Fut>(args: &Args, dest: &Path, one: F) -> (f64, Vec<f64>, usize)
where
    F: Fn(usize, PathBuf) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.fetches);
    for i in 0..args.fetches {
        let (slots, one) = (slots.clone(), one.clone());
        let dir = dest.join(format!("pod-{i}"));
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.expect("never closed");
            let began = Instant::now();
            std::fs::create_dir_all(&dir)?;
            let r = one(i, dir.clone()).await;
            let took = began.elapsed().as_secs_f64();
            let _ = std::fs::remove_dir_all(&dir);
            r.map(|()| took)
        }));
    }
    let (mut times, mut failed) = (Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok(Ok(took)) => times.push(took),
            Ok(Err(e)) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("fetch failed: {e:#}");
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("fetch panicked: {e}");
            }
        }
    }
    (start.elapsed().as_secs_f64(), times, failed)
}

/// What `fetch` does for one file, against a plain static server: download, digest, write to
/// a temporary file off the runtime's threads, fsync, rename into place.
async fn fetch_plain(
    client: &reqwest::Client,
    url: &str,
    want: &str,
    to: &Path,
) -> anyhow::Result<()> {
    let res = client.get(url).send().await?.error_for_status()?;
    let body = res.bytes().await?;
    let got = hex::encode(Sha256::digest(&body));
    anyhow::ensure!(got == want, "{url}: digest {got}, want {want}");
    let to = to.to_owned();
    tokio::task::spawn_blocking(move || {
        let dir = to.parent().context("no directory")?;
        let mut part = tempfile::Builder::new()
            .prefix(".fetch-")
            .suffix(".part")
            .tempfile_in(dir)?;
        std::io::Write::write_all(&mut part, &body)?;
        part.as_file().sync_all()?;
        part.persist_noclobber(&to)?;
        anyhow::Ok(())
    })
    .await?
}

/// Runs the benchmark and returns the report.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let work = work_dir(args.dir.as_deref())?;
    let src = work.path().join("job");
    std::fs::create_dir_all(&src)?;
    let mut files = Vec::with_capacity(args.files);
    let mut digests = Vec::with_capacity(args.files);
    for i in 0..args.files {
        let name = format!("dep-{i}.jar");
        let path = src.join(&name);
        let bytes = crate::staging::pseudo_random_seeded(args.file_kib << 10, i as u64);
        digests.push((name.clone(), hex::encode(Sha256::digest(&bytes))));
        std::fs::write(&path, bytes)?;
        files.push(LocalFile { path, name });
    }
    let per_fetch_bytes = (args.files * (args.file_kib << 10)) as u64;
    let total = per_fetch_bytes * args.fetches as u64;
    let dest = work.path().join("pods");
    let digests = Arc::new(digests);

    let mut cases: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for _ in 0..args.runs {
        // nginx: the same files, fetched as `fetch` would.
        let ng = Nginx::start(&src, work.path()).await?;
        let base = format!("http://127.0.0.1:{}", ng.port);
        let cpu0 = ng.cpu_seconds()?;
        let d = digests.clone();
        let (wall, per_fetch, failed) = fan_out(&args, &dest, move |_, dir| {
            let (d, base) = (d.clone(), base.clone());
            async move {
                // One client per fetch: each init-container is its own process.
                let client = reqwest::Client::new();
                for (name, sha) in d.iter() {
                    fetch_plain(&client, &format!("{base}/{name}"), sha, &dir.join(name)).await?;
                }
                Ok(())
            }
        })
        .await;
        let cpu = ng.cpu_seconds()? - cpu0;
        drop(ng);
        cases.entry("nginx").or_default().push(Run {
            wall,
            per_fetch,
            failed,
            bytes: total,
            cpu,
        });

        // One replica, local store.
        let data = work.path().join("staging");
        let _ = std::fs::remove_dir_all(&data);
        let (server, url) = start_staging(&data, &["--namespace-quota-bytes", "1Ti"]).await?;
        let pid = server.id().context("server pid")?;
        let run = fetch_through(&args, &dest, &url, &files, total, &[pid], |_| async {}).await?;
        cases.entry("one replica").or_default().push(run);
        drop(server);

        if let Some(store) = &args.store_url {
            for (name, presigned) in [
                ("one replica on the store", false),
                ("one replica, presigned redirects", true),
            ] {
                let data = work.path().join("staging-store");
                let _ = std::fs::remove_dir_all(&data);
                let mut flags = store_flags(&args, store, "single");
                flags.push("--namespace-quota-bytes=1Ti".into());
                if presigned {
                    flags.push("--presigned-downloads".into());
                }
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                let (server, url) = start_staging(&data, &flags).await?;
                let pid = server.id().context("server pid")?;
                let run =
                    fetch_through(&args, &dest, &url, &files, total, &[pid], |_| async {}).await?;
                cases.entry(name).or_default().push(run);
                drop(server);
            }
            for (name, roll) in [("three replicas", false), ("three replicas, rolled", true)] {
                let run = replicated(&args, work.path(), &dest, store, &files, total, roll).await?;
                cases.entry(name).or_default().push(run);
            }
        }
    }
    let nginx = report(&cases["nginx"]);
    let mut out = serde_json::Map::new();
    for (name, runs) in &cases {
        let mut r = report(runs);
        let ratio = r["throughput_mb_s"].as_f64().unwrap_or(0.0)
            / nginx["throughput_mb_s"].as_f64().unwrap_or(f64::NAN);
        r["throughput_vs_nginx"] = json!(round(ratio, 2));
        out.insert((*name).to_owned(), r);
    }
    Ok(json!({
        "benchmark": "staging-fanout",
        "fetches": args.fetches,
        "concurrency": args.concurrency,
        "files": args.files,
        "file_kib": args.file_kib,
        "bytes_per_fetch": per_fetch_bytes,
        "cases": out,
    }))
}

/// Stages the submission on `url` and fans out real fetches of it; `during(elapsed)` is
/// polled while they run (the rolling restart). CPU of the processes `pids`.
async fn fetch_through<D, DF>(
    args: &Args,
    dest: &Path,
    url: &str,
    files: &[LocalFile],
    total: u64,
    pids: &[u32],
    during: D,
) -> anyhow::Result<Run>
where
    D: FnOnce(Duration) -> DF,
    DF: std::future::Future<Output = ()>,
{
    let client = reqwest::Client::new();
    let staged = stage(
        &client,
        &StageRequest {
            server: url.to_owned(),
            namespace: "fanout".into(),
            labels: BTreeMap::from([("spark-role".to_owned(), "driver".to_owned())]),
            ttl: None,
            unused_ttl: None,
            credential: None,
            files: files.to_vec(),
            retries: 3,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.message))?;
    let token_file = dest.with_extension("token");
    std::fs::write(&token_file, &staged.token)?;
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p).unwrap_or(0.0)).sum();
    let (id, server) = (staged.id.clone(), url.to_owned());
    let fan = fan_out(args, dest, move |_, dir| {
        let fetch = FetchArgs {
            server: server.clone(),
            id: id.clone(),
            token_file: token_file.clone(),
            dest: dir,
            file_list: None,
            sha256: None,
            ca_file: None,
            v0: false,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            retries: 6,
            max_entries: 100_000,
            max_entry_size: service_runtime::size::ByteSize(2 << 30),
            max_total_size: service_runtime::size::ByteSize(8 << 30),
            max_ratio: 1000,
        };
        async move {
            staging_client::fetch::run(fetch)
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!(e.message))
        }
    });
    let started = Instant::now();
    let (fan, ()) = tokio::join!(fan, during(started.elapsed()));
    let (wall, per_fetch, failed) = fan;
    let cpu1: f64 = pids.iter().map(|p| cpu_seconds(*p).unwrap_or(0.0)).sum();
    Ok(Run {
        wall,
        per_fetch,
        failed,
        bytes: total,
        cpu: cpu1 - cpu0,
    })
}

/// Three replicas on `store` behind the proxy; with `roll`, rolled one by one while the
/// fetches run.
async fn replicated(
    args: &Args,
    work: &Path,
    dest: &Path,
    store: &str,
    files: &[LocalFile],
    total: u64,
    roll: bool,
) -> anyhow::Result<Run> {
    let mut flags = store_flags(args, store, "replicated");
    flags.extend([
        "--replicated".into(),
        "--namespace-quota-bytes=1Ti".into(),
        "--signing-key=loadtest-fanout-shared-signing-key-0123456789".into(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut replicas = Vec::new();
    for i in 0..3 {
        let dir = work.join(format!("replica-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        replicas.push(start_staging(&dir, &flags).await?);
    }
    let proxy = proxy::Proxy::start(replicas.iter().map(|(_, u)| u.clone()).collect()).await?;
    let pids: Vec<u32> = replicas.iter().filter_map(|(c, _)| c.id()).collect();
    let url = proxy.url();
    if !roll {
        return fetch_through(args, dest, &url, files, total, &pids, |_| async {}).await;
    }
    let rolled = std::sync::Mutex::new(Ok(()));
    let roll_ended = std::sync::Mutex::new(None);
    let roll = async {
        // Starts with the fan-out (joined with it).
        let began = Instant::now();
        // Let the fan-out get going, then roll every replica.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..3 {
            let dir = work.join(format!("replica-new-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            let new = match start_staging(&dir, &flags).await {
                Ok(new) => new,
                Err(e) => {
                    *rolled.lock().expect("not poisoned") =
                        Err(e.context(format!("replacement replica {i} did not start")));
                    return;
                }
            };
            proxy.add(new.1.clone());
            let (mut old, old_url) = replicas.remove(0);
            proxy.remove(&old_url);
            if let Some(pid) = old.id() {
                // SIGTERM: the server drains its transfers, as a pod's termination does.
                let _ = std::process::Command::new("kill")
                    .arg(pid.to_string())
                    .status();
            }
            let _ = tokio::time::timeout(Duration::from_secs(40), old.wait()).await;
            replicas.push(new);
        }
        *roll_ended.lock().expect("not poisoned") = Some(began.elapsed());
    };
    let mut run = fetch_through(args, dest, &url, files, total, &pids, |_| roll).await?;
    // A run whose rollout did not happen, or ended after the fetches did, is not a rolled run.
    rolled.into_inner().expect("not poisoned")?;
    let roll_s = roll_ended
        .into_inner()
        .expect("not poisoned")
        .map_or(f64::INFINITY, |t| t.as_secs_f64());
    anyhow::ensure!(
        roll_s <= run.wall,
        "the fetches ended ({:.1} s) before the rollout did ({roll_s:.1} s): use more --fetches",
        run.wall
    );
    // The rolled replicas' CPU left with them: not reported.
    run.cpu = f64::NAN;
    Ok(run)
}

/// The flags that put a server on a fresh prefix of `store`.
fn store_flags(args: &Args, store: &str, what: &str) -> Vec<String> {
    let mut flags = vec![format!(
        "--store-url={store}/fanout-{what}-{}-{}",
        std::process::id(),
        rand_suffix()
    )];
    flags.extend(
        args.store_options
            .iter()
            .map(|o| format!("--store-option={o}")),
    );
    flags
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64 % 1_000_000)
}
