//! A run's executor pods as the API saw them: a watch of the run's namespace (the bed's store,
//! whose events are the API's watch events) that keeps each executor pod's creation and
//! deletion timestamps (what the API server records, to the second) and when the watch saw
//! each change (to the millisecond, for the charts).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use kubebed::resources::PODS;
use kubebed::store::{EventType, Store};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

/// One executor pod.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExecutorPod {
    /// `metadata.creationTimestamp`, epoch seconds.
    pub created: Option<i64>,
    /// `metadata.deletionTimestamp`, epoch seconds.
    pub deleted: Option<i64>,
    /// When the watch saw it created, epoch milliseconds.
    pub seen_created_ms: u64,
    /// When the watch first saw it marked for deletion or gone, epoch milliseconds.
    pub seen_deleted_ms: Option<u64>,
}

/// The executor pods of a namespace, kept up to date by a task until dropped.
pub(crate) struct PodWatch {
    pods: Arc<Mutex<BTreeMap<String, ExecutorPod>>>,
    task: JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Epoch milliseconds now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl PodWatch {
    /// Starts watching `ns` (before anything is created there).
    pub(crate) fn start(store: &Arc<Store>, ns: &str) -> Self {
        let pods = Arc::new(Mutex::new(BTreeMap::new()));
        let mut events = store.subscribe();
        let (store, ns, into) = (Arc::clone(store), ns.to_owned(), Arc::clone(&pods));
        let task = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) if e.res == PODS => {
                        let gone = e.kind == EventType::Deleted;
                        note(&into, &ns, &e.object, gone);
                    }
                    Ok(_) => {}
                    // Fell behind the store's buffer: what exists now is the state to keep.
                    Err(RecvError::Lagged(_)) => {
                        for p in store
                            .list(&PODS, Some(&ns), &Default::default(), &Default::default())
                            .0
                        {
                            note(&into, &ns, &p, false);
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Self { pods, task }
    }

    /// The executor pods seen so far, by name.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, ExecutorPod> {
        self.pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn note(into: &Mutex<BTreeMap<String, ExecutorPod>>, ns: &str, pod: &Value, gone: bool) {
    let meta = &pod["metadata"];
    if meta["namespace"].as_str() != Some(ns)
        || meta["labels"]["spark-role"].as_str() != Some("executor")
    {
        return;
    }
    let Some(name) = meta["name"].as_str() else {
        return;
    };
    let now = now_ms();
    let mut pods = into
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let p = pods.entry(name.to_owned()).or_insert_with(|| ExecutorPod {
        seen_created_ms: now,
        ..ExecutorPod::default()
    });
    p.created = p
        .created
        .or_else(|| meta["creationTimestamp"].as_str().and_then(epoch_seconds));
    if let Some(t) = meta["deletionTimestamp"].as_str().and_then(epoch_seconds) {
        p.deleted.get_or_insert(t);
    }
    if gone || p.deleted.is_some() {
        p.seen_deleted_ms.get_or_insert(now);
    }
}

/// Seconds since the epoch of a Kubernetes timestamp (`2026-01-02T03:04:05Z`, fractions
/// ignored).
pub(crate) fn epoch_seconds(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm), proleptic Gregorian calendar.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::epoch_seconds;

    #[test]
    fn kubernetes_timestamps_as_epoch_seconds() {
        assert_eq!(epoch_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_seconds("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(epoch_seconds("2026-12-07T11:49:30Z"), Some(1_796_644_170));
        assert_eq!(epoch_seconds("not a time"), None);
    }
}
