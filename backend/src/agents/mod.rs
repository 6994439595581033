//! Agents: the mutual-TLS listener and its connections, the sessions they hold, the keepalive
//! watchdog, joining (join tokens, the agent CA, revocations) and the check scheduler.

pub mod connection;
pub mod join;
pub mod scheduler;
pub mod sessions;
pub mod watchdog;
