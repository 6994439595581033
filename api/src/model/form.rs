//! The two forms the model is written in, and the field rules that tell them apart.
//!
//! One serde definition per type writes both forms:
//!
//! - the **manifest form**, the default: what [`crate::Resource::to_document`] writes (the
//!   store's encoding, `cairnctl get -o yaml`), with empty fields left out;
//! - the **wire form**, inside [`Wire`]: Sensu's full JSON, as Go's `encoding/json` writes the
//!   `api/core/v2` structs. A field whose json tag has no `omitempty` is always written: an
//!   empty list or map as `null` (a nil slice), a struct Sensu holds by value as an object.
//!
//! Each field carries the rule of its Sensu json tag:
//!
//! | Sensu's tag    | manifest form         | attributes                                                   |
//! |----------------|-----------------------|--------------------------------------------------------------|
//! | `x,omitempty`  | left out when empty   | `skip_serializing_if = "String::is_empty"` (or `Vec::`, …)   |
//! | `x,omitempty`  | always written        | `skip_serializing_if = "form::wire_omits"`                   |
//! | `x`            | always written        | none; `serialize_with = "form::null_when_empty"` for a list  |
//! | `x`            | left out when empty   | `skip_serializing_if = "form::manifest_omits"` (+ the above) |
//!
//! An `Option` of a scalar is `null` on the wire when unset; an `Option` of a struct Sensu holds
//! by value is written as its default object (`form::object_when_none`) and that object reads
//! back as unset (`form::none_if_default`), so a body a client got can be sent back unchanged.
//! Cairn's extension fields are left out when empty in both forms.
//!
//! Which form is being written is a thread-local flag that [`Wire`] sets for the duration of
//! one serialisation: `skip_serializing_if` sees only the field, so this is how one derive
//! writes both forms in a single pass.

use std::cell::Cell;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    static WIRE: Cell<bool> = const { Cell::new(false) };
}

/// A model value written in Sensu's full wire form: `serde_json::to_vec(&Wire(event))`.
pub struct Wire<'a, T: ?Sized>(pub &'a T);

/// A value whose Go zero value `omitempty` leaves out.
pub(crate) trait Empty {
    /// Whether the value is empty (`""`, `0`, `false`, no items, unset).
    fn is_empty(&self) -> bool;
}

// === impl Wire ===

impl<T: Serialize + ?Sized> Serialize for Wire<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let previous = WIRE.with(|wire| wire.replace(true));
        let _restore = Restore(previous);
        self.0.serialize(serializer)
    }
}

/// Puts the previous form back, also when serialising panics.
struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        WIRE.with(|wire| wire.set(self.0));
    }
}

// === impl Empty ===

impl Empty for String {
    fn is_empty(&self) -> bool {
        String::is_empty(self)
    }
}

impl<T> Empty for Vec<T> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

impl<K, V> Empty for BTreeMap<K, V> {
    fn is_empty(&self) -> bool {
        BTreeMap::is_empty(self)
    }
}

impl<T> Empty for Option<T> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}

impl Empty for i64 {
    fn is_empty(&self) -> bool {
        *self == 0
    }
}

impl Empty for u32 {
    fn is_empty(&self) -> bool {
        *self == 0
    }
}

impl Empty for bool {
    fn is_empty(&self) -> bool {
        !*self
    }
}

/// Whether the wire form is being written.
pub(crate) fn in_wire() -> bool {
    WIRE.with(Cell::get)
}

/// Sensu always writes the field (`json:"x"`); the manifest form leaves it out when empty.
pub(crate) fn manifest_omits<T: Empty>(value: &T) -> bool {
    value.is_empty() && !in_wire()
}

/// Sensu leaves the field out when empty (`json:"x,omitempty"`); the manifest form writes it.
pub(crate) fn wire_omits<T: Empty>(value: &T) -> bool {
    value.is_empty() && in_wire()
}

/// Only the wire form has the field: a key Sensu writes that Cairn keeps no value for.
pub(crate) fn in_manifest<T>(_: &T) -> bool {
    !in_wire()
}

/// An empty list or map as `null` on the wire, as Go writes a nil slice or map; as itself in
/// the manifest form.
pub(crate) fn null_when_empty<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
where
    T: Empty + Serialize,
    S: Serializer,
{
    if in_wire() && value.is_empty() {
        serializer.serialize_none()
    } else {
        value.serialize(serializer)
    }
}

/// A struct Sensu holds by value: unset, it is still an object on the wire (its default).
pub(crate) fn object_when_none<T, S>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error>
where
    T: Default + Serialize,
    S: Serializer,
{
    match value {
        Some(value) => value.serialize(serializer),
        None if in_wire() => T::default().serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// `null`, for a key Sensu writes whose value Cairn does not keep.
pub(crate) fn null<T, S: Serializer>(_: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_none()
}

/// Reads a struct Sensu holds by value: the default object (what the wire form writes for an
/// unset one, and what Sensu writes for a zero struct) means unset, like `null`.
pub(crate) fn none_if_default<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de> + Default + PartialEq,
    D: Deserializer<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.filter(|value| *value != T::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Probe {
        #[serde(
            skip_serializing_if = "manifest_omits",
            serialize_with = "null_when_empty"
        )]
        list: Vec<String>,
        #[serde(skip_serializing_if = "wire_omits")]
        name: String,
    }

    #[test]
    fn each_form_applies_its_rule_and_the_flag_is_restored() {
        let probe = Probe {
            list: Vec::new(),
            name: String::new(),
        };
        assert_eq!(
            serde_json::to_value(&probe).unwrap(),
            serde_json::json!({"name": ""})
        );
        assert_eq!(
            serde_json::to_value(Wire(&probe)).unwrap(),
            serde_json::json!({"list": null})
        );
        assert!(!in_wire(), "the wire form leaked past its serialisation");
        assert_eq!(
            serde_json::to_value(&probe).unwrap(),
            serde_json::json!({"name": ""})
        );
    }
}
