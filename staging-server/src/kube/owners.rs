//! What the owner pods of a resource show, and what follows for the resource: a committed
//! resource names its owner (namespace and labels, or a pod uid); it goes when its owner pods
//! have existed and all ended (`Succeeded`, `Failed` or gone) for the end grace, or when none
//! appeared within the start grace after the upload. These are pure functions of a pod list and
//! the clock; [`super::watch`] acts on the decisions.
//!
//! Owners are followed by a few watches, not by a list per owner: each owner belongs to a
//! [`Group`] named by one of its label keys (the submission label `submit` sets, Spark's
//! application label, or else its alphabetically first key other than `spark-role`), and one
//! watch across the cluster selects the pods carrying that key (with `spark-role=<role>` when
//! the owner names a role). The number of watches follows the number of distinct keys, not of
//! owners or jobs.

use std::time::{Duration, Instant};

use staging_api::wire::SUBMISSION_LABEL;

use super::pods::OwnerPod;
use crate::config::OwnerSettings;
use crate::db::{OwnedResource, Owner};
use crate::lifecycle::DeleteReason;

/// What the owner pods of a resource show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// No matching pod.
    None,
    /// At least one pod not in a final phase.
    Live,
    /// Matching pods, all `Succeeded` or `Failed`.
    Ended,
}

/// Reads the owner's pods (those [`OwnerPod::belongs_to`] it).
pub(crate) fn seen<'a>(pods: impl IntoIterator<Item = &'a OwnerPod>) -> Seen {
    let mut any = false;
    for p in pods {
        any = true;
        if !matches!(p.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return Seen::Live;
        }
    }
    if any { Seen::Ended } else { Seen::None }
}

/// The label of Spark's pods that names their role (`driver`, `executor`).
const ROLE_LABEL: &str = "spark-role";

/// The label Spark gives every pod of an application.
const APP_LABEL: &str = "spark-app-selector";

/// The owners followed by one watch: those whose labels include `key` (and `spark-role=role`
/// when `role` is set); the watch selects every pod of the cluster with that key and role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Group {
    /// The label key the owners of the group all name.
    pub(super) key: String,
    /// The `spark-role` they all name, if any.
    pub(super) role: Option<String>,
}

impl Group {
    /// The group that follows `owner`; `None` for an owner without labels (followed by a list
    /// of its namespace's pods instead).
    pub(super) fn of(owner: &Owner) -> Option<Self> {
        let labels = owner.labels.as_map();
        let key = [SUBMISSION_LABEL, APP_LABEL]
            .into_iter()
            .find(|k| labels.contains_key(*k))
            .or_else(|| labels.keys().map(String::as_str).find(|k| *k != ROLE_LABEL))
            .or_else(|| labels.keys().next().map(String::as_str))?;
        let role = if key == ROLE_LABEL {
            None
        } else {
            labels.get(ROLE_LABEL).cloned()
        };
        Some(Self {
            key: key.to_owned(),
            role,
        })
    }

    /// The label selector of the group's watch.
    pub(super) fn selector(&self) -> String {
        match &self.role {
            Some(r) => format!("{},{ROLE_LABEL}={r}", self.key),
            None => self.key.clone(),
        }
    }

    /// Whether the group is one of the project's or Spark's own (always watched, at most 5):
    /// the submission label with no role or one of Spark's two, Spark's application label with
    /// one of Spark's two roles. Other groups, whose keys and roles uploaders choose, are
    /// watched up to a limit.
    pub(super) fn is_well_known(&self) -> bool {
        match self.role.as_deref() {
            Some("driver" | "executor") => self.key == SUBMISSION_LABEL || self.key == APP_LABEL,
            // Spark's application label alone selects every Spark pod of the cluster.
            None => self.key == SUBMISSION_LABEL,
            Some(_) => false,
        }
    }
}

/// How long ago the resource was committed (what the start grace is measured against).
pub(super) fn age(r: &OwnedResource, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms.saturating_sub(r.committed_at)).unwrap_or(0))
}

/// The decision for one resource, given what its owner pods show now.
pub(crate) fn decide(
    r: &OwnedResource,
    now_ms: i64,
    seen: Seen,
    ended_since: Option<Instant>,
    now: Instant,
    settings: &OwnerSettings,
) -> Option<DeleteReason> {
    let started = r.owner_seen_at.is_some() || seen != Seen::None;
    match seen {
        Seen::Live => None,
        Seen::Ended | Seen::None if started => ended_since
            .filter(|t| now.duration_since(*t) >= settings.end_grace)
            .map(|_| DeleteReason::OwnerEnded),
        _ => (age(r, now_ms) >= settings.start_grace).then_some(DeleteReason::OwnerNeverStarted),
    }
}

/// The label selector of an owner (for the list of an owner no group follows).
pub(super) fn selector(owner: &Owner) -> String {
    owner
        .labels
        .as_map()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use staging_api::ids::ResourceId;

    fn settings() -> OwnerSettings {
        OwnerSettings {
            start_grace: Duration::from_secs(600),
            end_grace: Duration::from_secs(30),
            interval: Duration::from_secs(15),
            delete_secrets: true,
        }
    }

    fn resource(seen_at: Option<i64>) -> OwnedResource {
        OwnedResource {
            id: ResourceId::random(),
            owner: Owner {
                namespace: "ns".parse().unwrap(),
                labels: staging_api::ids::Labels::parse_selector("spark-role=driver").unwrap(),
                pod_uid: None,
            },
            committed_at: 1_000_000,
            owner_seen_at: seen_at,
        }
    }

    fn pod(uid: &str, phase: &str) -> OwnerPod {
        OwnerPod {
            namespace: "ns".into(),
            uid: uid.into(),
            labels: [("spark-role".to_owned(), "driver".to_owned())].into(),
            phase: Some(phase.into()),
        }
    }

    /// What `owner`'s pods among `pods` show.
    fn seen_by(owner: &Owner, pods: &[OwnerPod]) -> Seen {
        seen(pods.iter().filter(|p| p.belongs_to(owner)))
    }

    fn owner(labels: &str) -> Owner {
        Owner {
            namespace: "ns".parse().unwrap(),
            labels: staging_api::ids::Labels::parse_selector(labels).unwrap(),
            pod_uid: None,
        }
    }

    #[test]
    fn owners_are_grouped_by_the_submission_or_application_label_else_their_first_other_key() {
        let g = |l: &str| Group::of(&owner(l)).map(|g| g.selector());
        assert_eq!(
            g("staging-server/submission=s1,spark-role=driver,team=x").as_deref(),
            Some("staging-server/submission,spark-role=driver")
        );
        assert_eq!(
            g("spark-app-selector=spark-1,spark-role=driver,a=b").as_deref(),
            Some("spark-app-selector,spark-role=driver")
        );
        assert_eq!(
            g("job=x,spark-role=driver").as_deref(),
            Some("job,spark-role=driver")
        );
        assert_eq!(g("team=x,job=y").as_deref(), Some("job"));
        assert_eq!(g("spark-role=driver").as_deref(), Some("spark-role"));
        assert_eq!(g(""), None);
        assert!(
            Group::of(&owner("spark-app-selector=a,spark-role=driver"))
                .unwrap()
                .is_well_known()
        );
        // Spark's label alone would select every Spark pod of the cluster.
        assert!(
            !Group::of(&owner("spark-app-selector=a"))
                .unwrap()
                .is_well_known()
        );
        assert!(!Group::of(&owner("job=a")).unwrap().is_well_known());
        assert!(
            !Group::of(&owner("spark-app-selector=a,spark-role=r7"))
                .unwrap()
                .is_well_known()
        );
    }

    #[test]
    fn live_pods_keep_a_resource_and_ended_ones_release_it_after_the_grace() {
        let s = settings();
        let t0 = Instant::now();
        let r = resource(Some(1_000_100));
        assert_eq!(seen_by(&r.owner, &[pod("a", "Running")]), Seen::Live);
        assert_eq!(
            seen_by(&r.owner, &[pod("a", "Succeeded"), pod("b", "Pending")]),
            Seen::Live
        );
        assert_eq!(
            seen_by(&r.owner, &[pod("a", "Succeeded"), pod("b", "Failed")]),
            Seen::Ended
        );
        assert_eq!(decide(&r, 2_000_000, Seen::Live, None, t0, &s), None);
        assert_eq!(decide(&r, 2_000_000, Seen::Ended, Some(t0), t0, &s), None);
        assert_eq!(
            decide(&r, 2_000_000, Seen::Ended, Some(t0), t0 + s.end_grace, &s),
            Some(DeleteReason::OwnerEnded)
        );
        // Gone (deleted) after being seen: ended as well.
        assert_eq!(
            decide(&r, 2_000_000, Seen::None, Some(t0), t0 + s.end_grace, &s),
            Some(DeleteReason::OwnerEnded)
        );
    }

    #[test]
    fn owners_that_never_appear_release_after_the_start_grace_only() {
        let s = settings();
        let t0 = Instant::now();
        let r = resource(None);
        assert_eq!(
            decide(&r, 1_000_000 + 599_000, Seen::None, None, t0, &s),
            None
        );
        assert_eq!(
            decide(&r, 1_000_000 + 600_000, Seen::None, None, t0, &s),
            Some(DeleteReason::OwnerNeverStarted)
        );
        // A queued (Pending) driver keeps it however long it waits.
        assert_eq!(seen_by(&r.owner, &[pod("a", "Pending")]), Seen::Live);
        assert_eq!(decide(&r, i64::MAX, Seen::Live, None, t0, &s), None);
    }

    #[test]
    fn an_owner_uid_selects_that_pod_only() {
        let mut r = resource(None);
        r.owner.pod_uid = Some("b".into());
        assert_eq!(seen_by(&r.owner, &[pod("a", "Running")]), Seen::None);
        assert_eq!(
            seen_by(&r.owner, &[pod("a", "Running"), pod("b", "Failed")]),
            Seen::Ended
        );
    }
}
