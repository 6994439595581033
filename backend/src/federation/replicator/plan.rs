//! What a replicator copies: the resources it selects (type, namespace, labels), the form of
//! their downstream copies, the changes it pushes, and the resync diff between the gateway's
//! resources and the downstream's copies.

use std::collections::BTreeMap;

use cairn_api::kind::Resolved;
use cairn_api::meta::LABEL_REPLICATED_FROM;
use cairn_api::model::Replicator;
use cairn_api::selector::LabelSelector;
use cairn_api::{Kind, ObjectMeta, Resource, Spec};

use crate::store::keyspace;
use crate::store::resources::Resources;
use crate::store::Revision;

/// The resources one replicator selects on the gateway.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// The replicated type.
    pub(crate) kind: Kind,
    /// Only this namespace; `None` for every namespace, or a cluster-wide type.
    pub(crate) namespace: Option<String>,
    /// Only resources whose labels match.
    pub(crate) selector: LabelSelector,
}

/// What the downstream should hold for one gateway key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Desired {
    /// This copy (already labelled).
    Present(Box<Resource>),
    /// No copy of ours: the source was deleted or left the selection.
    Absent,
}

/// One change to push: what the downstream should hold for a gateway key, as of a revision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    /// The gateway's store key of the source (`res/<plural>/[<namespace>/]<name>`).
    pub(crate) key: String,
    /// The copy's namespace (empty for cluster-wide types).
    pub(crate) namespace: String,
    /// The copy's name.
    pub(crate) name: String,
    /// The gateway revision this state is as of.
    pub(crate) revision: Revision,
    /// What the downstream should hold.
    pub(crate) desired: Desired,
}

/// How a resync step came about, for its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// The downstream has no copy.
    Create,
    /// The downstream's copy differs.
    Update,
    /// The downstream has a copy whose source is gone (or no longer selected).
    Delete,
}

/// One step of a resync.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    /// Why.
    pub(crate) op: Op,
    /// What to push.
    pub(crate) change: Change,
    /// Whether the downstream's resource is known to carry this replicator's label (a listed
    /// copy); when not, pushing first makes sure no unlabelled resource is overwritten.
    pub(crate) owned: bool,
}

/// A resync: the steps that make the downstream match, and how many copies already did.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Plan {
    /// Creates and updates in key order, then deletes in key order.
    pub(crate) steps: Vec<Step>,
    /// Copies that already matched their source.
    pub(crate) unchanged: usize,
}

// === impl Scope ===

impl Scope {
    /// The scope of a replicator's spec.
    ///
    /// # Errors
    /// The type is not one Cairn models, or the label selector does not parse (both refused
    /// by validation, so only a store written by other means gets here).
    pub(crate) fn of(spec: &Replicator) -> Result<Scope, String> {
        let kind = match Kind::resolve(&spec.api_version, &spec.resource) {
            Ok(Resolved::Modelled(kind)) => kind,
            Ok(Resolved::Unsupported) => {
                return Err(format!(
                    "{}/{} cannot be replicated",
                    spec.api_version, spec.resource
                ))
            }
            Err(err) => return Err(err.to_string()),
        };
        let selector = LabelSelector::parse(&spec.label_selector)
            .map_err(|problem| format!("label_selector: {problem}"))?;
        let namespace = Some(spec.namespace.clone())
            .filter(|namespace| !namespace.is_empty() && kind.is_namespaced());
        Ok(Scope {
            kind,
            namespace,
            selector,
        })
    }

    /// The store prefix holding every resource the scope may select.
    pub(crate) fn prefix(&self) -> String {
        Resources::prefix(self.kind, self.namespace.as_deref())
    }

    /// Whether a stored resource is selected: its type (Env and VaultProvider share a prefix),
    /// namespace and labels.
    pub(crate) fn selects(&self, resource: &Resource) -> bool {
        resource.kind() == self.kind
            && self
                .namespace
                .as_deref()
                .is_none_or(|namespace| resource.namespace() == namespace)
            && self.selector.matches(&resource.metadata.labels)
    }

    /// The copy's `(namespace, name)` for a gateway store key of this type; `None` for a key
    /// that is not one.
    pub(crate) fn split_key<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key
            .strip_prefix(keyspace::RESOURCES)?
            .strip_prefix(self.kind.plural())?
            .strip_prefix('/')?;
        let (namespace, name) = if self.kind.is_namespaced() {
            rest.split_once('/')?
        } else {
            ("", rest)
        };
        (!name.is_empty()).then_some((namespace, name))
    }

    /// The change a stored resource (or its deletion, `None`) at `key` asks for; `None` when
    /// the key is not one of this type.
    pub(crate) fn change(
        &self,
        key: &str,
        revision: Revision,
        source: Option<&Resource>,
        label: &str,
    ) -> Option<Change> {
        let (namespace, name) = self.split_key(key)?;
        let desired = match source {
            Some(source) if self.selects(source) => {
                Desired::Present(Box::new(copy_of(source, label)))
            }
            _ => Desired::Absent,
        };
        Some(Change {
            key: key.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            revision,
            desired,
        })
    }
}

/// The downstream copy of a source: its name, namespace, labels (plus the replication label),
/// annotations and spec; no server-managed metadata (`created_by`).
pub(crate) fn copy_of(source: &Resource, label: &str) -> Resource {
    let mut labels = source.metadata.labels.clone();
    labels.insert(LABEL_REPLICATED_FROM.to_owned(), label.to_owned());
    let metadata = ObjectMeta {
        name: source.metadata.name.clone(),
        namespace: if source.kind().is_namespaced() {
            source.metadata.namespace.clone()
        } else {
            String::new()
        },
        labels,
        annotations: source.metadata.annotations.clone(),
        created_by: String::new(),
    };
    Resource::new(metadata, source.spec.clone())
}

/// A resource as the diff compares it: without what the downstream sets itself (`created_by`,
/// a silence's `creator`) and without what its API never returns (a user's password hash, a
/// Vault provider's token), so that neither makes every resync rewrite the copy.
///
/// # Caveats
/// A change made on the downstream to only those fields is not reverted by a resync; a change
/// of them on the gateway is still pushed by the watch.
pub(crate) fn comparable(resource: &Resource) -> Resource {
    let mut resource = resource.clone();
    resource.metadata.created_by.clear();
    match &mut resource.spec {
        Spec::User(user) => {
            user.password.clear();
            user.password_hash.clear();
        }
        Spec::VaultProvider(vault) => vault.client.token.clear(),
        Spec::Silenced(silenced) => silenced.creator.clear(),
        _ => {}
    }
    resource
}

/// The resync diff.
///
/// `desired` maps gateway keys to their copy and source revision; `live` maps the same keys
/// to the downstream's labelled copies (`None`: listed but not decodable, so it is rewritten).
/// A desired key without a live copy is created without overwriting anything (`owned` false);
/// a differing copy is updated; a live copy without a desired one is deleted. Only keys in
/// `live` — resources carrying this replicator's label — are ever updated or deleted.
pub(crate) fn plan(
    desired: &BTreeMap<String, (Change, Resource)>,
    live: &BTreeMap<String, Option<Resource>>,
) -> Plan {
    let mut out = Plan::default();
    for (key, (change, copy)) in desired {
        match live.get(key) {
            None => out.steps.push(Step {
                op: Op::Create,
                change: change.clone(),
                owned: false,
            }),
            Some(Some(existing)) if comparable(existing) == comparable(copy) => {
                out.unchanged += 1;
            }
            Some(_) => out.steps.push(Step {
                op: Op::Update,
                change: change.clone(),
                owned: true,
            }),
        }
    }
    for (key, existing) in live {
        if desired.contains_key(key) {
            continue;
        }
        let (namespace, name) = match existing {
            Some(existing) => (existing.namespace().to_owned(), existing.name().to_owned()),
            // Keyed from the listing's metadata, so the key splits.
            None => match key_parts(key) {
                Some(parts) => parts,
                None => continue,
            },
        };
        out.steps.push(Step {
            op: Op::Delete,
            change: Change {
                key: key.clone(),
                namespace,
                name,
                revision: 0,
                desired: Desired::Absent,
            },
            owned: true,
        });
    }
    out
}

/// The store key of a copy of `kind` named `name` in `namespace`.
pub(crate) fn key_of(kind: Kind, namespace: &str, name: &str) -> String {
    Resources::key(kind, namespace, name)
}

/// `(namespace, name)` of a store key, guessing the kind from its plural: used only for
/// undecodable downstream copies, which are keyed from their raw metadata.
fn key_parts(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix(keyspace::RESOURCES)?;
    let (plural, rest) = rest.split_once('/')?;
    let kind = Kind::ALL.iter().find(|kind| kind.plural() == plural)?;
    if kind.is_namespaced() {
        let (namespace, name) = rest.split_once('/')?;
        Some((namespace.to_owned(), name.to_owned()))
    } else {
        Some((String::new(), rest.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::model::{CheckConfig, Role, User};

    const LABEL: &str = "gateway/checks";

    fn check(namespace: &str, name: &str, command: &str, labels: &[(&str, &str)]) -> Resource {
        let mut metadata = ObjectMeta::named(namespace, name);
        metadata.labels = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        metadata.annotations.insert("note".into(), "kept".into());
        metadata.created_by = "admin".into();
        Resource::new(
            metadata,
            Spec::CheckConfig(CheckConfig {
                command: command.to_owned(),
                interval: 60,
                subscriptions: vec!["linux".into()],
                ..CheckConfig::default()
            }),
        )
    }

    fn replicator(namespace: &str, selector: &str) -> Replicator {
        Replicator {
            cluster: "alpha".into(),
            resource: "CheckConfig".into(),
            namespace: namespace.into(),
            label_selector: selector.into(),
            ..Replicator::default()
        }
    }

    fn desired(scope: &Scope, sources: &[Resource]) -> BTreeMap<String, (Change, Resource)> {
        sources
            .iter()
            .enumerate()
            .filter(|(_, source)| scope.selects(source))
            .map(|(idx, source)| {
                let key = key_of(source.kind(), source.namespace(), source.name());
                let change = scope
                    .change(&key, idx as u64 + 1, Some(source), LABEL)
                    .unwrap();
                let Desired::Present(copy) = &change.desired else {
                    panic!("selected sources are present")
                };
                let copy = (**copy).clone();
                (key, (change, copy))
            })
            .collect()
    }

    fn live(copies: &[Resource]) -> BTreeMap<String, Option<Resource>> {
        copies
            .iter()
            .map(|copy| {
                (
                    key_of(copy.kind(), copy.namespace(), copy.name()),
                    Some(copy.clone()),
                )
            })
            .collect()
    }

    /// The plan as `op key` lines, for readable assertions.
    fn summary(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|step| format!("{:?} {} owned={}", step.op, step.change.key, step.owned))
            .collect()
    }

    #[test]
    fn copies_keep_identity_labels_annotations_and_spec_but_not_the_creator() {
        let source = check("default", "disk", "check-disk", &[("team", "ops")]);
        let copy = copy_of(&source, LABEL);
        assert_eq!(copy.name(), "disk");
        assert_eq!(copy.namespace(), "default");
        assert_eq!(copy.metadata.labels["team"], "ops");
        assert_eq!(copy.metadata.labels[LABEL_REPLICATED_FROM], LABEL);
        assert_eq!(copy.metadata.annotations["note"], "kept");
        assert_eq!(copy.metadata.created_by, "");
        assert_eq!(copy.spec, source.spec);
        assert_eq!(
            cairn_api::meta::replicated_from_label("gateway", "checks"),
            LABEL
        );
        assert_eq!(
            cairn_api::meta::replicated_from_gateway(LABEL),
            Some("gateway")
        );
        assert_eq!(cairn_api::meta::replicated_from_gateway("gateway"), None);
        assert_eq!(cairn_api::meta::replicated_from_gateway("/checks"), None);
    }

    #[test]
    fn scope_selects_by_type_namespace_and_labels() {
        let scope = Scope::of(&replicator("default", "team == ops")).unwrap();
        assert_eq!(scope.prefix(), "res/checks/default/");
        assert!(scope.selects(&check("default", "a", "x", &[("team", "ops")])));
        assert!(!scope.selects(&check("default", "b", "x", &[("team", "dev")])));
        assert!(!scope.selects(&check("default", "c", "x", &[])));
        assert!(!scope.selects(&check("other", "d", "x", &[("team", "ops")])));
        let role = Resource::new(
            ObjectMeta::named("default", "a"),
            Spec::Role(Role::default()),
        );
        assert!(!scope.selects(&role), "another type is never selected");

        let everywhere = Scope::of(&replicator("", "")).unwrap();
        assert_eq!(everywhere.prefix(), "res/checks/");
        assert!(everywhere.selects(&check("other", "d", "x", &[])));

        // A namespace on a cluster-wide type is ignored.
        let users = Scope::of(&Replicator {
            resource: "User".into(),
            namespace: "default".into(),
            ..replicator("", "")
        })
        .unwrap();
        assert_eq!(users.namespace, None);
        assert_eq!(users.prefix(), "res/users/");

        let unknown = Scope::of(&Replicator {
            resource: "Nope".into(),
            ..replicator("", "")
        });
        assert!(unknown.unwrap_err().contains("Nope"));
        assert!(Scope::of(&replicator("", "bogus")).is_err());
    }

    #[test]
    fn keys_split_into_the_copy_namespace_and_name() {
        let scope = Scope::of(&replicator("", "")).unwrap();
        assert_eq!(
            scope.split_key("res/checks/default/disk"),
            Some(("default", "disk"))
        );
        assert_eq!(scope.split_key("res/checks/default/"), None);
        assert_eq!(scope.split_key("res/handlers/default/disk"), None);
        let users = Scope::of(&Replicator {
            resource: "User".into(),
            ..replicator("", "")
        })
        .unwrap();
        assert_eq!(users.split_key("res/users/alice"), Some(("", "alice")));
        assert_eq!(
            key_parts("res/checks/default/disk"),
            Some(("default".into(), "disk".into()))
        );
        assert_eq!(
            key_parts("res/users/alice"),
            Some((String::new(), "alice".into()))
        );
    }

    #[test]
    fn a_source_leaving_the_selection_asks_for_its_copy_to_go() {
        let scope = Scope::of(&replicator("default", "team == ops")).unwrap();
        let key = "res/checks/default/a";
        let kept = check("default", "a", "x", &[("team", "ops")]);
        let left = check("default", "a", "x", &[("team", "dev")]);
        let present = scope.change(key, 7, Some(&kept), LABEL).unwrap();
        assert!(matches!(present.desired, Desired::Present(_)));
        assert_eq!(
            (present.namespace.as_str(), present.name.as_str()),
            ("default", "a")
        );
        assert_eq!(present.revision, 7);
        let absent = scope.change(key, 8, Some(&left), LABEL).unwrap();
        assert_eq!(absent.desired, Desired::Absent);
        let deleted = scope.change(key, 9, None, LABEL).unwrap();
        assert_eq!(deleted.desired, Desired::Absent);
    }

    #[test]
    fn resync_creates_updates_and_deletes_only_labelled_copies() {
        let scope = Scope::of(&replicator("default", "")).unwrap();
        let sources = [
            check("default", "new", "a", &[]),
            check("default", "same", "b", &[]),
            check("default", "edited", "c", &[]),
        ];
        let desired = desired(&scope, &sources);
        let same = copy_of(&sources[1], LABEL);
        let mut edited = copy_of(&sources[2], LABEL);
        if let Spec::CheckConfig(check) = &mut edited.spec {
            check.command = "edited on the downstream".into();
        }
        let orphan = copy_of(&check("default", "orphan", "d", &[]), LABEL);
        // The downstream sets its own creator: not a difference.
        let mut same_live = same.clone();
        same_live.metadata.created_by = "cairn:replicator".into();
        let plan = plan(&desired, &live(&[same_live, edited, orphan]));
        assert_eq!(
            summary(&plan),
            [
                "Update res/checks/default/edited owned=true",
                "Create res/checks/default/new owned=false",
                "Delete res/checks/default/orphan owned=true",
            ]
        );
        assert_eq!(plan.unchanged, 1);
        let Desired::Present(copy) = &plan.steps[0].change.desired else {
            panic!("an update carries the copy")
        };
        assert_eq!(**copy, copy_of(&sources[2], LABEL));
    }

    #[test]
    fn resync_never_touches_what_is_not_listed_as_ours() {
        // The live map holds only resources carrying this replicator's label (the listing is
        // filtered by it and checked again), so a downstream's own check is neither in the
        // plan as an update nor as a delete: a desired key it shadows is a create, which
        // refuses to overwrite.
        let scope = Scope::of(&replicator("default", "")).unwrap();
        let sources = [check("default", "shared-name", "a", &[])];
        let plan = plan(&desired(&scope, &sources), &BTreeMap::new());
        assert_eq!(
            summary(&plan),
            ["Create res/checks/default/shared-name owned=false"]
        );
        let nothing = super::plan(&BTreeMap::new(), &BTreeMap::new());
        assert!(nothing.steps.is_empty());
    }

    #[test]
    fn an_undecodable_copy_is_rewritten_or_deleted() {
        let scope = Scope::of(&replicator("default", "")).unwrap();
        let sources = [check("default", "a", "x", &[])];
        let mut live = BTreeMap::new();
        live.insert("res/checks/default/a".to_owned(), None);
        live.insert("res/checks/default/b".to_owned(), None);
        let plan = plan(&desired(&scope, &sources), &live);
        assert_eq!(
            summary(&plan),
            [
                "Update res/checks/default/a owned=true",
                "Delete res/checks/default/b owned=true",
            ]
        );
        assert_eq!(
            (
                plan.steps[1].change.namespace.as_str(),
                plan.steps[1].change.name.as_str()
            ),
            ("default", "b")
        );
    }

    #[test]
    fn credentials_the_api_never_returns_are_not_differences() {
        let user = Resource::new(
            ObjectMeta::named("", "alice"),
            Spec::User(User {
                username: "alice".into(),
                password_hash: "$argon2id$v=19$...".into(),
                groups: vec!["ops".into()],
                ..User::default()
            }),
        );
        let mut listed = user.clone();
        if let Spec::User(user) = &mut listed.spec {
            user.password_hash.clear();
        }
        assert_eq!(comparable(&user), comparable(&listed));
        let mut regrouped = listed.clone();
        if let Spec::User(user) = &mut regrouped.spec {
            user.groups = vec!["dev".into()];
        }
        assert_ne!(comparable(&user), comparable(&regrouped));
    }
}
