//! Pod networking: a Linux bridge in the root namespace, each node in a network namespace of
//! its own with its own address, each pod (unless `hostNetwork`) in a namespace of its own with
//! an address from its node's range, all on one layer-2 segment, as a flat pod network. A
//! deleted pod's namespace and link are removed, so its address stops answering.
//!
//! Every name starts with the bed's prefix (`kb` + 4 hex), so that several beds can run at once
//! and [`Fabric::sweep`] can remove what a killed bed left behind. Needs root and `ip`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context as _, bail};

/// One network namespace with one address.
#[derive(Debug, Clone)]
pub struct Netns {
    /// Its name (`ip netns` name).
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The root-side end of its veth pair.
    link: String,
}

/// The bed's network.
#[derive(Debug)]
pub struct Fabric {
    prefix: String,
    bridge: String,
    /// Second octet of `10.X.0.0/16`.
    octet: u8,
    /// The bridge's (the submitter side's) address.
    pub gateway: Ipv4Addr,
    next: Mutex<Vec<u8>>,
    pods: Mutex<u32>,
    /// The root-side link of every pod namespace, with its node's index.
    pod_links: Mutex<Vec<(u8, String)>>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Fabric {
    /// Whether this machine can host a bed: root, and `ip netns` works. The error says why not.
    ///
    /// # Errors
    /// Not root, or no `ip`, or network namespaces refused.
    pub fn available() -> anyhow::Result<()> {
        let uid = rustix::process::getuid();
        if !uid.is_root() {
            bail!(
                "network namespaces need root (running as uid {})",
                uid.as_raw()
            );
        }
        let probe = format!("kbprobe{:04x}", rand_u16());
        ip(&["netns", "add", &probe]).context("creating a network namespace")?;
        ip(&["netns", "del", &probe])?;
        Ok(())
    }

    /// Creates the bridge of a new bed, on a `10.X.0.0/16` not routed on this machine.
    ///
    /// # Errors
    /// `ip` failures.
    pub fn create() -> anyhow::Result<Self> {
        let id: u16 = rand_u16();
        let prefix = format!("kb{id:04x}");
        let _ = std::fs::create_dir_all(MARKERS);
        // Beds of other processes (tests run side by side) choose their subnet too: the choice
        // and the address that claims it are made under one lock across processes.
        let _claim = ClaimLock::take();
        let routes = ip_out(&["-4", "route", "show"]);
        let octet = (0..100u16)
            .map(|i| u8::try_from(100 + (id.wrapping_add(i) % 100)).unwrap_or(100))
            .find(|o| !routes.contains(&format!("10.{o}.")))
            .context("no free 10.X.0.0/16 for the bed")?;
        sweep_stale();
        let _ = std::fs::write(
            format!("{MARKERS}/{prefix}"),
            std::process::id().to_string(),
        );
        let bridge = format!("{prefix}br");
        let gateway = Ipv4Addr::new(10, octet, 0, 1);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let fabric = Self {
            prefix,
            bridge: bridge.clone(),
            octet,
            gateway,
            next: Mutex::new(Vec::new()),
            pods: Mutex::new(0),
            pod_links: Mutex::new(Vec::new()),
        };
        ip(&["addr", "add", &format!("{gateway}/16"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(fabric)
    }

    /// The namespace prefix of this bed.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn attach(&self, ns: &str, link: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        ip(&["netns", "add", ns])?;
        ip(&[
            "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["link", "set", link, "master", &self.bridge, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &self.gateway.to_string(),
        ])?;
        Ok(())
    }

    /// Creates node `index`'s namespace, address `10.X.<index+1>.1`.
    ///
    /// # Errors
    /// `ip` failures, or more than 250 nodes.
    pub fn node(&self, index: u8) -> anyhow::Result<Netns> {
        if index >= 250 {
            bail!("at most 250 nodes");
        }
        let name = format!("{}-n{index}", self.prefix);
        let link = format!("{}n{index}", self.prefix);
        let addr = Ipv4Addr::new(10, self.octet, index + 1, 1);
        self.attach(&name, &link, addr)?;
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if next.len() <= usize::from(index) {
            next.resize(usize::from(index) + 1, 2);
        }
        Ok(Netns {
            name,
            ip: addr,
            link,
        })
    }

    /// Creates a pod's namespace with the next address of node `index`'s range (addresses are
    /// not reused within a bed, so a stale address never reaches a new pod).
    ///
    /// # Errors
    /// `ip` failures, or a node's range used up (253 pods).
    pub fn pod(&self, node: u8) -> anyhow::Result<Netns> {
        let host = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let slot = next.get_mut(usize::from(node)).context("unknown node")?;
            if *slot == 255 {
                bail!("node {node}'s pod addresses are used up");
            }
            let h = *slot;
            *slot += 1;
            h
        };
        let n = {
            let mut pods = self
                .pods
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *pods += 1;
            *pods
        };
        let name = format!("{}-p{n}", self.prefix);
        let link = format!("{}p{n}", self.prefix);
        let addr = Ipv4Addr::new(10, self.octet, node + 1, host);
        self.attach(&name, &link, addr)?;
        self.pod_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((node, link.clone()));
        Ok(Netns {
            name,
            ip: addr,
            link,
        })
    }

    /// Takes the links of node `index` (namespace `node`) and of every pod namespace on it
    /// down (`up: false`: their addresses stop answering and packets to them are dropped, as
    /// a stopped machine's are, with no reset for a peer's connection) or up again.
    ///
    /// # Errors
    /// `ip` failures (every link is tried).
    pub fn set_node_links(&self, index: u8, node: &Netns, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        let pods: Vec<String> = self
            .pod_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(n, _)| *n == index)
            .map(|(_, l)| l.clone())
            .collect();
        let mut first_error = ip(&["link", "set", &node.link, state]).err();
        for link in pods {
            // A pod removed meanwhile took its link with it.
            if let Err(e) = ip(&["link", "set", &link, state])
                && first_error.is_none()
                && ip_out(&["link", "show", &link]).contains(&link)
            {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes a pod's namespace and link.
    pub fn remove(&self, ns: &Netns) {
        self.pod_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(_, l)| *l != ns.link);
        let _ = ip(&["link", "del", &ns.link]);
        let _ = ip(&["netns", "del", &ns.name]);
    }

    /// Removes every namespace and link whose name starts with `prefix` (`kb` sweeps every
    /// bed's leftovers).
    pub fn sweep(prefix: &str) {
        for line in ip_out(&["netns", "list"]).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(prefix) && name.len() > 2 {
                // Processes left in it (a bed killed with its pods running) go first.
                for pid in ip_out(&["netns", "pids", name]).split_whitespace() {
                    if let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
                let _ = ip(&["netns", "del", name]);
            }
        }
        for line in ip_out(&["-o", "link", "show"]).lines() {
            let Some(name) = line.split(':').nth(1).map(str::trim) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or_default();
            if name.starts_with(prefix) && name.len() > 2 {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        Self::sweep(&self.prefix);
        let _ = std::fs::remove_file(format!("{MARKERS}/{}", self.prefix));
    }
}

/// One file per live bed (its prefix), holding the owning process id.
const MARKERS: &str = "/run/kubebed";

/// An exclusive lock on `/run/kubebed/.claim`, held while a bed chooses and claims its subnet;
/// released when dropped (or when its process dies). Without the file (no `/run`), beds of one
/// process still never collide, and those of two processes only as rarely as before.
struct ClaimLock {
    _file: Option<std::fs::File>,
}

impl ClaimLock {
    fn take() -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("{MARKERS}/.claim"))
            .ok();
        if let Some(f) = &file {
            let _ = rustix::fs::flock(f, rustix::fs::FlockOperation::LockExclusive);
        }
        Self { _file: file }
    }
}

/// Removes what beds whose process is gone (killed before they could clean up) left behind.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(MARKERS) else {
        return;
    };
    for e in entries.flatten() {
        let prefix = e.file_name().to_string_lossy().into_owned();
        let alive = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive && prefix.starts_with("kb") {
            Fabric::sweep(&prefix);
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn rand_u16() -> u16 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([b[0], b[1]])
}
