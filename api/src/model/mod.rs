//! Typed specs of every modelled resource type, and the [`Spec`] enum that holds any of them.

mod core;
mod federation;
mod form;
mod rbac;
mod secrets;

use serde::{Serialize, Serializer};
use serde_json::Value;

pub use self::core::{
    Asset, AssetBuild, Check, CheckConfig, CheckHistory, Deregistration, Entity, Event,
    EventFilter, Handler, HandlerSocket, HookConfig, MetricTag, MetricThreshold,
    MetricThresholdRule, Mutator, Namespace, Network, NetworkInterface, Pipeline, PipelineWorkflow,
    ProxyRequests, ResourceReference, SecretRef, Silenced, System,
};
pub use self::federation::{Cluster, EtcdReplicator, Replicator};
pub use self::form::Wire;
pub use self::rbac::{ApiKey, Role, RoleBinding, RoleRef, Rule, Subject, User};
pub use self::secrets::{
    glob_matches, EnvAllow, EnvProvider, EnvRefusal, RateLimiter, Secret, VaultClient,
    VaultProvider, VaultTls, ENV_NEVER_SERVED_PREFIX,
};
use crate::kind::Kind;

macro_rules! specs {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// The spec of one resource; the variant is its [`Kind`].
        #[derive(Debug, Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum Spec {
            $($variant($ty),)*
        }

        impl Spec {
            /// The kind this spec belongs to.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Spec::$variant(_) => Kind::$variant,)*
                }
            }

            /// Decodes a spec of `kind` from JSON, recording the path of any error.
            pub(crate) fn from_value(
                kind: Kind,
                value: Value,
            ) -> Result<Spec, serde_path_to_error::Error<serde_json::Error>> {
                match kind {
                    $(Kind::$variant => serde_path_to_error::deserialize(value).map(Spec::$variant),)*
                }
            }

            /// The spec as JSON, in the manifest form (empty fields left out).
            pub fn to_value(&self) -> Value {
                serde_json::to_value(self).expect("specs have string keys and serialize to JSON")
            }

            /// The spec as JSON, in Sensu's full wire form (see [`Wire`]).
            pub fn to_wire_value(&self) -> Value {
                serde_json::to_value(Wire(self))
                    .expect("specs have string keys and serialize to JSON")
            }

            /// The default spec of `kind`, with every default Sensu applies.
            pub fn default_for(kind: Kind) -> Spec {
                match kind {
                    $(Kind::$variant => Spec::$variant(<$ty>::default()),)*
                }
            }
        }

        /// The inner spec's fields, in the form being written (see [`Wire`]).
        impl Serialize for Spec {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Spec::$variant(spec) => spec.serialize(serializer),)*
                }
            }
        }
    };
}

specs! {
    Namespace(Namespace),
    ClusterRole(Role),
    ClusterRoleBinding(RoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    User(User),
    ApiKey(ApiKey),
    EnvProvider(EnvProvider),
    VaultProvider(VaultProvider),
    Secret(Secret),
    Asset(Asset),
    EventFilter(EventFilter),
    Mutator(Mutator),
    HookConfig(HookConfig),
    Handler(Handler),
    Pipeline(Pipeline),
    CheckConfig(CheckConfig),
    Entity(Entity),
    Silenced(Silenced),
    Event(Box<Event>),
    Cluster(Cluster),
    Replicator(Replicator),
    EtcdReplicator(EtcdReplicator),
}

#[cfg(test)]
mod tests;
