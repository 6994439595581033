//! Sensu's label selectors (`a == b && c != d && e in (x, y) && f notin (z)`): the API's
//! `labelSelector` list parameter and a Replicator's `label_selector`.

use std::collections::BTreeMap;

/// A parsed label selector: every clause must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// `(key, positive, values)`: the label is (or, not positive, is not) one of the values.
    clauses: Vec<(String, bool, Vec<String>)>,
}

impl LabelSelector {
    /// Parses `text`; an empty text selects everything.
    ///
    /// # Errors
    /// The clause that is not `k == v`, `k != v`, `k in (…)` or `k notin (…)`.
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut clauses = Vec::new();
        for clause in text
            .split("&&")
            .map(str::trim)
            .filter(|clause| !clause.is_empty())
        {
            let parsed = if let Some((key, value)) = clause.split_once("!=") {
                Some((key, false, vec![value.trim().to_owned()]))
            } else if let Some((key, value)) = clause.split_once("==") {
                Some((key, true, vec![value.trim().to_owned()]))
            } else if let Some((key, values)) = clause.split_once(" notin ") {
                Some((key, false, set_values(values)))
            } else if let Some((key, values)) = clause.split_once(" in ") {
                Some((key, true, set_values(values)))
            } else {
                None
            };
            let (key, positive, values) =
                parsed.ok_or_else(|| format!("invalid label selector clause {clause:?}"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("label selector clause {clause:?} names no label"));
            }
            clauses.push((key.to_owned(), positive, values));
        }
        Ok(LabelSelector { clauses })
    }

    /// Whether the selector has no clause (selects everything).
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Whether `labels` satisfy every clause.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.clauses.iter().all(|(key, positive, values)| {
            let has = labels.get(key).is_some_and(|value| values.contains(value));
            has == *positive
        })
    }
}

fn set_values(text: &str) -> Vec<String> {
    let text = text.trim();
    let text = text
        .strip_prefix('(')
        .or_else(|| text.strip_prefix('['))
        .unwrap_or(text);
    let text = text
        .strip_suffix(')')
        .or_else(|| text.strip_suffix(']'))
        .unwrap_or(text);
    text.split(',')
        .map(|value| value.trim().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn clauses_all_hold() {
        let selector = LabelSelector::parse("team == ops && env in (prod, stage)").unwrap();
        assert!(selector.matches(&labels(&[("team", "ops"), ("env", "prod")])));
        assert!(!selector.matches(&labels(&[("team", "ops"), ("env", "dev")])));
        assert!(!selector.matches(&labels(&[("env", "prod")])));
        let negative = LabelSelector::parse("team != ops && env notin [dev]").unwrap();
        assert!(negative.matches(&labels(&[])));
        assert!(!negative.matches(&labels(&[("env", "dev")])));
        assert!(LabelSelector::parse("").unwrap().is_empty());
        assert!(LabelSelector::parse("bogus").is_err());
        assert!(LabelSelector::parse(" == x").is_err());
    }
}
