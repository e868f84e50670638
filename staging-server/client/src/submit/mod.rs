//! `staging-server submit -- <spark-submit arguments>`: runs an unmodified `spark-submit`
//! against Kubernetes with files that exist only on this machine.
//!
//! 1. Finds the local files of the command line (primary resource, `--jars`, `--files`,
//!    `--py-files`, `--archives` and their `spark.*` properties) and rewrites them to
//!    `local://<mount>/<name>`.
//! 2. Stages them on the server as one submission; files the server already holds for the
//!    namespace are not sent again.
//! 3. Creates a Secret with the download token, named and labelled for this submission.
//! 4. Writes driver and executor pod templates (merged into the user's own) with the
//!    init-container that fetches the files, and labels the pods so that the server deletes
//!    the submission and the Secret when the driver pod ends.
//! 5. Runs `spark-submit` with the rewritten arguments, forwarding its output and signals.
//!    When it fails, its exit status is `submit`'s; when it fails before any pod of the
//!    submission exists, the submission and the Secret are deleted at once.
//! 6. When it succeeded, follows the driver pod to its end ([`driver`]): spark-submit exits 0
//!    in cluster mode however the driver ended, so a failed driver's exit code becomes
//!    `submit`'s. Not with `spark.kubernetes.submission.waitAppCompletion=false`, where
//!    spark-submit returns once the driver pod exists, and `submit` with it.

pub mod cmdline;
pub mod driver;
pub mod kube;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{Signal, SignalKind};

use super::stage::{LocalFile, StageRequest, Staged};
use super::{ClientError, EXIT_FAILURE, EXIT_USAGE, http};
use cmdline::Parsed;
use driver::{DriverPod, Outcome};
use template::{Role, Wiring};

use staging_api::wire::SUBMISSION_LABEL;

/// Arguments of `submit`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = concat!(
        "Exit status, before spark-submit runs: 1 failure, 3 credential refused, 4 not found,\n",
        "7 server unreachable, 64 usage. Once it ran:\n",
        "  spark-submit's  it failed (128 + signal when a signal ended it), or it succeeded with\n",
        "                  spark.kubernetes.submission.waitAppCompletion=false (submit does not\n",
        "                  wait either)\n",
        "  0               the driver pod ended Succeeded\n",
        "  1-255           the driver pod ended Failed: its Spark container's exit code (1 when it\n",
        "                  has none or it is 0), said in one sentence on standard error\n",
        "  3               the Kubernetes API refused to show the driver pod\n",
        "  7               the Kubernetes API could not be reached for --follow-outage\n",
        "  8               the driver pod disappeared before it ended (outcome unknown)\n",
        "  128 + signal    SIGINT, SIGTERM or SIGHUP while following the driver pod (the job goes on)\n",
        "\nExample:\n  staging-server submit --server https://staging.example.com --init-image REGISTRY/spark-k8s-services:TAG -- \\\n      --master k8s://https://api.example.com:6443 --deploy-mode cluster \\\n      --conf spark.kubernetes.container.image=REGISTRY/spark:4.3.0 \\\n      --jars lib/udfs.jar --files conf/lookup.csv job.py",
    )
)]
pub struct SubmitArgs {
    /// Server base URL as this machine reaches it.
    #[arg(long, env = "STAGING_SERVER")]
    pub server: String,
    /// Server URL as the driver and executor pods reach it (default: --server).
    #[arg(long, env = "STAGING_POD_SERVER")]
    pub pod_server: Option<String>,
    /// Image of the init-container (the image holding this program).
    #[arg(long, env = "STAGING_INIT_IMAGE")]
    pub init_image: String,
    /// Directory of the staged files in the pods.
    #[arg(long, default_value = "/var/spark-staged")]
    pub mount_path: String,
    /// File holding a shared upload token.
    #[arg(long, env = "STAGING_UPLOAD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A shared upload token (prefer --token-file).
    #[arg(long, env = "STAGING_UPLOAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Authenticate to the server with the kubeconfig user's bearer token, or with the
    /// Kubernetes token in --token-file (e.g. one bound to the server's audience); the server
    /// checks it with the API server and needs pod-create rights in the namespace. Refused
    /// over plain http:// except to a loopback server: the token is worth your cluster access.
    #[arg(long)]
    pub kube_auth: bool,
    /// With --kube-auth, send the credential over plain http:// to a server off this machine
    /// all the same: only where the network between is encrypted by other means (a service
    /// mesh's mutual TLS, a VPN, one machine's pod network).
    #[arg(long)]
    pub allow_plain_http: bool,
    /// Kubeconfig context (default: the current one, or the in-cluster service account).
    #[arg(long)]
    pub kube_context: Option<String>,
    /// PEM CA certificates trusted for the server, beside the system roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// ConfigMap of the job's namespace with the server's CA under `ca.crt`, for the pods.
    #[arg(long)]
    pub pod_ca_configmap: Option<String>,
    /// Absolute lifetime of the staged files (at most the server's maximum), e.g. 24h.
    #[arg(long, value_parser = parse_duration_arg)]
    pub ttl: Option<String>,
    /// Delete the staged files if not fetched within this time, e.g. 2h.
    #[arg(long, value_parser = parse_duration_arg)]
    pub unused_ttl: Option<String>,
    /// spark-submit to run (default: $SPARK_HOME/bin/spark-submit, else spark-submit on PATH).
    #[arg(long, env = "SPARK_SUBMIT")]
    pub spark_submit: Option<PathBuf>,
    /// Print the files, Secret, pod templates and command line; send and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Retries of requests to an unreachable server.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// Connection timeout to the server.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// While submit follows the driver pod to its end: how long the Kubernetes API may stay
    /// unreachable (or failing) before submit gives up with exit status 7.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub follow_outage: Duration,
    /// The spark-submit arguments, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "SPARK_SUBMIT_ARGS"
    )]
    pub spark_args: Vec<String>,
}

/// Checks a duration argument (`90s`, `2h`, `1d`).
///
/// # Errors
/// A sentence naming the accepted forms.
pub fn parse_duration_arg(s: &str) -> Result<String, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(s.to_owned()),
        Ok(_) => Err("must be positive".into()),
        Err(e) => Err(format!(
            "{e}; use a number with a unit, e.g. 90s, 30m, 24h, 7d"
        )),
    }
}

/// Spark's property: whether spark-submit waits for the driver pod's end (default true).
const WAIT_APP_COMPLETION: &str = "spark.kubernetes.submission.waitAppCompletion";

/// The pod templates as written, per role.
type Rendered = Vec<(Role, String)>;

/// What `submit` prepared.
struct Plan {
    parsed: Parsed,
    namespace: String,
    files: Vec<LocalFile>,
    submission: String,
    secret: String,
    driver_template: Option<serde_json::Value>,
    executor_template: Option<serde_json::Value>,
}

/// Runs `submit` and returns the exit code (spark-submit's, once it ran).
pub async fn main(args: SubmitArgs) -> ExitCode {
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("staging-server submit: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

fn usage(message: impl Into<String>) -> ClientError {
    ClientError::new(EXIT_USAGE, message)
}

fn prepare(args: &SubmitArgs) -> Result<Plan, ClientError> {
    let mut parsed = Parsed::parse(&args.spark_args).map_err(usage)?;
    if !args.mount_path.starts_with('/') || args.mount_path.contains("..") {
        return Err(usage("--mount-path must be an absolute path without '..'"));
    }
    if !parsed
        .option("--master")
        .is_some_and(|m| m.starts_with("k8s://"))
    {
        return Err(usage(
            "the spark-submit arguments need --master k8s://<API server URL>",
        ));
    }
    if parsed.option("--deploy-mode") != Some("cluster") {
        return Err(usage(
            "submit stages files for --deploy-mode cluster; in client mode the driver serves local files itself, run spark-submit directly",
        ));
    }
    let cwd = std::env::current_dir().map_err(|e| ClientError::new(EXIT_FAILURE, e.to_string()))?;
    let found = parsed
        .stage_local_files(&cwd, &args.mount_path)
        .map_err(usage)?;
    let namespace = parsed
        .conf("spark.kubernetes.namespace")
        .unwrap_or("default")
        .to_owned();
    namespace
        .parse::<staging_api::ids::Namespace>()
        .map_err(|e| usage(format!("spark.kubernetes.namespace: {e}")))?;
    let submission: String = staging_api::ids::ResourceId::random()
        .to_string()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    let secret = format!("spark-staged-{submission}");
    let read_template = |role: Role| -> Result<Option<serde_json::Value>, ClientError> {
        let key = format!("spark.kubernetes.{}.podTemplateFile", role.as_str());
        let Some(path) = parsed.conf(&key) else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| usage(format!("{key} {path}: {e}")))?;
        serde_yaml_ng::from_str(&text)
            .map(Some)
            .map_err(|e| usage(format!("{key} {path}: {e}")))
    };
    let driver_template = read_template(Role::Driver)?;
    let executor_template = read_template(Role::Executor)?;
    Ok(Plan {
        files: found
            .into_iter()
            .map(|f| LocalFile {
                path: f.path,
                name: f.name,
            })
            .collect(),
        parsed,
        namespace,
        submission,
        secret,
        driver_template,
        executor_template,
    })
}

/// Builds the final command line and writes the templates into `dir`.
fn finish_command(
    args: &SubmitArgs,
    plan: &Plan,
    dir: &Path,
) -> Result<(Vec<String>, Rendered), ClientError> {
    let mut parsed = plan.parsed.clone();
    let mut rendered = Vec::new();
    for (role, user) in [
        (Role::Driver, &plan.driver_template),
        (Role::Executor, &plan.executor_template),
    ] {
        let wiring = Wiring {
            secret: plan.secret.clone(),
            mount: args.mount_path.clone(),
            image: args.init_image.clone(),
            server: args
                .pod_server
                .clone()
                .unwrap_or_else(|| args.server.clone()),
            ca_config_map: args.pod_ca_configmap.clone(),
            container: parsed
                .conf(&format!(
                    "spark.kubernetes.{}.podTemplateContainerName",
                    role.as_str()
                ))
                .map(str::to_owned),
        };
        let pod = template::merge(user.clone(), role, &wiring).map_err(usage)?;
        let text = serde_json::to_string_pretty(&pod)
            .map_err(|e| ClientError::new(EXIT_FAILURE, e.to_string()))?;
        let path = dir.join(format!("{}-pod-template.json", role.as_str()));
        std::fs::write(&path, &text)
            .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", path.display())))?;
        let key = format!("spark.kubernetes.{}.podTemplateFile", role.as_str());
        parsed.remove_conf(&key);
        parsed.push_conf(&key, &path.to_string_lossy());
        parsed.push_conf(
            &format!(
                "spark.kubernetes.{}.label.{SUBMISSION_LABEL}",
                role.as_str()
            ),
            &plan.submission,
        );
        rendered.push((role, text));
    }
    Ok((parsed.to_args(), rendered))
}

fn spark_submit(args: &SubmitArgs) -> Result<PathBuf, ClientError> {
    if let Some(p) = &args.spark_submit {
        return Ok(p.clone());
    }
    if let Some(home) = std::env::var_os("SPARK_HOME") {
        let p = PathBuf::from(home).join("bin/spark-submit");
        if p.is_file() {
            return Ok(p);
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("spark-submit"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            usage("spark-submit not found: set SPARK_HOME, put it on PATH, or pass --spark-submit")
        })
}

/// The owner of the submission: the driver pod carrying the submission label.
fn owner_labels(submission: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SUBMISSION_LABEL.to_owned(), submission.to_owned()),
        ("spark-role".to_owned(), "driver".to_owned()),
    ])
}

/// Whether spark-submit waits for the driver pod's end, as the command line says (Spark's
/// default: it does).
fn waits_for_completion(parsed: &Parsed) -> bool {
    parsed
        .conf(WAIT_APP_COMPLETION)
        .is_none_or(|v| !v.trim().eq_ignore_ascii_case("false"))
}

/// The driver pod of the plan's submission: the owner, and Spark's container in it (the one
/// `spark.kubernetes.driver.podTemplateContainerName` names, else the template's first, else
/// Spark's default).
fn driver_pod(plan: &Plan) -> DriverPod {
    let selector = owner_labels(&plan.submission)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let container = plan
        .parsed
        .conf("spark.kubernetes.driver.podTemplateContainerName")
        .or_else(|| plan.driver_template.as_ref()?["spec"]["containers"][0]["name"].as_str())
        .unwrap_or(driver::SPARK_DRIVER_CONTAINER)
        .to_owned();
    DriverPod {
        namespace: plan.namespace.clone(),
        selector,
        container,
    }
}

/// `submit`'s exit status once spark-submit succeeded: how the driver pod ended, unless
/// spark-submit did not wait for it (then spark-submit's success). `kube` is the client to
/// follow it with, or why there is none.
async fn after_success(
    args: &SubmitArgs,
    plan: &Plan,
    kube: Result<&::kube::Client, &ClientError>,
) -> Result<ExitCode, ClientError> {
    if !waits_for_completion(&plan.parsed) {
        eprintln!(
            "staging-server submit: {WAIT_APP_COMPLETION}=false: spark-submit returned once the driver pod existed, and so does submit; the job's end is not followed"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let kube = match kube {
        Ok(k) => k,
        Err(e) => {
            eprintln!(
                "staging-server submit: cannot follow the driver pod ({}); the exit status is spark-submit's",
                e.message
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let driver = driver_pod(plan);
    let mut signals = Signals::new()?;
    let ended = tokio::select! {
        ended = driver::follow(kube, &driver, args.follow_outage) => ended?,
        Some(kind) = signals.next() => {
            eprintln!(
                "staging-server submit: stopped following the driver pod ({}) on signal {}; the job goes on",
                driver.selector,
                kind.as_raw_value()
            );
            return Ok(ExitCode::from(signal_status(kind.as_raw_value())));
        }
    };
    Ok(match ended {
        Outcome::Succeeded => ExitCode::SUCCESS,
        Outcome::Failed { code, message } => {
            eprintln!("staging-server submit: {message}");
            ExitCode::from(code)
        }
    })
}

async fn run(args: SubmitArgs) -> Result<ExitCode, ClientError> {
    if args.kube_auth && !args.allow_plain_http {
        http::require_private_transport(&args.server, "your Kubernetes credential")?;
    }
    let plan = prepare(&args)?;
    // A dry run shows the plan even where spark-submit is not installed.
    let submit = match spark_submit(&args) {
        Err(_) if args.dry_run => PathBuf::from("spark-submit"),
        r => r?,
    };
    let dir = tempfile::Builder::new()
        .prefix("staging-submit-")
        .tempdir()
        .map_err(|e| ClientError::new(EXIT_FAILURE, format!("temporary directory: {e}")))?;
    let (command, rendered) = finish_command(&args, &plan, dir.path())?;
    if args.dry_run {
        print_dry_run(&args, &plan, &submit, &command, &rendered);
        return Ok(ExitCode::SUCCESS);
    }
    if plan.files.is_empty() {
        // Only the label by which the driver pod is followed.
        let mut command = plan.parsed.clone();
        command.push_conf(
            &format!("spark.kubernetes.driver.label.{SUBMISSION_LABEL}"),
            &plan.submission,
        );
        eprintln!(
            "staging-server submit: no local files to stage; running spark-submit with the driver pod labelled {SUBMISSION_LABEL}={}",
            plan.submission
        );
        let code = exec(&submit, &command.to_args()).await?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
        let kube = match kube::config(args.kube_context.as_deref()).await {
            Ok(cfg) => kube::client(cfg),
            Err(e) => Err(e),
        };
        return after_success(&args, &plan, kube.as_ref()).await;
    }
    let token = match (&args.token, &args.token_file, args.kube_auth) {
        (Some(_), Some(_), _) | (Some(_), _, true) => {
            return Err(usage(
                "give one of --token, --token-file and --kube-auth (--kube-auth may take its token from --token-file)",
            ));
        }
        (Some(t), None, false) => Some(t.trim().to_owned()),
        (None, Some(p), _) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| usage(format!("--token-file {}: {e}", p.display())))?
                .trim()
                .to_owned(),
        ),
        (None, None, _) => None,
    };
    let kube_cfg = kube::config(args.kube_context.as_deref()).await?;
    let credential = match token {
        None if args.kube_auth => Some(kube::bearer_token(&kube_cfg)?),
        token => token,
    };
    let kube = kube::client(kube_cfg)?;
    let client = http::client(args.ca_file.as_deref(), args.connect_timeout, None)?;
    let started = std::time::Instant::now();
    let staged = super::stage::stage(
        &client,
        &StageRequest {
            server: args.server.clone(),
            namespace: plan.namespace.clone(),
            labels: owner_labels(&plan.submission),
            ttl: args.ttl.clone(),
            unused_ttl: args.unused_ttl.clone(),
            credential: credential.clone(),
            files: plan.files.clone(),
            retries: args.retries,
        },
    )
    .await?;
    let total: u64 = staged.size;
    eprintln!(
        "staging-server submit: staged {} file(s), {} bytes, as {} in {:.1}s: sent {} file(s), {} bytes; {} already stored",
        plan.files.len(),
        total,
        staged.id,
        started.elapsed().as_secs_f64(),
        staged.sent_files,
        staged.sent_bytes,
        plan.files.len() - staged.sent_files,
    );
    let secret_labels = BTreeMap::from([
        (
            staging_api::wire::MANAGED_BY_LABEL.to_owned(),
            staging_api::wire::MANAGED_BY.to_owned(),
        ),
        (
            staging_api::wire::RESOURCE_LABEL.to_owned(),
            staged.id.clone(),
        ),
        (SUBMISSION_LABEL.to_owned(), plan.submission.clone()),
    ]);
    let data = BTreeMap::from([
        ("resource-id".to_owned(), staged.id.clone()),
        ("token".to_owned(), staged.token.clone()),
        ("sha256".to_owned(), staged.sha256.clone()),
    ]);
    if let Err(e) =
        kube::create_secret(&kube, &plan.namespace, &plan.secret, secret_labels, data).await
    {
        delete_staged(&client, &args.server, &staged).await;
        return Err(e);
    }
    eprintln!(
        "staging-server submit: Secret {}/{}; pods labelled {SUBMISSION_LABEL}={}",
        plan.namespace, plan.secret, plan.submission
    );
    let code = exec(&submit, &command).await?;
    drop(dir);
    if code == ExitCode::SUCCESS {
        return after_success(&args, &plan, Ok(&kube)).await;
    }
    // Nothing of the job started: nothing will ever end it, so clean up now.
    let selector = format!("{SUBMISSION_LABEL}={}", plan.submission);
    if let Ok(false) = kube::pods_exist(&kube, &plan.namespace, &selector).await {
        delete_staged(&client, &args.server, &staged).await;
        if let Err(e) = kube::delete_secret(&kube, &plan.namespace, &plan.secret).await {
            eprintln!("staging-server submit: {}", e.message);
        }
        eprintln!(
            "staging-server submit: spark-submit failed before any pod started; the staged files and the Secret are deleted"
        );
    }
    Ok(code)
}

/// Deletes a submission with its own download token.
async fn delete_staged(client: &reqwest::Client, server: &str, staged: &Staged) {
    let url = format!(
        "{}/api/v1/resources/{}",
        server.trim_end_matches('/'),
        staged.id
    );
    match client.delete(&url).bearer_auth(&staged.token).send().await {
        Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => {}
        Ok(r) => eprintln!(
            "staging-server submit: deleting {} answered {}; the server deletes it when its owner never starts",
            staged.id,
            r.status()
        ),
        Err(e) => eprintln!(
            "staging-server submit: deleting {}: {}; the server deletes it when its owner never starts",
            staged.id,
            http::describe(&e)
        ),
    }
}

fn print_dry_run(
    args: &SubmitArgs,
    plan: &Plan,
    submit: &Path,
    command: &[String],
    rendered: &[(Role, String)],
) {
    println!("# staging-server submit --dry-run: nothing is sent, created or run");
    println!("server: {}", args.server);
    println!("namespace: {}", plan.namespace);
    println!("files:");
    for f in &plan.files {
        let size = std::fs::metadata(&f.path).map_or(0, |m| m.len());
        println!(
            "  {} -> local://{}/{} ({size} bytes)",
            f.path.display(),
            args.mount_path.trim_end_matches('/'),
            f.name
        );
    }
    println!(
        "secret: {}/{} (keys resource-id, token, sha256; labels {SUBMISSION_LABEL}={}, {}=<resource id>)",
        plan.namespace,
        plan.secret,
        plan.submission,
        staging_api::wire::RESOURCE_LABEL
    );
    for (role, text) in rendered {
        println!("{} pod template:", role.as_str());
        for line in text.lines() {
            println!("  {line}");
        }
    }
    let quoted: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    println!(
        "command: {} {}",
        shell_quote(&submit.to_string_lossy()),
        quoted.join(" ")
    );
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// SIGINT, SIGTERM and SIGHUP: forwarded to spark-submit while it runs; they stop `submit`
/// while it follows the driver pod. (Once listened for, they no longer end the process by
/// themselves.)
struct Signals(Vec<(SignalKind, Signal)>);

impl Signals {
    fn new() -> Result<Self, ClientError> {
        [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .into_iter()
        .map(|kind| {
            tokio::signal::unix::signal(kind)
                .map(|s| (kind, s))
                .map_err(|e| ClientError::new(EXIT_FAILURE, e.to_string()))
        })
        .collect::<Result<_, _>>()
        .map(Self)
    }

    /// The next signal to arrive.
    async fn next(&mut self) -> Option<SignalKind> {
        let each = self
            .0
            .iter_mut()
            .map(|(k, s)| Box::pin(async move { s.recv().await.map(|_| *k) }));
        futures::future::select_all(each).await.0
    }
}

/// The exit status of a process ended by signal `sig`, as a shell reports it.
fn signal_status(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(1)
}

/// Runs spark-submit with inherited output, forwarding SIGINT, SIGTERM and SIGHUP; returns
/// its exit status (128 + signal when a signal ended it).
async fn exec(submit: &Path, command: &[String]) -> Result<ExitCode, ClientError> {
    let mut child = tokio::process::Command::new(submit)
        .args(command)
        .spawn()
        .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", submit.display())))?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let mut signals = Signals::new()?;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st,
            Some(kind) = signals.next() => {
                if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw)
                    && let Some(sig) = rustix::process::Signal::from_named_raw(kind.as_raw_value())
                {
                    let _ = rustix::process::kill_process(pid, sig);
                }
            }
        }
    }
    .map_err(|e| ClientError::new(EXIT_FAILURE, format!("{}: {e}", submit.display())))?;
    use std::os::unix::process::ExitStatusExt as _;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => signal_status(sig),
        _ => 1,
    };
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str], driver_template: Option<serde_json::Value>) -> Plan {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Plan {
            parsed: Parsed::parse(&args).unwrap(),
            namespace: "jobs".into(),
            files: Vec::new(),
            submission: "0a1b2c3d4e5f".into(),
            secret: "spark-staged-0a1b2c3d4e5f".into(),
            driver_template,
            executor_template: None,
        }
    }

    #[test]
    fn submit_waits_for_the_driver_unless_spark_submit_does_not() {
        assert!(waits_for_completion(&plan(&["job.py"], None).parsed));
        for (value, waits) in [("true", true), ("false", false), (" FALSE ", false)] {
            let conf = format!("{WAIT_APP_COMPLETION}={value}");
            let p = plan(&["--conf", &conf, "job.py"], None);
            assert_eq!(waits_for_completion(&p.parsed), waits, "{value}");
        }
    }

    #[test]
    fn the_driver_pod_is_the_labelled_owner_and_its_container_sparks() {
        let d = driver_pod(&plan(&["job.py"], None));
        assert_eq!(d.namespace, "jobs");
        assert_eq!(
            d.selector,
            "spark-role=driver,staging-server/submission=0a1b2c3d4e5f"
        );
        assert_eq!(d.container, driver::SPARK_DRIVER_CONTAINER);
        // Spark takes a template's first container, keeping its name...
        let template =
            serde_json::json!({"spec": {"containers": [{"name": "main"}, {"name": "b"}]}});
        let d = driver_pod(&plan(&["job.py"], Some(template.clone())));
        assert_eq!(d.container, "main");
        // ...unless the configuration names one.
        let d = driver_pod(&plan(
            &[
                "--conf",
                "spark.kubernetes.driver.podTemplateContainerName=b",
                "job.py",
            ],
            Some(template),
        ));
        assert_eq!(d.container, "b");
    }
}
