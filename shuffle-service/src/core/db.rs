//! Registrations in SQLite (WAL), so that fetches keep working after a restart (SPARK-27736),
//! and the driver pod each application was bound to by the pod watch (`crate::kube`), so that
//! a restart does not reopen the question of who owns it.
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
    created_ms           INTEGER NOT NULL,
    own_lifecycle        INTEGER NOT NULL DEFAULT 0,
    learned_secret       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS executors (
    app_id          TEXT NOT NULL,
    exec_id         TEXT NOT NULL,
    local_dirs      TEXT NOT NULL,
    sub_dirs        INTEGER NOT NULL,
    shuffle_manager TEXT NOT NULL,
    PRIMARY KEY (app_id, exec_id)
);
CREATE TABLE IF NOT EXISTS pod_owners (
    app_id     TEXT PRIMARY KEY,
    namespace  TEXT NOT NULL,
    driver_uid TEXT NOT NULL
);
";

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
    /// Opens or creates the database.
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) fn open_with(path: &Path, durability: Durability) -> Result<Self> {
        use service_runtime::sqlite::{self, Synchronous};
        let sync = match durability {
            Durability::Full => Synchronous::Full,
            Durability::Normal => Synchronous::Normal,
        };
        let conn = sqlite::open(path, sync, SCHEMA)?;
        // Databases from before the lifecycle mark lack this column: their applications
        // get it unset, except those holding a token (registered over gRPC).
        let has_mark: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('apps') WHERE name = 'own_lifecycle'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_mark {
            conn.execute_batch(
                "ALTER TABLE apps ADD COLUMN own_lifecycle INTEGER NOT NULL DEFAULT 0;
                 UPDATE apps SET own_lifecycle = 1 WHERE token_hash IS NOT NULL;",
            )?;
        }
        // Databases from before the learned mark: their applications bound to a driver pod
        // (the pod_owners table) are covered by their binding.
        let has_learned: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('apps') WHERE name = 'learned_secret'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_learned {
            conn.execute_batch(
                "ALTER TABLE apps ADD COLUMN learned_secret INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
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
        self.call(|c| {
            let mut apps = Vec::new();
            let mut stmt = c.prepare(
                "SELECT app_id, token_hash, namespace, driver_pod, heartbeat_timeout_ms, own_lifecycle, learned_secret FROM apps",
            )?;
            let rows = stmt.query_map([], |r| {
                let hash: Option<Vec<u8>> = r.get(1)?;
                Ok(AppRow {
                    app_id: r.get(0)?,
                    token_hash: hash.and_then(|h| h.try_into().ok()),
                    namespace: r.get(2)?,
                    driver_pod: r.get(3)?,
                    heartbeat_timeout_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    own_lifecycle: r.get(5)?,
                    learned_secret: r.get(6)?,
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

    /// Every application's driver pod.
    ///
    /// # Errors
    /// SQLite errors.
    pub(super) async fn owners(&self) -> Result<Vec<OwnerRow>> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT app_id, namespace, driver_uid FROM pod_owners")?;
            let rows = stmt.query_map([], |r| {
                Ok(OwnerRow {
                    app_id: r.get(0)?,
                    namespace: r.get(1)?,
                    driver_uid: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_from_before_the_lifecycle_mark_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shuffle.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE apps (app_id TEXT PRIMARY KEY, token_hash BLOB,
                     namespace TEXT NOT NULL DEFAULT '', driver_pod TEXT NOT NULL DEFAULT '',
                     heartbeat_timeout_ms INTEGER, created_ms INTEGER NOT NULL);
                 INSERT INTO apps (app_id, token_hash, created_ms) VALUES ('grpc-app', x'00', 1);
                 INSERT INTO apps (app_id, created_ms) VALUES ('spark-app', 1);",
            )
            .unwrap();
        }
        let db = Db::open_with(&path, Durability::Full).unwrap();
        let (mut apps, _) = db.load().await.unwrap();
        apps.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        let marks: Vec<(&str, bool)> = apps
            .iter()
            .map(|a| (a.app_id.as_str(), a.own_lifecycle))
            .collect();
        assert_eq!(marks, vec![("grpc-app", true), ("spark-app", false)]);
        // The mark is only ever set.
        let row = || ExecRow {
            app_id: "spark-app".into(),
            exec_id: "1".into(),
            local_dirs: vec![],
            sub_dirs: 64,
            shuffle_manager: String::new(),
        };
        db.put_executor(row(), true, true, 2).await.unwrap();
        db.put_executor(row(), false, false, 3).await.unwrap();
        let (apps, _) = db.load().await.unwrap();
        assert!(apps.iter().all(|a| a.own_lifecycle));
        let spark = apps.iter().find(|a| a.app_id == "spark-app").unwrap();
        assert!(spark.learned_secret, "the learned mark is only ever set");
        // Bindings are kept and forgotten.
        let owner = OwnerRow {
            app_id: "spark-app".into(),
            namespace: "ns".into(),
            driver_uid: "u-1".into(),
        };
        db.put_owner(owner.clone()).await.unwrap();
        assert_eq!(db.owners().await.unwrap(), vec![owner]);
        db.delete_owner("spark-app".into()).await.unwrap();
        assert!(db.owners().await.unwrap().is_empty());
        // Opening it again changes nothing.
        drop(db);
        let db = Db::open_with(&path, Durability::Full).unwrap();
        assert_eq!(db.load().await.unwrap().0.len(), 2);
    }
}
