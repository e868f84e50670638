//! `loadtest kube-scale`: what the shuffle service's pod watches cost the Kubernetes API at a
//! thousand nodes and a thousand concurrent jobs, measured against the test bed's API server
//! stand-in (in this process). Every simulated node runs the service's real Kubernetes code
//! (`shuffle_service::kube::follow`) through its own counting client; most nodes run today's
//! design (the driver pods of the node's own applications), a sample runs the former one
//! (every driver pod of the cluster) under the same churn, in the same run. Beside them, the
//! floor: what each node's kubelet receives for its own pods (`spec.nodeName`), computed from
//! the same event stream, and the metadata-only variant of the former design (computed too).
//! The staging server's part (`staging`) runs the real server against the same stand-in.

mod churn;
mod client;
mod staging;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kubebed::api::{ApiConfig, router};
use kubebed::resources::PODS;
use kubebed::store::{EventType, Store};
use serde_json::{Value, json};
use shuffle_service::config::{DriverScope, KubeSettings};
use shuffle_service::kube::metrics::KubeMetrics;
use spark_protocol::ids::AppId;
use tokio_util::sync::CancellationToken;

use churn::{Job, Rng};
use client::{Counters, Counts, Decision, Node};

/// Arguments of `kube-scale`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Of which this many run the former design (every driver pod), as a sample: each such
    /// node receives the same whatever the others run, so totals scale by `nodes`.
    #[arg(long, default_value_t = 20)]
    old_sample: usize,
    /// Concurrent jobs.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Executors per job.
    #[arg(long, default_value_t = 8)]
    executors: usize,
    /// Mean job lifetime (seconds); lifetimes are uniform in [0.5, 1.5] of it.
    #[arg(long, default_value_t = 300.0)]
    lifetime: f64,
    /// Each job replaces one executor (dynamic allocation) this often (seconds).
    #[arg(long, default_value_t = 60.0)]
    realloc: f64,
    /// A finished driver pod is deleted this long after it succeeded (seconds).
    #[arg(long, default_value_t = 20.0)]
    linger: f64,
    /// The services' grace after a driver pod's end (seconds).
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// Start-up (lists, first selections), not measured (seconds).
    #[arg(long, default_value_t = 20.0)]
    warmup: f64,
    /// Measured window (seconds).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seed of the churn.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// What to measure: the shuffle service's nodes, the staging server, or both.
    #[arg(long, value_enum, default_value_t = Part::Both)]
    part: Part,
    /// Runs of each part and phase (medians reported, leaf by leaf).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The staging server's phases: concurrent jobs of each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    staging_jobs: Vec<usize>,
}

/// What `kube-scale` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The shuffle service's simulated nodes.
    Shuffle,
    /// The staging server (the release binary).
    Staging,
    /// Both, one after the other.
    Both,
}

/// How often the services take their decisions.
const TICK: Duration = Duration::from_millis(500);
/// How often the churn advances.
const STEP: Duration = Duration::from_millis(100);

/// What each node's kubelet would receive, and what a metadata-only watch of every driver pod
/// would, from the store's event stream.
#[derive(Default)]
struct Floor {
    node_bytes: Vec<AtomicU64>,
    node_events: Vec<AtomicU64>,
    driver_events: AtomicU64,
    driver_meta_bytes: AtomicU64,
    lost: AtomicU64,
}

fn node_of(o: &Value) -> Option<usize> {
    o["spec"]["nodeName"]
        .as_str()?
        .strip_prefix("node-")?
        .parse()
        .ok()
}

async fn floor(store: Arc<Store>, f: Arc<Floor>, stop: CancellationToken) {
    let mut rx = store.subscribe();
    loop {
        let ev = tokio::select! {
            () = stop.cancelled() => return,
            ev = rx.recv() => ev,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                f.lost.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            Err(_) => return,
        };
        if ev.res != PODS {
            continue;
        }
        let kind = match ev.kind {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        };
        if let Some(n) = node_of(&ev.object).or_else(|| ev.old.as_ref().and_then(node_of))
            && n < f.node_bytes.len()
        {
            f.node_bytes[n].fetch_add(client::line_len(kind, &ev.object), Ordering::Relaxed);
            f.node_events[n].fetch_add(1, Ordering::Relaxed);
        }
        if ev.object["metadata"]["labels"]["spark-role"] == "driver" {
            let meta = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                              "metadata": ev.object["metadata"]});
            f.driver_events.fetch_add(1, Ordering::Relaxed);
            f.driver_meta_bytes
                .fetch_add(client::line_len(kind, &meta), Ordering::Relaxed);
        }
    }
}

/// Resident memory of this process (bytes).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

struct Running {
    job: Job,
    ends: Instant,
    realloc: Instant,
    /// Nodes its executors ran on (where its data is).
    data: HashSet<usize>,
}

struct Sim {
    store: Arc<Store>,
    nodes: Vec<Arc<Node>>,
    rng: Rng,
    args: Args,
    next_job: usize,
    running: Vec<Running>,
    ended: Vec<(Job, Instant)>,
    /// Application, when its driver ended, nodes holding its data.
    ends: Vec<(AppId, Instant, HashSet<usize>)>,
}

impl Sim {
    fn start_job(&mut self, now: Instant, lifetime: f64) {
        let index = self.next_job;
        self.next_job += 1;
        let n = self.nodes.len();
        let mut job = Job::start(&self.store, index, self.rng.below(n));
        let mut data = HashSet::new();
        for _ in 0..self.args.executors {
            let node = self.rng.below(n);
            job.add_executor(&self.store, node);
            self.hold(&job, node);
            data.insert(node);
        }
        let realloc = now + Duration::from_secs_f64(self.rng.between(0.0, self.args.realloc));
        self.running.push(Running {
            job,
            ends: now + Duration::from_secs_f64(lifetime),
            realloc,
            data,
        });
    }

    fn hold(&self, job: &Job, node: usize) {
        if let Ok(app) = job.app.parse() {
            self.nodes[node].holds(app);
        }
    }

    fn step(&mut self, now: Instant, arrivals: usize) {
        let lifetime = self.args.lifetime;
        for _ in 0..arrivals {
            let l = self.rng.between(0.5 * lifetime, 1.5 * lifetime);
            self.start_job(now, l);
        }
        let n = self.nodes.len();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].ends <= now {
                let mut r = self.running.swap_remove(i);
                r.job.end(&self.store);
                if let Ok(app) = r.job.app.parse() {
                    self.ends.push((app, now, r.data));
                }
                let delete_at = now + Duration::from_secs_f64(self.args.linger);
                self.ended.push((r.job, delete_at));
                continue;
            }
            if self.running[i].realloc <= now {
                let node = self.rng.below(n);
                let r = &mut self.running[i];
                r.job.remove_executor(&self.store);
                r.job.add_executor(&self.store, node);
                r.data.insert(node);
                r.realloc = now + Duration::from_secs_f64(self.args.realloc);
                let app = r.job.app.clone();
                if let Ok(app) = app.parse() {
                    self.nodes[node].holds(app);
                }
            }
            i += 1;
        }
        let store = Arc::clone(&self.store);
        self.ended.retain(|(job, at)| {
            let due = *at <= now;
            if due {
                job.delete(&store);
            }
            !due
        });
    }
}

fn stats(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({"mean": mean, "p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

fn gauge(r: &prometheus::Registry, name: &str) -> f64 {
    r.gather()
        .iter()
        .find(|m| m.name() == name)
        .and_then(|m| m.get_metric().first().map(|m| m.get_gauge().get_value()))
        .unwrap_or(0.0)
}

/// The median, leaf by leaf, of runs of the same shape (numbers; anything else from the first;
/// runs without a value there are left out).
pub(crate) fn median_of(runs: &[Value]) -> Value {
    let runs: Vec<Value> = runs.iter().filter(|v| !v.is_null()).cloned().collect();
    match runs.first() {
        Some(Value::Object(first)) => Value::Object(
            first
                .keys()
                .map(|k| {
                    let at: Vec<Value> = runs.iter().map(|r| r[k].clone()).collect();
                    (k.clone(), median_of(&at))
                })
                .collect(),
        ),
        Some(Value::Number(_)) => {
            let mut v: Vec<f64> = runs.iter().filter_map(Value::as_f64).collect();
            v.sort_by(f64::total_cmp);
            json!(v[v.len() / 2])
        }
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

/// Runs the benchmark.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let mut out = match args.part {
        Part::Staging => json!({"benchmark": "kube-scale"}),
        Part::Shuffle | Part::Both => {
            let mut runs = Vec::new();
            for run in 0..args.runs.max(1) {
                eprintln!("kube-scale: shuffle service nodes, run {}", run + 1);
                let mut a = args.clone();
                a.seed = args.seed + run as u64;
                runs.push(shuffle(a).await?);
            }
            let mut out = median_of(&runs);
            out["runs"] = json!(runs.len());
            out
        }
    };
    out["staging_server"] = match args.part {
        Part::Shuffle => json!("not run (--part shuffle)"),
        Part::Staging | Part::Both => staging::run(&args).await?,
    };
    Ok(out)
}

/// The shuffle service's nodes.
async fn shuffle(args: Args) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.nodes > args.old_sample,
        "--nodes must exceed --old-sample"
    );
    let store = churn::store()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let app = router(Arc::clone(&store), ApiConfig::default());
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum_serve(listener, app, s).await;
    });
    let floor_counts = Arc::new(Floor {
        node_bytes: (0..args.nodes).map(|_| AtomicU64::new(0)).collect(),
        node_events: (0..args.nodes).map(|_| AtomicU64::new(0)).collect(),
        ..Floor::default()
    });
    tokio::spawn(floor(
        Arc::clone(&store),
        Arc::clone(&floor_counts),
        stop.clone(),
    ));

    let decisions: Arc<Mutex<Vec<Decision>>> = Arc::default();
    let nodes: Vec<Arc<Node>> = (0..args.nodes)
        .map(|i| Arc::new(Node::new(i, Arc::clone(&decisions))))
        .collect();
    let jobs = args.jobs;
    let lifetime = args.lifetime;
    let mut sim = Sim {
        store: Arc::clone(&store),
        nodes: nodes.clone(),
        rng: Rng::new(args.seed),
        args,
        next_job: 0,
        running: Vec::new(),
        ended: Vec::new(),
        ends: Vec::new(),
    };
    // The jobs already running when the nodes start, at every stage of their lives.
    let t0 = Instant::now();
    eprintln!("kube-scale: {jobs} jobs on {} nodes", sim.nodes.len());
    for _ in 0..jobs {
        let rest = sim.rng.between(0.05 * lifetime, 1.5 * lifetime);
        sim.start_job(t0, sim.args.warmup + rest);
    }
    let rss_before = rss();
    let grace = Duration::from_secs_f64(sim.args.grace);
    let mut counters = Vec::new();
    let mut registries = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let c = Arc::new(Counters::default());
        let kc = client::client(&url, Arc::clone(&c))?;
        let registry = prometheus::Registry::new();
        let metrics = KubeMetrics::new(&registry)?;
        let settings = KubeSettings {
            node_name: churn::node_name(i),
            app_end_grace: grace,
            drivers: if i < sim.args.old_sample {
                DriverScope::All
            } else {
                DriverScope::NodeApps
            },
            ..KubeSettings::default()
        };
        tokio::spawn(shuffle_service::kube::follow(
            Arc::clone(node),
            kc,
            metrics,
            settings,
            TICK,
            stop.clone(),
        ));
        counters.push(c);
        registries.push(registry);
    }
    // Arrivals keep the number of jobs steady: jobs / lifetime per second.
    let rate = jobs as f64 / lifetime;
    let mut owed = 0.0;
    let mut ticker = tokio::time::interval(STEP);
    let warm_end = t0 + Duration::from_secs_f64(sim.args.warmup);
    let run_end = warm_end + Duration::from_secs_f64(sim.args.duration);
    let mut before: Option<Snapshot> = None;
    let mut rss_warm = 0;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if before.is_none() && now >= warm_end {
            eprintln!("kube-scale: warm; measuring {} s", sim.args.duration);
            rss_warm = rss();
            before = Some(snapshot(&counters, &floor_counts, now));
        }
        if now >= run_end {
            break;
        }
        owed += rate * STEP.as_secs_f64();
        let arrivals = owed as usize;
        owed -= arrivals as f64;
        sim.step(now, arrivals);
    }
    let (c0, f0, d0, at0) = before.context("no measurement window")?;
    let (c1, f1, d1, at1) = snapshot(&counters, &floor_counts, Instant::now());
    let secs = at1.duration_since(at0).as_secs_f64();
    let old = sim.args.old_sample;
    let n = sim.args.nodes;
    let per = |range: std::ops::Range<usize>, f: &dyn Fn(Counts) -> u64| -> Vec<f64> {
        range.map(|i| f(c1[i] - c0[i]) as f64 / secs).collect()
    };
    let design = |range: std::ops::Range<usize>, scale: f64| {
        let req = per(range.clone(), &|c| c.requests);
        let ev = per(range.clone(), &|c| c.events);
        let by = per(range.clone(), &|c| c.bytes);
        let total = |v: &Vec<f64>| v.iter().sum::<f64>() * scale;
        let drivers: Vec<f64> = range
            .clone()
            .map(|i| gauge(&registries[i], "shuffle_kube_driver_pods"))
            .collect();
        json!({
            "nodes_measured": range.len(),
            "per_node": {"requests_per_s": stats(req.clone()), "events_per_s": stats(ev.clone()),
                         "bytes_per_s": stats(by.clone()), "driver_pods_held": stats(drivers)},
            "total": {"requests_per_s": total(&req), "events_per_s": total(&ev),
                      "bytes_per_s": total(&by)},
        })
    };
    let floor_bytes: Vec<f64> = (0..n).map(|i| (f1[i].0 - f0[i].0) as f64 / secs).collect();
    let floor_events: Vec<f64> = (0..n).map(|i| (f1[i].1 - f0[i].1) as f64 / secs).collect();
    // Each node's bytes beside its own kubelet's.
    let ratio: Vec<f64> = (old..n)
        .filter(|&i| floor_bytes[i] > 0.0)
        .map(|i| ((c1[i] - c0[i]).bytes as f64 / secs) / floor_bytes[i])
        .collect();
    let meta_events = (d1.0 - d0.0) as f64 / secs;
    let meta_bytes = (d1.1 - d0.1) as f64 / secs;
    // Cleanup decisions for drivers that ended in the window, early enough to be due.
    let decided: HashMap<(usize, AppId), Instant> = decisions
        .lock()
        .map_err(|_| anyhow::anyhow!("decisions"))?
        .iter()
        .map(|(n, a, t)| ((*n, a.clone()), *t))
        .collect();
    let due_by = at1 - grace - Duration::from_secs(5);
    let (mut new_delay, mut old_delay, mut missing) = (Vec::new(), Vec::new(), 0usize);
    for (app, ended, data) in &sim.ends {
        if *ended < at0 || *ended > due_by {
            continue;
        }
        for &node in data {
            match decided.get(&(node, app.clone())) {
                Some(t) => {
                    let d = t.saturating_duration_since(*ended).as_secs_f64();
                    if node < old {
                        old_delay.push(d);
                    } else {
                        new_delay.push(d);
                    }
                }
                None => missing += 1,
            }
        }
    }
    stop.cancel();
    let rss_end = rss();
    Ok(json!({
        "benchmark": "kube-scale",
        "nodes": n, "concurrent_jobs": jobs, "executors_per_job": sim.args.executors,
        "job_lifetime_s": lifetime, "realloc_s": sim.args.realloc, "grace_s": sim.args.grace,
        "window_s": secs, "jobs_started": sim.next_job,
        "shuffle_service": {
            "node_apps_selection": design(old..n, n as f64 / (n - old) as f64),
            "all_drivers_former": design(0..old, n as f64 / old as f64),
            "metadata_only_all_drivers_computed": {
                "per_node": {"events_per_s": meta_events, "bytes_per_s": meta_bytes},
                "note": "computed from the event stream: not usable alone (a driver's phase is in its status)",
            },
            "kubelet_floor_computed": {
                "per_node": {"events_per_s": stats(floor_events.clone()), "bytes_per_s": stats(floor_bytes.clone())},
                "total": {"events_per_s": floor_events.iter().sum::<f64>(), "bytes_per_s": floor_bytes.iter().sum::<f64>()},
            },
            "bytes_over_kubelet_per_node": stats(ratio),
            "cleanup_decision_delay_s": {"node_apps_selection": stats(new_delay),
                "all_drivers_former": stats(old_delay), "missing": missing,
                "goal_s": sim.args.grace + 5.0},
            "memory": {"process_rss_bytes_before_nodes": rss_before, "at_warm": rss_warm, "at_end": rss_end,
                       "rss_per_node_bytes": (rss_warm.saturating_sub(rss_before)) as f64 / n as f64,
                       "note": "the whole process (API stand-in, clients, trackers) over the nodes; driver_pods_held is the tracker's share"},
            "floor_events_lost": floor_counts.lost.load(Ordering::Relaxed),
        },
    }))
}

type Snapshot = (Vec<Counts>, Vec<(u64, u64)>, (u64, u64), Instant);

fn snapshot(counters: &[Arc<Counters>], f: &Floor, now: Instant) -> Snapshot {
    let c = counters.iter().map(|c| c.get()).collect();
    let fl = f
        .node_bytes
        .iter()
        .zip(&f.node_events)
        .map(|(b, e)| (b.load(Ordering::Relaxed), e.load(Ordering::Relaxed)))
        .collect();
    let d = (
        f.driver_events.load(Ordering::Relaxed),
        f.driver_meta_bytes.load(Ordering::Relaxed),
    );
    (c, fl, d, now)
}

async fn axum_serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_taken_leaf_by_leaf_and_runs_without_a_value_left_out() {
        let runs = [
            json!({"a": 1, "b": {"c": 10.0, "d": "x"}, "e": null}),
            json!({"a": 3, "b": {"c": 30.0, "d": "y"}, "e": 5}),
            json!({"a": 2, "b": {"c": 20.0, "d": "z"}, "e": 7}),
        ];
        assert_eq!(
            median_of(&runs),
            json!({"a": 2.0, "b": {"c": 20.0, "d": "x"}, "e": 7.0})
        );
    }
}
