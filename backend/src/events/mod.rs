//! Events: Sensu's event rules, ingestion (store an event, keep its entity and check state),
//! the check-state cache and the handler pipeline.

pub mod checkstate;
pub mod ingest;
pub mod pipeline;
pub mod rules;
