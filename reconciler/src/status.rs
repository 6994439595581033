//! `cairnctl status`: the last sync of a running watcher, read from its `--status-file` or
//! its `GET /status` (`--webhook-listen`). Exits 0 when the last sync succeeded (or none ran
//! yet), 1 when it failed or the state cannot be read.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::StatusArgs;
use crate::ctl::{CtlError, Report};
use crate::exit::Outcome;
use crate::state::WatchState;
use crate::sync::{self, SyncResult};

/// How long `--url` may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client for the watcher's plain-HTTP listener.
///
/// # Errors
/// When reqwest cannot build a client.
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    cairn_api::client::plain_http_client(REQUEST_TIMEOUT).map_err(|err| err.to_string())
}

/// Reads and prints the watcher's last sync.
///
/// # Errors
/// When neither the file nor the URL can be read.
pub async fn run(args: &StatusArgs) -> Result<Report, CtlError> {
    let (origin, text) = match (&args.status_file, &args.url) {
        (Some(path), _) => {
            let text =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|err| CtlError::ReadFailed {
                        path: path.clone(),
                        reason: err.to_string(),
                    })?;
            (path.display().to_string(), text)
        }
        (None, Some(url)) => {
            let url = status_url(url)?;
            let text = get(&url).await?;
            (url, text)
        }
        (None, None) => {
            return Err(CtlError::Usage(
                "give the watcher's --status-file FILE or --url http://ADDR/status".to_owned(),
            ))
        }
    };
    let state: WatchState = serde_json::from_str(&text).map_err(|err| CtlError::ReadFailed {
        path: PathBuf::from(&origin),
        reason: format!("not a cairnctl watch status: {err}"),
    })?;
    let lines = if args.json {
        vec![text.trim_end().to_owned()]
    } else {
        render(&state, sync::unix_now())
    };
    Ok(Report {
        lines,
        errors: Vec::new(),
        outcome: if state.failing() {
            Outcome::Failure
        } else {
            Outcome::Success
        },
    })
}

/// `--url` checked: plain `http://`, and `/status` when it names no path.
fn status_url(url: &str) -> Result<String, CtlError> {
    let mut parsed = reqwest::Url::parse(url)
        .map_err(|err| CtlError::Usage(format!("--url {url:?} is not a URL: {err}")))?;
    if parsed.scheme() != "http" {
        return Err(CtlError::Usage(format!(
            "--url {url:?}: the watcher serves plain http://, e.g. http://127.0.0.1:9090/status"
        )));
    }
    if parsed.path().is_empty() || parsed.path() == "/" {
        parsed.set_path("/status");
    }
    Ok(parsed.to_string())
}

async fn get(url: &str) -> Result<String, CtlError> {
    let failed = |reason: String| CtlError::ReadFailed {
        path: PathBuf::from(url),
        reason,
    };
    let client = http_client().map_err(&failed)?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|err| failed(cairn_api::client::cause_chain(&err)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("the watcher answered {status}")));
    }
    response
        .text()
        .await
        .map_err(|err| failed(cairn_api::client::cause_chain(&err)))
}

/// The human summary of a watcher's state, `now` in unix seconds.
pub fn render(state: &WatchState, now: u64) -> Vec<String> {
    let mut lines = vec![format!("source:               {}", state.source)];
    lines.push(format!(
        "watching since:       {}",
        when(state.started_at, now)
    ));
    match &state.last_sync {
        None => lines.push(format!(
            "last sync:            none yet{}",
            if state.syncing { " (running)" } else { "" }
        )),
        Some(report) => {
            let trigger = state
                .last_trigger
                .as_deref()
                .map(|trigger| format!(", triggered by {trigger}"))
                .unwrap_or_default();
            lines.push(format!(
                "last sync:            {}, took {} ms{trigger}",
                when(report.started_at, now),
                report.duration_ms
            ));
            if let Some(commit) = &report.commit {
                lines.push(format!("commit:               {commit}"));
            }
            lines.push(format!(
                "result:               {}",
                result_text(report.result)
            ));
            let counts = &report.counts;
            lines.push(format!(
                "changes:              {} created, {} updated, {} deleted, {} unchanged, {} failed",
                counts.created, counts.updated, counts.deleted, counts.unchanged, counts.failed
            ));
            if !report.ok() {
                let success = match (&state.last_success_commit, state.last_success_at) {
                    (Some(commit), Some(at)) => {
                        format!("{} at {}", crate::plan::short(commit), when(at, now))
                    }
                    (None, Some(at)) => when(at, now),
                    _ => "none since the watcher started".to_owned(),
                };
                lines.push(format!("last success:         {success}"));
            }
        }
    }
    lines.push(format!(
        "consecutive failures: {}",
        state.consecutive_failures
    ));
    if let Some(at) = state.next_retry_at {
        lines.push(format!("next retry:           {}", when(at, now)));
    }
    lines.push(format!(
        "syncing now:          {}",
        if state.syncing { "yes" } else { "no" }
    ));
    lines.push(format!(
        "status written:       {}",
        when(state.updated_at, now)
    ));
    if let Some(report) = &state.last_sync {
        if !report.errors.is_empty() {
            lines.push("errors:".to_owned());
            lines.extend(report.errors.iter().map(|error| format!("  {error}")));
        }
    }
    lines
}

fn result_text(result: SyncResult) -> &'static str {
    match result {
        SyncResult::Applied => "applied",
        SyncResult::InSync => "in sync",
        SyncResult::SourceUnreadable => "source unreadable, nothing applied",
        SyncResult::Invalid => "invalid manifests, nothing applied",
        SyncResult::BackendUnreachable => "backend unreachable, nothing applied",
        SyncResult::PartlyFailed => "errors",
    }
}

/// `2024-05-01T12:00:00Z (42 s ago)` or `(in 3 s)`.
fn when(at: u64, now: u64) -> String {
    let relative = if at <= now {
        format!("{} ago", ago(now - at))
    } else {
        format!("in {}", ago(at - now))
    };
    format!("{} ({relative})", rfc3339(at))
}

fn ago(seconds: u64) -> String {
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        7200..172_800 => format!("{} h", seconds / 3600),
        _ => format!("{} days", seconds / 86_400),
    }
}

/// Unix seconds as RFC 3339 in UTC.
pub fn rfc3339(unix: u64) -> String {
    crate::table::format_unix_utc(i64::try_from(unix).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sync::{SyncCounts, SyncReport};
    use crate::watch::write_status_file;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn status_urls_are_plain_http() {
        assert_eq!(
            status_url("http://127.0.0.1:9090").unwrap(),
            "http://127.0.0.1:9090/status"
        );
        assert_eq!(
            status_url("http://[::1]:9090/status").unwrap(),
            "http://[::1]:9090/status"
        );
        assert!(matches!(
            status_url("https://127.0.0.1:9090/status"),
            Err(CtlError::Usage(_))
        ));
        assert!(matches!(
            status_url("127.0.0.1:9090"),
            Err(CtlError::Usage(_))
        ));
    }

    fn failing_state() -> WatchState {
        WatchState {
            source: "/srv/repo.git at main".to_owned(),
            started_at: 1_700_000_000,
            updated_at: 1_700_000_100,
            consecutive_failures: 3,
            last_trigger: Some("change".to_owned()),
            last_sync: Some(SyncReport {
                source: "/srv/repo.git".to_owned(),
                commit: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
                started_at: 1_700_000_090,
                duration_ms: 12,
                result: SyncResult::BackendUnreachable,
                counts: SyncCounts::default(),
                errors: vec!["cannot connect to the backend: refused".to_owned()],
                lines: Vec::new(),
            }),
            last_success_commit: Some("fedcba9876543210fedcba9876543210fedcba98".to_owned()),
            last_success_at: Some(1_699_990_000),
            next_retry_at: Some(1_700_000_104),
            ..WatchState::default()
        }
    }

    #[test]
    fn render_shows_what_an_operator_asks_first() {
        let text = render(&failing_state(), 1_700_000_100).join("\n");
        for expected in [
            "source:               /srv/repo.git at main",
            "last sync:            2023-11-14T22:14:50Z (10 s ago), took 12 ms, triggered by change",
            "commit:               0123456789abcdef0123456789abcdef01234567",
            "result:               backend unreachable, nothing applied",
            "consecutive failures: 3",
            "next retry:           2023-11-14T22:15:04Z (in 4 s)",
            "  cannot connect to the backend: refused",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        assert!(text.contains("last success:         fedcba9"), "{text}");
        let fresh = render(&WatchState::default(), 5).join("\n");
        assert!(fresh.contains("last sync:            none yet"), "{fresh}");
    }

    #[tokio::test]
    async fn the_status_file_round_trips_through_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let state = failing_state();
        write_status_file(&path, &state).unwrap();

        let mut args = StatusArgs {
            status_file: Some(path.clone()),
            url: None,
            json: false,
        };
        let report = run(&args).await.unwrap();
        assert_eq!(report.outcome, Outcome::Failure, "the last sync failed");
        let text = report.lines.join("\n");
        assert!(
            text.contains("0123456789abcdef0123456789abcdef01234567"),
            "{text}"
        );

        args.json = true;
        let report = run(&args).await.unwrap();
        let read: WatchState = serde_json::from_str(&report.lines.join("\n")).unwrap();
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&state).unwrap()
        );

        let mut ok = state.clone();
        if let Some(report) = &mut ok.last_sync {
            report.result = SyncResult::InSync;
        }
        write_status_file(&path, &ok).unwrap();
        assert_eq!(run(&args).await.unwrap().outcome, Outcome::Success);
    }

    #[tokio::test]
    async fn a_missing_file_or_dead_url_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-status.json");
        let err = run(&StatusArgs {
            status_file: Some(missing.clone()),
            url: None,
            json: false,
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");

        std::fs::write(&missing, "not json").unwrap();
        let err = run(&StatusArgs {
            status_file: Some(missing.clone()),
            url: None,
            json: false,
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a cairnctl watch status"), "{err}");

        // A port nobody listens on: bound, then released.
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let url = format!("http://{addr}/status");
        let err = run(&StatusArgs {
            status_file: None,
            url: Some(url.clone()),
            json: false,
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(&url), "{err}");

        let err = run(&StatusArgs {
            status_file: None,
            url: None,
            json: false,
        })
        .await
        .unwrap_err();
        assert!(matches!(err, CtlError::Usage(_)));
    }
}
