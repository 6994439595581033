//! Finds the line and column of a field path in YAML (or JSON) text, to point errors at the
//! line that holds the field.
//!
//! Only called when a document has a problem, so it re-reads the text rather than carrying
//! positions through every successful parse. It walks the path with a `DeserializeSeed` and,
//! on reaching the target, fails on purpose inside the target node: serde_yaml stamps every
//! error with the position of the node being read, which is exactly the position we want.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::problem::{FieldPath, Segment};

/// The message of the deliberate error; anything else means the path was not found.
const FOUND: &str = "cairn-locate-found";

/// Line and column (both 1-based) of `path` in `text`, when the text holds that path.
pub(crate) fn locate(text: &str, path: &FieldPath) -> Option<(usize, usize)> {
    if path.is_root() {
        return None;
    }
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let (line, column) = match (Walk {
        path: path.segments(),
    })
    .deserialize(deserializer)
    {
        Err(err) if err.to_string().contains(FOUND) => err
            .location()
            .map(|location| (location.line(), location.column()))?,
        _ => return None,
    };
    // A failure inside a mapping key is stamped with the mapping's position, so find the key
    // from there.
    match path.segments().last() {
        Some(Segment::Key(key)) => find_key(text, line, column, key),
        _ => Some((line, column)),
    }
}

/// Finds `key` in the mapping that starts at (`line`, `column`).
fn find_key(text: &str, line: usize, column: usize, key: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.get(line - 1)?;
    let flow = first.chars().nth(column - 1).is_some_and(|ch| ch == '{');
    if flow {
        // Flow style or JSON: the first `key:` (quoted or not) after the mapping's start.
        for (idx, text_line) in lines.iter().enumerate().skip(line - 1) {
            let start = if idx == line - 1 { column } else { 0 };
            let rest = text_line.get(start..).unwrap_or("");
            for candidate in [format!("\"{key}\""), format!("'{key}'"), key.to_owned()] {
                if let Some(pos) = rest.find(&candidate) {
                    let after = rest[pos + candidate.len()..].trim_start();
                    if after.starts_with(':') {
                        return Some((idx + 1, start + pos + 1));
                    }
                }
            }
        }
        return Some((line, column));
    }
    // Block style: keys of this mapping sit at its column.
    for (idx, text_line) in lines.iter().enumerate().skip(line - 1) {
        let trimmed = text_line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = text_line.len() - trimmed.len();
        // The first line of a mapping inside a sequence item starts after "- ".
        let at_column = indent + 1 == column
            || (idx == line - 1
                && text_line
                    .get(column - 1..)
                    .is_some_and(|rest| !rest.is_empty()));
        if indent + 1 < column && idx != line - 1 {
            break;
        }
        if !at_column {
            continue;
        }
        let rest = if idx == line - 1 {
            &text_line[column - 1..]
        } else {
            trimmed
        };
        let unquoted = rest.trim_start_matches(['"', '\'']);
        if let Some(after) = unquoted.strip_prefix(key) {
            if after
                .trim_start_matches(['"', '\''])
                .trim_start()
                .starts_with(':')
            {
                return Some((idx + 1, column));
            }
        }
    }
    Some((line, column))
}

/// Walks down `path`; with an empty path it fails at the node it is asked to read.
struct Walk<'p> {
    path: &'p [Segment],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.path.is_empty() {
            return deserializer.deserialize_any(Found);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or sequence")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Segment::Key(target), rest)) = self.path.split_first() else {
            return Ok(());
        };
        while let Some(matched) = map.next_key_seed(Key {
            target,
            last: rest.is_empty(),
        })? {
            if matched {
                return map.next_value_seed(Walk { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Segment::Index(target), rest)) = self.path.split_first() else {
            return Ok(());
        };
        for idx in 0..=*target {
            let found = if idx == *target {
                seq.next_element_seed(Walk { path: rest })?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if found.is_none() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Reads a mapping key; fails at it when it is the last segment of the path.
struct Key<'p> {
    target: &'p str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        let key = String::deserialize(deserializer)?;
        if key == self.target && self.last {
            return Err(de::Error::custom(FOUND));
        }
        Ok(key == self.target)
    }
}

/// Fails as soon as it is asked to visit anything.
struct Found;

impl<'de> Visitor<'de> for Found {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }

    fn visit_str<E: de::Error>(self, _value: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_i64<E: de::Error>(self, _value: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_u64<E: de::Error>(self, _value: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_f64<E: de::Error>(self, _value: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_bool<E: de::Error>(self, _value: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "type: CheckConfig
api_version: core/v2
metadata:
  name: cpu
spec:
  command: check-cpu
  intreval: 10
  subscriptions:
    - linux
    - web
  check_hooks:
    - critical: [a, b]
";

    fn at(path: FieldPath) -> Option<(usize, usize)> {
        locate(TEXT, &path)
    }

    #[test]
    fn finds_keys_and_items() {
        assert_eq!(at(FieldPath::keys(&["spec", "intreval"])), Some((7, 3)));
        assert_eq!(at(FieldPath::keys(&["metadata", "name"])), Some((4, 3)));
        assert_eq!(
            at(FieldPath::keys(&["spec", "subscriptions"]).index(1)),
            Some((10, 7))
        );
        assert_eq!(
            at(FieldPath::keys(&["spec", "check_hooks"])
                .index(0)
                .key("critical")),
            Some((12, 7))
        );
    }

    #[test]
    fn missing_paths_are_none() {
        assert_eq!(at(FieldPath::keys(&["spec", "nope"])), None);
        assert_eq!(
            at(FieldPath::keys(&["spec", "subscriptions"]).index(5)),
            None
        );
        assert_eq!(at(FieldPath::root()), None);
    }

    #[test]
    fn works_on_json() {
        let text = "{\n  \"type\": \"Handler\",\n  \"spec\": {\n    \"type\": \"pipe\"\n  }\n}";
        assert_eq!(
            locate(text, &FieldPath::keys(&["spec", "type"])),
            Some((4, 5))
        );
    }
}
