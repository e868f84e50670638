//! Registrations in SQLite (WAL), so that fetches keep working after a restart (SPARK-27736),
//! and the driver pod each application was bound to by the pod watch (`crate::kube`), so that
//! a restart does not reopen the question of who owns it.
//!
//! The registry writes here first and updates memory after, so memory never holds what the
//! database lacks. Calls run on the blocking pool.
//!
//! The layout has a version ([`schema`]); a row that cannot be read (a value that does not
//! parse: the file was edited by hand or damaged) is logged, counted in
//! `shuffle_db_unreadable_rows_total` by table and left out, never passed over silently.

mod schema;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus::IntCounterVec;
use rusqlite::{Connection, params};

use crate::error::{Result, ShuffleError};
use spark_protocol::ids::AppId;

/// The tables whose rows are read back, the label values of
/// `shuffle_db_unreadable_rows_total`.
pub(crate) const TABLES: [&str; 3] = ["apps", "executors", "pod_owners"];

/// Rows that could not be read, counted by table in `shuffle_db_unreadable_rows_total`.
#[derive(Debug, Clone)]
pub(crate) struct UnreadableRows(IntCounterVec);

impl UnreadableRows {
    /// Counts in `counter` (labelled by table).
    pub(crate) fn new(counter: IntCounterVec) -> Self {
        for table in TABLES {
            counter.with_label_values(&[table]).inc_by(0);
        }
        Self(counter)
    }

    /// Logs and counts a row left out.
    pub(crate) fn skipped(&self, table: &'static str, row: &str, what: &str) {
        self.0.with_label_values(&[table]).inc();
        tracing::warn!(table, row, what, "database row not readable; left out");
    }

    /// How many rows of `table` were left out.
    #[cfg(test)]
    pub(crate) fn count(&self, table: &str) -> u64 {
        self.0.with_label_values(&[table]).get()
    }
}

/// A stored application.
#[derive(Debug, Clone)]
pub(super) struct AppRow {
    /// Id.
    pub app_id: String,
    /// SHA-256 of its token, when registered through RegisterApplication.
    pub token_hash: Option<[u8; 32]>,
    /// Namespace (informational).
    pub namespace: String,
    /// Driver pod (informational).
    pub driver_pod: String,
    /// Heartbeat timeout when the driver registered.
    pub heartbeat_timeout_ms: Option<u64>,
    /// Registered over gRPC or authenticated with an operator's secret: only its own
    /// lifecycle ends it, never the pod watch. Once set, never cleared.
    pub own_lifecycle: bool,
    /// Registered by a Spark client that proved a secret learned from pods: the shared secret
    /// never opens it. Once set, never cleared.
    pub learned_secret: bool,
}

/// The driver pod an application's data on this node follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRow {
    /// Application.
    pub app_id: String,
    /// The driver pod's namespace.
    pub namespace: String,
    /// The driver pod's uid.
    pub driver_uid: String,
}

/// A stored executor.
#[derive(Debug, Clone)]
pub(super) struct ExecRow {
    /// Application.
    pub app_id: String,
    /// Executor.
    pub exec_id: String,
    /// Canonical local directories.
    pub local_dirs: Vec<PathBuf>,
    /// Subdirectories per local directory.
    pub sub_dirs: u32,
    /// Shuffle manager class (informational).
    pub shuffle_manager: String,
}

/// The registration database.
#[derive(Debug, Clone)]
pub(super) struct Db {
    conn: Arc<Mutex<Connection>>,
    unreadable: UnreadableRows,
}

/// How a registration reaches the disk before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced at every commit, so neither a crash of the
    /// process nor of the node (power loss) loses an acknowledged registration. The default.
    Full,
    /// `synchronous=NORMAL`: survives a process crash, not a power loss (the last commits
    /// may roll back). Chosen with `--registry-sync normal`.
    Normal,
}

impl Db {
    /// Opens (creating if needed) the database and brings its layout up to this service's
    /// version; rows that cannot be read are counted in `unreadable`.
    ///
    /// # Errors
    /// [`ShuffleError::UnknownSchema`] for a database of a newer version (left as it is);
    /// SQLite errors.
    pub(super) fn open_with(
        path: &Path,
        durability: Durability,
        unreadable: UnreadableRows,
    ) -> Result<Self> {
        Ok(Self {
            conn: Arc::new(Mutex::new(schema::open(path, durability)?)),
            unreadable,
        })
    }

    /// The counter of rows that cannot be read.
    pub(super) fn unreadable(&self) -> &UnreadableRows {
        &self.unreadable
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-statement; SQLite rolled back, the
            // connection is still usable.
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await?
        .map_err(ShuffleError::from)
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) async fn ping(&self) -> Result<()> {
        self.call(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    /// Inserts or replaces an application; its marks are only ever set, never cleared.
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) async fn put_app(&self, row: AppRow, now_ms: i64) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO apps (app_id, token_hash, namespace, driver_pod, heartbeat_timeout_ms, created_ms, own_lifecycle, learned_secret)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(app_id) DO UPDATE SET token_hash = ?2, namespace = ?3, driver_pod = ?4,
                     heartbeat_timeout_ms = ?5, own_lifecycle = MAX(own_lifecycle, ?7),
                     learned_secret = MAX(learned_secret, ?8)",
                params![
                    row.app_id,
                    row.token_hash.map(|h| h.to_vec()),
                    row.namespace,
                    row.driver_pod,
                    row.heartbeat_timeout_ms.map(|v| v as i64),
                    now_ms,
                    row.own_lifecycle,
                    row.learned_secret
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Inserts or replaces an executor (and its application row if missing); `own_lifecycle`
    /// and `learned` set the application's marks (never clear them).
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) async fn put_executor(
        &self,
        row: ExecRow,
        own_lifecycle: bool,
        learned: bool,
        now_ms: i64,
    ) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO apps (app_id, created_ms, own_lifecycle, learned_secret) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(app_id) DO UPDATE SET own_lifecycle = MAX(own_lifecycle, ?3),
                     learned_secret = MAX(learned_secret, ?4)",
                params![row.app_id, now_ms, own_lifecycle, learned],
            )?;
            let dirs: Vec<String> = row.local_dirs.iter().map(|d| d.to_string_lossy().into_owned()).collect();
            tx.execute(
                "INSERT OR REPLACE INTO executors (app_id, exec_id, local_dirs, sub_dirs, shuffle_manager)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    row.app_id,
                    row.exec_id,
                    serde_json::to_string(&dirs).unwrap_or_else(|_| "[]".into()),
                    row.sub_dirs,
                    row.shuffle_manager
                ],
            )?;
            tx.commit()
        })
        .await
    }

    /// Deletes an application and its executors.
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) async fn delete_app(&self, app_id: String) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM executors WHERE app_id = ?1", [&app_id])?;
            tx.execute("DELETE FROM apps WHERE app_id = ?1", [&app_id])?;
            tx.commit()
        })
        .await
    }

    /// Everything stored.
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) async fn load(&self) -> Result<(Vec<AppRow>, Vec<ExecRow>)> {
        let unreadable = self.unreadable.clone();
        self.call(move |c| {
            let mut apps = Vec::new();
            let mut stmt = c.prepare(
                "SELECT app_id, token_hash, namespace, driver_pod, heartbeat_timeout_ms, own_lifecycle, learned_secret FROM apps",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let app_id: String = r.get(0)?;
                let hash: Option<Vec<u8>> = r.get(1)?;
                // A token hash of another length would leave the application without its
                // token, and so open to the other protocol: the row is left out instead.
                let token_hash = match hash.map(<[u8; 32]>::try_from).transpose() {
                    Ok(h) => h,
                    Err(_) => {
                        unreadable.skipped("apps", &app_id, "token_hash");
                        continue;
                    }
                };
                apps.push(AppRow {
                    app_id,
                    token_hash,
                    namespace: r.get(2)?,
                    driver_pod: r.get(3)?,
                    heartbeat_timeout_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    own_lifecycle: r.get(5)?,
                    learned_secret: r.get(6)?,
                });
            }
            let mut execs = Vec::new();
            let mut stmt = c.prepare(
                "SELECT app_id, exec_id, local_dirs, sub_dirs, shuffle_manager FROM executors",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (app_id, exec_id, dirs): (String, String, String) =
                    (r.get(0)?, r.get(1)?, r.get(2)?);
                let Ok(dirs) = serde_json::from_str::<Vec<String>>(&dirs) else {
                    unreadable.skipped("executors", &format!("{app_id}/{exec_id}"), "local_dirs");
                    continue;
                };
                execs.push(ExecRow {
                    app_id,
                    exec_id,
                    local_dirs: dirs.into_iter().map(PathBuf::from).collect(),
                    sub_dirs: r.get(3)?,
                    shuffle_manager: r.get(4)?,
                });
            }
            Ok((apps, execs))
        })
        .await
    }

    /// Binds an application to its driver pod (replacing an earlier binding).
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) async fn put_owner(&self, row: OwnerRow) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO pod_owners (app_id, namespace, driver_uid) VALUES (?1, ?2, ?3)",
                params![row.app_id, row.namespace, row.driver_uid],
            )
            .map(|_| ())
        })
        .await
    }

    /// Forgets an application's driver pod.
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) async fn delete_owner(&self, app_id: String) -> Result<()> {
        self.call(move |c| {
            c.execute("DELETE FROM pod_owners WHERE app_id = ?1", [&app_id])
                .map(|_| ())
        })
        .await
    }

    /// Every application's driver pod; a row with an application id that does not parse is
    /// counted and left out.
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) async fn owners(&self) -> Result<Vec<(AppId, OwnerRow)>> {
        let unreadable = self.unreadable.clone();
        self.call(move |c| {
            let mut stmt = c.prepare("SELECT app_id, namespace, driver_uid FROM pod_owners")?;
            let rows = stmt.query_map([], |r| {
                Ok(OwnerRow {
                    app_id: r.get(0)?,
                    namespace: r.get(1)?,
                    driver_uid: r.get(2)?,
                })
            })?;
            let mut owners = Vec::new();
            for row in rows {
                let row = row?;
                match row.app_id.parse() {
                    Ok(app) => owners.push((app, row)),
                    Err(_) => unreadable.skipped("pod_owners", &row.app_id, "app_id"),
                }
            }
            Ok(owners)
        })
        .await
    }
}
