//! Quotas and the capacity: the bounds an upload or a commit is checked against, read from the
//! running counters of `usage` so that a check costs the same whatever a namespace holds.

use rusqlite::Connection;

use super::usage;
use staging_api::ids::Namespace;

/// Storage quotas checked at commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quotas {
    /// Bytes per namespace.
    pub namespace_bytes: Option<u64>,
    /// Resources per namespace.
    pub namespace_count: Option<u64>,
    /// Total bytes.
    pub capacity: Option<u64>,
    /// Bytes per namespace of files sent but not named by one of its submissions.
    pub unnamed_bytes: Option<u64>,
    /// Bytes of such files per upload credential, across namespaces.
    pub credential_unnamed_bytes: Option<u64>,
    /// Such files per namespace.
    pub namespace_max_blobs: Option<u64>,
    /// Namespaces holding such files at once.
    pub max_unnamed_namespaces: Option<u64>,
    /// Namespaces where one credential holds such files at once.
    pub credential_max_namespaces: Option<u64>,
}

/// Bytes an upload may still bring, and the bound that leaves no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// Bytes left.
    pub bytes: u64,
    /// What bounds them, for the refusal's message.
    pub bound: &'static str,
}

/// Why charging `charge` more bytes to `ns` would break a quota or the capacity, if it would.
/// Reads the running counters (`usage`): its cost does not grow with what `ns`
/// holds.
pub(crate) fn quota_refusal(
    c: &Connection,
    ns: &Namespace,
    charge: u64,
    q: Quotas,
) -> rusqlite::Result<Option<String>> {
    let used = usage::namespace(c, ns)?;
    if let Some(max) = q.namespace_bytes {
        let used = used.bytes();
        if used.saturating_add(charge) > max {
            return Ok(Some(format!(
                "namespace {ns} would exceed its quota of {max} bytes ({used} used, {charge} more)"
            )));
        }
    }
    if let Some(max) = q.namespace_count
        && used.committed_count >= max
    {
        return Ok(Some(format!(
            "namespace {ns} already holds its quota of {max} resources"
        )));
    }
    if let Some(cap) = q.capacity {
        let used = usage::total(c)?.bytes();
        if used.saturating_add(charge) > cap {
            return Ok(Some(format!(
                "the store would exceed its capacity of {cap} bytes"
            )));
        }
    }
    Ok(None)
}
