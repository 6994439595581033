//! The event state machine: what the backend fills in when a result arrives (id, timestamps,
//! history, occurrences, flap detection) and the questions the pipeline asks about an event
//! (incident, resolution, metrics, silencing).
//!
//! Everything here is a pure function of its arguments, including the clock (`now`, unix
//! seconds), so the store and the REST API decide when and where it runs.

use cairn_api::model::{Check, CheckHistory, Entity, Event, Silenced};
use cairn_api::validate::check_name;
use cairn_api::Kind;
use uuid::Uuid;

/// How many results `check.history` keeps, oldest dropped first, as Sensu does.
///
/// Flap detection only starts once the history is this long.
pub const HISTORY_LEN: usize = 21;

/// The entity class an event's entity gets when it arrives without one.
pub const DEFAULT_ENTITY_CLASS: &str = "proxy";

/// `check.state` when the check is not flapping and its status is 0.
pub const STATE_PASSING: &str = "passing";
/// `check.state` when the check is not flapping and its status is not 0.
pub const STATE_FAILING: &str = "failing";
/// `check.state` when the status changes too often (see [`process_event`]).
pub const STATE_FLAPPING: &str = "flapping";

/// Why an incoming event was refused.
///
/// All variants are client mistakes (a 400 from the API); sending the same event again does not
/// help.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// The event has no `entity`.
    #[error("an event needs an entity")]
    MissingEntity,
    /// The entity has no `metadata.name`.
    #[error("an event needs entity.metadata.name")]
    MissingEntityName,
    /// The entity name breaks Sensu's name rule.
    #[error("invalid entity name: {reason}")]
    InvalidEntityName {
        /// What is wrong with it.
        reason: String,
    },
    /// The event has neither a `check` nor `metrics`.
    #[error("an event needs a check or metrics")]
    MissingCheck,
    /// The check has no `metadata.name`.
    #[error("an event needs check.metadata.name")]
    MissingCheckName,
    /// The check name breaks Sensu's name rule.
    #[error("invalid check name: {reason}")]
    InvalidCheckName {
        /// What is wrong with it.
        reason: String,
    },
    /// `metadata.name` is set on the event itself.
    #[error("events cannot be named")]
    EventNamed,
    /// `id` is set but is not a UUID in its hyphenated form.
    #[error("event id must be a UUID")]
    InvalidId,
}

/// The result type of this module.
pub type Result<T, E = EventError> = std::result::Result<T, E>;

/// Validates an incoming event and fills in what Sensu fills in on ingestion.
///
/// `previous` is the stored event for the same (namespace, entity, check), if any; `now` is the
/// current unix time in seconds.
///
/// # Guarantees
///
/// On success the event has a `timestamp` (`now` when it was 0), an `id` (a new UUID v4 when it
/// was empty) and an entity class (`proxy` when it was empty). When it has a check:
///
/// - `executed` is `now` when it was 0;
/// - `history` is the previous event's history plus `{status, executed}`, at most
///   [`HISTORY_LEN`] entries, oldest dropped (a history sent by the client is ignored);
/// - `occurrences` counts consecutive results with this status (previous + 1 when the status is
///   unchanged, else 1);
/// - `occurrences_watermark` is 1 when an incident starts (status 0 → non-zero), else the highest
///   of the previous watermark and `occurrences`; so a resolution carries the length of the
///   incident it ends, as in Sensu;
/// - `last_ok` is `executed` when the status is 0, else carried over;
/// - `total_state_change` and `state` follow Sensu's flap detection: the percentage is 0 until
///   the history is full, then the weighted share of status changes (weights 0.80 growing by
///   0.02, rounded down); the check is `flapping` when both thresholds are set and either the
///   previous state was `flapping` and the percentage is above the low threshold, or it reaches
///   the high threshold; otherwise `passing` (status 0) or `failing`.
///
/// # Errors
///
/// An [`EventError`] when the event breaks Sensu's event rules: no entity or entity name, no
/// check and no metrics, no check name, a named event or a malformed id.
///
/// # Caveats
///
/// History entries are appended in arrival order; Sensu also sorts them by `executed`, which
/// only differs when results arrive out of order.
pub fn process_event(previous: Option<&Event>, incoming: Event, now: i64) -> Result<Event> {
    let mut event = incoming;
    validate(&event)?;
    if event.timestamp == 0 {
        event.timestamp = now;
    }
    if event.id.is_empty() {
        event.id = Uuid::new_v4().to_string();
    }
    if let Some(entity) = event.entity.as_mut() {
        if entity.entity_class.is_empty() {
            entity.entity_class = DEFAULT_ENTITY_CLASS.to_owned();
        }
    }
    if let Some(check) = event.check.as_mut() {
        let previous_check = previous.and_then(|previous| previous.check.as_ref());
        update_check(check, previous_check, now);
    }
    Ok(event)
}

/// Whether the event is an incident for the `is_incident` filter: a non-zero status, or a
/// resolution.
pub fn is_incident(event: &Event) -> bool {
    event.check.as_ref().is_some_and(|check| check.status != 0) || is_resolution(event)
}

/// Whether the event resolves an incident: status 0 while the result before it was not.
///
/// Reads the history, so it expects an event that went through [`process_event`].
pub fn is_resolution(event: &Event) -> bool {
    let Some(check) = event.check.as_ref() else {
        return false;
    };
    let history = &check.history;
    check.status == 0
        && history.len() >= 2
        && history
            .get(history.len() - 2)
            .is_some_and(|entry| entry.status != 0)
}

/// Whether the event carries metrics, for the `has_metrics` filter.
pub fn has_metrics(event: &Event) -> bool {
    event
        .metrics
        .as_ref()
        .is_some_and(|metrics| !metrics.is_null())
}

/// The names of the silenced entries that silence the event at `now`.
///
/// An entry matches when it is active (its `begin` has come and it has not expired), its check is
/// the event's check name, empty or `*`, and its subscription is empty, `*`, `entity:<name>` of
/// the event's entity, or a subscription of the check that the entity also has (sensu-go's
/// `Event.IsSilencedBy`); for a proxy entity, whose checks are not scheduled on its own
/// subscriptions, any of the entity's subscriptions. Events without a check or entity are never
/// silenced.
///
/// An entry expires at `expire_at` when that is set, else at `begin + expire` when both are
/// positive; an entry with neither never expires here (the store also deletes expired entries).
pub fn is_silenced_by(event: &Event, entries: &[(String, Silenced)], now: i64) -> Vec<String> {
    matching_entries(event, entries, now)
        .map(|(name, _)| name.clone())
        .collect()
}

/// The names of the entries to delete because the event resolves the incident they silenced:
/// those among [`is_silenced_by`] with `expire_on_resolve`, and only when [`is_resolution`].
pub fn silenced_to_delete_on_resolve(
    event: &Event,
    entries: &[(String, Silenced)],
    now: i64,
) -> Vec<String> {
    if !is_resolution(event) {
        return Vec::new();
    }
    matching_entries(event, entries, now)
        .filter(|(_, silenced)| silenced.expire_on_resolve)
        .map(|(name, _)| name.clone())
        .collect()
}

fn validate(event: &Event) -> Result<()> {
    if event
        .metadata
        .as_ref()
        .is_some_and(|metadata| !metadata.name.is_empty())
    {
        return Err(EventError::EventNamed);
    }
    if !event.id.is_empty() && !is_hyphenated_uuid(&event.id) {
        return Err(EventError::InvalidId);
    }
    let entity = event.entity.as_ref().ok_or(EventError::MissingEntity)?;
    let entity_name = entity_name(entity);
    if entity_name.is_empty() {
        return Err(EventError::MissingEntityName);
    }
    if let Some(reason) = check_name(Kind::Entity, entity_name) {
        return Err(EventError::InvalidEntityName { reason });
    }
    match &event.check {
        None if event.metrics.is_none() => return Err(EventError::MissingCheck),
        None => {}
        Some(check) => {
            let name = check_name_of(check);
            if name.is_empty() {
                return Err(EventError::MissingCheckName);
            }
            if let Some(reason) = check_name(Kind::CheckConfig, name) {
                return Err(EventError::InvalidCheckName { reason });
            }
        }
    }
    Ok(())
}

fn is_hyphenated_uuid(id: &str) -> bool {
    id.len() == 36 && Uuid::try_parse(id).is_ok()
}

fn update_check(check: &mut Check, previous: Option<&Check>, now: i64) {
    if check.executed == 0 {
        check.executed = now;
    }
    let mut history = previous.map_or_else(Vec::new, |previous| previous.history.clone());
    let previous_status = history.last().map(|entry| entry.status);
    history.push(CheckHistory {
        status: check.status,
        executed: check.executed,
    });
    if history.len() > HISTORY_LEN {
        history.drain(..history.len() - HISTORY_LEN);
    }
    check.history = history;

    let (previous_occurrences, previous_watermark) = previous.map_or((0, 0), |previous| {
        (previous.occurrences, previous.occurrences_watermark)
    });
    check.occurrences = if previous_status == Some(check.status) {
        previous_occurrences.saturating_add(1).max(1)
    } else {
        1
    };
    check.occurrences_watermark = if previous_status == Some(0) && check.status != 0 {
        // A new incident starts from OK; moving between warning, critical and unknown does not
        // reset the watermark.
        check.occurrences
    } else {
        previous_watermark.max(check.occurrences)
    };

    if let Some(previous) = previous {
        check.last_ok = previous.last_ok;
    }
    if check.status == 0 {
        check.last_ok = check.executed;
    }

    let total_state_change = total_state_change(&check.history);
    check.total_state_change = Some(total_state_change);
    let was_flapping = previous.is_some_and(|previous| previous.state == STATE_FLAPPING);
    let state = if is_flapping(check, total_state_change, was_flapping) {
        STATE_FLAPPING
    } else if check.status == 0 {
        STATE_PASSING
    } else {
        STATE_FAILING
    };
    check.state = state.to_owned();
}

/// Sensu's weighted percentage of status changes over a full history; 0 until it is full.
fn total_state_change(history: &[CheckHistory]) -> u32 {
    if history.len() < HISTORY_LEN {
        return 0;
    }
    let mut state_changes = 0.0_f64;
    let mut change_weight = 0.80_f64;
    for pair in history.windows(2) {
        if pair[0].status != pair[1].status {
            state_changes += change_weight;
        }
        change_weight += 0.02;
    }
    // Sensu computes `uint32(float32(stateChanges) / 20 * 100)`; doing the same in f32 keeps
    // the rounding identical at the thresholds.
    let percent = state_changes as f32 / 20.0 * 100.0;
    percent as u32
}

fn is_flapping(check: &Check, total_state_change: u32, was_flapping: bool) -> bool {
    let (low, high) = (check.low_flap_threshold, check.high_flap_threshold);
    if low == 0 || high == 0 {
        return false;
    }
    if was_flapping {
        total_state_change > low
    } else {
        total_state_change >= high
    }
}

fn matching_entries<'a>(
    event: &'a Event,
    entries: &'a [(String, Silenced)],
    now: i64,
) -> impl Iterator<Item = &'a (String, Silenced)> + 'a {
    let target = event
        .check
        .as_ref()
        .zip(event.entity.as_ref())
        .map(|(check, entity)| {
            let entity_subscription = format!("entity:{}", entity_name(entity));
            (check, check_name_of(check), entity, entity_subscription)
        });
    entries.iter().filter(move |(_, silenced)| {
        let Some((check, check_name, entity, entity_subscription)) = &target else {
            return false;
        };
        is_active(silenced, now)
            && is_wildcard_or(&silenced.check, check_name)
            && (is_wildcard_or(&silenced.subscription, entity_subscription)
                || subscribed(check, entity, &silenced.subscription))
    })
}

/// Whether the event is in `subscription` for silencing: the check's and the entity's, or a proxy
/// entity's own.
fn subscribed(check: &Check, entity: &Entity, subscription: &str) -> bool {
    let entity_has = entity
        .subscriptions
        .iter()
        .any(|theirs| theirs == subscription);
    entity_has
        && (entity.entity_class == "proxy"
            || check
                .subscriptions
                .iter()
                .any(|theirs| theirs == subscription))
}

fn is_wildcard_or(pattern: &str, value: &str) -> bool {
    pattern.is_empty() || pattern == "*" || pattern == value
}

fn is_active(silenced: &Silenced, now: i64) -> bool {
    silenced.begin <= now && !has_expired(silenced, now)
}

/// Whether the entry expired by `now`: at `expire_at` when that is set, else at
/// `begin + expire` when both are positive; an entry with neither never expires.
pub fn has_expired(silenced: &Silenced, now: i64) -> bool {
    let expires_at = if silenced.expire_at > 0 {
        Some(silenced.expire_at)
    } else if silenced.expire > 0 && silenced.begin > 0 {
        Some(silenced.begin.saturating_add(silenced.expire))
    } else {
        None
    };
    expires_at.is_some_and(|expires_at| now >= expires_at)
}

fn entity_name(entity: &Entity) -> &str {
    entity
        .metadata
        .as_ref()
        .map_or("", |metadata| metadata.name.as_str())
}

fn check_name_of(check: &Check) -> &str {
    check
        .metadata
        .as_ref()
        .map_or("", |metadata| metadata.name.as_str())
}

#[cfg(test)]
mod tests {
    use cairn_api::ObjectMeta;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn event(status: u32) -> Event {
        Event {
            entity: Some(Entity {
                metadata: Some(ObjectMeta::named("default", "web-1")),
                entity_class: "agent".to_owned(),
                subscriptions: vec!["linux".to_owned(), "web".to_owned()],
                ..Entity::default()
            }),
            check: Some(Check {
                metadata: Some(ObjectMeta::named("default", "check-http")),
                status,
                interval: 60,
                subscriptions: vec!["web".to_owned(), "db".to_owned()],
                ..Check::default()
            }),
            ..Event::default()
        }
    }

    fn flapping_event(status: u32) -> Event {
        let mut event = event(status);
        let check = event.check.as_mut().unwrap();
        check.low_flap_threshold = 20;
        check.high_flap_threshold = 40;
        event
    }

    /// Feeds the statuses one result per minute and returns every processed event.
    fn run(statuses: &[u32], make: fn(u32) -> Event) -> Vec<Event> {
        let mut processed: Vec<Event> = Vec::new();
        for (idx, status) in statuses.iter().enumerate() {
            let now = NOW + 60 * idx as i64;
            let next = process_event(processed.last(), make(*status), now).unwrap();
            processed.push(next);
        }
        processed
    }

    fn last_check(events: &[Event]) -> &Check {
        events.last().unwrap().check.as_ref().unwrap()
    }

    /// One table row: the statuses fed in order, and the expected `(occurrences, watermark)`
    /// after each of them.
    fn check(statuses: &[u32], expect: &[(i64, i64)]) {
        let events = run(statuses, event);
        let actual: Vec<(i64, i64)> = events
            .iter()
            .map(|event| {
                let check = event.check.as_ref().unwrap();
                (check.occurrences, check.occurrences_watermark)
            })
            .collect();
        assert_eq!(actual, expect, "statuses {statuses:?}");
    }

    #[test]
    fn occurrences_and_watermark() {
        check(&[0], &[(1, 1)]);
        check(&[0, 0, 0], &[(1, 1), (2, 2), (3, 3)]);
        check(&[2, 2, 2], &[(1, 1), (2, 2), (3, 3)]);
        // An incident after OK resets the watermark; the resolution keeps the incident's length.
        check(
            &[0, 0, 0, 2, 2, 0],
            &[(1, 1), (2, 2), (3, 3), (1, 1), (2, 2), (1, 2)],
        );
        // Moving between non-zero statuses keeps the watermark.
        check(
            &[1, 1, 1, 2, 2, 2, 2],
            &[(1, 1), (2, 2), (3, 3), (1, 3), (2, 3), (3, 3), (4, 4)],
        );
        check(&[2, 0, 2], &[(1, 1), (1, 1), (1, 1)]);
    }

    #[test]
    fn fills_ingestion_fields() {
        let mut classless = event(0);
        classless.entity.as_mut().unwrap().entity_class = String::new();
        let processed = process_event(None, classless, NOW).unwrap();
        assert_eq!(processed.timestamp, NOW);
        assert!(is_hyphenated_uuid(&processed.id), "id {:?}", processed.id);
        let entity = processed.entity.as_ref().unwrap();
        assert_eq!(entity.entity_class, "proxy");
        let check = processed.check.as_ref().unwrap();
        assert_eq!(check.executed, NOW);
        assert_eq!(check.last_ok, NOW);
        assert_eq!(check.state, STATE_PASSING);
        assert_eq!(check.total_state_change, Some(0));
        assert_eq!(
            check.history,
            vec![CheckHistory {
                status: 0,
                executed: NOW
            }]
        );

        // Values the client sent are kept.
        let mut incoming = event(2);
        incoming.timestamp = 5;
        incoming.id = "0b9b4a58-4c1b-4c4f-a5e7-2d0d2f5f5e11".to_owned();
        incoming.entity.as_mut().unwrap().entity_class = "agent".to_owned();
        incoming.check.as_mut().unwrap().executed = 7;
        let processed = process_event(Some(&processed), incoming, NOW + 60).unwrap();
        assert_eq!(processed.timestamp, 5);
        assert_eq!(processed.id, "0b9b4a58-4c1b-4c4f-a5e7-2d0d2f5f5e11");
        assert_eq!(processed.entity.as_ref().unwrap().entity_class, "agent");
        let check = processed.check.as_ref().unwrap();
        assert_eq!(check.executed, 7);
        assert_eq!(check.last_ok, NOW, "last_ok carries over on failure");
        assert_eq!(check.state, STATE_FAILING);
    }

    #[test]
    fn history_is_capped_at_21() {
        let statuses: Vec<u32> = (0..30).map(|idx| idx % 3).collect();
        let events = run(&statuses, event);
        let check = last_check(&events);
        assert_eq!(check.history.len(), HISTORY_LEN);
        let expected: Vec<CheckHistory> = (9..30)
            .map(|idx| CheckHistory {
                status: idx % 3,
                executed: NOW + 60 * i64::from(idx),
            })
            .collect();
        assert_eq!(check.history, expected, "oldest entries are dropped first");
    }

    #[test]
    fn alternating_statuses_flap() {
        let statuses: Vec<u32> = (0..21)
            .map(|idx| if idx % 2 == 0 { 0 } else { 2 })
            .collect();
        let events = run(&statuses, flapping_event);
        let states: Vec<&str> = events
            .iter()
            .map(|event| event.check.as_ref().unwrap().state.as_str())
            .collect();
        assert!(
            states[..20].iter().all(|state| *state != STATE_FLAPPING),
            "no flapping before the history is full: {states:?}"
        );
        let check = last_check(&events);
        // 20 changes with weights 0.80..=1.18 sum to 19.8 out of 20, which in floating point
        // is just under 99%; Sensu rounds the same way.
        assert_eq!(check.total_state_change, Some(98));
        assert_eq!(check.state, STATE_FLAPPING);

        // Hysteresis: once flapping, it stays flapping while the change rate is above `low`,
        // even below `high`; 12 steady results leave 8 changes in the window (34%).
        let mut steady = events.clone();
        let mut feed = |count: i64| {
            for idx in 0..count {
                let now = NOW + 10_000 + 60 * idx;
                let next = process_event(steady.last(), flapping_event(0), now).unwrap();
                steady.push(next);
            }
            last_check(&steady).clone()
        };
        let check = feed(12);
        assert_eq!(check.total_state_change, Some(34));
        assert_eq!(check.state, STATE_FLAPPING);
        assert!(
            !is_flapping(&check, 34, false),
            "34% alone does not start flapping"
        );
        // Four more leave 4 changes (16%), below `low`.
        let check = feed(4);
        assert_eq!(check.total_state_change, Some(16));
        assert_eq!(check.state, STATE_PASSING);

        // Without thresholds nothing flaps.
        let events = run(&statuses, event);
        assert_eq!(last_check(&events).state, STATE_PASSING);
    }

    #[test]
    fn steady_statuses_pass() {
        let events = run(&[0; 25], flapping_event);
        let check = last_check(&events);
        assert_eq!(check.total_state_change, Some(0));
        assert_eq!(check.state, STATE_PASSING);
    }

    #[test]
    fn total_state_change_matches_sensu_weights() {
        let history = |changes_at: &[usize]| -> Vec<CheckHistory> {
            let mut status = 0;
            (0..HISTORY_LEN)
                .map(|idx| {
                    if changes_at.contains(&idx) {
                        status = 2 - status;
                    }
                    CheckHistory {
                        status,
                        executed: idx as i64,
                    }
                })
                .collect()
        };
        assert_eq!(total_state_change(&history(&[])), 0);
        // The first change weighs 0.80: 0.8 / 20 = 4%.
        assert_eq!(total_state_change(&history(&[1])), 4);
        // The last change weighs 1.18: 5.9% rounded down.
        assert_eq!(total_state_change(&history(&[20])), 5);
        assert_eq!(total_state_change(&history(&[1])[..20]), 0, "short history");
    }

    #[test]
    fn incidents_and_resolutions() {
        let events = run(&[0, 2, 2, 0, 0], event);
        let incident: Vec<bool> = events.iter().map(is_incident).collect();
        let resolution: Vec<bool> = events.iter().map(is_resolution).collect();
        assert_eq!(incident, [false, true, true, true, false]);
        assert_eq!(resolution, [false, false, false, true, false]);

        let metrics_only = Event {
            check: None,
            metrics: Some(serde_json::json!({"points": []})),
            ..event(0)
        };
        assert!(!is_incident(&metrics_only));
        assert!(has_metrics(&metrics_only));
        assert!(!has_metrics(&events[0]));
    }

    #[test]
    fn refuses_bad_events() {
        let check_error = |mutate: fn(&mut Event), expect: EventError| {
            let mut incoming = event(0);
            mutate(&mut incoming);
            assert_eq!(process_event(None, incoming, NOW), Err(expect));
        };
        check_error(|event| event.entity = None, EventError::MissingEntity);
        check_error(
            |event| event.entity.as_mut().unwrap().metadata = None,
            EventError::MissingEntityName,
        );
        check_error(
            |event| event.entity.as_mut().unwrap().metadata = Some(ObjectMeta::named("", "a b")),
            EventError::InvalidEntityName {
                reason:
                    "\"a b\" cannot contain spaces or special characters (allowed: ASCII letters, \
                         digits, _ . - :)"
                        .to_owned(),
            },
        );
        check_error(|event| event.check = None, EventError::MissingCheck);
        check_error(
            |event| event.check.as_mut().unwrap().metadata = None,
            EventError::MissingCheckName,
        );
        check_error(
            |event| event.metadata = Some(ObjectMeta::named("default", "named")),
            EventError::EventNamed,
        );
        check_error(
            |event| event.id = "not-a-uuid".to_owned(),
            EventError::InvalidId,
        );

        let metrics_only = Event {
            check: None,
            metrics: Some(serde_json::json!({})),
            ..event(0)
        };
        assert!(process_event(None, metrics_only, NOW).is_ok());
    }

    fn silence(subscription: &str, check: &str) -> Silenced {
        Silenced {
            subscription: subscription.to_owned(),
            check: check.to_owned(),
            ..Silenced::default()
        }
    }

    fn named(entries: Vec<Silenced>) -> Vec<(String, Silenced)> {
        entries
            .into_iter()
            .map(|entry| (entry.canonical_name(), entry))
            .collect()
    }

    #[test]
    fn silencing() {
        let processed = process_event(None, event(2), NOW).unwrap();
        let check_silenced = |entry: Silenced, expect: bool| {
            let entries = named(vec![entry.clone()]);
            let matched = is_silenced_by(&processed, &entries, NOW);
            assert_eq!(!matched.is_empty(), expect, "{entry:?}");
        };
        check_silenced(silence("web", ""), true);
        check_silenced(silence("web", "*"), true);
        // The check is also scheduled on db, but the entity is not in it.
        check_silenced(silence("db", ""), false);
        // The entity is in linux, but the check was not scheduled on it.
        check_silenced(silence("linux", ""), false);
        check_silenced(silence("", "check-http"), true);
        check_silenced(silence("*", "check-http"), true);
        check_silenced(silence("", "check-disk"), false);
        check_silenced(silence("web", "check-disk"), false);
        check_silenced(silence("entity:web-1", ""), true);
        check_silenced(silence("entity:web-1", "check-http"), true);
        check_silenced(silence("entity:web-2", ""), false);
        check_silenced(silence("*", "*"), true);

        let not_yet = Silenced {
            begin: NOW + 1,
            ..silence("web", "")
        };
        check_silenced(not_yet, false);
        let begun = Silenced {
            begin: NOW,
            ..silence("web", "")
        };
        check_silenced(begun, true);
        let expired = Silenced {
            expire_at: NOW,
            ..silence("web", "")
        };
        check_silenced(expired, false);
        let expired_by_duration = Silenced {
            begin: NOW - 100,
            expire: 100,
            ..silence("web", "")
        };
        check_silenced(expired_by_duration, false);
        let still_running = Silenced {
            begin: NOW - 100,
            expire: 101,
            ..silence("web", "")
        };
        check_silenced(still_running, true);

        let entries = named(vec![
            silence("web", ""),
            silence("db", ""),
            silence("", "check-http"),
        ]);
        assert_eq!(
            is_silenced_by(&processed, &entries, NOW),
            ["web:*", "*:check-http"]
        );

        // A proxy entity is silenced by its own subscriptions.
        let mut proxy = processed.clone();
        proxy.entity.as_mut().unwrap().entity_class = "proxy".to_owned();
        let entries = named(vec![silence("linux", "")]);
        assert_eq!(is_silenced_by(&proxy, &entries, NOW), ["linux:*"]);
    }

    #[test]
    fn expire_on_resolve() {
        let events = run(&[2, 0, 0], event);
        let entries = named(vec![
            Silenced {
                expire_on_resolve: true,
                ..silence("web", "")
            },
            silence("", "check-http"),
            Silenced {
                expire_on_resolve: true,
                ..silence("db", "")
            },
        ]);
        let to_delete: Vec<Vec<String>> = events
            .iter()
            .map(|event| silenced_to_delete_on_resolve(event, &entries, NOW))
            .collect();
        assert_eq!(
            to_delete,
            [vec![], vec!["web:*".to_owned()], vec![]],
            "only the resolution deletes, and only matching entries"
        );
    }
}
