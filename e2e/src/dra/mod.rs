//! The harness of `loadtest dra` and of its e2e test: what the shuffle service saves against
//! Spark's own ways of giving executors back on Kubernetes. A workload of
//! `tests/spark/dra_job.py` runs in cluster mode (unmodified Spark 4.3.0, `spark-submit` from
//! the host) on a two-node bed with the DaemonSet shuffle service deployed from `k8s/`, under
//! one of four configurations of executors ([`Config`]). Cluster mode because PVC reuse needs
//! a driver pod: Spark hands claims on only when the driver pod owns them.
//!
//! A run is measured from outside Spark: executor pods' lifetimes from the API's creation and
//! deletion timestamps (a watch of the run's namespace), the work Spark did again and the bytes
//! it read from other hosts from its event log (written by the driver to a hostPath of its
//! node), and the job's own check of its results (its JSON line in the driver's log). Each run
//! has a namespace of its own, deleted after it.

mod config;
mod events;
mod kill;
mod pods;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use kubebed::bed::{Bed, BedConfig};
use kubebed::resources::{NAMESPACES, PODS};
use kubebed::selector::Selector;
use kubebed::testing::{images_of, spark_home, workspace};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use config::{Config, Workload};
pub use events::{EventSummary, summarize};
pub use kill::{Kill, Loss};

use pods::PodWatch;

/// What every configuration shares, and the workloads' size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// `spark.dynamicAllocation.maxExecutors` (static allocation: `spark.executor.instances`).
    pub max_executors: u32,
    /// `spark.dynamicAllocation.executorIdleTimeout`, seconds.
    pub idle_timeout_s: u32,
    /// `spark.executor.memory`.
    pub executor_memory: String,
    /// Multiplies the workloads' row counts.
    pub scale: f64,
    /// Seconds of the ETL's pauses and of the iterative job's gaps.
    pub pause_s: f64,
    /// Spark settings given to every configuration, after its own (e.g.
    /// `spark.files.fetchFailure.unRegisterOutputOnHost=true`).
    #[serde(default)]
    pub extra_confs: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_executors: 4,
            idle_timeout_s: 5,
            executor_memory: "1g".into(),
            scale: 1.0,
            pause_s: 20.0,
            extra_confs: Vec::new(),
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The workload.
    pub workload: Workload,
    /// The configuration.
    pub config: Config,
    /// The job's own check of its results.
    pub ok: bool,
    /// A digest of the results (the same in every configuration).
    pub digest: String,
    /// The application's start to its end (event log), seconds.
    pub wall_s: f64,
    /// Sum of executor pods' lifetimes (deletion minus creation timestamp), seconds.
    pub executor_seconds: f64,
    /// Most executor pods alive at once.
    pub peak_executors: u32,
    /// Executor pods created.
    pub executor_pods: u32,
    /// Executor pods alive over time: (seconds since the application's start, count), one
    /// point per change.
    pub timeline: Vec<(f64, u32)>,
    /// The workload's phases (seconds since the application's start, name).
    pub marks: Vec<(f64, String)>,
    /// The executor lost mid-stage (its pod, or its whole node), if asked for.
    pub kill: Option<Kill>,
    /// From the event log.
    pub events: EventSummary,
}

/// A bed with the shuffle service deployed, on which runs follow one another.
pub struct Bench {
    /// The bed.
    pub bed: Bed,
    dir: PathBuf,
    runs: AtomicU32,
}

/// How long a run may take, from submission to the driver's end and its executors' (the
/// namespace's deletion and a lost node's return take at most a few minutes more).
const RUN_LIMIT: Duration = Duration::from_secs(900);

impl Bench {
    /// Starts a two-node bed (files under `dir`) whose project image holds the service
    /// binaries of `bin_dir`, and deploys the DaemonSet shuffle service as shipped.
    ///
    /// # Errors
    /// The bed does not start (root and network namespaces are needed) or the service does
    /// not come up.
    pub async fn start(dir: &Path, bin_dir: &Path) -> anyhow::Result<Self> {
        let bed = Bed::start(BedConfig {
            nodes: 2,
            dir: dir.to_path_buf(),
            images: crate::with_spark(images_of(bin_dir), dir),
            history: 100_000,
            api: kubebed::api::ApiConfig::default(),
        })
        .await?;
        crate::deploy_shuffle_service_with(&bed, |t| t).await?;
        Ok(Self {
            bed,
            dir: dir.to_path_buf(),
            runs: AtomicU32::new(0),
        })
    }

    /// Stops the bed.
    pub async fn stop(self) {
        self.bed.stop().await;
    }

    /// Runs `workload` under `config`; with a [`Loss`], deletes an executor pod or loses the
    /// node of an executor (not the driver's) in the middle of the target job's reduce stage;
    /// a lost node is brought back after the run, its shuffle service ready again.
    ///
    /// # Errors
    /// `spark-submit` or the driver failed, the run took over 15 minutes, or its event log or
    /// result line is missing; the error carries the driver's log.
    pub async fn run(
        &self,
        workload: Workload,
        config: Config,
        settings: &Settings,
        loss: Loss,
    ) -> anyhow::Result<Run> {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let ns = format!("dra-{n}-{}-{}", workload.name(), config.name());
        let dir = self.dir.join(&ns);
        std::fs::create_dir_all(&dir)?;
        self.bed.namespace(&ns)?;
        // The driver (uid 185) writes its event log into the node's directory for the run.
        for node in &self.bed.nodes {
            let d = node.roots.host.join("var/spark-events").join(&ns);
            std::fs::create_dir_all(&d)?;
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
        }
        let watch = PodWatch::start(&self.bed.store, &ns);
        let result = tokio::time::timeout(
            RUN_LIMIT,
            self.submit_and_wait(workload, config, settings, loss, &ns, &dir, &watch),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the run took over {RUN_LIMIT:?}")));
        let dump = if result.is_err() {
            crate::dump(&self.bed, &ns)
        } else {
            String::new()
        };
        // A lost node comes back before the namespace goes, so that its kubelet removes what
        // is left of the run there.
        let restored = if loss == Loss::Node {
            self.restore_nodes().await
        } else {
            Ok(())
        };
        self.clean_up(&ns).await;
        let run = result
            .with_context(|| format!("{} under {}:\n{dump}", workload.name(), config.name()))?;
        restored.context("the run finished, but the lost node did not come back")?;
        Ok(run)
    }

    /// Brings every lost node back and waits until the shuffle service is ready on each.
    async fn restore_nodes(&self) -> anyhow::Result<()> {
        let mut first_error = None;
        for i in 0..self.bed.nodes.len() {
            if let Err(e) = self.bed.restore_node(i).await {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        crate::shuffle_service_ready(&self.bed).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn submit_and_wait(
        &self,
        workload: Workload,
        config: Config,
        settings: &Settings,
        loss: Loss,
        ns: &str,
        dir: &Path,
        watch: &PodWatch,
    ) -> anyhow::Result<Run> {
        let template =
            workspace().join("k8s/shuffle-service/daemonset/spark/executor-pod-template.yaml");
        let mut confs = vec![
            (
                "spark.kubernetes.driver.master".to_owned(),
                self.bed.api_url.clone(),
            ),
            (
                "spark.kubernetes.container.image".to_owned(),
                "kubebed/spark:4.3.0".to_owned(),
            ),
            ("spark.kubernetes.namespace".to_owned(), ns.to_owned()),
            // spark-submit returns once the driver pod exists; the harness follows the pod.
            (
                "spark.kubernetes.submission.waitAppCompletion".to_owned(),
                "false".to_owned(),
            ),
            (
                "spark.kubernetes.driver.volumes.hostPath.events.mount.path".to_owned(),
                "/var/spark-events".to_owned(),
            ),
            (
                "spark.kubernetes.driver.volumes.hostPath.events.options.path".to_owned(),
                format!("/var/spark-events/{ns}"),
            ),
            (
                "spark.kubernetes.driver.volumes.emptyDir.out.mount.path".to_owned(),
                "/var/dra-out".to_owned(),
            ),
            ("spark.eventLog.enabled".to_owned(), "true".to_owned()),
            (
                "spark.eventLog.dir".to_owned(),
                "file:///var/spark-events".to_owned(),
            ),
            ("spark.eventLog.compress".to_owned(), "false".to_owned()),
        ];
        confs.extend(config.confs(settings, &template));
        let args = [
            "local:///opt/spark/tests/dra_job.py".to_owned(),
            "--workload".to_owned(),
            workload.name().to_owned(),
            "--scale".to_owned(),
            settings.scale.to_string(),
            "--pause".to_owned(),
            settings.pause_s.to_string(),
            "--out".to_owned(),
            "/var/dra-out".to_owned(),
        ];
        submit(&self.bed.api_url, dir, &confs, &args).await?;

        let driver = || driver_pod(&self.bed, ns);
        let done = || {
            driver().is_some_and(|d| {
                matches!(d["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            })
        };
        let killed = if loss == Loss::None {
            None
        } else {
            Some(self.strike(ns, loss, &driver, &done).await?)
        };
        let mut events = self.bed.store.subscribe();
        while !done() {
            // Woken by any change of the store, or once a second at least.
            let _ = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
        }
        let d = driver().context("the driver pod is gone")?;
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let log = self.bed.log(ns, name, "spark-kubernetes-driver");
        if d["status"]["phase"] != "Succeeded" {
            bail!("the driver pod {name} failed: {}\n{log}", d["status"]);
        }
        // Spark deletes its executor pods as it stops: their deletion ends their lifetimes.
        let gone = crate::eventually(Duration::from_secs(60), || {
            watch.snapshot().values().all(|p| p.deleted.is_some())
        })
        .await;
        if !gone {
            bail!("executor pods outlived the driver");
        }
        let line = crate::find_result_line(&log, "dra")
            .with_context(|| format!("no result line in the driver's log:\n{log}"))?;
        let node = d["spec"]["nodeName"].as_str().unwrap_or_default();
        let ev_dir = self
            .bed
            .nodes
            .iter()
            .find(|n| n.name == node)
            .context("the driver's node")?
            .roots
            .host
            .join("var/spark-events")
            .join(ns);
        let events = summarize(&crate::event_log(&ev_dir));
        if events.app_end_ms == 0 {
            bail!(
                "the event log in {} has no application end",
                ev_dir.display()
            );
        }
        Ok(measure(
            workload,
            config,
            &line["dra"],
            events,
            watch,
            killed,
        ))
    }

    /// Waits for the target job's reduce stage to be half done, then loses one of its
    /// executors as `loss` says.
    async fn strike(
        &self,
        ns: &str,
        loss: Loss,
        driver: &impl Fn() -> Option<Value>,
        done: &impl Fn() -> bool,
    ) -> anyhow::Result<Kill> {
        let ip = || {
            driver()
                .and_then(|d| d["status"]["podIP"].as_str().map(str::to_owned))
                .filter(|ip| !ip.is_empty())
        };
        let moment = kill::reduce_stage_half_done(ip, done, RUN_LIMIT)
            .await?
            .context("the target job's reduce stage was never seen half done")?;
        if loss == Loss::Pod {
            return kill::delete_pod(&self.bed.api_url, ns, &moment).await;
        }
        let driver_node = driver()
            .and_then(|d| d["spec"]["nodeName"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let (executor, pod, node) =
            kill::on_another_node(&self.bed.api_url, ns, &moment, &driver_node).await?;
        let index = self
            .bed
            .nodes
            .iter()
            .position(|n| n.name == node)
            .context("the executor's node is not the bed's")?;
        let k = kill::kill_of(&moment, executor, pod, Some(node));
        self.bed.lose_node(index).await?;
        Ok(k)
    }

    /// Deletes the run's namespace and waits (at most a minute) until its pods are gone.
    async fn clean_up(&self, ns: &str) {
        let _ = self.bed.store.delete(
            &NAMESPACES,
            "",
            ns,
            &kubebed::store::DeleteOptions::default(),
        );
        let store = &self.bed.store;
        let _ = crate::eventually(Duration::from_secs(60), || {
            store
                .list(&PODS, Some(ns), &Selector::default(), &Selector::default())
                .0
                .is_empty()
        })
        .await;
    }
}

/// The figures of a finished run.
fn measure(
    workload: Workload,
    config: Config,
    line: &Value,
    events: EventSummary,
    watch: &PodWatch,
    kill: Option<Kill>,
) -> Run {
    let pods = watch.snapshot();
    let start = events.app_start_ms;
    #[allow(clippy::cast_precision_loss)]
    let rel = |ms: u64| (ms as f64 - start as f64) / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    let executor_seconds = pods
        .values()
        .filter_map(|p| Some((p.deleted? - p.created?).max(0) as f64))
        .sum();
    let mut changes: Vec<(u64, i32)> = pods
        .values()
        .flat_map(|p| {
            std::iter::once((p.seen_created_ms, 1)).chain(p.seen_deleted_ms.map(|t| (t, -1)))
        })
        .collect();
    changes.sort_unstable();
    let (mut alive, mut peak) = (0i32, 0i32);
    let mut timeline = vec![(rel(start.min(changes.first().map_or(start, |c| c.0))), 0)];
    for (t, d) in changes {
        alive += d;
        peak = peak.max(alive);
        timeline.push((rel(t), u32::try_from(alive).unwrap_or(0)));
    }
    let marks = line["marks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((rel(m["at_ms"].as_u64()?), m["what"].as_str()?.to_owned())))
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let wall_s = events.app_end_ms.saturating_sub(events.app_start_ms) as f64 / 1000.0;
    Run {
        workload,
        config,
        ok: line["ok"] == true,
        digest: line["digest"].as_str().unwrap_or_default().to_owned(),
        wall_s,
        executor_seconds,
        peak_executors: u32::try_from(peak).unwrap_or(0),
        executor_pods: u32::try_from(pods.len()).unwrap_or(u32::MAX),
        timeline,
        marks,
        kill,
        events,
    }
}

/// Runs `spark-submit --deploy-mode cluster` from the host (output in `dir/submit.{out,err}`);
/// returns once it exits (the driver pod exists).
async fn submit(
    api: &str,
    dir: &Path,
    confs: &[(String, String)],
    args: &[String],
) -> anyhow::Result<()> {
    let submit = workspace().join(".venv/bin/spark-submit");
    if !submit.exists() {
        bail!("{} missing: run scripts/test-deps.sh", submit.display());
    }
    let home = spark_home().context("pyspark is not installed in .venv")?;
    let mut cmd = tokio::process::Command::new(&submit);
    cmd.args([
        "--master",
        &format!("k8s://{api}"),
        "--deploy-mode",
        "cluster",
    ]);
    for (k, v) in confs {
        cmd.arg("--conf").arg(format!("{k}={v}"));
    }
    cmd.args(args)
        .env("SPARK_HOME", home)
        .env("JDK_JAVA_OPTIONS", kubebed::images::SHORT_LIVED_JVM)
        .env_remove("PYSPARK_PYTHON")
        .env_remove("PYSPARK_DRIVER_PYTHON")
        .stdout(std::fs::File::create(dir.join("submit.out"))?)
        .stderr(std::fs::File::create(dir.join("submit.err"))?)
        .kill_on_drop(true);
    let status = tokio::time::timeout(Duration::from_secs(120), cmd.status())
        .await
        .context("spark-submit took over 120 s")??;
    if !status.success() {
        bail!(
            "spark-submit failed ({status}):\n{}",
            std::fs::read_to_string(dir.join("submit.err")).unwrap_or_default()
        );
    }
    Ok(())
}

/// The namespace's driver pod.
fn driver_pod(bed: &Bed, ns: &str) -> Option<Value> {
    let sel = Selector::labels("spark-role=driver").ok()?;
    bed.store
        .list(&PODS, Some(ns), &sel, &Selector::default())
        .0
        .into_iter()
        .next()
}
