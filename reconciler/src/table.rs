//! `cairnctl`'s tables: the one renderer (left-aligned columns) and the rows of `get`, which
//! for events and entities show what sensuctl users look for (`sensuctl event list`,
//! `sensuctl entity list`): for an event its entity, check, status, when it was last seen and
//! the first line of its output; for an entity its class, OS, subscriptions and last seen.

use cairn_api::{Kind, Resource, Spec};

/// Longest OUTPUT cell of the events table, in characters; the rest is in `-o json`.
pub const OUTPUT_CELL_LIMIT: usize = 60;

/// Left-aligned columns two spaces apart, without trailing blanks. A control character in a
/// cell (a check's output may hold escape sequences) is shown as a space, so that no cell can
/// drive the terminal or break its row.
pub fn columns<R: AsRef<[String]>>(rows: &[R]) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.as_ref().iter().map(|cell| printable(cell)).collect())
        .collect();
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; count];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (idx, cell) in row.iter().enumerate() {
                if idx + 1 < row.len() {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[idx]));
                } else {
                    line.push_str(cell);
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

fn printable(cell: &str) -> String {
    cell.chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

/// The headings of `cairnctl get`'s table of `kind`.
pub fn headings(kind: Kind) -> Vec<String> {
    let names: &[&str] = match kind {
        Kind::Event => &["ENTITY", "CHECK", "STATUS", "LAST SEEN", "OUTPUT"],
        Kind::Entity => &["ID", "CLASS", "OS", "SUBSCRIPTIONS", "LAST SEEN"],
        // sensuctl's `silenced list` columns.
        Kind::Silenced => &[
            "NAME",
            "SUBSCRIPTION",
            "CHECK",
            "BEGIN",
            "EXPIRE",
            "EXPIRE ON RESOLVE",
            "CREATOR",
            "REASON",
            "NAMESPACE",
        ],
        _ => &["NAME", "NAMESPACE", "CREATED BY"],
    };
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// One resource's row under [`headings`].
pub fn row(kind: Kind, resource: &Resource) -> Vec<String> {
    match &resource.spec {
        Spec::Event(event) => {
            let (entity_part, check_part) = resource
                .name()
                .split_once('/')
                .unwrap_or((resource.name(), ""));
            let entity = event
                .entity
                .as_ref()
                .and_then(|entity| entity.metadata.as_ref())
                .map(|metadata| metadata.name.as_str())
                .filter(|name| !name.is_empty())
                .unwrap_or(entity_part);
            let check = event.check.as_ref();
            let check_name = check
                .and_then(|check| check.metadata.as_ref())
                .map(|metadata| metadata.name.as_str())
                .filter(|name| !name.is_empty())
                .unwrap_or(check_part);
            // The output last: it is the widest cell, and the others stay aligned before it.
            vec![
                entity.to_owned(),
                check_name.to_owned(),
                check
                    .map(|check| check.status.to_string())
                    .unwrap_or_default(),
                human_timestamp(event.timestamp),
                output_cell(check.map(|check| check.output.as_str()).unwrap_or_default()),
            ]
        }
        Spec::Entity(entity) => vec![
            resource.name().to_owned(),
            entity.entity_class.clone(),
            entity
                .system
                .as_ref()
                .map(|system| system.os.clone())
                .unwrap_or_default(),
            entity.subscriptions.join(","),
            human_timestamp(entity.last_seen),
        ],
        Spec::Silenced(silenced) => vec![
            resource.name().to_owned(),
            silenced.subscription.clone(),
            silenced.check.clone(),
            human_timestamp(silenced.begin),
            if silenced.expire > 0 {
                human_timestamp(if silenced.expire_at > 0 {
                    silenced.expire_at
                } else {
                    silenced.begin.saturating_add(silenced.expire)
                })
            } else {
                "never".to_owned()
            },
            silenced.expire_on_resolve.to_string(),
            silenced.creator.clone(),
            silenced.reason.clone(),
            resource.namespace().to_owned(),
        ],
        _ => vec![
            resource.name().to_owned(),
            if kind.is_namespaced() {
                resource.namespace().to_owned()
            } else {
                String::new()
            },
            resource.metadata.created_by.clone(),
        ],
    }
}

/// `cairnctl get`'s table of `resources` of `kind`.
pub fn resources(kind: Kind, resources: &[Resource]) -> Vec<String> {
    let mut rows = vec![headings(kind)];
    rows.extend(resources.iter().map(|resource| row(kind, resource)));
    columns(&rows)
}

/// A check's output for its cell: the first line, cut to [`OUTPUT_CELL_LIMIT`] characters,
/// with `…` when anything was left out (the rest of the line, or further lines).
pub fn output_cell(output: &str) -> String {
    let output = output.trim_end();
    let mut lines = output.lines();
    let first = lines.next().unwrap_or_default().trim_end();
    let more_lines = lines.next().is_some();
    let mut cell: String = first.chars().take(OUTPUT_CELL_LIMIT).collect();
    if first.chars().count() > OUTPUT_CELL_LIMIT {
        cell.pop();
        cell.push('…');
    } else if more_lines {
        cell.push('…');
    }
    cell
}

/// A unix time as sensuctl shows one (Go's `time.Time.String()`), in UTC:
/// `2006-01-02 15:04:05 +0000 UTC`, and `N/A` for 0, as sensuctl's `HumanTimestamp`.
pub fn human_timestamp(seconds: i64) -> String {
    if seconds == 0 {
        return "N/A".to_owned();
    }
    let (year, month, day, hour, minute, second) = utc_parts(seconds);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} +0000 UTC")
}

/// A unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_unix_utc(seconds: i64) -> String {
    let (year, month, day, hour, minute, second) = utc_parts(seconds);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// Year, month, day, hour, minute and second of a unix time in UTC.
fn utc_parts(seconds: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60,
    )
}

#[cfg(test)]
mod tests {
    use cairn_api::model::{Check, Entity, Event, System};
    use cairn_api::ObjectMeta;

    use super::*;

    #[test]
    fn unix_times_format_as_utc() {
        assert_eq!(format_unix_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_unix_utc(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(human_timestamp(0), "N/A");
        assert_eq!(
            human_timestamp(1_700_000_000),
            "2023-11-14 22:13:20 +0000 UTC"
        );
    }

    #[test]
    fn columns_align() {
        let rows = [
            ["ID".to_owned(), "NS".to_owned()],
            ["abcdef".to_owned(), "default".to_owned()],
        ];
        assert_eq!(columns(&rows), ["ID      NS", "abcdef  default"]);
        let ragged = [
            vec!["A".to_owned(), "B".to_owned()],
            vec!["long".to_owned()],
        ];
        assert_eq!(columns(&ragged), ["A     B", "long"]);
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        let rows = [["a\u{1b}[2Jb\rc".to_owned(), "x".to_owned()]];
        assert_eq!(columns(&rows), ["a [2Jb c  x"]);
    }

    #[test]
    fn outputs_keep_their_first_line() {
        assert_eq!(output_cell(""), "");
        assert_eq!(output_cell("OK\n"), "OK");
        assert_eq!(
            output_cell("CRITICAL: 95% used\ndetails\n"),
            "CRITICAL: 95% used…"
        );
        assert_eq!(output_cell("a\r\nb"), "a…");
        let long = "x".repeat(OUTPUT_CELL_LIMIT + 1);
        let cell = output_cell(&long);
        assert_eq!(cell.chars().count(), OUTPUT_CELL_LIMIT);
        assert!(cell.ends_with('…'), "{cell}");
        let exact = "é".repeat(OUTPUT_CELL_LIMIT);
        assert_eq!(output_cell(&exact), exact);
    }

    #[test]
    fn silenced_entries_have_sensuctl_s_columns() {
        let entry = |name: &str, expire: i64| {
            Resource::new(
                ObjectMeta::named("default", name),
                Spec::Silenced(cairn_api::model::Silenced {
                    subscription: "linux".into(),
                    begin: 1_700_000_000,
                    expire,
                    expire_at: if expire > 0 {
                        1_700_000_000 + expire
                    } else {
                        0
                    },
                    expire_on_resolve: expire < 0,
                    creator: "admin".into(),
                    reason: "maintenance".into(),
                    ..cairn_api::model::Silenced::default()
                }),
            )
        };
        assert_eq!(
            resources(Kind::Silenced, &[entry("linux:*", -1), entry("linux:*", 60)]),
            [
                "NAME     SUBSCRIPTION  CHECK  BEGIN                          EXPIRE                         EXPIRE ON RESOLVE  CREATOR  REASON       NAMESPACE",
                "linux:*  linux                2023-11-14 22:13:20 +0000 UTC  never                          true               admin    maintenance  default",
                "linux:*  linux                2023-11-14 22:13:20 +0000 UTC  2023-11-14 22:14:20 +0000 UTC  false              admin    maintenance  default",
            ]
        );
    }

    #[test]
    fn events_and_entities_have_the_columns_sensuctl_users_read() {
        let event = Resource::new(
            ObjectMeta::named("default", "web-01/disk"),
            Spec::Event(Box::new(Event {
                timestamp: 1_700_000_000,
                entity: Some(Entity {
                    metadata: Some(ObjectMeta::named("default", "web-01")),
                    ..Entity::default()
                }),
                check: Some(Check {
                    metadata: Some(ObjectMeta::named("default", "disk")),
                    status: 2,
                    output: "CRITICAL: 95% used\nsda1 95%\n".into(),
                    silenced: vec!["linux:disk".into()],
                    ..Check::default()
                }),
                ..Event::default()
            })),
        );
        assert_eq!(
            resources(Kind::Event, &[event]),
            [
                "ENTITY  CHECK  STATUS  LAST SEEN                      OUTPUT",
                "web-01  disk   2       2023-11-14 22:13:20 +0000 UTC  CRITICAL: 95% used…",
            ]
        );
        let entity = Resource::new(
            ObjectMeta::named("default", "web-01"),
            Spec::Entity(Entity {
                entity_class: "agent".into(),
                subscriptions: vec!["linux".into(), "entity:web-01".into()],
                system: Some(System {
                    os: "linux".into(),
                    ..System::default()
                }),
                ..Entity::default()
            }),
        );
        assert_eq!(
            resources(Kind::Entity, &[entity]),
            [
                "ID      CLASS  OS     SUBSCRIPTIONS        LAST SEEN",
                "web-01  agent  linux  linux,entity:web-01  N/A",
            ]
        );
    }
}
