//! `dra`'s results: the medians of each workload and configuration (and of the runs with an
//! executor pod deleted or a node lost), the goals checked against shuffle tracking, and the
//! markdown tables.

use e2e::dra::{Config, Loss, Run, Settings, Workload};
use serde_json::{Value, json};

use crate::stats::{median, round};

/// What the shuffle service is measured against: shuffle tracking, Spark's own way of giving
/// executors back without one.
const BASELINE: Config = Config::Tracking;

/// The medians of runs, leaf by leaf of what the table shows.
fn medians(runs: &[&Run]) -> Value {
    let m =
        |f: &dyn Fn(&Run) -> f64| round(median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>()), 1);
    #[allow(clippy::cast_precision_loss)]
    let v = json!({
        "executor_seconds": m(&|r| r.executor_seconds),
        "wall_s": m(&|r| r.wall_s),
        "peak_executors": m(&|r| f64::from(r.peak_executors)),
        "executor_pods": m(&|r| f64::from(r.executor_pods)),
        "stages_recomputed": m(&|r| f64::from(r.events.stages_recomputed)),
        "tasks_recomputed": m(&|r| f64::from(r.events.tasks_recomputed)),
        "fetch_failures": m(&|r| f64::from(r.events.fetch_failures)),
        "remote_bytes_read": m(&|r| r.events.remote_bytes_read as f64),
        "local_bytes_read": m(&|r| r.events.local_bytes_read as f64),
        "longest_idle_before_removal_s": m(&|r| {
            r.events.idle_before_removal_s.values().copied().fold(0.0, f64::max)
        }),
    });
    v
}

/// The whole result: settings, per workload and configuration the medians, the median run's
/// executors over time, the disturbed runs, the goals, and every run.
pub(super) fn summary(
    settings: &Settings,
    workloads: &[Workload],
    configs: &[Config],
    runs: &[(Run, Loss)],
    failed: &[Value],
) -> Value {
    let mut out = Vec::new();
    for &w in workloads {
        let mut per = Vec::new();
        let mut digests: Vec<&str> = runs
            .iter()
            .filter(|(r, _)| r.workload == w)
            .map(|(r, _)| r.digest.as_str())
            .collect();
        digests.sort_unstable();
        digests.dedup();
        for &c in configs {
            let pick = |loss: Loss| -> Vec<&Run> {
                runs.iter()
                    .filter(|(r, l)| *l == loss && r.workload == w && r.config == c)
                    .map(|(r, _)| r)
                    .collect()
            };
            let (normal, killed, nodes) = (pick(Loss::None), pick(Loss::Pod), pick(Loss::Node));
            let mut by_cost = normal.clone();
            by_cost.sort_by(|a, b| a.executor_seconds.total_cmp(&b.executor_seconds));
            let typical = by_cost.get(by_cost.len() / 2);
            let undisturbed = medians(&normal);
            let disturbed = |runs: &[&Run]| {
                (!runs.is_empty()).then(|| {
                    let mut k = medians(runs);
                    // Against the undisturbed runs' median, when there are some.
                    k["time_lost_s"] = if normal.is_empty() {
                        Value::Null
                    } else {
                        json!(round(
                            k["wall_s"].as_f64().unwrap_or(0.0)
                                - undisturbed["wall_s"].as_f64().unwrap_or(0.0),
                            1
                        ))
                    };
                    k["ok"] = json!(runs.iter().all(|r| r.ok));
                    k["killed"] = json!(runs.iter().map(|r| &r.kill).collect::<Vec<_>>());
                    k
                })
            };
            let node_failures: Vec<&Value> = failed
                .iter()
                .filter(|f| {
                    f["loss"] == json!(Loss::Node)
                        && f["workload"] == json!(w)
                        && f["config"] == json!(c)
                })
                .collect();
            per.push(json!({
                "config": c,
                "label": c.label(),
                "runs": normal.len(),
                "kill_runs": killed.len(),
                "node_runs": nodes.len() + node_failures.len(),
                "ok": normal.iter().chain(&killed).chain(&nodes).all(|r| r.ok),
                "median": if normal.is_empty() { Value::Null } else { undisturbed.clone() },
                "kill": disturbed(&killed),
                "node_loss": disturbed(&nodes),
                "node_loss_failed": node_failures.iter().map(|f| &f["error"]).collect::<Vec<_>>(),
                "timeline": typical.map(|r| &r.timeline),
                "marks": typical.map(|r| &r.marks),
            }));
        }
        out.push(json!({
            "workload": w,
            "label": w.label(),
            "results_agree": digests.len() <= 1,
            "configs": per,
            "goals": goals(w, &per),
        }));
    }
    json!({
        "benchmark": "dra",
        "settings": settings,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "workloads": out,
        "failed": failed,
        "runs": runs.iter().map(|(r, loss)| json!({"loss": loss, "run": r})).collect::<Vec<_>>(),
    })
}

/// The goals against shuffle tracking: executor-seconds at most half, wall time at most 1.1x
/// (the skewed join and the ETL), and no stage run again after an executor pod's loss.
fn goals(w: Workload, per: &[Value]) -> Value {
    let of = |c: Config| per.iter().find(|p| p["config"] == json!(c));
    let (Some(s), Some(t)) = (of(Config::Service), of(BASELINE)) else {
        return Value::Null;
    };
    let ratio = |k: &str| {
        let (a, b) = (s["median"][k].as_f64()?, t["median"][k].as_f64()?);
        (b > 0.0).then(|| round(a / b, 2))
    };
    let (es, wall) = (ratio("executor_seconds"), ratio("wall_s"));
    let cost_goal = matches!(w, Workload::Skew | Workload::Etl);
    json!({
        "executor_seconds_vs_tracking": es,
        "wall_vs_tracking": wall,
        "executor_seconds_met": cost_goal.then(|| es.is_some_and(|r| r <= 0.5)),
        "wall_met": cost_goal.then(|| wall.is_some_and(|r| r <= 1.1)),
        "no_stage_recomputed_after_loss": s["kill"]["stages_recomputed"].as_f64().map(|n| n == 0.0),
    })
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// Seconds with one decimal, or "-" when there is no figure.
fn secs(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.1} s"))
}

fn mb(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{:.1} MB", x / 1e6))
}

/// The markdown tables of a summary.
pub(super) fn table(v: &Value) -> String {
    let mut out = String::new();
    // Settings given to every configuration on top of its own change what the labels mean.
    let extra: Vec<String> = v["settings"]["extra_confs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some(format!("`{}={}`", kv[0].as_str()?, kv[1].as_str()?)))
        .collect();
    if !extra.is_empty() {
        out.push_str(&format!(
            "Every configuration with {} on top of its own settings.\n\n",
            extra.join(", ")
        ));
    }
    let runs = |w: &Value| {
        w["configs"]
            .as_array()
            .and_then(|c| c.first())
            .map_or(0, |c| c["runs"].as_u64().unwrap_or(0))
    };
    for w in v["workloads"].as_array().into_iter().flatten() {
        let base = w["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["config"] == json!(BASELINE));
        out.push_str(&format!(
            "**{}** (medians of {} runs{}):\n\n",
            w["label"].as_str().unwrap_or_default(),
            runs(w),
            if w["results_agree"] == true {
                ", every run's results checked and equal"
            } else {
                ", RESULTS DIFFER between runs"
            }
        ));
        out.push_str("| Configuration | Executor-seconds | vs tracking | Wall time | vs tracking | Peak executors | Executor pods | Stages / tasks run again | Fetch failures | Shuffle read remotely |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for c in w["configs"].as_array().into_iter().flatten() {
            let m = &c["median"];
            let vs = |k: &str| {
                let b = base.and_then(|b| b["median"][k].as_f64()).unwrap_or(0.0);
                m[k].as_f64()
                    .filter(|_| b > 0.0)
                    .map_or_else(|| "-".to_owned(), |x| format!("{:.2}", x / b))
            };
            out.push_str(&format!(
                "| {}{} | {} | {} | {} s | {} | {} | {} | {} / {} | {} | {} |\n",
                c["label"].as_str().unwrap_or_default(),
                if c["ok"] == true {
                    ""
                } else {
                    " (WRONG RESULTS)"
                },
                num(&m["executor_seconds"], 0),
                vs("executor_seconds"),
                num(&m["wall_s"], 1),
                vs("wall_s"),
                num(&m["peak_executors"], 0),
                num(&m["executor_pods"], 0),
                num(&m["stages_recomputed"], 0),
                num(&m["tasks_recomputed"], 0),
                num(&m["fetch_failures"], 0),
                mb(&m["remote_bytes_read"]),
            ));
        }
        let killed: Vec<&Value> = w["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| !c["kill"].is_null())
            .collect();
        if !killed.is_empty() {
            out.push_str(&format!(
                "\nAn executor pod deleted in the middle of the reduce stage ({} run{} each):\n\n",
                killed[0]["kill_runs"],
                if killed[0]["kill_runs"] == 1 {
                    ""
                } else {
                    "s, medians"
                }
            ));
            out.push_str("| Configuration | Stages / tasks run again | Fetch failures | Failed tasks | Wall time | Time lost | Executor-seconds |\n");
            out.push_str("|---|---|---|---|---|---|---|\n");
            for c in killed {
                let k = &c["kill"];
                let failed = v["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| {
                        r["loss"] == json!(Loss::Pod)
                            && r["run"]["workload"] == w["workload"]
                            && r["run"]["config"] == c["config"]
                    })
                    .map(|r| {
                        let f = r["run"]["events"]["failed_tasks"].as_object();
                        f.map_or_else(String::new, |f| {
                            f.iter()
                                .map(|(k, n)| format!("{n} {k}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                out.push_str(&format!(
                    "| {} | {} / {} | {} | {} | {} s | {} s | {} |\n",
                    c["label"].as_str().unwrap_or_default(),
                    num(&k["stages_recomputed"], 0),
                    num(&k["tasks_recomputed"], 0),
                    num(&k["fetch_failures"], 0),
                    if failed.is_empty() {
                        "none".to_owned()
                    } else {
                        failed
                    },
                    num(&k["wall_s"], 1),
                    num(&k["time_lost_s"], 1),
                    num(&k["executor_seconds"], 0),
                ));
            }
        }
        node_table(&mut out, v, w);
        out.push('\n');
    }
    out
}

/// The runs with a whole node lost mid-stage: what each configuration did.
fn node_table(out: &mut String, v: &Value, w: &Value) {
    let lost: Vec<&Value> = w["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["node_runs"].as_u64().unwrap_or(0) > 0)
        .collect();
    if lost.is_empty() {
        return;
    }
    out.push_str(
        "\nA whole node (not the driver's) lost in the middle of the reduce stage, its shuffle service with it:\n\n",
    );
    out.push_str("| Configuration | Outcome | Stages / tasks run again | Fetch failures | Failed tasks | Wall time | Time lost |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for c in lost {
        let k = &c["node_loss"];
        let failed_runs = c["node_loss_failed"].as_array().map_or(0, Vec::len);
        let ok_runs = c["node_runs"].as_u64().unwrap_or(0) as usize - failed_runs;
        let results = if k["ok"] == false {
            "WRONG RESULTS"
        } else {
            "results right"
        };
        // A failed run's error (in the JSON) may be the job's or the harness's.
        let outcome = match (ok_runs, failed_runs) {
            (_, 0) => format!("finished, {results}"),
            (0, n) => format!("FAILED ({n}, see dra.json)"),
            (o, n) => format!("finished {o} ({results}), FAILED {n} (see dra.json)"),
        };
        let failed_tasks = v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["loss"] == json!(Loss::Node)
                    && r["run"]["workload"] == w["workload"]
                    && r["run"]["config"] == c["config"]
            })
            .filter_map(|r| r["run"]["events"]["failed_tasks"].as_object())
            .flat_map(|f| f.iter().map(|(k, n)| format!("{n} {k}")))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "| {} | {} | {} / {} | {} | {} | {} | {} |\n",
            c["label"].as_str().unwrap_or_default(),
            outcome,
            num(&k["stages_recomputed"], 0),
            num(&k["tasks_recomputed"], 0),
            num(&k["fetch_failures"], 0),
            if failed_tasks.is_empty() {
                "none".to_owned()
            } else {
                failed_tasks
            },
            secs(&k["wall_s"]),
            secs(&k["time_lost_s"]),
        ));
    }
}

#[cfg(test)]
mod tests {
    use e2e::dra::{Config, EventSummary, Loss, Run, Settings, Workload};

    use super::{summary, table};

    fn run(config: Config, executor_seconds: f64, wall_s: f64, stages: u32) -> Run {
        Run {
            workload: Workload::Skew,
            config,
            ok: true,
            digest: "d".into(),
            wall_s,
            executor_seconds,
            peak_executors: 4,
            executor_pods: 4,
            timeline: vec![(0.0, 0), (1.0, 4), (wall_s, 0)],
            marks: Vec::new(),
            kill: None,
            events: EventSummary {
                stages_recomputed: stages,
                ..EventSummary::default()
            },
        }
    }

    #[test]
    fn goals_against_tracking_and_the_time_a_loss_cost() {
        let runs = vec![
            (run(Config::Service, 90.0, 60.0, 0), Loss::None),
            (run(Config::Service, 100.0, 62.0, 0), Loss::None),
            (run(Config::Service, 110.0, 64.0, 0), Loss::None),
            (run(Config::Tracking, 200.0, 60.0, 0), Loss::None),
            (run(Config::Service, 120.0, 70.0, 0), Loss::Pod),
            (run(Config::Tracking, 230.0, 75.0, 1), Loss::Pod),
            (run(Config::Service, 150.0, 90.0, 1), Loss::Node),
        ];
        let failed = vec![serde_json::json!({
            "workload": Workload::Skew, "config": Config::Tracking, "loss": Loss::Node,
            "error": "the run took over 900s",
        })];
        let s = summary(
            &Settings::default(),
            &[Workload::Skew],
            &[Config::Service, Config::Tracking],
            &runs,
            &failed,
        );
        let w = &s["workloads"][0];
        assert_eq!(w["results_agree"], true);
        assert_eq!(w["configs"][0]["median"]["executor_seconds"], 100.0);
        assert_eq!(w["configs"][0]["kill"]["time_lost_s"], 8.0);
        assert_eq!(w["configs"][1]["kill"]["stages_recomputed"], 1.0);
        assert_eq!(w["goals"]["executor_seconds_vs_tracking"], 0.5);
        assert_eq!(w["goals"]["executor_seconds_met"], true);
        assert_eq!(w["goals"]["wall_met"], true);
        assert_eq!(w["goals"]["no_stage_recomputed_after_loss"], true);
        let t = table(&s);
        assert!(
            t.contains("| shuffle service (DaemonSet) | 100 | 0.50 | 62.0 s | 1.03 |"),
            "{t}"
        );
        assert!(
            t.contains("| shuffle tracking | 1 / 0 | 0 | none | 75.0 s | 15.0 s | 230 |"),
            "{t}"
        );
        assert!(
            t.contains("| shuffle service (DaemonSet) | finished, results right | 1 / 0 | 0 | none | 90.0 s | 28.0 s |"),
            "{t}"
        );
        assert!(
            t.contains(
                "| shuffle tracking | FAILED (1, see dra.json) | - / - | - | none | - | - |"
            ),
            "{t}"
        );
    }
}
