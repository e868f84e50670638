//! Patches: JSON merge patch (RFC 7386), strategic merge patch (merge patch whose lists of
//! named objects — containers, env, volumes, ports — merge by `name`, the merge key Kubernetes
//! uses for them; other lists are replaced), and server-side apply with `force=true` (the
//! applied configuration merged into the live object as a strategic merge; field ownership
//! is not tracked).

use serde_json::Value;

/// Patch flavours, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`.
    Apply,
}

impl PatchKind {
    /// From a `Content-Type` (parameters ignored).
    #[must_use]
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies `patch` to `target`.
pub fn apply(target: &mut Value, patch: &Value, kind: PatchKind) {
    merge(target, patch, kind != PatchKind::Merge);
}

fn named(list: &[Value]) -> bool {
    !list.is_empty() && list.iter().all(|v| v["name"].is_string())
}

fn merge(target: &mut Value, patch: &Value, strategic: bool) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else if let Some(cur) = t.get_mut(k) {
                    merge(cur, v, strategic);
                } else {
                    let mut fresh = Value::Null;
                    merge(&mut fresh, v, strategic);
                    t.insert(k.clone(), fresh);
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if strategic && named(t) && named(p) => {
            for item in p {
                match t.iter_mut().find(|x| x["name"] == item["name"]) {
                    Some(cur) => merge(cur, item, strategic),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => {
            // Objects nested in a replaced value drop their nulls, as RFC 7386 says.
            *t = strip_nulls(p);
        }
    }
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        apply(
            &mut t,
            &json!({"a": "z", "c": {"f": null}}),
            PatchKind::Merge,
        );
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1, 2]});
        apply(&mut t, &json!({"a": [3]}), PatchKind::Merge);
        assert_eq!(t, json!({"a": [3]}));
    }

    #[test]
    fn spark_marks_an_executor_inactive() {
        // Row 19 of Spark's recorded requests.
        let mut pod = json!({"metadata": {"labels": {"spark-role": "executor"}}, "spec": {}});
        let patch = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"spark-exec-inactive": "true"}}});
        apply(&mut pod, &patch, PatchKind::Strategic);
        assert_eq!(pod["metadata"]["labels"]["spark-role"], "executor");
        assert_eq!(pod["metadata"]["labels"]["spark-exec-inactive"], "true");
    }

    #[test]
    fn strategic_lists_merge_by_name() {
        let mut t = json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]});
        apply(
            &mut t,
            &json!({"env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}),
            PatchKind::Strategic,
        );
        assert_eq!(
            t["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
    }
}
