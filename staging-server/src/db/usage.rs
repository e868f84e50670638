//! Running counters of what is charged, per namespace, per upload credential and in total, kept
//! in the same transactions as the rows they count (table `usage`).
//!
//! Quota checks read one row each instead of summing over every resource and grant of a
//! namespace under the database lock: the cost of a check no longer grows with what a
//! namespace holds, so many small files cannot make every upload slow.
//!
//! - *Committed*: resources (a bundle, or a submission counted by its files) and their charge.
//! - *Unnamed*: grants on files that no submission of their namespace names, counted for the
//!   namespace, for the credential that sent the file (see [`staging_api::ids::CredentialId`]) and
//!   for the pair of the two (so that the namespaces where a credential holds such files can
//!   be counted).
//!
//! Every object is charged at least [`MIN_CHARGE`] bytes: a file's rows and its object cost the
//! server the same whatever its size, so a quota of bytes also bounds the number of files.
//!
//! The counters are the sums the rows give ([`recount`]); a database from before them is
//! counted once when opened ([`migrate`]). Rows that fall to zero are deleted, so the table
//! holds only accounts with something charged.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension as _, params};

use staging_api::ids::Namespace;

/// SQL condition: grant `g` is named by a committed submission of its own namespace.
pub(super) const NAMED_BY_OWN: &str = "EXISTS (SELECT 1 FROM resource_files f JOIN resources r
    ON r.id = f.resource_id WHERE f.sha256 = g.sha256 AND r.namespace = g.namespace)";

/// Least charge of a stored object (a bundle, one file of a submission, one unnamed file).
pub const MIN_CHARGE: u64 = 4 << 10;

/// What `size` bytes are charged.
#[must_use]
pub fn charge(size: u64) -> u64 {
    size.max(MIN_CHARGE)
}

/// The charge of one account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Charge of committed resources.
    pub committed_bytes: u64,
    /// Committed resources.
    pub committed_count: u64,
    /// Charge of files sent and not named by a submission of their namespace.
    pub unnamed_bytes: u64,
    /// Those files.
    pub unnamed_count: u64,
}

impl Usage {
    /// Everything charged.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.committed_bytes.saturating_add(self.unnamed_bytes)
    }
}

/// Key of the namespace `ns`.
fn namespace_key(ns: &str) -> String {
    format!("ns:{ns}")
}

/// Key of the credential `id`.
fn credential_key(id: &str) -> String {
    format!("cred:{id}")
}

/// Key of what the credential `id` holds in the namespace `ns`.
fn pair_key(id: &str, ns: &str) -> String {
    format!("cn:{id}/{ns}")
}

/// Key of the whole store.
const TOTAL: &str = "total";

/// A change of one account's counters.
#[derive(Debug, Clone, Copy, Default)]
struct Delta {
    committed_bytes: i64,
    committed_count: i64,
    unnamed_bytes: i64,
    unnamed_count: i64,
}

fn apply(c: &Connection, account: &str, d: Delta) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO usage (account, committed_bytes, committed_count, unnamed_bytes, unnamed_count)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (account) DO UPDATE SET
             committed_bytes = committed_bytes + ?2, committed_count = committed_count + ?3,
             unnamed_bytes = unnamed_bytes + ?4, unnamed_count = unnamed_count + ?5",
        params![
            account,
            d.committed_bytes,
            d.committed_count,
            d.unnamed_bytes,
            d.unnamed_count
        ],
    )?;
    c.execute(
        "DELETE FROM usage WHERE account = ?1 AND committed_bytes = 0 AND committed_count = 0
           AND unnamed_bytes = 0 AND unnamed_count = 0",
        [account],
    )?;
    Ok(())
}

fn signed(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Counts a committed resource of `ns` charged `charge` bytes in (`added`) or out.
pub(crate) fn committed(
    c: &Connection,
    ns: &str,
    charge: u64,
    added: bool,
) -> rusqlite::Result<()> {
    let sign = if added { 1 } else { -1 };
    let d = Delta {
        committed_bytes: sign * signed(charge),
        committed_count: sign,
        ..Delta::default()
    };
    apply(c, &namespace_key(ns), d)?;
    apply(c, TOTAL, d)
}

/// Counts an unnamed file of `ns`, sent with `credential`, charged `charge` bytes in
/// (`added`) or out.
pub(crate) fn unnamed(
    c: &Connection,
    ns: &str,
    credential: Option<&str>,
    charge: u64,
    added: bool,
) -> rusqlite::Result<()> {
    let sign = if added { 1 } else { -1 };
    let d = Delta {
        unnamed_bytes: sign * signed(charge),
        unnamed_count: sign,
        ..Delta::default()
    };
    apply(c, &namespace_key(ns), d)?;
    if let Some(id) = credential {
        apply(c, &credential_key(id), d)?;
        apply(c, &pair_key(id, ns), d)?;
    }
    apply(c, TOTAL, d)
}

fn get(c: &Connection, account: &str) -> rusqlite::Result<Usage> {
    let row = c
        .prepare_cached(
            "SELECT committed_bytes, committed_count, unnamed_bytes, unnamed_count
             FROM usage WHERE account = ?1",
        )?
        .query_row([account], |r| {
            let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
            Ok(Usage {
                committed_bytes: n(0)?,
                committed_count: n(1)?,
                unnamed_bytes: n(2)?,
                unnamed_count: n(3)?,
            })
        })
        .optional()?;
    Ok(row.unwrap_or_default())
}

/// What `ns` is charged.
pub(crate) fn namespace(c: &Connection, ns: &Namespace) -> rusqlite::Result<Usage> {
    get(c, &namespace_key(ns.as_str()))
}

/// What the credential `id` is charged for unnamed files (across namespaces).
pub(crate) fn credential(c: &Connection, id: &str) -> rusqlite::Result<Usage> {
    get(c, &credential_key(id))
}

/// What the credential `id` is charged for unnamed files in the namespace `ns`.
pub(crate) fn pair(c: &Connection, id: &str, ns: &Namespace) -> rusqlite::Result<Usage> {
    get(c, &pair_key(id, ns.as_str()))
}

/// What the whole store is charged.
pub(crate) fn total(c: &Connection) -> rusqlite::Result<Usage> {
    get(c, TOTAL)
}

/// Namespaces holding at least one unnamed file. Read through a partial index of those rows
/// only, so its cost is bounded by the cap it is checked against.
pub(crate) fn unnamed_namespaces(c: &Connection) -> rusqlite::Result<u64> {
    // ';' follows ':': the range holds exactly the keys starting with "ns:".
    count_unnamed(c, "ns:", "ns;")
}

/// Namespaces where the credential `id` holds at least one unnamed file (bounded the same
/// way).
pub(crate) fn credential_namespaces(c: &Connection, id: &str) -> rusqlite::Result<u64> {
    // '0' follows '/', and a credential id holds no '/'.
    count_unnamed(c, &format!("cn:{id}/"), &format!("cn:{id}0"))
}

fn count_unnamed(c: &Connection, from: &str, to: &str) -> rusqlite::Result<u64> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM usage INDEXED BY usage_unnamed
         WHERE unnamed_count > 0 AND account >= ?1 AND account < ?2",
        params![from, to],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// The counters as stored, by account.
pub(crate) fn stored(c: &Connection) -> rusqlite::Result<BTreeMap<String, Usage>> {
    let mut stmt = c.prepare("SELECT account FROM usage ORDER BY account")?;
    let accounts: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    accounts
        .into_iter()
        .map(|a| get(c, &a).map(|u| (a, u)))
        .collect()
}

/// The counters as the rows give them, by account (a scan of every resource and grant).
pub(crate) fn recount(c: &Connection) -> rusqlite::Result<BTreeMap<String, Usage>> {
    let min = signed(MIN_CHARGE);
    let mut out: BTreeMap<String, Usage> = BTreeMap::new();
    let mut add = |account: String, f: &dyn Fn(&mut Usage)| f(out.entry(account).or_default());
    {
        let mut stmt = c.prepare(
            "SELECT r.namespace, COUNT(*), SUM(CASE WHEN r.api = 'files'
                 THEN COALESCE((SELECT SUM(MAX(f.size, ?1)) FROM resource_files f
                                WHERE f.resource_id = r.id), 0)
                 ELSE MAX(r.size, ?1) END)
             FROM resources r WHERE r.state = 'committed' AND r.namespace IS NOT NULL
             GROUP BY r.namespace",
        )?;
        let rows = stmt.query_map([min], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?.max(0) as u64,
                r.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        for row in rows {
            let (ns, count, bytes) = row?;
            for key in [namespace_key(&ns), TOTAL.to_owned()] {
                add(key, &|u| {
                    u.committed_count += count;
                    u.committed_bytes += bytes;
                });
            }
        }
    }
    {
        let mut stmt = c.prepare(&format!(
            "SELECT g.namespace, g.credential, MAX(b.size, ?1) FROM blob_grants g
             JOIN blobs b ON b.sha256 = g.sha256 WHERE NOT {NAMED_BY_OWN}"
        ))?;
        let rows = stmt.query_map([min], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        for row in rows {
            let (ns, credential, bytes) = row?;
            let mut keys = vec![namespace_key(&ns), TOTAL.to_owned()];
            if let Some(id) = credential.as_deref() {
                keys.push(credential_key(id));
                keys.push(pair_key(id, &ns));
            }
            for key in keys {
                add(key, &|u| {
                    u.unnamed_count += 1;
                    u.unnamed_bytes += bytes;
                });
            }
        }
    }
    Ok(out)
}

/// Meta key holding the version of the counters the database keeps.
const COUNTED: &str = "usage_counted";
/// The version of the counters: what accounts there are and how objects are charged. A
/// database whose counters are of another version is counted again when opened.
const VERSION: &str = "2";

/// Counts a database from before the counters, or from before their present version (once:
/// later opens find them counted).
pub(crate) fn migrate(c: &mut Connection) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = ?1", [COUNTED], |r| {
            r.get(0)
        })
        .optional()?;
    if version.as_deref() != Some(VERSION) {
        tx.execute("DELETE FROM usage", [])?;
        for (account, u) in recount(&tx)? {
            tx.execute(
                "INSERT INTO usage (account, committed_bytes, committed_count, unnamed_bytes,
                                    unnamed_count) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    account,
                    signed(u.committed_bytes),
                    signed(u.committed_count),
                    signed(u.unnamed_bytes),
                    signed(u.unnamed_count)
                ],
            )?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = ?2",
            [COUNTED, VERSION],
        )?;
    }
    tx.commit()
}

/// Accounts whose stored counters differ from what the rows give, with both values.
pub(crate) fn drift(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let stored = stored(c)?;
    let counted = recount(c)?;
    let mut keys: Vec<&String> = stored.keys().chain(counted.keys()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (s, r) = (
                stored.get(k).copied().unwrap_or_default(),
                counted.get(k).copied().unwrap_or_default(),
            );
            (s != r).then(|| format!("{k}: stored {s:?}, counted {r:?}"))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE usage (account TEXT PRIMARY KEY,
                 committed_bytes INTEGER NOT NULL DEFAULT 0,
                 committed_count INTEGER NOT NULL DEFAULT 0,
                 unnamed_bytes INTEGER NOT NULL DEFAULT 0,
                 unnamed_count INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX usage_unnamed ON usage(account) WHERE unnamed_count > 0;",
        )
        .unwrap();
        c
    }

    #[test]
    fn small_objects_are_charged_the_minimum() {
        assert_eq!(charge(0), MIN_CHARGE);
        assert_eq!(charge(1), MIN_CHARGE);
        assert_eq!(charge(MIN_CHARGE + 1), MIN_CHARGE + 1);
    }

    #[test]
    fn counters_add_up_and_empty_rows_go() {
        let c = db();
        let a: Namespace = "team-a".parse().unwrap();
        unnamed(&c, "team-a", Some("token:1"), 5000, true).unwrap();
        unnamed(&c, "team-b", Some("token:1"), 4096, true).unwrap();
        committed(&c, "team-a", 10_000, true).unwrap();
        assert_eq!(
            namespace(&c, &a).unwrap(),
            Usage {
                committed_bytes: 10_000,
                committed_count: 1,
                unnamed_bytes: 5000,
                unnamed_count: 1
            }
        );
        assert_eq!(credential(&c, "token:1").unwrap().unnamed_bytes, 9096);
        assert_eq!(total(&c).unwrap().bytes(), 19_096);
        assert_eq!(unnamed_namespaces(&c).unwrap(), 2);
        unnamed(&c, "team-b", Some("token:1"), 4096, false).unwrap();
        assert_eq!(unnamed_namespaces(&c).unwrap(), 1);
        // An account back at zero leaves no row.
        let accounts: Vec<String> = stored(&c).unwrap().into_keys().collect();
        assert!(!accounts.contains(&"ns:team-b".to_owned()), "{accounts:?}");
        // Credentials are not namespaces, whatever their name.
        unnamed(&c, "team-c", Some("ns:x"), 4096, true).unwrap();
        assert_eq!(unnamed_namespaces(&c).unwrap(), 2);
        // The namespaces of a credential are its own, not those of a credential whose id
        // begins the same.
        unnamed(&c, "team-d", Some("token:10"), 4096, true).unwrap();
        assert_eq!(credential_namespaces(&c, "token:1").unwrap(), 1);
        assert_eq!(credential_namespaces(&c, "token:10").unwrap(), 1);
        unnamed(&c, "team-b", Some("token:1"), 4096, true).unwrap();
        assert_eq!(credential_namespaces(&c, "token:1").unwrap(), 2);
        assert_eq!(pair(&c, "token:1", &a).unwrap().unnamed_bytes, 5000);
    }
}
