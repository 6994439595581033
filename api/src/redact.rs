//! Redaction of secret values from text that leaves a process: check and hook output on the
//! agent, handler output the backend logs. One implementation for both sides.

use crate::agent::{CheckRequest, SecretValue};

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
