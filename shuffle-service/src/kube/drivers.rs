//! The driver pods of the node's own applications: one watch per followed namespace (or one
//! across all) whose label selector names exactly the applications the tracker wants
//! (`spark-role=driver,spark-app-selector in (...)`), so that a node's traffic follows the
//! data it holds, not the cluster's number of jobs.
//!
//! When applications are added, their driver pods are listed (a quorum read, selected by the
//! added applications only) and the watch is reopened with the larger selector from the
//! `resourceVersion` it had reached: events since then are replayed for every selected
//! application, the added ones included, so none is lost between the list and the watch (the
//! tracker takes a replayed older state of a driver pod without going back: a final phase or a
//! deletion stays). Applications that leave are dropped from the selector only when the watch
//! is reopened anyway (its server-side timeout, an addition), which costs no request. Bookmarks
//! keep the `resourceVersion` recent on a quiet selection; `410 Gone` re-lists the whole
//! selection. Errors are reported and retried with back-off (0.8 s to 30 s) from the last
//! version seen; an error is never evidence of anything. A node without applications sends
//! no request at all.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::WATCH_TIMEOUT;
use super::pods::{self, APP_LABEL, DriverPod, ROLE_LABEL};
use super::tracker::Scope;
use spark_protocol::ids::AppId;

/// How long a change of the wanted applications is left to gather more before the watch is
/// renewed: applications arriving together (a node's executors listed at start, a burst of
/// jobs) cost one renewal.
pub(crate) const RENEW_DELAY: Duration = Duration::from_millis(200);

/// The longest value a label may have: an application id longer than this cannot be a
/// driver pod's label, and no selector names it.
const MAX_LABEL_VALUE: usize = 63;

/// What the driver watch of one scope reports.
#[derive(Debug)]
pub(crate) enum DriverEvent {
    /// A complete, fresh list of the driver pods of `apps` (the whole selection, or the
    /// applications just added to it).
    Listed {
        /// The applications the list covers.
        apps: BTreeSet<AppId>,
        /// The driver pods it held.
        pods: Vec<DriverPod>,
        /// It covers the whole selection (a start, a re-list), not only an addition.
        full: bool,
    },
    /// A driver pod was added or changed.
    Apply(DriverPod),
    /// A driver pod was deleted (or stopped matching the selector).
    Delete(DriverPod),
    /// The API server or the connection failed; the watch retries with back-off.
    Error(String),
}

/// The label selector of the driver pods of `apps`.
pub(crate) fn selector(apps: &BTreeSet<AppId>) -> String {
    let names: Vec<&str> = apps.iter().map(AppId::as_str).collect();
    format!("{ROLE_LABEL}=driver,{APP_LABEL} in ({})", names.join(","))
}

/// The applications a label selector can name: valid label values only.
fn selectable(apps: &BTreeSet<AppId>) -> BTreeSet<AppId> {
    apps.iter()
        .filter(|a| {
            let s = a.as_str();
            s.len() <= MAX_LABEL_VALUE
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        })
        .cloned()
        .collect()
}

struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(800);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self(Self::FIRST)
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    /// Waits out the current delay (doubling it), or returns `false` when cancelled.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}

fn is_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 410)
}

/// How one watch session ended.
enum Next {
    /// Reopen the watch from the version reached.
    Rewatch,
    /// List the whole selection again (`410 Gone`).
    Relist,
    /// Cancelled, or the receiver is gone.
    Stop,
}

/// One scope's watch of the driver pods of the wanted applications.
pub(crate) struct DriverWatch {
    api: Api<Pod>,
    scope: Scope,
    wanted: watch::Receiver<BTreeSet<AppId>>,
    tx: mpsc::Sender<(Scope, DriverEvent)>,
    cancel: CancellationToken,
    backoff: Backoff,
}

impl DriverWatch {
    /// A watch through `api` (namespaced or all) of the drivers of the applications `wanted`
    /// names, reporting to `tx` as `scope`.
    pub(crate) fn new(
        api: Api<Pod>,
        scope: Scope,
        wanted: watch::Receiver<BTreeSet<AppId>>,
        tx: mpsc::Sender<(Scope, DriverEvent)>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            api,
            scope,
            wanted,
            tx,
            cancel,
            backoff: Backoff::new(),
        }
    }

    async fn send(&self, ev: DriverEvent) -> bool {
        self.tx.send((self.scope.clone(), ev)).await.is_ok()
    }

    /// Runs until cancelled or until the receiver of its events is dropped.
    pub(crate) async fn run(mut self) {
        loop {
            // (Re)list the whole selection.
            let apps = self.wanted.borrow_and_update().clone();
            let selected = selectable(&apps);
            if selected.is_empty() {
                let listed = DriverEvent::Listed {
                    apps: selected,
                    pods: Vec::new(),
                    full: true,
                };
                if !self.send(listed).await {
                    return;
                }
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    r = self.wanted.changed() => if r.is_err() { return },
                }
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = tokio::time::sleep(RENEW_DELAY) => {}
                }
                continue;
            }
            let Some(mut rv) = self.list(&selected, true).await else {
                if self.tx.is_closed() || !self.backoff.wait(&self.cancel).await {
                    return;
                }
                continue;
            };
            let mut current = selected;
            loop {
                match self.session(&mut current, &mut rv).await {
                    Next::Rewatch => {}
                    Next::Relist => break,
                    Next::Stop => return,
                }
            }
        }
    }

    /// Lists the driver pods of `apps` and reports them; returns the list's version, `None`
    /// after an error (reported).
    async fn list(&mut self, apps: &BTreeSet<AppId>, full: bool) -> Option<String> {
        let lp = ListParams::default().labels(&selector(apps));
        match self.api.list(&lp).await {
            Ok(list) => {
                self.backoff.reset();
                let pods = list.items.iter().filter_map(pods::driver).collect();
                let listed = DriverEvent::Listed {
                    apps: apps.clone(),
                    pods,
                    full,
                };
                if !self.send(listed).await {
                    return None;
                }
                list.metadata.resource_version
            }
            Err(e) => {
                let _ = self.send(DriverEvent::Error(e.to_string())).await;
                None
            }
        }
    }

    /// One watch request over `current` from `rv`, until it ends, fails or the selection
    /// grows.
    async fn session(&mut self, current: &mut BTreeSet<AppId>, rv: &mut String) -> Next {
        let wp = WatchParams::default()
            .labels(&selector(current))
            .timeout(WATCH_TIMEOUT);
        let stream = match self.api.watch(&wp, rv).await {
            Ok(s) => s,
            Err(e) if is_gone(&e) => return Next::Relist,
            Err(e) => return self.failed(e.to_string()).await,
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return Next::Stop,
                r = self.wanted.changed() => {
                    if r.is_err() {
                        return Next::Stop;
                    }
                    tokio::select! {
                        () = self.cancel.cancelled() => return Next::Stop,
                        () = tokio::time::sleep(RENEW_DELAY) => {}
                    }
                    let wanted = selectable(&self.wanted.borrow_and_update());
                    let added: BTreeSet<AppId> = wanted.difference(current).cloned().collect();
                    if added.is_empty() {
                        // Only removals: the watch goes on; they are dropped at its renewal.
                        continue;
                    }
                    // The added applications' driver pods as they are now, then the watch of
                    // the whole selection from the version already reached (see the module
                    // docs). A failed list re-lists everything after the back-off.
                    if self.list(&added, false).await.is_none() {
                        if self.tx.is_closed() || !self.backoff.wait(&self.cancel).await {
                            return Next::Stop;
                        }
                        return Next::Relist;
                    }
                    current.retain(|a| wanted.contains(a));
                    current.extend(added);
                    return Next::Rewatch;
                }
                ev = stream.next() => match ev {
                    None => {
                        // The server ended the watch (its timeout): renewed over the apps
                        // still wanted that were already listed.
                        let wanted = self.wanted.borrow();
                        current.retain(|a| wanted.contains(a));
                        if current.is_empty() {
                            // Nothing left to watch: start over, without a request.
                            return Next::Relist;
                        }
                        return Next::Rewatch;
                    }
                    Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))) => {
                        self.backoff.reset();
                        if let Some(v) = &p.metadata.resource_version {
                            rv.clone_from(v);
                        }
                        if let Some(d) = pods::driver(&p)
                            && !self.send(DriverEvent::Apply(d)).await
                        {
                            return Next::Stop;
                        }
                    }
                    Some(Ok(WatchEvent::Deleted(p))) => {
                        self.backoff.reset();
                        if let Some(v) = &p.metadata.resource_version {
                            rv.clone_from(v);
                        }
                        if let Some(d) = pods::driver(&p)
                            && !self.send(DriverEvent::Delete(d)).await
                        {
                            return Next::Stop;
                        }
                    }
                    Some(Ok(WatchEvent::Bookmark(b))) => {
                        rv.clone_from(&b.metadata.resource_version);
                    }
                    Some(Ok(WatchEvent::Error(s))) if s.code == 410 => return Next::Relist,
                    Some(Ok(WatchEvent::Error(s))) => return self.failed(s.to_string()).await,
                    Some(Err(e)) if is_gone(&e) => return Next::Relist,
                    Some(Err(e)) => return self.failed(e.to_string()).await,
                }
            }
        }
    }

    /// Reports an error and waits out the back-off.
    async fn failed(&mut self, error: String) -> Next {
        if !self.send(DriverEvent::Error(error)).await || !self.backoff.wait(&self.cancel).await {
            return Next::Stop;
        }
        Next::Rewatch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<AppId> {
        ids.iter().map(|s| s.parse().expect("app id")).collect()
    }

    #[test]
    fn the_selector_names_exactly_the_applications() {
        assert_eq!(
            selector(&set(&["spark-b", "spark-a"])),
            "spark-role=driver,spark-app-selector in (spark-a,spark-b)"
        );
    }

    #[test]
    fn ids_that_cannot_be_label_values_are_not_selected() {
        let long = format!("spark-{}", "a".repeat(60));
        let apps = set(&["spark-a", &long, "app_1.x"]);
        assert_eq!(selectable(&apps), set(&["spark-a", "app_1.x"]));
    }
}
