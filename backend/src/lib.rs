//! `cairn-backend`: the store, the REST API, auth and RBAC, agent sessions, the scheduler, the
//! event pipeline, secrets providers and replicators.
//!
//! The modules form layers, each depending only on those below it (`tests/tidy.rs`… see
//! `ARCHITECTURE.md`):
//!
//! `app` > `http` > {`agents`, `federation`} > {`events`, `auth`} > {`secrets`, `coord`,
//! `datadir`} > `store` > {`clock`, `shutdown`, `entity`, `pki`, `listen`}.

pub mod agents;
pub mod app;
pub mod auth;
pub mod clock;
pub mod coord;
pub mod datadir;
pub mod entity;
pub mod events;
pub mod federation;
pub mod http;
pub mod listen;
pub mod pki;
pub mod secrets;
pub mod shutdown;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
