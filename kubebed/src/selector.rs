//! Label and field selectors as the API server evaluates them: `k=v`, `k==v`, `k!=v`, `k`,
//! `!k`, `k in (a,b)`, `k notin (a,b)`, joined by commas (AND). Field selectors support
//! `metadata.name`, `metadata.namespace`, `spec.nodeName` and `status.phase` with `=`, `==`, `!=`.

use serde_json::Value;

/// One requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector (empty matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Req>,
}

/// Field paths a field selector may name.
pub const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
];

/// Splits on commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl Selector {
    /// Parses a label selector.
    ///
    /// # Errors
    /// A term that is not one of the forms above.
    pub fn labels(s: &str) -> Result<Self, String> {
        Self::parse(s, true)
    }

    /// Parses a field selector.
    ///
    /// # Errors
    /// A term that is not `field=value`/`field!=value`, or a field not supported.
    pub fn fields(s: &str) -> Result<Self, String> {
        let sel = Self::parse(s, false)?;
        for r in &sel.reqs {
            let (Req::Eq(k, _) | Req::Ne(k, _)) = r else {
                return Err(format!("invalid field selector {s:?}"));
            };
            if !FIELDS.contains(&k.as_str()) {
                return Err(format!("field label not supported: {k}"));
            }
        }
        Ok(sel)
    }

    fn parse(s: &str, sets: bool) -> Result<Self, String> {
        let mut reqs = Vec::new();
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self { reqs });
        }
        for t in terms(s) {
            let t = t.trim();
            let bad = || format!("unable to parse requirement: {t:?}");
            let req = if let Some((k, v)) = t.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if sets && t.contains('(') {
                let (head, rest) = t.split_once('(').ok_or_else(bad)?;
                let values = rest.strip_suffix(')').ok_or_else(bad)?;
                let values: Vec<String> = values
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                let mut words = head.split_whitespace();
                let (Some(k), Some(op), None) = (words.next(), words.next(), words.next()) else {
                    return Err(bad());
                };
                match op {
                    "in" => Req::In(k.into(), values),
                    "notin" => Req::NotIn(k.into(), values),
                    _ => return Err(bad()),
                }
            } else if sets && let Some(k) = t.strip_prefix('!') {
                Req::Absent(k.trim().into())
            } else if sets {
                Req::Exists(t.into())
            } else {
                return Err(bad());
            };
            let key = match &req {
                Req::Eq(k, _)
                | Req::Ne(k, _)
                | Req::Exists(k)
                | Req::Absent(k)
                | Req::In(k, _)
                | Req::NotIn(k, _) => k,
            };
            if !valid_key(key) {
                return Err(bad());
            }
            reqs.push(req);
        }
        Ok(Self { reqs })
    }

    /// Whether `get(key)` satisfies every requirement.
    fn matches_with(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
            // Kubernetes: `k!=v` also matches objects without the label.
            Req::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
            Req::Exists(k) => get(k).is_some(),
            Req::Absent(k) => get(k).is_none(),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
        })
    }

    /// Whether an object's labels match.
    #[must_use]
    pub fn matches_labels(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.matches_with(|k| labels.get(k).and_then(Value::as_str).map(str::to_string))
    }

    /// Whether an object's fields match.
    #[must_use]
    pub fn matches_fields(&self, obj: &Value) -> bool {
        self.matches_with(|path| {
            let v = path.split('.').fold(obj, |v, p| &v[p]);
            // An absent field compares as the empty string, as the API server does.
            Some(v.as_str().unwrap_or_default().to_string())
        })
    }

    /// The value an `=` requirement fixes for `key`, if any.
    #[must_use]
    pub fn fixed(&self, key: &str) -> Option<&str> {
        self.reqs.iter().find_map(|r| match r {
            Req::Eq(k, v) if k == key => Some(v.as_str()),
            _ => None,
        })
    }
}

/// A label selector's `matchLabels`/`matchExpressions` object, as in Deployments and DaemonSets.
#[must_use]
pub fn matches_label_selector(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let by_exprs = selector["matchExpressions"].as_array().is_none_or(|es| {
        es.iter().all(|e| {
            let k = e["key"].as_str().unwrap_or_default();
            let vals: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str() {
                Some("In") => label(k).is_some_and(|x| vals.contains(&x)),
                Some("NotIn") => label(k).is_none_or(|x| !vals.contains(&x)),
                Some("Exists") => label(k).is_some(),
                Some("DoesNotExist") => label(k).is_none(),
                _ => false,
            }
        })
    });
    by_labels && by_exprs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "labels": labels}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn spark_executor_selector() {
        // Spark's executor watch, row 12 of the recorded requests.
        let s = Selector::labels(
            "spark-app-selector=spark-1,spark-role=executor,spark-exec-inactive!=true",
        )
        .unwrap();
        let exec = json!({"spark-app-selector": "spark-1", "spark-role": "executor"});
        assert!(s.matches_labels(&pod(exec.clone())));
        let mut inactive = exec.clone();
        inactive["spark-exec-inactive"] = json!("true");
        assert!(!s.matches_labels(&pod(inactive)));
        let mut other = exec;
        other["spark-app-selector"] = json!("spark-2");
        assert!(!s.matches_labels(&pod(other)));
        assert!(!s.matches_labels(&json!({"metadata": {}})));
    }

    #[test]
    fn set_based_and_existence() {
        let s = Selector::labels("env in (a, b),!gone,tier,x notin (1)").unwrap();
        assert!(s.matches_labels(&pod(json!({"env": "b", "tier": "t"}))));
        assert!(!s.matches_labels(&pod(json!({"env": "c", "tier": "t"}))));
        assert!(!s.matches_labels(&pod(json!({"env": "a", "tier": "t", "gone": "1"}))));
        assert!(!s.matches_labels(&pod(json!({"env": "a", "tier": "t", "x": "1"}))));
        assert!(Selector::labels("a in b").is_err());
        assert!(Selector::labels("a=b,=c").is_err());
    }

    #[test]
    fn fields() {
        let s = Selector::fields("metadata.name=p,spec.nodeName==n1").unwrap();
        assert!(s.matches_fields(&pod(json!({}))));
        assert!(
            !Selector::fields("status.phase!=Running")
                .unwrap()
                .matches_fields(&pod(json!({})))
        );
        assert!(Selector::fields("spec.other=x").is_err());
        assert_eq!(s.fixed("metadata.name"), Some("p"));
    }

    #[test]
    fn label_selector_objects() {
        let sel = json!({"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "t", "operator": "In", "values": ["a"]}]});
        assert!(matches_label_selector(&sel, &json!({"app": "x", "t": "a"})));
        assert!(!matches_label_selector(&sel, &json!({"app": "x"})));
    }
}
