//! Writing and reading the shared log: a change appended at the next free position, the
//! others' entries applied in order, and the trim mark ([`super::trim`]) read around each, so
//! that a replica behind the trimmed log neither writes into its past nor applies another
//! stale replica's entry as the log.
//!
//! An entry is written once. A write that cannot tell whether its entry is the log's (the log
//! was trimmed past its position while it wrote) answers [`WriteError::Undecided`] rather than
//! write it again: written twice, a change would apply twice, and a commit applied twice
//! answers as refused, which deletes the bytes a resource committed the first time.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::entry::{self, Entry, Outcome};
use super::{MAX_ATTEMPTS, READ_BATCH, REBUILD_BACKOFF, Replica, WriteError, store, trim};

/// Bytes of entries held at once between their reading and their application (one entry
/// may be a submission of a thousand long names, about 330 KB).
const BATCH_BYTES: usize = 8 << 20;

/// Entries read and not applied yet, in order: at most [`READ_BATCH`] of them, and
/// [`BATCH_BYTES`] plus the one that crosses it.
#[derive(Default)]
struct Batch {
    bodies: Vec<Bytes>,
    bytes: usize,
}

impl Batch {
    fn full(&self) -> bool {
        self.bodies.len() >= READ_BATCH || self.bytes >= BATCH_BYTES
    }

    fn len(&self) -> usize {
        self.bodies.len()
    }

    fn push(&mut self, body: Bytes) {
        self.bytes += body.len();
        self.bodies.push(body);
    }
}

/// Where [`Replica::follow`] left a write.
enum Followed {
    /// The position lost holds this write's own entry, in the log.
    Ours,
    /// The entries up to this position are applied: try the next.
    To(u64),
}

impl Replica {
    /// Makes a shared change and returns its outcome.
    ///
    /// # Errors
    /// Store, database and log errors; [`WriteError::Contended`] when the log stays busy;
    /// [`WriteError::Undecided`] when the change may or may not have been made.
    pub(crate) async fn write(&self, entry: Entry) -> Result<Outcome, WriteError> {
        let _held = self.log.lock().await;
        let body = entry.encode();
        let mut at = if self.broken.load(Ordering::Acquire) {
            self.catch_up().await?
        } else {
            self.db.applied_seq().await?
        };
        for _ in 0..MAX_ATTEMPTS {
            let seq = at + 1;
            // The mark before the create: at or below it, this replica is behind the trimmed
            // log, and reloads before it writes anything.
            if seq <= trim::mark(&self.store).await? {
                at = self.reload().await?;
                continue;
            }
            match self.store.append(seq, body.clone()).await {
                Ok(store::Written::Yes(_)) => {
                    // The mark after it: above it, the entry is the log's. At or below it,
                    // the log was trimmed past `seq` meanwhile, before or after the create.
                    if seq <= trim::mark(&self.store).await? {
                        return Err(self.undecided(seq).await);
                    }
                    self.count("written");
                    return self.apply(seq, entry, true).await;
                }
                Ok(store::Written::Lost) => match self.follow(at, &body).await? {
                    Followed::Ours => {
                        self.count("written");
                        return self.apply(seq, entry, true).await;
                    }
                    Followed::To(next) => {
                        self.count("lost");
                        at = next;
                    }
                },
                Err(e) => {
                    self.count("failed");
                    return Err(e.into());
                }
            }
        }
        Err(WriteError::Contended(MAX_ATTEMPTS))
    }

    /// A write whose entry at `seq` may lie in the trimmed past: it is taken back (a best
    /// effort: trimming deletes it too, and no replica applies it there), and the replica
    /// reloads at its next reading.
    async fn undecided(&self, seq: u64) -> WriteError {
        self.count("undecided");
        let _ = self.store.delete_entry(seq).await;
        self.broken.store(true, Ordering::Release);
        WriteError::Undecided
    }

    /// Loads the newest snapshot and the log after it; returns the position.
    async fn reload(&self) -> Result<u64, WriteError> {
        tracing::info!("behind the trimmed log; loading the newest snapshot");
        self.broken.store(true, Ordering::Release);
        self.catch_up().await
    }

    fn count(&self, outcome: &str) {
        self.metrics.appends.with_label_values(&[outcome]).inc();
    }

    /// After a write lost position `at + 1`: reads the entries from there on, each by its
    /// position (one GET, no listing), up to the first free position or a full batch
    /// ([`READ_BATCH`] entries or [`BATCH_BYTES`]), and applies them. A replica that loses to
    /// a busy writer (one client keeping another replica writing) thus tries again within a
    /// round trip or two per entry it missed, as fast as the writer itself, instead of after a
    /// listing of the log. A replica that must rebuild, or that finds itself behind the trim
    /// mark, reloads.
    ///
    /// The entry at `at + 1` may be `ours`: an earlier attempt of this write landed there, and
    /// the store client, retrying it after a server error, found the position taken. It is
    /// then this write's.
    async fn follow(&self, at: u64, ours: &Bytes) -> Result<Followed, WriteError> {
        if self.broken.load(Ordering::Acquire) {
            return Ok(Followed::To(self.catch_up().await?));
        }
        let mut batch = Batch::default();
        while !batch.full() {
            match self.store.entry(at + 1 + batch.len() as u64).await? {
                Some(b) => batch.push(b),
                None => break,
            }
        }
        let ours_first = batch.bodies.first() == Some(ours);
        // The mark after the entries: at or below it, they are not the log.
        if at < trim::mark(&self.store).await? {
            if ours_first {
                return Err(self.undecided(at + 1).await);
            }
            return Ok(Followed::To(self.reload().await?));
        }
        if ours_first {
            return Ok(Followed::Ours);
        }
        Ok(Followed::To(self.apply_all(at, batch).await?))
    }

    /// Applies the entries after this replica's position (rebuilding first when needed).
    /// The caller holds `self.log`.
    pub(super) async fn catch_up(&self) -> Result<u64, WriteError> {
        let started = std::time::Instant::now();
        let at = self.read_log().await?;
        *self.last_read.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        Ok(at)
    }

    /// Applies the log from this replica's position up to the head as a listing finds it
    /// (one batch after another), rebuilding where the entries it needs were trimmed.
    async fn read_log(&self) -> Result<u64, WriteError> {
        // Where the last rebuild of this reading brought the replica: a rebuild that brings it
        // there again means entries that neither the log nor any snapshot holds.
        let mut rebuilt_to = None;
        if self.broken.load(Ordering::Acquire) {
            self.rebuild().await?;
            rebuilt_to = Some(self.db.applied_seq().await?);
        }
        let mut at = self.db.applied_seq().await?;
        loop {
            let seqs = self.store.entries_after(at, READ_BATCH).await?;
            // A listing shorter than a batch reaches the head as it stood when it began.
            let (listed, to_the_head) = (seqs.len(), seqs.len() < READ_BATCH);
            // The entries that follow this replica's position without a gap, a batch at most.
            let mut batch = Batch::default();
            for seq in seqs {
                if seq != at + 1 + batch.len() as u64 || batch.full() {
                    break;
                }
                match self.store.entry(seq).await? {
                    Some(b) => batch.push(b),
                    None => break,
                }
            }
            let fetched = batch.len();
            // A gap means the entries were trimmed after a snapshot; the mark, read after the
            // entries, tells whether they are still the log.
            if listed == 0 || (fetched > 0 && at >= trim::mark(&self.store).await?) {
                at = self.apply_all(at, batch).await?;
                if to_the_head && fetched == listed {
                    // Every entry of a listing that began after any restore of this reading,
                    // up to the head it found: what the database grants is the log's again.
                    // Later entries wait for the next reading (a busy log never holds one
                    // reading, nor the log's lock, for long).
                    self.rewound.store(false, Ordering::Release);
                    return Ok(at);
                }
                continue;
            }
            tracing::info!(
                position = at,
                "behind the trimmed log; loading the newest snapshot"
            );
            self.rebuild().await?;
            at = self.db.applied_seq().await?;
            if rebuilt_to == Some(at) {
                // Entries that neither the log nor any snapshot holds: the replica backs off
                // as after a failed rebuild rather than download the snapshot for every
                // reading.
                tracing::error!(
                    position = at,
                    "the entry after this position is in neither the log nor a snapshot"
                );
                self.unsynchronised();
                return Err(WriteError::Unsynchronised(REBUILD_BACKOFF));
            }
            rebuilt_to = Some(at);
        }
    }

    /// Applies `batch`, the entries after position `at`; returns the last position.
    async fn apply_all(&self, mut at: u64, batch: Batch) -> Result<u64, WriteError> {
        for body in batch.bodies {
            let entry = Entry::decode(at + 1, &body)?;
            self.apply(at + 1, entry, false).await?;
            at += 1;
        }
        Ok(at)
    }

    /// Applies one entry at `seq`; `own` when this replica wrote it just now.
    async fn apply(&self, seq: u64, entry: Entry, own: bool) -> Result<Outcome, WriteError> {
        let result = entry.clone().apply(seq, &self.db).await;
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                self.unsynchronised();
                return Err(e.into());
            }
        };
        if let Err(e) = self.db.set_applied_seq(seq).await {
            self.unsynchronised();
            return Err(e.into());
        }
        if !own && entry.origin() != Some(self.me.as_str()) {
            // The replica that wrote the entry deletes the objects it freed.
            for id in entry::queued_objects(&entry, &outcome) {
                let _ = self.db.deletion_done(id).await;
            }
        }
        self.metrics
            .position
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
        Ok(outcome)
    }
}
