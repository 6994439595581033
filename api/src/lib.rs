//! `cairn-api`: what crosses a process boundary in Cairn.
//!
//! The resource model ([`model`], [`Resource`]), the type registry ([`Kind`]), validation
//! ([`validate`]) and the manifest codec ([`codec`]). The backend, the agent and the reconciler
//! all depend on this crate and on nothing of each other. Without features it does no network
//! I/O and starts no process; `client` (the REST client), `process` (the process runner) and
//! `logging` (the tracing subscriber) add what does; `js` adds a sandboxed JavaScript engine
//! (threads, no I/O); `assets` adds runtime assets (downloads, archives, a cache on disk).

pub mod agent;
#[cfg(feature = "assets")]
pub mod assets;
pub mod backoff;
#[cfg(feature = "client")]
pub mod client;
pub mod codec;
pub mod gitops;
pub mod inert;
#[cfg(feature = "js")]
pub mod js;
pub mod kind;
mod locate;
#[cfg(feature = "logging")]
pub mod logging;
pub mod meta;
pub mod metrics;
pub mod model;
pub mod problem;
#[cfg(feature = "process")]
pub mod process;
pub mod redact;
pub mod resource;
pub mod schedule;
pub mod selector;
pub mod tokens;
pub mod validate;

pub use kind::Kind;
pub use meta::ObjectMeta;
pub use model::Spec;
pub use problem::{FieldPath, Issue, Location, Problem, Severity};
pub use resource::{Decoded, Resource, ResourceKey, UnsupportedType};
