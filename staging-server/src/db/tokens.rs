//! Download tokens: each issued token's id (`jti`) is recorded with its resource, so that
//! deleting the resource revokes every token of it; rows past their expiry are pruned.

use rusqlite::{Connection, OptionalExtension};

use super::resources::{Resource, load_resource};
use super::{Db, DbResult};
use crate::clock::UnixMillis;
use staging_api::ids::ResourceId;

/// Why a token is not acceptable, from the database's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Issued and not revoked.
    Valid,
    /// Revoked (resource deleted or explicitly revoked).
    Revoked,
    /// Never issued by this server (or long pruned).
    Unknown,
}

impl Db {
    /// A token's state and, when it is valid, the committed resource it grants, in one
    /// round trip (the hot path of every download).
    ///
    /// # Errors
    /// SQLite errors, or [`super::DbError::Corrupt`].
    pub async fn authorize(
        &self,
        jti: String,
        id: ResourceId,
    ) -> DbResult<(TokenState, Option<Resource>)> {
        let unreadable = self.unreadable.clone();
        self.call(move |c| {
            let state = token_state(c, &jti, id)?;
            let res = if state == TokenState::Valid {
                load_resource(c, id, &unreadable)?
            } else {
                None
            };
            Ok((state, res))
        })
        .await
    }

    /// Drops token rows that expired before `now` (they are rejected by `exp` anyway).
    ///
    /// # Errors
    /// SQLite errors.
    pub async fn prune_tokens(&self, now: UnixMillis) -> DbResult<usize> {
        self.call(move |c| Ok(c.execute("DELETE FROM tokens WHERE expires_at < ?1", [now])?))
            .await
    }
}

fn token_state(c: &Connection, jti: &str, resource: ResourceId) -> DbResult<TokenState> {
    let mut stmt = c.prepare_cached("SELECT resource_id, revoked_at FROM tokens WHERE jti = ?1")?;
    let row: Option<(String, Option<i64>)> = stmt
        .query_row([jti], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let rid = resource.to_string();
    Ok(match row {
        Some((r, None)) if r == rid => TokenState::Valid,
        Some((r, Some(_))) if r == rid => TokenState::Revoked,
        _ => TokenState::Unknown,
    })
}
