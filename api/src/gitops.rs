//! The record of one GitOps sync, as `cairnctl apply` and `cairnctl watch` report it to the
//! backend (`POST /api/cairn/v1/gitops/syncs`) and the backend serves it back (the web UI's
//! GitOps page), with the bounds both sides hold it to.

use serde::{Deserialize, Serialize};

use crate::problem::{FieldPath, Issue};

/// `POST` a [`SyncRecord`]; `GET` the newest records (`?limit=N`).
pub const SYNCS_PATH: &str = "/api/cairn/v1/gitops/syncs";
/// The RBAC resource of the records (`create`, `list`, `get`; cluster-wide).
pub const SYNCS_RESOURCE: &str = "gitopssyncs";
/// At most this many `errors` in a record.
pub const MAX_ERRORS: usize = 100;
/// At most this many bytes in each of a record's `errors`.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;
/// At most this many `resources` in a record; the reconciler lists the first ones and says how
/// many it left out in `errors`.
pub const MAX_RESOURCES: usize = 2_000;
/// At most this many bytes in every other string of a record.
pub const MAX_STRING_BYTES: usize = 1024;

/// How a recorded sync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncOutcome {
    /// Every planned change was applied.
    Applied,
    /// Nothing was applied: every change failed (or the prune guard refused the only ones).
    Failed,
    /// Some changes were applied, others failed or were refused.
    Partial,
    /// The backend already matched the source.
    Unchanged,
}

/// What a sync did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceAction {
    /// Created.
    Created,
    /// Updated.
    Updated,
    /// Deleted (pruned).
    Deleted,
}

/// Counts of one sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncCounts {
    /// Resources created.
    pub created: u64,
    /// Resources updated.
    pub updated: u64,
    /// Resources deleted.
    pub deleted: u64,
    /// Resources left as they were.
    pub unchanged: u64,
    /// Resources whose change failed.
    pub failed: u64,
}

/// One resource a sync created, updated or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncedResource {
    /// The resource's type (`CheckConfig`, …).
    pub kind: String,
    /// Its namespace; empty for a cluster-wide kind.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What the sync did.
    pub action: ResourceAction,
    /// Its `cairn.io/source` annotation (`<repo>@<commit>:<path>`); empty when it has none.
    pub source: String,
}

/// The record of one sync. The client sends it without `id`, `recorded_at` and `recorded_by`;
/// the backend sets them and returns the record with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRecord {
    /// Set by the backend: sorts by the time it was recorded (zero-padded unix milliseconds,
    /// `-`, a random suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Set by the backend: when it was recorded, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<i64>,
    /// Set by the backend: the username that recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_by: Option<String>,
    /// What was read: a repository URL or path, or a folder.
    pub source: String,
    /// The commit, for Git sources.
    pub commit: Option<String>,
    /// The `--path` inside the source, when one was given.
    pub path: Option<String>,
    /// How it ended.
    pub result: SyncOutcome,
    /// Whether it only planned (`apply --dry-run`); `cairnctl` records real applies only.
    pub dry_run: bool,
    /// Counts.
    pub counts: SyncCounts,
    /// Every error (at most [`MAX_ERRORS`], each at most [`MAX_ERROR_BYTES`]).
    pub errors: Vec<String>,
    /// The resources created, updated or deleted (at most [`MAX_RESOURCES`]).
    pub resources: Vec<SyncedResource>,
    /// When the sync started, unix seconds.
    pub started_at: i64,
    /// When it finished, unix seconds.
    pub finished_at: i64,
}

// === impl SyncRecord ===

impl SyncRecord {
    /// Decodes a record a client sent and checks it against the bounds: unknown fields, the
    /// fields the backend sets, and oversized lists or strings are refused.
    ///
    /// # Errors
    /// The first problem, at the field it names (`resources[3].name: at most 1024 bytes`).
    pub fn from_client(body: serde_json::Value) -> Result<SyncRecord, Issue> {
        let record: SyncRecord = serde_path_to_error::deserialize(body)
            .map_err(|err| crate::resource::serde_issue(&FieldPath::root(), &err))?;
        record.check()?;
        Ok(record)
    }

    /// Checks the bounds of a record as a client sends it.
    ///
    /// # Errors
    /// The first problem, at the field it names.
    pub fn check(&self) -> Result<(), Issue> {
        let server_set = [
            ("id", self.id.is_some()),
            ("recorded_at", self.recorded_at.is_some()),
            ("recorded_by", self.recorded_by.is_some()),
        ];
        if let Some((field, _)) = server_set.iter().find(|(_, set)| *set) {
            return Err(Issue::error(
                FieldPath::keys(&[field]),
                "is set by the server",
            ));
        }
        let root = FieldPath::root();
        check_len(&root.key("source"), &self.source, MAX_STRING_BYTES)?;
        for (field, value) in [("commit", &self.commit), ("path", &self.path)] {
            if let Some(value) = value {
                check_len(&root.key(field), value, MAX_STRING_BYTES)?;
            }
        }
        if self.errors.len() > MAX_ERRORS {
            return Err(Issue::error(
                root.key("errors"),
                format!("at most {MAX_ERRORS} errors, found {}", self.errors.len()),
            ));
        }
        for (idx, error) in self.errors.iter().enumerate() {
            check_len(&root.key("errors").index(idx), error, MAX_ERROR_BYTES)?;
        }
        if self.resources.len() > MAX_RESOURCES {
            return Err(Issue::error(
                root.key("resources"),
                format!(
                    "at most {MAX_RESOURCES} resources, found {}",
                    self.resources.len()
                ),
            ));
        }
        for (idx, resource) in self.resources.iter().enumerate() {
            let at = root.key("resources").index(idx);
            for (field, value) in [
                ("kind", &resource.kind),
                ("namespace", &resource.namespace),
                ("name", &resource.name),
                ("source", &resource.source),
            ] {
                check_len(&at.key(field), value, MAX_STRING_BYTES)?;
            }
        }
        if self.finished_at < self.started_at {
            return Err(Issue::error(
                root.key("finished_at"),
                "is before started_at",
            ));
        }
        Ok(())
    }
}

fn check_len(path: &FieldPath, value: &str, limit: usize) -> Result<(), Issue> {
    if value.len() > limit {
        return Err(Issue::error(
            path.clone(),
            format!("at most {limit} bytes, found {}", value.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> serde_json::Value {
        serde_json::json!({
            "source": "file:///repo", "commit": "abc", "path": null, "result": "applied",
            "dry_run": false,
            "counts": {"created": 1, "updated": 0, "deleted": 0, "unchanged": 2, "failed": 0},
            "errors": [],
            "resources": [{"kind": "CheckConfig", "namespace": "default", "name": "cpu",
                           "action": "created", "source": "file:///repo@abc:checks.yaml"}],
            "started_at": 10, "finished_at": 11,
        })
    }

    fn check(change: impl FnOnce(&mut serde_json::Value), expect: &str) {
        let mut body = record();
        change(&mut body);
        let got = match SyncRecord::from_client(body) {
            Ok(_) => "ok".to_owned(),
            Err(issue) => issue.to_string(),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn records_are_checked_field_by_field() {
        check(|_| {}, "ok");
        check(
            |body| body["extra"] = 1.into(),
            "extra: unknown field \"extra\"",
        );
        check(
            |body| body["resources"][0]["colour"] = "red".into(),
            "resources[0].colour: unknown field \"colour\"",
        );
        check(
            |body| body["result"] = "great".into(),
            "result: unknown variant \"great\", expected one of \"applied\", \"failed\", \"partial\", \"unchanged\"",
        );
        check(
            |body| body["counts"]["created"] = (-1).into(),
            "counts.created: invalid value: integer \"-1\", expected u64",
        );
        check(
            |body| body["id"] = "mine".into(),
            "id: is set by the server",
        );
        check(
            |body| body["resources"][0]["name"] = "x".repeat(1025).into(),
            "resources[0].name: at most 1024 bytes, found 1025",
        );
        check(
            |body| body["errors"] = vec!["e"; 101].into(),
            "errors: at most 100 errors, found 101",
        );
        check(
            |body| body["errors"] = vec!["e".repeat(4097)].into(),
            "errors[0]: at most 4096 bytes, found 4097",
        );
        check(
            |body| {
                let one = body["resources"][0].clone();
                body["resources"] = vec![one; 2001].into();
            },
            "resources: at most 2000 resources, found 2001",
        );
        check(
            |body| {
                body.as_object_mut().unwrap().remove("finished_at");
            },
            "finished_at: missing field \"finished_at\"",
        );
    }
}
