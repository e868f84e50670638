//! What Spark's event log says about a run: the application's start and end, work done again
//! (stage attempts beyond the first, their tasks, retried tasks), failed tasks by reason, the
//! shuffle bytes read from other executors or services, and how long each executor that
//! dynamic allocation removed had been idle.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The event log's figures of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventSummary {
    /// `SparkListenerApplicationStart`, epoch milliseconds.
    pub app_start_ms: u64,
    /// `SparkListenerApplicationEnd`, epoch milliseconds (0: the log has none).
    pub app_end_ms: u64,
    /// Stage attempts beyond the first (a map stage run again for lost output, a stage
    /// resubmitted after a fetch failure).
    pub stages_recomputed: u32,
    /// Tasks of those attempts, plus task attempts beyond the first.
    pub tasks_recomputed: u32,
    /// Tasks that did not succeed, by `Task End Reason`.
    pub failed_tasks: BTreeMap<String, u32>,
    /// Of which `FetchFailed`.
    pub fetch_failures: u32,
    /// Shuffle bytes read from other hosts (`Remote Bytes Read`).
    pub remote_bytes_read: u64,
    /// Shuffle bytes read on the reader's own host (`Local Bytes Read`).
    pub local_bytes_read: u64,
    /// For each executor removed before the application's end: seconds from its last task's
    /// end (or its start, if it ran none) to its removal, by executor id.
    pub idle_before_removal_s: BTreeMap<String, f64>,
    /// Why executors were removed (`Removed Reason`), by executor id.
    pub removed: BTreeMap<String, String>,
}

/// Reads the figures out of an event log's events.
#[must_use]
pub fn summarize(events: &[Value]) -> EventSummary {
    let mut s = EventSummary::default();
    let mut last_busy: HashMap<String, u64> = HashMap::new();
    let mut removed_at: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        let ms = |v: &Value| v.as_u64().unwrap_or(0);
        match e["Event"].as_str().unwrap_or_default() {
            "SparkListenerApplicationStart" => s.app_start_ms = ms(&e["Timestamp"]),
            "SparkListenerApplicationEnd" => s.app_end_ms = ms(&e["Timestamp"]),
            "SparkListenerStageSubmitted"
                if e["Stage Info"]["Stage Attempt ID"].as_u64().unwrap_or(0) > 0 =>
            {
                s.stages_recomputed += 1;
            }
            "SparkListenerExecutorAdded" => {
                if let Some(x) = e["Executor ID"].as_str() {
                    last_busy.insert(x.to_owned(), ms(&e["Timestamp"]));
                }
            }
            "SparkListenerExecutorRemoved" => {
                if let Some(x) = e["Executor ID"].as_str() {
                    removed_at.insert(x.to_owned(), ms(&e["Timestamp"]));
                    s.removed.insert(
                        x.to_owned(),
                        e["Removed Reason"].as_str().unwrap_or_default().to_owned(),
                    );
                }
            }
            "SparkListenerTaskEnd" => task_end(&mut s, &mut last_busy, e),
            _ => {}
        }
    }
    for (x, at) in removed_at {
        if let Some(busy) = last_busy.get(&x) {
            #[allow(clippy::cast_precision_loss)]
            let idle = at.saturating_sub(*busy) as f64 / 1000.0;
            s.idle_before_removal_s.insert(x, idle);
        }
    }
    s
}

fn task_end(s: &mut EventSummary, last_busy: &mut HashMap<String, u64>, e: &Value) {
    let info = &e["Task Info"];
    if e["Stage Attempt ID"].as_u64().unwrap_or(0) > 0 || info["Attempt"].as_u64().unwrap_or(0) > 0
    {
        s.tasks_recomputed += 1;
    }
    let reason = e["Task End Reason"]["Reason"].as_str().unwrap_or("Unknown");
    if reason != "Success" {
        *s.failed_tasks.entry(reason.to_owned()).or_default() += 1;
        if reason == "FetchFailed" {
            s.fetch_failures += 1;
        }
    }
    let read = &e["Task Metrics"]["Shuffle Read Metrics"];
    s.remote_bytes_read += read["Remote Bytes Read"].as_u64().unwrap_or(0);
    s.local_bytes_read += read["Local Bytes Read"].as_u64().unwrap_or(0);
    if let Some(x) = info["Executor ID"].as_str() {
        let end = info["Finish Time"].as_u64().unwrap_or(0);
        let t = last_busy.entry(x.to_owned()).or_default();
        *t = (*t).max(end);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::summarize;

    #[test]
    fn retries_failures_bytes_and_idle_time_from_the_events() {
        let ev = vec![
            json!({"Event": "SparkListenerApplicationStart", "Timestamp": 1000}),
            json!({"Event": "SparkListenerExecutorAdded", "Executor ID": "1", "Timestamp": 2000}),
            json!({"Event": "SparkListenerExecutorAdded", "Executor ID": "2", "Timestamp": 2000}),
            json!({"Event": "SparkListenerStageSubmitted", "Stage Info": {"Stage Attempt ID": 0}}),
            json!({"Event": "SparkListenerTaskEnd", "Stage Attempt ID": 0,
                   "Task Info": {"Attempt": 0, "Executor ID": "1", "Finish Time": 5000},
                   "Task End Reason": {"Reason": "FetchFailed"},
                   "Task Metrics": {"Shuffle Read Metrics": {"Remote Bytes Read": 10, "Local Bytes Read": 1}}}),
            json!({"Event": "SparkListenerStageSubmitted", "Stage Info": {"Stage Attempt ID": 1}}),
            json!({"Event": "SparkListenerTaskEnd", "Stage Attempt ID": 1,
                   "Task Info": {"Attempt": 0, "Executor ID": "1", "Finish Time": 7000},
                   "Task End Reason": {"Reason": "Success"},
                   "Task Metrics": {"Shuffle Read Metrics": {"Remote Bytes Read": 5}}}),
            json!({"Event": "SparkListenerExecutorRemoved", "Executor ID": "1", "Timestamp": 12500,
                   "Removed Reason": "idle"}),
            json!({"Event": "SparkListenerExecutorRemoved", "Executor ID": "2", "Timestamp": 4000,
                   "Removed Reason": "idle"}),
            json!({"Event": "SparkListenerApplicationEnd", "Timestamp": 20000}),
        ];
        let s = summarize(&ev);
        assert_eq!((s.app_start_ms, s.app_end_ms), (1000, 20000));
        assert_eq!((s.stages_recomputed, s.tasks_recomputed), (1, 1));
        assert_eq!(s.failed_tasks.get("FetchFailed"), Some(&1));
        assert_eq!(s.fetch_failures, 1);
        assert_eq!((s.remote_bytes_read, s.local_bytes_read), (15, 1));
        assert_eq!(s.idle_before_removal_s.get("1"), Some(&5.5));
        assert_eq!(s.idle_before_removal_s.get("2"), Some(&2.0));
    }
}
