//! Redaction of secret values from text that leaves a process: check and hook output on the
//! agent, handler output the backend logs. One implementation for both sides.
//!
//! Also an entity's `redact` (Sensu's `GetRedactedEntity`): the values of the labels and
//! annotations it names (or [`DEFAULT_REDACT_FIELDS`] when it names none) are shown as
//! [`ENTITY_REDACTED`] wherever the entity leaves the store: API answers (and so the web UI),
//! and the event the pipeline's filters and handlers see. The store keeps the values (token
//! substitution uses them).

use crate::agent::{CheckRequest, SecretValue};
use crate::meta::ObjectMeta;

/// What replaces a redacted label or annotation value (Sensu's `Redacted`).
pub const ENTITY_REDACTED: &str = "REDACTED";

/// The keys redacted when an entity's `redact` is empty (Sensu's `DefaultRedactFields`).
pub const DEFAULT_REDACT_FIELDS: [&str; 9] = [
    "password",
    "passwd",
    "pass",
    "api_key",
    "api_token",
    "access_key",
    "secret_key",
    "private_key",
    "secret",
];

/// Whether `key` is redacted under `redact` (Sensu compares keys exactly).
fn redacts(redact: &[String], key: &str) -> bool {
    if redact.is_empty() {
        DEFAULT_REDACT_FIELDS.contains(&key)
    } else {
        redact.iter().any(|field| field == key)
    }
}

/// Replaces the values of the labels and annotations of `meta` that `redact` names with
/// [`ENTITY_REDACTED`].
pub fn redact_entity_meta(meta: &mut ObjectMeta, redact: &[String]) {
    for (key, value) in meta.labels.iter_mut().chain(meta.annotations.iter_mut()) {
        if redacts(redact, key) {
            ENTITY_REDACTED.clone_into(value);
        }
    }
}

/// The event's entity with its `redact` applied (see [`redact_entity_meta`]): what Sensu's
/// pipeline hands its filters, mutators and handlers.
pub fn redact_event_entity(event: &mut crate::model::Event) {
    if let Some(entity) = event.entity.as_mut() {
        if let Some(meta) = entity.metadata.as_mut() {
            redact_entity_meta(meta, &entity.redact);
        }
    }
}

/// For a write of an entity read back from the API: a redacted label or annotation whose
/// incoming value is [`ENTITY_REDACTED`] keeps its stored value, so `GET` then `PUT` (as
/// `cairnctl entity update` and `sensuctl edit` do) never overwrites a secret with the mask.
pub fn keep_redacted_values(incoming: &mut ObjectMeta, stored: &ObjectMeta, redact: &[String]) {
    for (incoming, stored) in [
        (&mut incoming.labels, &stored.labels),
        (&mut incoming.annotations, &stored.annotations),
    ] {
        for (key, value) in incoming.iter_mut() {
            if value == ENTITY_REDACTED && redacts(redact, key) {
                if let Some(kept) = stored.get(key) {
                    value.clone_from(kept);
                }
            }
        }
    }
}

/// What replaces a secret value.
pub const REDACTED: &str = "*****";

/// Replaces every occurrence of a set of secret values with [`REDACTED`].
#[derive(Default)]
pub struct Redactor {
    /// Non-empty values, longest first (so a secret containing another is replaced whole).
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor of `values` (empty ones are ignored).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|value| !value.is_empty())
            .map(|value| value.as_bytes().to_vec())
            .collect();
        secrets.sort_by(|left, right| right.len().cmp(&left.len()).then(left.cmp(right)));
        secrets.dedup();
        Redactor { secrets }
    }

    /// A redactor of resolved secrets.
    pub fn of_secrets(secrets: &[SecretValue]) -> Redactor {
        Redactor::new(secrets.iter().map(|secret| secret.value.as_str()))
    }

    /// A redactor of every value a check request carries: the check's and its hooks'.
    pub fn of_request(request: &CheckRequest) -> Redactor {
        Redactor::new(
            request
                .secrets
                .iter()
                .chain(request.hook_secrets.values().flatten())
                .map(|secret| secret.value.as_str()),
        )
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The length of the longest value, bytes.
    pub fn longest(&self) -> usize {
        self.secrets.first().map_or(0, Vec::len)
    }

    /// The length of the secret starting at `bytes[0]`, if any.
    fn match_at(&self, bytes: &[u8]) -> Option<usize> {
        self.secrets
            .iter()
            .find(|secret| bytes.starts_with(secret))
            .map(Vec::len)
    }

    /// `text` with every value replaced.
    pub fn redact_str(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_owned();
        }
        let (redacted, _) = self.redact_cut(text.as_bytes(), text.len());
        String::from_utf8_lossy(&redacted).into_owned()
    }

    /// Replaces the values in `text` in place (no copy when none occurs).
    pub fn redact_in_place(&self, text: &mut String) {
        if self
            .secrets
            .iter()
            .any(|secret| memchr_contains(text.as_bytes(), secret))
        {
            *text = self.redact_str(text);
        }
    }

    /// Replaces the values in every string of a JSON value.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) => self.redact_in_place(text),
            serde_json::Value::Array(items) => {
                for item in items {
                    self.redact_json(item);
                }
            }
            serde_json::Value::Object(map) => {
                for item in map.values_mut() {
                    self.redact_json(item);
                }
            }
            _ => {}
        }
    }

    /// `bytes[..cut]` with every value replaced; a value that starts before `cut` is replaced
    /// whole even when it runs past it. Also returns how far into `bytes` it got.
    pub fn redact_cut(&self, bytes: &[u8], cut: usize) -> (Vec<u8>, usize) {
        let cut = cut.min(bytes.len());
        let mut out = Vec::with_capacity(cut);
        let mut idx = 0;
        while idx < cut {
            match self.match_at(&bytes[idx..]) {
                Some(len) => {
                    out.extend_from_slice(REDACTED.as_bytes());
                    idx += len;
                }
                None => {
                    out.push(bytes[idx]);
                    idx += 1;
                }
            }
        }
        (out, idx)
    }
}

fn memchr_contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

#[cfg(test)]
mod tests {

    #[test]
    fn entities_redact_their_named_or_default_fields_and_writes_keep_them() {
        let mut meta = ObjectMeta::named("default", "web-1");
        meta.labels.insert("password".into(), "hunter2".into());
        meta.labels.insert("region".into(), "eu".into());
        meta.annotations.insert("token".into(), "abc".into());
        let stored = meta.clone();
        let mut shown = meta.clone();
        redact_entity_meta(&mut shown, &[]);
        assert_eq!(shown.labels["password"], ENTITY_REDACTED);
        assert_eq!(shown.labels["region"], "eu");
        assert_eq!(shown.annotations["token"], "abc");
        let mut named = meta.clone();
        redact_entity_meta(&mut named, &["token".to_owned()]);
        assert_eq!(
            named.labels["password"], "hunter2",
            "a list replaces the defaults"
        );
        assert_eq!(named.annotations["token"], ENTITY_REDACTED);

        // Read, changed, written back: the secret stays, a real change goes through.
        shown.labels.insert("region".into(), "us".into());
        keep_redacted_values(&mut shown, &stored, &[]);
        assert_eq!(shown.labels["password"], "hunter2");
        assert_eq!(shown.labels["region"], "us");
        let mut replaced = stored.clone();
        replaced.labels.insert("password".into(), "new".into());
        keep_redacted_values(&mut replaced, &stored, &[]);
        assert_eq!(replaced.labels["password"], "new");
    }

    use super::*;

    fn secret(name: &str, value: &str) -> SecretValue {
        SecretValue {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn longest_value_wins_and_empty_values_are_ignored() {
        let redactor = Redactor::of_secrets(&[secret("A", "abc"), secret("B", "abcdef")]);
        assert_eq!(redactor.redact_str("xabcdefyabc"), "x*****y*****");
        assert_eq!(Redactor::of_secrets(&[]).redact_str("plain"), "plain");
        assert!(Redactor::new([""]).is_empty());
    }

    #[test]
    fn a_value_across_the_cut_is_replaced_whole() {
        let redactor = Redactor::new(["hunter2"]);
        let (out, consumed) = redactor.redact_cut(b"ab hunter2 cd", 5);
        assert_eq!(out, b"ab *****");
        assert_eq!(consumed, 10);
    }

    #[test]
    fn request_values_include_hook_secrets_and_json_is_walked() {
        let mut request = CheckRequest::default();
        request.secrets.push(secret("A", "check-value"));
        request
            .hook_secrets
            .insert("h".to_owned(), vec![secret("B", "hook-value")]);
        let redactor = Redactor::of_request(&request);
        let mut json =
            serde_json::json!({"output": "check-value and hook-value", "n": [ "hook-value" ]});
        redactor.redact_json(&mut json);
        assert_eq!(
            json,
            serde_json::json!({"output": "***** and *****", "n": ["*****"]})
        );
        assert!(!format!("{redactor:?}").contains("value"));
    }
}
