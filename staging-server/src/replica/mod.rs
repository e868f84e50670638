//! Several replicas on one object store (`--replicated`): the shared state is a log of changes
//! in the store, and each replica's SQLite database is a cache of it that the replica rebuilds
//! at start.
//!
//! - **Writes**: a change (a commit, a deletion, a download's first access, ...) is an
//!   [`Entry`] appended at the next free position of the log with a conditional create; a
//!   replica that finds the position taken applies the entries it missed and tries the next.
//!   The log's order is the order in which every replica applies the changes, so quotas and
//!   the capacity hold exactly across replicas: the check runs where the entry lands, against
//!   every change before it.
//! - **Reads** are local. A replica applies the entries of the others every
//!   `--replica-sync-interval`, and at once when a request names a resource or token it does
//!   not know: an upload committed on one replica is downloadable from every other at once,
//!   and a deletion on one is refused by the others within that interval (plus a store round
//!   trip).
//! - **Start**: the database is replaced by the newest snapshot (`state/snapshots/`), then the
//!   log after it is applied. Nothing of an earlier run is trusted but this replica's own rows
//!   (its queue of object deletions and its instance id).
//! - **Work that must happen once** (expiry sweeps, the owner watch's deletions, the orphan
//!   sweep, snapshots and trimming the log) runs on the holder of the leader lease
//!   ([`lease`]).
//! - **Trimming** frees positions a replica behind the log may still write to or read: the
//!   trim mark ([`trim`]) tells them apart from the log.
//!
//! A failure to apply an entry (the disk, the store) leaves the replica unsynchronised: it
//! rebuilds from the snapshot at its next synchronisation rather than go on from a state that
//! may be half-applied.

mod entry;
mod lease;
mod log;
mod metrics;
mod snapshot_file;
mod store;
mod trim;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

pub use entry::BadEntry;
pub(crate) use entry::{Entry, Outcome};
pub use store::StateStore;

use crate::db::{Db, DbError};
use crate::store_error::StoreError;
use entry::ApplyError;
use lease::Leadership;
use metrics::ReplicaMetrics;
use staging_api::ids::ResourceId;

/// A replica silent this long is forgotten (its heartbeat deleted), in milliseconds.
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;
/// Shortest time between two readings of the log for requests naming what this replica does
/// not know.
const MIN_REFRESH_GAP: std::time::Duration = std::time::Duration::from_millis(100);
/// Entries read per listing of the log.
const READ_BATCH: usize = 1000;
/// Positions a write tries before it gives up (each lost to another replica's write).
const MAX_ATTEMPTS: usize = 64;
/// Scratch files in the data directory: a snapshot being written, a snapshot downloaded, an
/// empty database to restore from.
const SNAPSHOT_SCRATCH: &str = "replica-snapshot.db";
const RESTORE_SCRATCH: &str = "replica-restore.db";
const EMPTY_SCRATCH: &str = "replica-empty.db";
/// How long a replica whose rebuild failed waits before it tries again.
const REBUILD_BACKOFF: Duration = Duration::from_secs(5);
/// Part size of a snapshot's upload and piece size of its download: its memory is a few
/// parts, whatever the database's size.
const SNAPSHOT_PART: usize = crate::multipart::REMOTE_PART_SIZE;
/// Listings of the snapshots a rebuild tries when the newest one listed is deleted before
/// it is read (the leader deletes a snapshot once two newer ones are written).
const SNAPSHOT_LISTINGS: usize = 3;
/// Log entries trimmed per round.
const TRIM_BATCH: usize = 10_000;
/// Snapshots kept: the newest, and the one before it (the log after it stays, so that a
/// replica a little behind applies entries instead of downloading the database).
const SNAPSHOTS_KEPT: usize = 2;

/// How the replicas share the state.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// How often a replica applies the others' entries (the bound on a deletion's delay).
    pub sync_interval: Duration,
    /// The leader lease's duration (failover takes up to this long).
    pub lease: Duration,
    /// A snapshot is written after this many entries.
    pub snapshot_every: u64,
    /// Where snapshots are written and read (the data directory).
    pub scratch: PathBuf,
}

/// Why a shared change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The local database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The store failed (the log cannot be read or written).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log holds an entry no replica writes.
    #[error(transparent)]
    Bad(#[from] BadEntry),
    /// The replica could not load the shared state a moment ago, and waits this long before it
    /// tries again.
    #[error("the shared state could not be loaded a moment ago; retry in {0:?}")]
    Unsynchronised(Duration),
    /// Every position tried was taken by other replicas' writes.
    #[error("the shared log is too busy: {0} positions tried")]
    Contended(usize),
    /// The change may or may not have been made: the log was trimmed past the position its
    /// entry was written at, while it was written. It is not written again (see [`log`]).
    #[error("the shared log was trimmed while the change was written; it may have been made")]
    Undecided,
    /// The trim mark holds what no replica writes.
    #[error("unreadable trim mark {0:?}")]
    BadMark(String),
    /// The replica's metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A snapshot file in the data directory could not be written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<ApplyError> for WriteError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Bad(b) => Self::Bad(b),
            ApplyError::Db(d) => Self::Db(d),
        }
    }
}

/// This replica's part in the shared state.
#[derive(Debug)]
pub struct Replica {
    store: StateStore,
    db: Db,
    me: String,
    settings: ReplicaSettings,
    /// Held while the log is read, written or applied: one replica applies in order.
    log: tokio::sync::Mutex<()>,
    /// The database may be half-applied: rebuild before the next entry.
    broken: AtomicBool,
    /// The database was replaced by a snapshot and the log after it is not applied yet: it
    /// may hold what was deleted or revoked since, so downloads wait (see [`Self::view`]).
    rewound: AtomicBool,
    /// Restores of the database so far.
    restores: std::sync::atomic::AtomicU64,
    /// The newest snapshot position this replica knows of (a snapshot is looked for once the
    /// log is `--snapshot-every` entries beyond it).
    snapshot_seen: std::sync::atomic::AtomicU64,
    /// When the last rebuild (or an entry's application) failed: the next rebuild waits
    /// [`REBUILD_BACKOFF`] (a broken replica does not download the snapshot again for every
    /// request that needs the log).
    rebuild_failed: std::sync::Mutex<Option<std::time::Instant>>,
    /// Resources whose access stamp is being written.
    stamps: std::sync::Mutex<std::collections::HashSet<ResourceId>>,
    /// When the last complete reading of the log started.
    last_read: std::sync::Mutex<Option<std::time::Instant>>,
    leadership: Leadership,
    metrics: ReplicaMetrics,
}

impl Replica {
    /// Rebuilds the database from the store and applies the log.
    ///
    /// # Errors
    /// Store, database and log errors: the server does not start on a state it cannot read.
    pub async fn start(
        store: StateStore,
        db: Db,
        me: String,
        settings: ReplicaSettings,
        registry: &Registry,
    ) -> Result<Arc<Self>, WriteError> {
        // Scratch files of a run that was killed mid-snapshot or mid-rebuild.
        for name in [SNAPSHOT_SCRATCH, RESTORE_SCRATCH, EMPTY_SCRATCH] {
            let _ = std::fs::remove_file(settings.scratch.join(name));
        }
        let replica = Arc::new(Self {
            store,
            db,
            leadership: Leadership::new(me.clone(), settings.lease),
            me,
            settings,
            log: tokio::sync::Mutex::new(()),
            broken: AtomicBool::new(true),
            rewound: AtomicBool::new(false),
            restores: std::sync::atomic::AtomicU64::new(0),
            last_read: std::sync::Mutex::new(None),
            stamps: std::sync::Mutex::new(std::collections::HashSet::new()),
            snapshot_seen: std::sync::atomic::AtomicU64::new(0),
            rebuild_failed: std::sync::Mutex::new(None),
            metrics: ReplicaMetrics::new(registry)?,
        });
        let seq = replica.sync().await?;
        tracing::info!(replica = %replica.me, position = seq, "replicated state loaded");
        Ok(replica)
    }

    /// This replica's id (its instance id).
    pub fn id(&self) -> &str {
        &self.me
    }

    /// Whether this replica holds the leader lease.
    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    /// What a download may rely on: `None` while the database is a snapshot whose later
    /// entries are not applied yet (a rebuild after a failure, or behind the trimmed log),
    /// which may still grant a token revoked since; else the number of restores so far. A
    /// download authorised between two equal views was authorised against the log's state.
    pub fn view(&self) -> Option<u64> {
        let restores = self.restores.load(Ordering::Acquire);
        (!self.rewound.load(Ordering::Acquire)).then_some(restores)
    }

    /// Applies every entry the log holds beyond this replica's position; returns the position.
    ///
    /// # Errors
    /// Store, database and log errors (the replica then rebuilds at its next call).
    pub async fn sync(&self) -> Result<u64, WriteError> {
        let _held = self.log.lock().await;
        self.catch_up().await
    }

    /// As [`Self::sync`] for a request that names something this replica does not know: many
    /// such requests at once cost one reading of the log, since a reading that started after
    /// the request serves it.
    ///
    /// # Errors
    /// As [`Self::sync`].
    pub async fn refresh(&self) -> Result<u64, WriteError> {
        let asked = std::time::Instant::now();
        let served = |last: Option<std::time::Instant>| last.is_some_and(|l| l >= asked);
        let last = *self.last_read.lock().unwrap_or_else(|p| p.into_inner());
        // Readings for such requests start at most every MIN_REFRESH_GAP: a request waits for
        // the next one (which starts after it, so it sees every commit acknowledged before it).
        if let Some(l) = last
            && !served(last)
        {
            tokio::time::sleep_until((l + MIN_REFRESH_GAP).into()).await;
        }
        let _held = self.log.lock().await;
        let last = *self.last_read.lock().unwrap_or_else(|p| p.into_inner());
        if served(last) && !self.broken.load(Ordering::Acquire) {
            return Ok(self.db.applied_seq().await?);
        }
        self.catch_up().await
    }

    /// Marks the database as possibly half-applied after a failure to apply an entry: the next
    /// synchronisation rebuilds it, after [`REBUILD_BACKOFF`] (the failure's cause, a full
    /// disk say, is likely to last a moment).
    fn unsynchronised(&self) {
        self.broken.store(true, Ordering::Release);
        self.note_rebuild(false);
    }

    /// Records whether the last rebuild (or an entry's application) succeeded.
    fn note_rebuild(&self, ok: bool) {
        *self
            .rebuild_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (!ok).then(std::time::Instant::now);
    }

    /// Replaces the database with the newest snapshot (or an empty one when there is none);
    /// refused for [`REBUILD_BACKOFF`] after a rebuild or an entry's application failed.
    async fn rebuild(&self) -> Result<(), WriteError> {
        let failed_at = *self
            .rebuild_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(left) = failed_at.and_then(|t| REBUILD_BACKOFF.checked_sub(t.elapsed()))
            && !left.is_zero()
        {
            return Err(WriteError::Unsynchronised(left));
        }
        let result = self.rebuild_now().await;
        self.note_rebuild(result.is_ok());
        result
    }

    async fn rebuild_now(&self) -> Result<(), WriteError> {
        let scratch = self.settings.scratch.join(RESTORE_SCRATCH);
        let empty = self.settings.scratch.join(EMPTY_SCRATCH);
        // The newest snapshot; one deleted since the listing has newer ones: listed again.
        // None at all: an empty start replays what the log holds.
        let mut downloaded = false;
        let mut listed = false;
        for _ in 0..SNAPSHOT_LISTINGS {
            let Some(seq) = self.store.snapshots().await?.into_iter().max() else {
                break;
            };
            listed = true;
            if snapshot_file::download(&self.store, seq, &scratch, SNAPSHOT_PART).await? {
                downloaded = true;
                break;
            }
        }
        if listed && !downloaded {
            tracing::warn!("every snapshot listed was deleted before it could be read");
            return Err(WriteError::Unsynchronised(REBUILD_BACKOFF));
        }
        // From here the database may be half-restored, then rewound to the snapshot.
        self.broken.store(true, Ordering::Release);
        self.rewound.store(true, Ordering::Release);
        self.restores.fetch_add(1, Ordering::AcqRel);
        let seq = if downloaded {
            let at = self.db.restore(Some(&scratch), &empty).await;
            let _ = std::fs::remove_file(&scratch);
            at?
        } else {
            self.db.restore(None, &empty).await?
        };
        let _ = std::fs::remove_file(&empty);
        self.broken.store(false, Ordering::Release);
        self.metrics.rebuilds.inc();
        tracing::info!(position = seq, "database rebuilt from the shared state");
        Ok(())
    }

    /// Runs until `cancel`: applies the others' entries every sync interval and, as leader,
    /// snapshots and trims the log in a task of its own; holds or seeks the leader lease and
    /// writes the heartbeat in another (a long snapshot or a busy log never delays a renewal).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let lease = tokio::spawn(Arc::clone(&self).hold_lease(cancel.clone()));
        let mut sync = tokio::time::interval(self.settings.sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let snapshotting = Arc::new(AtomicBool::new(false));
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = sync.tick() => match self.sync().await {
                    Ok(at) => {
                        let seen = self.snapshot_seen.load(Ordering::Acquire);
                        if self.is_leader()
                            && at >= seen + self.settings.snapshot_every
                            && !snapshotting.swap(true, Ordering::AcqRel)
                        {
                            let (me, flag) = (Arc::clone(&self), Arc::clone(&snapshotting));
                            tokio::spawn(async move {
                                if let Err(e) = me.snapshot_if_due(at).await {
                                    tracing::warn!(cause = %e, "could not write a snapshot of the shared state");
                                }
                                flag.store(false, Ordering::Release);
                            });
                        }
                    }
                    Err(e) => {
                        self.metrics.sync_errors.inc();
                        tracing::warn!(cause = %e, "could not apply the shared log; retrying");
                    }
                },
            }
        }
        let _ = lease.await;
    }

    /// Renews or seeks the lease and writes the heartbeat every third of a lease until
    /// `cancel`.
    async fn hold_lease(self: Arc<Self>, cancel: CancellationToken) {
        use crate::clock::Clock as _;
        let mut tick = tokio::time::interval(self.settings.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = crate::clock::SystemClock.now_ms();
            let beat = serde_json::json!({"replica": self.me, "at_ms": now}).to_string();
            if let Err(e) = self.store.beat(&self.me, beat.into()).await {
                tracing::warn!(cause = %e, "could not write the heartbeat");
            }
            match self.leadership.round(&self.store, now).await {
                Ok(lead) => self.metrics.leader.set(i64::from(lead)),
                Err(e) => {
                    self.metrics.leader.set(i64::from(self.is_leader()));
                    tracing::warn!(cause = %e, "could not read or renew the leader lease");
                }
            }
        }
    }

    /// Writes a snapshot when the newest stored one (whoever wrote it: leadership moves) is
    /// `--snapshot-every` entries or more behind position `at`.
    async fn snapshot_if_due(&self, at: u64) -> Result<(), WriteError> {
        let newest = self.store.snapshots().await?.into_iter().max().unwrap_or(0);
        self.snapshot_seen.fetch_max(newest, Ordering::AcqRel);
        if at >= newest + self.settings.snapshot_every {
            let seq = self.snapshot().await?;
            self.snapshot_seen.fetch_max(seq, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Writes a snapshot of the database and trims what it makes unneeded: older snapshots
    /// beyond [`SNAPSHOTS_KEPT`], and the log up to the oldest snapshot kept. Returns its
    /// position.
    ///
    /// # Errors
    /// Store and database errors.
    pub async fn snapshot(&self) -> Result<u64, WriteError> {
        let path = self.settings.scratch.join(SNAPSHOT_SCRATCH);
        let _ = std::fs::remove_file(&path);
        let seq = {
            let _held = self.log.lock().await;
            self.db.snapshot_into(&path).await?
        };
        let sent = snapshot_file::upload(&self.store, seq, &path, SNAPSHOT_PART).await;
        let _ = std::fs::remove_file(&path);
        sent?;
        let mut all = self.store.snapshots().await?;
        all.sort_unstable();
        let drop_n = all.len().saturating_sub(SNAPSHOTS_KEPT);
        for old in &all[..drop_n] {
            self.store.delete_snapshot(*old).await?;
        }
        // Only with a newer snapshot kept too: the log then keeps at least `snapshot_every`
        // entries before the head. The trim mark first: whatever is deleted lies at or below
        // it (see `trim`).
        if all.len() >= SNAPSHOTS_KEPT
            && let Some(oldest_kept) = all.get(drop_n)
        {
            trim::raise(&self.store, *oldest_kept).await?;
            let trimmed = self.store.trim_log(*oldest_kept, TRIM_BATCH).await?;
            tracing::info!(
                position = seq,
                trimmed,
                "snapshot of the shared state written"
            );
        }
        self.metrics.snapshots.inc();
        Ok(seq)
    }

    /// Records that this replica receives the upload `id` (its bytes are no orphan while this
    /// replica lives).
    ///
    /// # Errors
    /// Store errors.
    pub async fn mark_pending(&self, id: ResourceId) -> Result<(), StoreError> {
        self.store.mark_pending(&id.to_string(), &self.me).await
    }

    /// Claims the access stamp of `id` for this replica until [`Self::stamped`]: false when
    /// one is being written already (a thousand downloads at once write one).
    pub(crate) fn stamping(&self, id: ResourceId) -> bool {
        self.stamps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    }

    /// Releases the claim of [`Self::stamping`].
    pub(crate) fn stamped(&self, id: ResourceId) {
        self.stamps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Removes the marks this replica left in an earlier run (at start: none of those uploads
    /// is in progress).
    pub async fn forget_own_uploads(&self) {
        match self.store.pending().await {
            Ok(marks) => {
                for (resource, origin) in marks {
                    if origin == self.me {
                        let _ = self.store.unmark_pending(&resource).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(cause = %e, "could not list the marks of uploads in progress; the leader removes them")
            }
        }
    }

    /// Removes the mark of an upload that ended.
    pub async fn unmark_pending(&self, id: ResourceId) {
        if let Err(e) = self.store.unmark_pending(&id.to_string()).await {
            tracing::debug!(resource = %id, cause = %e, "could not unmark an upload; the leader removes the mark");
        }
    }

    /// The uploads in progress on replicas that live (their heartbeat is younger than three
    /// lease durations); marks of replicas gone are removed.
    ///
    /// # Errors
    /// Store errors.
    pub async fn live_uploads(&self, now_ms: i64) -> Result<Vec<ResourceId>, StoreError> {
        let horizon = now_ms.saturating_sub(
            i64::try_from(self.settings.lease.as_millis())
                .unwrap_or(i64::MAX)
                .saturating_mul(3),
        );
        let mut live = std::collections::HashSet::new();
        for (id, at) in self.store.heartbeats().await? {
            if at >= horizon {
                live.insert(id);
            } else if at < now_ms.saturating_sub(FORGET_AFTER_MS) {
                self.store.forget_replica(&id).await?;
            }
        }
        let mut out = Vec::new();
        for (resource, origin) in self.store.pending().await? {
            if live.contains(&origin) {
                if let Ok(id) = resource.parse() {
                    out.push(id);
                }
            } else {
                self.store.unmark_pending(&resource).await?;
            }
        }
        Ok(out)
    }
}
