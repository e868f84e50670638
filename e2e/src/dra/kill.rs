//! An executor lost in the middle of a reduce stage: its pod deleted through the API, or its
//! whole node lost. The workload runs the job to disturb in the job group `target`; the
//! driver's status API (Spark's UI REST endpoints on port 4040 of the driver pod) tells when a
//! stage of that job that reads a shuffle has finished half of its tasks, and which executors
//! run its other tasks. The pod of the lowest-numbered such executor is deleted as `kubectl
//! delete pod` would (default grace); or the node of the lowest-numbered one on another node
//! than the driver's is lost ([`kubebed::bed::Bed::lose_node`]: every pod on it killed, the
//! shuffle service's with them).

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pods::now_ms;

/// What an executor's loss takes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Nothing is lost.
    None,
    /// One executor's pod, deleted through the API (a spot reclaim as Spark sees it).
    Pod,
    /// A whole node (not the driver's): every pod on it, the shuffle service's too.
    Node,
}

impl Loss {
    /// The short name (command lines, JSON).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pod => "pod",
            Self::Node => "node",
        }
    }
}

/// What was lost (an executor's pod, or the node it ran on), and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    /// Spark's executor id.
    pub executor: String,
    /// Its pod.
    pub pod: String,
    /// The stage (id and attempt) it was running a task of.
    pub stage: String,
    /// The stage's finished and total tasks at that moment.
    pub tasks_done: u64,
    /// Of how many.
    pub tasks: u64,
    /// When the pod's deletion was sent or the node's loss began, epoch milliseconds.
    pub at_ms: u64,
    /// The node lost with it, when the whole node was.
    #[serde(default)]
    pub node: Option<String>,
}

/// The moment to strike: the target job's reduce stage half done.
pub(crate) struct Moment {
    /// The application.
    pub app: String,
    /// The stage (id and attempt).
    pub stage: String,
    /// Its finished tasks.
    pub tasks_done: u64,
    /// Its tasks.
    pub tasks: u64,
    /// The executors running its other tasks, lowest id first.
    pub executors: Vec<String>,
}

/// How often the driver's status is polled.
const POLL: Duration = Duration::from_millis(250);

/// Polls until the target job's reduce stage is half done; gives up (`None`) when
/// `driver_done` says the driver ended first, or after `within`.
pub(crate) async fn reduce_stage_half_done(
    driver_ip: impl Fn() -> Option<String>,
    driver_done: impl Fn() -> bool,
    within: Duration,
) -> anyhow::Result<Option<Moment>> {
    let http = client()?;
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline && !driver_done() {
        if let Some(ip) = driver_ip()
            && let Ok(Some(m)) = half_done(&http, &format!("http://{ip}:4040/api/v1")).await
        {
            return Ok(Some(m));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(None)
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// Deletes the pod of the moment's first executor through the API server.
///
/// # Errors
/// No pod for it, or the deletion failed.
pub(crate) async fn delete_pod(api: &str, ns: &str, m: &Moment) -> anyhow::Result<Kill> {
    let executor = m.executors.first().context("no executor")?.clone();
    let http = client()?;
    let pod = executor_pod(&http, api, ns, &m.app, &executor).await?;
    let name = pod_name(&pod)?;
    http.delete(format!("{api}/api/v1/namespaces/{ns}/pods/{name}"))
        .send()
        .await?
        .error_for_status()?;
    Ok(kill_of(m, executor, name, None))
}

/// The first of the moment's executors whose pod runs on another node than `driver_node`, or
/// else the lowest-numbered executor of the application there (its node holds map output the
/// stage reads): (executor, pod, node).
///
/// # Errors
/// Every executor runs on the driver's node, or the API failed.
pub(crate) async fn on_another_node(
    api: &str,
    ns: &str,
    m: &Moment,
    driver_node: &str,
) -> anyhow::Result<(String, String, String)> {
    let http = client()?;
    let elsewhere = |pod: &Value| {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        (!node.is_empty() && node != driver_node).then(|| node.to_owned())
    };
    for executor in &m.executors {
        let pod = executor_pod(&http, api, ns, &m.app, executor).await?;
        if let Some(node) = elsewhere(&pod) {
            return Ok((executor.clone(), pod_name(&pod)?, node));
        }
    }
    let all = get(
        &http,
        &format!(
            "{api}/api/v1/namespaces/{ns}/pods?labelSelector=spark-app-selector%3D{},spark-role%3Dexecutor",
            m.app
        ),
    )
    .await?;
    let mut others: Vec<(u64, String, String)> = all["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| {
            let id = p["metadata"]["labels"]["spark-exec-id"]
                .as_str()?
                .parse()
                .ok()?;
            Some((id, pod_name(p).ok()?, elsewhere(p)?))
        })
        .collect();
    others.sort_unstable();
    let (id, pod, node) = others
        .into_iter()
        .next()
        .with_context(|| format!("every executor runs on the driver's node {driver_node}"))?;
    Ok((id.to_string(), pod, node))
}

/// What a loss of `executor` (pod `pod`, node `node` if the node went) at moment `m` was.
pub(crate) fn kill_of(m: &Moment, executor: String, pod: String, node: Option<String>) -> Kill {
    Kill {
        executor,
        pod,
        stage: m.stage.clone(),
        tasks_done: m.tasks_done,
        tasks: m.tasks,
        at_ms: now_ms(),
        node,
    }
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The target job's first shuffle-reading stage with at least half of its tasks finished and
/// some still running.
async fn half_done(http: &reqwest::Client, base: &str) -> anyhow::Result<Option<Moment>> {
    let apps = get(http, &format!("{base}/applications")).await?;
    let app = apps[0]["id"].as_str().context("no application")?.to_owned();
    let base = format!("{base}/applications/{app}");
    let jobs = get(http, &format!("{base}/jobs?status=running")).await?;
    let mut stages: Vec<u64> = jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["jobGroup"] == "target")
        .flat_map(|j| j["stageIds"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.as_u64())
        .collect();
    stages.sort_unstable();
    for sid in stages {
        let attempts = get(http, &format!("{base}/stages/{sid}")).await?;
        for a in attempts.as_array().into_iter().flatten() {
            let (done, total) = (
                a["numCompleteTasks"].as_u64().unwrap_or(0),
                a["numTasks"].as_u64().unwrap_or(0),
            );
            if a["status"] != "ACTIVE"
                || a["shuffleReadRecords"].as_u64().unwrap_or(0) == 0
                || done * 2 < total
            {
                continue;
            }
            let attempt = a["attemptId"].as_u64().unwrap_or(0);
            let tasks = get(
                http,
                &format!("{base}/stages/{sid}/{attempt}/taskList?status=running&length=10000"),
            )
            .await?;
            let mut executors: Vec<u64> = tasks
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["executorId"].as_str()?.parse::<u64>().ok())
                .collect();
            executors.sort_unstable();
            executors.dedup();
            if !executors.is_empty() {
                return Ok(Some(Moment {
                    app,
                    stage: format!("{sid}.{attempt}"),
                    tasks_done: done,
                    tasks: total,
                    executors: executors.iter().map(u64::to_string).collect(),
                }));
            }
        }
    }
    Ok(None)
}

/// The pod of `executor`, from the API server.
async fn executor_pod(
    http: &reqwest::Client,
    api: &str,
    ns: &str,
    app: &str,
    executor: &str,
) -> anyhow::Result<Value> {
    let pods = get(
        http,
        &format!(
            "{api}/api/v1/namespaces/{ns}/pods?labelSelector=spark-app-selector%3D{app}%2Cspark-exec-id%3D{executor}"
        ),
    )
    .await?;
    let pod = pods["items"][0].clone();
    if pod.is_null() {
        anyhow::bail!("no pod for executor {executor}");
    }
    Ok(pod)
}

fn pod_name(pod: &Value) -> anyhow::Result<String> {
    Ok(pod["metadata"]["name"]
        .as_str()
        .context("a pod without a name")?
        .to_owned())
}
