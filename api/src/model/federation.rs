//! `federation/v1` types: registered clusters and replicators.

use serde::{Deserialize, Serialize};

use super::form;

/// `federation/v1` `Cluster`: the REST API URLs of one downstream cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// API URLs of the cluster's backends.
    pub api_urls: Vec<String>,
    /// PEM of the cluster's CA: the only certificate its API is trusted under.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_cert: String,
}

/// `federation/v1` `Replicator`: Cairn's one-way replicator to a registered `Cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replicator {
    /// Name of the destination `Cluster`.
    pub cluster: String,
    /// API group of the replicated type.
    pub api_version: String,
    /// Type name of the replicated resources, e.g. `Role`.
    pub resource: String,
    /// Only this namespace; empty means all.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Only resources whose labels match (Sensu's label selector syntax, e.g.
    /// `region == eu && tier in [web, db]`); empty means all.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label_selector: String,
    /// Seconds between full resyncs.
    pub replication_interval_seconds: u32,
}

impl Default for Replicator {
    fn default() -> Self {
        Replicator {
            cluster: String::new(),
            api_version: crate::kind::CORE_V2.to_owned(),
            resource: String::new(),
            namespace: String::new(),
            label_selector: String::new(),
            replication_interval_seconds: 30,
        }
    }
}

/// `federation/v1` `EtcdReplicator`, accepted and stored for compatibility with Sensu.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdReplicator {
    /// CA certificate file of the destination etcd.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub ca_cert: String,
    /// Client certificate file.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub cert: String,
    /// Client key file.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub key: String,
    /// Skip TLS (only for testing).
    pub insecure: bool,
    /// Destination etcd URL(s), comma-separated.
    pub url: String,
    /// API group of the replicated type.
    pub api_version: String,
    /// Type name of the replicated resources.
    pub resource: String,
    /// Only this namespace; empty means all.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Seconds between replication passes.
    pub replication_interval_seconds: u32,
}

impl Default for EtcdReplicator {
    fn default() -> Self {
        EtcdReplicator {
            ca_cert: String::new(),
            cert: String::new(),
            key: String::new(),
            insecure: false,
            url: String::new(),
            api_version: crate::kind::CORE_V2.to_owned(),
            resource: String::new(),
            namespace: String::new(),
            replication_interval_seconds: 30,
        }
    }
}
