//! Uploads authenticated with Kubernetes credentials (`--kube-auth`): the bearer token is
//! checked with the API server (`TokenReview`), and an upload for namespace N is allowed only
//! if that identity may create pods in N (`SubjectAccessReview`): whoever may run a job in a
//! namespace may stage its files, and nobody else.
//!
//! Answers are cached briefly, keyed by the token's SHA-256 (the token itself is never kept
//! or logged): reviews of a valid token for [`REVIEW_TTL`], access decisions for
//! [`ALLOWED_TTL`] (allowed) or [`DENIED_TTL`] (denied, so that a new RoleBinding takes effect
//! quickly). Failed API calls are never cached and refuse with 503.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use prometheus::{IntCounterVec, Opts, Registry};

/// How long a successful token review is reused.
pub const REVIEW_TTL: Duration = Duration::from_secs(60);
/// How long an allowed access decision is reused.
pub const ALLOWED_TTL: Duration = Duration::from_secs(30);
/// How long a denied access decision is reused.
pub const DENIED_TTL: Duration = Duration::from_secs(5);
/// Cached entries of each kind before the cache is emptied.
const MAX_ENTRIES: usize = 10_000;

/// An authenticated Kubernetes identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name (`system:serviceaccount:ns:name` for service accounts).
    pub user: String,
    /// User uid.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// Why an upload is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// The API server does not know the token.
    #[error("the Kubernetes credential is not valid")]
    Unauthenticated,
    /// The identity may not create pods in the namespace.
    #[error("{user} may not create pods in namespace {namespace}")]
    Forbidden {
        /// Who.
        user: String,
        /// Where.
        namespace: String,
    },
    /// The API server could not be asked.
    #[error("the Kubernetes API server cannot verify the credential now: {0}")]
    Unavailable(String),
}

/// The reviewer.
pub struct KubeAuth {
    client: Client,
    reviews: Mutex<HashMap<[u8; 32], (Instant, Identity)>>,
    decisions: Mutex<HashMap<(String, String), (Instant, bool)>>,
    outcomes: IntCounterVec,
}

impl std::fmt::Debug for KubeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuth").finish_non_exhaustive()
    }
}

impl KubeAuth {
    /// A reviewer using `client`, counting outcomes in `staging_kube_auth_total`.
    ///
    /// # Errors
    /// A registration conflict.
    pub fn new(client: Client, registry: &Registry) -> prometheus::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "staging_kube_auth_total",
                "Uploads checked with Kubernetes credentials, by outcome (allowed, unauthenticated, forbidden, unavailable).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(Self {
            client,
            reviews: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
            outcomes,
        })
    }

    /// Whether the holder of `token` may upload for `namespace`.
    ///
    /// # Errors
    /// [`Refusal`].
    pub async fn authorize(&self, token: &str, namespace: &str) -> Result<Identity, Refusal> {
        let r = self.try_authorize(token, namespace).await;
        let outcome = match &r {
            Ok(_) => "allowed",
            Err(Refusal::Unauthenticated) => "unauthenticated",
            Err(Refusal::Forbidden { .. }) => "forbidden",
            Err(Refusal::Unavailable(_)) => "unavailable",
        };
        self.outcomes.with_label_values(&[outcome]).inc();
        match &r {
            Ok(id) => {
                tracing::debug!(user = %id.user, namespace, "upload allowed by Kubernetes RBAC")
            }
            Err(e) => tracing::info!(namespace, refusal = %e, "upload refused"),
        }
        r
    }

    async fn try_authorize(&self, token: &str, namespace: &str) -> Result<Identity, Refusal> {
        let identity = self.review(token).await?;
        let key = (identity.user.clone(), namespace.to_owned());
        let cached = {
            let d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
            d.get(&key).and_then(|(at, allowed)| {
                let ttl = if *allowed { ALLOWED_TTL } else { DENIED_TTL };
                (at.elapsed() < ttl).then_some(*allowed)
            })
        };
        let allowed = match cached {
            Some(a) => a,
            None => {
                let a = self.may_create_pods(&identity, namespace).await?;
                let mut d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
                if d.len() >= MAX_ENTRIES {
                    d.clear();
                }
                d.insert(key, (Instant::now(), a));
                a
            }
        };
        if allowed {
            Ok(identity)
        } else {
            Err(Refusal::Forbidden {
                user: identity.user,
                namespace: namespace.to_owned(),
            })
        }
    }

    async fn review(&self, token: &str) -> Result<Identity, Refusal> {
        let key: [u8; 32] = service_runtime::token::hash(token);
        if let Some((at, id)) = self
            .reviews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && at.elapsed() < REVIEW_TTL
        {
            return Ok(id.clone());
        }
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        let Some(name) = user.username.filter(|_| status.authenticated == Some(true)) else {
            return Err(Refusal::Unauthenticated);
        };
        let id = Identity {
            user: name,
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        };
        let mut r = self.reviews.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= MAX_ENTRIES {
            r.clear();
        }
        r.insert(key, (Instant::now(), id.clone()));
        Ok(id)
    }

    async fn may_create_pods(&self, id: &Identity, namespace: &str) -> Result<bool, Refusal> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(id.user.clone()),
                uid: id.uid.clone(),
                groups: Some(id.groups.clone()),
                extra: Some(id.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_owned()),
                    verb: Some("create".into()),
                    resource: Some("pods".into()),
                    group: Some(String::new()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}
