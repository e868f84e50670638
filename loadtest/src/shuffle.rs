//! `loadtest shuffle-fetch` and `loadtest shuffle-cleanup`: the shuffle service (gRPC and its
//! Spark-protocol listener) against raw TCP, and its cleanup against `rm -rf`, same run,
//! medians reported.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use shuffle_proto::v1 as pb;
use shuffle_proto::v1::shuffle_client::ShuffleClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

use crate::procs::{free_port, release_bin, vm_hwm, wait_listening};
use crate::stats::{median, round};

/// The application of the benchmark.
const APP: &str = "loadtest-app";

/// Arguments of `shuffle-fetch`.
#[derive(Debug, clap::Args)]
pub(crate) struct FetchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Runs per configuration (median reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// MiB of shuffle data written for the fetches (kept in the page cache).
    #[arg(long, default_value_t = 256)]
    data_mib: u64,
    /// Work directory; default target/loadtest.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Arguments of `shuffle-cleanup`.
#[derive(Debug, clap::Args)]
pub(crate) struct CleanupArgs {
    /// Files in the application's tree (spread over 64 subdirectories).
    #[arg(long, default_value_t = 1_000_000)]
    files: u64,
    /// Work directory; default target/loadtest.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub(crate) struct Service {
    child: Child,
    pub(crate) grpc: String,
    pub(crate) spark: String,
    pub(crate) admin: u16,
    pub(crate) pid: u32,
}

pub(crate) async fn start_service(work: &Path) -> anyhow::Result<Service> {
    start_service_with(work, &[]).await
}

/// [`start_service`] with extra arguments.
pub(crate) async fn start_service_with(work: &Path, extra: &[&str]) -> anyhow::Result<Service> {
    let (g, a, s) = (free_port()?, free_port()?, free_port()?);
    let child = Command::new(release_bin("shuffle-service")?)
        .args(extra)
        .args([
            "--grpc-listen",
            &format!("127.0.0.1:{g}"),
            "--admin-listen",
            &format!("127.0.0.1:{a}"),
            "--spark-listen",
            &format!("127.0.0.1:{s}"),
        ])
        .arg("--data-dir")
        .arg(work.join("svc"))
        .arg("--volume")
        .arg({
            std::fs::create_dir_all(work.join("vol"))?;
            format!("{}:hostPath", work.join("vol").display())
        })
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting shuffle-service")?;
    let pid = child.id().context("pid")?;
    wait_listening(([127, 0, 0, 1], g).into(), Duration::from_secs(20)).await?;
    wait_listening(([127, 0, 0, 1], a).into(), Duration::from_secs(20)).await?;
    Ok(Service {
        child,
        grpc: format!("http://127.0.0.1:{g}"),
        spark: format!("127.0.0.1:{s}"),
        admin: a,
        pid,
    })
}

pub(crate) async fn client(url: &str) -> anyhow::Result<ShuffleClient<Channel>> {
    let ch = Endpoint::from_shared(url.to_owned())?
        .initial_stream_window_size(2 << 20)
        .initial_connection_window_size(16 << 20)
        // Let the server send 1 MiB DATA frames instead of HTTP/2's default 16 KiB.
        .max_frame_size(1 << 20)
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(ShuffleClient::new(ch).max_decoding_message_size(8 << 20))
}

pub(crate) fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    r
}

/// Registers an app and one executor whose directories are `dirs`; returns the token.
async fn register(
    c: &mut ShuffleClient<Channel>,
    app: &str,
    dirs: &[PathBuf],
) -> anyhow::Result<String> {
    let token = c
        .register_application(pb::RegisterApplicationRequest {
            app_id: app.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .token;
    for d in dirs {
        std::fs::create_dir_all(d)?;
    }
    c.register_executor(authed(
        pb::RegisterExecutorRequest {
            app_id: app.into(),
            exec_id: "1".into(),
            local_dirs: dirs.iter().map(|d| d.display().to_string()).collect(),
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "loadtest".into(),
        },
        &token,
    ))
    .await?;
    Ok(token)
}

/// Runs the fetch benchmark.
pub(crate) async fn fetch(args: FetchArgs) -> anyhow::Result<Value> {
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/loadtest"));
    std::fs::create_dir_all(&base)?;
    let work = tempfile::tempdir_in(&base)?;
    let mut svc = start_service(work.path()).await?;
    let idle_rss = vm_hwm(svc.pid)?;
    let mut c = client(&svc.grpc).await?;
    let dirs = vec![
        work.path().join("vol/app/exec-1/blockmgr-a"),
        work.path().join("vol/app/exec-1/blockmgr-b"),
    ];
    let token = register(&mut c, APP, &dirs).await?;

    // Map outputs: 32 maps per block size, each with partitions of exactly that size.
    let total = args.data_mib << 20;
    let mut layouts = Vec::new();
    for (shuffle, block) in [(1i32, 1u64 << 20), (2, 32 << 10)] {
        let maps = 32u64;
        let parts = (total / 2 / maps / block).max(1);
        let payload = bytes::Bytes::from(vec![0x5au8; (parts * block) as usize]);
        for map in 0..maps as i64 {
            use pb::write_map_output_request::Item;
            let mut msgs = vec![pb::WriteMapOutputRequest {
                item: Some(Item::Header(pb::MapOutputHeader {
                    app_id: APP.into(),
                    exec_id: "1".into(),
                    shuffle_id: shuffle,
                    map_id: map,
                    partition_lengths: vec![block; parts as usize],
                })),
            }];
            let mut off = 0;
            while off < payload.len() {
                let end = (off + shuffle_proto::CHUNK_BYTES).min(payload.len());
                msgs.push(pb::WriteMapOutputRequest {
                    item: Some(Item::Data(payload.slice(off..end))),
                });
                off = end;
            }
            c.write_map_output(authed(futures::stream::iter(msgs), &token))
                .await?;
        }
        layouts.push((shuffle, block, maps, parts));
    }

    let written_rss = vm_hwm(svc.pid)?;
    let dur = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    for &(shuffle, block, maps, parts) in &layouts {
        for streams in [16usize, 64] {
            let mut grpc_mbps = Vec::new();
            let mut spark_mbps = Vec::new();
            let mut tcp_mbps = Vec::new();
            let layout = crate::spark::Layout {
                shuffle,
                block,
                maps: maps as i64,
                parts: parts as i32,
            };
            for _ in 0..args.runs {
                tcp_mbps.push(raw_tcp(streams, block as usize, dur).await?);
                grpc_mbps
                    .push(grpc_fetch(&svc.grpc, &token, shuffle, maps, parts, streams, dur).await?);
                let s = crate::spark::load(&svc.spark, APP, "1", layout, streams, dur).await?;
                spark_mbps.push(s.bytes as f64 / 1e6 / s.secs);
            }
            let (g, sp, t) = (median(&grpc_mbps), median(&spark_mbps), median(&tcp_mbps));
            eprintln!(
                "block {} KiB x {streams} streams: grpc {g:.0} MB/s, spark protocol {sp:.0} MB/s, raw tcp {t:.0} MB/s",
                block >> 10
            );
            rows.push(json!({
                "block_bytes": block, "streams": streams,
                "grpc_mb_s": round(g, 0), "spark_protocol_mb_s": round(sp, 0), "raw_tcp_mb_s": round(t, 0),
                "ratio": round(g / t, 3), "spark_protocol_ratio": round(sp / t, 3),
                "samples": { "grpc": grpc_mbps.iter().map(|v| round(*v, 0)).collect::<Vec<_>>(),
                             "spark_protocol": spark_mbps.iter().map(|v| round(*v, 0)).collect::<Vec<_>>(),
                             "raw_tcp": tcp_mbps.iter().map(|v| round(*v, 0)).collect::<Vec<_>>() },
            }));
        }
    }
    let loaded_rss = vm_hwm(svc.pid)?;
    let _ = svc.child.kill().await;
    Ok(json!({
        "benchmark": "shuffle-fetch",
        "seconds_per_run": args.seconds,
        "runs": args.runs,
        "results": rows,
        "goal": "service >= 0.6 x raw TCP for 1 MiB blocks",
        "service_vm_hwm_bytes": { "idle": idle_rss, "after_writes": written_rss, "after_load": loaded_rss, "goal_idle": 20_000_000 },
    }))
}

/// `streams` concurrent FetchBlocks loops for `dur`; returns MB/s of block data.
async fn grpc_fetch(
    url: &str,
    token: &str,
    shuffle: i32,
    maps: u64,
    parts: u64,
    streams: usize,
    dur: Duration,
) -> anyhow::Result<f64> {
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    // A few connections shared by the streams, as executors share one per peer.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(url).await?);
    }
    let mut tasks = Vec::new();
    for i in 0..streams {
        let mut c = clients[i % clients.len()].clone();
        let (token, bytes) = (token.to_owned(), Arc::clone(&bytes));
        tasks.push(tokio::spawn(async move {
            let mut n = i as u64;
            while Instant::now() < deadline {
                // 16 blocks per request, walking through the map outputs.
                let blocks = (0..16)
                    .map(|k| {
                        let idx = n + k;
                        let r = (idx / maps % parts) as i32;
                        pb::BlockRange {
                            shuffle_id: shuffle,
                            map_id: (idx % maps) as i64,
                            start_reduce: r,
                            end_reduce: r + 1,
                        }
                    })
                    .collect();
                n += 16;
                let req = pb::FetchBlocksRequest {
                    app_id: APP.into(),
                    exec_id: "1".into(),
                    blocks,
                };
                let mut s = c.fetch_blocks(authed(req, &token)).await?.into_inner();
                while let Some(m) = s.message().await? {
                    bytes.fetch_add(m.data.len() as u64, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await??;
    }
    Ok(bytes.load(Ordering::Relaxed) as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// The baseline: a plain TCP sender writing `chunk`-sized buffers to `streams` loopback
/// connections for `dur`; returns MB/s received.
async fn raw_tcp(streams: usize, chunk: usize, dur: Duration) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let deadline = Instant::now() + dur;
    let sender = tokio::spawn(async move {
        let buf = Arc::new(vec![0x5au8; chunk.max(64 << 10)]);
        let mut conns = Vec::new();
        for _ in 0..streams {
            let (mut s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            let buf = Arc::clone(&buf);
            conns.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            }));
        }
        for c in conns {
            let _ = c.await;
        }
        anyhow::Ok(())
    });
    let bytes = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..streams {
        let bytes = Arc::clone(&bytes);
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    for r in readers {
        let _ = r.await;
    }
    sender.await??;
    Ok(bytes.load(Ordering::Relaxed) as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// Runs the cleanup benchmark.
pub(crate) async fn cleanup(args: CleanupArgs) -> anyhow::Result<Value> {
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/loadtest"));
    std::fs::create_dir_all(&base)?;
    let work = tempfile::tempdir_in(&base)?;
    let mut svc = start_service(work.path()).await?;
    let mut c = client(&svc.grpc).await?;
    let app_dir = work.path().join("vol/app/exec-1/blockmgr-1");
    let rm_dir = work.path().join("vol/rm-baseline/blockmgr-1");
    eprintln!("creating 2 x {} files", args.files);
    let (a, b) = (app_dir.clone(), rm_dir.clone());
    let files = args.files;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        make_tree(&a, files)?;
        make_tree(&b, files)?;
        Ok(())
    })
    .await??;
    // Both trees on disk before either deletion.
    Command::new("sync").status().await?;

    let start = Instant::now();
    let status = Command::new("rm")
        .arg("-rf")
        .arg(work.path().join("vol/rm-baseline"))
        .status()
        .await?;
    if !status.success() {
        bail!("rm -rf failed");
    }
    let rm_secs = start.elapsed().as_secs_f64();
    eprintln!("rm -rf: {rm_secs:.1} s");
    // Registered only now, so the service's liveness sweep cannot remove (and clean) the app
    // while the baseline runs.
    let token = register(&mut c, "cleanup-app", std::slice::from_ref(&app_dir)).await?;

    let start = Instant::now();
    c.unregister_application(authed(
        pb::UnregisterApplicationRequest {
            app_id: "cleanup-app".into(),
        },
        &token,
    ))
    .await?;
    let ack = start.elapsed();
    loop {
        let m = admin_metrics(svc.admin).await?;
        let backlog = metric(&m, "shuffle_cleanup_backlog").unwrap_or(1.0);
        if backlog == 0.0 && !app_dir.exists() {
            break;
        }
        // Polling the service's own backlog gauge, the signal an operator would watch.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let svc_secs = start.elapsed().as_secs_f64();
    eprintln!("service cleanup: {svc_secs:.1} s (ack {ack:?})");
    let _ = svc.child.kill().await;
    Ok(json!({
        "benchmark": "shuffle-cleanup",
        "files": args.files,
        "subdirectories": 64,
        "rm_rf_seconds": round(rm_secs, 2),
        "service_seconds": round(svc_secs, 2),
        "unregister_ack_ms": round(ack.as_secs_f64() * 1000.0, 2),
        "speedup_vs_rm_rf": round(rm_secs / svc_secs, 2),
        "goal": "no slower than rm -rf",
    }))
}

fn make_tree(dir: &Path, files: u64) -> anyhow::Result<()> {
    for s in 0..64 {
        std::fs::create_dir_all(dir.join(format!("{s:02x}")))?;
    }
    for i in 0..files {
        let p = dir
            .join(format!("{:02x}", i % 64))
            .join(format!("shuffle_0_{i}_0.data"));
        std::fs::write(p, b"x")?;
    }
    Ok(())
}

pub(crate) async fn admin_metrics(port: u16) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
