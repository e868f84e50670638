//! The database's versions and migrations, and rows that cannot be read.

use prometheus::{IntCounterVec, Opts};
use rusqlite::Connection;

use super::*;
use crate::core::registry::Registry;

fn unreadable() -> UnreadableRows {
    let counter = IntCounterVec::new(
        Opts::new("shuffle_db_unreadable_rows_total", "test"),
        &["table"],
    )
    .unwrap();
    UnreadableRows::new(counter)
}

fn open(path: &Path) -> Db {
    Db::open_with(path, Durability::Full, unreadable()).unwrap()
}

fn user_version(path: &Path) -> i64 {
    service_runtime::sqlite::version(&Connection::open(path).unwrap()).unwrap()
}

// === versions ===

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
             INSERT INTO apps (app_id, token_hash, created_ms) VALUES ('grpc-app', zeroblob(32), 1);
             INSERT INTO apps (app_id, created_ms) VALUES ('spark-app', 1);",
        )
        .unwrap();
    }
    let db = open(&path);
    assert_eq!(user_version(&path), schema::VERSION);
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
    let app = "spark-app".parse().unwrap();
    assert_eq!(db.owners().await.unwrap(), vec![(app, owner)]);
    db.delete_owner("spark-app".into()).await.unwrap();
    assert!(db.owners().await.unwrap().is_empty());
    // Opening it again changes nothing.
    drop(db);
    let db = open(&path);
    assert_eq!(db.load().await.unwrap().0.len(), 2);
}

#[tokio::test]
async fn a_database_of_this_layout_without_a_version_keeps_its_rows_and_gets_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shuffle.db");
    {
        let db = open(&path);
        let row = ExecRow {
            app_id: "app-1".into(),
            exec_id: "1".into(),
            local_dirs: vec!["/v/a".into()],
            sub_dirs: 64,
            shuffle_manager: String::new(),
        };
        db.put_executor(row, false, false, 1).await.unwrap();
        // As the service wrote it before it recorded versions.
        let c = db.conn.lock().unwrap();
        c.pragma_update(None, "user_version", 0).unwrap();
    }
    assert_eq!(user_version(&path), 0);
    let db = open(&path);
    assert_eq!(user_version(&path), schema::VERSION);
    let (apps, execs) = db.load().await.unwrap();
    assert_eq!((apps.len(), execs.len()), (1, 1));
    assert_eq!(execs[0].local_dirs, vec![PathBuf::from("/v/a")]);
}

#[test]
fn a_database_of_a_newer_version_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shuffle.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE future (x INTEGER);").unwrap();
        c.pragma_update(None, "user_version", schema::VERSION + 1)
            .unwrap();
    }
    let err = Db::open_with(&path, Durability::Full, unreadable()).unwrap_err();
    assert!(
        matches!(err, ShuffleError::UnknownSchema { found, known, .. }
            if found == schema::VERSION + 1 && known == schema::VERSION),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("schema version {}", schema::VERSION + 1))
            && message.contains("newer shuffle-service"),
        "{message}"
    );
    assert_eq!(user_version(&path), schema::VERSION + 1);
    let c = Connection::open(&path).unwrap();
    let tables: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'apps'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "nothing was created in the newer database");
}

// === unreadable rows ===

#[tokio::test]
async fn unreadable_rows_are_logged_counted_and_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shuffle.db");
    let db = open(&path);
    let exec = |app: &str, exec: &str| ExecRow {
        app_id: app.into(),
        exec_id: exec.into(),
        local_dirs: vec!["/v/a".into()],
        sub_dirs: 64,
        shuffle_manager: String::new(),
    };
    db.put_executor(exec("app-1", "1"), false, false, 1)
        .await
        .unwrap();
    db.put_executor(exec("app-1", "2"), false, false, 1)
        .await
        .unwrap();
    db.put_executor(exec("app-2", "1"), false, false, 1)
        .await
        .unwrap();
    {
        let c = db.conn.lock().unwrap();
        c.execute_batch(
            "UPDATE executors SET local_dirs = 'not json' WHERE app_id = 'app-1' AND exec_id = '2';
             UPDATE apps SET token_hash = x'0102' WHERE app_id = 'app-2';
             INSERT INTO apps (app_id, created_ms) VALUES ('../bad', 1);
             INSERT INTO executors VALUES ('app-1', '../bad', '[\"/v/b\"]', 64, '');
             INSERT INTO pod_owners VALUES ('../bad', 'ns', 'u-1');",
        )
        .unwrap();
    }
    let (apps, execs) = db.load().await.unwrap();
    assert_eq!(apps.len(), 2, "app-2's token hash is unreadable");
    assert_eq!(
        execs.len(),
        3,
        "app-1's executor 2 has unreadable directories"
    );
    assert_eq!(db.unreadable().count("apps"), 1);
    assert_eq!(db.unreadable().count("executors"), 1);
    assert!(db.owners().await.unwrap().is_empty());
    assert_eq!(db.unreadable().count("pod_owners"), 1);
    // The registry reads the ids: a malformed one, and executors of an application left
    // out, are counted too.
    let registry = Registry::open(db.clone()).await.unwrap();
    assert_eq!(registry.counts(), (1, 1), "app-1 with executor 1 only");
    // Each load counts again: app-2 and executor app-1/2 twice now, '../bad' and the
    // executors of app-2 and '../bad' once.
    assert_eq!(db.unreadable().count("apps"), 2 + 1);
    assert_eq!(db.unreadable().count("executors"), 2 + 2);
}
