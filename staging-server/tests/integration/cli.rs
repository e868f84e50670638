//! The client commands as a new user meets them, through the binary: usage errors with the
//! documented exit code and messages naming the accepted forms, an unreachable server
//! explained, `--help` with defaults, and `submit --dry-run`.

use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_staging-server"))
}

fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .env_remove("STAGING_SERVER")
        .env_remove("STAGING_UPLOAD_TOKEN")
        .env_remove("STAGING_UPLOAD_TOKEN_FILE")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loopback port with nothing listening.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn bad_flag_values_are_usage_errors_that_name_the_accepted_forms() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jar");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_str().unwrap();
    let server = "http://127.0.0.1:9";
    for (args, says) in [
        (
            vec!["upload", "--server", server, "--ttl", "forever", f],
            "e.g. 90s",
        ),
        (
            vec!["upload", "--server", server, "--ttl", "0s", f],
            "positive",
        ),
        (
            vec!["upload", "--server", server, "--namespace", "Team_A", f],
            "namespace name",
        ),
        (
            vec!["upload", "--server", server, "--label", "role", f],
            "key=value",
        ),
        (
            vec!["upload", "--server", server, "--label", "a=b,c=d", f],
            "one key=value",
        ),
        (vec!["upload", f], "--server"),
        (
            vec!["upload", "--server", server, "--retries", "many", f],
            "retries",
        ),
        (
            vec!["serve", "--config", "/nonexistent/staging.toml"],
            "--config",
        ),
        (
            vec![
                "fetch",
                "--server",
                server,
                "--id",
                "x",
                "--token-file",
                f,
                "--dest",
                "/nonexistent/dir",
            ],
            "must exist",
        ),
        (
            vec![
                "submit",
                "--server",
                server,
                "--init-image",
                "i",
                "--",
                "--master",
                "local",
                "x.py",
            ],
            "k8s://",
        ),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    // Help is not an error.
    assert_eq!(run(&["upload", "--help"]).status.code(), Some(0));
}

#[test]
fn help_shows_defaults() {
    for (cmd, defaults) in [
        (
            "upload",
            vec!["[default: default]", "[default: text]", "[default: 4]"],
        ),
        (
            "fetch",
            vec!["[default: 10s]", "[default: 15m]", "[default: 6]"],
        ),
        (
            "submit",
            vec![
                "[default: /var/spark-staged]",
                "[default: 4]",
                "[default: 10s]",
                "[default: 2m]",
                // The exit statuses once spark-submit ran, the driver's among them.
                "1-255           the driver pod ended Failed",
                "8               the driver pod disappeared",
            ],
        ),
    ] {
        let o = run(&[cmd, "--help"]);
        let text = String::from_utf8_lossy(&o.stdout);
        for d in defaults {
            assert!(text.contains(d), "{cmd} --help lacks {d}:\n{text}");
        }
    }
}

#[test]
fn an_unreachable_server_is_explained_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jar");
    std::fs::write(&file, b"x").unwrap();
    let server = format!("http://127.0.0.1:{}", closed_port());
    let o = run(&[
        "upload",
        "--server",
        &server,
        "--retries",
        "1",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("refused"), "{e}");
    assert!(
        e.contains("retrying in") && e.contains("attempt 2 of 2"),
        "{e}"
    );
    let o = run(&[
        "upload",
        "--server",
        "http://no-such-host.invalid:10000",
        "--retries",
        "0",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("DNS"), "{}", stderr(&o));
}

#[test]
fn submit_dry_run_shows_the_plan_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["app.jar", "lookup.csv", "job.py"] {
        std::fs::write(dir.path().join(f), f).unwrap();
    }
    std::fs::write(
        dir.path().join("driver.yaml"),
        "apiVersion: v1\nkind: Pod\nspec:\n  nodeSelector: {pool: spark}\n  containers: [{name: main}]\n",
    )
    .unwrap();
    let server = format!("http://127.0.0.1:{}", closed_port());
    let o = bin()
        .current_dir(dir.path())
        .args([
            "submit",
            "--dry-run",
            "--server",
            &server,
            "--init-image",
            "img:1",
        ])
        .args(["--spark-submit", "/bin/false", "--"])
        .args([
            "--master",
            "k8s://https://api:6443",
            "--deploy-mode",
            "cluster",
        ])
        .args(["--conf", "spark.kubernetes.namespace=jobs"])
        .args([
            "--conf",
            "spark.kubernetes.driver.podTemplateFile=driver.yaml",
        ])
        .args([
            "--conf",
            "spark.kubernetes.driver.podTemplateContainerName=main",
        ])
        .args([
            "--jars",
            "app.jar,s3a://bucket/dep.jar",
            "--files",
            "lookup.csv",
        ])
        .args(["job.py", "--day", "2026-12-01"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "namespace: jobs",
        "-> local:///var/spark-staged/app.jar",
        "secret: jobs/spark-staged-",
        "\"pool\": \"spark\"",
        "\"name\": \"stage-files\"",
        "--jars local:///var/spark-staged/app.jar,s3a://bucket/dep.jar",
        "--files local:///var/spark-staged/lookup.csv",
        "local:///var/spark-staged/job.py --day 2026-12-01",
        "spark.kubernetes.driver.label.staging-server/submission=",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn submit_kube_auth_refuses_plain_http_except_to_loopback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.py"), "print(1)").unwrap();
    let port = closed_port();
    for (server, refused) in [
        ("http://staging.example.com:10000".to_owned(), true),
        ("http://10.0.0.5:10000".to_owned(), true),
        ("http://[2001:db8::5]:10000".to_owned(), true),
        (format!("http://127.0.0.1:{port}"), false),
        (format!("http://localhost:{port}"), false),
        (format!("http://[::1]:{port}"), false),
        ("https://staging.example.com".to_owned(), false),
    ] {
        // A dry run: the check comes first, before anything is sent or read.
        let o = bin()
            .current_dir(dir.path())
            .args(["submit", "--dry-run", "--kube-auth", "--server", &server])
            .args([
                "--init-image",
                "img:1",
                "--spark-submit",
                "/bin/false",
                "--",
            ])
            .args([
                "--master",
                "k8s://https://api:6443",
                "--deploy-mode",
                "cluster",
            ])
            .args(["--conf", "spark.kubernetes.namespace=jobs", "job.py"])
            .output()
            .unwrap();
        if refused {
            assert_eq!(o.status.code(), Some(64), "{server}: {}", stderr(&o));
            let e = stderr(&o);
            assert!(
                e.contains("refusing to send your Kubernetes credential")
                    && e.contains("plain http://")
                    && e.contains("https://"),
                "{server}: {e}"
            );
            assert!(o.stdout.is_empty(), "{server}: a refused run shows no plan");
        } else {
            assert!(o.status.success(), "{server}: {}", stderr(&o));
        }
    }
    // The submitter's explicit word for a network encrypted by other means.
    let o = bin()
        .current_dir(dir.path())
        .args(["submit", "--dry-run", "--kube-auth", "--allow-plain-http"])
        .args(["--server", "http://10.0.0.5:10000", "--init-image", "img:1"])
        .args(["--spark-submit", "/bin/false", "--"])
        .args([
            "--master",
            "k8s://https://api:6443",
            "--deploy-mode",
            "cluster",
        ])
        .args(["--conf", "spark.kubernetes.namespace=jobs", "job.py"])
        .output()
        .unwrap();
    assert!(o.status.success(), "--allow-plain-http: {}", stderr(&o));
}

#[test]
fn every_flag_is_in_the_readme() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut missing = Vec::new();
    for cmd in ["serve", "upload", "fetch", "submit"] {
        let help = String::from_utf8(run(&[cmd, "--help"]).stdout).unwrap();
        for word in help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
            let flag: String = word
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if flag.starts_with("--")
                && flag.len() > 3
                && !["--help", "--version"].contains(&flag.as_str())
                && !readme.contains(&flag)
            {
                missing.push(format!("{cmd} {flag}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "flags missing from README.md: {missing:?}"
    );
}
