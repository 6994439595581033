//! Sensu's resource URL space: a path parsed into its [`Target`] (by hand, because names may
//! hold `/`: assets, `<entity>/<check>` events), and the target with its method into one
//! [`Endpoint`], whose [`Endpoint::name`] names it in spans and metrics.

use axum::http::{Method, StatusCode};

use cairn_api::Kind;

use super::crud::Item;
use crate::http::{ApiError, Code};

/// What a path addresses.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// A collection; `namespace` is `None` for cluster-wide kinds and all-namespace lists.
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    /// One resource.
    Item {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// `users/{name}/{action}[/{group}]`.
    UserAction {
        name: String,
        action: String,
        group: Option<String>,
    },
    /// `namespaces/{ns}/events/{entity}`: the events of one entity.
    EntityEvents { namespace: String, entity: String },
    /// `[namespaces/{ns}/]silenced/{subscriptions|checks}/{value}`: the silenced entries of a
    /// subscription or a check.
    SilencedBy {
        namespace: Option<String>,
        by_check: bool,
        value: String,
    },
    /// `tessen`: Sensu's telemetry opt-out, kept for playbooks that set it.
    Tessen,
    /// `namespaces/{ns}/checks/{check}/hooks/{type}[/hook/{hook}]`: Sensu's way to add hooks to
    /// a check (`PUT`) or remove one (`DELETE`).
    CheckHooks {
        namespace: String,
        check: String,
        hook_type: String,
        hook: Option<String>,
    },
    /// `namespaces/{ns}/checks/{check}/execute`: Sensu's ad hoc execution of a check (`POST`).
    CheckExecute { namespace: String, check: String },
}

const GROUPS: [(&str, &str); 3] = [
    ("/api/core/v2/", cairn_api::kind::CORE_V2),
    ("/api/enterprise/secrets/v1/", cairn_api::kind::SECRETS_V1),
    (
        "/api/enterprise/federation/v1/",
        cairn_api::kind::FEDERATION_V1,
    ),
];

fn kind_in(group: &str, plural: &str) -> Option<Kind> {
    // Env and VaultProvider share `providers`; the stored or sent document says which.
    Kind::ALL
        .iter()
        .copied()
        .find(|kind| kind.api_version() == group && kind.plural() == plural)
}

pub(super) fn parse(path: &str) -> Option<Target> {
    let (prefix, group) = GROUPS.iter().find(|(prefix, _)| path.starts_with(prefix))?;
    let rest = path[prefix.len()..].trim_end_matches('/');
    // Segments are percent-decoded one by one, so an encoded `/` stays inside a name (and is
    // then refused by the name rules) rather than changing the route.
    let decoded: Vec<String> = rest
        .split('/')
        .map(crate::http::percent::decode_path_segment)
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["namespaces"] if *group == cairn_api::kind::CORE_V2 => Some(Target::Collection {
            kind: Kind::Namespace,
            namespace: None,
        }),
        ["namespaces", name] if *group == cairn_api::kind::CORE_V2 => Some(Target::Item {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: (*name).to_owned(),
        }),
        ["namespaces", namespace, "silenced", field @ ("subscriptions" | "checks"), value]
            if *group == cairn_api::kind::CORE_V2 =>
        {
            Some(Target::SilencedBy {
                namespace: Some((*namespace).to_owned()),
                by_check: *field == "checks",
                value: (*value).to_owned(),
            })
        }
        ["silenced", field @ ("subscriptions" | "checks"), value]
            if *group == cairn_api::kind::CORE_V2 =>
        {
            Some(Target::SilencedBy {
                namespace: None,
                by_check: *field == "checks",
                value: (*value).to_owned(),
            })
        }
        ["namespaces", namespace, "checks", check, "hooks", hook_type, rest @ ..]
            if *group == cairn_api::kind::CORE_V2 =>
        {
            let hook = match rest {
                [] => None,
                ["hook", hook] => Some((*hook).to_owned()),
                _ => return None,
            };
            Some(Target::CheckHooks {
                namespace: (*namespace).to_owned(),
                check: (*check).to_owned(),
                hook_type: (*hook_type).to_owned(),
                hook,
            })
        }
        // A check's name holds no `/`, so this is never a check named `<check>/execute`.
        ["namespaces", namespace, "checks", check, "execute"]
            if *group == cairn_api::kind::CORE_V2 =>
        {
            Some(Target::CheckExecute {
                namespace: (*namespace).to_owned(),
                check: (*check).to_owned(),
            })
        }
        ["namespaces", namespace, plural, name @ ..] => {
            let kind = kind_in(group, plural).filter(|kind| kind.is_namespaced())?;
            let namespace = (*namespace).to_owned();
            match (kind, name) {
                (_, []) => Some(Target::Collection {
                    kind,
                    namespace: Some(namespace),
                }),
                (Kind::Event, [entity]) => Some(Target::EntityEvents {
                    namespace,
                    entity: (*entity).to_owned(),
                }),
                _ => Some(Target::Item {
                    kind,
                    namespace,
                    name: name.join("/"),
                }),
            }
        }
        ["tessen"] if *group == cairn_api::kind::CORE_V2 => Some(Target::Tessen),
        ["users", name, action, group_name @ ..] if *group == cairn_api::kind::CORE_V2 => {
            Some(Target::UserAction {
                name: (*name).to_owned(),
                action: (*action).to_owned(),
                group: group_name.first().map(|group| (*group).to_owned()),
            })
        }
        [plural] => {
            let kind = kind_in(group, plural)?;
            Some(Target::Collection {
                kind,
                namespace: None,
            })
        }
        [plural, name @ ..] => {
            let kind = kind_in(group, plural).filter(|kind| !kind.is_namespaced())?;
            Some(Target::Item {
                kind,
                namespace: String::new(),
                name: name.join("/"),
            })
        }
        _ => None,
    }
}

/// What a user action does (`users/{name}/{action}[/{group}]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UserAction {
    /// `PUT users/{name}/password`: the user changes a password, giving the current one.
    ChangePassword,
    /// `PUT users/{name}/reset_password`: an administrator sets a password.
    ResetPassword,
    /// `PUT users/{name}/reinstate`: enables a disabled user.
    Reinstate,
    /// `PUT users/{name}/groups/{group}`.
    AddGroup(String),
    /// `DELETE users/{name}/groups/{group}`.
    RemoveGroup(String),
    /// `DELETE users/{name}/groups`.
    RemoveAllGroups,
}

impl UserAction {
    /// Whether it is a `DELETE` (it removes groups).
    pub(super) fn is_removal(&self) -> bool {
        matches!(
            self,
            UserAction::RemoveGroup(_) | UserAction::RemoveAllGroups
        )
    }
}

/// One resource as its URL names it (`namespace` is empty for a cluster-wide kind).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ItemPath {
    pub(crate) kind: Kind,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl ItemPath {
    /// The borrowed form the handlers take.
    pub(super) fn as_item(&self) -> Item<'_> {
        Item {
            kind: self.kind,
            namespace: &self.namespace,
            name: &self.name,
        }
    }
}

/// One endpoint of the resource URL space: what a method on a [`Target`] does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `GET` a collection; `namespace` is `None` for cluster-wide kinds and all-namespace
    /// lists.
    List {
        kind: Kind,
        namespace: Option<String>,
    },
    /// `POST` a collection.
    Create {
        kind: Kind,
        namespace: Option<String>,
    },
    /// `POST apikeys`: a new API key for a user.
    CreateApiKey,
    /// `POST namespaces/{ns}/events` or `PUT|POST namespaces/{ns}/events/{entity}/{check}`.
    PutEvent {
        namespace: String,
        name: Option<String>,
    },
    /// `GET` one resource.
    Get(ItemPath),
    /// `PUT` one resource: creates or replaces it.
    Replace(ItemPath),
    /// `PATCH` one resource with a JSON merge patch.
    Patch(ItemPath),
    /// `DELETE` one resource.
    Delete(ItemPath),
    /// `GET namespaces/{ns}/events/{entity}`.
    ListEntityEvents { namespace: String, entity: String },
    /// `GET [namespaces/{ns}/]silenced/{subscriptions|checks}/{value}`.
    ListSilencedBy {
        namespace: Option<String>,
        by_check: bool,
        value: String,
    },
    /// `PUT namespaces/{ns}/checks/{check}/hooks/{type}`.
    AddCheckHooks {
        namespace: String,
        check: String,
        hook_type: String,
    },
    /// `DELETE namespaces/{ns}/checks/{check}/hooks/{type}/hook/{hook}`.
    RemoveCheckHook {
        namespace: String,
        check: String,
        hook_type: String,
        hook: String,
    },
    /// `POST namespaces/{ns}/checks/{check}/execute`.
    ExecuteCheck { namespace: String, check: String },
    /// `GET tessen`.
    GetTessen,
    /// `PUT tessen`.
    PutTessen,
    /// A user action.
    User { name: String, action: UserAction },
}

impl Endpoint {
    /// Every [`Endpoint::name`], in [`Endpoint::index`] order: the `endpoint` label of
    /// `cairn_api_endpoint_requests_total`, so the metric has at most this many series.
    pub(crate) const NAMES: [&'static str; 21] = [
        "list",
        "create",
        "create_apikey",
        "put_event",
        "get",
        "replace",
        "patch",
        "delete",
        "list_entity_events",
        "list_silenced_by",
        "add_check_hooks",
        "remove_check_hook",
        "get_tessen",
        "put_tessen",
        "change_password",
        "reset_password",
        "reinstate_user",
        "add_user_group",
        "remove_user_group",
        "remove_user_groups",
        "execute_check",
    ];

    /// The endpoint a method on `target` asks for: 405 for a method the target does not
    /// take, 404 for a user action Sensu does not have, 400 for an event sent outside a
    /// namespace.
    pub(super) fn route(method: &Method, target: Target) -> Result<Endpoint, ApiError> {
        let endpoint = match target {
            Target::Collection { kind, namespace } => match *method {
                Method::GET => Endpoint::List { kind, namespace },
                Method::POST if kind == Kind::Event => match namespace {
                    Some(namespace) => Endpoint::PutEvent {
                        namespace,
                        name: None,
                    },
                    None => return Err(ApiError::invalid("events are created in a namespace")),
                },
                Method::POST if kind == Kind::ApiKey => Endpoint::CreateApiKey,
                Method::POST => Endpoint::Create { kind, namespace },
                _ => return Err(method_not_allowed()),
            },
            Target::Item {
                kind,
                namespace,
                name,
            } => match *method {
                Method::PUT | Method::POST if kind == Kind::Event => Endpoint::PutEvent {
                    namespace,
                    name: Some(name),
                },
                Method::GET => Endpoint::Get(ItemPath {
                    kind,
                    namespace,
                    name,
                }),
                Method::DELETE => Endpoint::Delete(ItemPath {
                    kind,
                    namespace,
                    name,
                }),
                Method::PUT => Endpoint::Replace(ItemPath {
                    kind,
                    namespace,
                    name,
                }),
                Method::PATCH if kind != Kind::Event => Endpoint::Patch(ItemPath {
                    kind,
                    namespace,
                    name,
                }),
                _ => return Err(method_not_allowed()),
            },
            Target::EntityEvents { namespace, entity } => match *method {
                Method::GET => Endpoint::ListEntityEvents { namespace, entity },
                _ => return Err(method_not_allowed()),
            },
            Target::SilencedBy {
                namespace,
                by_check,
                value,
            } => match *method {
                Method::GET => Endpoint::ListSilencedBy {
                    namespace,
                    by_check,
                    value,
                },
                _ => return Err(method_not_allowed()),
            },
            Target::CheckHooks {
                namespace,
                check,
                hook_type,
                hook,
            } => match (method, hook) {
                (&Method::PUT, None) => Endpoint::AddCheckHooks {
                    namespace,
                    check,
                    hook_type,
                },
                (&Method::DELETE, Some(hook)) => Endpoint::RemoveCheckHook {
                    namespace,
                    check,
                    hook_type,
                    hook,
                },
                _ => return Err(method_not_allowed()),
            },
            Target::CheckExecute { namespace, check } => match *method {
                Method::POST => Endpoint::ExecuteCheck { namespace, check },
                _ => return Err(method_not_allowed()),
            },
            Target::Tessen => match *method {
                Method::GET => Endpoint::GetTessen,
                Method::PUT => Endpoint::PutTessen,
                _ => return Err(method_not_allowed()),
            },
            Target::UserAction {
                name,
                action,
                group,
            } => {
                let action = match (method, action.as_str(), group) {
                    (&Method::PUT, "password", None) => UserAction::ChangePassword,
                    (&Method::PUT, "reset_password", None) => UserAction::ResetPassword,
                    (&Method::PUT, "reinstate", None) => UserAction::Reinstate,
                    (&Method::PUT, "groups", Some(group)) => UserAction::AddGroup(group),
                    (&Method::DELETE, "groups", Some(group)) => UserAction::RemoveGroup(group),
                    (&Method::DELETE, "groups", None) => UserAction::RemoveAllGroups,
                    _ => return Err(ApiError::not_found("not found")),
                };
                Endpoint::User { name, action }
            }
        };
        Ok(endpoint)
    }

    /// The position of [`Endpoint::name`] in [`Endpoint::NAMES`].
    pub(crate) fn index(&self) -> usize {
        match self {
            Endpoint::List { .. } => 0,
            Endpoint::Create { .. } => 1,
            Endpoint::CreateApiKey => 2,
            Endpoint::PutEvent { .. } => 3,
            Endpoint::Get(_) => 4,
            Endpoint::Replace(_) => 5,
            Endpoint::Patch(_) => 6,
            Endpoint::Delete(_) => 7,
            Endpoint::ListEntityEvents { .. } => 8,
            Endpoint::ListSilencedBy { .. } => 9,
            Endpoint::AddCheckHooks { .. } => 10,
            Endpoint::RemoveCheckHook { .. } => 11,
            Endpoint::GetTessen => 12,
            Endpoint::PutTessen => 13,
            Endpoint::User { action, .. } => match action {
                UserAction::ChangePassword => 14,
                UserAction::ResetPassword => 15,
                UserAction::Reinstate => 16,
                UserAction::AddGroup(_) => 17,
                UserAction::RemoveGroup(_) => 18,
                UserAction::RemoveAllGroups => 19,
            },
            Endpoint::ExecuteCheck { .. } => 20,
        }
    }

    /// The endpoint's name in spans and metrics (`get`, `put_event`, …).
    pub(crate) fn name(&self) -> &'static str {
        Endpoint::NAMES[self.index()]
    }

    /// The kind of resource it reads or writes (its plural names it in spans).
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Endpoint::List { kind, .. }
            | Endpoint::Create { kind, .. }
            | Endpoint::Get(ItemPath { kind, .. })
            | Endpoint::Replace(ItemPath { kind, .. })
            | Endpoint::Patch(ItemPath { kind, .. })
            | Endpoint::Delete(ItemPath { kind, .. }) => *kind,
            Endpoint::CreateApiKey => Kind::ApiKey,
            Endpoint::PutEvent { .. } | Endpoint::ListEntityEvents { .. } => Kind::Event,
            Endpoint::ListSilencedBy { .. } => Kind::Silenced,
            Endpoint::AddCheckHooks { .. }
            | Endpoint::RemoveCheckHook { .. }
            | Endpoint::ExecuteCheck { .. } => Kind::CheckConfig,
            // Tessen is a setting, not a kind; it is cluster-wide, as namespaces are.
            Endpoint::GetTessen | Endpoint::PutTessen => Kind::Namespace,
            Endpoint::User { .. } => Kind::User,
        }
    }
}

/// A 405 for a method the path does not take.
fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: Code::InvalidArgument,
        message: "method not allowed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        assert_eq!(parse("/api/core/v2/tessen"), Some(Target::Tessen));
        assert_eq!(
            parse("/api/core/v2/namespaces/default/silenced/subscriptions/linux"),
            Some(Target::SilencedBy {
                namespace: Some("default".into()),
                by_check: false,
                value: "linux".into(),
            })
        );
        assert_eq!(
            parse("/api/core/v2/silenced/checks/cpu"),
            Some(Target::SilencedBy {
                namespace: None,
                by_check: true,
                value: "cpu".into(),
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/silenced/linux:cpu"),
            Some(Target::Item {
                kind: Kind::Silenced,
                namespace: "default".into(),
                name: "linux:cpu".into(),
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/checks/cpu/hooks/non-zero/hook/dump"),
            Some(Target::CheckHooks {
                namespace: "default".into(),
                check: "cpu".into(),
                hook_type: "non-zero".into(),
                hook: Some("dump".into()),
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/checks/cpu/hooks/non-zero/extra"),
            None
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/checks/cpu/execute"),
            Some(Target::CheckExecute {
                namespace: "default".into(),
                check: "cpu".into(),
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/checks/cpu/execute/now"),
            Some(Target::Item {
                kind: Kind::CheckConfig,
                namespace: "default".into(),
                name: "cpu/execute/now".into(),
            })
        );
        assert_eq!(parse("/api/enterprise/secrets/v1/tessen"), None);
        assert_eq!(
            parse("/api/core/v2/namespaces/default/checks/cpu"),
            Some(Target::Item {
                kind: Kind::CheckConfig,
                namespace: "default".into(),
                name: "cpu".into()
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/assets/sensu/http-checks:0.7.0"),
            Some(Target::Item {
                kind: Kind::Asset,
                namespace: "default".into(),
                name: "sensu/http-checks:0.7.0".into()
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces/default/events/i-1/my-app"),
            Some(Target::Item {
                kind: Kind::Event,
                namespace: "default".into(),
                name: "i-1/my-app".into()
            })
        );
        assert_eq!(
            parse("/api/core/v2/namespaces"),
            Some(Target::Collection {
                kind: Kind::Namespace,
                namespace: None
            })
        );
        assert_eq!(
            parse("/api/core/v2/checks"),
            Some(Target::Collection {
                kind: Kind::CheckConfig,
                namespace: None
            })
        );
        assert_eq!(
            parse("/api/enterprise/secrets/v1/providers/vault"),
            Some(Target::Item {
                kind: Kind::EnvProvider,
                namespace: String::new(),
                name: "vault".into()
            })
        );
        assert_eq!(parse("/api/core/v2/namespaces/default/nothings"), None);
        assert_eq!(parse("/api/core/v2/checks/cpu"), None);
        assert_eq!(
            parse("/api/core/v2/users/bob/groups/ops"),
            Some(Target::UserAction {
                name: "bob".into(),
                action: "groups".into(),
                group: Some("ops".into())
            })
        );
    }

    fn route(method: Method, path: &str) -> Result<Endpoint, StatusCode> {
        let target = parse(path).ok_or(StatusCode::NOT_FOUND)?;
        Endpoint::route(&method, target).map_err(|err| err.status)
    }

    #[test]
    fn methods_pick_the_endpoint() {
        let check = |name: &str| {
            Endpoint::Get(ItemPath {
                kind: Kind::CheckConfig,
                namespace: "default".into(),
                name: name.into(),
            })
        };
        assert_eq!(
            route(Method::GET, "/api/core/v2/namespaces/default/checks/cpu"),
            Ok(check("cpu"))
        );
        let put = route(
            Method::PUT,
            "/api/core/v2/namespaces/default/events/web/cpu",
        );
        assert_eq!(
            put,
            Ok(Endpoint::PutEvent {
                namespace: "default".into(),
                name: Some("web/cpu".into()),
            })
        );
        assert_eq!(
            route(Method::POST, "/api/core/v2/events"),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            route(
                Method::PATCH,
                "/api/core/v2/namespaces/default/events/web/cpu"
            ),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            route(Method::DELETE, "/api/core/v2/namespaces/default/events/web"),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            route(Method::POST, "/api/core/v2/tessen"),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            route(Method::PUT, "/api/core/v2/users/bob/groups/ops"),
            Ok(Endpoint::User {
                name: "bob".into(),
                action: UserAction::AddGroup("ops".into()),
            })
        );
        assert_eq!(
            route(Method::GET, "/api/core/v2/users/bob/password"),
            Err(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            route(Method::POST, "/api/core/v2/apikeys"),
            Ok(Endpoint::CreateApiKey)
        );
        let execute = "/api/core/v2/namespaces/default/checks/cpu/execute";
        assert_eq!(
            route(Method::POST, execute),
            Ok(Endpoint::ExecuteCheck {
                namespace: "default".into(),
                check: "cpu".into(),
            })
        );
        assert_eq!(
            route(Method::GET, execute),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
    }

    #[test]
    fn every_endpoint_has_its_own_name() {
        let names: std::collections::BTreeSet<_> = Endpoint::NAMES.iter().collect();
        assert_eq!(names.len(), Endpoint::NAMES.len());
        let endpoint = Endpoint::User {
            name: "bob".into(),
            action: UserAction::RemoveAllGroups,
        };
        assert_eq!(endpoint.name(), "remove_user_groups");
        assert_eq!(Endpoint::GetTessen.name(), "get_tessen");
        let execute = Endpoint::ExecuteCheck {
            namespace: "default".into(),
            check: "cpu".into(),
        };
        assert_eq!(execute.name(), "execute_check");
        assert_eq!(execute.index(), Endpoint::NAMES.len() - 1);
    }
}
