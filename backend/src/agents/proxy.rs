//! Proxy checks (Sensu's `proxy_entity_name` and `proxy_requests`): a check an agent runs on
//! behalf of an entity that has no agent (a router, a web site), whose results are stored on
//! that entity.
//!
//! - **Fan-out** (the scheduler): a firing of a check with `proxy_requests` becomes one request
//!   per entity of the namespace whose view (the entity with its `metadata` lifted, as filters
//!   see it) makes every `entity_attributes` expression true on the sandboxed JavaScript engine
//!   (an expression that fails is no match, as Sensu's). Each request carries the entity as
//!   `proxy_entity_name` and the command with the entity's tokens substituted here, as Sensu's
//!   backend does; an unmatched token stores a status 3 event on that entity and sends
//!   nothing. With `splay`, the requests are spread evenly over `splay_coverage` percent of
//!   the interval (of 60 s for a cron check). None match: nothing runs. At most
//!   [`MAX_PROXY_ENTITIES`] entities are held for matching.
//! - **Results** (the agent session): an event whose check names `proxy_entity_name` is stored
//!   on that entity, created as a `proxy` entity when missing, with `processed_by` the agent.
//!   Who may write what (Cairn's rule, stricter than Sensu's): the entity must exist, unless the
//!   stored check of that name names it in `proxy_entity_name` (then it is created), and it must
//!   not be an agent entity. So an agent (or a local program through its socket's `source`)
//!   cannot create entities no check names, nor write onto an agent's entity (its own
//!   included). Sensu creates any entity a result names.

use cairn_api::js::Engine;
use cairn_api::model::{CheckConfig, Entity, Event};
use cairn_api::{Kind, ObjectMeta, Resource, Spec};

use crate::events::pipeline::entity_view;
use crate::store::resources::Resources;
use crate::store::Precondition;

/// Entities the scheduler holds for matching `proxy_requests`, over all namespaces; past it a
/// new entity is left out of matching and a warning logged.
pub(crate) const MAX_PROXY_ENTITIES: usize = 100_000;

/// The entities among `candidates` that every expression of `attributes` matches, in the
/// order given. An expression that fails to evaluate is no match for that entity.
///
/// # Errors
/// The engine refused the work (its queue is full or it stopped), as text.
pub(crate) async fn matching(
    js: &Engine,
    attributes: &[String],
    candidates: Vec<Entity>,
) -> Result<Vec<Entity>, String> {
    let mut matched = Vec::new();
    for entity in candidates {
        let bindings = vec![("entity".to_owned(), entity_view(&entity))];
        match js.evaluate_bool(attributes.to_vec(), bindings).await {
            Ok(true) => matched.push(entity),
            Ok(false) => {}
            Err(cairn_api::js::JsError::QueueFull { .. } | cairn_api::js::JsError::Stopped) => {
                return Err("the JavaScript engine is busy or stopped".to_owned());
            }
            Err(err) => {
                tracing::debug!(entity = %name_of(&entity), error = %err, "entity_attributes failed: no match");
            }
        }
    }
    Ok(matched)
}

/// The request configuration of `config` for the proxy entity `entity`: `proxy_entity_name`
/// set and the command's tokens substituted with the entity's fields.
///
/// # Errors
/// The unmatched token, in Sensu's words, for the status 3 event.
pub(crate) fn for_entity(config: &CheckConfig, entity: &Entity) -> Result<CheckConfig, String> {
    let mut config = config.clone();
    config.proxy_entity_name = name_of(entity).to_owned();
    config.command = cairn_api::tokens::substitute_command(&config.command, entity)
        .map_err(|err| format!("error while substituting check tokens: command: {err}"))?;
    Ok(config)
}

/// Seconds after the firing at which each of `count` proxy requests goes out: all at once
/// without `splay`, else evenly over `coverage` percent of `period` seconds (Sensu's
/// `splay_coverage`, 90 when 0).
pub(crate) fn splay_delays(count: usize, splay: bool, coverage: u32, period: i64) -> Vec<i64> {
    if !splay || count <= 1 {
        return vec![0; count];
    }
    let coverage = if coverage == 0 { 90 } else { coverage.min(100) };
    let window = period.max(1) * i64::from(coverage) / 100;
    let count_i64 = i64::try_from(count).unwrap_or(i64::MAX);
    (0..count_i64)
        .map(|index| index * window / count_i64)
        .collect()
}

/// An entity's name (empty without metadata).
pub(crate) fn name_of(entity: &Entity) -> &str {
    entity
        .metadata
        .as_ref()
        .map(|meta| meta.name.as_str())
        .unwrap_or_default()
}

/// Moves an agent's event onto the proxy entity its check names, as its result: the entity
/// (created as a `proxy` entity when missing) replaces the agent's, and `processed_by` names
/// the agent. Returns the event's name (`<proxy>/<check>`).
///
/// # Errors
/// Why it is refused (the check does not ask for this proxy entity, or it is an agent
/// entity), or a store failure, as text.
pub(crate) async fn onto_proxy(
    resources: &Resources,
    namespace: &str,
    agent: &str,
    mut event: Event,
) -> Result<(String, Event), String> {
    let Some(check) = event.check.as_mut() else {
        return Err("a proxy result needs a check".to_owned());
    };
    let proxy = check.proxy_entity_name.clone();
    let check_name = check
        .metadata
        .as_ref()
        .map(|meta| meta.name.clone())
        .unwrap_or_default();
    if let Some(problem) = cairn_api::validate::check_name(Kind::Entity, &proxy) {
        return Err(format!("check.proxy_entity_name: {problem}"));
    }
    let stored_check = resources
        .get(Kind::CheckConfig, namespace, &check_name)
        .await
        .map_err(|err| err.to_string())?;
    // Named by the stored check itself: the entity is created when missing. Otherwise (a
    // proxy_requests fan-out, a result from the agent socket's `source`) it must exist.
    let named = matches!(
        stored_check.map(|stored| stored.resource.spec),
        Some(Spec::CheckConfig(config)) if config.proxy_entity_name == proxy
    );
    check.processed_by = agent.to_owned();
    let entity = match resources
        .get(Kind::Entity, namespace, &proxy)
        .await
        .map_err(|err| err.to_string())?
    {
        Some(stored) => match stored.resource.spec {
            Spec::Entity(entity) if entity.entity_class == "agent" => {
                return Err(format!(
                    "{proxy} is an agent entity: an agent stores results only for itself and for proxy entities"
                ));
            }
            Spec::Entity(mut entity) => {
                entity.metadata = Some(stored.resource.metadata);
                entity
            }
            _ => return Err(format!("entity key {proxy} holds another kind")),
        },
        None if !named => {
            return Err(format!(
                "there is no entity {proxy}: a result creates a proxy entity only when the stored check {check_name} names it in proxy_entity_name"
            ));
        }
        None => {
            // Sensu creates the proxy entity on its first result.
            let mut metadata = ObjectMeta::named(namespace, &proxy);
            metadata.created_by = format!("agent/{agent}");
            let entity = Entity {
                entity_class: "proxy".to_owned(),
                subscriptions: vec![format!("entity:{proxy}")],
                ..Entity::default()
            };
            let resource = Resource::new(metadata.clone(), Spec::Entity(entity.clone()));
            match resources.put(&resource, Precondition::Absent).await {
                Ok(_)
                | Err(crate::store::resources::ResourceError::Store(
                    crate::store::StoreError::PreconditionFailed { .. },
                )) => {}
                Err(err) => return Err(err.to_string()),
            }
            Entity {
                metadata: Some(metadata),
                ..entity
            }
        }
    };
    event.entity = Some(entity);
    Ok((format!("{proxy}/{check_name}"), event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splay_spreads_over_the_coverage() {
        assert_eq!(splay_delays(3, false, 50, 60), [0, 0, 0]);
        assert_eq!(splay_delays(4, true, 50, 60), [0, 7, 15, 22]);
        assert_eq!(splay_delays(2, true, 0, 100), [0, 45]);
        assert_eq!(splay_delays(1, true, 90, 60), [0]);
        assert!(splay_delays(0, true, 90, 60).is_empty());
    }

    #[tokio::test]
    async fn entity_attributes_select_entities_as_sensu_does() {
        let js = Engine::new(cairn_api::js::EngineConfig::default()).unwrap();
        let entity = |name: &str, class: &str, kind: &str| {
            let mut meta = ObjectMeta::named("default", name);
            meta.labels.insert("proxy_type".into(), kind.into());
            Entity {
                metadata: Some(meta),
                entity_class: class.into(),
                ..Entity::default()
            }
        };
        let candidates = vec![
            entity("site-a", "proxy", "website"),
            entity("router", "proxy", "network"),
            entity("web-1", "agent", "website"),
            entity("site-b", "proxy", "website"),
        ];
        let attributes = vec![
            "entity.entity_class == 'proxy'".to_owned(),
            "entity.labels.proxy_type == 'website'".to_owned(),
        ];
        let matched = matching(&js, &attributes, candidates.clone())
            .await
            .unwrap();
        let names: Vec<&str> = matched.iter().map(name_of).collect();
        assert_eq!(names, ["site-a", "site-b"]);
        // A failing expression is no match.
        let broken = vec!["entity.nothing.here == 1".to_owned()];
        assert!(matching(&js, &broken, candidates).await.unwrap().is_empty());
    }

    #[test]
    fn a_proxy_request_carries_the_entity_and_its_tokens() {
        let mut meta = ObjectMeta::named("default", "site-a");
        meta.labels.insert("url".into(), "https://a.example".into());
        let entity = Entity {
            metadata: Some(meta),
            entity_class: "proxy".into(),
            ..Entity::default()
        };
        let config = CheckConfig {
            command: "http-check --url {{ .labels.url }}".into(),
            ..CheckConfig::default()
        };
        let request = for_entity(&config, &entity).unwrap();
        assert_eq!(request.proxy_entity_name, "site-a");
        assert_eq!(request.command, "http-check --url https://a.example");
        let missing = CheckConfig {
            command: "ping {{ .labels.address }}".into(),
            ..CheckConfig::default()
        };
        let err = for_entity(&missing, &entity).unwrap_err();
        assert!(err.contains("unmatched token"), "{err}");
    }
}
