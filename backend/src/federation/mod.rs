//! Federation: this backend as a gateway for downstream clusters that share its JWT signing key.
//!
//! - [`budget`] — how much of downstreams' answers the gateway holds: per request, and at once
//!   over all of them.
//! - [`client`] — HTTPS to a registered `Cluster`: TLS trusting only the cluster's CA, failover
//!   over its `api_urls`, and the one bounded reader of its answers.
//! - [`replicator`] — one-way replication of chosen resources to downstream clusters.
//! - [`view`] — the federated view: cluster health, listing events/entities of every cluster,
//!   and any API call aimed at a registered cluster, as the caller, with a token minted for
//!   that cluster (never the caller's own credential).

use axum::Router;

use crate::http::AppState;

pub mod budget;
pub mod client;
pub mod replicator;
pub mod view;

/// The federation routes, merged into the API router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(replicator::routes())
        .merge(view::routes())
}
