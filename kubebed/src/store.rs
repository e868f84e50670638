//! The object store behind the API server stand-in: every object as JSON, one increasing
//! `resourceVersion`, an event history for watches to resume from (compacted beyond a bound,
//! after which a resume gets `410 Gone`), graceful deletion of pods, finalizers, and garbage
//! collection of dependents through owner references.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::resources::{self, NAMESPACES, PODS, Resource};
use crate::selector::Selector;
use crate::status::ApiError;
use crate::validate;

/// A watch event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// As on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change.
#[derive(Debug)]
pub struct Event {
    /// Its `resourceVersion`.
    pub rv: u64,
    /// The resource type.
    pub res: Resource,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for `Deleted`, its last state).
    pub object: Value,
    /// The object before the change (`Modified` only).
    pub old: Option<Value>,
}

/// How to delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`.
    pub grace: Option<i64>,
    /// `propagationPolicy` is `Orphan`.
    pub orphan: bool,
    /// `preconditions.uid`.
    pub uid: Option<String>,
}

type Key = (Resource, String, String);

#[derive(Debug)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Event>>,
    /// Resumes from below this version get `410 Gone`.
    compacted: u64,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Event>>,
    history_limit: usize,
}

/// Now, as Kubernetes writes times.
#[must_use]
pub fn now() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    Timestamp::from_second(secs)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn key(res: &Resource, ns: &str, name: &str) -> Key {
    (
        *res,
        if res.namespaced {
            ns.to_string()
        } else {
            String::new()
        },
        name.to_string(),
    )
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Keys of the objects of `res` in `ns` (everywhere when `None`) that match the selectors.
fn matching(
    st: &State,
    res: &Resource,
    ns: Option<&str>,
    labels: &Selector,
    fields: &Selector,
) -> Vec<Key> {
    st.objects
        .iter()
        .filter(|((r, n, _), o)| {
            r == res
                && ns.is_none_or(|ns| !res.namespaced || n == ns)
                && labels.matches_labels(o)
                && fields.matches_fields(o)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// A watch's start: the events to send first, then the live ones.
#[derive(Debug)]
pub struct WatchStart {
    /// Synthetic `ADDED` events (no `resourceVersion` given) or the history to replay.
    pub initial: Vec<Arc<Event>>,
    /// Live events after `initial`.
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The store's version when the watch started.
    pub rv: u64,
}

impl Store {
    /// An empty store with the `default`, `kube-system` and `kube-public` namespaces; the
    /// event history keeps `history_limit` events.
    #[must_use]
    pub fn new(history_limit: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(8192);
        let store = Arc::new(Self {
            state: Mutex::new(State {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 0,
            }),
            tx,
            history_limit: history_limit.max(1),
        });
        for ns in ["default", "kube-system", "kube-public"] {
            store
                .create(&NAMESPACES, "", json!({"metadata": {"name": ns}}))
                .expect("fresh store");
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(
        &self,
        st: &mut State,
        res: Resource,
        kind: EventType,
        object: Value,
        old: Option<Value>,
    ) {
        let ev = Arc::new(Event {
            rv: st.rv,
            res,
            kind,
            object,
            old,
        });
        st.history.push_back(Arc::clone(&ev));
        while st.history.len() > self.history_limit {
            if let Some(e) = st.history.pop_front() {
                st.compacted = e.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// Drops the history up to now: a watch resuming from an older version gets `410 Gone`
    /// (what etcd compaction does to a real API server).
    pub fn compact(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.compacted = st.rv;
    }

    /// The current `resourceVersion`.
    #[must_use]
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Creates an object (`generateName` honoured).
    ///
    /// # Errors
    /// 404 for a missing namespace, 409 when it exists, 422 when invalid.
    pub fn create(&self, res: &Resource, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body is not an object"));
        }
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        validate::normalize(res, &mut obj);
        let mut st = self.lock();
        if res.namespaced {
            if let Some(body_ns) = obj["metadata"]["namespace"].as_str()
                && body_ns != ns
            {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                )));
            }
            let ns_key = key(&NAMESPACES, "", ns);
            match st.objects.get(&ns_key) {
                None => return Err(ApiError::not_found(&NAMESPACES, ns)),
                Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                    return Err(ApiError {
                        code: 403,
                        reason: "Forbidden",
                        message: format!(
                            "unable to create new content in namespace {ns} because it is being terminated"
                        ),
                        details: json!({}),
                    });
                }
                Some(_) => {}
            }
            obj["metadata"]["namespace"] = json!(ns);
        }
        if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            let Some(prefix) = obj["metadata"]["generateName"].as_str() else {
                return Err(ApiError::invalid(
                    res,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
            obj["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        validate::object(res, &name, &obj)?;
        let k = key(res, ns, &name);
        if st.objects.contains_key(&k) {
            return Err(ApiError::exists(res, &name));
        }
        st.rv += 1;
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!(now());
        meta["resourceVersion"] = json!(st.rv.to_string());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
        }
        if *res == PODS && obj["status"]["phase"].as_str().is_none() {
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        if *res == NAMESPACES {
            obj["status"] = json!({"phase": "Active"});
        }
        st.objects.insert(k, obj.clone());
        self.emit(&mut st, *res, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// One object.
    ///
    /// # Errors
    /// 404.
    pub fn get(&self, res: &Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&key(res, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Objects of a type (in `ns`, or everywhere when `None`) matching the selectors, with the
    /// store's version.
    #[must_use]
    pub fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        labels: &Selector,
        fields: &Selector,
    ) -> (Vec<Value>, u64) {
        let st = self.lock();
        let items = matching(&st, res, ns, labels, fields)
            .into_iter()
            .filter_map(|k| st.objects.get(&k).cloned())
            .collect();
        (items, st.rv)
    }

    /// Replaces an object (or its status, with `status_only`), checking `resourceVersion`
    /// when the new object carries one.
    ///
    /// # Errors
    /// 404, 409 on a stale version, 422 when invalid.
    pub fn replace(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        new: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let given = new["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        self.update(res, ns, name, |cur| {
            if given
                .as_deref()
                .is_some_and(|g| g != cur["metadata"]["resourceVersion"].as_str().unwrap_or(""))
            {
                return Err(ApiError::conflict(res, name));
            }
            if status_only {
                cur["status"] = new["status"].clone();
            } else {
                let status = cur["status"].take();
                let meta = cur["metadata"].take();
                *cur = new.clone();
                // Immutable and server-owned metadata stay.
                let m = &mut cur["metadata"];
                for f in [
                    "uid",
                    "creationTimestamp",
                    "namespace",
                    "name",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    if meta[f].is_null() {
                        if let Some(o) = m.as_object_mut() {
                            o.remove(f);
                        }
                    } else {
                        m[f] = meta[f].clone();
                    }
                }
                if cur["status"].is_null() && !status.is_null() {
                    cur["status"] = status;
                }
            }
            Ok(())
        })
    }

    /// Applies `f` to an object and stores the result as a new version (no event when nothing
    /// changed). An object marked for deletion whose finalizers are gone is removed.
    ///
    /// # Errors
    /// 404, or what `f` returns.
    pub fn update(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let k = key(res, ns, name);
        let old = st
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let mut new = old.clone();
        f(&mut new)?;
        validate::normalize(res, &mut new);
        new["apiVersion"] = json!(res.api_version());
        new["kind"] = json!(res.kind);
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            return Ok(new);
        }
        validate::object(res, name, &new)?;
        if new["spec"] != old["spec"] {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        st.rv += 1;
        new["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let terminating = new["metadata"]["deletionTimestamp"].is_string();
        let finalizers_left = new["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let pod_waiting = *res == PODS && Self::graceful_pending(&new);
        if terminating && !finalizers_left && !pod_waiting {
            st.objects.remove(&k);
            self.emit(&mut st, *res, EventType::Deleted, new.clone(), None);
            self.collect_garbage(&mut st);
            return Ok(new);
        }
        st.objects.insert(k, new.clone());
        self.emit(&mut st, *res, EventType::Modified, new.clone(), Some(old));
        Ok(new)
    }

    /// A terminating pod that a kubelet still has to stop.
    fn graceful_pending(pod: &Value) -> bool {
        pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
            && pod["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                > 0
    }

    /// Deletes an object: pods bound to a node are marked (`deletionTimestamp`,
    /// `deletionGracePeriodSeconds`) for their kubelet to stop; objects with finalizers are
    /// marked; everything else is removed at once, with `deletionTimestamp` set in the
    /// `DELETED` event. Dependents whose owners are all gone are deleted in turn.
    ///
    /// # Errors
    /// 404, 409 when `preconditions.uid` does not match.
    pub fn delete(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        self.delete_locked(&mut st, res, ns, name, opts)
    }

    fn delete_locked(
        &self,
        st: &mut State,
        res: &Resource,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let k = key(res, ns, name);
        let old = st
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))?;
        if let Some(uid) = &opts.uid
            && old["metadata"]["uid"].as_str() != Some(uid)
        {
            return Err(ApiError::conflict(res, name));
        }
        let uid = old["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if opts.orphan {
            self.orphan_dependents(st, &uid);
        }
        let mut new = old.clone();
        let already = old["metadata"]["deletionTimestamp"].is_string();
        let grace = if *res == PODS {
            let spec_grace = old["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            opts.grace.unwrap_or(spec_grace).max(0)
        } else {
            0
        };
        let bound = old["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let running = !matches!(
            old["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        let finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if !already {
            new["metadata"]["deletionTimestamp"] = json!(now());
        }
        let keep_for_kubelet = *res == PODS && bound && running && grace > 0;
        if keep_for_kubelet || finalizers {
            if already
                && !(keep_for_kubelet
                    && grace
                        < old["metadata"]["deletionGracePeriodSeconds"]
                            .as_i64()
                            .unwrap_or(0))
            {
                return Ok(old);
            }
            new["metadata"]["deletionGracePeriodSeconds"] =
                json!(if keep_for_kubelet { grace } else { 0 });
            st.rv += 1;
            new["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            st.objects.insert(k, new.clone());
            self.emit(st, *res, EventType::Modified, new.clone(), Some(old));
            return Ok(new);
        }
        if *res == NAMESPACES {
            self.delete_namespace_contents(st, name);
        }
        st.rv += 1;
        new["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        st.objects.remove(&k);
        self.emit(st, *res, EventType::Deleted, new.clone(), None);
        self.collect_garbage(st);
        Ok(new)
    }

    fn delete_namespace_contents(&self, st: &mut State, ns: &str) {
        let keys: Vec<Key> = st
            .objects
            .keys()
            .filter(|(r, n, _)| r.namespaced && n == ns)
            .cloned()
            .collect();
        for (r, n, name) in keys {
            let _ = self.delete_locked(st, &r, &n, &name, &DeleteOptions::default());
        }
    }

    /// Removes a terminating pod once its kubelet has stopped it (the kubelet's final delete
    /// with grace period 0).
    ///
    /// # Errors
    /// 404, or 409 when the pod was replaced by another of the same name.
    pub fn remove_terminated(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        uid: &str,
    ) -> Result<(), ApiError> {
        self.update(res, ns, name, |p| {
            if p["metadata"]["uid"].as_str() != Some(uid) {
                return Err(ApiError::conflict(res, name));
            }
            p["metadata"]["deletionTimestamp"] = p["metadata"]["deletionTimestamp"]
                .as_str()
                .map_or_else(|| json!(now()), |t| json!(t));
            p["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            Ok(())
        })
        .map(|_| ())
    }

    /// Deletes every matching object; returns what was deleted or marked.
    ///
    /// # Errors
    /// None today; the `Result` keeps the shape of [`Store::delete`].
    pub fn delete_collection(
        &self,
        res: &Resource,
        ns: Option<&str>,
        labels: &Selector,
        fields: &Selector,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let mut st = self.lock();
        let keys = matching(&st, res, ns, labels, fields);
        let mut out = Vec::new();
        for (r, n, name) in keys {
            if let Ok(v) = self.delete_locked(&mut st, &r, &n, &name, opts) {
                out.push(v);
            }
        }
        Ok(out)
    }

    fn orphan_dependents(&self, st: &mut State, uid: &str) {
        let keys: Vec<Key> = st
            .objects
            .iter()
            .filter(|(_, o)| Self::owner_uids(o).iter().any(|u| u == uid))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let Some(old) = st.objects.get(&k).cloned() else {
                continue;
            };
            let mut new = old.clone();
            if let Some(refs) = new["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
            }
            st.rv += 1;
            new["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            st.objects.insert(k.clone(), new.clone());
            self.emit(st, k.0, EventType::Modified, new, Some(old));
        }
    }

    fn owner_uids(o: &Value) -> Vec<String> {
        o["metadata"]["ownerReferences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["uid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes (in the background) every object all of whose owners are gone, until none is
    /// left.
    fn collect_garbage(&self, st: &mut State) {
        for _ in 0..64 {
            let live: HashSet<String> = st
                .objects
                .values()
                .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_string))
                .collect();
            let orphans: Vec<Key> = st
                .objects
                .iter()
                .filter(|(_, o)| {
                    let owners = Self::owner_uids(o);
                    !owners.is_empty()
                        && owners.iter().all(|u| !live.contains(u))
                        && !o["metadata"]["deletionTimestamp"].is_string()
                })
                .map(|(k, _)| k.clone())
                .collect();
            if orphans.is_empty() {
                return;
            }
            for (r, n, name) in orphans {
                let _ = self.delete_locked(st, &r, &n, &name, &DeleteOptions::default());
            }
        }
    }

    /// Starts a watch: without `since` (or with `0`), synthetic `ADDED` events for what exists;
    /// with `since`, the history after it.
    ///
    /// # Errors
    /// `410 Gone` when `since` is older than the history kept.
    pub fn watch(&self, res: &Resource, since: Option<u64>) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let live = self.tx.subscribe();
        let initial = match since {
            None | Some(0) => st
                .objects
                .iter()
                .filter(|((r, _, _), _)| r == res)
                .map(|(_, o)| {
                    Arc::new(Event {
                        rv: rv_of(o),
                        res: *res,
                        kind: EventType::Added,
                        object: o.clone(),
                        old: None,
                    })
                })
                .collect(),
            Some(rv) if rv < st.compacted => return Err(ApiError::expired(rv)),
            Some(rv) => st
                .history
                .iter()
                .filter(|e| e.rv > rv && e.res == *res)
                .cloned()
                .collect(),
        };
        Ok(WatchStart {
            initial,
            live,
            rv: st.rv,
        })
    }

    /// Every resource type's objects, for a dump.
    #[must_use]
    pub fn dump(&self) -> Vec<Value> {
        self.lock().objects.values().cloned().collect()
    }

    /// Subscribes to every event from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// The resource type of an object, from its `apiVersion` and `kind`.
    #[must_use]
    pub fn resource_of(obj: &Value) -> Option<Resource> {
        resources::by_kind(
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        )
    }
}
