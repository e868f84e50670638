//! `staging-server submit` with unmodified Spark 4.3.0 in `k8s://` cluster mode on the bed:
//! the job's jar, text file and Python file exist only on the submitting machine; a job that
//! raises makes `submit` exit with its driver's exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubebed::authn::User;
use kubebed::resources::{PODS, SECRETS};
use kubebed::selector::Selector;

use e2e::{answers, bed, dump, eventually, metric, result_line, spark_file};
use kubebed::testing::{apply_dir, bin_dir, java_home, spark_home, workspace};

pub(crate) const UPLOAD_TOKEN: &str = "5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d";
const ALICE: &str = "alice-bearer-token-0123456789";
const MALLORY: &str = "mallory-bearer-token-0123456789";

/// The staging server from `k8s/staging-server/` as shipped (owner watch, unnamed-file grace
/// and sweep interval shortened); its pod IP.
async fn deploy_staging(bed: &kubebed::bed::Bed) -> String {
    bed.namespace("spark-staging").unwrap();
    bed.apply(
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: staging-upload-tokens}}\nstringData: {{tokens: {UPLOAD_TOKEN}}}\n"
        ),
        "spark-staging",
    )
    .unwrap();
    apply_dir(bed, "k8s/staging-server", "spark-staging", |t| {
        t.replace(
            "kube_owner_end_grace = \"1m\"",
            "kube_owner_end_grace = \"2s\"",
        )
        .replace(
            "kube_owner_interval = \"15s\"",
            "kube_owner_interval = \"1s\"",
        )
        .replace(
            "unnamed_blob_grace = \"1h\"",
            "unnamed_blob_grace = \"20s\"",
        )
        .replace("sweep_interval = \"30s\"", "sweep_interval = \"2s\"")
    });
    let ready = bed
        .wait_for(
            &kubebed::resources::DEPLOYMENTS,
            "spark-staging",
            "staging-server",
            Duration::from_secs(60),
            |d| d.is_some_and(|d| d["status"]["readyReplicas"].as_u64() == Some(1)),
        )
        .await;
    if let Err(e) = ready {
        panic!("{e}\n{}", dump(bed, "spark-staging"));
    }
    let sel = Selector::labels("app.kubernetes.io/name=staging-server").unwrap();
    let pod = bed
        .store
        .list(&PODS, Some("spark-staging"), &sel, &Default::default())
        .0
        .remove(0);
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    assert!(
        answers(&format!("http://{ip}:10001/healthz")).await,
        "the staging server never answered:\n{}",
        dump(bed, "spark-staging")
    );
    ip
}

/// The job's files, built on "the submitter's machine": a jar with `staged.Plus`, the job.
pub(crate) fn build_app(dir: &Path) -> PathBuf {
    let work = dir.join("app");
    std::fs::create_dir_all(work.join("classes")).unwrap();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let spark = spark_home().unwrap();
    let java = java_home().unwrap();
    run(std::process::Command::new(java.join("bin/javac"))
        .arg("-cp")
        .arg(format!("{}/jars/*", spark.display()))
        .arg("-d")
        .arg(work.join("classes"))
        .arg(spark_file("staged/Plus.java")));
    run(std::process::Command::new(java.join("bin/jar"))
        .arg("cf")
        .arg(work.join("plus.jar"))
        .arg("-C")
        .arg(work.join("classes"))
        .arg("."));
    for job in ["job.py", "fail.py"] {
        std::fs::copy(spark_file(&format!("submit/{job}")), work.join(job)).unwrap();
    }
    work
}

/// One `submit`: its exit status and standard error.
pub(crate) struct Submitted {
    pub(crate) ok: bool,
    pub(crate) code: Option<i32>,
    pub(crate) stderr: String,
}

impl Submitted {
    /// The submission label value `submit` printed.
    pub(crate) fn submission(&self) -> String {
        let marker = "staging-server/submission=";
        let at = self
            .stderr
            .find(marker)
            .unwrap_or_else(|| panic!("no submission label in:\n{}", self.stderr));
        self.stderr[at + marker.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect()
    }

    /// (files sent, bytes sent, seconds staging took) from `submit`'s summary line.
    fn staged(&self) -> (u64, u64, f64) {
        let line = self
            .stderr
            .lines()
            .find(|l| l.contains("staging-server submit: staged"))
            .unwrap_or_else(|| panic!("no summary in:\n{}", self.stderr));
        let secs_at = line.find(" in ").unwrap();
        let secs: f64 = line[secs_at + 4..]
            .split('s')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let sent = line.find("sent ").unwrap();
        let after = &line[sent..];
        let files: u64 = after[5..].split(' ').next().unwrap().parse().unwrap();
        let bytes: u64 = after
            .split(", ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        (files, bytes, secs)
    }
}

/// `staging-server submit` of the job `job` (the file options, the primary resource and its
/// arguments, relative to `work`) as the user of `kubeconfig`, with one executor.
async fn submit(
    bed: &kubebed::bed::Bed,
    dir: &Path,
    kubeconfig: &Path,
    server: &str,
    work: &Path,
    job: &[&str],
) -> Submitted {
    submit_with(bed, dir, kubeconfig, server, work, job, &[]).await
}

/// [`submit`] with more Spark settings (`confs`, over the defaults).
pub(crate) async fn submit_with(
    bed: &kubebed::bed::Bed,
    dir: &Path,
    kubeconfig: &Path,
    server: &str,
    work: &Path,
    job: &[&str],
    confs: &[(&str, &str)],
) -> Submitted {
    std::fs::create_dir_all(dir).unwrap();
    let venv_submit = workspace().join(".venv/bin/spark-submit");
    let mut cmd = tokio::process::Command::new(bin_dir().join("staging-server"));
    cmd.current_dir(work)
        .args(["submit", "--server", server])
        .args([
            "--pod-server",
            "http://staging-server.spark-staging.svc:10000",
        ])
        .args(["--init-image", "ghcr.io/example/spark-k8s-services:0.1.0"])
        .arg("--kube-auth")
        // The bed's pod network is this one machine.
        .arg("--allow-plain-http")
        .arg("--spark-submit")
        .arg(&venv_submit)
        .arg("--")
        .args(["--master", &format!("k8s://{}", bed.api_url)])
        .args(["--deploy-mode", "cluster", "--name", "kubebed-submit"]);
    // The defaults, then `confs` (spark-submit keeps a key's last value).
    let defaults = [
        ("spark.kubernetes.driver.master", bed.api_url.as_str()),
        ("spark.kubernetes.container.image", "kubebed/spark:4.3.0"),
        ("spark.kubernetes.namespace", "default"),
        ("spark.executor.instances", "1"),
        ("spark.executor.memory", "512m"),
        ("spark.kubernetes.report.interval", "5s"),
    ];
    for (k, v) in defaults.iter().chain(confs) {
        cmd.arg("--conf").arg(format!("{k}={v}"));
    }
    cmd.args(job)
        .env("KUBECONFIG", kubeconfig)
        .env("SPARK_HOME", spark_home().unwrap())
        .env("JDK_JAVA_OPTIONS", kubebed::images::SHORT_LIVED_JVM)
        .env_remove("PYSPARK_PYTHON")
        .env_remove("PYSPARK_DRIVER_PYTHON")
        .stdout(std::fs::File::create(dir.join("submit.out")).unwrap())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let Ok(out) = tokio::time::timeout(Duration::from_secs(400), child.wait_with_output()).await
    else {
        panic!("submit took over 400 s\n{}", dump(bed, "default"));
    };
    let out = out.unwrap();
    Submitted {
        ok: out.status.success(),
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The words job: the staged jar and `words`, the job printing both.
pub(crate) fn words_job(words: &str) -> [&str; 6] {
    [
        "--jars",
        "plus.jar",
        "--files",
        words,
        "job.py",
        "/var/spark-staged",
    ]
}

/// The driver pod of a submission, and its log.
pub(crate) fn driver(bed: &kubebed::bed::Bed, submission: &str) -> (serde_json::Value, String) {
    let sel = Selector::labels(&format!(
        "spark-role=driver,staging-server/submission={submission}"
    ))
    .unwrap();
    let pods = bed
        .store
        .list(&PODS, Some("default"), &sel, &Default::default())
        .0;
    assert_eq!(
        pods.len(),
        1,
        "one driver per submission:\n{}",
        dump(bed, "default")
    );
    let name = pods[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let log = bed.log("default", &name, "spark-kubernetes-driver");
    (pods[0].clone(), log)
}

async fn staging_metrics(ip: &str) -> String {
    reqwest::get(format!("http://{ip}:10001/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs root, network namespaces, Java and pyspark (scripts/test.sh runs it)"]
async fn submit_stages_local_files_for_concurrent_cluster_jobs_reports_failed_drivers_and_cleans_up_after_them()
 {
    let dir = tempfile::tempdir().unwrap();
    let bed = bed(2, dir.path()).await;
    let ip = deploy_staging(&bed).await;
    let server = format!("http://{ip}:10000");
    // Alice may create pods in default; Mallory may not.
    for (token, name) in [(ALICE, "alice"), (MALLORY, "mallory")] {
        bed.identities.add_token(
            token,
            User {
                name: name.into(),
                groups: vec!["system:authenticated".into()],
            },
        );
    }
    bed.identities.allow("alice", "create", "pods", "default");
    let alice = dir.path().join("alice.kubeconfig");
    bed.write_kubeconfig(&alice, "default", Some(ALICE))
        .unwrap();
    let mallory = dir.path().join("mallory.kubeconfig");
    bed.write_kubeconfig(&mallory, "default", Some(MALLORY))
        .unwrap();

    let work = build_app(dir.path());
    // A job whose driver is queued (no node matches it), staged with `upload --output secret`:
    // its bundle and Secret must stay while the others come and go.
    let queued = std::process::Command::new(bin_dir().join("staging-server"))
        .args(["upload", "--server", &server, "--namespace", "default"])
        .args(["--label", "job=queued", "--token", UPLOAD_TOKEN])
        .args([
            "--output",
            "secret",
            "--secret-name",
            "queued-files",
            "--no-progress",
        ])
        .arg(work.join("plus.jar"))
        .output()
        .unwrap();
    assert!(
        queued.status.success(),
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    bed.apply(&String::from_utf8(queued.stdout).unwrap(), "default")
        .unwrap();
    bed.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: queued-driver, labels: {job: queued}}\nspec:\n  nodeSelector: {pool: none}\n  containers: [{name: c, image: kubebed/spark:4.3.0}]\n",
        "default",
    )
    .unwrap();
    std::fs::create_dir_all(work.join("a")).unwrap();
    std::fs::create_dir_all(work.join("b")).unwrap();
    std::fs::write(work.join("a/words.txt"), "alpha\nbeta\n").unwrap();
    std::fs::write(work.join("b/words.txt"), "gamma\n").unwrap();

    // Without pod-create rights in the namespace: refused before anything is sent.
    let refused = submit(
        &bed,
        &dir.path().join("m"),
        &mallory,
        &server,
        &work,
        &words_job("a/words.txt"),
    )
    .await;
    assert_eq!(refused.code, Some(3), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("mallory may not create pods in namespace default"),
        "{}",
        refused.stderr
    );

    // Two jobs at once in one namespace: same jar and job, a different words.txt each. Once
    // both are staged, the first is submitted again while it runs: nothing to send.
    let staged_secrets = || {
        let sel = Selector::labels("app.kubernetes.io/managed-by=staging-server").unwrap();
        bed.store
            .list(&SECRETS, Some("default"), &sel, &Default::default())
            .0
            .iter()
            .filter(|s| s["metadata"]["name"] != "queued-files")
            .count()
    };
    // Beside the resubmission, a job that raises: spark-submit exits 0 all the same, `submit`
    // reports the driver's failure and its exit code.
    let (ja, jb, jc, jf) = (
        dir.path().join("ja"),
        dir.path().join("jb"),
        dir.path().join("jc"),
        dir.path().join("jf"),
    );
    let (words_a, words_b) = (words_job("a/words.txt"), words_job("b/words.txt"));
    let (a, b, (c, failed)) = tokio::join!(
        submit(&bed, &ja, &alice, &server, &work, &words_a),
        submit(&bed, &jb, &alice, &server, &work, &words_b),
        async {
            assert!(
                eventually(Duration::from_secs(120), || staged_secrets() >= 2).await,
                "the first two submissions never created their Secrets"
            );
            tokio::join!(
                submit(&bed, &jc, &alice, &server, &work, &words_a),
                submit(&bed, &jf, &alice, &server, &work, &["fail.py"]),
            )
        },
    );
    for (job, words) in [
        (&a, vec!["alpha", "beta"]),
        (&b, vec!["gamma"]),
        (&c, vec!["alpha", "beta"]),
    ] {
        assert!(
            job.ok,
            "submit failed:\n{}\n{}",
            job.stderr,
            dump(&bed, "default")
        );
        let (pod, log) = driver(&bed, &job.submission());
        assert_eq!(pod["status"]["phase"], "Succeeded", "{log}");
        let seen = result_line(&log, "lines");
        assert_eq!(seen["lines"], serde_json::json!(words), "{seen}");
        assert_eq!(
            seen["plus"],
            serde_json::json!([1000, 1001, 1002]),
            "{seen}"
        );
        // Its own Secret, named for the submission.
        assert!(
            job.stderr
                .contains(&format!("Secret default/spark-staged-{}", job.submission())),
            "{}",
            job.stderr
        );
        assert!(!job.stderr.contains("driver pod"), "{}", job.stderr);
    }
    // The failed job: the driver's exit code (Python's uncaught exception ends the driver with
    // 1) and one sentence naming the pod, its phase and that code.
    let (pod, log) = driver(&bed, &failed.submission());
    assert_eq!(pod["status"]["phase"], "Failed", "{log}");
    assert!(log.contains("this job fails on purpose"), "{log}");
    assert_eq!(
        failed.code,
        Some(1),
        "{}\ndriver status: {}",
        failed.stderr,
        pod["status"]
    );
    let sentence = format!(
        "driver pod default/{} ended in phase Failed",
        pod["metadata"]["name"].as_str().unwrap()
    );
    let line = failed
        .stderr
        .lines()
        .find(|l| l.contains(&sentence))
        .unwrap_or_else(|| panic!("no {sentence:?} in:\n{}", failed.stderr));
    assert!(line.contains("exit code 1"), "{line}");
    println!("failed job: {line}");
    assert_ne!(a.submission(), b.submission());
    let (a_files, a_bytes, a_secs) = a.staged();
    let (b_files, b_bytes, b_secs) = b.staged();
    let (c_files, c_bytes, c_secs) = c.staged();
    println!(
        "staging: first submissions {a_files} files/{a_bytes} B in {a_secs:.2}s and {b_files} files/{b_bytes} B in {b_secs:.2}s; resubmission {c_files} files/{c_bytes} B in {c_secs:.2}s"
    );
    // Submitted at the same moment, both may send the shared jar and job (the store keeps one
    // copy); never more than their own files.
    assert!(
        a_files <= 3 && b_files <= 3 && a_files + b_files >= 4,
        "{}\n{}",
        a.stderr,
        b.stderr
    );
    assert_eq!((c_files, c_bytes), (0, 0), "{}", c.stderr);

    // Every driver ended: every Secret, submission and stored file goes.
    let gone = eventually(Duration::from_secs(60), || {
        let sel = Selector::labels("app.kubernetes.io/managed-by=staging-server").unwrap();
        bed.store
            .list(&SECRETS, Some("default"), &sel, &Default::default())
            .0
            .iter()
            .all(|s| s["metadata"]["name"] == "queued-files")
    })
    .await;
    assert!(gone, "Secrets stayed:\n{}", dump(&bed, "spark-staging"));
    // The queued job keeps its Secret (and its bundle, below).
    assert!(bed.store.get(&SECRETS, "default", "queued-files").is_ok());
    // The finished jobs' submissions go; the files they named stay until their namespace's
    // grant, which runs from the files' send, lapses (the unnamed-blob grace, 20 s here), so
    // that another staging of the namespace in between never loses them; then the sweep
    // (every 2 s here) deletes them and recomputes the stored-data gauges.
    let mut m = String::new();
    for _ in 0..90 {
        m = staging_metrics(&ip).await;
        if metric(&m, "staging_stored_files_bytes") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(metric(&m, "staging_stored_files_bytes"), 0.0, "{m}");
    // Only the queued job's bundle is left.
    assert_eq!(metric(&m, "staging_resources{"), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "staging_cleanup_deletions_total{reason=\"owner_ended\"}"
        ),
        4.0,
        "{m}"
    );
    bed.stop().await;
}
