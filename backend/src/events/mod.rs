//! Events: Sensu's event rules, ingestion (store an event, keep its entity and check state),
//! the check-state cache, the silenced entries' view and the handler pipeline.

pub(crate) mod checkstate;
pub(crate) mod ingest;
pub(crate) mod pipeline;
pub mod rules;
pub(crate) mod silences;
