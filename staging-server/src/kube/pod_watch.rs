//! One group's watch: the pods of the whole cluster that carry the group's key label (and
//! role), listed once and then followed from the list's `resourceVersion`, into the shared
//! [`PodCache`]. The watch is reopened where it stopped when the server ends it (every
//! [`WATCH_TIMEOUT`] seconds; bookmarks keep its version recent while nothing changes). A
//! `410 Gone` or any error lists again after a back-off (0.8 s doubling to 30 s, reset only by
//! a watch that delivered something), and the group's pods decide nothing until that complete
//! list, so no decision is taken on a picture with a gap in it. Every change wakes the owner
//! watch.
//!
//! Pods keep only the labels the group's owners name (`keys`, which grow as owners with new
//! keys arrive): when they grow, the group is listed again no sooner than [`KEYS_RELIST_GAP`]
//! after its last list, the watch going on until then; owners naming a key not yet kept are
//! decided after that list.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::owners::Group;
use super::pods::{OwnerPod, PodCache};
use super::watch::OwnerMetrics;

/// Seconds after which the API server ends a watch request (it is reopened at once); the
/// watch's client gives up on a connection silent for longer ([`super::watch_client`]).
pub(super) const WATCH_TIMEOUT: u32 = 45;

/// The first pause after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(800);

/// The longest pause between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The shortest time between two lists of a group made because its owners named new label
/// keys (uploaders choose the keys; each list reads every pod the group selects).
pub(super) const KEYS_RELIST_GAP: Duration = Duration::from_secs(10);

/// What one group's watch shares with the owner watch.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(super) cache: Arc<Mutex<PodCache>>,
    pub(super) wake: Arc<Notify>,
    pub(super) metrics: OwnerMetrics,
}

impl Shared {
    fn with_cache(&self, f: impl FnOnce(&mut PodCache)) {
        f(&mut self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
        self.wake.notify_one();
    }
}

/// How one watch request ended.
enum Next {
    /// The server ended it: reopen from the version reached.
    Rewatch,
    /// `410 Gone`: list again.
    Gone,
    /// An error: list again after the back-off.
    Failed,
    /// The owners name new label keys and the list for them is due.
    Keys,
}

/// One run of a group's watch.
pub(super) struct GroupWatch {
    pub client: Client,
    pub group: Group,
    /// Distinguishes this run's writes from those of an earlier, stopped one.
    pub generation: u64,
    /// The label keys the group's owners name.
    pub keys: watch::Receiver<BTreeSet<String>>,
    pub shared: Shared,
    pub cancel: CancellationToken,
}

/// Follows `w.group`'s pods until `w.cancel` fires.
pub(super) async fn run(mut w: GroupWatch) {
    let api: Api<Pod> = Api::all(w.client.clone());
    let selector = w.group.selector();
    let lp = ListParams::default().labels(&selector);
    let (group, generation) = (w.group.clone(), w.generation);
    let cancel = w.cancel.clone();
    // Reset only by a watch that delivered something: a list that succeeds followed by a
    // watch that fails at once (no RBAC for `watch`, say) still backs off to 30 s.
    let mut backoff = FIRST_BACKOFF;
    loop {
        let keys = w.keys.borrow_and_update().clone();
        let listed_at = tokio::time::Instant::now();
        let listed = tokio::select! {
            () = w.cancel.cancelled() => return,
            r = api.list(&lp) => r,
        };
        let mut rv = match listed {
            Ok(list) => {
                let pods = list
                    .items
                    .iter()
                    .filter_map(|p| OwnerPod::of(p, Some(&keys)));
                w.shared
                    .with_cache(|c| c.replace(&group, generation, keys.clone(), pods));
                list.metadata.resource_version.unwrap_or_default()
            }
            Err(e) => {
                w.shared
                    .metrics
                    .errors
                    .with_label_values(&["list_pods"])
                    .inc();
                tracing::warn!(selector = %selector, error = %e, "owner pods not listed; nothing decided for them");
                w.shared.with_cache(|c| c.unsync(&group, generation));
                if !pause(&mut backoff, &w.cancel).await {
                    return;
                }
                continue;
            }
        };
        let mut relist_at = None;
        let at = Session {
            selector: &selector,
            keys: &keys,
            listed_at,
        };
        loop {
            let mut progressed = false;
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                n = session(&api, &mut w, &at, &mut rv, &mut relist_at, &mut progressed) => n,
            };
            if progressed {
                backoff = FIRST_BACKOFF;
            }
            match next {
                Next::Rewatch if progressed => {}
                Next::Rewatch => {
                    // Ended at once without a word: not reopened in a loop.
                    if !pause(&mut backoff, &w.cancel).await {
                        return;
                    }
                }
                Next::Gone | Next::Failed => {
                    w.shared.with_cache(|c| c.unsync(&group, generation));
                    if !pause(&mut backoff, &w.cancel).await {
                        return;
                    }
                    break;
                }
                // The pods as kept decided, and the watch went on, until the relist was due.
                Next::Keys => break,
            }
        }
    }
}

/// What a watch session needs of its run.
struct Session<'a> {
    selector: &'a str,
    /// The label keys the last list kept.
    keys: &'a BTreeSet<String>,
    /// When that list was made.
    listed_at: tokio::time::Instant,
}

/// One watch request from `rv`, until it ends or fails, or a list for new keys is due
/// (`relist_at`, set when the owners first name keys the last list did not keep, no sooner
/// than [`KEYS_RELIST_GAP`] after it: the watch goes on meanwhile). `progressed` is set when
/// the server sent anything.
async fn session(
    api: &Api<Pod>,
    w: &mut GroupWatch,
    at: &Session<'_>,
    rv: &mut String,
    relist_at: &mut Option<tokio::time::Instant>,
    progressed: &mut bool,
) -> Next {
    let (group, generation, shared) = (&w.group, w.generation, &w.shared);
    let (selector, keys) = (at.selector, at.keys);
    let wp = WatchParams::default()
        .labels(selector)
        .timeout(WATCH_TIMEOUT);
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        shared
            .metrics
            .errors
            .with_label_values(&["watch_pods"])
            .inc();
        tracing::warn!(selector = %selector, error = %e, "owner pod watch {what}; listing again");
        Next::Failed
    };
    let stream = match api.watch(&wp, rv).await {
        Ok(s) => s,
        Err(kube::Error::Api(s)) if s.code == 410 => return Next::Gone,
        Err(e) => return fail("not opened", &e),
    };
    let mut stream = std::pin::pin!(stream);
    loop {
        let due = *relist_at;
        let ev = tokio::select! {
            () = async { if let Some(t) = due { tokio::time::sleep_until(t).await } else { std::future::pending().await } } => {
                return Next::Keys;
            }
            changed = w.keys.changed() => {
                if changed.is_err() {
                    // The owner watch let go of this group: it is being stopped.
                    w.cancel.cancelled().await;
                    return Next::Rewatch;
                }
                if relist_at.is_none() && !w.keys.borrow().is_subset(keys) {
                    *relist_at = Some(at.listed_at + KEYS_RELIST_GAP);
                }
                continue;
            }
            ev = stream.next() => ev,
        };
        let Some(ev) = ev else {
            return Next::Rewatch;
        };
        *progressed = true;
        match ev {
            Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                if let Some(v) = &p.metadata.resource_version {
                    rv.clone_from(v);
                }
                if let Some(p) = OwnerPod::of(&p, Some(keys)) {
                    shared.with_cache(|c| c.apply(group, generation, p));
                }
            }
            Ok(WatchEvent::Deleted(p)) => {
                if let Some(v) = &p.metadata.resource_version {
                    rv.clone_from(v);
                }
                if let Some(uid) = &p.metadata.uid {
                    shared.with_cache(|c| c.delete(group, generation, uid));
                }
            }
            Ok(WatchEvent::Bookmark(b)) => rv.clone_from(&b.metadata.resource_version),
            Ok(WatchEvent::Error(s)) if s.code == 410 => return Next::Gone,
            Ok(WatchEvent::Error(s)) => return fail("failed", &s),
            Err(kube::Error::Api(s)) if s.code == 410 => return Next::Gone,
            Err(e) => return fail("failed", &e),
        }
    }
}

/// Waits out the back-off (doubling it); `false` when cancelled.
async fn pause(backoff: &mut Duration, cancel: &CancellationToken) -> bool {
    let d = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}
