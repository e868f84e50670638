//! Authentication and authorization reviews as the API server answers them: `TokenReview`
//! (who holds this bearer token) and `SubjectAccessReview` (may this user do this), from a
//! table of known tokens and grants. The rest of the stand-in authorizes nothing; these two
//! exist for services that delegate their own authentication to Kubernetes.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// A user the bed knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `username` as a TokenReview returns it.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

#[derive(Debug, Default)]
struct Table {
    tokens: HashMap<String, User>,
    /// (user, verb, resource, namespace) allowed.
    grants: BTreeSet<(String, String, String, String)>,
}

/// Known tokens and grants, shared by clones.
#[derive(Debug, Clone, Default)]
pub struct Identities(Arc<Mutex<Table>>);

impl Identities {
    /// Makes `token` authenticate as `user`.
    pub fn add_token(&self, token: &str, user: User) {
        self.lock().tokens.insert(token.to_owned(), user);
    }

    /// Allows `user` to `verb` `resource` (plural, core or any group) in `namespace`.
    pub fn allow(&self, user: &str, verb: &str, resource: &str, namespace: &str) {
        self.lock().grants.insert((
            user.to_owned(),
            verb.to_owned(),
            resource.to_owned(),
            namespace.to_owned(),
        ));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to a `TokenReview`.
    #[must_use]
    pub fn token_review(&self, review: &Value) -> Value {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let user = self.lock().tokens.get(token).cloned();
        let status = match user {
            Some(u) => json!({
                "authenticated": true,
                "user": {"username": u.name, "uid": format!("uid-{}", u.name), "groups": u.groups},
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
        let user = spec["user"].as_str().unwrap_or_default().to_owned();
        let attrs = &spec["resourceAttributes"];
        let s = |k: &str| attrs[k].as_str().unwrap_or_default().to_owned();
        let allowed =
            self.lock()
                .grants
                .contains(&(user, s("verb"), s("resource"), s("namespace")));
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
