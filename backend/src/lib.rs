//! `cairn-backend`: the store, the REST API, auth and RBAC, agent sessions, the scheduler, the
//! event pipeline, secrets providers and replicators.

pub mod agentd;
pub mod api;
pub mod auth;
pub mod authcache;
pub mod bootstrap;
pub mod checkstate;
pub mod contain;
pub mod coord;
pub mod datadir;
pub mod events;
pub mod federation;
pub mod ingest;
pub mod listen;
pub mod passwords;
pub mod pipeline;
pub mod pki;
pub mod rbac;
pub mod resources;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod sessions;
pub mod store;
pub mod tls;
pub mod watchdog;
