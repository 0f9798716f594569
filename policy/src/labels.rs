//! Labels and label selectors, as `metav1.LabelSelector` defines them.
//!
//! A selector is `matchLabels` AND every `matchExpressions` requirement; an
//! empty selector matches everything. Validation follows apimachinery's
//! `ValidateLabelSelector`: keys are qualified names, values are label values,
//! `In`/`NotIn` need values, `Exists`/`DoesNotExist` must have none.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A label set. Ordered, so that equal sets compare and hash equal.
pub type Labels = BTreeMap<String, String>;

/// The operator of one `matchExpressions` requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub fn parse(s: &str) -> Option<Operator> {
        match s {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            _ => None,
        }
    }
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // NotIn matches a missing key too, as in apimachinery.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A validated label selector. `Default` is the empty selector (matches all).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Builds a selector from `matchLabels` and raw `(key, operator, values)`
    /// expressions, validating every part. `field` is the path of the selector
    /// in its object, used in errors.
    pub fn build(
        field: &str,
        match_labels: Labels,
        expressions: Vec<(String, String, Vec<String>)>,
    ) -> Result<Selector, (String, String)> {
        for (k, v) in &match_labels {
            validate_qualified_name(k).map_err(|m| (format!("{field}.matchLabels"), m))?;
            validate_label_value(v).map_err(|m| (format!("{field}.matchLabels[{k}]"), m))?;
        }
        let mut match_expressions = Vec::with_capacity(expressions.len());
        for (i, (key, op, values)) in expressions.into_iter().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            validate_qualified_name(&key).map_err(|m| (format!("{at}.key"), m))?;
            let operator = Operator::parse(&op).ok_or_else(|| {
                (
                    format!("{at}.operator"),
                    format!(
                        "unsupported operator {op:?}: must be In, NotIn, Exists or DoesNotExist"
                    ),
                )
            })?;
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err((
                        format!("{at}.values"),
                        format!("must be specified when operator is {op}"),
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err((
                        format!("{at}.values"),
                        format!("may not be specified when operator is {op}"),
                    ));
                }
                _ => {}
            }
            for (j, v) in values.iter().enumerate() {
                validate_label_value(v).map_err(|m| (format!("{at}.values[{j}]"), m))?;
            }
            match_expressions.push(Requirement {
                key,
                operator,
                values: values.into_iter().collect(),
            });
        }
        Ok(Selector {
            match_labels,
            match_expressions,
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            let vals = r.values.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match r.operator {
                Operator::In => format!("{} in ({vals})", r.key),
                Operator::NotIn => format!("{} notin ({vals})", r.key),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        write!(f, "{}", parts.join(","))
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_uppercase() || c.is_ascii_digit()
}

/// A label name part: at most 63 characters, alphanumeric at both ends,
/// `-`, `_` and `.` inside.
fn validate_name_part(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "name part {s:?} must be no more than 63 characters"
        ));
    }
    let ok_inner = s
        .chars()
        .all(|c| is_alnum(c) || c == '-' || c == '_' || c == '.');
    let first = s.chars().next().is_some_and(is_alnum);
    let last = s.chars().last().is_some_and(is_alnum);
    if !(ok_inner && first && last) {
        return Err(format!(
            "name part {s:?} must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain (the optional prefix of a label key).
fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!(
            "prefix {s:?} must be a DNS subdomain of 1 to 253 characters"
        ));
    }
    for part in s.split('.') {
        let ok = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(format!(
                "prefix {s:?} must be a lowercase DNS subdomain (a-z, 0-9, '-', '.')"
            ));
        }
    }
    Ok(())
}

/// A label key: `[prefix/]name`.
pub fn validate_qualified_name(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            validate_dns_subdomain(prefix)?;
            validate_name_part(name)
        }
        None => validate_name_part(key),
    }
    .map_err(|m| format!("invalid label key {key:?}: {m}"))
}

/// A label value: empty, or a name part.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    validate_name_part(value).map_err(|m| format!("invalid label value {value:?}: {m}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> (String, String, Vec<String>) {
        (
            key.into(),
            op.into(),
            values.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(Selector::everything().matches(&labels(&[])));
        assert!(Selector::everything().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = Selector::build(
            "s",
            labels(&[("app", "web")]),
            vec![expr("tier", "In", &["front", "back"])],
        )
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "front")])));
    }

    #[test]
    fn operators_follow_apimachinery() {
        let notin = Selector::build("s", Labels::new(), vec![expr("t", "NotIn", &["x"])]).unwrap();
        assert!(notin.matches(&labels(&[])), "NotIn matches a missing key");
        assert!(notin.matches(&labels(&[("t", "y")])));
        assert!(!notin.matches(&labels(&[("t", "x")])));
        let exists = Selector::build("s", Labels::new(), vec![expr("t", "Exists", &[])]).unwrap();
        assert!(exists.matches(&labels(&[("t", "")])));
        assert!(!exists.matches(&labels(&[])));
        let dne =
            Selector::build("s", Labels::new(), vec![expr("t", "DoesNotExist", &[])]).unwrap();
        assert!(dne.matches(&labels(&[("u", "")])));
        assert!(!dne.matches(&labels(&[("t", "v")])));
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let e = Selector::build(
            "spec.podSelector",
            Labels::new(),
            vec![expr("t", "Equals", &[])],
        )
        .unwrap_err();
        assert_eq!(e.0, "spec.podSelector.matchExpressions[0].operator");
        let e = Selector::build("p", Labels::new(), vec![expr("t", "In", &[])]).unwrap_err();
        assert_eq!(e.0, "p.matchExpressions[0].values");
        let e = Selector::build("p", Labels::new(), vec![expr("t", "Exists", &["v"])]).unwrap_err();
        assert_eq!(e.0, "p.matchExpressions[0].values");
        let e = Selector::build("p", labels(&[("bad key", "v")]), vec![]).unwrap_err();
        assert_eq!(e.0, "p.matchLabels");
        let e = Selector::build("p", labels(&[("k", "-v")]), vec![]).unwrap_err();
        assert_eq!(e.0, "p.matchLabels[k]");
    }

    #[test]
    fn qualified_names() {
        assert!(validate_qualified_name("kubernetes.io/metadata.name").is_ok());
        assert!(validate_qualified_name("app").is_ok());
        assert!(validate_qualified_name("Example.com/x").is_err());
        assert!(validate_qualified_name("/x").is_err());
        assert!(validate_qualified_name(&"a".repeat(64)).is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("a_b.c-d").is_ok());
        assert!(validate_label_value("a b").is_err());
    }
}
