//! Uploads authenticated with Kubernetes credentials (`--kube-auth`): the bearer token is
//! checked with the API server (`TokenReview`), and an upload for namespace N is allowed only
//! if that identity may create pods in N (`SubjectAccessReview`): whoever may run a job in a
//! namespace may stage its files, and nobody else.
//!
//! Answers are cached briefly; the token itself is never kept or logged. Token reviews are
//! keyed by the token's SHA-256: a valid token's identity is reused for [`REVIEW_TTL`], an
//! unknown token is refused from the cache for [`UNAUTHENTICATED_TTL`] (so that repeating a
//! bad token does not repeat the review). Access decisions are keyed by the whole reviewed
//! identity (user, uid, groups, extra) and the namespace, never by the user name alone: two
//! tokens of one user with different groups or scopes are different identities. They are
//! reused for [`ALLOWED_TTL`] (allowed) or [`DENIED_TTL`] (denied, so that a new RoleBinding
//! takes effect quickly). Failed API calls are never cached and refuse with 503.
//!
//! Reviews that reach the API server are budgeted ([`super::review_limit`]): a token review
//! that fails costs the calling client's address (IPv6: its `--kube-auth-ipv6-prefix` network); an access review that
//! refuses, and the review of each new token, cost the reviewed identity (and once that is
//! spent, a new token's review costs the address as a failed one would: tokens minted in bulk
//! are no way around the address's budget); every review costs one budget of the whole server
//! that protects the API server. A caller whose budget is spent is answered 429 until it
//! refills, for what would need a review only: a valid token already in the cache keeps
//! working, so one caller sending junk tokens from behind a shared proxy address does not lock
//! out the others behind it.
//! With audiences configured, tokens are reviewed for those audiences and accepted only when
//! the API server confirms one of them, so a token made for another service (or for the API
//! server itself) is refused.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use prometheus::{IntCounterVec, Opts, Registry};

use super::review_limit::{PeerKey, ReviewLimit};
use crate::config::KubeAuthSettings;
use staging_api::ids::CredentialId;

/// How long a successful token review is reused.
pub(crate) const REVIEW_TTL: Duration = Duration::from_secs(60);
/// How long a token the API server did not authenticate is refused without asking again.
pub(crate) const UNAUTHENTICATED_TTL: Duration = Duration::from_secs(10);
/// How long an allowed access decision is reused.
pub(crate) const ALLOWED_TTL: Duration = Duration::from_secs(30);
/// How long a denied access decision is reused.
pub(crate) const DENIED_TTL: Duration = Duration::from_secs(5);
/// Cached entries of each kind before the cache is emptied.
const MAX_ENTRIES: usize = 10_000;

/// An authenticated Kubernetes identity, as the API server reviewed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// User name (`system:serviceaccount:ns:name` for service accounts).
    pub user: String,
    /// User uid.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (scopes and the like).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Whose review budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The client address's, for token reviews that failed.
    Client,
    /// The identity's, for access reviews that refused and reviews of its new tokens.
    Identity,
    /// The whole server's, for every review.
    Server,
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Client => {
                "too many failed Kubernetes credential reviews from this client address"
            }
            Self::Identity => "too many refused or new-token reviews for this identity",
            Self::Server => "too many Kubernetes credential reviews on this server",
        })
    }
}

/// Why an upload is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// The API server does not know the token (or not for the required audience).
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
    /// A review budget is spent.
    #[error("{budget}; retry in {}s", .retry_after.as_secs().max(1))]
    Throttled {
        /// Whose.
        budget: Budget,
        /// When the next review is allowed.
        retry_after: Duration,
    },
    /// The API server could not be asked.
    #[error("the Kubernetes API server cannot verify the credential now: {0}")]
    Unavailable(String),
}

/// A cached token review: the identity, or `None` for a token the API server refused.
type Reviewed = Option<Identity>;

/// How long an address whose token review failed draws on the server-wide budget of failing
/// addresses instead of the one of everyone else.
const SUSPECT_FOR: Duration = Duration::from_secs(60);

/// Most addresses remembered as recently failing.
const MAX_SUSPECTS: usize = 16_384;

/// The reviewer.
pub struct KubeAuth {
    client: Client,
    settings: KubeAuthSettings,
    /// Failed token reviews per client address.
    client_failures: ReviewLimit<PeerKey>,
    /// Refusing access reviews and reviews of new tokens, per identity.
    identity_reviews: ReviewLimit<CredentialId>,
    /// Every review from addresses without a recent failure.
    all: ReviewLimit<()>,
    /// Every review from addresses whose last failed review is under [`SUSPECT_FOR`] old: a
    /// second server-wide budget of the same size, so that addresses sending junk tokens
    /// spend each other's reviews and not those of every other submitter.
    all_failing: ReviewLimit<()>,
    /// When each address's last token review failed (at most `MAX_SUSPECTS` addresses).
    failed_at: Mutex<HashMap<PeerKey, Instant>>,
    reviews: Mutex<HashMap<[u8; 32], (Instant, Reviewed)>>,
    decisions: Mutex<HashMap<(Identity, String), (Instant, bool)>>,
    outcomes: IntCounterVec,
}

impl std::fmt::Debug for KubeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuth")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Inserts into a bounded cache of `(when, value)` entries. When it is full, expired entries
/// go first (`ttl` tells each entry's lifetime), then refusals (`granted` tells which entries
/// hold an identity or an allow), and only then everything: a flood of unknown tokens, each
/// cached as a refusal, cannot push out the identities and decisions of the callers it serves.
fn remember<K: std::hash::Hash + Eq, V>(
    cache: &Mutex<HashMap<K, (Instant, V)>>,
    key: K,
    value: V,
    ttl: impl Fn(&V) -> Duration,
    granted: impl Fn(&V) -> bool,
) {
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= MAX_ENTRIES {
        c.retain(|_, (at, v)| at.elapsed() < ttl(v));
    }
    if c.len() >= MAX_ENTRIES {
        c.retain(|_, (_, v)| granted(v));
    }
    if c.len() >= MAX_ENTRIES {
        c.clear();
    }
    c.insert(key, (Instant::now(), value));
}

/// How long a token review is reused.
fn review_ttl(reviewed: &Reviewed) -> Duration {
    if reviewed.is_some() {
        REVIEW_TTL
    } else {
        UNAUTHENTICATED_TTL
    }
}

/// How long a decision is reused.
fn decision_ttl(allowed: &bool) -> Duration {
    if *allowed { ALLOWED_TTL } else { DENIED_TTL }
}

impl KubeAuth {
    /// A reviewer using `client`, counting outcomes in `staging_kube_auth_total`.
    ///
    /// # Errors
    /// A registration conflict.
    pub fn new(
        client: Client,
        settings: KubeAuthSettings,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "staging_kube_auth_total",
                "Uploads checked with Kubernetes credentials, by outcome (allowed, unauthenticated, forbidden, throttled, unavailable).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        Ok(Self {
            client,
            client_failures: ReviewLimit::new(settings.reviews_per_minute, settings.review_burst),
            identity_reviews: ReviewLimit::new(settings.reviews_per_minute, settings.review_burst),
            all: ReviewLimit::new(
                settings.global_reviews_per_minute,
                settings.global_review_burst,
            ),
            all_failing: ReviewLimit::new(
                settings.global_reviews_per_minute,
                settings.global_review_burst,
            ),
            failed_at: Mutex::new(HashMap::new()),
            settings,
            reviews: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
            outcomes,
        })
    }

    /// The audiences tokens must be valid for (empty: the API server's).
    pub fn audiences(&self) -> &[String] {
        &self.settings.audiences
    }

    /// Whether the holder of `token`, calling from `client`, may upload for `namespace`.
    ///
    /// # Errors
    /// [`Refusal`].
    pub async fn authorize(
        &self,
        token: &str,
        namespace: &str,
        client: IpAddr,
    ) -> Result<Identity, Refusal> {
        let r = self.try_authorize(token, namespace, client).await;
        let outcome = match &r {
            Ok(_) => "allowed",
            Err(Refusal::Unauthenticated) => "unauthenticated",
            Err(Refusal::Forbidden { .. }) => "forbidden",
            Err(Refusal::Throttled { .. }) => "throttled",
            Err(Refusal::Unavailable(_)) => "unavailable",
        };
        self.outcomes.with_label_values(&[outcome]).inc();
        match &r {
            Ok(id) => {
                tracing::debug!(user = %id.user, namespace, "upload allowed by Kubernetes RBAC")
            }
            Err(e) => tracing::info!(namespace, %client, refusal = %e, "upload refused"),
        }
        r
    }

    async fn try_authorize(
        &self,
        token: &str,
        namespace: &str,
        client: IpAddr,
    ) -> Result<Identity, Refusal> {
        let identity = self.review(token, client).await?;
        let key = (identity, namespace.to_owned());
        let cached = {
            let d = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
            d.get(&key).and_then(|(at, allowed)| {
                (at.elapsed() < decision_ttl(allowed)).then_some(*allowed)
            })
        };
        let allowed = match cached {
            Some(a) => a,
            None => {
                let who = CredentialId::kube(&key.0.user, key.0.uid.as_deref());
                self.reserve(&self.identity_reviews, &who, Budget::Identity, &self.all)?;
                let a = self
                    .may_create_pods(&key.0, namespace)
                    .await
                    .inspect_err(|_| self.identity_reviews.refund(&who))?;
                if a {
                    self.identity_reviews.refund(&who);
                }
                remember(&self.decisions, key.clone(), a, decision_ttl, |a| *a);
                a
            }
        };
        let (identity, namespace) = key;
        if allowed {
            Ok(identity)
        } else {
            Err(Refusal::Forbidden {
                user: identity.user,
                namespace,
            })
        }
    }

    /// Takes one review from `failures` for `key` and one from the server's budget; gives
    /// the first back when the second is spent. The caller refunds `failures` when the review
    /// succeeds (or the API server cannot be asked: not the caller's failure).
    fn reserve<K: std::hash::Hash + Eq + Clone>(
        &self,
        failures: &ReviewLimit<K>,
        key: &K,
        budget: Budget,
        server: &ReviewLimit<()>,
    ) -> Result<(), Refusal> {
        failures
            .take(key)
            .map_err(|retry_after| Refusal::Throttled {
                budget,
                retry_after,
            })?;
        if let Err(retry_after) = server.take(&()) {
            failures.refund(key);
            return Err(Refusal::Throttled {
                budget: Budget::Server,
                retry_after,
            });
        }
        Ok(())
    }

    /// Whether `peer`'s last token review failed under [`SUSPECT_FOR`] ago.
    fn failed_recently(&self, peer: &PeerKey) -> bool {
        let failed = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .get(peer)
            .is_some_and(|at| at.elapsed() < SUSPECT_FOR)
    }

    /// Remembers that `peer`'s token review failed now.
    fn note_failure(&self, peer: PeerKey) {
        let mut failed = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        if !failed.contains_key(&peer) && failed.len() >= MAX_SUSPECTS {
            failed.retain(|_, at| at.elapsed() < SUSPECT_FOR);
            if failed.len() >= MAX_SUSPECTS {
                // Every remembered address failed within the minute: forgetting them sends
                // them back to the budget of the others, the same as before they failed.
                failed.clear();
            }
        }
        failed.insert(peer, Instant::now());
    }

    async fn review(&self, token: &str, client: IpAddr) -> Result<Identity, Refusal> {
        let key: [u8; 32] = service_runtime::token::hash(token);
        let cached = self
            .reviews
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .and_then(|(at, reviewed)| {
                (at.elapsed() < review_ttl(reviewed)).then(|| reviewed.clone())
            });
        if let Some(reviewed) = cached {
            return reviewed.ok_or(Refusal::Unauthenticated);
        }
        let peer = PeerKey::new(client, self.settings.ipv6_prefix);
        let server = if self.failed_recently(&peer) {
            &self.all_failing
        } else {
            &self.all
        };
        self.reserve(&self.client_failures, &peer, Budget::Client, server)?;
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let audiences = &self.settings.audiences;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: (!audiences.is_empty()).then(|| audiences.clone()),
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                self.client_failures.refund(&peer);
                Refusal::Unavailable(e.to_string())
            })?;
        let status = answer.status.unwrap_or_default();
        // With audiences asked for, the API server names the ones the token is valid for;
        // one of ours must be among them (an authenticator that ignores audiences names none).
        let audience_ok = audiences.is_empty()
            || status
                .audiences
                .as_ref()
                .is_some_and(|got| got.iter().any(|a| audiences.contains(a)));
        let user = status.user.unwrap_or_default();
        let reviewed = user
            .username
            .filter(|_| status.authenticated == Some(true) && audience_ok)
            .map(|name| Identity {
                user: name,
                uid: user.uid,
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            });
        // A valid token costs its caller's address nothing, unless its identity keeps
        // presenting new ones: beyond the identity's budget it counts as a failure, and the
        // address's next reviews draw on the budget of failing addresses (a pod presenting
        // many valid tokens, from projected volumes, would otherwise spend everyone's).
        let within_identity_budget = reviewed.as_ref().is_some_and(|id| {
            self.identity_reviews
                .take(&CredentialId::kube(&id.user, id.uid.as_deref()))
                .is_ok()
        });
        if within_identity_budget {
            self.client_failures.refund(&peer);
        } else {
            self.note_failure(peer);
        }
        remember(
            &self.reviews,
            key,
            reviewed.clone(),
            review_ttl,
            Option::is_some,
        );
        reviewed.ok_or(Refusal::Unauthenticated)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_does_not_push_out_granted_entries() {
        let cache: Mutex<HashMap<u32, (Instant, bool)>> = Mutex::new(HashMap::new());
        for k in 0..10u32 {
            remember(&cache, k, true, decision_ttl, |a| *a);
        }
        let keys = u32::try_from(MAX_ENTRIES).unwrap() * 2;
        for k in 10..keys {
            remember(&cache, k, false, decision_ttl, |a| *a);
        }
        let c = cache.lock().unwrap();
        assert!(c.len() <= MAX_ENTRIES);
        for k in 0..10u32 {
            assert_eq!(
                c.get(&k).map(|(_, a)| *a),
                Some(true),
                "granted entry {k} lost"
            );
        }
    }
}
