//! Which driver pod an application follows on this node, and the Spark secrets carried by the
//! executor pods of each driver pod that claims it: shared by the pod watch (which sees the
//! pods), Spark's authentication (which proves a secret) and the gRPC API (which must not
//! register an application Spark's side holds).
//!
//! A claimant is a driver pod named by the controlling owner reference of an executor pod on
//! this node that carries the application's label. Any tenant can create one for any id it
//! knows, so being first, or being alone, proves nothing. With learned secrets on, each
//! claimant's secret is kept as a candidate, and the application is bound to a claimant only
//! when a client authenticates with that claimant's secret ([`Claims::bind`], called by the
//! handshake): a tenant's pods never bind the application by themselves, and the first
//! binding stays, a later claimant never replaces it. Without learned secrets the pod watch
//! binds an application whose executor pods name one driver pod (`crate::kube::tracker`): the
//! binding then only decides when unauthenticated data ends, which any client may delete.
//!
//! Bindings live in memory first (a handshake binds synchronously, so two racing handshakes
//! cannot both win) and are written to the state directory by the pod watch's task as soon as
//! it is told ([`Claims::changed`], [`Claims::take_pending`]). Secrets are in memory only and
//! zeroed when dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use subtle::ConstantTimeEq as _;
use tokio::sync::Notify;

use crate::core::PodOwner;
use spark_protocol::ids::AppId;

/// Most claimants of one application whose secrets are kept besides its owner's. A live
/// claimant (one with an executor pod on this node that has not ended and is not being
/// deleted: pending or running) needs a pod the kubelet admits, so the bound is set above the pods a kubelet runs (110 by default, 256 at most on the
/// common managed clusters). Ended pods cost a tenant nothing on the node (a pod created with
/// the node's name that the kubelet rejects ends `Failed` at once, and stays), so a live
/// claimant takes the place of an ended one when the candidates are full, and ended ones never
/// push anything out: a tenant cannot crowd the claimant of the application's own running
/// executor out of the candidates by making pods. Only more live claimants than this (a node allowed more pods)
/// refuse the application, until it is bound or the claimants go, rather than bind it to a
/// claimant chosen by a limit.
pub const MAX_CANDIDATES: usize = 256;

/// A claimant's secret, zeroed when dropped.
struct Candidate {
    claimant: PodOwner,
    secret: Vec<u8>,
    /// The claimant had an executor pod on this node that had not ended, at the last count.
    live: bool,
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.secret.fill(0);
    }
}

#[derive(Default)]
struct AppClaims {
    owner: Option<PodOwner>,
    candidates: Vec<Candidate>,
    /// More live claimants with secrets than [`MAX_CANDIDATES`] at the last count.
    overflow: bool,
}

/// What offering a claimant's secret did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// The claimant's secret is now known.
    New,
    /// The same secret was known already.
    Same,
    /// A different secret is known for that claimant; the first stays.
    Conflict,
    /// Too many claimants: not kept (see [`MAX_CANDIDATES`]).
    Full,
}

/// What authentication may use for an application, the owner's secret first.
#[derive(Default)]
pub struct ClaimView {
    /// The driver pod it is bound to.
    pub owner: Option<PodOwner>,
    /// Every claimant's secret, the owner's first.
    pub candidates: Vec<(PodOwner, Vec<u8>)>,
    /// More live claimants than [`MAX_CANDIDATES`].
    pub overflow: bool,
}

impl std::fmt::Debug for ClaimView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimView")
            .field("owner", &self.owner)
            .field("candidates", &self.candidates.len())
            .field("overflow", &self.overflow)
            .finish()
    }
}

/// Bindings and candidate secrets of every application followed on this node.
#[derive(Default)]
pub struct Claims {
    apps: RwLock<HashMap<AppId, AppClaims>>,
    /// Bindings made or dropped, not yet written.
    pending: Mutex<Vec<(AppId, Option<PodOwner>)>>,
    changed: Notify,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("applications", &self.read().len())
            .finish_non_exhaustive()
    }
}

impl Claims {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<AppId, AppClaims>> {
        self.apps.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<AppId, AppClaims>> {
        self.apps.write().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, app: &AppId, owner: Option<PodOwner>) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.retain(|(a, _)| a != app);
        p.push((app.clone(), owner));
        drop(p);
        self.changed.notify_one();
    }

    /// Takes back the bindings written before a restart (nothing to write again).
    pub fn restore(&self, owners: impl IntoIterator<Item = (AppId, PodOwner)>) {
        let mut apps = self.write();
        for (app, owner) in owners {
            apps.entry(app).or_default().owner = Some(owner);
        }
    }

    /// The driver pod an application is bound to.
    pub fn owner(&self, app: &AppId) -> Option<PodOwner> {
        self.read().get(app).and_then(|a| a.owner.clone())
    }

    /// Every binding.
    pub fn bound(&self) -> Vec<(AppId, PodOwner)> {
        self.read()
            .iter()
            .filter_map(|(id, a)| Some((id.clone(), a.owner.clone()?)))
            .collect()
    }

    /// Binds an application to `owner` unless it is bound already: `Ok(true)` for a new
    /// binding, `Ok(false)` when it was bound to `owner` already, `Err` with the driver pod it
    /// is bound to otherwise (the first binding stays).
    ///
    /// # Errors
    /// The application is bound to another driver pod.
    pub fn bind(&self, app: &AppId, owner: &PodOwner) -> Result<bool, PodOwner> {
        let mut apps = self.write();
        let a = apps.entry(app.clone()).or_default();
        match &a.owner {
            Some(o) if o == owner => return Ok(false),
            Some(o) => return Err(o.clone()),
            None => a.owner = Some(owner.clone()),
        }
        drop(apps);
        self.queue(app, Some(owner.clone()));
        Ok(true)
    }

    /// Forgets an application: its binding (to be written) and its secrets.
    pub fn unbind(&self, app: &AppId) {
        let removed = self.write().remove(app);
        if removed.is_some_and(|a| a.owner.is_some()) {
            self.queue(app, None);
        }
    }

    /// Keeps `secret` as the candidate of `claimant` for `app`; `live` when the claimant has
    /// an executor pod on this node that has not ended (see [`MAX_CANDIDATES`]).
    pub fn offer(&self, app: &AppId, claimant: &PodOwner, secret: &[u8], live: bool) -> Offered {
        let mut apps = self.write();
        let a = apps.entry(app.clone()).or_default();
        if let Some(c) = a.candidates.iter_mut().find(|c| c.claimant == *claimant) {
            c.live |= live;
            return if bool::from(c.secret.as_slice().ct_eq(secret)) {
                Offered::Same
            } else {
                Offered::Conflict
            };
        }
        let owner = a.owner.clone();
        let is_other = |c: &Candidate| owner.as_ref() != Some(&c.claimant);
        let others = a.candidates.iter().filter(|c| is_other(c)).count();
        if owner.as_ref() != Some(claimant) && others >= MAX_CANDIDATES {
            // An ended claimant gives its place to a live one; nothing else is pushed out.
            let ended = a.candidates.iter().position(|c| !c.live && is_other(c));
            match ended {
                Some(i) if live => {
                    a.candidates.swap_remove(i);
                }
                _ => {
                    a.overflow |= live;
                    return Offered::Full;
                }
            }
        }
        a.candidates.push(Candidate {
            claimant: claimant.clone(),
            secret: secret.to_vec(),
            live,
        });
        Offered::New
    }

    /// Drops the secrets of claimants no longer in `present` (the owner's stays: reducers on
    /// other nodes still fetch what its executors left here), marks which are `live`, and
    /// starts the count of claimants over.
    pub fn retain(&self, app: &AppId, present: &HashSet<&PodOwner>, live: &HashSet<&PodOwner>) {
        let mut apps = self.write();
        if let Some(a) = apps.get_mut(app) {
            let owner = a.owner.clone();
            a.candidates
                .retain(|c| owner.as_ref() == Some(&c.claimant) || present.contains(&c.claimant));
            for c in &mut a.candidates {
                c.live = live.contains(&c.claimant);
            }
            a.overflow = false;
        }
    }

    /// Forgets every secret of an application (its data went); the binding stays.
    pub fn forget_secrets(&self, app: &AppId) {
        if let Some(a) = self.write().get_mut(app) {
            a.candidates.clear();
            a.overflow = false;
        }
    }

    /// What authentication may use for an application (secrets copied).
    pub fn view(&self, app: &AppId) -> ClaimView {
        let apps = self.read();
        let Some(a) = apps.get(app) else {
            return ClaimView::default();
        };
        let mut candidates: Vec<(PodOwner, Vec<u8>)> = a
            .candidates
            .iter()
            .map(|c| (c.claimant.clone(), c.secret.clone()))
            .collect();
        // The owner's secret first: it is the one that succeeds.
        candidates.sort_by_key(|(c, _)| a.owner.as_ref() != Some(c));
        ClaimView {
            owner: a.owner.clone(),
            candidates,
            overflow: a.overflow,
        }
    }

    /// Whether an application is bound, or claimed by executor pods carrying a secret.
    pub fn held(&self, app: &AppId) -> bool {
        self.read()
            .get(app)
            .is_some_and(|a| a.owner.is_some() || !a.candidates.is_empty() || a.overflow)
    }

    /// The owner's secret of an application, when known.
    pub fn owner_secret(&self, app: &AppId) -> Option<Vec<u8>> {
        let apps = self.read();
        let a = apps.get(app)?;
        let owner = a.owner.as_ref()?;
        a.candidates
            .iter()
            .find(|c| c.claimant == *owner)
            .map(|c| c.secret.clone())
    }

    /// Applications with at least one secret known.
    pub fn with_secrets(&self) -> usize {
        self.read()
            .values()
            .filter(|a| !a.candidates.is_empty())
            .count()
    }

    /// Bindings made or dropped since the last call, to write.
    pub fn take_pending(&self) -> Vec<(AppId, Option<PodOwner>)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A binding change that could not be written, to try again (unless a newer one came).
    pub fn retry(&self, app: AppId, owner: Option<PodOwner>) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !p.iter().any(|(a, _)| *a == app) {
            p.push((app, owner));
        }
    }

    /// Resolves when a binding changed since the last call (or was never waited for).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(s: &str) -> AppId {
        s.parse().expect("app id")
    }

    fn owner(ns: &str, uid: &str) -> PodOwner {
        PodOwner {
            namespace: ns.into(),
            driver_uid: uid.into(),
        }
    }

    #[test]
    fn the_first_binding_stays_and_is_queued_once() {
        let c = Claims::default();
        let (a, v, t) = (app("spark-a"), owner("team-a", "v"), owner("team-b", "t"));
        assert_eq!(c.bind(&a, &v), Ok(true));
        assert_eq!(c.bind(&a, &v), Ok(false));
        assert_eq!(c.bind(&a, &t), Err(v.clone()));
        assert_eq!(c.owner(&a), Some(v.clone()));
        assert_eq!(c.take_pending(), vec![(a.clone(), Some(v))]);
        c.unbind(&a);
        assert_eq!(c.take_pending(), vec![(a.clone(), None)]);
        assert!(!c.held(&a));
        // A restored binding is not written again.
        c.restore([(a.clone(), t.clone())]);
        assert!(c.take_pending().is_empty());
        assert_eq!(c.bound(), vec![(a, t)]);
    }

    #[test]
    fn candidates_are_kept_per_claimant_the_owners_first_and_sticky() {
        let c = Claims::default();
        let (a, v, t) = (app("spark-a"), owner("team-a", "v"), owner("team-b", "t"));
        assert_eq!(c.offer(&a, &t, b"evil", true), Offered::New);
        assert_eq!(c.offer(&a, &v, b"good", true), Offered::New);
        assert_eq!(c.offer(&a, &v, b"good", true), Offered::Same);
        assert_eq!(c.offer(&a, &v, b"other", true), Offered::Conflict);
        assert!(c.held(&a));
        assert_eq!(c.owner_secret(&a), None);
        c.bind(&a, &v).unwrap();
        let view = c.view(&a);
        assert_eq!(view.candidates[0], (v.clone(), b"good".to_vec()));
        assert_eq!(view.candidates.len(), 2);
        // Every claimant's pods gone: the owner's secret stays, the other's goes.
        c.retain(&a, &HashSet::new(), &HashSet::new());
        assert_eq!(c.view(&a).candidates.len(), 1);
        assert_eq!(c.owner_secret(&a).as_deref(), Some(&b"good"[..]));
        assert_eq!(c.with_secrets(), 1);
        c.forget_secrets(&a);
        assert_eq!(c.owner_secret(&a), None);
        assert_eq!(c.owner(&a), Some(v));
    }

    #[test]
    fn claimants_beyond_the_limit_are_not_kept_but_the_owner_always_is() {
        let c = Claims::default();
        let a = app("spark-a");
        let many: Vec<PodOwner> = (0..=MAX_CANDIDATES)
            .map(|i| owner("team-b", &format!("t{i}")))
            .collect();
        for t in &many[..MAX_CANDIDATES] {
            assert_eq!(c.offer(&a, t, b"evil", true), Offered::New);
        }
        assert_eq!(
            c.offer(&a, &many[MAX_CANDIDATES], b"evil", true),
            Offered::Full
        );
        assert!(c.view(&a).overflow);
        let v = owner("team-a", "v");
        c.bind(&a, &v).unwrap();
        assert_eq!(c.offer(&a, &v, b"good", true), Offered::New);
        let present: HashSet<&PodOwner> = many[..2].iter().collect();
        c.retain(&a, &present, &present);
        let view = c.view(&a);
        assert!(!view.overflow);
        assert_eq!(view.candidates.len(), 3);
    }

    #[test]
    fn ended_claimants_never_crowd_out_a_live_one() {
        let c = Claims::default();
        let a = app("spark-a");
        // A tenant's pods named after the node, rejected by its kubelet: ended, each its own
        // claimant.
        for i in 0..MAX_CANDIDATES + 50 {
            let ended = c.offer(&a, &owner("team-b", &format!("t{i}")), b"evil", false);
            assert_eq!(
                ended,
                if i < MAX_CANDIDATES {
                    Offered::New
                } else {
                    Offered::Full
                }
            );
        }
        assert!(!c.view(&a).overflow, "ended claimants refuse nothing");
        // The application's own running executor: its secret is kept in an ended one's place.
        let v = owner("team-a", "v");
        assert_eq!(c.offer(&a, &v, b"good", true), Offered::New);
        let view = c.view(&a);
        assert!(!view.overflow);
        assert_eq!(view.candidates.len(), MAX_CANDIDATES);
        assert!(view.candidates.iter().any(|(o, s)| *o == v && s == b"good"));
        // Live claimants beyond the limit (a node running more pods) refuse the application.
        for i in 0..MAX_CANDIDATES {
            c.offer(&a, &owner("team-c", &format!("l{i}")), b"evil", true);
        }
        assert!(c.view(&a).overflow);
    }
}
