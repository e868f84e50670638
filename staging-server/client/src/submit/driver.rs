//! The end of the driver pod `submit` labelled, and what it means for `submit`'s exit status.
//!
//! In cluster mode spark-submit (4.3) exits 0 once the driver pod has ended, whether it ended
//! `Succeeded` or `Failed`: its pod watcher waits for either phase and nothing turns the phase
//! into an exit status. So `submit` follows the driver pod itself, by the submission label it
//! put on it, with the credentials it created the Secret with: a list, then a watch from the
//! list's resource version for 20 s, repeated. After spark-submit has waited for the driver,
//! the first list finds it ended.
//!
//! The wait is bounded where it can go wrong, not in length (a job may run for days): a driver
//! pod that disappears without having ended is reported at once, and an API server that cannot
//! be reached for the outage limit ends the wait.

use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};

use crate::http::{BACKOFF_CAP, Backoff};
use crate::{ClientError, EXIT_AUTH, EXIT_DRIVER_GONE, EXIT_FAILURE, EXIT_UNAVAILABLE};

/// Spark's name for the driver's container when neither a template nor
/// `spark.kubernetes.driver.podTemplateContainerName` names one.
pub const SPARK_DRIVER_CONTAINER: &str = "spark-kubernetes-driver";

/// How long the server runs each watch before a new list: below the client's read timeout
/// (30 s), so that a quiet watch ends on the server's side, not as a timeout here.
const WATCH_SECONDS: u32 = 20;
const _: () = assert!((WATCH_SECONDS as u128) * 1000 < super::kube::CALL_TIMEOUT.as_millis());

/// The shortest time between two lists: a watch that the server ends at once never turns
/// into a busy loop.
const MIN_ROUND: Duration = Duration::from_secs(1);

/// The longest quote of a reason or message from the pod's status, in characters.
const MAX_QUOTE: usize = 200;

/// The driver pod to follow.
#[derive(Debug, Clone)]
pub struct DriverPod {
    /// Its namespace.
    pub namespace: String,
    /// A label selector matching it and no other pod.
    pub selector: String,
    /// Spark's container in it, whose exit code is the job's.
    pub container: String,
}

/// How a driver pod ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `Succeeded`: `submit` keeps spark-submit's status.
    Succeeded,
    /// `Failed`: `submit` exits with `code` and says `message`.
    Failed {
        /// The exit status: the driver container's exit code bounded to 1..=255 (0 is 1), or
        /// 1 when it has none.
        code: u8,
        /// One sentence: pod, namespace, phase, reason and message, exit code.
        message: String,
    },
}

/// How `pod` ended, or `None` while it has not ended. `container` is Spark's container.
#[must_use]
pub fn outcome(pod: &Pod, container: &str) -> Option<Outcome> {
    match pod.status.as_ref()?.phase.as_deref()? {
        "Succeeded" => Some(Outcome::Succeeded),
        "Failed" => Some(failed(pod, container)),
        _ => None,
    }
}

/// The exit status and sentence of a `Failed` pod.
fn failed(pod: &Pod, container: &str) -> Outcome {
    let status = pod.status.clone().unwrap_or_default();
    let statuses = status.container_statuses.unwrap_or_default();
    // Spark's container by name; a pod of one container has no other candidate.
    let spark = statuses
        .iter()
        .find(|c| c.name == container)
        .or(if statuses.len() == 1 {
            statuses.first()
        } else {
            None
        });
    let ended = spark.and_then(|c| c.state.as_ref()?.terminated.as_ref());
    let code = ended.map_or(1, |t| u8::try_from(t.exit_code.clamp(1, 255)).unwrap_or(1));
    // Why: the pod's own reason and message (an eviction, a deadline), else the container's.
    let (reason, message) = match (&status.reason, &status.message) {
        (None, None) => ended.map_or((None, None), |t| (t.reason.clone(), t.message.clone())),
        (r, m) => (r.clone(), m.clone()),
    };
    let why = match (reason.as_deref().map(quote), message.as_deref().map(quote)) {
        (Some(r), Some(m)) => format!(" ({r}: {m})"),
        (Some(s), None) | (None, Some(s)) => format!(" ({s})"),
        (None, None) => String::new(),
    };
    let exit = match (spark, ended) {
        (Some(c), Some(t)) => format!("container {} exit code {}", c.name, t.exit_code),
        _ => match failed_init(
            status
                .init_container_statuses
                .as_deref()
                .unwrap_or_default(),
        ) {
            Some((name, c)) => {
                format!("init-container {name} exit code {c}, container {container} never ran")
            }
            None => format!("no exit code from container {container}"),
        },
    };
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    Outcome::Failed {
        code,
        message: format!(
            "driver pod {ns}/{name} ended in phase Failed{why}, {exit}; submit exits with {code}"
        ),
    }
}

/// The first init-container that ended with a non-zero exit code.
fn failed_init(statuses: &[ContainerStatus]) -> Option<(&str, i32)> {
    statuses.iter().find_map(|c| {
        let t = c.state.as_ref()?.terminated.as_ref()?;
        (t.exit_code != 0).then_some((c.name.as_str(), t.exit_code))
    })
}

/// The first line of `s`, at most [`MAX_QUOTE`] characters.
fn quote(s: &str) -> String {
    let line = s.trim().lines().next().unwrap_or_default();
    if line.chars().count() > MAX_QUOTE {
        format!("{}...", line.chars().take(MAX_QUOTE).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// What one list and the watch after it found.
enum Round {
    /// The pod ended.
    Ended(Outcome),
    /// No such pod, or it was deleted without having ended.
    Gone,
    /// Still running when the watch ended: list again.
    Again,
}

/// Follows `driver` until it ends. Says once on standard error that it waits, when the pod
/// has not ended at the first look.
///
/// # Errors
/// The pod disappeared without having ended ([`EXIT_DRIVER_GONE`]), the API server could not
/// be reached or failed for `outage` ([`EXIT_UNAVAILABLE`]), refused the credentials
/// ([`EXIT_AUTH`]) or the request ([`EXIT_FAILURE`]).
pub async fn follow(
    client: &Client,
    driver: &DriverPod,
    outage: Duration,
) -> Result<Outcome, ClientError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &driver.namespace);
    let what = format!(
        "the driver pod labelled {} in namespace {}",
        driver.selector, driver.namespace
    );
    // The pod's name once seen, for the messages.
    let mut seen: Option<String> = None;
    // Set while the API server cannot be reached.
    let mut down: Option<Backoff> = None;
    loop {
        let started = tokio::time::Instant::now();
        let error = match round(&api, driver, &mut seen).await {
            Ok(Round::Ended(o)) => return Ok(o),
            Ok(Round::Gone) => {
                let pod = seen.map_or(what, |name| {
                    format!("driver pod {}/{name}", driver.namespace)
                });
                return Err(ClientError::new(
                    EXIT_DRIVER_GONE,
                    format!(
                        "{pod} disappeared before it ended (deleted?); the job's outcome is unknown"
                    ),
                ));
            }
            Ok(Round::Again) => {
                down = None;
                tokio::time::sleep_until(started + MIN_ROUND).await;
                continue;
            }
            Err(e) => e,
        };
        let why = format!("following {what}: {error}");
        match &error {
            kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
                return Err(ClientError::new(
                    EXIT_AUTH,
                    format!("{why} (following the job needs get, list and watch on pods)"),
                ));
            }
            kube::Error::Api(s) if s.code != 429 && s.code < 500 => {
                return Err(ClientError::new(EXIT_FAILURE, why));
            }
            _ => {}
        }
        let backoff = down.get_or_insert_with(|| {
            Backoff::new(retries_within(outage)).until(Instant::now() + outage)
        });
        if !backoff.wait("submit", &why).await {
            return Err(ClientError::new(
                EXIT_UNAVAILABLE,
                format!(
                    "the Kubernetes API could not be reached for {} while following {what} (last error: {error}); the job's outcome is unknown",
                    humantime::format_duration(outage)
                ),
            ));
        }
    }
}

/// One list, and a watch from its resource version while the pod runs.
async fn round(
    api: &Api<Pod>,
    driver: &DriverPod,
    seen: &mut Option<String>,
) -> Result<Round, kube::Error> {
    let list = api
        .list(&ListParams::default().labels(&driver.selector))
        .await?;
    let Some(pod) = list.items.first() else {
        return Ok(Round::Gone);
    };
    if let Some(o) = outcome(pod, &driver.container) {
        return Ok(Round::Ended(o));
    }
    if seen.is_none() {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        eprintln!(
            "staging-server submit: driver pod {}/{} has not ended ({}); waiting for its end",
            driver.namespace,
            pod.metadata.name.as_deref().unwrap_or_default(),
            phase.unwrap_or("no phase yet"),
        );
    }
    seen.clone_from(&pod.metadata.name);
    let version = list.metadata.resource_version.unwrap_or_default();
    let params = WatchParams::default()
        .labels(&driver.selector)
        .timeout(WATCH_SECONDS);
    let mut events = api.watch(&params, &version).await?.boxed();
    while let Some(event) = events.try_next().await? {
        match event {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                if let Some(o) = outcome(&p, &driver.container) {
                    return Ok(Round::Ended(o));
                }
            }
            // A pod deleted after its end still tells how it ended.
            WatchEvent::Deleted(p) => {
                return Ok(outcome(&p, &driver.container).map_or(Round::Gone, Round::Ended));
            }
            WatchEvent::Bookmark(_) => {}
            // 410: the list's version is too old to watch from; a new list follows.
            WatchEvent::Error(s) if s.code == 410 => return Ok(Round::Again),
            WatchEvent::Error(s) => return Err(kube::Error::Api(s)),
        }
    }
    Ok(Round::Again)
}

/// How many retries of the client's one retry policy fit in `limit` (the pauses double from
/// 1 s to [`BACKOFF_CAP`], then stay there).
fn retries_within(limit: Duration) -> u32 {
    let mut backoff = Backoff::new(u32::MAX);
    let mut spent = Duration::ZERO;
    let mut retries = 0u32;
    while let Some(pause) = backoff.next_pause() {
        if pause == BACKOFF_CAP {
            let rest = limit.saturating_sub(spent).as_secs() / BACKOFF_CAP.as_secs();
            return retries.saturating_add(u32::try_from(rest).unwrap_or(u32::MAX));
        }
        spent += pause;
        if spent > limit {
            break;
        }
        retries += 1;
    }
    retries
}

#[cfg(test)]
mod tests;
