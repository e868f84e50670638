//! Authentication and authorization reviews as the API server answers them: `TokenReview`
//! (who holds this bearer token, for which audiences) and `SubjectAccessReview` (may this user
//! do this), from a table of known tokens and grants. The rest of the stand-in authorizes
//! nothing; these two exist for services that delegate their own authentication to Kubernetes.
//!
//! A token is valid for the API server's own audience ([`API_AUDIENCE`]) unless it was bound
//! to others ([`Identities::bind_audiences`]), as a projected service-account token is. A
//! review that names no audiences is checked against the API server's, as Kubernetes does.
//! Grants go to a user name, to a group, or to holders of an `extra` value (the way scoped
//! tokens narrow what a user may do). Every `TokenReview` is counted, so that a test can see
//! how many reached the API server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// The audience of tokens not bound to another: the API server's own.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc";

/// A user the bed knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `username` as a TokenReview returns it.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// (subject, verb, resource, namespace).
type Grant = (String, String, String, String);

#[derive(Debug, Default)]
struct Table {
    tokens: HashMap<String, User>,
    /// `extra` of a token's identity.
    extra: HashMap<String, BTreeMap<String, Vec<String>>>,
    /// Audiences a token is bound to (absent: [`API_AUDIENCE`]).
    audiences: HashMap<String, Vec<String>>,
    /// Grants to user names.
    grants: BTreeSet<Grant>,
    /// Grants to groups.
    group_grants: BTreeSet<Grant>,
    /// Grants to holders of an extra value: subject `key=value`.
    extra_grants: BTreeSet<Grant>,
    /// `TokenReview`s answered.
    token_reviews: u64,
}

/// Known tokens and grants, shared by clones.
#[derive(Debug, Clone, Default)]
pub struct Identities(Arc<Mutex<Table>>);

fn grant(subject: &str, verb: &str, resource: &str, namespace: &str) -> Grant {
    (
        subject.to_owned(),
        verb.to_owned(),
        resource.to_owned(),
        namespace.to_owned(),
    )
}

impl Identities {
    /// Makes `token` authenticate as `user`.
    pub fn add_token(&self, token: &str, user: User) {
        self.lock().tokens.insert(token.to_owned(), user);
    }

    /// Adds `key: values` to the `extra` of the identity `token` authenticates as.
    pub fn set_extra(&self, token: &str, key: &str, values: &[&str]) {
        self.lock()
            .extra
            .entry(token.to_owned())
            .or_default()
            .insert(
                key.to_owned(),
                values.iter().map(|v| (*v).to_owned()).collect(),
            );
    }

    /// Binds `token` to `audiences` only (no longer valid for the API server's own).
    pub fn bind_audiences(&self, token: &str, audiences: &[&str]) {
        self.lock().audiences.insert(
            token.to_owned(),
            audiences.iter().map(|a| (*a).to_owned()).collect(),
        );
    }

    /// Allows `user` to `verb` `resource` (plural, core or any group) in `namespace`.
    pub fn allow(&self, user: &str, verb: &str, resource: &str, namespace: &str) {
        self.lock()
            .grants
            .insert(grant(user, verb, resource, namespace));
    }

    /// Allows members of `group` to `verb` `resource` in `namespace`.
    pub fn allow_group(&self, group: &str, verb: &str, resource: &str, namespace: &str) {
        self.lock()
            .group_grants
            .insert(grant(group, verb, resource, namespace));
    }

    /// Allows identities whose `extra[key]` holds `value` to `verb` `resource` in `namespace`.
    pub fn allow_extra(&self, key: &str, value: &str, verb: &str, resource: &str, namespace: &str) {
        self.lock().extra_grants.insert(grant(
            &format!("{key}={value}"),
            verb,
            resource,
            namespace,
        ));
    }

    /// How many `TokenReview`s were answered.
    #[must_use]
    pub fn token_reviews(&self) -> u64 {
        self.lock().token_reviews
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to a `TokenReview`.
    #[must_use]
    pub fn token_review(&self, review: &Value) -> Value {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let requested: Vec<String> = match review["spec"]["audiences"].as_array() {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => vec![API_AUDIENCE.to_owned()],
        };
        let mut table = self.lock();
        table.token_reviews += 1;
        let user = table.tokens.get(token).cloned();
        let bound = table
            .audiences
            .get(token)
            .cloned()
            .unwrap_or_else(|| vec![API_AUDIENCE.to_owned()]);
        let common: Vec<&String> = requested.iter().filter(|a| bound.contains(a)).collect();
        let status = match user {
            Some(_) if common.is_empty() => json!({
                "authenticated": false,
                "error": "token audiences are invalid for the target audiences",
            }),
            Some(u) => json!({
                "authenticated": true,
                "user": {
                    "username": u.name,
                    "uid": format!("uid-{}", u.name),
                    "groups": u.groups,
                    "extra": table.extra.get(token).cloned().unwrap_or_default(),
                },
                "audiences": common,
            }),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status,
        })
    }

    /// The answer to a `SubjectAccessReview`.
    #[must_use]
    pub fn access_review(&self, review: &Value) -> Value {
        let spec = &review["spec"];
        let user = spec["user"].as_str().unwrap_or_default();
        let attrs = &spec["resourceAttributes"];
        let s = |k: &str| attrs[k].as_str().unwrap_or_default();
        let (verb, resource, namespace) = (s("verb"), s("resource"), s("namespace"));
        let table = self.lock();
        let by_user = table
            .grants
            .contains(&grant(user, verb, resource, namespace));
        let by_group = spec["groups"].as_array().is_some_and(|groups| {
            groups.iter().filter_map(Value::as_str).any(|g| {
                table
                    .group_grants
                    .contains(&grant(g, verb, resource, namespace))
            })
        });
        let by_extra = spec["extra"].as_object().is_some_and(|extra| {
            extra.iter().any(|(k, values)| {
                values
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .any(|v| {
                        table.extra_grants.contains(&grant(
                            &format!("{k}={v}"),
                            verb,
                            resource,
                            namespace,
                        ))
                    })
            })
        });
        let allowed = by_user || by_group || by_extra;
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": if allowed {
                json!({"allowed": true, "reason": "granted by the bed"})
            } else {
                json!({"allowed": false, "reason": "no grant"})
            },
        })
    }
}
