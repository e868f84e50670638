//! `loadtest dra`'s harness on a small workload, so that the benchmark keeps working: the
//! iterative job (one shuffle read again after idle gaps) in cluster mode, with the DaemonSet
//! shuffle service and with shuffle tracking, both jobs at once. Ignored in a bare `cargo
//! test`; `scripts/test.sh` runs it as root where Java and pyspark are.

use e2e::dra::{Bench, Config, Loss, Run, Settings, Workload};
use kubebed::testing::bin_dir;

/// No work done twice, no failed task, the results right.
fn clean(r: &Run) {
    assert!(r.ok, "wrong results: {r:?}");
    assert_eq!(r.events.stages_recomputed, 0, "{r:?}");
    assert_eq!(r.events.tasks_recomputed, 0, "{r:?}");
    assert!(r.events.failed_tasks.is_empty(), "{r:?}");
    assert!(r.executor_seconds > 0.0 && r.wall_s > 0.0, "{r:?}");
}

#[tokio::test]
#[ignore = "needs root, network namespaces, Java and pyspark (scripts/test.sh runs it)"]
async fn dra_harness_the_service_gives_idle_executors_back_and_shuffle_tracking_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let bench = Bench::start(dir.path(), &bin_dir()).await.unwrap();
    // Gaps of four idle timeouts; two executors.
    let settings = Settings {
        max_executors: 2,
        idle_timeout_s: 2,
        scale: 0.05,
        pause_s: 8.0,
        ..Settings::default()
    };
    // Both at once, each in its own namespace: the bed's two nodes hold both jobs.
    let (service, tracking) = tokio::join!(
        bench.run(Workload::Iter, Config::Service, &settings, Loss::None),
        bench.run(Workload::Iter, Config::Tracking, &settings, Loss::None),
    );
    let (service, tracking) = (service.unwrap(), tracking.unwrap());
    bench.stop().await;
    for r in [&service, &tracking] {
        eprintln!(
            "{}: {:.0} executor-s, {:.1} s, {} pods (peak {}), remote {} B",
            r.config.name(),
            r.executor_seconds,
            r.wall_s,
            r.executor_pods,
            r.peak_executors,
            r.events.remote_bytes_read
        );
        clean(r);
    }
    assert_eq!(service.digest, tracking.digest);
    // With the service, the executors that wrote the shuffle went in the gaps and new ones read
    // it; with shuffle tracking, the executors holding it stayed for the whole application.
    assert!(
        service.executor_pods > service.peak_executors,
        "no executor given back in the gaps: {service:?}"
    );
    assert!(
        service
            .events
            .idle_before_removal_s
            .values()
            .any(|idle| *idle >= 2.0),
        "{service:?}"
    );
    assert_eq!(
        tracking.executor_pods, tracking.peak_executors,
        "shuffle tracking replaced an executor: {tracking:?}"
    );
}
