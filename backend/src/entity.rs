//! Which agent entity: a namespace and a name (an agent certificate proves both); and who
//! manages an agent's entity.

use cairn_api::ObjectMeta;

/// The label Sensu sets on an entity its agent manages (`agent-managed-entity`).
pub(crate) const MANAGED_BY_LABEL: &str = "sensu.io/managed_by";

/// [`MANAGED_BY_LABEL`]'s value for an agent-managed entity.
pub(crate) const MANAGED_BY_AGENT: &str = "sensu-agent";

/// Whether the entity with `metadata` is managed by its agent: its subscriptions, labels and
/// annotations come from the agent's configuration, and the API does not change them.
pub(crate) fn agent_managed(metadata: &ObjectMeta) -> bool {
    metadata.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_AGENT)
}

/// The [`BackendMessage::EntityConfig`] of a stored agent entity with `metadata`; `None` for
/// an agent-managed one (its agent's configuration is what counts).
///
/// [`BackendMessage::EntityConfig`]: cairn_api::agent::BackendMessage::EntityConfig
pub(crate) fn entity_config(
    metadata: &ObjectMeta,
    entity: &cairn_api::model::Entity,
) -> Option<cairn_api::agent::BackendMessage> {
    (!agent_managed(metadata)).then(|| cairn_api::agent::BackendMessage::EntityConfig {
        subscriptions: entity.subscriptions.clone(),
        labels: metadata.labels.clone(),
        annotations: metadata.annotations.clone(),
    })
}

/// An entity of one namespace, as sessions, presence, revocations and keepalives key it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EntityId {
    /// The namespace (the certificate's `O`).
    pub namespace: String,
    /// The entity name (the certificate's CN).
    pub name: String,
}

impl EntityId {
    /// The entity `name` of `namespace`.
    pub(crate) fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        EntityId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Whether an entity subscribed to `have` subscribes to any of `wanted`.
pub(crate) fn subscribes_to_any(have: &[String], wanted: &[String]) -> bool {
    wanted.iter().any(|wanted| have.contains(wanted))
}
