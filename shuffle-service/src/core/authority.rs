//! One application id, one authority: an application registered over gRPC is served over
//! gRPC only, and one Spark's side holds is never registered over gRPC. On Spark's side, which
//! secrets authenticate a client of an application, decided in one place ([`offers`]) from
//! what a tenant cannot forge: the registry (persisted), the operator's secret files, and the
//! bindings and candidate secrets of [`super::claims`].
//!
//! Spark's side holds an application once one of its clients registered it over Spark's
//! protocol, once it is bound to a driver pod (by a client proving its pods' secret, or by the
//! pod watch without learned secrets), once executor pods on this node carry a secret for it
//! (with learned secrets on), or when the operator gave it a secret file of its own. What is registered first keeps the id; Spark on Kubernetes makes its ids
//! random (`spark-<uuid>`), so nobody can claim one over gRPC before the application exists.

use super::secrets::Source;
use crate::error::{Result, ShuffleError};
use spark_protocol::ids::AppId;

use super::Core;
use super::PodOwner;
use super::claims::ClaimView;
use super::ownership::Lifecycle;

/// Who registers: the front end, and for Spark's protocol where the secret its client proved
/// came from (`None`: unauthenticated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registrant {
    /// The gRPC API (the application's token, or an admin token).
    Grpc,
    /// Spark's protocol.
    Spark(Option<Source>),
}

impl Registrant {
    /// Who may end what it registers.
    pub fn lifecycle(self) -> Lifecycle {
        match self {
            Self::Grpc => Lifecycle::Own,
            Self::Spark(source) => Lifecycle::of_spark(source),
        }
    }
}

/// A secret that may authenticate a Spark client of an application. `Debug` hides it.
#[derive(Clone)]
pub struct Offer {
    /// The secret.
    pub secret: Vec<u8>,
    /// Where it came from.
    pub source: Source,
    /// For a learned secret, the driver pod whose executor pods carry it.
    pub claimant: Option<PodOwner>,
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offer")
            .field("source", &self.source)
            .field("claimant", &self.claimant)
            .finish_non_exhaustive()
    }
}

/// Why a Spark client may not authenticate as an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Registered over gRPC: gRPC's alone.
    GrpcApplication,
    /// Bound to a driver pod, or registered with a learned secret, whose secret is not known
    /// yet (after a restart, until an executor pod of that driver shows it again): the shared
    /// secret never stands in for it.
    AwaitingLearnedSecret,
    /// More driver pods claim it than are followed (`claims::MAX_CANDIDATES`).
    TooManyClaimants,
    /// The client proved the secret of another claimant than the driver pod it is bound to.
    BoundToAnotherDriver,
    /// No source has a secret for it.
    NoSecret,
}

impl Refusal {
    /// The metric and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrpcApplication => "grpc_application",
            Self::AwaitingLearnedSecret => "awaiting_learned_secret",
            Self::TooManyClaimants => "too_many_claimants",
            Self::BoundToAnotherDriver => "bound_to_another_driver",
            Self::NoSecret => "no_secret",
        }
    }

    /// The text the client gets.
    pub fn message(self, app: &AppId) -> String {
        match self {
            Self::GrpcApplication => format!(
                "application {app} was registered through the gRPC API; Spark's protocol may not use it"
            ),
            Self::AwaitingLearnedSecret => format!(
                "application {app} authenticates with the secret of its executor pods, not known on this node yet"
            ),
            Self::TooManyClaimants => {
                format!("application {app} is claimed by too many driver pods on this node")
            }
            Self::BoundToAnotherDriver => format!(
                "application {app} is bound to another driver pod on this node; Authentication failed."
            ),
            Self::NoSecret => format!("no secret for application {app}"),
        }
    }
}

/// What decides the secrets of an application.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// It holds a gRPC token.
    pub grpc: bool,
    /// Its own secret file (`--spark-auth-secret-dir`).
    pub per_app: Option<Vec<u8>>,
    /// Registered by a client that proved an operator's secret: operator's secrets only.
    pub operator: bool,
    /// Registered by a client that proved a learned secret.
    pub learned_mark: bool,
    /// Secrets are learned from pods.
    pub learn: bool,
    /// Binding and candidates.
    pub claims: ClaimView,
    /// The shared secret.
    pub shared: Option<Vec<u8>>,
}

/// The secrets that authenticate a Spark client of an application, in the order to try them.
///
/// # Errors
/// The [`Refusal`] that applies.
pub(crate) fn offers(f: Facts) -> std::result::Result<Vec<Offer>, Refusal> {
    let operator = |s: Vec<u8>| Offer {
        secret: s,
        source: Source::Operator,
        claimant: None,
    };
    if f.grpc {
        return Err(Refusal::GrpcApplication);
    }
    if let Some(s) = f.per_app {
        return Ok(vec![operator(s)]);
    }
    let c = f.claims;
    // Tied to its pods: registered with a learned secret, or bound by one (a binding of an
    // application the operator's secret registered first, made by the pod watch without
    // learned secrets, decides only its end).
    let pods_held = f.learned_mark || (c.owner.is_some() && !f.operator);
    // Claimed by executor pods with a secret: theirs, never the shared one in their stead.
    let claimed = !f.operator && (!c.candidates.is_empty() || c.overflow);
    if f.learn && (pods_held || claimed) {
        if c.overflow && c.owner.is_none() {
            return Err(Refusal::TooManyClaimants);
        }
        if c.candidates.is_empty() {
            return Err(Refusal::AwaitingLearnedSecret);
        }
        return Ok(c
            .candidates
            .into_iter()
            .map(|(claimant, secret)| Offer {
                secret,
                source: Source::Learned,
                claimant: Some(claimant),
            })
            .collect());
    }
    // The operator's applications and those nothing ties to pods: the shared secret.
    f.shared.map(|s| vec![operator(s)]).ok_or(Refusal::NoSecret)
}

impl Core {
    /// The secrets that may authenticate a Spark client of `app` (blocking read of a small
    /// file), in the order to try them; a refusal is counted and logged.
    ///
    /// # Errors
    /// The [`Refusal`] that applies.
    pub fn spark_offers(&self, app: &AppId) -> std::result::Result<Vec<Offer>, Refusal> {
        let secrets = &self.inner.secrets;
        let registry = &self.inner.registry;
        let facts = Facts {
            grpc: registry.has_token(app),
            per_app: secrets.per_app(app),
            operator: registry.own_lifecycle(app),
            learned_mark: registry.learned(app),
            learn: secrets.learns(),
            claims: self.inner.claims.view(app),
            shared: secrets.shared_secret().map(<[u8]>::to_vec),
        };
        offers(facts).inspect_err(|r| {
            if *r != Refusal::NoSecret {
                self.refuse_authority("spark", app, r.as_str());
            }
        })
    }

    /// A Spark client of `app` proved `offer`: a learned secret binds the application to its
    /// claimant, unless it is bound to another driver pod; returns the secret's source.
    ///
    /// # Errors
    /// [`Refusal::BoundToAnotherDriver`], or [`Refusal::GrpcApplication`] when the gRPC API
    /// registered the application meanwhile.
    pub fn spark_accept(&self, app: &AppId, offer: &Offer) -> std::result::Result<Source, Refusal> {
        let r = match &offer.claimant {
            Some(claimant) => match self.inner.claims.bind(app, claimant) {
                Ok(new) => {
                    if new {
                        tracing::info!(app = %app, namespace = %claimant.namespace,
                            driver_uid = %claimant.driver_uid,
                            "application bound to the driver pod whose executor pods' secret a client proved");
                    }
                    Ok(offer.source)
                }
                Err(owner) => {
                    // Counted and logged at a bounded rate below; the pods, for debugging.
                    tracing::debug!(app = %app, bound_namespace = %owner.namespace,
                        bound_driver_uid = %owner.driver_uid, claimant_namespace = %claimant.namespace,
                        claimant_driver_uid = %claimant.driver_uid, "binding refused");
                    Err(Refusal::BoundToAnotherDriver)
                }
            },
            None => Ok(offer.source),
        };
        let r = r.and_then(|s| {
            if self.inner.registry.has_token(app) {
                Err(Refusal::GrpcApplication)
            } else {
                Ok(s)
            }
        });
        r.inspect_err(|r| self.refuse_authority("spark", app, r.as_str()))
    }

    /// Whether Spark's side holds `app` (see the module's doc).
    pub(crate) fn held_by_spark(&self, app: &AppId) -> bool {
        (self.inner.registry.has_app(app) && !self.inner.registry.has_token(app))
            || self.inner.claims.held(app)
            || self.inner.secrets.has_per_app(app)
    }

    /// Refuses a gRPC registration of an application Spark's side holds.
    ///
    /// # Errors
    /// [`ShuffleError::HeldBySpark`] when it does.
    pub(crate) fn check_grpc_registration(&self, app: &AppId) -> Result<()> {
        if !self.inner.registry.has_token(app) && self.held_by_spark(app) {
            self.refuse_authority("grpc", app, "spark_application");
            return Err(ShuffleError::HeldBySpark(app.to_string()));
        }
        Ok(())
    }

    /// Counts and logs (at a bounded rate) a refusal for the application's authority:
    /// `reason` is a [`Refusal`]'s label, or `spark_application` for a gRPC registration.
    pub(crate) fn refuse_authority(
        &self,
        protocol: &'static str,
        app: &AppId,
        reason: &'static str,
    ) {
        self.inner
            .metrics
            .authority_refusals
            .with_label_values(&[protocol, reason])
            .inc();
        if let Some(left_out) = self.inner.authority_log.check() {
            let what = match reason {
                "spark_application" => {
                    "gRPC registration refused: the application belongs to Spark's protocol on this node"
                }
                "grpc_application" => {
                    "Spark client refused: the application was registered through the gRPC API"
                }
                "awaiting_learned_secret" => {
                    "Spark client refused: the application authenticates with its executor pods' secret, not known on this node yet (the shared secret does not stand in)"
                }
                "bound_to_another_driver" => {
                    "Spark client refused: it proved the secret of another driver pod's executor pods than the one the application is bound to"
                }
                _ => "Spark client refused: too many driver pods claim the application",
            };
            tracing::warn!(app = %app, protocol, reason, left_out, "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(ns: &str, uid: &str) -> PodOwner {
        PodOwner {
            namespace: ns.into(),
            driver_uid: uid.into(),
        }
    }

    fn claimants(v: &[(&PodOwner, &[u8])]) -> Vec<(PodOwner, Vec<u8>)> {
        v.iter().map(|(o, s)| ((*o).clone(), s.to_vec())).collect()
    }

    fn secrets(r: std::result::Result<Vec<Offer>, Refusal>) -> Vec<(Vec<u8>, Source)> {
        r.expect("offers")
            .into_iter()
            .map(|o| (o.secret, o.source))
            .collect()
    }

    fn shared() -> Option<Vec<u8>> {
        Some(b"shared".to_vec())
    }

    #[test]
    fn a_grpc_application_is_refused_whatever_the_secret() {
        let f = Facts {
            grpc: true,
            per_app: Some(b"file".to_vec()),
            shared: shared(),
            ..Facts::default()
        };
        assert_eq!(offers(f).unwrap_err(), Refusal::GrpcApplication);
    }

    #[test]
    fn the_operators_secrets_answer_for_operator_applications_only_them() {
        let v = owner("team-a", "v");
        let f = Facts {
            per_app: Some(b"file".to_vec()),
            learn: true,
            claims: ClaimView {
                candidates: claimants(&[(&v, b"learned")]),
                ..ClaimView::default()
            },
            shared: shared(),
            ..Facts::default()
        };
        assert_eq!(
            secrets(offers(f)),
            vec![(b"file".to_vec(), Source::Operator)]
        );
        // Registered with the shared secret: claimants' pods, and a binding the pod watch made
        // without learned secrets, change nothing.
        let f = Facts {
            operator: true,
            learn: true,
            claims: ClaimView {
                owner: Some(v.clone()),
                candidates: claimants(&[(&v, b"learned")]),
                ..ClaimView::default()
            },
            shared: shared(),
            ..Facts::default()
        };
        assert_eq!(
            secrets(offers(f)),
            vec![(b"shared".to_vec(), Source::Operator)]
        );
    }

    #[test]
    fn a_bound_or_learned_application_never_falls_back_to_the_shared_secret() {
        let v = owner("team-a", "v");
        // Bound, its secret not seen again since a restart.
        let bound = Facts {
            learn: true,
            claims: ClaimView {
                owner: Some(v.clone()),
                ..ClaimView::default()
            },
            shared: shared(),
            ..Facts::default()
        };
        assert_eq!(offers(bound).unwrap_err(), Refusal::AwaitingLearnedSecret);
        // Registered with a learned secret, its binding not written before a crash; also
        // once an operator's secret file answered for it and was taken away again.
        for operator in [false, true] {
            let marked = Facts {
                learn: true,
                learned_mark: true,
                operator,
                shared: shared(),
                ..Facts::default()
            };
            assert_eq!(offers(marked).unwrap_err(), Refusal::AwaitingLearnedSecret);
        }
        // Claimed by executor pods with a secret: theirs, not the shared one.
        let claimed = Facts {
            learn: true,
            claims: ClaimView {
                candidates: claimants(&[(&v, b"learned")]),
                ..ClaimView::default()
            },
            shared: shared(),
            ..Facts::default()
        };
        assert_eq!(
            secrets(offers(claimed)),
            vec![(b"learned".to_vec(), Source::Learned)]
        );
        // Nothing known about it: the shared secret (an application without pods).
        let unknown = Facts {
            learn: true,
            shared: shared(),
            ..Facts::default()
        };
        assert_eq!(
            secrets(offers(unknown)),
            vec![(b"shared".to_vec(), Source::Operator)]
        );
        // Without learned secrets a binding only decides the end of the data.
        let not_learning = Facts {
            claims: ClaimView {
                owner: Some(v),
                ..ClaimView::default()
            },
            shared: shared(),
            ..Facts::default()
        };
        assert_eq!(
            secrets(offers(not_learning)),
            vec![(b"shared".to_vec(), Source::Operator)]
        );
    }

    #[test]
    fn every_claimant_is_a_candidate_until_too_many_claim() {
        let (v, t) = (owner("team-a", "v"), owner("team-b", "t"));
        let f = Facts {
            learn: true,
            claims: ClaimView {
                candidates: claimants(&[(&t, b"evil"), (&v, b"good")]),
                ..ClaimView::default()
            },
            ..Facts::default()
        };
        let o = offers(f).unwrap();
        let who: Vec<_> = o.iter().map(|o| o.claimant.clone().unwrap()).collect();
        assert_eq!(who, vec![t.clone(), v.clone()]);
        let crowded = Facts {
            learn: true,
            claims: ClaimView {
                candidates: claimants(&[(&t, b"evil")]),
                overflow: true,
                ..ClaimView::default()
            },
            ..Facts::default()
        };
        assert_eq!(offers(crowded).unwrap_err(), Refusal::TooManyClaimants);
        // Once bound, the owner's secret still answers however many claim.
        let bound = Facts {
            learn: true,
            claims: ClaimView {
                owner: Some(v.clone()),
                candidates: claimants(&[(&v, b"good")]),
                overflow: true,
            },
            ..Facts::default()
        };
        assert_eq!(
            secrets(offers(bound)),
            vec![(b"good".to_vec(), Source::Learned)]
        );
    }

    #[test]
    fn registrants_lifecycles() {
        assert_eq!(Registrant::Grpc.lifecycle(), Lifecycle::Own);
        assert_eq!(
            Registrant::Spark(Some(Source::Operator)).lifecycle(),
            Lifecycle::Own
        );
        assert_eq!(
            Registrant::Spark(Some(Source::Learned)).lifecycle(),
            Lifecycle::Pods
        );
        assert_eq!(Registrant::Spark(None).lifecycle(), Lifecycle::Pods);
    }
}
