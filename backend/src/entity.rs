//! Which agent entity: a namespace and a name (an agent certificate proves both).

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
