//! Opening databases of earlier schemas and of other versions, and rows that cannot be read.

use rusqlite::Connection;

use super::*;
use staging_api::ids::Namespace;

#[test]
fn grants_of_an_older_database_run_from_their_blobs_first_send() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, object_id TEXT NOT NULL UNIQUE,
                 size INTEGER NOT NULL, created_at INTEGER NOT NULL, referenced_at INTEGER);
             CREATE TABLE blob_grants (sha256 TEXT NOT NULL, namespace TEXT NOT NULL,
                 PRIMARY KEY (sha256, namespace));
             INSERT INTO blobs VALUES ('ab', 'o', 10, 1234, NULL);
             INSERT INTO blob_grants VALUES ('ab', 'team-a');",
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let c = db.conn.lock().unwrap();
    let at: i64 = c
        .query_row(
            "SELECT granted_at FROM blob_grants WHERE sha256 = 'ab'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(at, 1234);
    drop(c);
    // Opening again changes nothing.
    drop(db);
    assert!(Db::open(&path).is_ok());
}

#[test]
fn an_older_database_is_counted_once_when_opened() {
    use super::usage::{self, MIN_CHARGE, Usage};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE resources (id TEXT PRIMARY KEY, state TEXT NOT NULL, api TEXT NOT NULL,
                 namespace TEXT, labels TEXT NOT NULL DEFAULT '{}', owner_pod_uid TEXT,
                 owner_seen_at INTEGER, size INTEGER NOT NULL DEFAULT 0, sha256 TEXT,
                 created_at INTEGER NOT NULL, committed_at INTEGER, first_access_at INTEGER,
                 last_access_at INTEGER, unused_ttl_ms INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL);
             CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, object_id TEXT NOT NULL UNIQUE,
                 size INTEGER NOT NULL, created_at INTEGER NOT NULL, referenced_at INTEGER);
             CREATE TABLE blob_grants (sha256 TEXT NOT NULL, namespace TEXT NOT NULL,
                 granted_at INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (sha256, namespace));
             CREATE TABLE resource_files (resource_id TEXT NOT NULL, name TEXT NOT NULL,
                 sha256 TEXT NOT NULL, size INTEGER NOT NULL,
                 PRIMARY KEY (resource_id, name));
             -- A bundle of 10 bytes, a submission of two files, an upload in progress.
             INSERT INTO resources (id, state, api, namespace, size, created_at,
                 unused_ttl_ms, expires_at) VALUES
                 ('r1', 'committed', 'v1', 'team-a', 10, 1, 0, 9),
                 ('r2', 'committed', 'files', 'team-a', 9000, 1, 0, 9),
                 ('r3', 'pending', 'blob', 'team-a', 0, 1, 0, 0);
             INSERT INTO resource_files VALUES ('r2', 'a', 'ab', 5000), ('r2', 'b', 'cd', 4000);
             INSERT INTO blobs VALUES ('ab', 'o1', 5000, 1, NULL), ('cd', 'o2', 4000, 1, NULL),
                 ('ef', 'o3', 100, 1, NULL);
             -- team-a names ab and cd and holds ef unnamed; team-b holds ab unnamed.
             INSERT INTO blob_grants VALUES ('ab', 'team-a', 1), ('cd', 'team-a', 1),
                 ('ef', 'team-a', 1), ('ab', 'team-b', 1);",
        )
        .unwrap();
    }
    let a: Namespace = "team-a".parse().unwrap();
    let b: Namespace = "team-b".parse().unwrap();
    {
        let db = Db::open(&path).unwrap();
        let c = db.conn.lock().unwrap();
        assert_eq!(
            usage::namespace(&c, &a).unwrap(),
            Usage {
                committed_bytes: MIN_CHARGE + 5000 + MIN_CHARGE,
                committed_count: 2,
                unnamed_bytes: MIN_CHARGE,
                unnamed_count: 1,
            }
        );
        assert_eq!(usage::namespace(&c, &b).unwrap().unnamed_bytes, 5000);
        assert_eq!(usage::drift(&c).unwrap(), Vec::<String>::new());
        c.execute(
            "UPDATE usage SET committed_count = 99 WHERE account = 'ns:team-a'",
            [],
        )
        .unwrap();
    }
    // Counted once: a later open keeps the counters as stored.
    let db = Db::open(&path).unwrap();
    let c = db.conn.lock().unwrap();
    assert_eq!(usage::namespace(&c, &a).unwrap().committed_count, 99);
    assert_eq!(
        usage::drift(&c).unwrap().len(),
        1,
        "the row changed by hand"
    );
    // Counters of another version are counted again.
    c.execute(
        "UPDATE meta SET value = '1' WHERE key = 'usage_counted'",
        [],
    )
    .unwrap();
    drop(c);
    drop(db);
    let db = Db::open(&path).unwrap();
    let c = db.conn.lock().unwrap();
    assert_eq!(usage::namespace(&c, &a).unwrap().committed_count, 2);
    assert_eq!(usage::drift(&c).unwrap(), Vec::<String>::new());
}

// === schema versions ===

fn user_version(path: &std::path::Path) -> i64 {
    let c = Connection::open(path).unwrap();
    service_runtime::sqlite::version(&c).unwrap()
}

#[test]
fn a_new_database_and_an_older_one_get_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.db");
    drop(Db::open(&fresh).unwrap());
    assert_eq!(user_version(&fresh), schema::VERSION);

    // A database from before owner tracking and grant times, without a version.
    let old = dir.path().join("old.db");
    {
        let c = Connection::open(&old).unwrap();
        c.execute_batch(
            "CREATE TABLE resources (id TEXT PRIMARY KEY, state TEXT NOT NULL, api TEXT NOT NULL,
                 namespace TEXT, labels TEXT NOT NULL DEFAULT '{}', owner_pod_uid TEXT,
                 size INTEGER NOT NULL DEFAULT 0, sha256 TEXT, created_at INTEGER NOT NULL,
                 committed_at INTEGER, first_access_at INTEGER, last_access_at INTEGER,
                 unused_ttl_ms INTEGER NOT NULL, expires_at INTEGER NOT NULL);",
        )
        .unwrap();
    }
    let db = Db::open(&old).unwrap();
    let c = db.conn.lock().unwrap();
    let has_seen: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('resources') WHERE name = 'owner_seen_at'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(has_seen, 1);
    assert_eq!(
        service_runtime::sqlite::version(&c).unwrap(),
        schema::VERSION
    );
}

#[test]
fn a_database_of_this_layout_without_a_version_keeps_its_rows_and_gets_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.db");
    {
        let db = Db::open(&path).unwrap();
        let c = db.conn.lock().unwrap();
        c.execute(
            "INSERT INTO store_deletions (id, queued_at) VALUES ('x', 1)",
            [],
        )
        .unwrap();
        // As the server wrote it before it recorded versions.
        c.pragma_update(None, "user_version", 0).unwrap();
    }
    assert_eq!(user_version(&path), 0);
    let db = Db::open(&path).unwrap();
    let c = db.conn.lock().unwrap();
    assert_eq!(
        service_runtime::sqlite::version(&c).unwrap(),
        schema::VERSION
    );
    let kept: i64 = c
        .query_row("SELECT COUNT(*) FROM store_deletions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 1);
}

#[test]
fn a_database_of_a_newer_version_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE future (x INTEGER);").unwrap();
        c.pragma_update(None, "user_version", schema::VERSION + 1)
            .unwrap();
    }
    let err = Db::open(&path).unwrap_err();
    assert!(
        matches!(err, DbError::UnknownSchema { found, known, .. }
            if found == schema::VERSION + 1 && known == schema::VERSION),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("schema version {}", schema::VERSION + 1))
            && message.contains("newer staging-server"),
        "{message}"
    );
    assert_eq!(user_version(&path), schema::VERSION + 1);
    let c = Connection::open(&path).unwrap();
    let tables: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'resources'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "nothing was created in the newer database");
}

// === unreadable rows ===

#[tokio::test]
async fn unreadable_rows_are_logged_and_counted_never_passed_over_silently() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("staging.db")).unwrap();
    let registry = prometheus::Registry::new();
    db.register_metrics(&registry).unwrap();
    let good = ResourceId::random();
    let bad_namespace = ResourceId::random();
    {
        let c = db.conn.lock().unwrap();
        c.execute_batch(&format!(
            "INSERT INTO resources (id, state, api, namespace, labels, size, sha256, created_at,
                 committed_at, unused_ttl_ms, expires_at) VALUES
                 ('{good}', 'committed', 'v1', 'team-a', '{{\"app\":\"a\"}}', 1, '{sha}', 1, 1,
                  0, 5),
                 ('not-an-id', 'committed', 'v1', 'team-a', '{{\"app\":\"a\"}}', 1, '{sha}', 1, 1,
                  0, 5),
                 ('{bad_namespace}', 'committed', 'v1', 'Not_A_Namespace', '{{}}', 1, '{sha}', 1,
                  1, 1000, 1000);
             -- Owned, but without a commit time: never read as time zero (long ago).
             INSERT INTO resources (id, state, api, namespace, labels, created_at, unused_ttl_ms,
                 expires_at) VALUES ('{late}', 'committed', 'v1', 'team-a', '{{\"app\":\"a\"}}',
                 1, 0, 99);
             INSERT INTO resources (id, state, api, created_at, unused_ttl_ms, expires_at)
                 VALUES ('pending-junk', 'pending', 'v1', 1, 0, 0);
             INSERT INTO store_deletions (id, queued_at) VALUES ('junk', 1), ('{good}', 2);",
            sha = "ab".repeat(32),
            late = ResourceId::random(),
        ))
        .unwrap();
    }
    let counted = |table: &str| db.unreadable.0.with_label_values(&[table]).get();

    let due = db.expired(10, 100).await.unwrap();
    assert_eq!(
        due.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![good],
        "the readable row is still due"
    );
    assert_eq!(counted("resources"), 1);

    let page = db.owned(0, 100).await.unwrap();
    assert_eq!(page.read, 3, "every owned row was read");
    assert_eq!(
        page.resources.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![good]
    );
    assert_eq!(counted("resources"), 3);

    assert!(db.pending().await.unwrap().is_empty());
    assert_eq!(counted("resources"), 4);

    assert_eq!(db.queued_deletions(10).await.unwrap(), vec![good]);
    assert_eq!(counted("store_deletions"), 1);

    // A read of one resource fails, and is counted too.
    assert!(matches!(
        db.get(bad_namespace).await,
        Err(DbError::Corrupt {
            table: "resources",
            ..
        })
    ));
    assert_eq!(counted("resources"), 5);
    assert!(db.get(good).await.unwrap().is_some());

    let exported = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "staging_db_unreadable_rows_total")
        .expect("registered");
    let total: f64 = exported
        .get_metric()
        .iter()
        .map(|m| m.get_counter().get_value())
        .sum();
    assert_eq!(total, 6.0);
}
