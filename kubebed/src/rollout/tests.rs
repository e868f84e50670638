//! The decisions without a bed: the values of the strategies, single steps, and whole
//! rollouts played against a stand-in kubelet that makes every new pod ready one step after
//! its creation and removes a deleted pod one step after its deletion.

use serde_json::json;

use super::daemonset::{self, Node};
use super::deployment::{self, Strategy};
use super::{IntOrPercent, PodView, deletion_order, template_hash};

/// A bound, running pod of template `hash`, ready since `ready_since` (never when `None`).
fn pod(name: &str, hash: &str, ready_since: Option<i64>) -> PodView {
    PodView {
        name: name.to_string(),
        hash: Some(hash.to_string()),
        node: Some("node-0".to_string()),
        created: 0,
        running: true,
        terminal: false,
        terminating: false,
        ready_since,
    }
}

fn on(node: &str, p: PodView) -> PodView {
    PodView {
        node: Some(node.to_string()),
        ..p
    }
}

fn rolling(surge: IntOrPercent, unavailable: IntOrPercent, replicas: i64) -> deployment::Spec {
    deployment::Spec {
        replicas,
        strategy: Strategy::RollingUpdate {
            max_surge: surge,
            max_unavailable: unavailable,
        },
        min_ready_seconds: 0,
        paused: false,
    }
}

#[test]
fn int_or_percent_reads_and_scales_as_kubernetes() {
    use IntOrPercent::{Int, Percent};
    assert_eq!(IntOrPercent::from_json(&json!(null), Int(1)), Ok(Int(1)));
    assert_eq!(IntOrPercent::from_json(&json!(2), Int(1)), Ok(Int(2)));
    assert_eq!(
        IntOrPercent::from_json(&json!("30%"), Int(1)),
        Ok(Percent(30))
    );
    for bad in [json!("3"), json!(-1), json!("-5%"), json!(1.5), json!(true)] {
        assert!(IntOrPercent::from_json(&bad, Int(1)).is_err(), "{bad}");
    }
    assert_eq!(Percent(25).scaled(3, true), 1);
    assert_eq!(Percent(25).scaled(3, false), 0);
    assert_eq!(Percent(25).scaled(8, true), 2);
    assert_eq!(Percent(25).scaled(8, false), 2);
    assert_eq!(Percent(30).scaled(10, true), 3);
    assert_eq!(Int(4).scaled(2, false), 4);
}

#[test]
fn deployment_defaults_and_fenceposts() {
    let spec = deployment::Spec::from_json(&json!({"replicas": 4})).unwrap();
    assert_eq!(
        spec.strategy,
        Strategy::RollingUpdate {
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
        }
    );
    assert_eq!(spec.fenceposts(), (1, 1));
    let of = |replicas: i64| {
        deployment::Spec::from_json(&json!({"replicas": replicas}))
            .unwrap()
            .fenceposts()
    };
    // Surge rounds up, unavailability down.
    assert_eq!(of(3), (1, 0));
    assert_eq!(of(10), (3, 2));
    assert_eq!(of(1), (1, 0));
    assert_eq!(deployment::Spec::from_json(&json!({})).unwrap().replicas, 1);
    // Both resolved to zero: one pod may be unavailable.
    let s = deployment::Spec::from_json(
        &json!({"replicas": 3, "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "10%"}}}),
    )
    .unwrap();
    assert_eq!(s.fenceposts(), (0, 1));
    // Never more unavailable than replicas.
    let s = deployment::Spec::from_json(
        &json!({"replicas": 2, "strategy": {"rollingUpdate": {"maxUnavailable": 5}}}),
    )
    .unwrap();
    assert_eq!(s.fenceposts(), (1, 2));
    let s = deployment::Spec::from_json(&json!({"replicas": 2, "strategy": {"type": "Recreate"}}))
        .unwrap();
    assert_eq!((s.strategy, s.fenceposts()), (Strategy::Recreate, (0, 0)));
}

#[test]
fn daemonset_defaults_and_counts() {
    let spec = daemonset::Spec::from_json(&json!({})).unwrap();
    assert_eq!(
        spec.strategy,
        daemonset::Strategy::RollingUpdate {
            max_unavailable: IntOrPercent::Int(1),
            max_surge: IntOrPercent::Int(0),
        }
    );
    assert_eq!(spec.counts(5), (0, 1));
    assert!(!spec.allows_surge());
    let of = |s: serde_json::Value, nodes| {
        daemonset::Spec::from_json(&json!({"updateStrategy": {"rollingUpdate": s}}))
            .unwrap()
            .counts(nodes)
    };
    // Both percentages round up.
    assert_eq!(of(json!({"maxUnavailable": "10%"}), 3), (0, 1));
    assert_eq!(of(json!({"maxUnavailable": "50%"}), 3), (0, 2));
    assert_eq!(
        of(json!({"maxUnavailable": 0, "maxSurge": "10%"}), 3),
        (1, 0)
    );
    let on_delete =
        daemonset::Spec::from_json(&json!({"updateStrategy": {"type": "OnDelete"}})).unwrap();
    assert_eq!(on_delete.strategy, daemonset::Strategy::OnDelete);
}

#[test]
fn template_hash_ignores_spelling_and_follows_content() {
    let a = json!({"metadata": {"labels": {"app": "x"}, "annotations": null},
                   "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let b = json!({"spec": {"containers": [{"image": "i", "name": "c"}]},
                   "metadata": {"labels": {"app": "x"}}});
    let c = json!({"metadata": {"labels": {"app": "x"}, "annotations": {"rev": "2"}},
                   "spec": {"containers": [{"name": "c", "image": "i"}]}});
    assert_eq!(template_hash(&a), template_hash(&b));
    assert_ne!(template_hash(&a), template_hash(&c));
    let h = template_hash(&c);
    assert!(!h.is_empty() && h.len() <= 10, "{h}");
    assert!(
        h.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
        "{h}"
    );
}

#[test]
fn availability_counts_min_ready_seconds_and_not_pods_being_deleted() {
    let p = pod("a", "h", Some(10_000));
    assert!(p.available(0, 10_000));
    assert!(!p.available(5, 15_000));
    assert!(p.available(5, 15_001));
    assert_eq!(p.available_at(5, 12_000), Some(15_001));
    assert_eq!(p.available_at(5, 16_000), None);
    let gone = PodView {
        terminating: true,
        ..p.clone()
    };
    assert!(!gone.ready() && !gone.available(0, 20_000));
    assert_eq!(gone.available_at(5, 12_000), None);
    assert!(!pod("b", "h", None).available(0, 20_000));
}

#[test]
fn scale_down_deletes_unready_then_newest_first() {
    let unbound = PodView {
        node: None,
        running: false,
        ..pod("unbound", "h", None)
    };
    let pending = PodView {
        running: false,
        ..pod("pending", "h", None)
    };
    let unready = pod("unready", "h", None);
    let fresh = pod("fresh", "h", Some(9_000));
    let old = PodView {
        created: 5,
        ..pod("old-ready", "h", Some(1_000))
    };
    let young = PodView {
        created: 7,
        ..pod("young-ready", "h", Some(1_000))
    };
    let pods = [&old, &young, &fresh, &unready, &pending, &unbound];
    let order: Vec<&str> = deletion_order(pods)
        .into_iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "unbound",
            "pending",
            "unready",
            "fresh",
            "young-ready",
            "old-ready"
        ]
    );
}

#[test]
fn a_rolling_step_surges_then_deletes_within_unavailability() {
    let spec = rolling(IntOrPercent::Int(1), IntOrPercent::Int(1), 3);
    let olds: Vec<PodView> = (0..3)
        .map(|i| pod(&format!("old-{i}"), "v1", Some(0)))
        .collect();
    // First pass: one new pod (surge), nothing deleted yet.
    let p = deployment::plan(&spec, "v2", &olds, 60_000);
    assert_eq!((p.create, p.delete.len()), (1, 0));
    assert_eq!(
        (
            p.status.replicas,
            p.status.updated_replicas,
            p.status.available_replicas
        ),
        (3, 0, 3)
    );
    // With the new pod not ready yet: one old pod may go (3 + 1 - 2 available kept).
    let mut pods = olds.clone();
    pods.push(pod("new-0", "v2", None));
    let p = deployment::plan(&spec, "v2", &pods, 60_000);
    assert_eq!((p.create, p.delete.len()), (0, 1));
    // A pod being deleted is no replica: it neither takes the surge nor counts as available.
    pods[0].terminating = true;
    let p = deployment::plan(&spec, "v2", &pods, 60_000);
    assert_eq!((p.create, p.delete.len()), (1, 0));
    assert_eq!(
        (
            p.status.replicas,
            p.status.ready_replicas,
            p.status.unavailable_replicas
        ),
        (3, 2, 1)
    );
}

#[test]
fn unavailable_old_pods_go_first() {
    let spec = rolling(IntOrPercent::Int(0), IntOrPercent::Int(1), 3);
    let pods = [
        pod("old-ready-0", "v1", Some(0)),
        pod("old-ready-1", "v1", Some(0)),
        pod("old-broken", "v1", None),
    ];
    let p = deployment::plan(&spec, "v2", &pods, 60_000);
    assert_eq!(p.delete, ["old-broken"]);
}

#[test]
fn paused_deployments_and_finished_pods() {
    let mut spec = rolling(IntOrPercent::Int(1), IntOrPercent::Int(1), 2);
    spec.paused = true;
    let pods = [pod("old-0", "v1", Some(0)), pod("old-1", "v1", Some(0))];
    let p = deployment::plan(&spec, "v2", &pods, 60_000);
    assert_eq!((p.create, p.delete.len()), (0, 0));
    spec.paused = false;
    let done = PodView {
        terminal: true,
        running: false,
        ready_since: None,
        ..pod("done", "v2", None)
    };
    let p = deployment::plan(&spec, "v2", &[done, pod("new-0", "v2", Some(0))], 60_000);
    assert_eq!(
        (p.create, p.delete.as_slice()),
        (1, ["done".to_string()].as_slice())
    );
}

#[test]
fn recreate_waits_until_every_old_pod_is_gone() {
    let spec = deployment::Spec {
        replicas: 2,
        strategy: Strategy::Recreate,
        min_ready_seconds: 0,
        paused: false,
    };
    let mut pods = vec![pod("old-0", "v1", Some(0)), pod("old-1", "v1", Some(0))];
    let p = deployment::plan(&spec, "v2", &pods, 1_000);
    assert_eq!((p.create, p.delete.len()), (0, 2));
    pods[0].terminating = true;
    pods[1].terminating = true;
    assert_eq!(deployment::plan(&spec, "v2", &pods, 1_000).create, 0);
    pods.remove(0);
    assert_eq!(deployment::plan(&spec, "v2", &pods, 1_000).create, 0);
    pods.clear();
    assert_eq!(deployment::plan(&spec, "v2", &pods, 1_000).create, 2);
}

/// The stand-in kubelet's step: pods deleted in an earlier step are gone, new pods are ready.
fn kubelet(pods: &mut Vec<PodView>, deleted_before: &[String], now: i64) {
    pods.retain(|p| !deleted_before.contains(&p.name));
    for p in pods.iter_mut() {
        if !p.running && !p.terminating {
            p.running = true;
            p.ready_since = Some(now);
        }
    }
}

/// Plays a Deployment's rollout from `replicas` available pods of `v1` to template `v2`,
/// checking after every step that at most `replicas + maxSurge` pods exist besides those being
/// deleted and at least `replicas - maxUnavailable` are available. Returns the steps taken.
fn roll_deployment(spec: &deployment::Spec) -> usize {
    let (surge, unavailable) = spec.fenceposts();
    let r = spec.replicas;
    let mut pods: Vec<PodView> = (0..r)
        .map(|i| pod(&format!("v1-{i}"), "v1", Some(0)))
        .collect();
    let mut now = 100_000;
    let mut terminating: Vec<String> = Vec::new();
    let mut made = 0;
    for step in 0..200 {
        let p = deployment::plan(spec, "v2", &pods, now);
        for name in &p.delete {
            let q = pods.iter_mut().find(|q| &q.name == name).unwrap();
            q.terminating = true;
        }
        for _ in 0..p.create {
            made += 1;
            pods.push(PodView {
                running: false,
                created: now,
                ..pod(&format!("v2-{made}"), "v2", None)
            });
        }
        let active: Vec<&PodView> = pods.iter().filter(|p| p.active()).collect();
        let available = active
            .iter()
            .filter(|p| p.available(spec.min_ready_seconds, now))
            .count();
        assert!(
            i64::try_from(active.len()).unwrap() <= r + surge,
            "step {step}: {} pods: {pods:?}",
            active.len()
        );
        assert!(
            i64::try_from(available).unwrap() >= r - unavailable,
            "step {step}: {available} available: {pods:?}"
        );
        if p.create == 0
            && p.delete.is_empty()
            && pods.iter().all(|p| p.is_of("v2") && p.active())
            && p.status.complete(spec)
        {
            return step;
        }
        kubelet(&mut pods, &terminating, now);
        terminating = pods
            .iter()
            .filter(|p| p.terminating)
            .map(|p| p.name.clone())
            .collect();
        now += 1_000;
    }
    panic!("no end to the rollout: {pods:?}");
}

#[test]
fn rolling_updates_keep_within_surge_and_unavailability() {
    use IntOrPercent::{Int, Percent};
    for (surge, unavailable, replicas) in [
        (Percent(25), Percent(25), 4),
        (Percent(25), Percent(25), 3),
        (Percent(25), Percent(25), 10),
        (Int(1), Int(0), 3),
        (Int(0), Int(1), 3),
        (Int(2), Int(2), 5),
        (Percent(100), Int(0), 3),
        (Int(0), Percent(100), 3),
        (Int(1), Int(1), 1),
    ] {
        let mut spec = rolling(surge, unavailable, replicas);
        let steps = roll_deployment(&spec);
        assert!(steps > 0, "{spec:?}");
        spec.min_ready_seconds = 2;
        let slower = roll_deployment(&spec);
        assert!(slower >= steps, "{spec:?}: {slower} < {steps}");
    }
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            name: format!("node-{i}"),
            should_run: true,
        })
        .collect()
}

#[test]
fn a_daemonset_replaces_a_nodes_pod_only_once_the_old_one_is_gone() {
    let spec = daemonset::Spec::from_json(&json!({})).unwrap();
    let mut pods = vec![
        on("node-0", pod("a", "v1", Some(0))),
        on("node-1", pod("b", "v1", Some(0))),
    ];
    let p = daemonset::plan(&spec, "v2", &nodes(2), &pods, 60_000);
    assert_eq!(
        (p.delete.as_slice(), p.create_on.len()),
        (["a".to_string()].as_slice(), 0)
    );
    assert_eq!(
        (p.status.updated_number_scheduled, p.status.number_ready),
        (0, 2)
    );
    // Node 0's pod is being deleted: it counts as unavailable, nothing else moves.
    pods[0].terminating = true;
    let p = daemonset::plan(&spec, "v2", &nodes(2), &pods, 60_000);
    assert_eq!(
        p,
        daemonset::Plan {
            status: daemonset::Status {
                desired_number_scheduled: 2,
                current_number_scheduled: 2,
                number_ready: 1,
                number_available: 1,
                number_unavailable: 1,
                ..Default::default()
            },
            ..Default::default()
        }
    );
    // Gone: a new pod there.
    pods.remove(0);
    let p = daemonset::plan(&spec, "v2", &nodes(2), &pods, 60_000);
    assert_eq!(
        (p.create_on.as_slice(), p.delete.len()),
        (["node-0".to_string()].as_slice(), 0)
    );
}

#[test]
fn a_daemonset_waits_for_min_ready_seconds_before_the_next_node() {
    let spec = daemonset::Spec::from_json(&json!({"minReadySeconds": 10})).unwrap();
    let pods = vec![
        on("node-0", pod("new", "v2", Some(50_000))),
        on("node-1", pod("old", "v1", Some(0))),
    ];
    let p = daemonset::plan(&spec, "v2", &nodes(2), &pods, 55_000);
    assert!(p.delete.is_empty() && p.create_on.is_empty(), "{p:?}");
    assert_eq!(p.wake_at, Some(60_001));
    assert_eq!((p.status.number_ready, p.status.number_available), (2, 1));
    let p = daemonset::plan(&spec, "v2", &nodes(2), &pods, 60_001);
    assert_eq!(p.delete, ["old"]);
    assert_eq!(p.wake_at, None);
}

#[test]
fn on_delete_replaces_only_deleted_pods() {
    let spec =
        daemonset::Spec::from_json(&json!({"updateStrategy": {"type": "OnDelete"}})).unwrap();
    let pods = vec![on("node-1", pod("old", "v1", Some(0)))];
    let p = daemonset::plan(&spec, "v2", &nodes(2), &pods, 60_000);
    assert_eq!(
        (p.create_on.as_slice(), p.delete.len()),
        (["node-0".to_string()].as_slice(), 0)
    );
    assert_eq!(p.status.updated_number_scheduled, 0);
}

#[test]
fn a_daemonset_leaves_nodes_that_should_not_run_it() {
    let spec = daemonset::Spec::from_json(&json!({})).unwrap();
    let mut ns = nodes(2);
    ns[1].should_run = false;
    let pods = vec![
        on("node-0", pod("a", "v1", Some(0))),
        on("node-1", pod("b", "v1", Some(0))),
        on("node-9", pod("elsewhere", "v1", Some(0))),
    ];
    let p = daemonset::plan(&spec, "v1", &ns, &pods, 60_000);
    assert_eq!(p.delete, ["b"]);
    assert_eq!(
        (
            p.status.desired_number_scheduled,
            p.status.number_misscheduled
        ),
        (1, 1)
    );
}

/// Plays a DaemonSet's rollout over `n` nodes from `v1` to `v2`, checking after every step
/// that without surge at most `maxUnavailable` nodes lack an available pod and no node holds
/// more than one pod, and with surge at most `maxSurge` nodes hold two pods not being
/// deleted.
fn roll_daemonset(spec: &daemonset::Spec, n: usize) -> usize {
    let (surge, unavailable) = spec.counts(i64::try_from(n).unwrap());
    let mut pods: Vec<PodView> = (0..n)
        .map(|i| on(&format!("node-{i}"), pod(&format!("v1-{i}"), "v1", Some(0))))
        .collect();
    let mut now = 100_000;
    let mut terminating: Vec<String> = Vec::new();
    let mut made = 0;
    for step in 0..200 {
        let p = daemonset::plan(spec, "v2", &nodes(n), &pods, now);
        for name in &p.delete {
            pods.iter_mut()
                .find(|q| &q.name == name)
                .unwrap()
                .terminating = true;
        }
        for node in &p.create_on {
            made += 1;
            pods.push(PodView {
                running: false,
                created: now,
                ..on(node, pod(&format!("v2-{made}"), "v2", None))
            });
        }
        let mut without = 0;
        let mut doubled = 0;
        for node in nodes(n) {
            let here: Vec<&PodView> = pods
                .iter()
                .filter(|p| p.node.as_deref() == Some(node.name.as_str()))
                .collect();
            without += i64::from(
                !here
                    .iter()
                    .any(|p| p.available(spec.min_ready_seconds, now)),
            );
            if surge == 0 {
                // Not even a pod being deleted beside the new one.
                assert!(here.len() <= 1, "step {step}: {here:?}");
            } else {
                // A pod being deleted is no longer one of the two.
                let live = here.iter().filter(|p| p.active()).count();
                assert!(live <= 2, "step {step}: {here:?}");
                doubled += i64::from(live == 2);
            }
        }
        if surge == 0 {
            assert!(
                without <= unavailable,
                "step {step}: {without} nodes: {pods:?}"
            );
        } else {
            assert!(doubled <= surge, "step {step}: {pods:?}");
        }
        let s = p.status;
        if p.create_on.is_empty()
            && p.delete.is_empty()
            && pods.iter().all(|p| p.is_of("v2") && p.active())
            && s.updated_number_scheduled == s.desired_number_scheduled
            && s.number_available == s.desired_number_scheduled
        {
            return step;
        }
        kubelet(&mut pods, &terminating, now);
        terminating = pods
            .iter()
            .filter(|p| p.terminating)
            .map(|p| p.name.clone())
            .collect();
        now += 1_000;
    }
    panic!("no end to the rollout: {pods:?}");
}

#[test]
fn daemonset_rolling_updates_keep_within_their_bounds() {
    for (strategy, n) in [
        (json!({}), 1),
        (json!({}), 4),
        (json!({"maxUnavailable": 2}), 5),
        (json!({"maxUnavailable": "50%"}), 3),
        (json!({"maxUnavailable": 0, "maxSurge": 1}), 3),
        (json!({"maxUnavailable": 0, "maxSurge": "50%"}), 4),
    ] {
        let mut spec =
            daemonset::Spec::from_json(&json!({"updateStrategy": {"rollingUpdate": strategy}}))
                .unwrap();
        let steps = roll_daemonset(&spec, n);
        assert!(steps > 0, "{spec:?}");
        spec.min_ready_seconds = 3;
        assert!(roll_daemonset(&spec, n) > steps, "{spec:?}");
    }
}

#[test]
fn deployment_conditions_keep_their_times_while_they_say_the_same() {
    let spec = rolling(IntOrPercent::Int(1), IntOrPercent::Int(1), 2);
    let rolling_status = deployment::Status {
        replicas: 3,
        updated_replicas: 1,
        ready_replicas: 2,
        available_replicas: 2,
        unavailable_replicas: 0,
    };
    let c1 = deployment::conditions(&json!(null), &spec, &rolling_status, "h", "T1");
    assert_eq!(c1[0]["type"], "Available");
    assert_eq!(c1[0]["status"], "True");
    assert_eq!(c1[1]["reason"], "ReplicaSetUpdated");
    // Nothing new: the same conditions, times included.
    assert_eq!(
        deployment::conditions(&c1, &spec, &rolling_status, "h", "T2"),
        c1
    );
    // Complete: Progressing says so, still True since T1.
    let done = deployment::Status {
        replicas: 2,
        updated_replicas: 2,
        ..rolling_status
    };
    let c3 = deployment::conditions(&c1, &spec, &done, "h", "T3");
    assert_eq!(c3[1]["reason"], "NewReplicaSetAvailable");
    assert_eq!(
        (&c3[1]["lastUpdateTime"], &c3[1]["lastTransitionTime"]),
        (&json!("T3"), &json!("T1"))
    );
    assert_eq!(c3[0], c1[0]);
    // Below replicas - maxUnavailable available: Available turns False at T4.
    let short = deployment::Status {
        available_replicas: 0,
        unavailable_replicas: 2,
        ..done
    };
    let c4 = deployment::conditions(&c3, &spec, &short, "h", "T4");
    assert_eq!(
        (&c4[0]["status"], &c4[0]["lastTransitionTime"]),
        (&json!("False"), &json!("T4"))
    );
}
