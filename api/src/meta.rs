//! Object metadata shared by every resource: name, namespace, labels, annotations, creator.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Label written on everything the reconciler applies; prune only deletes what carries it.
pub const LABEL_MANAGED_BY: &str = "cairn.io/managed-by";
/// Annotation recording where an applied resource came from: `<repo>@<commit>:<path>`.
pub const ANNOTATION_SOURCE: &str = "cairn.io/source";
/// Label written on what a replicator writes downstream.
pub const LABEL_REPLICATED_FROM: &str = "cairn.io/replicated-from";

/// The label value on every copy one replicator writes: `<gateway cluster>/<replicator>`, so
/// that a resync lists exactly this replicator's copies, and a copy says where it came from.
pub fn replicated_from_label(gateway: &str, replicator: &str) -> String {
    format!("{gateway}/{replicator}")
}

/// The gateway a [`replicated_from_label`] names; `None` for a value not of that form. A downstream's
/// RBAC reads it to know whose users a replicated binding's user subjects are.
pub fn replicated_from_gateway(label: &str) -> Option<&str> {
    label
        .split_once('/')
        .map(|(gateway, _)| gateway)
        .filter(|gateway| !gateway.is_empty())
}

/// Sensu's `ObjectMeta`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectMeta {
    /// Unique per (type, namespace).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Empty for cluster-wide types.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Selectable key/value pairs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Opaque key/value pairs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the server to the authenticated subject on every write.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub created_by: String,
}

impl ObjectMeta {
    /// Metadata with only a name and namespace.
    pub fn named(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            ..ObjectMeta::default()
        }
    }

    /// Merges `outer` over `self` the way Sensu merges a document's outer metadata over the
    /// metadata embedded in a core/v2 spec: non-empty scalars win, maps merge key by key.
    pub(crate) fn merge_outer(&mut self, outer: ObjectMeta) {
        if !outer.name.is_empty() {
            self.name = outer.name;
        }
        if !outer.namespace.is_empty() {
            self.namespace = outer.namespace;
        }
        if !outer.created_by.is_empty() {
            self.created_by = outer.created_by;
        }
        self.labels.extend(outer.labels);
        self.annotations.extend(outer.annotations);
    }
}
