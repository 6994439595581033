//! Events: Sensu's event rules, ingestion (store an event, keep its entity and check state),
//! the check-state cache and the handler pipeline.

pub(crate) mod checkstate;
pub(crate) mod ingest;
pub(crate) mod pipeline;
pub mod rules;
