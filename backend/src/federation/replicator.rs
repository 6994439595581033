//! One-way replicators (STUB: being implemented).

use axum::Router;

use crate::api::AppState;

/// The replicator status routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
