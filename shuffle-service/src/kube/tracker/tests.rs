//! The tracker's decisions from pod facts, without an API server.

use super::*;

const GRACE: Duration = Duration::from_secs(30);

fn app(s: &str) -> AppId {
    s.parse().expect("app id")
}

fn owner(ns: &str, uid: &str) -> PodOwner {
    PodOwner {
        namespace: ns.into(),
        driver_uid: uid.into(),
    }
}

/// An executor pod controlled by driver pod `driver` of its namespace.
fn exec(uid: &str, ns: &str, a: &str, driver: &str, secret: Option<&str>) -> ExecutorPod {
    ExecutorPod {
        uid: uid.into(),
        name: format!("{uid}-pod"),
        namespace: ns.into(),
        app: app(a),
        driver: Some(owner(ns, driver)),
        secret: secret.map(|s| s.as_bytes().to_vec()),
        ended: false,
    }
}

fn driver(uid: &str, ns: &str, phase: Phase) -> DriverPod {
    DriverPod {
        uid: uid.into(),
        name: format!("{uid}-driver"),
        namespace: ns.into(),
        phase,
        app: None,
    }
}

fn drivers_all() -> Scope {
    Scope {
        drivers: true,
        namespace: None,
    }
}

fn executors_all() -> Scope {
    Scope {
        drivers: false,
        namespace: None,
    }
}

/// A tracker (learning secrets or not) whose driver watch listed no pod.
fn tracker(learn: bool) -> (Tracker, Arc<Claims>) {
    let claims = Arc::new(Claims::default());
    let mut t = Tracker::new(GRACE, Arc::clone(&claims), learn, 1);
    t.relisted(&drivers_all(), &HashSet::new(), Instant::now());
    (t, claims)
}

fn ids(v: Vec<(AppId, Reason)>) -> Vec<(String, Reason)> {
    let mut v: Vec<_> = v
        .into_iter()
        .map(|(a, r)| (a.as_str().to_owned(), r))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_succeeded_driver_ends_its_application_after_the_grace_only() {
    let t0 = Instant::now();
    let (mut t, _) = tracker(false);
    t.driver_seen(driver("d1", "ns", Phase::Live), t0);
    t.driver_seen(driver("d2", "ns", Phase::Live), t0);
    t.executor_seen(exec("e1", "ns", "spark-a", "d1", None));
    t.executor_seen(exec("e2", "ns", "spark-b", "d2", None));
    t.driver_seen(driver("d1", "ns", Phase::Succeeded), t0);
    assert!(t.due(t0 + GRACE / 2).is_empty());
    assert_eq!(
        ids(t.due(t0 + GRACE)),
        vec![("spark-a".into(), Reason::DriverSucceeded)]
    );
    t.removed(&app("spark-a"));
    assert!(t.is_removed(&app("spark-a")));
}

#[test]
fn a_deleted_driver_ends_its_application_at_once_even_if_executors_are_seen_later() {
    let t0 = Instant::now();
    let (mut t, _) = tracker(false);
    t.driver_seen(driver("d1", "ns", Phase::Live), t0);
    t.driver_gone(driver("d1", "ns", Phase::Live), t0);
    assert!(t.due(t0).is_empty(), "no executor names d1 on this node");
    t.executor_seen(exec("e1", "ns", "spark-a", "d1", None));
    assert_eq!(
        ids(t.due(t0)),
        vec![("spark-a".into(), Reason::DriverDeleted)]
    );
}

#[test]
fn restarts_errors_and_unknown_drivers_delete_nothing() {
    let t0 = Instant::now();
    let claims = Arc::new(Claims::default());
    let mut t = Tracker::new(GRACE, Arc::clone(&claims), false, 1);
    // A fresh start: executors listed, their drivers not (yet) seen.
    t.executor_seen(exec("e1", "ns", "spark-a", "d1", None));
    t.executor_seen(exec("e2", "ns", "spark-b", "d2", None));
    t.relisted(&drivers_all(), &HashSet::new(), t0);
    assert!(t.due(t0 + GRACE * 10).is_empty());
    // An executor without a controlling driver pod (client mode) names none.
    let mut e = exec("e3", "ns", "spark-c", "d3", None);
    e.driver = None;
    t.executor_seen(e);
    t.driver_gone(driver("d3", "ns", Phase::Live), t0);
    assert!(t.due(t0 + GRACE * 10).is_empty());
    assert!(claims.take_pending().is_empty(), "nothing bound");
}

#[test]
fn a_driver_missing_from_a_complete_list_is_gone_but_only_in_the_listed_namespace() {
    let t0 = Instant::now();
    let mut t = Tracker::new(GRACE, Arc::default(), false, 2);
    let ns = |n: &str| Scope {
        drivers: true,
        namespace: Some(n.into()),
    };
    let listed = |u: &str| HashSet::from([u.to_owned()]);
    t.driver_seen(driver("d1", "ns1", Phase::Live), t0);
    t.driver_seen(driver("d2", "ns2", Phase::Live), t0);
    t.relisted(&ns("ns1"), &listed("d1"), t0);
    t.relisted(&ns("ns2"), &listed("d2"), t0);
    t.executor_seen(exec("e1", "ns1", "spark-a", "d1", None));
    t.executor_seen(exec("e2", "ns2", "spark-b", "d2", None));
    assert!(t.due(t0).is_empty());
    // A later list of ns1 without d1; d2 is not in it, but ns2 was not listed.
    t.relisted(&ns("ns1"), &HashSet::new(), t0);
    assert_eq!(
        ids(t.due(t0)),
        vec![("spark-a".into(), Reason::DriverDeleted)]
    );
}

#[test]
fn with_learned_secrets_pods_alone_bind_nothing_and_a_proven_secret_binds_its_claimant() {
    let t0 = Instant::now();
    let (mut t, claims) = tracker(true);
    let a = app("spark-a");
    // The tenant's pods are there first, alone.
    t.driver_seen(driver("dt", "team-b", Phase::Live), t0);
    let l = t.executor_seen(exec("et", "team-b", "spark-a", "dt", Some("evil")));
    assert_eq!(l.learned, 1, "a candidate, nothing more");
    assert_eq!(claims.owner(&a), None);
    assert!(claims.take_pending().is_empty());
    // The victim's pods arrive: contested, both candidates, still nobody bound.
    t.driver_seen(driver("dv", "team-a", Phase::Live), t0);
    t.executor_seen(exec("ev", "team-a", "spark-a", "dv", Some("good")));
    assert_eq!(t.contested(), 1);
    assert_eq!(claims.view(&a).candidates.len(), 2);
    // The tenant's driver ends: nothing is bound, nothing decided.
    t.driver_gone(driver("dt", "team-b", Phase::Live), t0);
    assert!(t.due(t0).is_empty());
    // The victim's executor proves its secret (the handshake binds).
    assert_eq!(claims.bind(&a, &owner("team-a", "dv")), Ok(true));
    assert_eq!(
        claims.take_pending(),
        vec![(a.clone(), Some(owner("team-a", "dv")))]
    );
    assert_eq!(
        claims.bind(&a, &owner("team-b", "dt")),
        Err(owner("team-a", "dv"))
    );
    // The tenant's pods go: its candidate goes, the owner's stays.
    t.executor_gone("et");
    assert_eq!(t.contested(), 0);
    assert_eq!(claims.view(&a).candidates.len(), 1);
    assert_eq!(claims.owner_secret(&a).as_deref(), Some(&b"good"[..]));
    t.driver_gone(driver("dv", "team-a", Phase::Live), t0);
    assert_eq!(
        ids(t.due(t0)),
        vec![("spark-a".into(), Reason::DriverDeleted)]
    );
}

#[test]
fn labels_and_creation_times_of_another_namespace_decide_nothing_once_bound() {
    let t0 = Instant::now();
    let (mut t, claims) = tracker(true);
    let a = app("spark-a");
    t.driver_seen(driver("d1", "victim", Phase::Live), t0);
    let l = t.executor_seen(exec("e1", "victim", "spark-a", "d1", Some("good")));
    assert_eq!(l.learned, 1);
    claims.bind(&a, &owner("victim", "d1")).unwrap();
    // Another namespace's pod (old, relabelled as a driver) and an executor pod it
    // controls, with its own secret: a candidate that the binding refuses.
    t.driver_seen(driver("dx", "attacker", Phase::Live), t0);
    t.executor_seen(exec("ex", "attacker", "spark-a", "dx", Some("evil")));
    assert_eq!(claims.owner_secret(&a).as_deref(), Some(&b"good"[..]));
    assert!(claims.bind(&a, &owner("attacker", "dx")).is_err());
    assert_eq!(t.contested(), 1);
    t.driver_gone(driver("dx", "attacker", Phase::Failed), t0);
    assert!(t.due(t0 + GRACE).is_empty());
    // The owner still decides.
    t.driver_gone(driver("d1", "victim", Phase::Live), t0);
    assert_eq!(
        ids(t.due(t0)),
        vec![("spark-a".into(), Reason::DriverDeleted)]
    );
}

#[test]
fn an_owner_reference_into_another_namespace_is_not_followed() {
    let t0 = Instant::now();
    let (mut t, claims) = tracker(true);
    t.driver_seen(driver("d1", "victim", Phase::Live), t0);
    // A pod of "attacker" whose owner reference carries the victim driver's uid.
    t.executor_seen(exec("ex", "attacker", "spark-a", "d1", Some("evil")));
    assert_eq!(claims.with_secrets(), 0);
    t.driver_gone(driver("d1", "victim", Phase::Live), t0);
    assert!(t.due(t0).is_empty());
    assert!(claims.take_pending().is_empty());
}

#[test]
fn without_learned_secrets_executor_pods_naming_different_drivers_bind_nothing() {
    let t0 = Instant::now();
    let claims = Arc::new(Claims::default());
    let mut t = Tracker::new(GRACE, Arc::clone(&claims), false, 1);
    // A restart: both are listed before the driver list completes.
    t.executor_seen(exec("e1", "victim", "spark-a", "d1", None));
    t.executor_seen(exec("ex", "attacker", "spark-a", "dx", None));
    t.driver_seen(driver("dx", "attacker", Phase::Live), t0);
    t.driver_seen(driver("d1", "victim", Phase::Live), t0);
    t.relisted(
        &drivers_all(),
        &HashSet::from(["d1".to_owned(), "dx".to_owned()]),
        t0,
    );
    assert!(claims.take_pending().is_empty());
    t.driver_gone(driver("dx", "attacker", Phase::Live), t0);
    assert!(t.due(t0).is_empty());
    // The impostor leaves: the application is bound to the one driver left.
    t.executor_gone("ex");
    assert_eq!(claims.owner(&app("spark-a")), Some(owner("victim", "d1")));
}

#[test]
fn a_binding_restored_after_a_restart_holds_against_a_lone_impostor() {
    let t0 = Instant::now();
    let a = app("spark-a");
    let claims = Arc::new(Claims::default());
    claims.restore([(a.clone(), owner("victim", "d1"))]);
    let mut t = Tracker::new(GRACE, Arc::clone(&claims), true, 1);
    t.executor_seen(exec("ex", "attacker", "spark-a", "dx", Some("evil")));
    t.driver_seen(driver("dx", "attacker", Phase::Live), t0);
    t.driver_seen(driver("d1", "victim", Phase::Live), t0);
    t.relisted(
        &drivers_all(),
        &HashSet::from(["d1".to_owned(), "dx".to_owned()]),
        t0,
    );
    assert_eq!(
        claims.owner_secret(&a),
        None,
        "the impostor's is no owner's"
    );
    t.executor_seen(exec("e1", "victim", "spark-a", "d1", Some("good")));
    assert_eq!(claims.owner_secret(&a).as_deref(), Some(&b"good"[..]));
    assert_eq!(claims.view(&a).candidates[0].0, owner("victim", "d1"));
    t.driver_gone(driver("dx", "attacker", Phase::Live), t0);
    assert!(t.due(t0).is_empty());
    t.driver_seen(driver("d1", "victim", Phase::Failed), t0);
    assert_eq!(
        ids(t.due(t0 + GRACE)),
        vec![("spark-a".into(), Reason::DriverFailed)]
    );
    assert!(claims.take_pending().is_empty(), "restored, not new");
}

#[test]
fn secrets_conflicts_and_forgetting() {
    let t0 = Instant::now();
    let a = app("spark-a");
    let claims = Arc::new(Claims::default());
    let mut t = Tracker::new(GRACE, Arc::clone(&claims), true, 1);
    let l = t.executor_seen(exec("e1", "ns", "spark-a", "d1", Some("s3cret")));
    assert_eq!(
        l,
        Learning::default(),
        "not before the driver list is complete"
    );
    t.driver_seen(driver("d1", "ns", Phase::Live), t0);
    let l = t.relisted(&drivers_all(), &HashSet::from(["d1".to_owned()]), t0);
    assert_eq!(l.learned, 1);
    let l = t.executor_seen(exec("e2", "ns", "spark-a", "d1", Some("other")));
    assert_eq!(l.conflicts, 1);
    // The same pod again offers nothing new.
    let l = t.executor_seen(exec("e2", "ns", "spark-a", "d1", Some("other")));
    assert_eq!(l, Learning::default());
    claims.bind(&a, &owner("ns", "d1")).unwrap();
    assert_eq!(claims.owner_secret(&a).as_deref(), Some(&b"s3cret"[..]));
    t.driver_gone(driver("d1", "ns", Phase::Live), t0);
    for (a, _) in t.due(t0) {
        t.removed(&a);
    }
    assert_eq!(claims.owner_secret(&a), None);
    assert_eq!(claims.with_secrets(), 0);
}

#[test]
fn pruning_keeps_live_applications_and_drops_finished_ones_with_their_bindings() {
    let t0 = Instant::now();
    let (mut t, claims) = tracker(true);
    t.driver_seen(driver("d1", "ns", Phase::Live), t0);
    t.executor_seen(exec("e1", "ns", "spark-a", "d1", Some("s")));
    t.executor_seen(exec("e2", "ns", "spark-b", "d2", None));
    claims.bind(&app("spark-a"), &owner("ns", "d1")).unwrap();
    assert_eq!(claims.take_pending().len(), 1);
    t.executor_gone("e1");
    // Not before every watch has listed.
    t.prune(t0, |_| false);
    assert_eq!(t.apps(), 2);
    t.relisted(&executors_all(), &HashSet::from(["e2".to_owned()]), t0);
    // Dynamic allocation removed every executor of spark-a: still registered, kept with
    // its secret (reducers elsewhere still fetch its blocks here).
    t.prune(t0, |_| true);
    assert_eq!(t.apps(), 2);
    assert_eq!(claims.with_secrets(), 1);
    // Its data went by the idle TTL: dropped with its binding, secret forgotten.
    t.prune(t0, |a| a.as_str() != "spark-a");
    assert_eq!(t.apps(), 1);
    assert_eq!(claims.with_secrets(), 0);
    assert_eq!(claims.take_pending(), vec![(app("spark-a"), None)]);
    t.relisted(&executors_all(), &HashSet::new(), t0);
    t.prune(t0, |_| false);
    assert_eq!(t.apps(), 0);
    // Tombstones of drivers no application is bound to go after their time.
    t.driver_gone(driver("d1", "ns", Phase::Live), t0);
    t.prune(t0, |_| false);
    assert_eq!(t.drivers(), 1);
    t.prune(t0 + TOMBSTONE_TTL, |_| false);
    assert_eq!(t.drivers(), 0);
}

fn labelled(uid: &str, app_label: &str, phase: Phase) -> DriverPod {
    DriverPod {
        app: Some(app(app_label)),
        ..driver(uid, "ns", phase)
    }
}

#[test]
fn a_list_of_some_applications_drivers_is_evidence_about_those_only() {
    let t0 = Instant::now();
    let (mut t, _) = tracker(false);
    t.executor_seen(exec("e1", "ns", "spark-a", "d1", None));
    t.executor_seen(exec("e2", "ns", "spark-b", "d2", None));
    t.driver_seen(labelled("d1", "spark-a", Phase::Live), t0);
    t.driver_seen(labelled("d2", "spark-b", Phase::Live), t0);
    assert_eq!(
        t.wanted().iter().map(AppId::as_str).collect::<Vec<_>>(),
        ["spark-a", "spark-b"]
    );
    // A list of spark-b's drivers without d2: d2 is gone; d1 (spark-a's) is not covered.
    let only_b = [app("spark-b")].into_iter().collect();
    t.drivers_listed(&drivers_all(), &only_b, &HashSet::new(), t0);
    assert_eq!(
        ids(t.due(t0)),
        vec![("spark-b".into(), Reason::DriverDeleted)]
    );
}

#[test]
fn drivers_no_followed_application_needs_are_forgotten() {
    let t0 = Instant::now();
    let (mut t, _) = tracker(false);
    t.executor_seen(exec("e1", "ns", "spark-a", "d1", None));
    t.driver_seen(labelled("d1", "spark-a", Phase::Live), t0);
    t.driver_seen(labelled("d9", "spark-z", Phase::Live), t0);
    t.forget_unwanted_drivers();
    assert_eq!(t.drivers(), 1, "spark-z's driver is nobody's here");
}

#[test]
fn a_tenants_ended_pods_on_the_node_never_crowd_out_the_applications_running_executor() {
    let t0 = Instant::now();
    let (mut t, claims) = tracker(true);
    let a = app("spark-a");
    let many = crate::core::claims::MAX_CANDIDATES + 20;
    // Pods created with the node's name and the victim's application label, each controlled
    // by its own driver pod of the tenant's namespace; the kubelet rejected them (Failed).
    for i in 0..many {
        t.driver_seen(driver(&format!("t{i}"), "team-b", Phase::Live), t0);
        let mut x = exec(
            &format!("x{i}"),
            "team-b",
            "spark-a",
            &format!("t{i}"),
            Some("evil"),
        );
        x.ended = true;
        t.executor_seen(x);
    }
    assert!(!claims.view(&a).overflow, "ended pods refuse nothing");
    // The application's own executor arrives, running: its secret is a candidate.
    t.driver_seen(driver("dv", "team-a", Phase::Live), t0);
    t.executor_seen(exec("ev", "team-a", "spark-a", "dv", Some("good")));
    let view = claims.view(&a);
    assert!(!view.overflow);
    assert!(
        view.candidates
            .iter()
            .any(|(o, s)| *o == owner("team-a", "dv") && s == b"good")
    );
    // Its secret proves itself and binds the application to its driver pod.
    assert_eq!(claims.bind(&a, &owner("team-a", "dv")), Ok(true));
}

/// A tenant's pod created with the node's name and a finalizer of its own, then deleted, is
/// terminated by the kubelet (its containers stop and it no longer counts against the node's
/// pods) but keeps the phase it had on kubelets that do not write a terminal phase for deleted
/// pods (before Kubernetes 1.27), or for as long as its grace period lasts: a pod being deleted
/// is read as ended, so enough of them do not refuse the victim application on the node.
#[test]
fn deleted_pods_held_by_a_finalizer_do_not_count_as_running_claimants() {
    let t0 = Instant::now();
    let (mut t, claims) = tracker(true);
    let a = app("spark-a");
    for i in 0..crate::core::claims::MAX_CANDIDATES + 1 {
        t.driver_seen(driver(&format!("t{i}"), "team-b", Phase::Live), t0);
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("x{i}"), "namespace": "team-b", "uid": format!("x{i}"),
                "labels": {"spark-app-selector": "spark-a", "spark-role": "executor"},
                "finalizers": ["team-b.example/hold"],
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": format!("t{i}"),
                                     "uid": format!("t{i}"), "controller": true}]
            },
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "env": [
                {"name": "_SPARK_AUTH_SECRET", "value": "evil"}]}]},
            "status": {"phase": "Running"}
        }))
        .expect("pod");
        let x = crate::kube::pods::executor(&pod, true).expect("executor");
        t.executor_seen(x);
    }
    // The application's own executor arrives, running.
    t.driver_seen(driver("dv", "team-a", Phase::Live), t0);
    t.executor_seen(exec("ev", "team-a", "spark-a", "dv", Some("good")));
    let view = claims.view(&a);
    assert!(
        !view.overflow
            && view
                .candidates
                .iter()
                .any(|(o, s)| *o == owner("team-a", "dv") && s == b"good"),
        "deleted (terminated) pods of another tenant refuse the application: overflow {}",
        view.overflow
    );
}
