//! Registrations in SQLite (WAL), so that fetches keep working after a restart (SPARK-27736).
//!
//! The registry writes here first and updates memory after, so memory never holds what the
//! database lacks. Calls run on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use crate::error::{Result, ShuffleError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (
    app_id               TEXT PRIMARY KEY,
    token_hash           BLOB,
    namespace            TEXT NOT NULL DEFAULT '',
    driver_pod           TEXT NOT NULL DEFAULT '',
    heartbeat_timeout_ms INTEGER,
    created_ms           INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS executors (
    app_id          TEXT NOT NULL,
    exec_id         TEXT NOT NULL,
    local_dirs      TEXT NOT NULL,
    sub_dirs        INTEGER NOT NULL,
    shuffle_manager TEXT NOT NULL,
    PRIMARY KEY (app_id, exec_id)
);
";

/// A stored application.
#[derive(Debug, Clone)]
pub struct AppRow {
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
}

/// A stored executor.
#[derive(Debug, Clone)]
pub struct ExecRow {
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
pub struct Db {
    conn: Arc<Mutex<Connection>>,
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
    /// Opens or creates the database with [`Durability::Full`].
    ///
    /// # Errors
    /// SQLite errors.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Durability::Full)
    }

    /// Opens or creates the database.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn open_with(path: &Path, durability: Durability) -> Result<Self> {
        use service_runtime::sqlite::{self, Synchronous};
        let sync = match durability {
            Durability::Full => Synchronous::Full,
            Durability::Normal => Synchronous::Normal,
        };
        let conn = sqlite::open(path, sync, SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
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
    pub async fn ping(&self) -> Result<()> {
        self.call(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    /// Inserts or replaces an application.
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn put_app(&self, row: AppRow, now_ms: i64) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO apps (app_id, token_hash, namespace, driver_pod, heartbeat_timeout_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(app_id) DO UPDATE SET token_hash = ?2, namespace = ?3, driver_pod = ?4,
                     heartbeat_timeout_ms = ?5",
                params![
                    row.app_id,
                    row.token_hash.map(|h| h.to_vec()),
                    row.namespace,
                    row.driver_pod,
                    row.heartbeat_timeout_ms.map(|v| v as i64),
                    now_ms
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Inserts or replaces an executor (and its application row if missing).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn put_executor(&self, row: ExecRow, now_ms: i64) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO apps (app_id, created_ms) VALUES (?1, ?2)",
                params![row.app_id, now_ms],
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
    pub async fn delete_app(&self, app_id: String) -> Result<()> {
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
    pub async fn load(&self) -> Result<(Vec<AppRow>, Vec<ExecRow>)> {
        self.call(|c| {
            let mut apps = Vec::new();
            let mut stmt = c.prepare(
                "SELECT app_id, token_hash, namespace, driver_pod, heartbeat_timeout_ms FROM apps",
            )?;
            let rows = stmt.query_map([], |r| {
                let hash: Option<Vec<u8>> = r.get(1)?;
                Ok(AppRow {
                    app_id: r.get(0)?,
                    token_hash: hash.and_then(|h| h.try_into().ok()),
                    namespace: r.get(2)?,
                    driver_pod: r.get(3)?,
                    heartbeat_timeout_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                })
            })?;
            for row in rows {
                apps.push(row?);
            }
            let mut execs = Vec::new();
            let mut stmt = c.prepare(
                "SELECT app_id, exec_id, local_dirs, sub_dirs, shuffle_manager FROM executors",
            )?;
            let rows = stmt.query_map([], |r| {
                let dirs: String = r.get(2)?;
                Ok(ExecRow {
                    app_id: r.get(0)?,
                    exec_id: r.get(1)?,
                    local_dirs: serde_json::from_str::<Vec<String>>(&dirs)
                        .unwrap_or_default()
                        .into_iter()
                        .map(PathBuf::from)
                        .collect(),
                    sub_dirs: r.get(3)?,
                    shuffle_manager: r.get(4)?,
                })
            })?;
            for row in rows {
                execs.push(row?);
            }
            Ok((apps, execs))
        })
        .await
    }
}
