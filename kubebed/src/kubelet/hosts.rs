//! Name resolution for pods without a DNS server: each pod's `/etc/hosts` lists its own name
//! and every Service's endpoints (`<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc`,
//! `<svc>.<ns>`, and `<svc>` within its namespace), rewritten in place whenever endpoints change;
//! `/etc/resolv.conf` points at a resolver that answers nothing at once, so unknown names fail
//! fast instead of timing out.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One Service's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Endpoint addresses.
    pub ips: Vec<Ipv4Addr>,
}

#[derive(Debug)]
struct PodEntry {
    etc: PathBuf,
    namespace: String,
    hostname: String,
    ip: Option<Ipv4Addr>,
}

/// Every pod's name-resolution files.
#[derive(Debug, Default)]
pub struct Hosts {
    inner: Mutex<(HashMap<String, PodEntry>, Vec<ServiceEntry>)>,
}

fn render(p: &PodEntry, services: &[ServiceEntry]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = p.ip {
        let _ = writeln!(s, "{ip}\t{}", p.hostname);
    }
    for svc in services {
        for ip in &svc.ips {
            let (n, ns) = (&svc.name, &svc.namespace);
            let _ = write!(s, "{ip}\t{n}.{ns}.svc.cluster.local {n}.{ns}.svc {n}.{ns}");
            if *ns == p.namespace {
                let _ = write!(s, " {n}");
            }
            s.push('\n');
        }
    }
    s
}

fn write_in_place(path: &Path, text: &str) {
    // Same inode: the file is bind-mounted into running containers.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
}

impl Hosts {
    /// Writes a new pod's files under `<pod_dir>/etc/`.
    pub fn add(
        &self,
        uid: &str,
        pod_dir: &Path,
        namespace: &str,
        hostname: &str,
        ip: Option<Ipv4Addr>,
    ) {
        let etc = pod_dir.join("etc");
        let _ = std::fs::create_dir_all(&etc);
        let entry = PodEntry {
            etc,
            namespace: namespace.to_string(),
            hostname: hostname.to_string(),
            ip,
        };
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        write_in_place(&entry.etc.join("hosts"), &render(&entry, &g.1));
        write_in_place(
            &entry.etc.join("resolv.conf"),
            &format!(
                "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.53\noptions ndots:5 timeout:1 attempts:1\n"
            ),
        );
        write_in_place(&entry.etc.join("hostname"), &format!("{hostname}\n"));
        g.0.insert(uid.to_string(), entry);
    }

    /// Forgets a pod.
    pub fn remove(&self, uid: &str) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .remove(uid);
    }

    /// Sets the Services' endpoints; rewrites every pod's `/etc/hosts` when they changed.
    pub fn set_services(&self, mut services: Vec<ServiceEntry>) {
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.1 == services {
            return;
        }
        g.1 = services;
        for p in g.0.values() {
            write_in_place(&p.etc.join("hosts"), &render(p, &g.1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_only_in_the_own_namespace() {
        let p = PodEntry {
            etc: PathBuf::new(),
            namespace: "a".into(),
            hostname: "h".into(),
            ip: Some(Ipv4Addr::new(10, 1, 1, 2)),
        };
        let s = render(
            &p,
            &[
                ServiceEntry {
                    namespace: "a".into(),
                    name: "x".into(),
                    ips: vec![Ipv4Addr::new(10, 1, 1, 3)],
                },
                ServiceEntry {
                    namespace: "b".into(),
                    name: "y".into(),
                    ips: vec![Ipv4Addr::new(10, 1, 1, 4)],
                },
            ],
        );
        assert!(s.contains("10.1.1.2\th\n"));
        assert!(s.contains("10.1.1.3\tx.a.svc.cluster.local x.a.svc x.a x\n"));
        assert!(s.contains("10.1.1.4\ty.b.svc.cluster.local y.b.svc y.b\n"));
    }
}
