//! `cairnctl silenced create|list|delete` and `cairnctl event resolve`, as sensuctl has them:
//! the name of a silenced entry (`SUBSCRIPTION:CHECK`, `*` for the side left out), its table,
//! and the hand-resolved event.

use reqwest::Method;
use serde_json::Value;

use cairn_api::client::ClientError;
use cairn_api::model::Silenced;
use cairn_api::{codec, Kind, ObjectMeta, Resource, Spec};

use crate::cli::{
    EventCommand, OutputFormat, SilencedCommand, SilencedCreateArgs, SilencedDeleteArgs,
    SilencedListArgs,
};
use crate::config::EnvSource;
use crate::ctl::{connect, text_lines, CtlError, Report};
use crate::table;

/// The output `event resolve` writes, as sensuctl writes "Resolved manually by sensuctl".
pub const RESOLVED_OUTPUT: &str = "Resolved manually by cairnctl";

/// The subscription and check of a silenced entry, at least one of them given: what its name
/// is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilencedTarget {
    subscription: String,
    check: String,
}

// === impl SilencedTarget ===

impl SilencedTarget {
    /// The target of `--subscription` and `--check` (an empty one counts as left out).
    ///
    /// # Errors
    /// [`CtlError::Usage`] when both are left out.
    pub fn new(subscription: Option<&str>, check: Option<&str>) -> Result<Self, CtlError> {
        let subscription = subscription.unwrap_or_default().trim().to_owned();
        let check = check.unwrap_or_default().trim().to_owned();
        if subscription.is_empty() && check.is_empty() {
            return Err(CtlError::Usage(
                "a silenced entry needs --subscription, --check, or both".to_owned(),
            ));
        }
        Ok(SilencedTarget {
            subscription,
            check,
        })
    }

    /// Sensu's name of the entry: `SUBSCRIPTION:CHECK`, `*` for the side left out.
    pub fn name(&self) -> String {
        self.silenced().canonical_name()
    }

    fn silenced(&self) -> Silenced {
        Silenced {
            subscription: self.subscription.clone(),
            check: self.check.clone(),
            ..Silenced::default()
        }
    }
}

/// Percent-encodes one path segment: everything but RFC 3986's unreserved characters, so that
/// `linux:*` travels as `linux%3A%2A`. The backend decodes each segment on its own
/// (`backend/src/http/percent.rs`). The encoder is `cairn_api::client::percent_encode`.
pub fn encode_segment(text: &str) -> String {
    cairn_api::client::percent_encode(text)
}

/// The silenced entry `silenced create` sends.
///
/// # Errors
/// [`CtlError::Usage`] naming the first problem Sensu's rules find (nothing is sent).
pub fn silenced_resource(args: &SilencedCreateArgs, namespace: &str) -> Result<Resource, CtlError> {
    let target = SilencedTarget::new(args.subscription.as_deref(), args.check.as_deref())?;
    let spec = Silenced {
        begin: args.begin.unwrap_or(0),
        expire: args.expire,
        expire_on_resolve: args.expire_on_resolve,
        reason: args.reason.clone().unwrap_or_default(),
        ..target.silenced()
    };
    let resource = Resource::new(
        ObjectMeta::named(namespace, &target.name()),
        Spec::Silenced(spec),
    );
    if let Some(problem) = cairn_api::validate::validate(&resource)
        .into_iter()
        .find(|issue| issue.is_error())
    {
        return Err(CtlError::Usage(format!(
            "silenced entry {}: {problem}",
            target.name()
        )));
    }
    Ok(resource)
}

/// `cairnctl silenced …`.
///
/// # Errors
/// Invalid flags (nothing is sent), or the backend's refusal.
pub async fn silenced(env: &dyn EnvSource, command: &SilencedCommand) -> Result<Report, CtlError> {
    match command {
        SilencedCommand::Create(args) => create(env, args).await,
        SilencedCommand::List(args) => list(env, args).await,
        SilencedCommand::Delete(args) => delete(env, args).await,
    }
}

async fn create(env: &dyn EnvSource, args: &SilencedCreateArgs) -> Result<Report, CtlError> {
    // Checked before connecting: bad flags send nothing.
    SilencedTarget::new(args.subscription.as_deref(), args.check.as_deref())?;
    let (client, default_namespace) = connect(env).await?;
    let namespace = args.namespace.clone().unwrap_or(default_namespace);
    check_namespace(&namespace)?;
    let resource = silenced_resource(args, &namespace)?;
    let path = Kind::Silenced.collection_path(&encode_segment(&namespace));
    client
        .send(Method::POST, &path, Some(&resource.to_wire()))
        .await
        .map_err(|source| CtlError::RequestFailed {
            action: format!(
                "create silenced entry {} in namespace {namespace}",
                resource.name()
            ),
            source,
        })?;
    Ok(Report::ok(vec!["Created".to_owned()]))
}

async fn list(env: &dyn EnvSource, args: &SilencedListArgs) -> Result<Report, CtlError> {
    let (client, default_namespace) = connect(env).await?;
    let namespace = match (&args.namespace, args.all_namespaces) {
        (_, true) => None,
        (Some(namespace), false) => Some(namespace.clone()),
        (None, false) => Some(default_namespace),
    };
    if let Some(namespace) = &namespace {
        check_namespace(namespace)?;
    }
    let mut entries = client
        .list_selected(Kind::Silenced, namespace.as_deref(), None)
        .await?;
    entries.retain(|resource| {
        let Spec::Silenced(silenced) = &resource.spec else {
            return false;
        };
        args.subscription
            .as_ref()
            .is_none_or(|wanted| *wanted == silenced.subscription)
            && args
                .check
                .as_ref()
                .is_none_or(|wanted| *wanted == silenced.check)
    });
    let lines = match args.output {
        OutputFormat::Yaml => text_lines(&codec::to_yaml(&entries)),
        OutputFormat::WrappedJson => text_lines(&codec::to_json_stream(&entries)),
        OutputFormat::Json => vec![serde_json::to_string_pretty(&Value::Array(
            entries.iter().map(Resource::to_wire).collect(),
        ))
        .expect("a JSON value always serializes")],
        OutputFormat::Table => table::resources(Kind::Silenced, &entries),
    };
    Ok(Report::ok(lines))
}

async fn delete(env: &dyn EnvSource, args: &SilencedDeleteArgs) -> Result<Report, CtlError> {
    let name = match &args.name {
        Some(name) if !name.trim().is_empty() => name.trim().to_owned(),
        _ => SilencedTarget::new(args.subscription.as_deref(), args.check.as_deref())?.name(),
    };
    let (client, default_namespace) = connect(env).await?;
    let namespace = args.namespace.clone().unwrap_or(default_namespace);
    check_namespace(&namespace)?;
    let path = format!(
        "{}/{}",
        Kind::Silenced.collection_path(&encode_segment(&namespace)),
        encode_segment(&name)
    );
    match client.send(Method::DELETE, &path, None).await {
        Ok(_) => Ok(Report::ok(vec!["Deleted".to_owned()])),
        Err(ClientError::Status {
            status: reqwest::StatusCode::NOT_FOUND,
            ..
        }) => Err(CtlError::NotFound(format!(
            "silenced entry {name} not found in namespace {namespace}"
        ))),
        Err(source) => Err(CtlError::RequestFailed {
            action: format!("delete silenced entry {name} in namespace {namespace}"),
            source,
        }),
    }
}

/// `cairnctl event …`.
///
/// # Errors
/// A missing event, or the backend's refusal.
pub async fn event(env: &dyn EnvSource, command: &EventCommand) -> Result<Report, CtlError> {
    match command {
        EventCommand::Resolve {
            entity,
            check,
            namespace,
        } => resolve(env, entity, check, namespace.as_deref()).await,
        EventCommand::Test {
            event,
            handler,
            pipeline,
            namespace,
            output,
        } => {
            test_event(
                env,
                event,
                handler.as_deref(),
                pipeline.as_deref(),
                namespace.as_deref(),
                *output,
            )
            .await
        }
    }
}

/// `cairnctl event test --event FILE [--handler NAME | --pipeline NAME]`: posts the event to
/// the backend's dry run and prints its report, a block per workflow.
async fn test_event(
    env: &dyn EnvSource,
    file: &std::path::Path,
    handler: Option<&str>,
    pipeline: Option<&str>,
    namespace: Option<&str>,
    output: OutputFormat,
) -> Result<Report, CtlError> {
    let text = std::fs::read_to_string(file).map_err(|err| CtlError::ReadFailed {
        path: file.to_owned(),
        reason: err.to_string(),
    })?;
    let mut event: Value = serde_yaml::from_str(&text).map_err(|err| CtlError::ReadFailed {
        path: file.to_owned(),
        reason: format!("not JSON or YAML: {err}"),
    })?;
    // A wrapped resource (`cairnctl get -o wrapped-json`, `sensuctl dump`): its spec.
    if event.get("type").is_some() && event.get("spec").is_some() {
        event = event["spec"].take();
    }
    let (client, default_namespace) = connect(env).await?;
    let namespace = namespace.map(str::to_owned).unwrap_or(default_namespace);
    check_namespace(&namespace)?;
    let mut body = serde_json::json!({ "event": event });
    if let Some(handler) = handler {
        body["handler"] = Value::from(handler);
    }
    if let Some(pipeline) = pipeline {
        body["pipeline"] = Value::from(pipeline);
    }
    let path = format!(
        "/api/cairn/v1/namespaces/{}/events/test",
        encode_segment(&namespace)
    );
    let failed = |source| CtlError::RequestFailed {
        action: format!(
            "test the event of {} in namespace {namespace}",
            file.display()
        ),
        source,
    };
    let response = client
        .send(Method::POST, &path, Some(&body))
        .await
        .map_err(failed)?;
    let report: Value = response.json().await.map_err(|err| {
        failed(ClientError::UnexpectedResponse {
            url: path.clone(),
            reason: err.to_string(),
        })
    })?;
    if matches!(output, OutputFormat::Json | OutputFormat::WrappedJson) {
        return Ok(Report::ok(vec![
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ]));
    }
    Ok(Report::ok(dry_run_lines(&report)))
}

/// The dry run's report as text: a block per workflow, its filters, mutator and output.
pub fn dry_run_lines(report: &Value) -> Vec<String> {
    let workflows = report.as_array().map(Vec::as_slice).unwrap_or_default();
    if workflows.is_empty() {
        return vec!["no workflow: the event names no handler or pipeline that exists".to_owned()];
    }
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let mut lines = Vec::new();
    for workflow in workflows {
        let route = match (workflow.get("pipeline"), workflow.get("workflow")) {
            (Some(pipeline), Some(name)) => {
                format!("pipeline {}, workflow {}", text(pipeline), text(name))
            }
            _ => "the event's handlers".to_owned(),
        };
        let passes = workflow["passes"].as_bool().unwrap_or(false);
        lines.push(format!(
            "{route}: handler {} ({}): {}",
            text(&workflow["handler"]),
            text(&workflow["handler_type"]),
            if passes { "would run" } else { "filtered out" }
        ));
        for filter in workflow["filters"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let verdict = if filter["passed"].as_bool().unwrap_or(false) {
                "passes"
            } else {
                "drops it"
            };
            lines.push(format!("  filter {}: {verdict}", text(&filter["name"])));
        }
        lines.push(format!("  mutator {}", text(&workflow["mutator"])));
        if let Some(error) = workflow.get("error") {
            lines.push(format!("  mutator failed: {}", text(error)));
        }
        if let Some(output) = workflow.get("output") {
            lines.push("  the handler would get:".to_owned());
            lines.extend(text(output).lines().map(|line| format!("    {line}")));
            if let Some(cut) = workflow.get("output_cut").and_then(Value::as_u64) {
                lines.push(format!("    … and {cut} bytes more"));
            }
        }
    }
    lines
}

/// `cairnctl event resolve ENTITY CHECK`: reads the event, sets its check's status to 0, its
/// output to [`RESOLVED_OUTPUT`] and its timestamp and `check.executed` to now, and `PUT`s it
/// back at the same path, which the backend ingests as it does any result.
async fn resolve(
    env: &dyn EnvSource,
    entity: &str,
    check: &str,
    namespace: Option<&str>,
) -> Result<Report, CtlError> {
    for (what, name) in [("entity", entity), ("check", check)] {
        if let Some(problem) = cairn_api::validate::check_name(Kind::Entity, name) {
            return Err(CtlError::Usage(format!("{what} name {name:?}: {problem}")));
        }
    }
    let (client, default_namespace) = connect(env).await?;
    let namespace = namespace.map(str::to_owned).unwrap_or(default_namespace);
    check_namespace(&namespace)?;
    let path = format!(
        "{}/{}/{}",
        Kind::Event.collection_path(&encode_segment(&namespace)),
        encode_segment(entity),
        encode_segment(check)
    );
    let failed = |source| CtlError::RequestFailed {
        action: format!("resolve event {entity}/{check} in namespace {namespace}"),
        source,
    };
    let body = match client.get_json(&path).await {
        Ok(body) => body,
        Err(ClientError::Status {
            status: reqwest::StatusCode::NOT_FOUND,
            ..
        }) => {
            return Err(CtlError::NotFound(format!(
                "event {entity}/{check} not found in namespace {namespace}"
            )))
        }
        Err(err) => return Err(failed(err)),
    };
    let mut resource = Resource::from_wire(Kind::Event, body).map_err(|issue| {
        failed(ClientError::UnexpectedResponse {
            url: path.clone(),
            reason: issue.to_string(),
        })
    })?;
    let Spec::Event(event) = &mut resource.spec else {
        unreachable!("decoded as an event");
    };
    let now = unix_now();
    let Some(event_check) = event.check.as_mut() else {
        return Err(CtlError::Usage(format!(
            "event {entity}/{check} in namespace {namespace} has no check to resolve"
        )));
    };
    event_check.status = 0;
    event_check.output = RESOLVED_OUTPUT.to_owned();
    event_check.executed = now;
    event.timestamp = now;
    client
        .send(Method::PUT, &path, Some(&resource.to_wire()))
        .await
        .map_err(failed)?;
    Ok(Report::ok(vec!["Resolved".to_owned()]))
}

/// A namespace name the backend can have, or a usage error naming what is wrong.
///
/// # Errors
/// [`CtlError::Usage`] with Sensu's name rule.
pub(crate) fn check_namespace(namespace: &str) -> Result<(), CtlError> {
    match cairn_api::validate::check_name(Kind::Namespace, namespace) {
        Some(problem) => Err(CtlError::Usage(format!(
            "namespace {namespace:?}: {problem}"
        ))),
        None => Ok(()),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|elapsed| i64::try_from(elapsed.as_secs()).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(subscription: Option<&str>, check: Option<&str>, expect: &str) {
        let name = SilencedTarget::new(subscription, check)
            .map(|target| target.name())
            .unwrap_or_else(|err| format!("error: {err}"));
        assert_eq!(name, expect, "{subscription:?} {check:?}");
    }

    #[test]
    fn names_use_a_star_for_the_side_left_out() {
        check(Some("linux"), Some("disk"), "linux:disk");
        check(Some("linux"), None, "linux:*");
        check(None, Some("disk"), "*:disk");
        check(Some("entity:web-01"), Some(""), "entity:web-01:*");
        check(
            None,
            None,
            "error: a silenced entry needs --subscription, --check, or both",
        );
        check(
            Some(" "),
            Some(""),
            "error: a silenced entry needs --subscription, --check, or both",
        );
    }

    #[test]
    fn names_travel_percent_encoded() {
        assert_eq!(encode_segment("linux:*"), "linux%3A%2A");
        assert_eq!(encode_segment("entity:web-01:*"), "entity%3Aweb-01%3A%2A");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("disk_1.x~"), "disk_1.x~");
    }

    fn create_args(subscription: Option<&str>, check: Option<&str>) -> SilencedCreateArgs {
        SilencedCreateArgs {
            subscription: subscription.map(str::to_owned),
            check: check.map(str::to_owned),
            begin: Some(1_700_000_000),
            expire: 600,
            expire_on_resolve: true,
            reason: Some("maintenance".into()),
            namespace: None,
        }
    }

    #[test]
    fn create_sends_the_entry_as_sensu_names_it() {
        let resource = silenced_resource(&create_args(Some("linux"), None), "ops").unwrap();
        assert_eq!(resource.name(), "linux:*");
        assert_eq!(resource.namespace(), "ops");
        let Spec::Silenced(silenced) = &resource.spec else {
            panic!("not silenced");
        };
        assert_eq!(silenced.begin, 1_700_000_000);
        assert_eq!(silenced.expire, 600);
        assert!(silenced.expire_on_resolve);
        assert_eq!(silenced.reason, "maintenance");
        let err = silenced_resource(&create_args(Some("bad subscription!"), None), "ops")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("silenced entry bad subscription!:*") && err.contains("subscription"),
            "{err}"
        );
        assert!(silenced_resource(&create_args(None, None), "ops").is_err());
    }
}
