//! Federation: this backend as a gateway for downstream clusters that share its JWT signing key.
//!
//! - [`budget`] — how much of downstreams' answers the gateway holds: per request, and at once
//!   over all of them.
//! - [`client`] — HTTPS to a registered `Cluster`: TLS trusting only the cluster's CA, failover
//!   over its `api_urls`, and the one bounded reader of its answers.
//! - [`replicator`] — one-way replication of chosen resources to downstream clusters.
//!
//! The federated view (cluster health, listing every cluster's events and entities, the proxy
//! to a registered cluster) is HTTP through and through: it is `crate::http::federation`.

use std::sync::Arc;

use crate::auth::TokenIssuer;
use crate::store::resources::Resources;

pub(crate) mod budget;
pub(crate) mod client;
pub(crate) mod replicator;

/// What the replicators work with (built once, in `app`).
#[derive(Clone)]
pub(crate) struct Federation {
    /// Typed resources over the store (definitions, copies' sources, status records).
    pub resources: Resources,
    /// Mints the short-lived tokens the replicators present downstream.
    pub issuer: Arc<TokenIssuer>,
    /// The bytes of downstream answers held at once, shared with the federated view.
    pub budget: budget::Budget,
}
