//! `cairn-backend`: the store, the REST API, auth and RBAC, agent sessions, the scheduler, the
//! event pipeline, secrets providers and replicators.
//!
//! Only the command line exists so far; the server lands with the backend issue.
