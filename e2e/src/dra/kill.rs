//! An executor pod deleted through the API in the middle of a reduce stage. The workload runs
//! the job to disturb in the job group `target`; the driver's status API (Spark's UI REST
//! endpoints on port 4040 of the driver pod) tells when a stage of that job that reads a
//! shuffle has finished half of its tasks, and which executors run its other tasks. The pod of
//! the lowest-numbered such executor is deleted as `kubectl delete pod` would (default grace).

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pods::now_ms;

/// What was deleted, and when.
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
    /// When the deletion was sent, epoch milliseconds.
    pub at_ms: u64,
}

/// How often the driver's status is polled.
const POLL: Duration = Duration::from_millis(250);

/// Polls until the target job's reduce stage is half done, then deletes one of its executors'
/// pods; gives up (`None`) when `driver_done` says the driver ended first, or after `within`.
///
/// # Errors
/// The deletion itself failed.
pub(crate) async fn in_reduce_stage(
    api: &str,
    ns: &str,
    driver_ip: impl Fn() -> Option<String>,
    driver_done: impl Fn() -> bool,
    within: Duration,
) -> anyhow::Result<Option<Kill>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline && !driver_done() {
        if let Some(ip) = driver_ip()
            && let Ok(Some((app, stage, tasks_done, tasks, executor))) =
                half_done(&http, &format!("http://{ip}:4040/api/v1")).await
        {
            let pod = delete_executor(&http, api, ns, &app, &executor).await?;
            return Ok(Some(Kill {
                executor,
                pod,
                stage,
                tasks_done,
                tasks,
                at_ms: now_ms(),
            }));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(None)
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

/// The application, the target job's first shuffle-reading stage with at least half of its
/// tasks finished, those counts, and the lowest executor id running one of its tasks.
async fn half_done(
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<Option<(String, String, u64, u64, String)>> {
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
            let executor = tasks
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["executorId"].as_str()?.parse::<u64>().ok())
                .min();
            if let Some(x) = executor {
                return Ok(Some((
                    app,
                    format!("{sid}.{attempt}"),
                    done,
                    total,
                    x.to_string(),
                )));
            }
        }
    }
    Ok(None)
}

/// Deletes the pod of `executor` through the API server; its name.
async fn delete_executor(
    http: &reqwest::Client,
    api: &str,
    ns: &str,
    app: &str,
    executor: &str,
) -> anyhow::Result<String> {
    let pods = get(
        http,
        &format!(
            "{api}/api/v1/namespaces/{ns}/pods?labelSelector=spark-app-selector%3D{app}%2Cspark-exec-id%3D{executor}"
        ),
    )
    .await?;
    let name = pods["items"][0]["metadata"]["name"]
        .as_str()
        .with_context(|| format!("no pod for executor {executor}"))?
        .to_owned();
    http.delete(format!("{api}/api/v1/namespaces/{ns}/pods/{name}"))
        .send()
        .await?
        .error_for_status()?;
    Ok(name)
}
