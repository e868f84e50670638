//! The driver watch selects the node's own applications (`spark-app-selector in (...)`):
//! applications arriving after it was set up, executors leaving and coming back, a driver
//! ending while the watch is renewed, and many applications at once.

use super::*;

fn create(f: &Fixture, ns: &str, pod: Value) -> Value {
    f.api.store.create(&PODS, ns, pod).unwrap()
}

/// A driver pod of `app` and one executor pod of it on this node; returns the driver.
fn job(f: &Fixture, app: &str, exec: &str) -> Value {
    let d = create(f, "spark", driver("spark", &format!("{app}-driver"), app));
    create(f, "spark", executor("spark", exec, app, &d, None));
    d
}

fn delete_now(f: &Fixture, name: &str) {
    let opts = DeleteOptions {
        grace: Some(0),
        ..DeleteOptions::default()
    };
    f.api.store.delete(&PODS, "spark", name, &opts).unwrap();
}

#[tokio::test]
async fn an_application_arriving_after_the_watch_was_set_up_is_followed() {
    let api = api(1000).await;
    let f = Fixture::start(api, false, &["spark-a", "spark-b"]).await;
    job(&f, "spark-a", "a-exec-1");
    f.synced().await;
    f.wait_metric("shuffle_kube_driver_pods", 1.0).await;
    // spark-b's pods and data come after the driver watch selected spark-a only.
    job(&f, "spark-b", "b-exec-1");
    f.wait_metric("shuffle_kube_driver_watch_renewals_total", 1.0)
        .await;
    set_phase(&f.api.store, "spark", "spark-b-driver", "Succeeded");
    f.gone("spark-b").await;
    assert!(f.has("spark-a") && f.dir_exists("spark-a"));
    f.stop().await;
}

#[tokio::test]
async fn executors_leaving_the_node_and_coming_back_keep_the_driver_followed() {
    let api = api(1000).await;
    let f = Fixture::start(api, false, &["spark-a"]).await;
    let d = job(&f, "spark-a", "a-exec-1");
    f.synced().await;
    f.wait_metric("shuffle_kube_driver_pods", 1.0).await;
    // Dynamic allocation removes the node's only executor: the data stays, and so does the
    // application's driver in the selection.
    delete_now(&f, "a-exec-1");
    f.wait_metric(
        "shuffle_kube_watch_events_total{type=\"delete\",watch=\"executors\"}",
        1.0,
    )
    .await;
    create(
        &f,
        "spark",
        executor("spark", "a-exec-2", "spark-a", &d, None),
    );
    f.wait_metric(
        "shuffle_kube_watch_events_total{type=\"apply\",watch=\"executors\"}",
        2.0,
    )
    .await;
    delete_now(&f, "a-exec-2");
    f.quiet_period().await;
    assert!(f.has("spark-a"), "executors leaving ended nothing");
    set_phase(&f.api.store, "spark", "spark-a-driver", "Failed");
    f.gone("spark-a").await;
    f.stop().await;
}

#[tokio::test]
async fn a_driver_ending_while_the_watch_is_renewed_is_not_missed() {
    let api = api(1000).await;
    let f = Fixture::start(api, false, &["spark-a", "spark-b"]).await;
    job(&f, "spark-a", "a-exec-1");
    f.synced().await;
    f.wait_metric("shuffle_kube_driver_pods", 1.0).await;
    // spark-b arrives (the watch is renewed for it) and spark-a's driver is deleted in the
    // same moment: between the old watch's end and the new one's start.
    job(&f, "spark-b", "b-exec-1");
    f.api
        .store
        .delete(&PODS, "spark", "spark-a-driver", &DeleteOptions::default())
        .unwrap();
    f.gone("spark-a").await;
    f.wait_metric("shuffle_kube_driver_watch_renewals_total", 1.0)
        .await;
    assert!(f.has("spark-b"));
    set_phase(&f.api.store, "spark", "spark-b-driver", "Succeeded");
    f.gone("spark-b").await;
    f.stop().await;
}

#[tokio::test]
async fn many_applications_arriving_at_once_cost_few_renewals() {
    const N: usize = 24;
    let api = api(1000).await;
    let names: Vec<String> = (0..N).map(|i| format!("spark-m{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let f = Fixture::start(api, false, &refs).await;
    f.synced().await;
    let lists = || {
        f.kube_metric("shuffle_kube_watch_relists_total{watch=\"drivers\"}")
            + f.kube_metric("shuffle_kube_driver_watch_renewals_total")
    };
    let before = lists();
    for (i, app) in names.iter().enumerate() {
        job(&f, app, &format!("m-exec-{i}"));
    }
    f.wait_metric("shuffle_kube_driver_pods", N as f64).await;
    // One list of the new applications' drivers (two if the burst straddled the gathering
    // delay), not one per application.
    let took = lists() - before;
    assert!(
        (1.0..=2.0).contains(&took),
        "{N} applications arriving together took {took} lists"
    );
    for app in &names {
        f.api
            .store
            .delete(
                &PODS,
                "spark",
                &format!("{app}-driver"),
                &DeleteOptions::default(),
            )
            .unwrap();
    }
    for app in &names {
        f.gone(app).await;
    }
    f.stop().await;
}
