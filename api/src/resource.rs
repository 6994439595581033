//! A typed resource (metadata plus spec), its identity, and the conversions between it and the
//! wrapped manifest form and the REST wire forms.

use std::fmt;

use serde_json::{Map, Value};

use crate::kind::{Kind, Resolved};
use crate::meta::ObjectMeta;
use crate::model::{Namespace, Spec};
use crate::problem::{FieldPath, Issue};

/// One resource: who it is (metadata) and what it is (spec).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Name, namespace, labels, annotations.
    pub metadata: ObjectMeta,
    /// The typed body; its variant is the resource's kind.
    pub spec: Spec,
}

/// The identity of a resource: kind, namespace (empty for cluster-wide kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace; empty for cluster-wide kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// What one manifest document turned out to be.
// Transient: returned once per document and unpacked at once, so boxing the common variant
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A modelled resource.
    Resource(Resource),
    /// A Sensu type that Cairn does not model.
    Unsupported(UnsupportedType),
}

/// A document whose type Cairn knowingly does not model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedType {
    /// Its `api_version`, or `None` for the pre-5.x format that has none.
    pub api_version: Option<String>,
    /// Its `type`.
    pub type_name: String,
}

const ENVELOPE_KEYS: [&str; 4] = ["type", "api_version", "metadata", "spec"];

// === impl Resource ===

impl Resource {
    /// A resource from its parts.
    pub fn new(metadata: ObjectMeta, spec: Spec) -> Resource {
        Resource { metadata, spec }
    }

    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The resource's namespace (empty for cluster-wide kinds).
    pub fn namespace(&self) -> &str {
        &self.metadata.namespace
    }

    /// The resource's identity.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind(),
            namespace: if self.kind().is_namespaced() {
                self.metadata.namespace.clone()
            } else {
                String::new()
            },
            name: self.metadata.name.clone(),
        }
    }

    /// Decodes one manifest document (the wrapped `type/api_version/metadata/spec` form).
    ///
    /// Follows Sensu's rules: for core/v2 types metadata may also sit inside the spec and the
    /// outer metadata is merged over it; a `Namespace`'s spec is just `{name}`; `null` fields
    /// mean "use the default", and so does the all-default object of a struct Sensu holds by
    /// value (`system`, `system.network`, `deregistration`), which the wire form writes for an
    /// unset one.
    ///
    /// # Errors
    /// An [`Issue`] naming the field that is wrong. Validation beyond the shape of the document
    /// is [`crate::validate`]'s job.
    pub fn from_document(document: Value) -> Result<Decoded, Issue> {
        let Value::Object(mut envelope) = document else {
            return Err(Issue::error(
                FieldPath::root(),
                format!(
                    "expected a resource (a mapping with type, api_version, metadata and spec), found {}",
                    describe(&document)
                ),
            ));
        };
        if let Some(unknown) = envelope
            .keys()
            .find(|key| !ENVELOPE_KEYS.contains(&key.as_str()))
        {
            return Err(Issue::error(
                FieldPath::keys(&[unknown]),
                format!(
                    "unknown field \"{unknown}\"; a resource has only type, api_version, metadata and spec"
                ),
            ));
        }
        let type_name = match envelope.remove("type") {
            Some(Value::String(type_name)) if !type_name.is_empty() => type_name,
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(Issue::error(
                    FieldPath::keys(&["type"]),
                    "missing field \"type\"",
                ))
            }
            Some(other) => {
                return Err(Issue::error(
                    FieldPath::keys(&["type"]),
                    format!("expected a string, found {}", describe(&other)),
                ))
            }
        };
        let api_version = match envelope.remove("api_version") {
            Some(Value::String(api_version)) if !api_version.is_empty() => api_version,
            None | Some(Value::Null) => {
                return Ok(Decoded::Unsupported(UnsupportedType {
                    api_version: None,
                    type_name,
                }))
            }
            Some(other) => {
                return Err(Issue::error(
                    FieldPath::keys(&["api_version"]),
                    format!(
                        "expected a string like \"core/v2\", found {}",
                        describe(&other)
                    ),
                ))
            }
        };
        let kind = match Kind::resolve(&api_version, &type_name) {
            Ok(Resolved::Modelled(kind)) => kind,
            Ok(Resolved::Unsupported) => {
                return Ok(Decoded::Unsupported(UnsupportedType {
                    api_version: Some(api_version),
                    type_name,
                }))
            }
            Err(err @ crate::kind::ResolveError::UnknownApiVersion(_)) => {
                return Err(Issue::error(
                    FieldPath::keys(&["api_version"]),
                    err.to_string(),
                ))
            }
            Err(err) => return Err(Issue::error(FieldPath::keys(&["type"]), err.to_string())),
        };
        let outer_metadata = match envelope.remove("metadata") {
            None | Some(Value::Null) => ObjectMeta::default(),
            Some(value) => decode_metadata(value, &FieldPath::keys(&["metadata"]))?,
        };
        let spec = match envelope.remove("spec") {
            Some(Value::Object(spec)) => spec,
            None | Some(Value::Null) => {
                return Err(Issue::error(FieldPath::keys(&["spec"]), "no spec provided"))
            }
            Some(other) => {
                return Err(Issue::error(
                    FieldPath::keys(&["spec"]),
                    format!("expected a mapping, found {}", describe(&other)),
                ))
            }
        };
        Resource::from_parts(kind, outer_metadata, spec, &FieldPath::keys(&["spec"]))
            .map(Decoded::Resource)
    }

    /// Decodes a resource of `kind` in the form the REST API speaks for it: unwrapped for
    /// core/v2 (spec fields plus `metadata`), wrapped for every other group.
    ///
    /// # Errors
    /// An [`Issue`] naming the field that is wrong.
    pub fn from_wire(kind: Kind, body: Value) -> Result<Resource, Issue> {
        if kind.is_wrapped_on_wire() {
            let Value::Object(mut body) = body else {
                return Err(Issue::error(FieldPath::root(), "expected a JSON object"));
            };
            // The wrapped form names its type; fill it in when a client leaves it out.
            body.entry("type")
                .or_insert_with(|| Value::String(kind.type_name().to_owned()));
            body.entry("api_version")
                .or_insert_with(|| Value::String(kind.api_version().to_owned()));
            return match Resource::from_document(Value::Object(body))? {
                Decoded::Resource(resource) if resource.kind() == kind => Ok(resource),
                Decoded::Resource(resource) => Err(Issue::error(
                    FieldPath::keys(&["type"]),
                    format!("expected type {kind}, found {}", resource.kind()),
                )),
                Decoded::Unsupported(unsupported) => Err(Issue::error(
                    FieldPath::keys(&["type"]),
                    format!("expected type {kind}, found {}", unsupported.type_name),
                )),
            };
        }
        let Value::Object(body) = body else {
            return Err(Issue::error(FieldPath::root(), "expected a JSON object"));
        };
        Resource::from_parts(kind, ObjectMeta::default(), body, &FieldPath::root())
    }

    fn from_parts(
        kind: Kind,
        outer_metadata: ObjectMeta,
        mut spec: Map<String, Value>,
        spec_path: &FieldPath,
    ) -> Result<Resource, Issue> {
        strip_nulls(&mut spec);
        let mut metadata = if kind.api_version() == crate::kind::CORE_V2 {
            match spec.remove("metadata") {
                Some(inner) => decode_metadata(inner, &spec_path.key("metadata"))?,
                None => ObjectMeta::default(),
            }
        } else {
            ObjectMeta::default()
        };
        metadata.merge_outer(outer_metadata);
        if kind == Kind::Namespace {
            return namespace_from_parts(metadata, spec, spec_path);
        }
        let spec = Spec::from_value(kind, Value::Object(spec))
            .map_err(|err| serde_issue(spec_path, &err))?;
        if let Spec::Silenced(silenced) = &spec {
            // Sensu names every silenced entry after its subscription and check, whatever the
            // document says.
            if !silenced.subscription.is_empty() || !silenced.check.is_empty() {
                metadata.name = silenced.canonical_name();
            }
        }
        Ok(Resource { metadata, spec })
    }

    /// The wrapped manifest form: `{type, api_version, metadata, spec}`, with empty fields
    /// left out (the store's encoding and what `cairnctl get -o yaml` writes).
    pub fn to_document(&self) -> Value {
        self.wrapped(self.spec.to_value())
    }

    /// The form the REST API speaks for this kind (see [`Resource::from_wire`]), with every
    /// field Sensu's JSON has (see [`crate::model::Wire`]).
    pub fn to_wire(&self) -> Value {
        let spec = self.spec.to_wire_value();
        if self.kind().is_wrapped_on_wire() {
            return self.wrapped(spec);
        }
        let Value::Object(mut body) = spec else {
            unreachable!("every spec serializes to a JSON object")
        };
        body.insert("metadata".to_owned(), metadata_value(&self.metadata));
        Value::Object(body)
    }

    /// `{type, api_version, metadata, spec}` around `spec`.
    fn wrapped(&self, spec: Value) -> Value {
        let kind = self.kind();
        let mut envelope = Map::new();
        envelope.insert(
            "type".to_owned(),
            Value::String(kind.type_name().to_owned()),
        );
        envelope.insert(
            "api_version".to_owned(),
            Value::String(kind.api_version().to_owned()),
        );
        envelope.insert("metadata".to_owned(), metadata_value(&self.metadata));
        envelope.insert("spec".to_owned(), spec);
        Value::Object(envelope)
    }
}

// === impl ResourceKey ===

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind.plural(), self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind.plural(), self.namespace, self.name)
        }
    }
}

// === impl UnsupportedType ===

impl fmt::Display for UnsupportedType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.api_version {
            Some(api_version) => write!(f, "unsupported: {api_version}/{}", self.type_name),
            None => write!(
                f,
                "unsupported: (none)/{} (the pre-5.x format without api_version)",
                self.type_name
            ),
        }
    }
}

fn namespace_from_parts(
    outer_metadata: ObjectMeta,
    spec: Map<String, Value>,
    spec_path: &FieldPath,
) -> Result<Resource, Issue> {
    let mut namespace: Namespace = serde_path_to_error::deserialize(Value::Object(spec))
        .map_err(|err| serde_issue(spec_path, &err))?;
    if namespace.name.is_empty() {
        namespace.name = outer_metadata.name.clone();
    } else if !outer_metadata.name.is_empty() && outer_metadata.name != namespace.name {
        return Err(Issue::error(
            spec_path.key("name"),
            format!(
                "\"{}\" does not match metadata.name \"{}\"",
                namespace.name, outer_metadata.name
            ),
        ));
    }
    let metadata = ObjectMeta {
        name: namespace.name.clone(),
        ..outer_metadata
    };
    Ok(Resource {
        metadata,
        spec: Spec::Namespace(namespace),
    })
}

fn decode_metadata(value: Value, path: &FieldPath) -> Result<ObjectMeta, Issue> {
    let mut value = value;
    if let Value::Object(map) = &mut value {
        strip_nulls(map);
    }
    serde_path_to_error::deserialize(value).map_err(|err| serde_issue(path, &err))
}

fn metadata_value(metadata: &ObjectMeta) -> Value {
    serde_json::to_value(metadata).expect("metadata has string keys and serializes to JSON")
}

/// Removes `key: null` entries, recursively: Sensu treats an explicit null as "not set".
fn strip_nulls(map: &mut Map<String, Value>) {
    map.retain(|_, value| !value.is_null());
    for value in map.values_mut() {
        strip_nulls_value(value);
    }
}

fn strip_nulls_value(value: &mut Value) {
    match value {
        Value::Object(map) => strip_nulls(map),
        Value::Array(items) => items.iter_mut().for_each(strip_nulls_value),
        _ => {}
    }
}

/// Turns a serde error into an issue at the field it names, with a message written for people.
pub(crate) fn serde_issue(
    prefix: &FieldPath,
    err: &serde_path_to_error::Error<serde_json::Error>,
) -> Issue {
    let path = prefix.join(&FieldPath::from_serde(err.path()));
    let message = err.inner().to_string();
    // serde words an unknown field as "unknown field `x`, expected one of `a`, `b`"; say it
    // with the field in the path and a suggestion when one is close.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let mut text = format!("unknown field \"{field}\"");
            if let Some(best) = closest(field, &candidates) {
                text.push_str(&format!(" (did you mean \"{best}\"?)"));
            }
            let path = match path.segments().last() {
                Some(crate::problem::Segment::Key(last)) if last == field => path,
                _ => path.key(field),
            };
            return Issue::error(path, text);
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return Issue::error(path.key(field), format!("missing field \"{field}\""));
    }
    Issue::error(path, plain_types(&message.replace('`', "\"")))
}

/// Words serde's Rust type names the way a manifest author thinks of them.
fn plain_types(message: &str) -> String {
    let mut out = message.to_owned();
    for (rust, plain) in [
        ("expected i64", "expected an integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u8", "expected a non-negative integer"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        if let Some(idx) = out.find(rust) {
            if out[idx + rust.len()..]
                .chars()
                .next()
                .is_none_or(|ch| !ch.is_alphanumeric())
            {
                out.replace_range(idx..idx + rust.len(), plain);
            }
        }
    }
    out
}

/// The candidate within edit distance 2 of `word`, if there is exactly one best.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (edit_distance(word, candidate), *candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (i, left_char) in left.chars().enumerate() {
        let mut current = vec![i + 1; right.len() + 1];
        for (j, right_char) in right.iter().enumerate() {
            let substitution = previous[j] + usize::from(left_char != *right_char);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[right.len()]
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(document: Value) -> Result<Resource, String> {
        match Resource::from_document(document) {
            Ok(Decoded::Resource(resource)) => Ok(resource),
            Ok(Decoded::Unsupported(unsupported)) => Err(unsupported.to_string()),
            Err(issue) => Err(issue.to_string()),
        }
    }

    #[test]
    fn unknown_spec_field_names_field_and_suggests() {
        let err = decode(json!({
            "type": "CheckConfig", "api_version": "core/v2",
            "metadata": {"name": "cpu"},
            "spec": {"command": "true", "intreval": 10}
        }))
        .unwrap_err();
        assert_eq!(
            err,
            "spec.intreval: unknown field \"intreval\" (did you mean \"interval\"?)"
        );
    }

    #[test]
    fn nested_unknown_field_has_full_path() {
        let err = decode(json!({
            "type": "CheckConfig", "api_version": "core/v2",
            "metadata": {"name": "cpu"},
            "spec": {"interval": 10, "proxy_requests": {"splay": true, "spaly_coverage": 3}}
        }))
        .unwrap_err();
        assert_eq!(
            err,
            "spec.proxy_requests.spaly_coverage: unknown field \"spaly_coverage\" (did you mean \"splay_coverage\"?)"
        );
    }

    #[test]
    fn inner_metadata_is_merged_under_outer() {
        let resource = decode(json!({
            "type": "Handler", "api_version": "core/v2",
            "metadata": {"namespace": "ops", "labels": {"a": "outer"}},
            "spec": {"type": "pipe", "command": "cat",
                     "metadata": {"name": "h", "namespace": "default", "labels": {"a": "inner", "b": "x"}}}
        }))
        .unwrap();
        assert_eq!(resource.metadata.name, "h");
        assert_eq!(resource.metadata.namespace, "ops");
        assert_eq!(resource.metadata.labels["a"], "outer");
        assert_eq!(resource.metadata.labels["b"], "x");
    }

    #[test]
    fn namespace_takes_name_from_spec() {
        let resource =
            decode(json!({"type": "Namespace", "api_version": "core/v2", "spec": {"name": "ops"}}))
                .unwrap();
        assert_eq!(resource.key().to_string(), "namespaces/ops");
    }

    #[test]
    fn nulls_mean_defaults() {
        let resource = decode(json!({
            "type": "Silenced", "api_version": "core/v2", "metadata": {"name": "a:b", "labels": null},
            "spec": {"subscription": "a", "check": "b", "expire": null}
        }))
        .unwrap();
        let Spec::Silenced(silenced) = resource.spec else {
            panic!("not silenced")
        };
        assert_eq!(silenced.expire, -1);
    }

    #[test]
    fn wire_forms() {
        let resource = decode(json!({
            "type": "CheckConfig", "api_version": "core/v2",
            "metadata": {"name": "cpu", "namespace": "default"},
            "spec": {"command": "true", "interval": 10}
        }))
        .unwrap();
        let wire = resource.to_wire();
        assert_eq!(wire["metadata"]["name"], "cpu");
        assert_eq!(wire["interval"], 10);
        assert_eq!(
            Resource::from_wire(Kind::CheckConfig, wire).unwrap(),
            resource
        );

        let secret = decode(json!({
            "type": "Secret", "api_version": "secrets/v1",
            "metadata": {"name": "pd", "namespace": "default"},
            "spec": {"id": "PD", "provider": "env"}
        }))
        .unwrap();
        let wire = secret.to_wire();
        assert_eq!(wire["spec"]["provider"], "env");
        assert_eq!(Resource::from_wire(Kind::Secret, wire).unwrap(), secret);
    }
}
