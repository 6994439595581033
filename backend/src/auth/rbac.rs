//! Role-based access control: Sensu's roles, bindings and default cluster roles, evaluated
//! against an in-memory snapshot of the users, keys, roles and bindings in the store.
//!
//! A binding's group subjects apply to every caller in the group. Its user subjects apply to
//! the users of one cluster (issue 13): a binding made here, to this cluster's own users; a
//! binding a gateway replicated here (its `cairn.io/replicated-from` names that gateway), to
//! the users of that gateway, whose tokens name it as their issuer. A user of the same name
//! elsewhere is somebody else.

use std::collections::HashMap;
use std::fmt;

use cairn_api::meta::LABEL_REPLICATED_FROM;
use cairn_api::model::{ApiKey, Role, RoleBinding, RoleRef, Rule, Subject, User};
use cairn_api::{Kind, ObjectMeta, Resource, Spec};

/// The group whose members are bound to `cluster-admin`.
pub(crate) const GROUP_CLUSTER_ADMINS: &str = "cluster-admins";
/// The group Sensu's agents log in with, bound to the `system:agent` ClusterRole.
pub(crate) const GROUP_SYSTEM_AGENTS: &str = "system:agents";

/// An API action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    /// Read one.
    Get,
    /// Read many.
    List,
    /// Make a new one.
    Create,
    /// Change one.
    Update,
    /// Remove one.
    Delete,
}

/// Who is asking: a local user and their groups (from the live user record), or the subject
/// and groups of a token another cluster of the federation issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// Username (a federated caller's token subject).
    pub username: String,
    /// Groups, including the implicit `system:users`.
    pub groups: Vec<String>,
    /// The cluster that issued the caller's token when it is another cluster of the federation
    /// (sharing our signing key); `None` for local users and API keys. A federated caller
    /// exists only in its token: it is authorised by its groups, and by the bindings naming
    /// its user that its own cluster replicated here; never by a binding made here that names
    /// a user, since a user of that name here is somebody else.
    pub federated_from: Option<String>,
}

/// What is asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// The action.
    pub verb: Verb,
    /// The RBAC resource name (`checks`, `users`, …).
    pub resource: &'a str,
    /// The namespace, for namespaced resources.
    pub namespace: Option<&'a str>,
    /// The resource name, when one is addressed.
    pub name: Option<&'a str>,
}

/// Users, API keys, roles and bindings as of one store revision.
#[derive(Debug, Default, Clone)]
pub(crate) struct AuthSnapshot {
    users: HashMap<String, User>,
    api_keys: HashMap<String, ApiKey>,
    cluster_roles: HashMap<String, Role>,
    cluster_bindings: HashMap<String, HeldBinding>,
    roles: HashMap<(String, String), Role>,
    bindings: HashMap<(String, String), HeldBinding>,
    namespaces: std::collections::HashSet<String>,
}

/// A (cluster) role binding as this cluster holds it: the binding, and whose users its user
/// subjects are.
#[derive(Debug, Clone)]
struct HeldBinding {
    binding: RoleBinding,
    users_of: UsersOf,
}

/// Whose users a binding's user subjects name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UsersOf {
    /// Made here: this cluster's own users.
    ThisCluster,
    /// Replicated here by the gateway of that name: the users of its tokens.
    Gateway(String),
    /// Labelled replicated, but not in the form a replicator writes: nobody's, so a hand-made
    /// label can neither widen nor narrow whom it binds by mistake.
    Nobody,
}

// === impl Caller ===

impl Caller {
    /// The caller of a token issued by the cluster `issuer` (not this one) for `username` with
    /// `groups`; the implicit `system:users` is added when the token lacks it.
    pub(crate) fn federated(username: &str, groups: &[String], issuer: &str) -> Caller {
        let mut groups = groups.to_vec();
        if !groups
            .iter()
            .any(|group| group == crate::auth::GROUP_SYSTEM_USERS)
        {
            groups.push(crate::auth::GROUP_SYSTEM_USERS.to_owned());
        }
        Caller {
            username: username.to_owned(),
            groups,
            federated_from: Some(issuer.to_owned()),
        }
    }

    /// Whether the caller is the local user `username` (not merely somebody of that name on
    /// another cluster).
    pub(crate) fn is_local_user(&self, username: &str) -> bool {
        self.federated_from.is_none() && self.username == username
    }
}

// === impl Verb ===

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl AuthSnapshot ===

impl AuthSnapshot {
    /// Adds or replaces a resource; kinds that do not matter to auth are ignored.
    pub(crate) fn upsert(&mut self, resource: &Resource) {
        let name = resource.name().to_owned();
        let namespace = resource.namespace().to_owned();
        match &resource.spec {
            Spec::User(user) => {
                self.users.insert(user.username.clone(), user.clone());
            }
            Spec::ApiKey(key) => {
                self.api_keys.insert(name, key.clone());
            }
            Spec::ClusterRole(role) => {
                self.cluster_roles.insert(name, role.clone());
            }
            Spec::ClusterRoleBinding(binding) => {
                self.cluster_bindings
                    .insert(name, HeldBinding::of(resource, binding));
            }
            Spec::Role(role) => {
                self.roles.insert((namespace, name), role.clone());
            }
            Spec::RoleBinding(binding) => {
                self.bindings
                    .insert((namespace, name), HeldBinding::of(resource, binding));
            }
            Spec::Namespace(_) => {
                self.namespaces.insert(name);
            }
            _ => {}
        }
    }

    /// Removes a resource by kind, namespace and name.
    pub(crate) fn remove(&mut self, kind: Kind, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        match kind {
            Kind::User => {
                self.users.remove(name);
            }
            Kind::ApiKey => {
                self.api_keys.remove(name);
            }
            Kind::ClusterRole => {
                self.cluster_roles.remove(name);
            }
            Kind::ClusterRoleBinding => {
                self.cluster_bindings.remove(name);
            }
            Kind::Role => {
                self.roles.remove(&key);
            }
            Kind::RoleBinding => {
                self.bindings.remove(&key);
            }
            Kind::Namespace => {
                self.namespaces.remove(name);
            }
            _ => {}
        }
    }

    /// Whether a namespace exists.
    pub(crate) fn has_namespace(&self, name: &str) -> bool {
        self.namespaces.contains(name)
    }

    /// The existing namespaces where a RoleBinding names `caller`: what Sensu lists at
    /// `GET /namespaces` for a caller who may not list namespaces cluster-wide.
    pub(crate) fn bound_namespaces(&self, caller: &Caller) -> std::collections::BTreeSet<String> {
        self.bindings
            .iter()
            .filter(|((namespace, _), held)| {
                self.namespaces.contains(namespace) && held.binds(caller)
            })
            .map(|((namespace, _), _)| namespace.clone())
            .collect()
    }

    /// The live user record.
    pub(crate) fn user(&self, username: &str) -> Option<&User> {
        self.users.get(username)
    }

    /// The user an API key acts as, when the key exists.
    pub(crate) fn api_key_user(&self, key: &str) -> Option<&str> {
        self.api_keys
            .get(key)
            .map(|api_key| api_key.username.as_str())
    }

    /// The caller for an enabled user, with the implicit `system:users` group; `None` when the
    /// user is missing or disabled.
    pub(crate) fn caller(&self, username: &str) -> Option<Caller> {
        let user = self.users.get(username).filter(|user| !user.disabled)?;
        let mut groups = user.groups.clone();
        groups.push(crate::auth::GROUP_SYSTEM_USERS.to_owned());
        Some(Caller {
            username: user.username.clone(),
            groups,
            federated_from: None,
        })
    }

    /// Whether `caller` may do `request`.
    pub(crate) fn authorize(&self, caller: &Caller, request: Request<'_>) -> bool {
        let namespaced = is_namespaced_resource(request.resource);
        for held in self.cluster_bindings.values() {
            if held.binds(caller) {
                let binding = &held.binding;
                if let Some(role) = self.cluster_roles.get(&binding.role_ref.name) {
                    if role
                        .rules
                        .iter()
                        .any(|rule| rule_allows(rule, request, true))
                    {
                        return true;
                    }
                }
            }
        }
        let Some(namespace) = request.namespace.filter(|_| namespaced) else {
            return false;
        };
        for ((binding_namespace, _), held) in &self.bindings {
            if binding_namespace != namespace || !held.binds(caller) {
                continue;
            }
            let binding = &held.binding;
            let role = if binding
                .role_ref
                .type_name
                .eq_ignore_ascii_case("clusterrole")
            {
                self.cluster_roles.get(&binding.role_ref.name)
            } else {
                self.roles
                    .get(&(namespace.to_owned(), binding.role_ref.name.clone()))
            };
            // A role granted through a namespace binding covers namespaced resources only.
            if role.is_some_and(|role| {
                role.rules
                    .iter()
                    .any(|rule| rule_allows(rule, request, false))
            }) {
                return true;
            }
        }
        false
    }
}

// === impl HeldBinding ===

impl HeldBinding {
    /// The `binding` of the stored `resource`, with whose users it names from the resource's
    /// `cairn.io/replicated-from` label (`<gateway>/<replicator>`).
    fn of(resource: &Resource, binding: &RoleBinding) -> HeldBinding {
        let users_of = match resource.metadata.labels.get(LABEL_REPLICATED_FROM) {
            None => UsersOf::ThisCluster,
            Some(label) => cairn_api::meta::replicated_from_gateway(label)
                .map_or(UsersOf::Nobody, |gateway| {
                    UsersOf::Gateway(gateway.to_owned())
                }),
        };
        HeldBinding {
            binding: binding.clone(),
            users_of,
        }
    }

    /// Whether the binding names `caller`: one of its groups, or the caller itself as a user
    /// of the cluster whose users the binding names.
    fn binds(&self, caller: &Caller) -> bool {
        self.binding.subjects.iter().any(|subject| {
            if subject.type_name.eq_ignore_ascii_case("user") {
                subject.name == caller.username && self.names_users_of(caller)
            } else {
                caller.groups.contains(&subject.name)
            }
        })
    }

    /// Whether the binding's user subjects are users of the caller's cluster.
    fn names_users_of(&self, caller: &Caller) -> bool {
        match (&self.users_of, caller.federated_from.as_deref()) {
            (UsersOf::ThisCluster, None) => true,
            (UsersOf::Gateway(gateway), Some(issuer)) => gateway == issuer,
            _ => false,
        }
    }
}

fn rule_allows(rule: &Rule, request: Request<'_>, cluster_scope: bool) -> bool {
    let listed = |values: &[String], wanted: &str| {
        values
            .iter()
            .flat_map(|value| value.split(','))
            .any(|value| value.trim() == wanted)
    };
    let verb_ok = listed(&rule.verbs, "*") || listed(&rule.verbs, request.verb.as_str());
    let resource_ok = listed(&rule.resources, request.resource)
        || (listed(&rule.resources, "*")
            && (cluster_scope || is_namespaced_resource(request.resource)));
    let name_ok = rule.resource_names.is_empty()
        || request
            .name
            .is_some_and(|name| rule.resource_names.iter().any(|allowed| allowed == name));
    verb_ok && resource_ok && name_ok
}

fn is_namespaced_resource(resource: &str) -> bool {
    Kind::ALL
        .iter()
        .any(|kind| kind.plural() == resource && kind.is_namespaced())
}

/// Sensu's default cluster roles and their bindings (`cluster-admin`, `system:agent`,
/// `system:user`), plus the admin user.
pub(crate) fn default_resources(admin_username: &str, admin_password_hash: &str) -> Vec<Resource> {
    let namespaced: Vec<String> = Kind::ALL
        .iter()
        .filter(|kind| kind.is_namespaced())
        .map(|kind| kind.plural().to_owned())
        .collect();
    let without = |excluded: &[&str]| -> Vec<String> {
        namespaced
            .iter()
            .filter(|plural| !excluded.contains(&plural.as_str()))
            .cloned()
            .collect()
    };
    let rule = |verbs: &[&str], resources: Vec<String>| Rule {
        verbs: verbs.iter().map(|verb| (*verb).to_owned()).collect(),
        resources,
        resource_names: Vec::new(),
    };
    let read_namespaces = rule(&["get", "list"], vec!["namespaces".to_owned()]);
    let cluster_role = |name: &str, rules: Vec<Rule>| {
        Resource::new(
            ObjectMeta::named("", name),
            Spec::ClusterRole(Role {
                metadata: None,
                rules,
            }),
        )
    };
    vec![
        cluster_role("cluster-admin", vec![rule(&["*"], vec!["*".to_owned()])]),
        cluster_role(
            "admin",
            vec![rule(&["*"], namespaced.clone()), read_namespaces.clone()],
        ),
        cluster_role(
            "edit",
            vec![
                rule(&["*"], without(&["roles", "rolebindings"])),
                read_namespaces.clone(),
            ],
        ),
        cluster_role(
            "view",
            vec![
                rule(
                    &["get", "list"],
                    without(&["roles", "rolebindings", "secrets"]),
                ),
                read_namespaces,
            ],
        ),
        // Sensu's roles for agents (events) and for every local user (their own record and
        // password, `localselfuser`). Cairn's agents authenticate by certificate and need no
        // binding, and no `agent` user is made; the role and its binding to `system:agents`
        // exist so that scripts that read or bind them work as on Sensu.
        cluster_role(
            "system:agent",
            vec![rule(&["*"], vec!["events".to_owned()])],
        ),
        cluster_role(
            "system:user",
            vec![rule(&["get", "update"], vec!["localselfuser".to_owned()])],
        ),
        cluster_role_binding("cluster-admin", "cluster-admin", GROUP_CLUSTER_ADMINS),
        cluster_role_binding("system:agent", "system:agent", GROUP_SYSTEM_AGENTS),
        cluster_role_binding(
            "system:user",
            "system:user",
            crate::auth::GROUP_SYSTEM_USERS,
        ),
        Resource::new(
            ObjectMeta::named("", admin_username),
            Spec::User(User {
                metadata: None,
                username: admin_username.to_owned(),
                password: String::new(),
                password_hash: admin_password_hash.to_owned(),
                groups: vec![GROUP_CLUSTER_ADMINS.to_owned()],
                disabled: false,
            }),
        ),
    ]
}

/// A ClusterRoleBinding `name` of the ClusterRole `role` to `group`.
pub(crate) fn cluster_role_binding(name: &str, role: &str, group: &str) -> Resource {
    Resource::new(
        ObjectMeta::named("", name),
        Spec::ClusterRoleBinding(RoleBinding {
            metadata: None,
            role_ref: RoleRef {
                type_name: "ClusterRole".into(),
                name: role.into(),
            },
            subjects: vec![Subject {
                type_name: "Group".into(),
                name: group.into(),
            }],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_with(extra: Vec<Resource>) -> AuthSnapshot {
        let mut snapshot = AuthSnapshot::default();
        for resource in default_resources("admin", "hash")
            .iter()
            .chain(extra.iter())
        {
            snapshot.upsert(resource);
        }
        snapshot
    }

    fn user(name: &str, groups: &[&str]) -> Resource {
        Resource::new(
            ObjectMeta::named("", name),
            Spec::User(User {
                username: name.into(),
                groups: groups.iter().map(|group| (*group).to_owned()).collect(),
                ..User::default()
            }),
        )
    }

    fn binding(namespace: &str, name: &str, role_type: &str, role: &str, user: &str) -> Resource {
        let spec = RoleBinding {
            metadata: None,
            role_ref: RoleRef {
                type_name: role_type.into(),
                name: role.into(),
            },
            subjects: vec![Subject {
                type_name: "User".into(),
                name: user.into(),
            }],
        };
        if namespace.is_empty() {
            Resource::new(ObjectMeta::named("", name), Spec::ClusterRoleBinding(spec))
        } else {
            Resource::new(ObjectMeta::named(namespace, name), Spec::RoleBinding(spec))
        }
    }

    fn ask<'a>(verb: Verb, resource: &'a str, namespace: Option<&'a str>) -> Request<'a> {
        Request {
            verb,
            resource,
            namespace,
            name: None,
        }
    }

    #[test]
    fn cluster_admins_may_do_anything() {
        let snapshot = snapshot_with(vec![]);
        let admin = snapshot.caller("admin").unwrap();
        assert!(snapshot.authorize(&admin, ask(Verb::Delete, "users", None)));
        assert!(snapshot.authorize(&admin, ask(Verb::Create, "checks", Some("ops"))));
    }

    #[test]
    fn view_reads_but_does_not_write() {
        let snapshot = snapshot_with(vec![
            user("viewer", &[]),
            binding("", "viewer", "ClusterRole", "view", "viewer"),
        ]);
        let viewer = snapshot.caller("viewer").unwrap();
        assert!(snapshot.authorize(&viewer, ask(Verb::List, "checks", Some("default"))));
        assert!(!snapshot.authorize(&viewer, ask(Verb::Create, "checks", Some("default"))));
        assert!(!snapshot.authorize(&viewer, ask(Verb::Get, "secrets", Some("default"))));
        assert!(!snapshot.authorize(&viewer, ask(Verb::List, "users", None)));
    }

    #[test]
    fn namespaced_edit_stays_in_its_namespace() {
        let snapshot = snapshot_with(vec![
            user("dev", &[]),
            binding("dev", "dev-edit", "ClusterRole", "edit", "dev"),
        ]);
        let dev = snapshot.caller("dev").unwrap();
        assert!(snapshot.authorize(&dev, ask(Verb::Create, "checks", Some("dev"))));
        assert!(!snapshot.authorize(&dev, ask(Verb::Create, "checks", Some("prod"))));
        // A namespace binding never reaches cluster-wide resources.
        assert!(!snapshot.authorize(&dev, ask(Verb::List, "namespaces", None)));
        assert!(!snapshot.authorize(&dev, ask(Verb::Create, "rolebindings", Some("dev"))));
    }

    #[test]
    fn resource_names_limit_a_rule() {
        let role = Resource::new(
            ObjectMeta::named("ops", "one-check"),
            Spec::Role(Role {
                metadata: None,
                rules: vec![Rule {
                    verbs: vec!["get,update".into()],
                    resources: vec!["checks".into()],
                    resource_names: vec!["cpu".into()],
                }],
            }),
        );
        let snapshot = snapshot_with(vec![
            user("bot", &[]),
            role,
            binding("ops", "bot", "Role", "one-check", "bot"),
        ]);
        let bot = snapshot.caller("bot").unwrap();
        let named = |name| Request {
            verb: Verb::Update,
            resource: "checks",
            namespace: Some("ops"),
            name: Some(name),
        };
        assert!(snapshot.authorize(&bot, named("cpu")));
        assert!(!snapshot.authorize(&bot, named("disk")));
    }

    #[test]
    fn federated_callers_are_authorised_by_their_groups_only() {
        let group_binding = Resource::new(
            ObjectMeta::named("", "federation-viewers"),
            Spec::ClusterRoleBinding(RoleBinding {
                metadata: None,
                role_ref: RoleRef {
                    type_name: "ClusterRole".into(),
                    name: "view".into(),
                },
                subjects: vec![Subject {
                    type_name: "Group".into(),
                    name: "federation-viewers".into(),
                }],
            }),
        );
        let snapshot = snapshot_with(vec![
            group_binding,
            // A local user "bob" with edit rights: a gateway's "bob" is somebody else.
            user("bob", &[]),
            binding("", "bob-edit", "ClusterRole", "edit", "bob"),
        ]);

        let viewer = Caller::federated("viewer", &["federation-viewers".into()], "gateway");
        assert_eq!(viewer.groups, ["federation-viewers", "system:users"]);
        assert!(snapshot.authorize(&viewer, ask(Verb::List, "events", Some("default"))));
        assert!(snapshot.authorize(&viewer, ask(Verb::List, "events", None)));
        assert!(!snapshot.authorize(&viewer, ask(Verb::Create, "checks", Some("default"))));

        let bob = Caller::federated("bob", &[], "gateway");
        assert!(!bob.is_local_user("bob"));
        assert!(!snapshot.authorize(&bob, ask(Verb::Create, "checks", Some("default"))));
        assert!(!snapshot.authorize(&bob, ask(Verb::List, "checks", Some("default"))));
        let local_bob = snapshot.caller("bob").unwrap();
        assert!(local_bob.is_local_user("bob"));
        assert!(snapshot.authorize(&local_bob, ask(Verb::Create, "checks", Some("default"))));

        // The replicators' identity: a group this cluster binds to cluster-admin.
        let replicator = Caller::federated(
            "cairn:replicator",
            &[GROUP_CLUSTER_ADMINS.into()],
            "gateway",
        );
        assert!(snapshot.authorize(&replicator, ask(Verb::Create, "roles", Some("ops"))));
        assert!(snapshot.authorize(&replicator, ask(Verb::Delete, "clusterroles", None)));

        // No groups this cluster binds: nothing.
        let stranger = Caller::federated("eve", &["strangers".into()], "gateway");
        assert!(!snapshot.authorize(&stranger, ask(Verb::List, "events", Some("default"))));
    }

    /// `binding` as a replicator of `gateway` writes its copy (`label` = the whole label
    /// value, to try malformed ones).
    fn replicated(mut binding: Resource, label: &str) -> Resource {
        binding
            .metadata
            .labels
            .insert(LABEL_REPLICATED_FROM.to_owned(), label.to_owned());
        binding
    }

    #[test]
    fn user_subjects_bind_the_users_of_the_cluster_the_binding_came_from() {
        let snapshot = snapshot_with(vec![
            // The gateway's binding of its viewer, replicated here.
            replicated(
                binding("", "viewer", "ClusterRole", "view", "viewer"),
                "gateway/bindings",
            ),
            // Another gateway's binding of its `editor`, and a local one of `editor`.
            replicated(
                binding("", "editor-beta", "ClusterRole", "edit", "editor"),
                "beta/bindings",
            ),
            binding("ops", "editor", "ClusterRole", "edit", "editor"),
            // A label not in a replicator's form binds nobody's users.
            replicated(
                binding("", "odd", "ClusterRole", "cluster-admin", "odd"),
                "gateway",
            ),
            user("viewer", &[]),
            user("editor", &[]),
            user("odd", &[]),
        ]);
        let list_events = ask(Verb::List, "events", Some("default"));
        let create_checks = |namespace| ask(Verb::Create, "checks", Some(namespace));

        let gateway_viewer = Caller::federated("viewer", &[], "gateway");
        assert!(snapshot.authorize(&gateway_viewer, list_events));
        assert!(!snapshot.authorize(&gateway_viewer, create_checks("default")));
        // Not another cluster's viewer, nor this cluster's own.
        let hub_viewer = Caller::federated("viewer", &[], "hub");
        assert!(!snapshot.authorize(&hub_viewer, list_events));
        let local_viewer = snapshot.caller("viewer").unwrap();
        assert!(!snapshot.authorize(&local_viewer, list_events));

        // beta's binding is for beta's editor; the local one for the local editor.
        let beta_editor = Caller::federated("editor", &[], "beta");
        assert!(snapshot.authorize(&beta_editor, create_checks("default")));
        let gateway_editor = Caller::federated("editor", &[], "gateway");
        assert!(!snapshot.authorize(&gateway_editor, create_checks("default")));
        assert!(!snapshot.authorize(&gateway_editor, create_checks("ops")));
        let local_editor = snapshot.caller("editor").unwrap();
        assert!(snapshot.authorize(&local_editor, create_checks("ops")));
        assert!(!snapshot.authorize(&local_editor, create_checks("default")));

        for caller in [
            Caller::federated("odd", &[], "gateway"),
            snapshot.caller("odd").unwrap(),
        ] {
            assert!(!snapshot.authorize(&caller, list_events), "{caller:?}");
        }
    }

    #[test]
    fn disabled_users_are_nobody() {
        let mut disabled = user("gone", &[GROUP_CLUSTER_ADMINS]);
        if let Spec::User(user) = &mut disabled.spec {
            user.disabled = true;
        }
        let snapshot = snapshot_with(vec![disabled]);
        assert!(snapshot.caller("gone").is_none());
        assert!(snapshot.caller("nobody").is_none());
    }
}
