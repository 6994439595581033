//! `core/v2` monitoring types: checks, hooks, handlers, filters, mutators, assets, pipelines,
//! entities, events, silences and namespaces.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::form;
use crate::meta::ObjectMeta;

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// A reference to another resource, as pipelines and checks write them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceReference {
    /// Name of the referenced resource.
    pub name: String,
    /// Its type; in a check's `pipelines` it defaults to `Pipeline`.
    #[serde(rename = "type", skip_serializing_if = "form::manifest_omits")]
    pub type_name: String,
    /// Its API group; defaults to `core/v2`.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub api_version: String,
}

/// `secrets: [{name, secret}]` on checks, handlers, mutators and (a Cairn extension) hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretRef {
    /// The environment variable the value is exposed as.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub name: String,
    /// The `Secret` resource in the same namespace.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub secret: String,
}

/// `proxy_requests` on a check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyRequests {
    /// Expressions selecting the proxy entities to run the check for.
    #[serde(serialize_with = "form::null_when_empty")]
    pub entity_attributes: Vec<String>,
    /// Spread the requests over the interval.
    pub splay: bool,
    /// Percentage of the interval to spread over.
    pub splay_coverage: u32,
}

/// A `{name, value}` tag on metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricTag {
    /// Tag name.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub name: String,
    /// Tag value.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub value: String,
}

/// A threshold rule in `output_metric_thresholds`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricThreshold {
    /// Metric name.
    pub name: String,
    /// Tags the metric must carry.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub tags: Vec<MetricTag>,
    /// The limits.
    #[serde(serialize_with = "form::null_when_empty")]
    pub thresholds: Vec<MetricThresholdRule>,
    /// Status when the metric is missing.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub null_status: Option<u32>,
}

/// One `{min, max, status}` limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricThresholdRule {
    /// Lower bound, as a string as Sensu writes it.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub min: Option<serde_json::Value>,
    /// Upper bound.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub max: Option<serde_json::Value>,
    /// Status when violated.
    pub status: u32,
}

/// Declares the check fields once, for [`CheckConfig`] and the check inside an [`Event`].
///
/// The serde attributes follow Sensu's json tags (see `form`): `CheckConfig` and `Check`
/// always write `subscriptions` and `handlers` as lists, never `null` (their `MarshalJSON`).
macro_rules! check_struct {
    ($(#[$attr:meta])* $name:ident { $($(#[$fattr:meta])* $vis:vis $field:ident : $ty:ty,)* }) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// Embedded metadata (Sensu's core/v2 types carry it inside the spec).
            #[serde(skip_serializing_if = "Option::is_none")]
            pub metadata: Option<ObjectMeta>,
            /// Command run through the agent's shell.
            #[serde(skip_serializing_if = "String::is_empty")]
            pub command: String,
            /// Seconds between runs; exclusive with `cron`.
            pub interval: i64,
            /// Five-field cron schedule; exclusive with `interval`.
            #[serde(skip_serializing_if = "String::is_empty")]
            pub cron: String,
            /// Agents subscribed to any of these run the check.
            pub subscriptions: Vec<String>,
            /// Legacy handler routing.
            pub handlers: Vec<String>,
            /// Pipelines the events go through.
            #[serde(
                skip_serializing_if = "form::manifest_omits",
                serialize_with = "form::null_when_empty"
            )]
            pub pipelines: Vec<ResourceReference>,
            /// Seconds before the command is killed; 0 means none.
            pub timeout: i64,
            /// Seconds after which a missing result raises an event; 0 means off.
            pub ttl: i64,
            /// Only published checks are scheduled.
            pub publish: bool,
            /// One agent per run among the subscribers.
            pub round_robin: bool,
            /// Entity the results are attributed to.
            #[serde(skip_serializing_if = "form::manifest_omits")]
            pub proxy_entity_name: String,
            /// Run once per matching proxy entity.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub proxy_requests: Option<ProxyRequests>,
            /// Write the entity and check JSON to the command's stdin.
            pub stdin: bool,
            /// Assets put on the command's PATH.
            #[serde(
                skip_serializing_if = "form::manifest_omits",
                serialize_with = "form::null_when_empty"
            )]
            pub runtime_assets: Vec<String>,
            /// `KEY=VALUE` entries.
            #[serde(
                skip_serializing_if = "form::manifest_omits",
                serialize_with = "form::null_when_empty"
            )]
            pub env_vars: Vec<String>,
            /// Secrets exposed as environment variables.
            #[serde(
                skip_serializing_if = "form::manifest_omits",
                serialize_with = "form::null_when_empty"
            )]
            pub secrets: Vec<SecretRef>,
            /// `[{<status>: [hook names]}]`.
            #[serde(
                skip_serializing_if = "form::manifest_omits",
                serialize_with = "form::null_when_empty"
            )]
            pub check_hooks: Vec<BTreeMap<String, Vec<String>>>,
            /// How metrics are parsed out of the output.
            #[serde(skip_serializing_if = "form::manifest_omits")]
            pub output_metric_format: String,
            /// Handlers for extracted metrics.
            #[serde(
                skip_serializing_if = "form::manifest_omits",
                serialize_with = "form::null_when_empty"
            )]
            pub output_metric_handlers: Vec<String>,
            /// Tags added to extracted metrics.
            #[serde(skip_serializing_if = "Vec::is_empty")]
            pub output_metric_tags: Vec<MetricTag>,
            /// Thresholds evaluated on extracted metrics.
            #[serde(skip_serializing_if = "Vec::is_empty")]
            pub output_metric_thresholds: Vec<MetricThreshold>,
            /// Flap detection upper bound, percent.
            pub high_flap_threshold: u32,
            /// Flap detection lower bound, percent.
            pub low_flap_threshold: u32,
            /// Stored output is cut to this many bytes.
            #[serde(skip_serializing_if = "is_zero")]
            pub max_output_size: i64,
            /// Blank the output after metric extraction.
            #[serde(skip_serializing_if = "is_false")]
            pub discard_output: bool,
            /// Time windows in which the check is not scheduled.
            #[serde(skip_serializing_if = "Vec::is_empty")]
            pub subdues: Vec<serde_json::Value>,
            /// Legacy; accepted with a warning and dropped, as sensuctl does (`null` on the
            /// wire, where Sensu always writes it).
            #[serde(skip_serializing_if = "form::in_manifest", serialize_with = "form::null")]
            pub subdue: Option<serde_json::Value>,
            /// Sensu 6.14's FallbackPipeline reference, which Cairn does not model: accepted
            /// with a warning and dropped.
            #[serde(skip_serializing)]
            pub fallback_pipeline: Option<serde_json::Value>,
            $($(#[$fattr])* $vis $field: $ty,)*
        }
    };
}

check_struct! {
    /// `core/v2` `CheckConfig`.
    CheckConfig {
        /// Server-set; accepted and ignored (`json:"-"` in Sensu's check configuration).
        #[serde(skip_serializing)]
        pub scheduler: Option<serde_json::Value>,
    }
}

check_struct! {
    /// The check inside an event: the configuration plus the result.
    Check {
        /// Server-set; accepted and ignored (`null` on the wire, where Sensu writes it).
        #[serde(skip_serializing_if = "form::in_manifest", serialize_with = "form::null")]
        pub scheduler: Option<serde_json::Value>,
        /// Exit status.
        pub status: u32,
        /// Command output.
        #[serde(skip_serializing_if = "form::manifest_omits")]
        pub output: String,
        /// When the request was issued (unix s).
        #[serde(skip_serializing_if = "form::manifest_omits")]
        pub issued: i64,
        /// When the command ran (unix s).
        #[serde(skip_serializing_if = "form::manifest_omits")]
        pub executed: i64,
        /// Run time in seconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub duration: Option<f64>,
        /// The last 21 results.
        #[serde(
            skip_serializing_if = "form::manifest_omits",
            serialize_with = "form::null_when_empty"
        )]
        pub history: Vec<CheckHistory>,
        /// Consecutive results with this status.
        #[serde(skip_serializing_if = "form::manifest_omits")]
        pub occurrences: i64,
        /// Highest `occurrences` of the current incident.
        #[serde(skip_serializing_if = "form::manifest_omits")]
        pub occurrences_watermark: i64,
        /// Last time the status was 0.
        #[serde(skip_serializing_if = "form::manifest_omits")]
        pub last_ok: i64,
        /// `passing`, `failing` or `flapping`.
        #[serde(skip_serializing_if = "String::is_empty")]
        pub state: String,
        /// Percent state change over the history.
        #[serde(skip_serializing_if = "form::manifest_omits")]
        pub total_state_change: Option<u32>,
        /// Silenced entries that matched.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub silenced: Vec<String>,
        /// Whether any silenced entry matched.
        #[serde(skip_serializing_if = "form::manifest_omits")]
        pub is_silenced: bool,
        /// Hook results.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub hooks: Vec<serde_json::Value>,
        /// Agent that ran the check.
        #[serde(skip_serializing_if = "String::is_empty")]
        pub processed_by: String,
    }
}

/// One `{status, executed}` history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckHistory {
    /// Exit status.
    pub status: u32,
    /// When it ran (unix s).
    pub executed: i64,
}

impl Check {
    /// The check inside an event run from `config`: every configuration field, plus `issued`.
    pub fn from_config(config: &CheckConfig, issued: i64) -> Check {
        // Exhaustive on purpose: a field added to `CheckConfig` must be copied here.
        let CheckConfig {
            metadata,
            command,
            interval,
            cron,
            subscriptions,
            handlers,
            pipelines,
            timeout,
            ttl,
            publish,
            round_robin,
            proxy_entity_name,
            proxy_requests,
            stdin,
            runtime_assets,
            env_vars,
            secrets,
            check_hooks,
            output_metric_format,
            output_metric_handlers,
            output_metric_tags,
            output_metric_thresholds,
            high_flap_threshold,
            low_flap_threshold,
            max_output_size,
            discard_output,
            subdues,
            subdue,
            scheduler,
            fallback_pipeline,
        } = config.clone();
        Check {
            metadata,
            command,
            interval,
            cron,
            subscriptions,
            handlers,
            pipelines,
            timeout,
            ttl,
            publish,
            round_robin,
            proxy_entity_name,
            proxy_requests,
            stdin,
            runtime_assets,
            env_vars,
            secrets,
            check_hooks,
            output_metric_format,
            output_metric_handlers,
            output_metric_tags,
            output_metric_thresholds,
            high_flap_threshold,
            low_flap_threshold,
            max_output_size,
            discard_output,
            subdues,
            subdue,
            scheduler,
            fallback_pipeline,
            issued,
            ..Check::default()
        }
    }
}

/// `core/v2` `HookConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookConfig {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// Command to run.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub command: String,
    /// Seconds before it is killed; must be positive.
    pub timeout: i64,
    /// Write the event JSON to stdin.
    pub stdin: bool,
    /// Assets put on PATH.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub runtime_assets: Vec<String>,
    /// Secrets exposed to the hook's process as environment variables (a Cairn extension:
    /// Sensu's hooks have none, sensu-go#3197).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
}

/// `{host, port}` of a TCP/UDP handler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandlerSocket {
    /// Host name or address.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub host: String,
    /// Port.
    pub port: u32,
}

/// `core/v2` `Handler`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Handler {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// `pipe`, `tcp`, `udp` or `set`.
    #[serde(rename = "type", skip_serializing_if = "form::wire_omits")]
    pub handler_type: String,
    /// Command of a `pipe` handler; the event arrives on stdin.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Seconds before the handler is killed.
    pub timeout: i64,
    /// Destination of a `tcp`/`udp` handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<HandlerSocket>,
    /// Members of a `set` handler.
    #[serde(serialize_with = "form::null_when_empty")]
    pub handlers: Vec<String>,
    /// Filters that must all pass.
    #[serde(serialize_with = "form::null_when_empty")]
    pub filters: Vec<String>,
    /// Mutator applied first.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mutator: String,
    /// `KEY=VALUE` entries.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub env_vars: Vec<String>,
    /// Assets put on PATH.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub runtime_assets: Vec<String>,
    /// Secrets exposed as environment variables.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub secrets: Vec<SecretRef>,
}

/// `core/v2` `EventFilter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventFilter {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// `allow` or `deny`.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub action: String,
    /// Expressions, all of which must hold.
    #[serde(serialize_with = "form::null_when_empty")]
    pub expressions: Vec<String>,
    /// JavaScript libraries.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub runtime_assets: Vec<String>,
    /// Legacy; accepted with a warning and dropped, as sensuctl does.
    #[serde(skip_serializing)]
    pub when: Option<serde_json::Value>,
}

/// `core/v2` `Mutator`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mutator {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// Command of a `pipe` mutator.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Script of a `javascript` mutator.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub eval: String,
    /// `pipe` (default) or `javascript`.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub mutator_type: String,
    /// Seconds before the mutator is killed.
    pub timeout: i64,
    /// `KEY=VALUE` entries.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub env_vars: Vec<String>,
    /// Assets put on PATH.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub runtime_assets: Vec<String>,
    /// Secrets exposed as environment variables.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub secrets: Vec<SecretRef>,
}

/// One build of a multi-build asset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssetBuild {
    /// Where the archive is downloaded from.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub url: String,
    /// SHA-512 of the archive.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub sha512: String,
    /// Expressions over `entity.system` selecting this build.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub filters: Vec<String>,
    /// Headers sent with the download.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub headers: BTreeMap<String, String>,
}

/// `core/v2` `Asset`: either one build (`url`, `sha512`) or several (`builds`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Asset {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// Single-build URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Single-build SHA-512.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sha512: String,
    /// Single-build filters.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub filters: Vec<String>,
    /// Single-build headers.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub headers: BTreeMap<String, String>,
    /// Multi-build list; the first matching build wins.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub builds: Vec<AssetBuild>,
}

/// One workflow of a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineWorkflow {
    /// Workflow name.
    pub name: String,
    /// Filters (type `EventFilter`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<ResourceReference>,
    /// Mutator (type `Mutator`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutator: Option<ResourceReference>,
    /// Handler (type `Handler`).
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub handler: Option<ResourceReference>,
}

/// `core/v2` `Pipeline`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pipeline {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// The workflows, run independently.
    #[serde(serialize_with = "form::null_when_empty")]
    pub workflows: Vec<PipelineWorkflow>,
}

/// A network interface in `entity.system.network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkInterface {
    /// Interface name.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub name: String,
    /// MAC address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Addresses in CIDR form.
    #[serde(serialize_with = "form::null_when_empty")]
    pub addresses: Vec<String>,
}

/// `entity.system.network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// Interfaces.
    #[serde(serialize_with = "form::null_when_empty")]
    pub interfaces: Vec<NetworkInterface>,
}

/// Facts about the host an agent runs on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct System {
    /// Host name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// `linux`, `windows`, …
    #[serde(skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// Distribution.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    /// Distribution family.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform_family: String,
    /// Distribution version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform_version: String,
    /// CPU architecture.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub arch: String,
    /// ARM version, when on ARM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm_version: Option<i64>,
    /// `glibc`, `musl`, …
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub libc_type: String,
    /// Virtualisation system.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub vm_system: String,
    /// `host` or `guest`.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub vm_role: String,
    /// Cloud provider, when detected.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub cloud_provider: String,
    /// Float ABI on ARM.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub float_type: String,
    /// Network interfaces.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::object_when_none",
        deserialize_with = "form::none_if_default"
    )]
    pub network: Option<Network>,
    /// Running processes.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub processes: Vec<serde_json::Value>,
}

/// `{handler}` run when an entity is deregistered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deregistration {
    /// Handler name.
    #[serde(skip_serializing_if = "form::wire_omits")]
    pub handler: String,
}

/// `core/v2` `Entity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Entity {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// `agent`, `proxy`, `backend` or `service`.
    pub entity_class: String,
    /// Subscriptions; the server adds `entity:<name>`.
    #[serde(serialize_with = "form::null_when_empty")]
    pub subscriptions: Vec<String>,
    /// Host facts.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::object_when_none",
        deserialize_with = "form::none_if_default"
    )]
    pub system: Option<System>,
    /// Unix time of the last keepalive.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub last_seen: i64,
    /// Remove the entity when its keepalive dies.
    pub deregister: bool,
    /// Handler run on deregistration.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::object_when_none",
        deserialize_with = "form::none_if_default"
    )]
    pub deregistration: Option<Deregistration>,
    /// The agent's user.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Field names masked as `REDACTED`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// Agent version.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub sensu_agent_version: String,
    /// Handlers for keepalive events.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keepalive_handlers: Vec<String>,
}

/// `core/v2` `Event`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Event {
    /// Embedded metadata; events cannot be named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// Unix time.
    #[serde(skip_serializing_if = "is_zero")]
    pub timestamp: i64,
    /// The entity the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<Entity>,
    /// The check result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// Metrics, as sent; on the wire with Sensu's keys filled in (`wire_metrics`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "wire_metrics"
    )]
    pub metrics: Option<serde_json::Value>,
    /// UUID (`null` on the wire when unset, as Sensu writes its empty byte slice).
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub id: String,
    /// Per-check counter.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub sequence: i64,
    /// Pipelines the event goes through.
    #[serde(
        skip_serializing_if = "form::manifest_omits",
        serialize_with = "form::null_when_empty"
    )]
    pub pipelines: Vec<ResourceReference>,
}

/// `metrics` in the wire form: the keys of Sensu's `Metrics` the sender left out written as
/// `null` (`handlers`, `points`, and each point's `value`, `timestamp` and `tags`), in the same
/// pass. `null`, not Go's `0`, so that the body reads back as what was stored.
fn wire_metrics<S: Serializer>(metrics: &Option<Value>, serializer: S) -> Result<S::Ok, S::Error> {
    match metrics {
        Some(Value::Object(fields)) if form::in_wire() => Filled {
            fields,
            keys: METRICS_KEYS,
        }
        .serialize(serializer),
        other => other.serialize(serializer),
    }
}

/// The keys Sensu always writes in `Metrics`.
const METRICS_KEYS: &[&str] = &["handlers", "points"];
/// The keys Sensu always writes in a `MetricPoint` (its `name` is `omitempty`).
const POINT_KEYS: &[&str] = &["value", "timestamp", "tags"];

/// A JSON object written with `null` for those of `keys` it lacks; the objects of its `points`
/// list likewise with a point's keys.
struct Filled<'a> {
    fields: &'a serde_json::Map<String, Value>,
    keys: &'static [&'static str],
}

/// The `points` of a `Metrics`.
struct Points<'a>(&'a [Value]);

/// One item of `points`: an object gets its keys, anything else is written as sent.
enum PointRef<'a> {
    Filled(Filled<'a>),
    Other(&'a Value),
}

impl Serialize for Filled<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.fields {
            match value {
                Value::Array(points) if key == "points" && self.keys == METRICS_KEYS => {
                    map.serialize_entry(key, &Points(points))?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        for key in self.keys {
            if !self.fields.contains_key(*key) {
                map.serialize_entry(key, &Value::Null)?;
            }
        }
        map.end()
    }
}

impl Serialize for Points<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|point| match point {
            Value::Object(fields) => PointRef::Filled(Filled {
                fields,
                keys: POINT_KEYS,
            }),
            other => PointRef::Other(other),
        }))
    }
}

impl Serialize for PointRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PointRef::Filled(filled) => filled.serialize(serializer),
            PointRef::Other(value) => value.serialize(serializer),
        }
    }
}

/// `core/v2` `Silenced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Silenced {
    /// Embedded metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// Subscription to silence, or empty for any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subscription: String,
    /// Check to silence, or empty for any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub check: String,
    /// Unix time from which it applies.
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub begin: i64,
    /// Seconds until it expires; -1 means never.
    pub expire: i64,
    /// Unix time at which it expires (server-set).
    #[serde(skip_serializing_if = "form::manifest_omits")]
    pub expire_at: i64,
    /// Remove it when the check resolves.
    pub expire_on_resolve: bool,
    /// Who created it (server-set).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub creator: String,
    /// Why.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Default for Silenced {
    fn default() -> Self {
        Silenced {
            metadata: None,
            subscription: String::new(),
            check: String::new(),
            begin: 0,
            expire: -1,
            expire_at: 0,
            expire_on_resolve: false,
            creator: String::new(),
            reason: String::new(),
        }
    }
}

impl Silenced {
    /// The name Sensu gives every silenced entry: `<subscription or *>:<check or *>`.
    pub fn canonical_name(&self) -> String {
        let side = |value: &str| {
            if value.is_empty() {
                "*".to_owned()
            } else {
                value.to_owned()
            }
        };
        format!("{}:{}", side(&self.subscription), side(&self.check))
    }
}

/// `core/v2` `Namespace`: its spec is only `{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Namespace {
    /// The namespace's name.
    pub name: String,
}
