//! The federated view (STUB: being implemented).

use axum::Router;

use crate::api::AppState;

/// The federated view's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
