//! The fields Cairn accepts but does not act on yet.
//!
//! Everything Sensu's model accepts is stored, but a field that is stored and then ignored
//! misleads the operator, who believes it works. [`inert_fields`] names each such field that a
//! resource sets, with what happens instead; [`crate::validate::validate`] reports them as
//! warnings (so `cairnctl lint`, `diff` and `apply` show them with their line), and the
//! backend answers a write that sets one with a `Warning` header per field.
//!
//! The list is kept here, in one place: when a feature lands, its entry goes. Sensu's legacy
//! fields (`subdue`, `when`) and server-set ones (`scheduler`) are warned about by `validate`
//! itself and are not repeated here.

use crate::model::{Entity, Spec};
use crate::problem::FieldPath;
use crate::resource::Resource;

/// A field a resource sets that Cairn stores but does not act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inert {
    /// Where it is, from the document's root (`spec.redact`).
    pub path: FieldPath,
    /// What Cairn does instead, for the operator.
    pub consequence: &'static str,
}

/// Prefix of every warning [`crate::validate::validate`] makes of an [`Inert`] field.
pub const INERT_PREFIX: &str = "accepted but not acted on";

const ENTITY_REDACT: &str =
    "Cairn does not redact entity labels and annotations yet; they are shown as stored";

/// The fields `resource` sets that Cairn does not act on, in field order.
pub fn inert_fields(resource: &Resource) -> Vec<Inert> {
    let mut found = Found::default();
    match &resource.spec {
        Spec::Entity(entity) => found.entity(entity),
        Spec::Event(event) => {
            if let Some(entity) = &event.entity {
                found.entity_at(entity, "entity");
            }
        }
        // Everything these set is acted on.
        Spec::Handler(_)
        | Spec::EventFilter(_)
        | Spec::Mutator(_)
        | Spec::Pipeline(_)
        | Spec::CheckConfig(_)
        | Spec::HookConfig(_)
        | Spec::Asset(_)
        | Spec::Silenced(_)
        | Spec::Namespace(_)
        | Spec::ClusterRole(_)
        | Spec::ClusterRoleBinding(_)
        | Spec::Role(_)
        | Spec::RoleBinding(_)
        | Spec::User(_)
        | Spec::ApiKey(_)
        | Spec::EnvProvider(_)
        | Spec::VaultProvider(_)
        | Spec::Secret(_)
        | Spec::Cluster(_)
        | Spec::Replicator(_)
        | Spec::EtcdReplicator(_) => {}
    }
    found.0
}

#[derive(Default)]
struct Found(Vec<Inert>);

// === impl Found ===

impl Found {
    fn push(&mut self, path: &[&str], consequence: &'static str) {
        let mut keys = vec!["spec"];
        keys.extend_from_slice(path);
        // `&[]` names the whole spec.
        self.0.push(Inert {
            path: FieldPath::keys(&keys),
            consequence,
        });
    }

    fn entity(&mut self, entity: &Entity) {
        if !entity.redact.is_empty() {
            self.push(&["redact"], ENTITY_REDACT);
        }
    }

    /// An entity inside an event, at `spec.<at>`: only what the event's entity does (its
    /// subscriptions are the agent's own, reported by the agent).
    fn entity_at(&mut self, entity: &Entity, at: &str) {
        if !entity.redact.is_empty() {
            self.push(&[at, "redact"], ENTITY_REDACT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn inert_of(yaml: &str) -> Vec<(String, &'static str)> {
        let manifests = codec::load_str("test.yaml", yaml);
        assert!(
            manifests
                .problems
                .iter()
                .all(|problem| !problem.issue.is_error()),
            "{:?}",
            manifests.problems
        );
        manifests
            .resources
            .iter()
            .flat_map(|located| inert_fields(&located.resource))
            .map(|inert| (inert.path.to_string(), inert.consequence))
            .collect()
    }

    #[test]
    fn handler_mutator_and_filter_assets_are_acted_on() {
        let found = inert_of(
            "type: Handler
api_version: core/v2
metadata: {name: slack, namespace: default}
spec:
  type: pipe
  command: sensu-slack-handler
  runtime_assets: [sensu-slack-handler]
---
type: Mutator
api_version: core/v2
metadata: {name: shape, namespace: default}
spec:
  command: shape
  runtime_assets: [shapers]
---
type: EventFilter
api_version: core/v2
metadata: {name: hours, namespace: default}
spec:
  action: allow
  expressions: [is_office_hours(event)]
  runtime_assets: [office-hours]
",
        );
        assert_eq!(found, []);
    }

    #[test]
    fn a_check_cairn_runs_fully_has_none() {
        let found = inert_of(
            "type: CheckConfig
api_version: core/v2
metadata: {name: web, namespace: default}
spec:
  command: check-http
  cron: CRON_TZ=Europe/Paris 0 9 * * *
  subscriptions: [web]
  subdues: [{begin: '2026-01-01T17:00:00+01:00', end: '2026-01-02T08:00:00+01:00', repeat: [weekdays]}]
  proxy_entity_name: site
  runtime_assets: [http-checks]
  handlers: [slack]
  output_metric_format: graphite_plaintext
  output_metric_handlers: [influx]
  check_hooks: [{critical: [ps]}]
  stdin: true
  ttl: 120
  pipelines: [{name: alerts, type: Pipeline, api_version: core/v2}]
",
        );
        assert_eq!(found, []);
    }

    #[test]
    fn an_asset_is_acted_on_and_an_entitys_redact_is_not() {
        let found = inert_of(
            "type: Asset
api_version: core/v2
metadata: {name: tools, namespace: default}
spec:
  url: https://example.com/tools.tar.gz
  sha512: 4f8e6e2bd0e2f1e1a1d2ab37bdc6d1e2c55d1a0c05e56e3c6e1cba59e6c54b23e1a9e4d3e5ef93e6b6fc2f1f4d0c6b8e6e1f2a3b4c5d6e7f8091a2b3c4d5e6f7
---
type: Entity
api_version: core/v2
metadata: {name: web-1, namespace: default}
spec:
  entity_class: agent
  subscriptions: [web]
  redact: [password]
---
type: Entity
api_version: core/v2
metadata: {name: router, namespace: default}
spec:
  entity_class: proxy
  subscriptions: [network]
",
        );
        let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(paths, ["spec.redact"]);
    }
}
