//! Starting one container: a process in the pod's network namespace and a mount namespace of
//! its own, in which the image's files and the pod's volumes are bind-mounted at their paths
//! over the host's root filesystem (which stands in for the image's), `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname` are the pod's, the root filesystem is read-only when
//! the container asks for it, and the command runs as the container's user and groups.
//!
//! A mount path whose parent does not exist gets an overlay (upper layer in the pod's scratch
//! directory) over its deepest existing ancestor, so nothing is created on the host; only a
//! missing top-level directory (`/data`) is created on the host's root, empty.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// One bind mount.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything a container's process needs.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Network namespace (`ip netns` name).
    pub netns: String,
    /// Host name inside.
    pub hostname: String,
    /// Image files, then volumes (mounted in this order after sorting by depth).
    pub mounts: Vec<Mount>,
    /// Working directory.
    pub workdir: Option<String>,
    /// uid and gid; `None` keeps root.
    pub user: Option<(u32, u32)>,
    /// Supplementary groups (`fsGroup`, `supplementalGroups`).
    pub groups: Vec<u32>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
    /// `readOnlyRootFilesystem: true`.
    pub read_only_root: bool,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// The environment.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
    /// A directory for the overlays' upper layers and the launcher script.
    pub scratch: PathBuf,
}

/// Single-quotes for `sh`.
#[must_use]
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The launcher script.
///
/// Mount points are made group by group: the targets directly on the host's tree first, then,
/// once each is mounted, the targets inside it. Within a group every missing mount point is
/// created (through an overlay over its deepest existing ancestor, unless that ancestor is
/// already inside an overlay) before any of the group is mounted, so that no overlay ever hides
/// a mount made before it.
#[must_use]
pub fn script(l: &Launch) -> String {
    let mut s = String::from(
        r#"set -eu
ovl_n=0
mounts=""
inner_kind() { # the kind (ovl/bind/none) of the innermost mount containing $1
  best=""; kind=none
  for m in $mounts; do
    k=${m%%:*}; d=${m#*:}
    case "$1/" in "$d/"*) if [ ${#d} -ge ${#best} ]; then best=$d; kind=$k; fi ;; esac
  done
  echo $kind
}
prepare() {
  t="$1"; what="$2"
  [ -e "$t" ] && return 0
  p=$(/usr/bin/dirname "$t")
  while [ ! -e "$p" ]; do p=$(/usr/bin/dirname "$p"); done
  if [ "$p" != "/" ] && [ "$(inner_kind "$p")" != ovl ]; then
    ovl_n=$((ovl_n+1))
    /usr/bin/mkdir -p "$SCRATCH/ovl/$ovl_n/u" "$SCRATCH/ovl/$ovl_n/w"
    /usr/bin/mount -t overlay overlay -o "lowerdir=$p,upperdir=$SCRATCH/ovl/$ovl_n/u,workdir=$SCRATCH/ovl/$ovl_n/w" "$p"
    mounts="$mounts ovl:$p"
  fi
  case "$what" in
    file) /usr/bin/mkdir -p "$(/usr/bin/dirname "$t")"; : > "$t" ;;
    workdir) /usr/bin/mkdir -p "$t"; /usr/bin/chmod 1777 "$t" ;;
    *) /usr/bin/mkdir -p "$t" ;;
  esac
}
bind() {
  /usr/bin/mount --bind "$1" "$2"
  if [ "$3" = ro ]; then /usr/bin/mount -o remount,bind,ro "$2"; fi
  mounts="$mounts bind:$2"
}
/usr/bin/mount --make-rprivate /
"#,
    );
    let _ = writeln!(s, "SCRATCH={}", quote(&l.scratch.to_string_lossy()));
    // Targets (the working directory is one with nothing to mount), grouped by the innermost
    // other target that contains them.
    let mut targets: Vec<(String, Option<&Mount>)> = l
        .mounts
        .iter()
        .map(|m| (m.target.clone(), Some(m)))
        .collect();
    if let Some(w) = &l.workdir {
        targets.push((w.clone(), None));
    }
    let inside = |t: &str, outer: &str| {
        t != outer && t.starts_with(&format!("{}/", outer.trim_end_matches('/')))
    };
    let parent_of = |t: &str| -> Option<String> {
        targets
            .iter()
            .filter(|(o, m)| m.is_some() && inside(t, o))
            .map(|(o, _)| o.clone())
            .max_by_key(String::len)
    };
    let mut level: Vec<Option<String>> = vec![None];
    while !level.is_empty() {
        let mut next = Vec::new();
        for outer in &level {
            let group: Vec<&(String, Option<&Mount>)> = targets
                .iter()
                .filter(|(t, _)| parent_of(t) == *outer)
                .collect();
            for (t, m) in &group {
                let what = match m {
                    None => "workdir",
                    Some(m) if m.source.is_dir() => "dir",
                    Some(_) => "file",
                };
                let _ = writeln!(s, "prepare {} {what}", quote(t));
            }
            for (t, m) in &group {
                if let Some(m) = m {
                    let _ = writeln!(
                        s,
                        "bind {} {} {}",
                        quote(&m.source.to_string_lossy()),
                        quote(t),
                        if m.read_only { "ro" } else { "rw" }
                    );
                    next.push(Some(t.clone()));
                }
            }
        }
        level = next;
    }
    if l.read_only_root {
        s.push_str("/usr/bin/mount -o remount,bind,ro /\n");
        s.push_str("for m in $mounts; do case $m in ovl:*) /usr/bin/mount -o remount,ro \"${m#ovl:}\" ;; esac; done\n");
    }
    let _ = writeln!(s, "/usr/bin/hostname {}", quote(&l.hostname));
    if let Some(w) = &l.workdir {
        let _ = writeln!(s, "cd {}", quote(w));
    }
    s.push_str("unset SCRATCH ovl_n mounts t what p best kind k d\nexec ");
    if let Some((uid, gid)) = l.user {
        let _ = write!(s, "/usr/bin/setpriv --reuid={uid} --regid={gid} ");
        if l.groups.is_empty() {
            s.push_str("--clear-groups ");
        } else {
            let g: Vec<String> = l.groups.iter().map(u32::to_string).collect();
            let _ = write!(s, "--groups={} ", g.join(","));
        }
        if l.no_new_privs {
            s.push_str("--no-new-privs ");
        }
        s.push_str("-- ");
    }
    let argv: Vec<String> = l.argv.iter().map(|a| quote(a)).collect();
    s.push_str(&argv.join(" "));
    s.push('\n');
    s
}

/// Starts the container's process (its own process group, so that signals reach its children).
///
/// # Errors
/// The script or log cannot be written, or `ip` cannot be started.
pub fn spawn(l: &Launch, name: &str) -> std::io::Result<tokio::process::Child> {
    std::fs::create_dir_all(&l.scratch)?;
    let path = l.scratch.join(format!("{name}.sh"));
    std::fs::write(&path, script(l))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)?;
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &l.netns,
        "/usr/bin/unshare",
        "--uts",
        "--mount",
        "--",
    ])
    .arg("/bin/sh")
    .arg(&path)
    .env_clear()
    .envs(l.env.iter().map(|(k, v)| (k, v)))
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log)
    .process_group(0)
    .kill_on_drop(false);
    cmd.spawn()
}

/// Sends `signal` to a process group.
pub fn signal_group(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Whether `path` is absolute and normal (no `..`).
#[must_use]
pub fn clean_path(path: &str) -> bool {
    Path::new(path).is_absolute() && !path.split('/').any(|c| c == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn script_mounts_shallow_first_and_drops_privileges() {
        let l = Launch {
            hostname: "p".into(),
            mounts: vec![
                Mount {
                    source: "/h/conf".into(),
                    target: "/opt/spark/conf".into(),
                    read_only: true,
                },
                Mount {
                    source: "/h/spark".into(),
                    target: "/opt/spark".into(),
                    read_only: false,
                },
            ],
            user: Some((185, 185)),
            groups: vec![1000],
            no_new_privs: true,
            read_only_root: true,
            argv: vec!["java".into(), "-version".into()],
            scratch: "/s".into(),
            ..Launch::default()
        };
        let s = script(&l);
        let spark = s.find("bind '/h/spark' '/opt/spark' rw").unwrap();
        let conf = s.find("bind '/h/conf' '/opt/spark/conf' ro").unwrap();
        assert!(spark < conf);
        assert!(s.contains(
            "setpriv --reuid=185 --regid=185 --groups=1000 --no-new-privs -- 'java' '-version'"
        ));
        assert!(s.contains("remount,bind,ro /\n"));
    }
}
