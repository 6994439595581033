//! Which agent entity: a namespace and a name (an agent certificate proves both); who manages
//! an agent's entity; and the events that go with an entity when it goes.

use cairn_api::model::Event;
use cairn_api::{Kind, ObjectMeta, Spec};

use crate::store::resources::{self, Resources};
use crate::store::Precondition;

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

/// Deletes every event of the entity `namespace/name` (as Sensu does when an entity is deleted
/// or deregisters); returns those deleted, in key order. An unreadable one is deleted and
/// logged, not returned.
///
/// # Errors
/// A store failure, as text; the events deleted until then stay deleted.
pub(crate) async fn delete_events(
    resources: &Resources,
    namespace: &str,
    name: &str,
) -> Result<Vec<Event>, String> {
    let store = resources.store();
    // Entity names hold no `/`, so this prefix is exactly this entity's events.
    let prefix = format!("{}{name}/", Resources::prefix(Kind::Event, Some(namespace)));
    let mut deleted = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list(&prefix, after.as_deref(), 1_000)
            .await
            .map_err(|err| err.to_string())?;
        for entry in &page.entries {
            if store
                .delete(&entry.key, Precondition::None)
                .await
                .map_err(|err| err.to_string())?
                .is_none()
            {
                continue;
            }
            match resources::decode(entry) {
                Ok(stored) => {
                    if let Spec::Event(event) = stored.resource.spec {
                        deleted.push(*event);
                    }
                }
                Err(err) => {
                    tracing::warn!(key = %entry.key, error = %err, "unreadable event deleted");
                }
            }
        }
        after = page.entries.last().map(|entry| entry.key.clone());
        if !page.more || after.is_none() {
            break;
        }
    }
    Ok(deleted)
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
