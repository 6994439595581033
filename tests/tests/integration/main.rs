//! Every end-to-end test of Cairn in one test binary, a module per area, so that the harness
//! (`cairn_tests`) and the workspace's dependencies link once rather than once per file.
//! Run one area with `cargo test -p cairn-tests --test integration -- agent::`.

mod agent;
mod agent_extras;
mod agent_identity;
mod assets;
mod backend;
mod backend_assets;
mod binaries;
mod cairnctl;
mod cairnctl_events;
mod cluster;
mod common;
mod compat_fields;
mod corpus_pipeline;
mod etcd_harness;
mod federation_bounds;
mod federation_replication;
mod federation_security;
mod federation_view;
mod gitops;
mod handlers;
mod http;
mod inert;
mod logins;
mod metrics;
mod pipeline;
mod scheduling;
mod secrets;
mod security;
mod sensu_clients;
mod ui;
mod workflows;
