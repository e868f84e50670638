//! The staging server's part of `kube-scale`: the real server (the release binary, its owner
//! watch on, talking to the stand-in through a kubeconfig) holds one resource per job, owned by
//! the job's driver pod (`spark-app-selector=<app>,spark-role=driver`, as the fork's clients
//! name it), under the same kind of churn as the shuffle part: jobs arrive and end at a steady
//! number, an ended driver pod is deleted a while later. Its API traffic is counted on a
//! listener of the stand-in that only it uses. Beside it, in the same run, the former design
//! replayed by the harness through its own counting client: one list of each owner's pods per
//! interval (what the server did before the watch), for the owners it would still hold.
//! Reported per number of concurrent jobs: requests/s, events/s and bytes/s sent to each, the
//! server's memory and the pods its watch holds, and the delay from a driver's end to its
//! resource's deletion.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kubebed::api::{ApiConfig, router};
use kubebed::store::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::churn::{self, Job, Rng};
use super::client::{self, Counters, Counts};
use super::{Args, STEP, axum_serve, median_of, stats};
use crate::procs;

/// The upload token the server is started with.
const TOKEN: &str = "kube-scale-upload-token";

/// The server's owner interval (its default), which the former design listed at.
const INTERVAL: Duration = Duration::from_secs(15);

/// How often the harness asks whether an ended job's resource is gone.
const POLL: Duration = Duration::from_millis(500);

/// Lists the former-design replay runs at once.
const REPLAY_CONCURRENCY: usize = 8;

/// The stand-in's router, counting what it sends into `c` (one request per request; watch
/// events as JSON lines) and, apart, the deletions it is asked for into `deletes` (the
/// Secrets deleted with each resource, the same in either design).
fn counted(store: Arc<Store>, c: Arc<Counters>, deletes: Arc<Counters>) -> axum::Router {
    let requests = Arc::clone(&c);
    router(store, ApiConfig::default())
        .layer(tower::util::MapResponseLayer::new(
            move |r: axum::response::Response| {
                let c = Arc::clone(&c);
                r.map(move |b| {
                    Body::new(b.map_frame(move |f| {
                        if let Some(d) = f.data_ref() {
                            c.received(d);
                        }
                        f
                    }))
                })
            },
        ))
        .layer(tower::util::MapRequestLayer::new(
            move |r: axum::extract::Request| {
                let c = if r.method() == http::Method::DELETE {
                    &deletes
                } else {
                    &requests
                };
                c.requests.fetch_add(1, Ordering::Relaxed);
                r
            },
        ))
}

async fn serve(app: axum::Router, stop: &CancellationToken) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum_serve(listener, app, s).await;
    });
    Ok(url)
}

/// One job of the phase: its driver pod and its resource.
struct Staged {
    job: Job,
    id: String,
    token: String,
}

/// Stages a resource owned by `job`'s driver pod.
async fn stage(http: &reqwest::Client, api: &str, job: Job) -> anyhow::Result<Staged> {
    let index = job.index;
    let res = http
        .post(format!(
            "{api}/api/v1/resources?namespace={}&labels=spark-app-selector={},spark-role=driver",
            churn::namespace(index),
            job.app
        ))
        .bearer_auth(TOKEN)
        .header("content-type", "application/gzip")
        .body(vec![0u8; 512])
        .send()
        .await?;
    anyhow::ensure!(res.status() == 201, "upload answered {}", res.status());
    let v: Value = res.json().await?;
    Ok(Staged {
        job,
        id: v["id"].as_str().context("id")?.to_owned(),
        token: v["token"].as_str().context("token")?.to_owned(),
    })
}

/// Polls a resource until the server answers that it is gone; the time from `ended`.
async fn deleted_after(
    http: reqwest::Client,
    api: String,
    id: String,
    token: String,
    ended: Instant,
    patience: Duration,
) -> Option<f64> {
    let deadline = ended + patience;
    while Instant::now() < deadline {
        let r = http
            .get(format!("{api}/api/v1/resources/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?;
        // The server forgets a resource's tokens with it: 401 for a token that worked before.
        if matches!(r.status().as_u16(), 401 | 404 | 410) {
            return Some(ended.elapsed().as_secs_f64());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// The former design, replayed: one list per owner every interval.
async fn replay(
    client: kube::Client,
    owners: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let round: Vec<(String, String)> = owners.lock().map(|o| o.clone()).unwrap_or_default();
        let lists =
            futures::stream::iter(round).for_each_concurrent(REPLAY_CONCURRENCY, |(ns, app)| {
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                async move {
                    let lp = ListParams::default()
                        .labels(&format!("spark-app-selector={app},spark-role=driver"));
                    let _ = api.list(&lp).await;
                }
            });
        tokio::select! {
            () = stop.cancelled() => return,
            () = lists => {}
        }
    }
}

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One phase: `jobs` concurrent jobs.
async fn phase(args: &Args, jobs: usize) -> anyhow::Result<Value> {
    let store = churn::store()?;
    let stop = CancellationToken::new();
    let server_counts = Arc::new(Counters::default());
    let server_deletes = Arc::new(Counters::default());
    let server_url = serve(
        counted(
            Arc::clone(&store),
            Arc::clone(&server_counts),
            Arc::clone(&server_deletes),
        ),
        &stop,
    )
    .await?;
    let replay_url = serve(router(Arc::clone(&store), ApiConfig::default()), &stop).await?;
    let replay_counts = Arc::new(Counters::default());
    let replay_client = client::client(&replay_url, Arc::clone(&replay_counts))?;

    let dir = procs::work_dir(None)?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: bed, cluster: {{server: \"{server_url}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: bed, user: u}}}}]\n\
             current-context: c\n"
        ),
    )?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let admin_port = procs::free_port()?;
    // In milliseconds: the server's durations take whole units.
    let grace = format!("{}ms", (args.grace * 1000.0).round() as u64);
    let interval = format!("{}s", INTERVAL.as_secs());
    let admin = format!("127.0.0.1:{admin_port}");
    let (mut server, api) = procs::start_staging_with(
        &data,
        &[
            "--kube-owners",
            "on",
            "--kube-owner-end-grace",
            &grace,
            "--kube-owner-interval",
            &interval,
            "--upload-tokens",
            TOKEN,
            "--namespace-quota-count",
            "1000000",
            "--admin-listen",
            &admin,
        ],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    )
    .await?;
    let pid = server.id().context("server pid")?;
    let http = reqwest::Client::new();

    let mut rng = Rng::new(args.seed);
    let mut next = 0usize;
    let start_job = |next: &mut usize| {
        let job = Job::start(&store, *next, 0);
        *next += 1;
        job
    };
    let t0 = Instant::now();
    let mut running: Vec<(Staged, Instant)> = Vec::new();
    for _ in 0..jobs {
        let s = stage(&http, &api, start_job(&mut next)).await?;
        let rest = rng.between(0.05 * args.lifetime, 1.5 * args.lifetime);
        running.push((s, t0 + Duration::from_secs_f64(args.warmup + rest)));
    }
    let owners: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let owner_list = |running: &[(Staged, Instant)], ended: &VecDeque<(Staged, Instant)>| {
        let held = Duration::from_secs_f64(args.grace) + INTERVAL;
        running
            .iter()
            .map(|(s, _)| s)
            .chain(
                ended
                    .iter()
                    .filter(|(_, at)| at.elapsed() < held)
                    .map(|(s, _)| s),
            )
            .map(|s| (churn::namespace(s.job.index), s.job.app.clone()))
            .collect::<Vec<_>>()
    };
    tokio::spawn(replay(replay_client, Arc::clone(&owners), stop.clone()));

    let rate = jobs as f64 / args.lifetime;
    let mut owed = 0.0;
    let mut ticker = tokio::time::interval(STEP);
    // The first round after the uploads opens the watch: the window starts after it.
    let warm_end = Instant::now() + Duration::from_secs_f64(args.warmup).max(INTERVAL * 2);
    let run_end = warm_end + Duration::from_secs_f64(args.duration);
    let linger = Duration::from_secs_f64(args.linger);
    let patience = Duration::from_secs_f64(args.grace) + INTERVAL + Duration::from_secs(30);
    let mut ended: VecDeque<(Staged, Instant)> = VecDeque::new();
    let mut delays = Vec::new();
    let mut before: Option<(Counts, Counts, Counts, Instant)> = None;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if before.is_none() && now >= warm_end {
            before = Some((
                server_counts.get(),
                replay_counts.get(),
                server_deletes.get(),
                now,
            ));
        }
        if now >= run_end {
            break;
        }
        owed += rate * STEP.as_secs_f64();
        let arrivals = owed as usize;
        owed -= arrivals as f64;
        for _ in 0..arrivals {
            let s = stage(&http, &api, start_job(&mut next)).await?;
            let life = rng.between(0.5 * args.lifetime, 1.5 * args.lifetime);
            running.push((s, now + Duration::from_secs_f64(life)));
        }
        let mut i = 0;
        while i < running.len() {
            if running[i].1 <= now {
                let (mut s, _) = running.swap_remove(i);
                s.job.end(&store);
                if before.is_some() {
                    delays.push(tokio::spawn(deleted_after(
                        http.clone(),
                        api.clone(),
                        s.id.clone(),
                        s.token.clone(),
                        now,
                        patience,
                    )));
                }
                ended.push_back((s, now));
                continue;
            }
            i += 1;
        }
        while ended
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= linger)
        {
            if let Some((s, _)) = ended.pop_front() {
                s.job.delete(&store);
            }
        }
        if let Ok(mut o) = owners.lock() {
            *o = owner_list(&running, &ended);
        }
    }
    let (s0, r0, d0, at0) = before.context("no measurement window")?;
    let (s1, r1, d1) = (
        server_counts.get(),
        replay_counts.get(),
        server_deletes.get(),
    );
    let secs = at0.elapsed().as_secs_f64();
    let rates = |c: Counts| {
        json!({"requests_per_s": c.requests as f64 / secs, "events_per_s": c.events as f64 / secs,
               "bytes_per_s": c.bytes as f64 / secs})
    };
    let rss = procs::vm_rss(pid).unwrap_or(0);
    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut delay = Vec::new();
    let mut missing = 0;
    for d in delays {
        match d.await? {
            Some(s) => delay.push(s),
            None => missing += 1,
        }
    }
    stop.cancel();
    let _ = server.kill().await;
    Ok(json!({
        "concurrent_jobs": jobs, "jobs_started": next, "window_s": secs,
        "owner_watch": rates(s1 - s0),
        "former_polls_replayed": rates(r1 - r0),
        "secret_deletions_per_s": (d1 - d0).requests as f64 / secs,
        "server_rss_bytes": rss,
        "owner_pods_held": gauge(&metrics, "staging_kube_owner_pods"),
        "owner_watches": gauge(&metrics, "staging_kube_owner_watches"),
        "cleanup_delay_s": {"owner_watch": stats(delay), "missing": missing,
            "goal_s": args.grace + 5.0},
    }))
}

/// Runs the staging server's phases, one per number of concurrent jobs, each `runs` times
/// (the medians are reported).
pub(super) async fn run(args: &Args) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for &jobs in &args.staging_jobs {
        let mut runs = Vec::new();
        for run in 0..args.runs.max(1) {
            eprintln!(
                "kube-scale: staging server, {jobs} concurrent jobs, run {}",
                run + 1
            );
            let mut a = args.clone();
            a.seed = args.seed + run as u64;
            runs.push(phase(&a, jobs).await?);
        }
        out.insert(format!("{jobs}_jobs"), median_of(&runs));
    }
    out.insert(
        "note".into(),
        json!(
            "owner_watch: the staging server's real owner watch (release binary); \
               former_polls_replayed: the lists the server made before the watch (one per owner \
               and 15 s interval), replayed by the harness in the same run"
        ),
    );
    Ok(Value::Object(out))
}
