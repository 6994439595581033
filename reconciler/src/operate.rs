//! `cairnctl check execute` and `cairnctl entity update`: acting on a running cluster as
//! sensuctl's `check execute` and `entity update` do.
//!
//! - `check execute NAME [--subscriptions a,b] [--reason TEXT]` posts Sensu's `AdhocRequest`
//!   (`{"check", "subscriptions", "reason"}`) to `POST …/checks/{name}/execute`; the backend
//!   answers 202 once the request is queued and sends it to the matching agents at once.
//! - `entity update NAME --add-subscription S --remove-subscription S --label K=V
//!   --remove-label K` reads the entity, changes what the flags say and writes it back with a
//!   `PUT` (sensuctl asks the same questions interactively). The scheduler sends the checks of
//!   the new subscriptions to the agent at once; an agent-managed entity is refused by the
//!   backend, since its agent's configuration is what counts.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use cairn_api::client::ClientError;
use cairn_api::Kind;

use crate::cli::{CheckCommand, EntityCommand, EntityUpdateArgs};
use crate::config::EnvSource;
use crate::ctl::{connect, CtlError, Report};
use crate::silenced::{check_namespace, encode_segment};

/// `cairnctl check …`.
///
/// # Errors
/// A bad flag ([`CtlError::Usage`]) or the backend's refusal (404 for a check that does not
/// exist, 403 without `create` on checks, 503 when the scheduler's queue is full).
pub async fn check(env: &dyn EnvSource, command: &CheckCommand) -> Result<Report, CtlError> {
    match command {
        CheckCommand::Execute {
            name,
            subscriptions,
            reason,
            namespace,
        } => execute(env, name, subscriptions, reason, namespace.as_deref()).await,
    }
}

/// The body of Sensu's ad hoc request.
///
/// # Errors
/// [`CtlError::Usage`] for an empty subscription or a check name no check can have.
pub fn adhoc_body(name: &str, subscriptions: &[String], reason: &str) -> Result<Value, CtlError> {
    if let Some(problem) = cairn_api::validate::check_name(Kind::CheckConfig, name) {
        return Err(CtlError::Usage(format!("check {name:?}: {problem}")));
    }
    if let Some(idx) = subscriptions.iter().position(|s| s.trim().is_empty()) {
        return Err(CtlError::Usage(format!(
            "--subscriptions: entry {} is empty",
            idx + 1
        )));
    }
    let mut body = json!({ "check": name, "reason": reason });
    if !subscriptions.is_empty() {
        body["subscriptions"] = json!(subscriptions);
    }
    Ok(body)
}

async fn execute(
    env: &dyn EnvSource,
    name: &str,
    subscriptions: &[String],
    reason: &str,
    namespace: Option<&str>,
) -> Result<Report, CtlError> {
    let body = adhoc_body(name, subscriptions, reason)?;
    let (client, default_namespace) = connect(env).await?;
    let namespace = namespace.map(str::to_owned).unwrap_or(default_namespace);
    check_namespace(&namespace)?;
    let path = format!(
        "/api/core/v2/namespaces/{}/checks/{}/execute",
        encode_segment(&namespace),
        encode_segment(name)
    );
    client
        .send(Method::POST, &path, Some(&body))
        .await
        .map_err(|source| CtlError::RequestFailed {
            action: format!("execute check {name} in namespace {namespace}"),
            source,
        })?;
    Ok(Report::ok(vec!["Issued".to_owned()]))
}

/// `cairnctl entity …`.
///
/// # Errors
/// A bad flag ([`CtlError::Usage`]) or the backend's refusal (404 for an entity that does not
/// exist, 403 without `get` and `update` on entities, 409 for an agent-managed entity).
pub async fn entity(env: &dyn EnvSource, command: &EntityCommand) -> Result<Report, CtlError> {
    match command {
        EntityCommand::Update(args) => update_entity(env, args).await,
    }
}

/// Applies the flags of `entity update` to an entity as the REST API returns it (core/v2,
/// unwrapped); returns what changed, a line each, empty when nothing did.
///
/// # Errors
/// [`CtlError::Usage`] naming a bad subscription or label (nothing is sent).
pub fn apply_update(entity: &mut Value, args: &EntityUpdateArgs) -> Result<Vec<String>, CtlError> {
    for subscription in args
        .add_subscriptions
        .iter()
        .chain(&args.remove_subscriptions)
    {
        if subscription.trim().is_empty() || subscription.chars().any(char::is_whitespace) {
            return Err(CtlError::Usage(format!(
                "subscription {subscription:?}: must be non-empty and hold no whitespace"
            )));
        }
    }
    let mut labels = Vec::with_capacity(args.labels.len());
    for label in &args.labels {
        match label.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                labels.push((key.trim().to_owned(), value.to_owned()));
            }
            _ => {
                return Err(CtlError::Usage(format!(
                    "--label {label:?}: must be KEY=VALUE"
                )))
            }
        }
    }
    let mut changed = Vec::new();
    let mut subscriptions: Vec<String> = entity["subscriptions"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for subscription in &args.add_subscriptions {
        if !subscriptions.contains(subscription) {
            subscriptions.push(subscription.clone());
            changed.push(format!("added subscription {subscription}"));
        }
    }
    let removed: BTreeSet<&String> = args.remove_subscriptions.iter().collect();
    let before = subscriptions.len();
    subscriptions.retain(|subscription| !removed.contains(subscription));
    if subscriptions.len() != before {
        changed.extend(
            args.remove_subscriptions
                .iter()
                .map(|subscription| format!("removed subscription {subscription}")),
        );
    }
    entity["subscriptions"] = json!(subscriptions);
    let metadata = &mut entity["metadata"];
    if !metadata["labels"].is_object() {
        metadata["labels"] = json!({});
    }
    for (key, value) in labels {
        if metadata["labels"][&key].as_str() != Some(value.as_str()) {
            changed.push(format!("set label {key}={value}"));
            metadata["labels"][&key] = Value::from(value);
        }
    }
    if let Some(existing) = metadata["labels"].as_object_mut() {
        for key in &args.remove_labels {
            if existing.remove(key).is_some() {
                changed.push(format!("removed label {key}"));
            }
        }
    }
    Ok(changed)
}

async fn update_entity(env: &dyn EnvSource, args: &EntityUpdateArgs) -> Result<Report, CtlError> {
    if let Some(problem) = cairn_api::validate::check_name(Kind::Entity, &args.name) {
        return Err(CtlError::Usage(format!(
            "entity {:?}: {problem}",
            args.name
        )));
    }
    let (client, default_namespace) = connect(env).await?;
    let namespace = args.namespace.clone().unwrap_or(default_namespace);
    check_namespace(&namespace)?;
    let path = format!(
        "/api/core/v2/namespaces/{}/entities/{}",
        encode_segment(&namespace),
        encode_segment(&args.name)
    );
    let failed = |source: ClientError| CtlError::RequestFailed {
        action: format!("update entity {} in namespace {namespace}", args.name),
        source,
    };
    let mut entity = client.get_json(&path).await.map_err(failed)?;
    let changed = apply_update(&mut entity, args)?;
    if changed.is_empty() {
        return Ok(Report::ok(vec![format!("entity {} unchanged", args.name)]));
    }
    client
        .send(Method::PUT, &path, Some(&entity))
        .await
        .map_err(failed)?;
    let mut lines = vec![format!("Updated entity {}", args.name)];
    lines.extend(changed.into_iter().map(|line| format!("  {line}")));
    Ok(Report::ok(lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str) -> EntityUpdateArgs {
        EntityUpdateArgs {
            name: name.to_owned(),
            add_subscriptions: Vec::new(),
            remove_subscriptions: Vec::new(),
            labels: Vec::new(),
            remove_labels: Vec::new(),
            namespace: None,
        }
    }

    #[test]
    fn adhoc_bodies_are_sensus() {
        assert_eq!(
            adhoc_body("cpu", &[], "deploy").unwrap(),
            json!({"check": "cpu", "reason": "deploy"})
        );
        assert_eq!(
            adhoc_body("cpu", &["entity:web-1".into()], "").unwrap(),
            json!({"check": "cpu", "reason": "", "subscriptions": ["entity:web-1"]})
        );
        assert!(matches!(
            adhoc_body("a/b", &[], ""),
            Err(CtlError::Usage(_))
        ));
        assert!(matches!(
            adhoc_body("cpu", &[" ".into()], ""),
            Err(CtlError::Usage(_))
        ));
    }

    #[test]
    fn updates_change_only_what_the_flags_say() {
        let mut entity = json!({
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"rack": "a"}},
            "entity_class": "agent",
            "subscriptions": ["linux", "entity:web-1"],
        });
        let mut update = args("web-1");
        update.add_subscriptions = vec!["web".into(), "linux".into()];
        update.remove_subscriptions = vec!["gone".into()];
        update.labels = vec!["tier=front".into(), "rack=a".into()];
        update.remove_labels = vec!["missing".into()];
        let changed = apply_update(&mut entity, &update).unwrap();
        assert_eq!(changed, ["added subscription web", "set label tier=front"]);
        assert_eq!(
            entity["subscriptions"],
            json!(["linux", "entity:web-1", "web"])
        );
        assert_eq!(
            entity["metadata"]["labels"],
            json!({"rack": "a", "tier": "front"})
        );
        assert_eq!(entity["entity_class"], "agent");

        let mut update = args("web-1");
        update.remove_subscriptions = vec!["linux".into()];
        update.remove_labels = vec!["rack".into()];
        let changed = apply_update(&mut entity, &update).unwrap();
        assert_eq!(
            changed,
            ["removed subscription linux", "removed label rack"]
        );
        assert_eq!(entity["subscriptions"], json!(["entity:web-1", "web"]));

        let mut bad = args("web-1");
        bad.labels = vec!["novalue".into()];
        let before = entity.clone();
        assert!(matches!(
            apply_update(&mut entity, &bad),
            Err(CtlError::Usage(_))
        ));
        assert_eq!(entity, before, "nothing changed");
        let mut bad = args("web-1");
        bad.add_subscriptions = vec!["two words".into()];
        assert!(matches!(
            apply_update(&mut entity, &bad),
            Err(CtlError::Usage(_))
        ));
    }
}
