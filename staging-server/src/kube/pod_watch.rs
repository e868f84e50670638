//! One group's watch: the pods of the whole cluster that carry the group's key label (and
//! role), listed once and then followed from the list's `resourceVersion`, into the shared
//! [`PodCache`]. The watch is reopened where it stopped when the server ends it (every
//! [`WATCH_TIMEOUT`] seconds; bookmarks keep its version recent while nothing changes). A
//! `410 Gone` lists again at once; any other error after a back-off (0.8 s doubling to 30 s).
//! Either way the group's pods decide nothing until that complete list, so no decision is taken
//! on a picture with a gap in it. Every change wakes the owner watch.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use tokio::sync::Notify;
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
    /// `410 Gone`: list again at once.
    Gone,
    /// An error: list again after the back-off.
    Failed,
}

/// Follows `group`'s pods until `cancel` fires.
pub(super) async fn run(client: Client, group: Group, shared: Shared, cancel: CancellationToken) {
    let api: Api<Pod> = Api::all(client);
    let selector = group.selector();
    let lp = ListParams::default().labels(&selector);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let listed = tokio::select! {
            () = cancel.cancelled() => return,
            r = api.list(&lp) => r,
        };
        let mut rv = match listed {
            Ok(list) => {
                shared
                    .with_cache(|c| c.replace(&group, list.items.iter().filter_map(OwnerPod::of)));
                backoff = FIRST_BACKOFF;
                list.metadata.resource_version.unwrap_or_default()
            }
            Err(e) => {
                shared
                    .metrics
                    .errors
                    .with_label_values(&["list_pods"])
                    .inc();
                tracing::warn!(selector = %selector, error = %e, "owner pods not listed; nothing decided for them");
                shared.with_cache(|c| c.unsync(&group));
                if !pause(&mut backoff, &cancel).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                n = session(&api, &group, &selector, &shared, &mut rv) => n,
            };
            match next {
                Next::Rewatch => {}
                Next::Gone => {
                    shared.with_cache(|c| c.unsync(&group));
                    break;
                }
                Next::Failed => {
                    shared.with_cache(|c| c.unsync(&group));
                    if !pause(&mut backoff, &cancel).await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// One watch request from `rv`, until it ends or fails.
async fn session(
    api: &Api<Pod>,
    group: &Group,
    selector: &str,
    shared: &Shared,
    rv: &mut String,
) -> Next {
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
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                if let Some(v) = &p.metadata.resource_version {
                    rv.clone_from(v);
                }
                if let Some(p) = OwnerPod::of(&p) {
                    shared.with_cache(|c| c.apply(group, p));
                }
            }
            Ok(WatchEvent::Deleted(p)) => {
                if let Some(v) = &p.metadata.resource_version {
                    rv.clone_from(v);
                }
                if let Some(uid) = &p.metadata.uid {
                    shared.with_cache(|c| c.delete(group, uid));
                }
            }
            Ok(WatchEvent::Bookmark(b)) => rv.clone_from(&b.metadata.resource_version),
            Ok(WatchEvent::Error(s)) if s.code == 410 => return Next::Gone,
            Ok(WatchEvent::Error(s)) => return fail("failed", &s),
            Err(kube::Error::Api(s)) if s.code == 410 => return Next::Gone,
            Err(e) => return fail("failed", &e),
        }
    }
    Next::Rewatch
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
