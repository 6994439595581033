//! Typed resources over the key/value store: where each resource lives (its key) and how it is
//! encoded (the wrapped JSON document).

use std::sync::Arc;

use cairn_api::{Decoded, Kind, Resource};

use super::keyspace;
use crate::store::{Entry, Precondition, Revision, Store, StoreError};

/// A resource as stored, with the revision that last changed it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The resource.
    pub resource: Resource,
    /// The store revision of its last change; the API's ETag and resource version.
    pub revision: Revision,
}

/// Why a resource read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// The store refused or failed; see the source for whether a retry helps.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored value did not decode: the store holds something this version cannot read.
    /// Not helped by a retry.
    #[error("stored value at {key} is unreadable: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = ResourceError> = std::result::Result<T, E>;

/// Typed access to resources in a [`Store`].
#[derive(Clone)]
pub struct Resources {
    store: Arc<dyn Store>,
}

// === impl Resources ===

impl Resources {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Resources {
        Resources { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The key of one resource. Events are named `<entity>/<check>`.
    pub fn key(kind: Kind, namespace: &str, name: &str) -> String {
        format!("{}{name}", Resources::prefix(kind, Some(namespace)))
    }

    /// (namespace, name) of a key of `kind` made by [`Resources::key`] (namespace empty for a
    /// cluster-wide kind); empty parts for a key of another shape.
    pub fn split_key(kind: Kind, key: &str) -> (&str, &str) {
        let rest = key
            .strip_prefix(keyspace::RESOURCES)
            .and_then(|rest| rest.strip_prefix(kind.plural()))
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or("");
        if kind.is_namespaced() {
            rest.split_once('/').unwrap_or(("", rest))
        } else {
            ("", rest)
        }
    }

    /// The prefix under which resources of `kind` live, in one namespace or (for `None`, or a
    /// cluster-wide kind) all of them.
    pub fn prefix(kind: Kind, namespace: Option<&str>) -> String {
        match namespace {
            Some(namespace) if kind.is_namespaced() => {
                format!("{}{}/{namespace}/", keyspace::RESOURCES, kind.plural())
            }
            _ => format!("{}{}/", keyspace::RESOURCES, kind.plural()),
        }
    }

    /// One resource.
    ///
    /// # Errors
    /// Store failures, or a value that does not decode.
    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Stored>> {
        match self
            .store
            .get(&Resources::key(kind, namespace, name))
            .await?
        {
            Some(entry) => decode(&entry).map(Some),
            None => Ok(None),
        }
    }

    /// A page of resources of `kind` in key order, after `start_after` (a key), and whether
    /// more follow.
    ///
    /// # Errors
    /// Store failures, or a value that does not decode.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, Stored)>, bool)> {
        let page = self
            .store
            .list(&Resources::prefix(kind, namespace), start_after, limit)
            .await?;
        let mut out = Vec::with_capacity(page.entries.len());
        for entry in &page.entries {
            out.push((entry.key.clone(), decode(entry)?));
        }
        Ok((out, page.more))
    }

    /// Writes a resource under its key.
    ///
    /// # Errors
    /// [`StoreError::PreconditionFailed`] when `precondition` does not hold.
    pub async fn put(&self, resource: &Resource, precondition: Precondition) -> Result<Revision> {
        let key = Resources::key(resource.kind(), resource.namespace(), resource.name());
        let value =
            serde_json::to_vec(&resource.to_document()).expect("a JSON value always serializes");
        Ok(self.store.put(&key, value, precondition).await?)
    }

    /// Deletes a resource; `None` when it was absent.
    ///
    /// # Errors
    /// [`StoreError::PreconditionFailed`] when `precondition` does not hold.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: Precondition,
    ) -> Result<Option<Revision>> {
        Ok(self
            .store
            .delete(&Resources::key(kind, namespace, name), precondition)
            .await?)
    }
}

/// Decodes a stored entry.
///
/// # Errors
/// [`ResourceError::Corrupt`] when the value is not a resource document.
pub fn decode(entry: &Entry) -> Result<Stored> {
    let corrupt = |reason: String| ResourceError::Corrupt {
        key: entry.key.clone(),
        reason,
    };
    let document: serde_json::Value =
        serde_json::from_slice(&entry.value).map_err(|err| corrupt(err.to_string()))?;
    match Resource::from_document(document) {
        Ok(Decoded::Resource(resource)) => Ok(Stored {
            resource,
            revision: entry.mod_revision,
        }),
        Ok(Decoded::Unsupported(unsupported)) => Err(corrupt(unsupported.to_string())),
        Err(issue) => Err(corrupt(issue.to_string())),
    }
}
