//! `cairn-agent`: the mTLS session to the backend, check execution, keepalives, the local event
//! API, and install/bootstrap.
//!
//! Only the command line exists so far; the agent lands with the agent issue.
