//! The decision from a driver pod's status (as the API server sends it) to `submit`'s exit
//! status and sentence, without an API server; the follow loop itself is tested against the
//! test bed's API server (`staging-server` integration tests, `driver_end::`).

use serde_json::{Value, json};

use super::*;

/// A driver pod of namespace `spark` with `status`.
fn pod(status: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "etl-driver", "namespace": "spark"},
        "spec": {"containers": [{"name": SPARK_DRIVER_CONTAINER}]},
        "status": status,
    }))
    .expect("a pod")
}

/// A container status ended with `code` and `reason`.
fn ended(name: &str, code: i64, reason: &str) -> Value {
    json!({"name": name, "image": "spark", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "reason": reason}}})
}

fn failed_with(containers: Value) -> Outcome {
    outcome(
        &pod(json!({"phase": "Failed", "containerStatuses": containers})),
        SPARK_DRIVER_CONTAINER,
    )
    .expect("ended")
}

fn code(o: &Outcome) -> u8 {
    match o {
        Outcome::Failed { code, .. } => *code,
        Outcome::Succeeded => 0,
    }
}

fn message(o: &Outcome) -> &str {
    match o {
        Outcome::Failed { message, .. } => message,
        Outcome::Succeeded => "",
    }
}

#[test]
fn only_the_two_final_phases_are_an_end() {
    for phase in ["Pending", "Running", "Unknown"] {
        assert_eq!(outcome(&pod(json!({"phase": phase})), "c"), None, "{phase}");
    }
    assert_eq!(outcome(&pod(json!({})), "c"), None, "no phase yet");
    let mut no_status = pod(json!({}));
    no_status.status = None;
    assert_eq!(outcome(&no_status, "c"), None);
    let done = pod(json!({"phase": "Succeeded",
        "containerStatuses": [ended(SPARK_DRIVER_CONTAINER, 0, "Completed")]}));
    assert_eq!(
        outcome(&done, SPARK_DRIVER_CONTAINER),
        Some(Outcome::Succeeded)
    );
}

#[test]
fn a_failed_driver_exits_with_its_containers_exit_code_in_one_sentence() {
    let o = failed_with(json!([ended(SPARK_DRIVER_CONTAINER, 1, "Error")]));
    assert_eq!(
        o,
        Outcome::Failed {
            code: 1,
            message: "driver pod spark/etl-driver ended in phase Failed (Error), container spark-kubernetes-driver exit code 1; submit exits with 1".into(),
        }
    );
    let oom = failed_with(json!([ended(SPARK_DRIVER_CONTAINER, 137, "OOMKilled")]));
    assert_eq!(code(&oom), 137);
    assert!(message(&oom).contains("(OOMKilled)"), "{oom:?}");
    assert!(message(&oom).contains("exit code 137;"), "{oom:?}");
}

#[test]
fn exit_codes_outside_1_to_255_are_bounded() {
    // Failed although the container says 0: still a failure.
    let zero = failed_with(json!([ended(SPARK_DRIVER_CONTAINER, 0, "Completed")]));
    assert_eq!(code(&zero), 1);
    assert!(
        message(&zero).ends_with("exit code 0; submit exits with 1"),
        "{zero:?}"
    );
    assert_eq!(
        code(&failed_with(json!([ended(
            SPARK_DRIVER_CONTAINER,
            300,
            "Error"
        )]))),
        255
    );
    assert_eq!(
        code(&failed_with(json!([ended(
            SPARK_DRIVER_CONTAINER,
            -1,
            "Error"
        )]))),
        1
    );
    assert_eq!(
        code(&failed_with(json!([ended(
            SPARK_DRIVER_CONTAINER,
            255,
            "Error"
        )]))),
        255
    );
}

#[test]
fn the_pods_own_reason_and_message_come_first() {
    let evicted = outcome(
        &pod(json!({"phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory.\nContainer spark used 2Gi."})),
        SPARK_DRIVER_CONTAINER,
    )
    .unwrap();
    assert_eq!(code(&evicted), 1, "no exit code: 1");
    assert_eq!(
        message(&evicted),
        "driver pod spark/etl-driver ended in phase Failed (Evicted: The node was low on resource: memory.), no exit code from container spark-kubernetes-driver; submit exits with 1"
    );
    let long = "x".repeat(500);
    let deadline = outcome(
        &pod(json!({"phase": "Failed", "message": long})),
        SPARK_DRIVER_CONTAINER,
    )
    .unwrap();
    assert!(
        message(&deadline).contains(&format!("({}...)", "x".repeat(200))),
        "{deadline:?}"
    );
}

#[test]
fn a_failed_init_container_is_named_when_spark_never_ran() {
    let o = outcome(
        &pod(json!({"phase": "Failed",
            "initContainerStatuses": [ended("stage-files", 4, "Error")],
            "containerStatuses": [{"name": SPARK_DRIVER_CONTAINER, "image": "spark",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}}]})),
        SPARK_DRIVER_CONTAINER,
    )
    .unwrap();
    assert_eq!(code(&o), 1);
    assert!(
        message(&o).ends_with(
            "init-container stage-files exit code 4, container spark-kubernetes-driver never ran; submit exits with 1"
        ),
        "{o:?}"
    );
}

#[test]
fn sparks_container_is_found_by_name_among_sidecars() {
    let containers = json!([
        ended("log-shipper", 0, "Completed"),
        ended("main", 3, "Error")
    ]);
    let o = outcome(
        &pod(json!({"phase": "Failed", "containerStatuses": containers})),
        "main",
    )
    .unwrap();
    assert_eq!(code(&o), 3);
    assert!(message(&o).contains("container main exit code 3"), "{o:?}");
    // Among several containers, none of them Spark's: no exit code is the job's.
    let unknown = outcome(
        &pod(json!({"phase": "Failed", "containerStatuses": containers})),
        SPARK_DRIVER_CONTAINER,
    )
    .unwrap();
    assert_eq!(code(&unknown), 1);
    // The only container is Spark's whatever its name.
    let single = outcome(
        &pod(json!({"phase": "Failed", "containerStatuses": [ended("driver", 42, "Error")]})),
        SPARK_DRIVER_CONTAINER,
    )
    .unwrap();
    assert_eq!(code(&single), 42);
}

#[test]
fn the_outage_limit_counts_the_client_retry_policys_pauses() {
    // 1 + 2 + 4 + 8 s, then 10 s each.
    assert_eq!(retries_within(Duration::ZERO), 0);
    assert_eq!(retries_within(Duration::from_secs(3)), 2);
    assert_eq!(retries_within(Duration::from_secs(15)), 4);
    assert_eq!(retries_within(Duration::from_secs(120)), 14);
    // Computed, not counted one by one.
    assert_eq!(
        retries_within(Duration::from_secs(10 * u64::from(u32::MAX))),
        u32::MAX
    );
}
