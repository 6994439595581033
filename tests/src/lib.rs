//! Helpers for Cairn's end-to-end tests: finding the workspace's binaries and running them.
