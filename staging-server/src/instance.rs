//! Which server instance a store prefix belongs to, and so which objects an orphan sweep may
//! delete.
//!
//! Every database gets a random instance id on first open (table `meta`). At start the server
//! registers that id on its store prefix (`instances/<id>`). A prefix registered by another
//! instance (a second replica with its own database, a replacement pod started beside the old
//! one, two clusters configured with one bucket) is refused with a clear message unless
//! `--store-shared` is given. Objects without a row are deleted as orphans only when this
//! instance is the only one registered on the prefix, so they can only be its own leftovers,
//! and only once they are older than `--orphan-grace`.

use std::fmt;

use rusqlite::OptionalExtension as _;
use uuid::Uuid;

use crate::clock::Clock as _;
use crate::db::{Db, DbResult};
use crate::error::{Error, Result};
use crate::store::BlobStore;

/// The id of one server instance (one database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(Uuid);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Db {
    /// This database's instance id, created on first call.
    ///
    /// # Errors
    /// SQLite errors, or a corrupt stored id.
    pub async fn instance_id(&self) -> DbResult<InstanceId> {
        let unreadable = self.unreadable().clone();
        self.call(move |c| {
            let fresh = Uuid::new_v4().to_string();
            c.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance_id', ?1)",
                [&fresh],
            )?;
            let v: Option<String> = c
                .query_row(
                    "SELECT value FROM meta WHERE key = 'instance_id'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let v = v.unwrap_or(fresh);
            Uuid::try_parse(&v)
                .map(InstanceId)
                .map_err(|_| unreadable.failed("meta", "instance_id", &v))
        })
        .await
    }
}

/// How this instance holds its store prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// No other instance is registered: orphans are this instance's own.
    Sole,
    /// Other instances are registered too (ids); the orphan sweep deletes nothing.
    Shared(Vec<String>),
}

/// Looks at the instances registered on the store prefix and registers `id`.
///
/// # Errors
/// [`Error::Config`] when another instance is registered and `shared` is false (nothing is
/// registered then); store errors.
pub(crate) async fn claim(store: &BlobStore, id: InstanceId, shared: bool) -> Result<Claim> {
    let me = id.to_string();
    let registered = store.instances().await?;
    let others: Vec<String> = registered.iter().filter(|i| **i != me).cloned().collect();
    if !others.is_empty() && !shared {
        let places: Vec<String> = others.iter().map(|o| store.instance_location(o)).collect();
        return Err(Error::config(format!(
            "the object store prefix is used by another staging-server instance ({}), whose \
             database is not this one; its orphan sweep and this one's would delete each \
             other's objects. Give each server its own prefix; if that instance is gone for \
             good, delete its registration ({}); to run beside it anyway, pass --store-shared",
            others.join(", "),
            places.join(", ")
        )));
    }
    if !registered.contains(&me) {
        let about = serde_json::json!({
            "instance": me,
            "registered_at_ms": crate::clock::SystemClock.now_ms(),
        });
        store
            .register_instance(&me, about.to_string().into_bytes())
            .await?;
    }
    Ok(if others.is_empty() {
        Claim::Sole
    } else {
        Claim::Shared(others)
    })
}
