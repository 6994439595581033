//! `cairn-backend`: the store, the REST API, auth and RBAC, agent sessions, the scheduler, the
//! event pipeline, secrets providers and replicators.
//!
//! The modules form layers, each depending only on those below it (`tests/tidy.rs`… see
//! `ARCHITECTURE.md`):
//!
//! `app` > `http` > {`agents`, `federation`} > {`events`, `auth`} > {`secrets`, `coord`,
//! `datadir`} > `store` > {`clock`, `shutdown`, `entity`, `pki`, `listen`}.
//!
//! Other crates (the binary, the benches, the tests) see `app` (which re-exports what they
//! configure of the lower layers), `datadir`, `store`, `listen` and Sensu's event rules
//! (`events::rules`); everything else is `pub(crate)`.

pub(crate) mod agents;
pub mod app;
pub(crate) mod auth;
pub(crate) mod clock;
pub(crate) mod coord;
pub mod datadir;
pub(crate) mod entity;
pub mod events;
pub(crate) mod federation;
pub(crate) mod http;
pub mod listen;
pub(crate) mod pki;
pub(crate) mod secrets;
pub(crate) mod shutdown;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
