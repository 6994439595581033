//! The diff between what a source declares and what the backend holds: per resource `create`,
//! `update`, `delete` (a prune candidate: owned by this reconciler and gone from the source) or
//! `unchanged`, with server-managed fields normalised away, rendered as unified YAML diffs or
//! JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;

use serde_json::{json, Value};

use cairn_api::client::{Client, ClientError};
use cairn_api::meta::{ANNOTATION_SOURCE, LABEL_MANAGED_BY};
use cairn_api::{Kind, Resource, ResourceKey};

use crate::source::Snapshot;

/// What applying does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Not on the backend: `PUT`.
    Create,
    /// On the backend but different: `PUT`.
    Update,
    /// Owned by this reconciler and gone from the source: deleted by `--prune`.
    Delete,
    /// The same on both sides.
    Unchanged,
}

impl Action {
    /// The word used in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Unchanged => "unchanged",
        }
    }
}

/// One resource's line in the plan.
#[derive(Debug, Clone)]
pub struct Change {
    /// What happens.
    pub action: Action,
    /// Which resource.
    pub key: ResourceKey,
    /// The file that declares it (none for deletes).
    pub path: Option<String>,
    /// What is `PUT`: the declared resource with the ownership label and source annotation.
    pub desired: Option<Resource>,
    /// What the backend holds.
    pub live: Option<Resource>,
    /// The backend's copy carries no or another owner's label: applying takes it over.
    pub adopt: bool,
}

impl Change {
    /// The unified YAML diff from live to desired (normalised), empty when unchanged.
    pub fn unified_diff(&self) -> String {
        if self.action == Action::Unchanged {
            return String::new();
        }
        let live = self.live.as_ref().map(comparable).map(|value| yaml(&value));
        let desired = self
            .desired
            .as_ref()
            .map(comparable)
            .map(|value| yaml(&value));
        let (live, desired) = (live.unwrap_or_default(), desired.unwrap_or_default());
        let name = describe(&self.key);
        similar::TextDiff::from_lines(&live, &desired)
            .unified_diff()
            .context_radius(3)
            .header(&format!("live/{name}"), &format!("source/{name}"))
            .to_string()
    }
}

/// The whole plan, ordered: creates and updates in apply order, then deletes in reverse.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Every resource in scope.
    pub changes: Vec<Change>,
    /// Resources on the backend that carry this reconciler's label (the prune guard's base).
    pub managed: usize,
}

/// How many of each action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Creates.
    pub create: usize,
    /// Updates.
    pub update: usize,
    /// Deletes (prune candidates).
    pub delete: usize,
    /// Unchanged.
    pub unchanged: usize,
}

impl Plan {
    /// How many of each action.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for change in &self.changes {
            match change.action {
                Action::Create => counts.create += 1,
                Action::Update => counts.update += 1,
                Action::Delete => counts.delete += 1,
                Action::Unchanged => counts.unchanged += 1,
            }
        }
        counts
    }

    /// Whether applying (with prune) would change nothing.
    pub fn in_sync(&self) -> bool {
        self.changes
            .iter()
            .all(|change| change.action == Action::Unchanged)
    }

    /// Why pruning must not go ahead, if it must not: it would delete every managed resource,
    /// or more than `max_percent` of them.
    pub fn prune_refusal(&self, max_percent: u8) -> Option<String> {
        let deletes = self.counts().delete;
        if deletes == 0 {
            return None;
        }
        if deletes >= self.managed {
            return Some(format!(
                "prune refused: the source would delete all {} resources managed by this owner (is it the right repository, ref and --path?); use --force-prune if that is intended",
                self.managed
            ));
        }
        if deletes * 100 > usize::from(max_percent) * self.managed {
            return Some(format!(
                "prune refused: the source would delete {deletes} of {} managed resources, more than --max-prune-percent {max_percent}; use --force-prune if that is intended",
                self.managed
            ));
        }
        None
    }
}

impl Counts {
    /// `N to create, N to update, N to delete, N unchanged`.
    pub fn summary(&self) -> String {
        format!(
            "{} to create, {} to update, {} to delete, {} unchanged",
            self.create, self.update, self.delete, self.unchanged
        )
    }
}

/// `CheckConfig demo/ping`, `Namespace demo`.
pub fn describe(key: &ResourceKey) -> String {
    if key.namespace.is_empty() {
        format!("{} {}", key.kind.type_name(), key.name)
    } else {
        format!("{} {}/{}", key.kind.type_name(), key.namespace, key.name)
    }
}

/// The kinds a source can declare and a reconciler owns: all but events and API keys, which the
/// backend makes.
pub fn reconcilable(kind: Kind) -> bool {
    !matches!(kind, Kind::Event | Kind::ApiKey)
}

/// The declared resources as they are `PUT`: labelled with `owner`, annotated with their source.
pub fn desired_resources(snapshot: &Snapshot, owner: &str) -> Vec<(Resource, String)> {
    snapshot
        .declared
        .iter()
        .map(|declared| {
            let mut resource = declared.resource.clone();
            resource
                .metadata
                .labels
                .insert(LABEL_MANAGED_BY.to_owned(), owner.to_owned());
            resource.metadata.annotations.insert(
                ANNOTATION_SOURCE.to_owned(),
                snapshot.source_annotation(&declared.path),
            );
            (resource, declared.path.clone())
        })
        .collect()
}

/// Reads the backend's state for the plan: every resource of the declared kinds (to compare),
/// and every resource of the other reconcilable kinds that carries `owner`'s label (prune
/// candidates). Lists across namespaces; a caller that may not do so is listed namespace by
/// namespace for the declared namespaces.
///
/// # Errors
/// The backend's refusal or an unreachable backend: the plan cannot be made.
pub async fn live_state(
    client: &Client,
    desired: &[(Resource, String)],
    owner: &str,
) -> Result<BTreeMap<ResourceKey, Resource>, ClientError> {
    let declared_kinds: BTreeSet<Kind> = desired
        .iter()
        .map(|(resource, _)| resource.kind())
        .collect();
    let namespaces: BTreeSet<String> = desired
        .iter()
        .filter(|(resource, _)| resource.kind().is_namespaced())
        .map(|(resource, _)| resource.namespace().to_owned())
        .collect();
    let owned = format!("{LABEL_MANAGED_BY}=={owner}");
    let lists = Kind::ALL
        .iter()
        .copied()
        .filter(|kind| reconcilable(*kind))
        // `providers` lists both provider kinds; list it once.
        .filter(|kind| *kind != Kind::VaultProvider)
        .map(|kind| {
            let declared = declared_kinds.contains(&kind)
                || (kind == Kind::EnvProvider && declared_kinds.contains(&Kind::VaultProvider));
            let selector = (!declared).then_some(owned.as_str());
            list_kind(client, kind, selector, &namespaces)
        });
    let mut live = BTreeMap::new();
    for listed in futures::future::join_all(lists).await {
        for resource in listed? {
            live.insert(resource.key(), resource);
        }
    }
    Ok(live)
}

async fn list_kind(
    client: &Client,
    kind: Kind,
    selector: Option<&str>,
    namespaces: &BTreeSet<String>,
) -> Result<Vec<Resource>, ClientError> {
    if !kind.is_namespaced() {
        return client.list_selected(kind, None, selector).await;
    }
    match client.list_selected(kind, None, selector).await {
        Err(ClientError::Status { status, .. }) if status == reqwest::StatusCode::FORBIDDEN => {
            let mut out = Vec::new();
            for namespace in namespaces {
                match client.list_selected(kind, Some(namespace), selector).await {
                    Ok(listed) => out.extend(listed),
                    // A namespace that does not exist yet holds nothing.
                    Err(ClientError::Status { status, .. })
                        if status == reqwest::StatusCode::NOT_FOUND => {}
                    Err(err) => return Err(err),
                }
            }
            Ok(out)
        }
        other => other,
    }
}

/// Compares the desired resources with the live state.
pub fn compute(
    desired: Vec<(Resource, String)>,
    mut live: BTreeMap<ResourceKey, Resource>,
    owner: &str,
) -> Plan {
    let owns = |resource: &Resource| {
        resource
            .metadata
            .labels
            .get(LABEL_MANAGED_BY)
            .is_some_and(|value| value == owner)
    };
    let managed = live.values().filter(|resource| owns(resource)).count();
    let mut changes = Vec::with_capacity(desired.len());
    for (resource, path) in desired {
        let key = resource.key();
        let current = live.remove(&key);
        let (action, adopt) = match &current {
            None => (Action::Create, false),
            Some(current) => {
                let same =
                    comparable(current) == comparable(&resource) && same_source(current, &resource);
                (
                    if same {
                        Action::Unchanged
                    } else {
                        Action::Update
                    },
                    !owns(current),
                )
            }
        };
        changes.push(Change {
            action,
            key,
            path: Some(path),
            desired: Some(resource),
            live: current,
            adopt,
        });
    }
    changes.sort_by_key(|change| (change.key.kind.apply_rank(), change.key.clone()));
    let mut deletes: Vec<Change> = live
        .into_iter()
        .filter(|(_, resource)| owns(resource))
        .map(|(key, resource)| Change {
            action: Action::Delete,
            key,
            path: None,
            desired: None,
            live: Some(resource),
            adopt: false,
        })
        .collect();
    deletes.sort_by_key(|change| {
        (
            std::cmp::Reverse(change.key.kind.apply_rank()),
            change.key.clone(),
        )
    });
    changes.extend(deletes);
    Plan { changes, managed }
}

/// Whether two copies name the same file of the same source; the commit in the annotation is
/// not compared, so a commit that leaves a resource alone does not rewrite it.
fn same_source(live: &Resource, desired: &Resource) -> bool {
    let strip = |resource: &Resource| {
        resource
            .metadata
            .annotations
            .get(ANNOTATION_SOURCE)
            .map(|source| strip_commit(source).to_owned())
    };
    strip(live) == strip(desired)
}

/// `<origin>@<commit>:<path>` without the `@<commit>`.
fn strip_commit(source: &str) -> String {
    // The commit is 40 (SHA-1) or 64 (SHA-256) hex digits between the last `@` before the path.
    for length in [40usize, 64] {
        let marker = source.char_indices().find_map(|(at, c)| {
            let rest = &source[at + c.len_utf8()..];
            (c == '@'
                && rest.len() > length
                && rest.as_bytes()[length] == b':'
                && rest[..length].bytes().all(|byte| byte.is_ascii_hexdigit()))
            .then_some(at)
        });
        if let Some(at) = marker {
            return format!("{}{}", &source[..at], &source[at + 1 + length..]);
        }
    }
    source.to_owned()
}

/// The document form with what the server manages (or never returns) removed, and the source
/// annotation left out (compared by [`same_source`]).
pub fn comparable(resource: &Resource) -> Value {
    let mut document = resource.to_document();
    if let Some(metadata) = document.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("created_by");
        metadata.remove("resource_version");
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            annotations.remove(ANNOTATION_SOURCE);
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
    }
    if let Some(spec) = document.get_mut("spec").and_then(Value::as_object_mut) {
        match resource.kind() {
            // Never returned by the API.
            Kind::User => {
                spec.remove("password");
                spec.remove("password_hash");
            }
            Kind::VaultProvider => {
                if let Some(client) = spec.get_mut("client").and_then(Value::as_object_mut) {
                    client.remove("token");
                }
            }
            // Filled in by the backend when left out.
            Kind::Silenced => {
                spec.remove("creator");
                spec.remove("expire_at");
                spec.remove("begin");
            }
            _ => {}
        }
    }
    document
}

fn yaml(value: &Value) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
}

/// Whether to colour output written to stdout.
pub fn colour_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// The human report: one line per change (and its diff), then a summary line.
pub fn render_text(plan: &Plan, snapshot: &Snapshot, colour: bool, verbose: bool) -> Vec<String> {
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\u{1b}[{code}m{text}\u{1b}[0m")
        } else {
            text.to_owned()
        }
    };
    let mut lines = Vec::new();
    for change in &plan.changes {
        let name = describe(&change.key);
        let line = match change.action {
            Action::Unchanged if !verbose => continue,
            Action::Unchanged => format!("  unchanged {name}"),
            Action::Create => paint("32", &format!("+ create {name}")),
            Action::Update if change.adopt => paint(
                "33",
                &format!("~ update {name} (not managed by this owner yet: apply takes it over)"),
            ),
            Action::Update => paint("33", &format!("~ update {name}")),
            Action::Delete => paint("31", &format!("- delete {name} (prune candidate)")),
        };
        lines.push(line);
        if let Some(path) = &change.path {
            if change.action != Action::Unchanged {
                lines.push(format!("    from {path}"));
            }
        }
        for diff_line in change.unified_diff().lines() {
            let painted = if diff_line.starts_with("+++") || diff_line.starts_with("---") {
                paint("1", diff_line)
            } else if diff_line.starts_with('+') {
                paint("32", diff_line)
            } else if diff_line.starts_with('-') {
                paint("31", diff_line)
            } else if diff_line.starts_with("@@") {
                paint("36", diff_line)
            } else {
                diff_line.to_owned()
            };
            lines.push(format!("    {painted}"));
        }
    }
    let at = match &snapshot.commit {
        Some(commit) => format!("{} at {}", snapshot.origin, short(commit)),
        None => snapshot.origin.clone(),
    };
    let counts = plan.counts();
    let verdict = if plan.in_sync() {
        "in sync"
    } else {
        "drift found"
    };
    lines.push(format!("{at}: {}: {verdict}", counts.summary()));
    lines
}

/// The first 12 digits of a commit id.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// The machine report (`-o json`).
pub fn render_json(plan: &Plan, snapshot: &Snapshot) -> Value {
    let counts = plan.counts();
    let changes: Vec<Value> = plan
        .changes
        .iter()
        .map(|change| {
            json!({
                "action": change.action.as_str(),
                "api_version": change.key.kind.api_version(),
                "type": change.key.kind.type_name(),
                "namespace": change.key.namespace,
                "name": change.key.name,
                "path": change.path,
                "adopt": change.adopt,
                "diff": change.unified_diff(),
            })
        })
        .collect();
    json!({
        "source": snapshot.origin,
        "commit": snapshot.commit,
        "in_sync": plan.in_sync(),
        "summary": {
            "create": counts.create,
            "update": counts.update,
            "delete": counts.delete,
            "unchanged": counts.unchanged,
        },
        "changes": changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::codec;

    fn resources(yaml: &str) -> Vec<Resource> {
        let manifests = codec::load_str("test.yaml", yaml);
        assert!(manifests.problems.is_empty(), "{:?}", manifests.problems);
        manifests
            .resources
            .into_iter()
            .map(|loaded| loaded.resource)
            .collect()
    }

    fn check(name: &str, command: &str, owner: Option<&str>) -> Resource {
        let labels = owner
            .map(|owner| format!("  labels:\n    {LABEL_MANAGED_BY}: {owner}\n"))
            .unwrap_or_default();
        resources(&format!(
            "type: CheckConfig\napi_version: core/v2\nmetadata:\n  name: {name}\n  namespace: demo\n{labels}spec:\n  command: \"{command}\"\n  interval: 60\n"
        ))
        .remove(0)
    }

    fn live(items: Vec<Resource>) -> BTreeMap<ResourceKey, Resource> {
        items
            .into_iter()
            .map(|resource| (resource.key(), resource))
            .collect()
    }

    fn desired(items: Vec<Resource>) -> Vec<(Resource, String)> {
        items
            .into_iter()
            .map(|mut resource| {
                resource
                    .metadata
                    .labels
                    .insert(LABEL_MANAGED_BY.to_owned(), "cairnctl".to_owned());
                (resource, "checks.yaml".to_owned())
            })
            .collect()
    }

    #[test]
    fn actions_cover_create_update_unchanged_delete_and_leave_unowned_alone() {
        let plan = compute(
            desired(vec![
                check("same", "true", None),
                check("changed", "new", None),
                check("new", "true", None),
                check("handmade", "true", None),
            ]),
            live(vec![
                check("same", "true", Some("cairnctl")),
                check("changed", "old", Some("cairnctl")),
                check("handmade", "true", None),
                check("gone", "true", Some("cairnctl")),
                check("other-owner", "true", Some("someone-else")),
                check("by-hand", "true", None),
            ]),
            "cairnctl",
        );
        let actions: Vec<(&str, Action, bool)> = plan
            .changes
            .iter()
            .map(|change| (change.key.name.as_str(), change.action, change.adopt))
            .collect();
        assert_eq!(
            actions,
            vec![
                ("changed", Action::Update, false),
                ("handmade", Action::Update, true),
                ("new", Action::Create, false),
                ("same", Action::Unchanged, false),
                ("gone", Action::Delete, false),
            ]
        );
        assert_eq!(plan.managed, 3);
        let diff = plan.changes[0].unified_diff();
        assert!(diff.contains("-  command: old"), "{diff}");
        assert!(diff.contains("+  command: new"), "{diff}");
        assert!(!plan.in_sync());
    }

    #[test]
    fn prune_guard_refuses_all_and_more_than_the_limit() {
        let owned = |names: &[&str]| {
            live(
                names
                    .iter()
                    .map(|name| check(name, "true", Some("cairnctl")))
                    .collect(),
            )
        };
        let keep =
            |names: &[&str]| desired(names.iter().map(|name| check(name, "true", None)).collect());
        // Deleting every managed resource is refused whatever the limit.
        let plan = compute(Vec::new(), owned(&["a", "b"]), "cairnctl");
        assert!(plan.prune_refusal(100).expect("refused").contains("all 2"));
        // 2 of 4 is 50%: allowed at 50, refused at 49.
        let plan = compute(keep(&["a", "b"]), owned(&["a", "b", "c", "d"]), "cairnctl");
        assert_eq!(plan.prune_refusal(50), None);
        assert!(plan.prune_refusal(49).expect("refused").contains("2 of 4"));
        // Nothing to delete: nothing to refuse.
        let plan = compute(keep(&["a"]), owned(&["a"]), "cairnctl");
        assert_eq!(plan.prune_refusal(0), None);
    }

    #[test]
    fn server_managed_fields_are_not_drift() {
        let mut current = check("a", "true", Some("cairnctl"));
        current.metadata.created_by = "admin".to_owned();
        current.metadata.annotations.insert(
            ANNOTATION_SOURCE.to_owned(),
            "repo@0123456789abcdef0123456789abcdef01234567:checks.yaml".to_owned(),
        );
        let mut wanted = desired(vec![check("a", "true", None)]);
        wanted[0].0.metadata.annotations.insert(
            ANNOTATION_SOURCE.to_owned(),
            "repo@89abcdef0123456789abcdef0123456789abcdef:checks.yaml".to_owned(),
        );
        let plan = compute(wanted.clone(), live(vec![current.clone()]), "cairnctl");
        assert!(plan.in_sync(), "{:?}", plan.changes[0].unified_diff());
        // The same resource moved to another file is an update.
        wanted[0].0.metadata.annotations.insert(
            ANNOTATION_SOURCE.to_owned(),
            "repo@89abcdef0123456789abcdef0123456789abcdef:moved.yaml".to_owned(),
        );
        let plan = compute(wanted, live(vec![current]), "cairnctl");
        assert_eq!(plan.changes[0].action, Action::Update);
    }

    #[test]
    fn strip_commit_keeps_origin_and_path() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            strip_commit(&format!("/srv/git/monitoring.git@{commit}:checks/a.yaml")),
            "/srv/git/monitoring.git:checks/a.yaml"
        );
        assert_eq!(
            strip_commit(&format!("git@github.com:org/repo.git@{commit}:a.yaml")),
            "git@github.com:org/repo.git:a.yaml"
        );
        assert_eq!(strip_commit("manifests:a.yaml"), "manifests:a.yaml");
    }
}
