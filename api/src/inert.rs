//! The fields Cairn accepts but does not act on yet: none, since issue 19.
//!
//! Everything Sensu's model accepts is stored, but a field that is stored and then ignored
//! misleads the operator, who believes it works. [`inert_fields`] names each such field that a
//! resource sets, with what happens instead; [`crate::validate::validate`] reports them as
//! warnings (so `cairnctl lint`, `diff` and `apply` show them with their line), and the
//! backend answers a write that sets one with a `Warning` header per field.
//!
//! The list is kept here, in one place: when a feature lands, its entry goes, and a field
//! Cairn accepts before it acts on it gets an entry. Since runtime assets, proxy checks,
//! subdues, cron time zones, backend-managed entities and entity `redact` landed (issue 19),
//! the list is empty; the mechanism stays. Sensu's legacy fields (`subdue`, `when`) and
//! server-set ones (`scheduler`) are warned about by `validate` itself and are not repeated
//! here.

use crate::problem::FieldPath;
use crate::resource::Resource;

/// A field a resource sets that Cairn stores but does not act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inert {
    /// Where it is, from the document's root (`spec.runtime_assets`).
    pub path: FieldPath,
    /// What Cairn does instead, for the operator.
    pub consequence: &'static str,
}

/// Prefix of every warning [`crate::validate::validate`] makes of an [`Inert`] field.
pub const INERT_PREFIX: &str = "accepted but not acted on";

/// The fields `resource` sets that Cairn does not act on, in field order: none today.
pub fn inert_fields(resource: &Resource) -> Vec<Inert> {
    let _ = resource;
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn what_issue_19_made_work_is_not_named() {
        let manifests = codec::load_str(
            "test.yaml",
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
---
type: Handler
api_version: core/v2
metadata: {name: slack, namespace: default}
spec: {type: pipe, command: sensu-slack-handler, runtime_assets: [sensu-slack-handler]}
---
type: Entity
api_version: core/v2
metadata: {name: web-1, namespace: default}
spec: {entity_class: agent, subscriptions: [web], redact: [password]}
",
        );
        assert!(
            manifests
                .problems
                .iter()
                .all(|problem| !problem.issue.is_error()),
            "{:?}",
            manifests.problems
        );
        assert_eq!(manifests.resources.len(), 3);
        for located in &manifests.resources {
            assert_eq!(inert_fields(&located.resource), []);
        }
    }
}
