//! Opening databases of earlier schemas.

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
