//! Application liveness and the health of the core's storage: the sweep that removes
//! applications whose driver stopped heartbeating, applications known only from executors that
//! stayed idle past the TTL, and applications whose directories the cluster manager already
//! deleted; the rescan of the volumes' usage with the removal of interrupted writes' leftovers;
//! and readiness (the database answers, every volume is reachable). `crate::lifecycle` runs
//! the sweep and the rescan on their timers.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Core, Volumes, writer};
use crate::error::ShuffleError;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Removed for lapsed liveness.
    pub lapsed: usize,
    /// Removed because their directories are gone.
    pub vanished: usize,
}

/// Why the core cannot serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// The registration database does not answer (its error says "database: ...").
    #[error(transparent)]
    Database(ShuffleError),
    /// A volume root is not reachable (unmounted, removed).
    #[error("volume {} unreachable", .0.display())]
    Volume(PathBuf),
}

impl Core {
    /// One sweep: removes applications whose liveness lapsed (heartbeat timeout for those a
    /// driver registered, the idle TTL for the others) and those whose directories are gone.
    /// Errors are logged; the next sweep tries again.
    pub async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let lapsed = self.inner.registry.lapsed(self.inner.idle_ttl);
        let driver_registered: HashSet<_> = self
            .list_apps()
            .into_iter()
            .filter(|a| a.heartbeat_timeout.is_some())
            .map(|a| a.app_id)
            .collect();
        for app in lapsed {
            let reason = if driver_registered.contains(&app) {
                "heartbeat_timeout"
            } else {
                "idle_ttl"
            };
            match self.remove_app(&app, reason).await {
                Ok(_) => report.lapsed += 1,
                Err(e) => {
                    tracing::warn!(app = %app, cause = %e, "could not remove a lapsed application")
                }
            }
        }
        for app in self.inner.registry.vanished().await {
            match self.remove_app(&app, "directories_gone").await {
                Ok(_) => report.vanished += 1,
                Err(e) => tracing::warn!(app = %app, cause = %e, "could not remove an application"),
            }
        }
        self.refresh_gauges();
        report
    }

    /// Rescans the bytes every volume holds (blocking work on the blocking pool) and removes
    /// the temporary files of interrupted writes.
    pub async fn rescan_usage(&self) {
        self.remove_leftovers().await;
        let vols = Arc::clone(&self.inner.volumes);
        let _ = tokio::task::spawn_blocking(move || {
            for v in vols.iter() {
                v.set_scanned(Volumes::scan_bytes(&v.root));
            }
        })
        .await;
        self.refresh_gauges();
    }

    /// Whether the core can serve: the database answers and every volume root is reachable.
    ///
    /// # Errors
    /// The first thing that fails.
    pub async fn ready(&self) -> Result<(), NotReady> {
        self.inner
            .registry
            .db()
            .ping()
            .await
            .map_err(NotReady::Database)?;
        if let Some(v) = self.inner.volumes.iter().find(|v| !v.root.is_dir()) {
            return Err(NotReady::Volume(v.root.clone()));
        }
        Ok(())
    }

    /// Removes the temporary files that writes interrupted by a crash left in executor
    /// directories (never those of a write in flight); returns how many. Run at start-up and
    /// with every usage rescan.
    pub async fn remove_leftovers(&self) -> usize {
        let dirs: Vec<(PathBuf, u32)> = self.inner.registry.all_dirs().into_iter().collect();
        let inner = Arc::clone(&self.inner);
        let removed = tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            for (dir, subs) in dirs {
                let Some(vol) = inner.volumes.containing(&dir) else {
                    continue;
                };
                for s in 0..subs {
                    let sub = dir.join(format!("{s:02x}"));
                    let Ok((fd, entries)) = vol.dir.list(&sub) else {
                        continue;
                    };
                    for (name, is_dir) in entries {
                        let path = sub.join(&name);
                        if !is_dir
                            && writer::is_temp_name(&name.to_string_lossy())
                            && !inner.in_flight.contains(&path)
                            && rustix::fs::unlinkat(&fd, &*name, rustix::fs::AtFlags::empty())
                                .is_ok()
                        {
                            tracing::info!(path = %path.display(), "removed an interrupted write's temporary file");
                            removed += 1;
                        }
                    }
                }
            }
            removed
        })
        .await
        .unwrap_or(0);
        if removed > 0 {
            self.inner.metrics.leftovers_removed.inc_by(removed as u64);
        }
        removed
    }
}
