//! Who may end an application besides its own lifecycle.
//!
//! An application registered over gRPC (it holds a token) or by a Spark client that
//! authenticated with a secret the operator configured is [`Lifecycle::Own`]: unregistration,
//! heartbeat timeout and idle TTL end it, the pod watch never does (and, see
//! `super::authority`, only the operator's secrets authenticate for one of Spark's). The
//! others ([`Lifecycle::Pods`]) may also be ended by the pod watch, when the driver pod they
//! are bound to ([`PodOwner`], persisted, see `super::claims`) ends.

use super::secrets::Source;
use crate::error::Result;
use spark_protocol::ids::AppId;

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

impl From<OwnerRow> for PodOwner {
    fn from(r: OwnerRow) -> Self {
        Self {
            namespace: r.namespace,
            driver_uid: r.driver_uid,
        }
    }
}

impl Core {
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

    /// Every application's driver pod as written in the state directory.
    ///
    /// # Errors
    /// Database errors.
    pub async fn pod_owners(&self) -> Result<Vec<(AppId, PodOwner)>> {
        let rows = self.inner.registry.db().owners().await?;
        Ok(rows
            .into_iter()
            .map(|(app, r)| (app, PodOwner::from(r)))
            .collect())
    }

    /// Writes (or, with `None`, deletes) the driver pod an application follows; the binding
    /// itself is made in [`Core::claims`].
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
