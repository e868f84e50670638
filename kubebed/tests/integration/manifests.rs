//! The manifests of `k8s/` as a platform team reads them: every flag and variable they pass to
//! the project's binaries exists there, probes and scrape annotations point at the ports the
//! services listen on, metrics named by alert rules and dashboards exist; with their external
//! tools, the alert rules pass `promtool check`/`test` and every manifest validates in strict
//! mode against Kubernetes' schemas (`kubernetes-validate`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use kubebed::testing::{bin_dir, workspace};

/// Every file under `k8s/` with one of the extensions, sorted.
fn files(ext: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, ext: &[&str], out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, ext, out);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| ext.contains(&x))
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&workspace().join("k8s"), ext, &mut out);
    out.sort();
    out
}

/// The Kubernetes objects of `k8s/` (rule files, which are not objects, left out).
fn objects() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for f in files(&["yaml", "yml"]) {
        if f.components().any(|c| c.as_os_str() == "rules") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                out.push((f.clone(), v));
            }
        }
    }
    out
}

/// The pod spec of a workload or pod.
fn pod_spec(o: &Value) -> Option<&Value> {
    match o["kind"].as_str()? {
        "Pod" => Some(&o["spec"]),
        "DaemonSet" | "Deployment" | "StatefulSet" | "Job" => Some(&o["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// The flags (`--x`) and variables (`[env: X=`) a binary's subcommand documents.
fn documented(binary: &str, sub: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(bin_dir().join(binary))
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{binary} {sub} --help failed");
    let help = String::from_utf8(out.stdout).unwrap();
    let flags = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_alphanumeric())
                .to_owned()
        })
        .collect();
    let envs = help
        .match_indices("[env: ")
        .map(|(i, m)| {
            help[i + m.len()..]
                .split(['=', ']'])
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    (flags, envs)
}

/// The port of `--<flag>=host:port` in a container's arguments.
fn listen_port(args: &[&str], flag: &str) -> Option<u64> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
        .and_then(|v| v.rsplit(':').next())
        .and_then(|p| p.parse().ok())
}

#[test]
fn every_flag_and_variable_exists_and_probes_and_scrapes_reach_the_listeners() {
    let mut checked = 0;
    for (file, o) in objects() {
        let Some(spec) = pod_spec(&o) else { continue };
        let where_ = |c: &Value| format!("{}: {}", file.display(), c["name"]);
        let containers = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| spec[k].as_array().into_iter().flatten());
        for c in containers {
            if !c["image"]
                .as_str()
                .is_some_and(|i| i.contains("spark-k8s-services"))
            {
                continue;
            }
            // The image's entrypoint is the staging server (Dockerfile).
            let binary = c["command"][0]
                .as_str()
                .map_or("staging-server", |p| p.rsplit('/').next().unwrap_or(p));
            let args: Vec<&str> = c["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let sub = args.first().copied().unwrap_or("serve");
            let (flags, envs) = documented(binary, sub);
            for a in args.iter().skip(1).filter(|a| a.starts_with("--")) {
                let flag = a.split('=').next().unwrap_or(a);
                assert!(
                    flags.contains(flag),
                    "{}: {binary} {sub} has no {flag}",
                    where_(c)
                );
            }
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default();
                if name.starts_with("SHUFFLE_") || name.starts_with("STAGING_") {
                    assert!(
                        envs.contains(name),
                        "{}: {binary} {sub} reads no {name}",
                        where_(c)
                    );
                }
            }
            // Probes name a declared port, and for the shuffle service the port it listens on.
            let port_of = |p: &Value| -> Option<u64> {
                p.as_u64().or_else(|| {
                    c["ports"].as_array()?.iter().find(|x| x["name"] == *p)?["containerPort"]
                        .as_u64()
                })
            };
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let p = &c[probe];
                if p.is_null() {
                    continue;
                }
                if let Some(h) = p.get("httpGet") {
                    let port = port_of(&h["port"])
                        .unwrap_or_else(|| panic!("{}: {probe} port {}", where_(c), h["port"]));
                    assert!(
                        matches!(h["path"].as_str(), Some("/healthz" | "/readyz")),
                        "{}: {probe} path {}",
                        where_(c),
                        h["path"]
                    );
                    if binary == "shuffle-service" {
                        assert_eq!(
                            Some(port),
                            listen_port(&args, "admin-listen"),
                            "{}",
                            where_(c)
                        );
                    }
                }
                if let Some(e) = p.get("exec") {
                    // `<binary> probe --socket=<its --probe-socket> /healthz|/readyz`, the
                    // socket in a volume of the container (a read-only root holds no socket).
                    let cmd: Vec<&str> = e["command"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let socket = args
                        .iter()
                        .find_map(|a| a.strip_prefix("--probe-socket="))
                        .unwrap_or_else(|| panic!("{}: {probe} without --probe-socket", where_(c)));
                    assert_eq!(
                        cmd[..3],
                        [
                            c["command"][0].as_str().unwrap(),
                            "probe",
                            &format!("--socket={socket}")
                        ],
                        "{}: {probe}",
                        where_(c)
                    );
                    assert!(
                        matches!(cmd.get(3).copied(), Some("/healthz" | "/readyz")),
                        "{}: {probe} {cmd:?}",
                        where_(c)
                    );
                    let dir = Path::new(socket).parent().unwrap();
                    assert!(
                        c["volumeMounts"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|m| m["mountPath"].as_str().map(Path::new) == Some(dir)),
                        "{}: no volume at {}",
                        where_(c),
                        dir.display()
                    );
                }
                if let Some(g) = p.get("grpc") {
                    assert_eq!(binary, "shuffle-service", "{}", where_(c));
                    assert_eq!(
                        g["port"].as_u64(),
                        listen_port(&args, "grpc-listen"),
                        "{}: {probe}",
                        where_(c)
                    );
                }
            }
            if binary == "shuffle-service" {
                for (name, flag) in [
                    ("admin", "admin-listen"),
                    ("grpc", "grpc-listen"),
                    ("spark", "spark-listen"),
                ] {
                    assert_eq!(
                        port_of(&Value::from(name)),
                        listen_port(&args, flag),
                        "{}: port {name}",
                        where_(c)
                    );
                }
                if let Some(scrape) =
                    o["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str()
                {
                    assert_eq!(
                        scrape.parse().ok(),
                        listen_port(&args, "admin-listen"),
                        "{}",
                        where_(c)
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} containers of the project's image found"
    );
}

#[test]
fn metrics_named_by_alert_rules_and_dashboards_exist() {
    // Every source file of the crate: a module may register metrics of its own (the TLS
    // watch, the Kubernetes reviewer) beside the central metrics.rs.
    let sources = |dir: &str| {
        fn walk(dir: &Path, text: &mut String) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, text);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    *text += &std::fs::read_to_string(&p).unwrap();
                }
            }
        }
        let mut text = String::new();
        walk(&workspace().join(dir).join("src"), &mut text);
        text
    };
    let shuffle = sources("shuffle-service");
    let staging = sources("staging-server");
    let mut named = BTreeSet::new();
    for f in files(&["yml", "json"]) {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text
            .match_indices("shuffle_")
            .chain(text.match_indices("staging_"))
        {
            if text[..i]
                .ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '-' || c == '/')
            {
                continue;
            }
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            named.insert((f.clone(), name));
        }
    }
    assert!(named.len() > 20, "{named:?}");
    for (f, name) in named {
        let src = if name.starts_with("shuffle_") {
            &shuffle
        } else {
            &staging
        };
        assert!(
            src.contains(&format!("\"{name}\"")),
            "{}: no metric {name}",
            f.display()
        );
    }
}

#[test]
#[ignore = "needs promtool (Prometheus); run through scripts/test.sh"]
fn promtool_checks_and_tests_the_alert_rules() {
    let dir = workspace().join("k8s/monitoring/rules");
    let rules: Vec<PathBuf> = files(&["yml"])
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".rules.yml"))
        .collect();
    let tests: Vec<PathBuf> = files(&["yml"])
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".test.yml"))
        .collect();
    assert!(!rules.is_empty() && !tests.is_empty());
    for (what, list) in [("check", &rules), ("test", &tests)] {
        let out = Command::new("promtool")
            .args([what, "rules"])
            .args(list)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {what} rules:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
#[ignore = "needs kubernetes-validate (PyPI); run through scripts/test.sh"]
fn kubernetes_validate_accepts_every_manifest_in_strict_mode() {
    let venv = workspace().join(".venv/bin");
    let tool = venv.join("kubernetes-validate");
    let newest = Command::new(venv.join("python"))
        .args([
            "-c",
            "import kubernetes_validate.utils as u; print(u.latest_version())",
        ])
        .output()
        .unwrap();
    let newest = String::from_utf8(newest.stdout).unwrap().trim().to_owned();
    assert!(!newest.is_empty(), "kubernetes-validate knows no version");
    // Custom resources (ServiceMonitor, Karpenter's) have no schema there; rule files are not
    // objects.
    let manifests: Vec<PathBuf> = files(&["yaml", "yml"])
        .into_iter()
        .filter(|f| {
            !f.components().any(|c| {
                ["rules", "prometheus-operator", "node-setup"]
                    .contains(&c.as_os_str().to_str().unwrap_or(""))
            })
        })
        .collect();
    for version in ["1.30.0", newest.as_str()] {
        let out = Command::new(&tool)
            .args(["--strict", "--quiet", "-k", version])
            .args(&manifests)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
