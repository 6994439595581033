//! `cairn-reconciler`: manifest sources, diff, plan, apply, prune and watch, and the operator
//! CLI `cairnctl` built on them.

pub mod apply;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod exit;
pub mod fetch;
pub mod gitops;
pub mod lint;
pub mod operate;
pub mod plan;
pub mod silenced;
pub mod source;
pub mod state;
pub mod status;
pub mod sync;
pub mod table;
pub mod trigger;
pub mod watch;
pub mod webhook;
