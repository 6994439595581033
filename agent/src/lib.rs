//! `cairn-agent`: the mTLS session to the backend, check execution, keepalives, the local event
//! API, and install/bootstrap.
//!
//! - [`install`] enrols the host with a join token over TLS pinned by [`pin`];
//! - [`start`] runs the agent: [`session`] (the WebSocket session, with [`backoff`] between
//!   attempts), [`queue`] (events on disk until acknowledged), [`exec`] (checks, with [`assets`]:
//!   their runtime assets) and [`localapi`] (events from local scripts), with [`socket`]
//!   (Sensu's TCP/UDP socket for 1.x check results) and [`allowlist`] (the commands checks and
//!   hooks may run).

pub mod allowlist;
pub mod assets;
pub mod backoff;
pub mod certs;
pub mod config;
pub mod exec;
mod extract;
pub mod facts;
pub mod fsutil;
pub mod install;
pub mod localapi;
pub mod pin;
pub mod queue;
pub mod session;
pub mod sim;
pub mod socket;
pub mod start;
