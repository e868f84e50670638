//! What the Deployment and DaemonSet controllers decide, as pure functions of the desired spec
//! and the pods that exist: which pods to create and which to delete, and the status to report.
//! [`deployment`] and [`daemonset`] follow Kubernetes' own controllers step for step (the
//! Deployment one without ReplicaSets: the pods of one template are told apart by a hash label,
//! as a ReplicaSet's pods are by `pod-template-hash`); this module holds what both share.
//!
//! The functions take no action and read no clock: `controllers` reads the store, calls them
//! and carries their decisions out, and the tests feed them pods directly.

pub mod daemonset;
pub mod deployment;

#[cfg(test)]
mod tests;

use serde_json::Value;

/// An `IntOrString` of an update strategy: a number of pods or a percentage of the desired
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    /// A number of pods.
    Int(i64),
    /// A percentage of the desired number of pods.
    Percent(i64),
}

impl IntOrPercent {
    /// Reads `v` (`3` or `"25%"`); `default` when absent. A string that is not a percentage,
    /// or a negative value, is refused as the API server refuses it.
    ///
    /// # Errors
    /// What is wrong with the value.
    pub fn from_json(v: &Value, default: Self) -> Result<Self, String> {
        match v {
            Value::Null => Ok(default),
            Value::Number(n) => match n.as_i64() {
                Some(i) if i >= 0 => Ok(Self::Int(i)),
                _ => Err(format!("{n}: must be greater than or equal to 0")),
            },
            Value::String(s) => match s.strip_suffix('%').map(str::parse::<i64>) {
                Some(Ok(p)) if p >= 0 => Ok(Self::Percent(p)),
                _ => Err(format!(
                    "{s:?}: a valid percent string must be a numeric string followed by an ending '%'"
                )),
            },
            other => Err(format!("{other}: must be an integer or a percentage")),
        }
    }

    /// The number of pods out of `total`; a percentage rounds up or down
    /// (`GetScaledValueFromIntOrPercent`).
    #[must_use]
    pub fn scaled(self, total: i64, round_up: bool) -> i64 {
        match self {
            Self::Int(i) => i,
            Self::Percent(p) if round_up => (p * total + 99).div_euclid(100),
            Self::Percent(p) => (p * total).div_euclid(100),
        }
    }

    /// Whether the value is zero whatever the total (`0` or `"0%"`).
    #[must_use]
    pub fn is_zero(self) -> bool {
        matches!(self, Self::Int(0) | Self::Percent(0))
    }
}

/// The hash of a pod template, as its pods' hash label carries it: 32-bit FNV-1a over the
/// template's JSON with sorted keys, written in the alphabet Kubernetes uses for such names
/// (`rand.SafeEncodeString` of the decimal hash, so no vowels and no `0`, `1`, `3`).
#[must_use]
pub fn template_hash(template: &Value) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut text = String::new();
    canonical(template, &mut text);
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// `v` as JSON with object keys sorted and `null` members left out, so that two spellings of
/// one template (member order, an explicit `null`) hash alike.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m
                .iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Milliseconds since the Unix epoch of a Kubernetes timestamp (RFC 3339).
#[must_use]
pub fn millis(ts: &str) -> Option<i64> {
    ts.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// What the controllers look at in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// The pod's name.
    pub name: String,
    /// Its template hash label, if any.
    pub hash: Option<String>,
    /// The node it is bound to.
    pub node: Option<String>,
    /// `creationTimestamp`, in milliseconds since the epoch.
    pub created: i64,
    /// Phase `Running`.
    pub running: bool,
    /// Phase `Succeeded` or `Failed`.
    pub terminal: bool,
    /// Marked for deletion (`deletionTimestamp`), its containers being stopped.
    pub terminating: bool,
    /// Since when its `Ready` condition has been `True` (milliseconds since the epoch), if it is.
    pub ready_since: Option<i64>,
}

impl PodView {
    /// The view of a pod object, its template hash read from label `hash_label`.
    #[must_use]
    pub fn of(pod: &Value, hash_label: &str) -> Self {
        let meta = &pod["metadata"];
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        let ready = pod["status"]["conditions"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        Self {
            name: meta["name"].as_str().unwrap_or_default().to_string(),
            hash: meta["labels"][hash_label].as_str().map(str::to_string),
            node: pod["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            created: meta["creationTimestamp"]
                .as_str()
                .and_then(millis)
                .unwrap_or(0),
            running: phase == "Running",
            terminal: matches!(phase, "Succeeded" | "Failed"),
            terminating: meta["deletionTimestamp"].is_string(),
            // A Ready condition without a time counts as ready since the epoch.
            ready_since: ready.map(|c| {
                c["lastTransitionTime"]
                    .as_str()
                    .and_then(millis)
                    .unwrap_or(0)
            }),
        }
    }

    /// Ready, and not being deleted: a pod being deleted counts as neither ready nor available.
    #[must_use]
    pub fn ready(&self) -> bool {
        self.ready_since.is_some() && !self.terminating && !self.terminal
    }

    /// Available at `now`: ready for longer than `min_ready_seconds` (`IsPodAvailable`).
    #[must_use]
    pub fn available(&self, min_ready_seconds: i64, now: i64) -> bool {
        self.ready()
            && self
                .ready_since
                .is_some_and(|t| min_ready_seconds <= 0 || t + min_ready_seconds * 1000 < now)
    }

    /// When a ready pod that is not available yet becomes available.
    #[must_use]
    pub fn available_at(&self, min_ready_seconds: i64, now: i64) -> Option<i64> {
        let t = self.ready_since.filter(|_| self.ready())?;
        (!self.available(min_ready_seconds, now)).then_some(t + min_ready_seconds * 1000 + 1)
    }

    /// Neither finished nor being deleted: what a ReplicaSet counts as its replicas.
    #[must_use]
    pub fn active(&self) -> bool {
        !self.terminating && !self.terminal
    }

    /// Carries the template of `hash`.
    #[must_use]
    pub fn is_of(&self, hash: &str) -> bool {
        self.hash.as_deref() == Some(hash)
    }
}

/// Pods in the order a ReplicaSet deletes them when it scales down (`ActivePods`): not bound
/// to a node first, then not running, not ready, ready for the shortest time, and the newest.
#[must_use]
pub fn deletion_order<'a>(pods: impl IntoIterator<Item = &'a PodView>) -> Vec<&'a PodView> {
    let mut v: Vec<&PodView> = pods.into_iter().collect();
    v.sort_by(|a, b| {
        (a.node.is_some(), a.running, a.ready())
            .cmp(&(b.node.is_some(), b.running, b.ready()))
            .then_with(|| b.ready_since.cmp(&a.ready_since))
            .then_with(|| b.created.cmp(&a.created))
            .then_with(|| a.name.cmp(&b.name))
    });
    v
}
