//! The type registry: every resource type Cairn models, where it lives in the REST API, whether it
//! is namespaced, and the Sensu types it knowingly does not model.

use std::fmt;

/// One modelled resource type, named as Sensu names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `core/v2` `Namespace`.
    Namespace,
    /// `core/v2` `ClusterRole`.
    ClusterRole,
    /// `core/v2` `ClusterRoleBinding`.
    ClusterRoleBinding,
    /// `core/v2` `Role`.
    Role,
    /// `core/v2` `RoleBinding`.
    RoleBinding,
    /// `core/v2` `User`.
    User,
    /// `core/v2` `APIKey`.
    ApiKey,
    /// `secrets/v1` `Env` (the environment secrets provider).
    EnvProvider,
    /// `secrets/v1` `VaultProvider`.
    VaultProvider,
    /// `secrets/v1` `Secret`.
    Secret,
    /// `core/v2` `Asset`.
    Asset,
    /// `core/v2` `EventFilter`.
    EventFilter,
    /// `core/v2` `Mutator`.
    Mutator,
    /// `core/v2` `HookConfig`.
    HookConfig,
    /// `core/v2` `Handler`.
    Handler,
    /// `core/v2` `Pipeline`.
    Pipeline,
    /// `core/v2` `CheckConfig`.
    CheckConfig,
    /// `core/v2` `Entity`.
    Entity,
    /// `core/v2` `Silenced`.
    Silenced,
    /// `core/v2` `Event`.
    Event,
    /// `federation/v1` `Cluster`.
    Cluster,
    /// `federation/v1` `Replicator` (Cairn's: replicates to a registered `Cluster`).
    Replicator,
    /// `federation/v1` `EtcdReplicator` (accepted and stored for compatibility).
    EtcdReplicator,
}

/// What a `(api_version, type)` pair names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// A type Cairn models.
    Modelled(Kind),
    /// A real Sensu type that Cairn knowingly does not model.
    Unsupported,
}

/// Why a `(api_version, type)` pair names nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The API group is not one Sensu or Cairn knows.
    #[error("unknown api_version \"{0}\"")]
    UnknownApiVersion(String),
    /// The group is known but has no type of that name.
    #[error("unknown type \"{type_name}\" in api_version {api_version}")]
    UnknownType {
        /// The group that was asked.
        api_version: String,
        /// The type that it does not have.
        type_name: String,
    },
}

/// Why a name typed on the command line names no modelled type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliNameError {
    /// Neither Sensu nor Cairn has a type of that name.
    #[error("unknown resource type \"{0}\"; use one of: {names}", names = accepted_cli_names())]
    Unknown(String),
    /// A real Sensu type that Cairn knowingly does not model.
    #[error("\"{0}\" is a Sensu type that Cairn does not model")]
    Unsupported(String),
}

/// API groups Cairn serves.
pub const CORE_V2: &str = "core/v2";
/// The secrets API group.
pub const SECRETS_V1: &str = "secrets/v1";
/// The federation API group.
pub const FEDERATION_V1: &str = "federation/v1";

/// Sensu types that Cairn does not model, as `(api_version, type)`; `*` matches any type.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("authentication/v2", "*"),
    ("store/v1", "*"),
    ("web/v1", "*"),
    ("bsm/v1", "*"),
    ("searches/v1", "*"),
    ("pipeline/v1", "*"),
    ("catalog/v1", "*"),
    ("licensing/v2", "*"),
    // The 6.14 docs spell FallbackPipeline's group this way; sensu/core registers it in core/v2.
    ("fallback_pipeline/v1", "*"),
    ("core/v3", "*"),
    ("secrets/v1", "CyberArkProvider"),
    ("secrets/v1", "AWSProvider"),
    ("core/v2", "TessenConfig"),
    ("core/v2", "FallbackPipeline"),
    ("core/v2", "Extension"),
];

impl Kind {
    /// Every modelled kind, in apply order (dependencies first).
    pub const ALL: [Kind; 23] = [
        Kind::Namespace,
        Kind::ClusterRole,
        Kind::ClusterRoleBinding,
        Kind::Role,
        Kind::RoleBinding,
        Kind::User,
        Kind::ApiKey,
        Kind::EnvProvider,
        Kind::VaultProvider,
        Kind::Secret,
        Kind::Asset,
        Kind::EventFilter,
        Kind::Mutator,
        Kind::HookConfig,
        Kind::Handler,
        Kind::Pipeline,
        Kind::CheckConfig,
        Kind::Entity,
        Kind::Silenced,
        Kind::Event,
        Kind::Cluster,
        Kind::Replicator,
        Kind::EtcdReplicator,
    ];

    /// The `type` string, as Sensu writes it.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ClusterRole => "ClusterRole",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
            Kind::User => "User",
            Kind::ApiKey => "APIKey",
            Kind::EnvProvider => "Env",
            Kind::VaultProvider => "VaultProvider",
            Kind::Secret => "Secret",
            Kind::Asset => "Asset",
            Kind::EventFilter => "EventFilter",
            Kind::Mutator => "Mutator",
            Kind::HookConfig => "HookConfig",
            Kind::Handler => "Handler",
            Kind::Pipeline => "Pipeline",
            Kind::CheckConfig => "CheckConfig",
            Kind::Entity => "Entity",
            Kind::Silenced => "Silenced",
            Kind::Event => "Event",
            Kind::Cluster => "Cluster",
            Kind::Replicator => "Replicator",
            Kind::EtcdReplicator => "EtcdReplicator",
        }
    }

    /// The `api_version` string.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EnvProvider | Kind::VaultProvider | Kind::Secret => SECRETS_V1,
            Kind::Cluster | Kind::Replicator | Kind::EtcdReplicator => FEDERATION_V1,
            _ => CORE_V2,
        }
    }

    /// The RBAC resource name, which is also the last path segment of its REST collection.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::ClusterRole => "clusterroles",
            Kind::ClusterRoleBinding => "clusterrolebindings",
            Kind::Role => "roles",
            Kind::RoleBinding => "rolebindings",
            Kind::User => "users",
            Kind::ApiKey => "apikeys",
            Kind::EnvProvider | Kind::VaultProvider => "providers",
            Kind::Secret => "secrets",
            Kind::Asset => "assets",
            Kind::EventFilter => "filters",
            Kind::Mutator => "mutators",
            Kind::HookConfig => "hooks",
            Kind::Handler => "handlers",
            Kind::Pipeline => "pipelines",
            Kind::CheckConfig => "checks",
            Kind::Entity => "entities",
            Kind::Silenced => "silenced",
            Kind::Event => "events",
            Kind::Cluster => "clusters",
            Kind::Replicator => "replicators",
            Kind::EtcdReplicator => "etcd-replicators",
        }
    }

    /// Whether resources of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        matches!(
            self,
            Kind::Role
                | Kind::RoleBinding
                | Kind::Secret
                | Kind::Asset
                | Kind::EventFilter
                | Kind::Mutator
                | Kind::HookConfig
                | Kind::Handler
                | Kind::Pipeline
                | Kind::CheckConfig
                | Kind::Entity
                | Kind::Silenced
                | Kind::Event
        )
    }

    /// Whether the REST API takes and returns the wrapped `type/api_version/metadata/spec` form.
    ///
    /// `core/v2` speaks the unwrapped form (spec fields at the top level plus `metadata`);
    /// every other group speaks the wrapped one.
    pub fn is_wrapped_on_wire(self) -> bool {
        self.api_version() != CORE_V2
    }

    /// The REST path prefix of the API group, e.g. `/api/core/v2`.
    pub fn group_prefix(self) -> &'static str {
        match self.api_version() {
            SECRETS_V1 => "/api/enterprise/secrets/v1",
            FEDERATION_V1 => "/api/enterprise/federation/v1",
            _ => "/api/core/v2",
        }
    }

    /// The REST path of the collection. Namespaced kinds need `namespace`; cluster-wide kinds
    /// ignore it.
    pub fn collection_path(self, namespace: &str) -> String {
        if self.is_namespaced() {
            format!(
                "{}/namespaces/{namespace}/{}",
                self.group_prefix(),
                self.plural()
            )
        } else {
            format!("{}/{}", self.group_prefix(), self.plural())
        }
    }

    /// The REST path of one resource.
    pub fn item_path(self, namespace: &str, name: &str) -> String {
        format!("{}/{name}", self.collection_path(namespace))
    }

    /// Position in the apply order: namespaces first, replicators last. Deletes run in reverse.
    pub fn apply_rank(self) -> usize {
        Kind::ALL
            .iter()
            .position(|kind| *kind == self)
            .expect("every kind is listed in ALL")
    }

    /// Resolves a document's `api_version` and `type`.
    ///
    /// `core/v2` also accepts Sensu's snake_case aliases (`check_config`, `role_binding`, …).
    ///
    /// # Errors
    /// [`ResolveError`] when neither Sensu nor Cairn knows the pair.
    pub fn resolve(api_version: &str, type_name: &str) -> Result<Resolved, ResolveError> {
        if let Some(kind) = Kind::ALL
            .iter()
            .copied()
            .find(|kind| kind.api_version() == api_version && kind.matches_type(type_name))
        {
            return Ok(Resolved::Modelled(kind));
        }
        let unsupported = UNSUPPORTED
            .iter()
            .any(|(group, name)| *group == api_version && (*name == "*" || *name == type_name));
        if unsupported {
            return Ok(Resolved::Unsupported);
        }
        let known_group = Kind::ALL
            .iter()
            .any(|kind| kind.api_version() == api_version)
            || UNSUPPORTED.iter().any(|(group, _)| *group == api_version);
        if known_group {
            Err(ResolveError::UnknownType {
                api_version: api_version.to_owned(),
                type_name: type_name.to_owned(),
            })
        } else {
            Err(ResolveError::UnknownApiVersion(api_version.to_owned()))
        }
    }

    /// The name sensuctl's command for this kind has (`sensuctl check list`,
    /// `sensuctl role-binding list`), the singular `cairnctl get` takes. Both secrets providers
    /// are `provider`: they share one REST collection.
    pub fn cli_singular(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::ClusterRole => "cluster-role",
            Kind::ClusterRoleBinding => "cluster-role-binding",
            Kind::Role => "role",
            Kind::RoleBinding => "role-binding",
            Kind::User => "user",
            Kind::ApiKey => "api-key",
            Kind::EnvProvider | Kind::VaultProvider => "provider",
            Kind::Secret => "secret",
            Kind::Asset => "asset",
            Kind::EventFilter => "filter",
            Kind::Mutator => "mutator",
            Kind::HookConfig => "hook",
            Kind::Handler => "handler",
            Kind::Pipeline => "pipeline",
            Kind::CheckConfig => "check",
            Kind::Entity => "entity",
            Kind::Silenced => "silenced",
            Kind::Event => "event",
            Kind::Cluster => "cluster",
            Kind::Replicator => "replicator",
            Kind::EtcdReplicator => "etcd-replicator",
        }
    }

    /// Finds a kind by a name an operator types on the command line, as sensuctl's commands
    /// and `sensuctl dump` take them: the singular (`check`, `role-binding`), the plural
    /// (`checks`, `rolebindings`, `role-bindings`), the type name (`CheckConfig`, Sensu's
    /// `check_config`), or the type qualified by its API group (`core/v2.CheckConfig`,
    /// `secrets/v1.Secret`). Case, `-` and `_` do not matter; a group must be the kind's own.
    /// `provider(s)` names the secrets providers' shared collection (as [`Kind::EnvProvider`];
    /// the `type` of each answer tells the two apart).
    ///
    /// # Errors
    /// [`CliNameError`], whose message lists the accepted names, or says that the name is a
    /// Sensu type Cairn does not model.
    pub fn from_cli_name(name: &str) -> Result<Kind, CliNameError> {
        let unknown = || CliNameError::Unknown(name.to_owned());
        if let Some((group, type_name)) = name
            .rsplit_once('.')
            .filter(|(group, _)| group.contains('/'))
        {
            let wanted = cli_normal(type_name);
            if let Some(kind) = Kind::ALL
                .iter()
                .copied()
                .find(|kind| kind.api_version() == group && cli_normal(kind.type_name()) == wanted)
            {
                return Ok(kind);
            }
            return match Kind::resolve(group, type_name) {
                Ok(Resolved::Unsupported) => Err(CliNameError::Unsupported(name.to_owned())),
                _ => Err(unknown()),
            };
        }
        let wanted = cli_normal(name);
        if wanted.is_empty() {
            return Err(unknown());
        }
        if let Some(kind) = Kind::ALL.iter().copied().find(|kind| {
            [kind.cli_singular(), kind.plural(), kind.type_name()]
                .iter()
                .any(|form| cli_normal(form) == wanted)
        }) {
            return Ok(kind);
        }
        let unsupported = UNSUPPORTED
            .iter()
            .filter(|(group, type_name)| *group == CORE_V2 && *type_name != "*")
            .map(|(_, type_name)| *type_name)
            .chain(["tessen"])
            .any(|type_name| cli_normal(type_name) == wanted);
        if unsupported {
            Err(CliNameError::Unsupported(name.to_owned()))
        } else {
            Err(unknown())
        }
    }

    fn matches_type(self, type_name: &str) -> bool {
        if self.type_name() == type_name {
            return true;
        }
        // Sensu's core/v2 type map also accepts snake_case names.
        self.api_version() == CORE_V2 && snake_case(self.type_name()) == type_name
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (idx, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if idx > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// A command-line type name as compared: ASCII lowercase, without `-` and `_`.
fn cli_normal(name: &str) -> String {
    name.chars()
        .filter(|ch| *ch != '-' && *ch != '_')
        .map(|ch| ch.to_ascii_lowercase())
        .collect()
}

/// The names [`Kind::from_cli_name`] takes, for an error message: each kind's singular and
/// plural (`check(s)`, `entity/entities`), then the forms of type names.
fn accepted_cli_names() -> String {
    let mut names: Vec<String> = Vec::new();
    for kind in Kind::ALL {
        let (singular, plural) = (kind.cli_singular(), kind.plural());
        let shown = if singular == plural {
            singular.to_owned()
        } else if cli_normal(plural) == format!("{}s", cli_normal(singular)) {
            format!("{singular}(s)")
        } else {
            format!("{singular}/{plural}")
        };
        if !names.contains(&shown) {
            names.push(shown);
        }
    }
    format!(
        "{}; or a type name as manifests write it (CheckConfig, check_config, core/v2.CheckConfig, secrets/v1.Secret)",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_modelled_aliases_and_unsupported() {
        assert_eq!(
            Kind::resolve("core/v2", "CheckConfig"),
            Ok(Resolved::Modelled(Kind::CheckConfig))
        );
        assert_eq!(
            Kind::resolve("core/v2", "check_config"),
            Ok(Resolved::Modelled(Kind::CheckConfig))
        );
        assert_eq!(
            Kind::resolve("core/v2", "role_binding"),
            Ok(Resolved::Modelled(Kind::RoleBinding))
        );
        assert_eq!(
            Kind::resolve("secrets/v1", "Env"),
            Ok(Resolved::Modelled(Kind::EnvProvider))
        );
        assert_eq!(
            Kind::resolve("authentication/v2", "ldap"),
            Ok(Resolved::Unsupported)
        );
        assert_eq!(
            Kind::resolve("core/v2", "TessenConfig"),
            Ok(Resolved::Unsupported)
        );
        assert_eq!(
            Kind::resolve("core/v2", "Check"),
            Err(ResolveError::UnknownType {
                api_version: "core/v2".into(),
                type_name: "Check".into()
            })
        );
        assert_eq!(
            Kind::resolve("nope/v9", "Check"),
            Err(ResolveError::UnknownApiVersion("nope/v9".into()))
        );
    }

    #[test]
    fn paths_follow_sensu() {
        assert_eq!(
            Kind::CheckConfig.item_path("default", "cpu"),
            "/api/core/v2/namespaces/default/checks/cpu"
        );
        assert_eq!(
            Kind::ClusterRole.item_path("ignored", "admin"),
            "/api/core/v2/clusterroles/admin"
        );
        assert_eq!(
            Kind::Secret.collection_path("ops"),
            "/api/enterprise/secrets/v1/namespaces/ops/secrets"
        );
        assert_eq!(
            Kind::VaultProvider.item_path("", "vault"),
            "/api/enterprise/secrets/v1/providers/vault"
        );
        assert_eq!(
            Kind::EtcdReplicator.collection_path(""),
            "/api/enterprise/federation/v1/etcd-replicators"
        );
    }

    #[test]
    fn cli_names_take_sensuctl_forms() {
        let cases = [
            ("check", Kind::CheckConfig),
            ("checks", Kind::CheckConfig),
            ("CheckConfig", Kind::CheckConfig),
            ("checkconfig", Kind::CheckConfig),
            ("check_config", Kind::CheckConfig),
            ("core/v2.CheckConfig", Kind::CheckConfig),
            ("core/v2.check_config", Kind::CheckConfig),
            ("handler", Kind::Handler),
            ("handlers", Kind::Handler),
            ("Handler", Kind::Handler),
            ("core/v2.Handler", Kind::Handler),
            ("entity", Kind::Entity),
            ("entities", Kind::Entity),
            ("Entity", Kind::Entity),
            ("event", Kind::Event),
            ("events", Kind::Event),
            ("role", Kind::Role),
            ("rolebinding", Kind::RoleBinding),
            ("rolebindings", Kind::RoleBinding),
            ("role-binding", Kind::RoleBinding),
            ("role-bindings", Kind::RoleBinding),
            ("role_binding", Kind::RoleBinding),
            ("cluster-role", Kind::ClusterRole),
            ("clusterroles", Kind::ClusterRole),
            ("cluster-role-binding", Kind::ClusterRoleBinding),
            ("ClusterRoleBinding", Kind::ClusterRoleBinding),
            ("silenced", Kind::Silenced),
            ("asset", Kind::Asset),
            ("hook", Kind::HookConfig),
            ("hooks", Kind::HookConfig),
            ("HookConfig", Kind::HookConfig),
            ("filter", Kind::EventFilter),
            ("filters", Kind::EventFilter),
            ("EventFilter", Kind::EventFilter),
            ("mutator", Kind::Mutator),
            ("namespace", Kind::Namespace),
            ("namespaces", Kind::Namespace),
            ("user", Kind::User),
            ("apikey", Kind::ApiKey),
            ("api-key", Kind::ApiKey),
            ("apikeys", Kind::ApiKey),
            ("APIKey", Kind::ApiKey),
            ("pipeline", Kind::Pipeline),
            ("secret", Kind::Secret),
            ("secrets", Kind::Secret),
            ("secrets/v1.Secret", Kind::Secret),
            ("provider", Kind::EnvProvider),
            ("providers", Kind::EnvProvider),
            ("secrets/v1.Env", Kind::EnvProvider),
            ("secrets/v1.VaultProvider", Kind::VaultProvider),
            ("VaultProvider", Kind::VaultProvider),
            ("cluster", Kind::Cluster),
            ("federation/v1.Cluster", Kind::Cluster),
            ("replicators", Kind::Replicator),
            ("etcd-replicator", Kind::EtcdReplicator),
            ("etcd-replicators", Kind::EtcdReplicator),
        ];
        for (name, kind) in cases {
            assert_eq!(Kind::from_cli_name(name), Ok(kind), "{name}");
        }
    }

    #[test]
    fn cli_names_refuse_what_names_no_kind() {
        for name in [
            "bogus",
            "",
            "-",
            "check config",
            "checks.yaml",
            // A group must be the kind's own, and takes a type name, not a plural.
            "secrets/v1.CheckConfig",
            "core/v2.Secret",
            "core/v2.checks",
            "nope/v9.CheckConfig",
            "core/v2.",
        ] {
            assert_eq!(
                Kind::from_cli_name(name),
                Err(CliNameError::Unknown(name.to_owned())),
                "{name:?}"
            );
        }
        for name in [
            "tessen",
            "TessenConfig",
            "core/v2.TessenConfig",
            "core/v3.EntityConfig",
        ] {
            assert_eq!(
                Kind::from_cli_name(name),
                Err(CliNameError::Unsupported(name.to_owned())),
                "{name}"
            );
        }
        let message = Kind::from_cli_name("chekcs").unwrap_err().to_string();
        assert!(
            message.starts_with("unknown resource type \"chekcs\""),
            "{message}"
        );
        for listed in [
            "check(s)",
            "entity/entities",
            "role-binding(s)",
            "silenced",
            "provider(s)",
        ] {
            assert!(message.contains(listed), "{listed} in {message}");
        }
        assert_eq!(message.matches("provider(s)").count(), 1, "{message}");
    }

    #[test]
    fn every_cli_name_names_one_kind() {
        // Only the two secrets providers share names: they share one REST collection.
        for kind in Kind::ALL {
            for form in [kind.cli_singular(), kind.plural(), kind.type_name()] {
                let found = Kind::from_cli_name(form).expect("a kind's own name resolves");
                let shared = matches!(kind, Kind::EnvProvider | Kind::VaultProvider)
                    && found == Kind::EnvProvider;
                assert!(found == kind || shared, "{form} names {found}, not {kind}");
            }
            let qualified = format!("{}.{}", kind.api_version(), kind.type_name());
            assert_eq!(Kind::from_cli_name(&qualified), Ok(kind), "{qualified}");
        }
    }
}
