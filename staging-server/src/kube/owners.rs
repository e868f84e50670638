//! What the owner pods of a resource show, and what follows for the resource: a committed
//! resource names its owner (namespace and labels, or a pod uid); it goes when its owner pods
//! have existed and all ended (`Succeeded`, `Failed` or gone) for the end grace, or when none
//! appeared within the start grace after the upload. These are pure functions of a pod list and
//! the clock; [`super::watch`] lists the pods and acts on the decisions.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

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

/// Reads a list of the owner's pods.
pub(crate) fn seen(owner: &Owner, pods: &[Pod]) -> Seen {
    let mine = pods.iter().filter(|p| {
        owner
            .pod_uid
            .as_deref()
            .is_none_or(|u| p.metadata.uid.as_deref() == Some(u))
    });
    let mut any = false;
    for p in mine {
        any = true;
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if !matches!(phase, Some("Succeeded" | "Failed")) {
            return Seen::Live;
        }
    }
    if any { Seen::Ended } else { Seen::None }
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
        _ => {
            let age = u64::try_from(now_ms.saturating_sub(r.committed_at)).unwrap_or(0);
            (Duration::from_millis(age) >= settings.start_grace)
                .then_some(DeleteReason::OwnerNeverStarted)
        }
    }
}

/// The label selector of an owner.
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

    fn pod(uid: &str, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"uid": uid}, "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn live_pods_keep_a_resource_and_ended_ones_release_it_after_the_grace() {
        let s = settings();
        let t0 = Instant::now();
        let r = resource(Some(1_000_100));
        assert_eq!(seen(&r.owner, &[pod("a", "Running")]), Seen::Live);
        assert_eq!(
            seen(&r.owner, &[pod("a", "Succeeded"), pod("b", "Pending")]),
            Seen::Live
        );
        assert_eq!(
            seen(&r.owner, &[pod("a", "Succeeded"), pod("b", "Failed")]),
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
        assert_eq!(seen(&r.owner, &[pod("a", "Pending")]), Seen::Live);
        assert_eq!(decide(&r, i64::MAX, Seen::Live, None, t0, &s), None);
    }

    #[test]
    fn an_owner_uid_selects_that_pod_only() {
        let mut r = resource(None);
        r.owner.pod_uid = Some("b".into());
        assert_eq!(seen(&r.owner, &[pod("a", "Running")]), Seen::None);
        assert_eq!(
            seen(&r.owner, &[pod("a", "Running"), pod("b", "Failed")]),
            Seen::Ended
        );
    }
}
