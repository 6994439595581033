//! `cairn-reconciler`: manifest sources, diff, plan, apply, prune and watch, and the operator
//! CLI `cairnctl` built on them.

pub mod cli;
pub mod config;
pub mod ctl;
pub mod exit;
pub mod lint;
