//! Who may end an application besides its own lifecycle, and which secrets answer for it.
//!
//! An application registered over gRPC (it holds a token) or by a Spark client that
//! authenticated with a secret the operator configured is [`Lifecycle::Own`]: unregistration,
//! heartbeat timeout and idle TTL end it, the pod watch never does, and only the operator's
//! secrets authenticate for it (a secret learned from pods never replaces or shadows them).
//! The others ([`Lifecycle::Pods`]) may also be ended by the pod watch, when the driver pod
//! they are bound to ([`PodOwner`], persisted) ends.

use crate::error::Result;
use crate::ids::AppId;
use crate::spark::secrets::Source;

use super::Core;
use super::db::OwnerRow;

/// Who may end the application a registration creates or joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Its own lifecycle, or the end of the driver pod it is bound to: Spark's protocol,
    /// unauthenticated or authenticated with a secret learned from the application's pods.
    Pods,
    /// Its own lifecycle only: the gRPC API, or a secret the operator configured. The mark
    /// is persisted and stays once set.
    Own,
}

impl Lifecycle {
    /// The lifecycle of a Spark-protocol registration made after authenticating with a
    /// secret from `source` (`None`: unauthenticated).
    pub fn of_spark(source: Option<Source>) -> Self {
        match source {
            Some(Source::Operator) => Self::Own,
            Some(Source::Learned) | None => Self::Pods,
        }
    }
}

/// The driver pod an application's data on this node follows: named by uid in the
/// controlling owner reference of its executor pods, in their own namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodOwner {
    /// The driver pod's namespace (the executor pods').
    pub namespace: String,
    /// The driver pod's uid: a pod recreated with the same name is another pod.
    pub driver_uid: String,
}

impl Core {
    /// The secret that authenticates a Spark client of `app`, and its source: a learned
    /// secret is never used for an application with its own lifecycle.
    pub fn spark_secret(&self, app: &AppId) -> Option<(Vec<u8>, Source)> {
        let learned_allowed = !self.inner.registry.own_lifecycle(app);
        self.inner.secrets.find(app, learned_allowed)
    }

    /// Whether only the application's own lifecycle may end it.
    pub fn own_lifecycle(&self, app: &AppId) -> bool {
        self.inner.registry.own_lifecycle(app)
    }

    /// Removes an application because the driver pod that owns it ended, unless it has its
    /// own lifecycle; returns the directory count, `None` when nothing was removed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn remove_app_following_pods(
        &self,
        app: &AppId,
        reason: &'static str,
    ) -> Result<Option<usize>> {
        let removed = self.inner.registry.remove_app_following_pods(app).await?;
        Ok(removed.map(|r| self.discard(r, reason)))
    }

    /// Every application's persisted driver pod.
    ///
    /// # Errors
    /// Database errors.
    pub async fn pod_owners(&self) -> Result<Vec<(AppId, PodOwner)>> {
        let rows = self.inner.registry.db().owners().await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let app = r.app_id.parse().ok()?;
                Some((
                    app,
                    PodOwner {
                        namespace: r.namespace,
                        driver_uid: r.driver_uid,
                    },
                ))
            })
            .collect())
    }

    /// Persists (or, with `None`, forgets) the driver pod an application follows.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_pod_owner(&self, app: &AppId, owner: Option<&PodOwner>) -> Result<()> {
        let db = self.inner.registry.db();
        match owner {
            Some(o) => {
                db.put_owner(OwnerRow {
                    app_id: app.to_string(),
                    namespace: o.namespace.clone(),
                    driver_uid: o.driver_uid.clone(),
                })
                .await
            }
            None => db.delete_owner(app.to_string()).await,
        }
    }
}
