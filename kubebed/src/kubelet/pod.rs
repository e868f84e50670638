//! One pod on a node, from binding to removal: its network namespace, volumes, init containers
//! in order (native sidecars — init containers with `restartPolicy: Always` — keep running),
//! containers, restarts per `restartPolicy` with back-off, status as a kubelet reports it
//! (phase, conditions, container states and exit codes), readiness from the containers'
//! probes ([`super::probe`]), and on deletion the `preStop` sleeps, SIGTERM, the rest of the
//! grace period, then SIGKILL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use rustix::process::Signal;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::NodeCtx;
use super::env::{EnvSource, build};
use super::launch::{self, Launch, Mount};
use super::probe::Readiness;
use super::volumes::{self, VolumeError};
use crate::net::Netns;
use crate::resources::PODS;
use crate::status::ApiError;
use crate::store::now;

/// Longest wait between restarts of a crashing container.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The least time a container gets between its `preStop` hook and SIGKILL (a kubelet's
/// `minimumGracePeriodInSeconds`).
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// How often the due readiness probes are looked for.
const PROBE_TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
struct Cstate {
    name: String,
    image: String,
    sidecar: bool,
    init: bool,
    restarts: u32,
    state: Value,
    last: Value,
    pid: Option<u32>,
    /// Generation of the running process, to ignore exits of replaced ones.
    generation: u64,
    done: bool,
    /// The readiness probe the bed runs, if any.
    readiness: Option<Arc<Readiness>>,
    /// Whether the probe says ready (always, without a probe), while the process runs.
    ready: bool,
    /// Probe passes (positive) or failures (negative) in a row.
    streak: i64,
    /// When the next probe is due, while the process runs.
    next_probe: Option<tokio::time::Instant>,
}

impl Cstate {
    fn json(&self) -> Value {
        let running = self.state.get("running").is_some();
        json!({
            "name": self.name, "image": self.image, "imageID": "",
            "containerID": format!("kubebed://{}-{}", self.name, self.generation),
            "ready": running && self.ready, "started": running, "restartCount": self.restarts,
            "state": self.state, "lastState": self.last,
        })
    }
}

struct Run {
    ctx: Arc<NodeCtx>,
    pod: Value,
    typed: Pod,
    ns: String,
    name: String,
    uid: String,
    dir: PathBuf,
    netns: Option<Netns>,
    hostname: String,
    volumes: HashMap<String, PathBuf>,
    /// The service-account volume, when mounted.
    service_account: Option<PathBuf>,
    containers: Vec<Cstate>,
    phase: &'static str,
    /// The phase the pod ends in once its sidecars have stopped.
    final_phase: Option<&'static str>,
    message: Option<String>,
    reason: Option<String>,
    started: String,
    /// Each condition's last value and when it took it (`lastTransitionTime`).
    transitions: HashMap<&'static str, (bool, String)>,
    exits: mpsc::UnboundedSender<(String, u64, i32)>,
}

/// Runs a pod until it is gone. `stop` carries the grace period once the pod is deleted.
pub async fn run(ctx: Arc<NodeCtx>, pod: Value, mut stop: watch::Receiver<Option<i64>>) {
    let typed: Pod = match serde_json::from_value(pod.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "pod does not parse");
            return;
        }
    };
    let ns = typed.metadata.namespace.clone().unwrap_or_default();
    let name = typed.metadata.name.clone().unwrap_or_default();
    let uid = typed.metadata.uid.clone().unwrap_or_default();
    let spec = typed.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let hostname = if host_network {
        ctx.name.clone()
    } else {
        spec.hostname.clone().unwrap_or_else(|| name.clone())
    };
    let (tx, mut exits) = mpsc::unbounded_channel();
    let cstate = |c: &Container, init: bool| Cstate {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        sidecar: init && c.restart_policy.as_deref() == Some("Always"),
        init,
        restarts: 0,
        state: json!({"waiting": {"reason": if init { "PodInitializing" } else { "ContainerCreating" }}}),
        last: json!({}),
        pid: None,
        generation: 0,
        done: false,
        readiness: Readiness::of(c).map(Arc::new),
        ready: false,
        streak: 0,
        next_probe: None,
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| cstate(c, true))
        .chain(spec.containers.iter().map(|c| cstate(c, false)))
        .collect();
    let dir = ctx.dir.join("pods").join(&uid);
    let host_port = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .any(|p| p.host_port.is_some_and(|h| h != 0));
    let mut run = Run {
        ctx: Arc::clone(&ctx),
        pod,
        typed,
        ns,
        name,
        uid,
        dir,
        netns: None,
        hostname,
        volumes: HashMap::new(),
        service_account: None,
        containers,
        phase: "Pending",
        final_phase: None,
        message: None,
        reason: None,
        started: now(),
        transitions: HashMap::new(),
        exits: tx,
    };
    tracing::info!(pod = %run.name, node = %ctx.name, "starting pod");
    let outcome = if host_port && !host_network {
        // Forwarding a node port into a pod's namespace is not emulated: refuse loudly rather
        // than run a pod that a cluster would reach and the bed would not.
        run.fail(
            "HostPortUnsupported",
            "hostPort without hostNetwork is not supported by the test bed",
        );
        Err(())
    } else {
        run.start(&mut stop, &mut exits).await
    };
    if outcome.is_ok() {
        run.supervise(&mut stop, &mut exits).await;
    }
    let spec_grace = run
        .typed
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    let grace = stop.borrow().unwrap_or(spec_grace);
    run.stop_all(&mut exits, grace).await;
    run.teardown().await;
    // A finished pod stays until it is deleted.
    while stop.borrow().is_none() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&run.dir);
    let _ = ctx
        .store
        .remove_terminated(&PODS, &run.ns, &run.name, &run.uid);
    tracing::info!(pod = %run.name, node = %ctx.name, "pod removed");
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

impl Run {
    fn publish(&mut self) {
        let host_ip = self.ctx.netns.ip.to_string();
        let pod_ip = self.netns.as_ref().map(|n| n.ip.to_string());
        let (init, main): (Vec<&Cstate>, Vec<&Cstate>) =
            self.containers.iter().partition(|c| c.init);
        let initialized = init
            .iter()
            .all(|c| c.done || (c.sidecar && c.pid.is_some()));
        let ready = self.phase == "Running"
            && main.iter().all(|c| c.pid.is_some() && c.ready)
            && init
                .iter()
                .filter(|c| c.sidecar)
                .all(|c| c.pid.is_some() && c.ready);
        // A condition's time is when it last changed: `minReadySeconds` counts from the
        // moment the pod became Ready.
        let mut cond = |t: &'static str, ok: bool| {
            let since = match self.transitions.get(t) {
                Some((was, at)) if *was == ok => at.clone(),
                _ => {
                    let at = now();
                    self.transitions.insert(t, (ok, at.clone()));
                    at
                }
            };
            json!({"type": t, "status": if ok {"True"} else {"False"}, "lastProbeTime": null, "lastTransitionTime": since})
        };
        let conditions = [
            cond("PodScheduled", true),
            cond("Initialized", initialized),
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ];
        let mut status = json!({
            "phase": self.phase,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": self.started,
            "qosClass": "BestEffort",
            "conditions": conditions,
            "initContainerStatuses": init.iter().map(|c| c.json()).collect::<Vec<_>>(),
            "containerStatuses": main.iter().map(|c| c.json()).collect::<Vec<_>>(),
        });
        if let Some(ip) = pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if let Some(m) = &self.message {
            status["message"] = json!(m);
        }
        if let Some(r) = &self.reason {
            status["reason"] = json!(r);
        }
        let uid = self.uid.clone();
        let res = self.ctx.store.update(&PODS, &self.ns, &self.name, |p| {
            if p["metadata"]["uid"].as_str() != Some(uid.as_str()) {
                return Err(ApiError::conflict(&PODS, ""));
            }
            p["status"] = status.clone();
            Ok(())
        });
        if let Ok(p) = res {
            self.pod = p;
        }
    }

    /// Network, volumes and init containers. `Err` when the pod ended or was deleted first.
    async fn start(
        &mut self,
        stop: &mut watch::Receiver<Option<i64>>,
        exits: &mut mpsc::UnboundedReceiver<(String, u64, i32)>,
    ) -> Result<(), ()> {
        let spec = self.typed.spec.clone().unwrap_or_default();
        if spec.host_network == Some(true) {
            self.netns = Some(self.ctx.netns.clone());
        } else {
            let fabric = Arc::clone(&self.ctx.fabric);
            let index = self.ctx.index;
            match tokio::task::spawn_blocking(move || fabric.pod(index)).await {
                Ok(Ok(n)) => self.netns = Some(n),
                other => {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => String::new(),
                    };
                    self.fail("NetworkNotReady", &why);
                    return Err(());
                }
            }
        }
        self.publish();
        // Volumes, retried while something they need is missing.
        let mut delay = Duration::from_millis(200);
        loop {
            match volumes::prepare(&self.ctx.store, &self.ctx.roots, &self.typed, &self.dir) {
                Ok(v) => {
                    self.volumes = v;
                    match volumes::service_account(
                        &self.ctx.store,
                        &self.typed,
                        &self.dir,
                        self.ctx.api_ca.as_deref(),
                    ) {
                        Ok(sa) => self.service_account = sa,
                        Err(VolumeError::Fail(m) | VolumeError::Wait(m)) => {
                            self.fail("VolumeFailed", &m);
                            return Err(());
                        }
                    }
                    break;
                }
                Err(VolumeError::Fail(m)) => {
                    self.fail("VolumeFailed", &m);
                    return Err(());
                }
                Err(VolumeError::Wait(m)) => {
                    self.message = Some(m);
                    self.publish();
                    if wait_or_stop(stop, delay).await {
                        return Err(());
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.message = None;
        self.ctx.hosts.add(
            &self.uid,
            &self.dir,
            &self.ns,
            &self.hostname,
            self.netns.as_ref().map(|n| n.ip),
        );
        let inits: Vec<usize> = (0..self.containers.len())
            .filter(|&i| self.containers[i].init)
            .collect();
        for i in inits {
            if self.containers[i].sidecar {
                self.start_container(i, stop).await?;
                continue;
            }
            loop {
                self.start_container(i, stop).await?;
                let code = self.wait_exit(i, stop, exits).await?;
                if code == 0 {
                    self.containers[i].done = true;
                    break;
                }
                if self.restart_policy() == "Never" {
                    self.phase = "Failed";
                    self.publish();
                    return Err(());
                }
                if wait_or_stop(stop, self.backoff(i)).await {
                    return Err(());
                }
            }
        }
        let mains: Vec<usize> = (0..self.containers.len())
            .filter(|&i| !self.containers[i].init)
            .collect();
        for i in mains {
            self.start_container(i, stop).await?;
        }
        self.phase = "Running";
        self.publish();
        Ok(())
    }

    fn restart_policy(&self) -> String {
        self.typed
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn backoff(&self, i: usize) -> Duration {
        let r = self.containers[i].restarts.min(6);
        (Duration::from_millis(500) * 2u32.pow(r)).min(MAX_BACKOFF)
    }

    fn fail(&mut self, reason: &str, message: &str) {
        tracing::warn!(pod = %self.name, reason, message, "pod failed");
        self.phase = "Failed";
        self.reason = Some(reason.to_string());
        self.message = Some(message.to_string());
        self.publish();
    }

    fn container_spec(&self, i: usize) -> Option<Container> {
        self.container_spec_named(&self.containers[i].name)
    }

    fn container_spec_named(&self, name: &str) -> Option<Container> {
        let spec = self.typed.spec.as_ref()?;
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == name)
            .cloned()
    }

    /// Starts container `i`, retrying while its configuration is not ready.
    async fn start_container(
        &mut self,
        i: usize,
        stop: &mut watch::Receiver<Option<i64>>,
    ) -> Result<(), ()> {
        let Some(c) = self.container_spec(i) else {
            return Err(());
        };
        let Some(image) = self
            .ctx
            .images
            .get(c.image.as_deref().unwrap_or_default())
            .cloned()
        else {
            self.containers[i].state = json!({"waiting": {"reason": "ErrImagePull",
                "message": format!("image {:?} is not known to the test bed", c.image.unwrap_or_default())}});
            self.publish();
            // As a kubelet: the pod stays Pending in image pull back-off until deleted.
            while stop.borrow().is_none() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
            return Err(());
        };
        let mut delay = Duration::from_millis(200);
        let env = loop {
            let src = EnvSource {
                pod: &self.pod,
                image: &image,
                store: &self.ctx.store,
                api: self.ctx.api.clone(),
                hostname: &self.hostname,
            };
            match build(&src, &c) {
                Ok(env) => break env,
                Err(VolumeError::Fail(m)) => {
                    self.fail("CreateContainerConfigError", &m);
                    return Err(());
                }
                Err(VolumeError::Wait(m)) => {
                    self.containers[i].state =
                        json!({"waiting": {"reason": "CreateContainerConfigError", "message": m}});
                    self.publish();
                    if wait_or_stop(stop, delay).await {
                        return Err(());
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let expand = |s: &String| super::env::expand(s, &env);
        let command: Vec<String> = c.command.as_ref().map_or_else(
            || image.entrypoint.clone(),
            |v| v.iter().map(expand).collect(),
        );
        let args: Vec<String> = match (&c.command, &c.args) {
            (_, Some(a)) => a.iter().map(expand).collect(),
            (None, None) => image.cmd.clone(),
            (Some(_), None) => Vec::new(),
        };
        let argv: Vec<String> = command.into_iter().chain(args).collect();
        if argv.is_empty() {
            self.fail("CreateContainerError", "no command specified");
            return Err(());
        }
        let pod_sc = self
            .typed
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        let to_u32 = |v: Option<i64>| v.and_then(|x| u32::try_from(x).ok());
        let uid = to_u32(sc.run_as_user.or(pod_sc.run_as_user)).or(image.user.map(|u| u.0));
        let gid = to_u32(sc.run_as_group.or(pod_sc.run_as_group))
            .or(image.user.map(|u| u.1))
            .or(uid);
        let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true);
        if non_root && uid.unwrap_or(0) == 0 {
            self.containers[i].state = json!({"waiting": {"reason": "CreateContainerConfigError",
                "message": "container has runAsNonRoot and image will run as root"}});
            self.publish();
            while stop.borrow().is_none() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
            return Err(());
        }
        let mut groups: Vec<u32> = pod_sc
            .supplemental_groups
            .iter()
            .flatten()
            .filter_map(|g| u32::try_from(*g).ok())
            .collect();
        if let Some(g) = to_u32(pod_sc.fs_group) {
            groups.push(g);
        }
        let mut mounts: Vec<Mount> = image
            .files
            .iter()
            .map(|(src, dst)| Mount {
                source: src.clone(),
                target: dst.clone(),
                read_only: false,
            })
            .collect();
        for m in c.volume_mounts.iter().flatten() {
            let Some(src) = self.volumes.get(&m.name) else {
                continue;
            };
            let mut source = src.clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if sub.starts_with('/') || sub.split('/').any(|x| x == "..") {
                    self.fail(
                        "CreateContainerConfigError",
                        &format!("subPath {sub:?} is not relative and clean"),
                    );
                    return Err(());
                }
                source = source.join(sub);
                if !source.exists() {
                    let _ = std::fs::create_dir_all(&source);
                }
            }
            mounts.push(Mount {
                source,
                target: m.mount_path.clone(),
                read_only: m.read_only == Some(true),
            });
        }
        if let Some(sa) = &self.service_account
            && !mounts
                .iter()
                .any(|m| m.target.trim_end_matches('/') == volumes::SERVICE_ACCOUNT_DIR)
        {
            mounts.push(Mount {
                source: sa.clone(),
                target: volumes::SERVICE_ACCOUNT_DIR.to_owned(),
                read_only: true,
            });
        }
        let etc = self.dir.join("etc");
        for f in ["hosts", "resolv.conf", "hostname"] {
            mounts.push(Mount {
                source: etc.join(f),
                target: format!("/etc/{f}"),
                read_only: false,
            });
        }
        let n = self.containers[i].generation + 1;
        let l = Launch {
            netns: self
                .netns
                .as_ref()
                .map(|n| n.name.clone())
                .unwrap_or_default(),
            hostname: self.hostname.clone(),
            mounts,
            workdir: c.working_dir.clone().or(image.workdir.clone()),
            user: uid.filter(|&u| u != 0).map(|u| (u, gid.unwrap_or(u))),
            groups,
            no_new_privs: sc.allow_privilege_escalation == Some(false),
            read_only_root: sc.read_only_root_filesystem == Some(true),
            argv,
            env,
            log: self.dir.join("logs").join(format!("{}.log", c.name)),
            scratch: self.dir.join("scratch").join(format!("{}-{n}", c.name)),
        };
        let _ = std::fs::create_dir_all(self.dir.join("logs"));
        match launch::spawn(&l, &c.name) {
            Ok(mut child) => {
                let pid = child.id();
                let tx = self.exits.clone();
                let cname = c.name.clone();
                tokio::spawn(async move {
                    let code = child.wait().await.map_or(255, code_of);
                    let _ = tx.send((cname, n, code));
                });
                let cs = &mut self.containers[i];
                cs.generation = n;
                cs.pid = pid;
                // Unready until its probe passes; without one, ready while it runs.
                cs.ready = cs.readiness.is_none();
                cs.streak = 0;
                cs.next_probe = cs
                    .readiness
                    .as_ref()
                    .map(|r| tokio::time::Instant::now() + r.initial_delay);
                cs.state = json!({"running": {"startedAt": now()}});
                self.publish();
                Ok(())
            }
            Err(e) => {
                self.fail("StartError", &format!("starting container {}: {e}", c.name));
                Err(())
            }
        }
    }

    fn exited(&mut self, name: &str, generation: u64, code: i32) -> Option<usize> {
        let i = self.containers.iter().position(|c| c.name == name)?;
        let c = &mut self.containers[i];
        if c.generation != generation {
            return None;
        }
        let started = c.state["running"]["startedAt"].clone();
        c.last = c.state.clone();
        c.state = json!({"terminated": {"exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started, "finishedAt": now()}});
        c.pid = None;
        c.ready = false;
        c.next_probe = None;
        tracing::info!(pod = %self.name, container = name, code, "container exited");
        Some(i)
    }

    async fn wait_exit(
        &mut self,
        i: usize,
        stop: &mut watch::Receiver<Option<i64>>,
        exits: &mut mpsc::UnboundedReceiver<(String, u64, i32)>,
    ) -> Result<i32, ()> {
        loop {
            tokio::select! {
                r = stop.changed() => if r.is_err() || stop.borrow().is_some() { return Err(()) },
                Some((name, g, code)) = exits.recv() => {
                    if self.exited(&name, g, code) == Some(i) {
                        self.publish();
                        return Ok(code);
                    }
                    self.publish();
                }
            }
        }
    }

    /// Main containers running: restarts per policy, the end of the pod, or its deletion.
    async fn supervise(
        &mut self,
        stop: &mut watch::Receiver<Option<i64>>,
        exits: &mut mpsc::UnboundedReceiver<(String, u64, i32)>,
    ) {
        let policy = self.restart_policy();
        let (rtx, mut restarts) = mpsc::unbounded_channel::<usize>();
        let (ptx, mut probed) = mpsc::unbounded_channel::<(usize, u64, bool)>();
        let mut probe_tick = tokio::time::interval(PROBE_TICK);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = stop.changed() => if r.is_err() || stop.borrow().is_some() { return },
                _ = probe_tick.tick() => self.probe_due(&ptx),
                Some((i, g, passed)) = probed.recv() => {
                    let c = &mut self.containers[i];
                    if c.generation != g || c.pid.is_none() { continue; }
                    let Some(r) = c.readiness.clone() else { continue };
                    // The next probe a period after this one ended: one at a time.
                    c.next_probe = Some(tokio::time::Instant::now() + r.period);
                    let was = c.ready;
                    c.ready = r.judge(&mut c.streak, was, passed);
                    if c.ready != was {
                        tracing::info!(pod = %self.name, container = %c.name, ready = c.ready, "readiness changed");
                        self.publish();
                    }
                }
                Some(i) = restarts.recv() => {
                    self.containers[i].restarts += 1;
                    if self.start_container(i, stop).await.is_err() { return; }
                }
                Some((name, g, code)) = exits.recv() => {
                    let Some(i) = self.exited(&name, g, code) else { continue };
                    let again = self.containers[i].sidecar
                        || policy == "Always"
                        || (policy == "OnFailure" && code != 0);
                    if again {
                        self.containers[i].state = json!({"waiting": {"reason": "CrashLoopBackOff"}});
                        let delay = self.backoff(i);
                        let rtx = rtx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = rtx.send(i);
                        });
                    } else {
                        self.containers[i].done = true;
                    }
                    let mains_done = self.containers.iter().filter(|c| !c.init).all(|c| c.done);
                    if mains_done {
                        let failed = self.containers.iter().filter(|c| !c.init)
                            .any(|c| c.state["terminated"]["exitCode"].as_i64() != Some(0));
                        // As a kubelet: the pod is done once its sidecars are stopped too.
                        self.final_phase = Some(if failed { "Failed" } else { "Succeeded" });
                        self.publish();
                        return;
                    }
                    self.publish();
                }
            }
        }
    }

    /// Starts the readiness probes that are due, each answering on `results`; a container's
    /// next probe is scheduled when its answer comes.
    fn probe_due(&mut self, results: &mpsc::UnboundedSender<(usize, u64, bool)>) {
        let Some(ip) = self.netns.as_ref().map(|n| n.ip) else {
            return;
        };
        let now = tokio::time::Instant::now();
        for (i, c) in self.containers.iter_mut().enumerate() {
            let (Some(r), Some(due)) = (c.readiness.clone(), c.next_probe) else {
                continue;
            };
            if c.pid.is_none() || due > now {
                continue;
            }
            c.next_probe = None;
            let (tx, g) = (results.clone(), c.generation);
            tokio::spawn(async move {
                let _ = tx.send((i, g, r.run(ip).await));
            });
        }
    }

    /// Stops every running container, main ones first, then sidecars: their `preStop` sleeps,
    /// SIGTERM, SIGKILL to what is left `grace` seconds after the start (at least 2 s after
    /// the sleeps, as a kubelet gives a container whose hook took its whole grace period).
    async fn stop_all(
        &mut self,
        exits: &mut mpsc::UnboundedReceiver<(String, u64, i32)>,
        grace: i64,
    ) {
        for sidecars in [false, true] {
            let targets: Vec<u32> = self
                .containers
                .iter()
                .filter(|c| c.sidecar == sidecars)
                .filter_map(|c| c.pid)
                .collect();
            if targets.is_empty() {
                continue;
            }
            let mut deadline = tokio::time::Instant::now()
                + Duration::from_secs(u64::try_from(grace.max(0)).unwrap_or(0));
            // The running containers' `preStop` sleeps, side by side, within the grace period
            // (the pod has left its Services' endpoints meanwhile). None when the pod is
            // killed at once (grace 0).
            let pre_stop = self.pre_stop_sleep(sidecars);
            if !pre_stop.is_zero() && grace > 0 {
                tracing::info!(pod = %self.name, seconds = pre_stop.as_secs(), "preStop sleep");
                tokio::time::sleep_until((tokio::time::Instant::now() + pre_stop).min(deadline))
                    .await;
                deadline = deadline.max(tokio::time::Instant::now() + MIN_GRACE_AFTER_HOOK);
            }
            for &pid in &targets {
                launch::signal_group(pid, Signal::TERM);
            }
            while self
                .containers
                .iter()
                .any(|c| c.sidecar == sidecars && c.pid.is_some())
            {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {
                        for c in self.containers.iter().filter(|c| c.sidecar == sidecars) {
                            if let Some(pid) = c.pid { launch::signal_group(pid, Signal::KILL); }
                        }
                        // The exits of killed processes follow at once.
                        let mut left = self.containers.iter().filter(|c| c.sidecar == sidecars && c.pid.is_some()).count();
                        while left > 0 {
                            match tokio::time::timeout(Duration::from_secs(10), exits.recv()).await {
                                Ok(Some((n, g, code))) => { if self.exited(&n, g, code).is_some() { left -= 1; } }
                                _ => break,
                            }
                        }
                        break;
                    }
                    Some((n, g, code)) = exits.recv() => { self.exited(&n, g, code); }
                }
            }
        }
        if let Some(p) = self.final_phase.take() {
            self.phase = p;
        } else if self.phase == "Running" || self.phase == "Pending" {
            let failed = self
                .containers
                .iter()
                .filter(|c| !c.init)
                .any(|c| c.state["terminated"]["exitCode"].as_i64() != Some(0));
            self.phase = if failed { "Failed" } else { "Succeeded" };
        }
        self.publish();
    }

    /// The longest `lifecycle.preStop.sleep` of the running main containers (or sidecars).
    /// Other `preStop` handlers (`exec`, `httpGet`) are not run by the bed.
    fn pre_stop_sleep(&self, sidecars: bool) -> Duration {
        self.containers
            .iter()
            .filter(|c| c.sidecar == sidecars && c.pid.is_some())
            .filter_map(|c| {
                let spec = self.container_spec_named(&c.name)?;
                let secs = spec.lifecycle?.pre_stop?.sleep?.seconds;
                Some(Duration::from_secs(u64::try_from(secs).ok()?))
            })
            .max()
            .unwrap_or_default()
    }

    /// Removes the pod's network namespace: its address stops answering.
    async fn teardown(&mut self) {
        self.ctx.hosts.remove(&self.uid);
        let own = self
            .netns
            .as_ref()
            .filter(|n| n.name != self.ctx.netns.name)
            .cloned();
        if let Some(n) = own {
            let fabric = Arc::clone(&self.ctx.fabric);
            let _ = tokio::task::spawn_blocking(move || fabric.remove(&n)).await;
        }
    }
}

/// Waits `d`; true when the pod was deleted meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<Option<i64>>, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => stop.borrow().is_some(),
        r = stop.changed() => r.is_err() || stop.borrow().is_some(),
    }
}
