//! Federation: this backend as a gateway for downstream clusters that share its JWT signing key.
//!
//! - [`client`] — HTTPS to a registered `Cluster`: TLS trusting only the cluster's CA, failover
//!   over its `api_urls`.
//! - [`replicator`] — one-way replication of chosen resources to downstream clusters.
//! - [`view`] — the federated view: cluster health, listing events/entities of every cluster,
//!   and any API call aimed at a registered cluster, as the caller, with a token minted for
//!   that cluster (never the caller's own credential).

use axum::Router;

use crate::api::AppState;

pub mod client;
pub mod replicator;
pub mod view;

/// The federation routes, merged into the API router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(replicator::routes())
        .merge(view::routes())
}
