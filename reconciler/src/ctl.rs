//! The `cairnctl` commands that talk to a backend: `configure`, `get`, `delete`, `create -f`,
//! `user …` and `api-key …`, named as sensuctl names them, `agent …` (join tokens and
//! revocation), and for a federation gateway `cluster list` and `get … --all-clusters`.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{json, Value};

use cairn_api::client::{Client, ClientError, Credentials};
use cairn_api::codec;
use cairn_api::{Kind, Resource};

use crate::cli::{
    AgentCommand, ApiKeyCommand, ClusterCommand, GetArgs, OutputFormat, TokenCommand, UserCommand,
};
use crate::config::{self, ConfigError, EnvSource, Saved};
use crate::exit::Outcome;
use crate::table::{self, columns, format_unix_utc};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Configuration is missing or unusable; nothing was sent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    ReadFailed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The command line names something that does not exist.
    #[error("{0}")]
    Usage(String),
    /// What the command acts on does not exist (the message names it and its namespace). A
    /// retry does not help.
    #[error("{0}")]
    NotFound(String),
    /// The backend refused a step of the command, or could not be reached; `action` says what
    /// the command was doing. A retry helps only when the backend could not be reached.
    #[error("cannot {action}")]
    RequestFailed {
        /// What the command was doing, e.g. `resolve event web-01/disk in namespace default`.
        action: String,
        /// The refusal.
        #[source]
        source: ClientError,
    },
}

/// What a command prints and how it ends.
#[derive(Debug)]
pub struct Report {
    /// Lines for stdout.
    pub lines: Vec<String>,
    /// Lines for stderr (per-item failures that did not stop the command).
    pub errors: Vec<String>,
    /// The exit outcome.
    pub outcome: Outcome,
}

impl Report {
    pub(crate) fn ok(lines: Vec<String>) -> Report {
        Report {
            lines,
            errors: Vec::new(),
            outcome: Outcome::Success,
        }
    }
}

/// `cairnctl configure`: logs in and saves the URL, CA file and tokens.
///
/// # Errors
/// When the CA cannot be read, login fails, or the config cannot be written.
pub async fn configure(
    env: &dyn EnvSource,
    url: &str,
    ca_file: PathBuf,
    username: &str,
    password: &str,
    namespace: &str,
) -> Result<Report, CtlError> {
    let ca = read_file(&ca_file)?;
    let client = Client::new(url, &ca, Credentials::None)?;
    let tokens = client.login(username, password).await?;
    let saved = Saved {
        url: url.to_owned(),
        ca_file: std::fs::canonicalize(&ca_file).unwrap_or(ca_file),
        namespace: namespace.to_owned(),
        access_token: tokens.access_token,
        expires_at: tokens.expires_at,
        refresh_token: tokens.refresh_token,
    };
    let path = config::config_path(env);
    config::save(&path, &saved)?;
    Ok(Report::ok(vec![format!(
        "configured {url} as {username} (saved to {})",
        path.display()
    )]))
}

/// A client from the saved config and environment, refreshing an expired access token. With a
/// cluster (`--cluster` / `CAIRN_CLUSTER`) its API requests go through the gateway's proxy to
/// that cluster; tokens are still refreshed at the gateway.
///
/// # Errors
/// When nothing is configured, the cluster name is not valid, or the token cannot be
/// refreshed.
pub async fn connect(env: &dyn EnvSource) -> Result<(Client, String), CtlError> {
    let effective = config::load(env)?;
    if let Some(cluster) = &effective.cluster {
        if let Some(problem) = cairn_api::validate::check_name(Kind::Cluster, cluster) {
            return Err(CtlError::Usage(format!("--cluster {cluster:?}: {problem}")));
        }
    }
    let aim = |client: Client| match &effective.cluster {
        Some(cluster) => client.via_cluster(cluster),
        None => client,
    };
    let ca = read_file(&effective.saved.ca_file)?;
    let namespace = effective.saved.namespace.clone();
    if let Some(key) = effective.api_key.clone() {
        return Ok((
            aim(Client::new(
                &effective.saved.url,
                &ca,
                Credentials::ApiKey(key),
            )?),
            namespace,
        ));
    }
    let mut saved = effective.saved.clone();
    if saved.access_token.is_empty() {
        return Err(ConfigError::NotConfigured.into());
    }
    let client = Client::new(&saved.url, &ca, Credentials::None)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    if saved.expires_at <= now + 10 {
        let tokens = client
            .refresh(&saved.access_token, &saved.refresh_token)
            .await?;
        saved.access_token = tokens.access_token;
        saved.expires_at = tokens.expires_at;
        saved.refresh_token = tokens.refresh_token;
        config::save(&effective.path, &saved)?;
    }
    Ok((
        aim(client.with_credentials(Credentials::Bearer(saved.access_token))),
        namespace,
    ))
}

fn read_file(path: &PathBuf) -> Result<String, CtlError> {
    std::fs::read_to_string(path).map_err(|err| CtlError::ReadFailed {
        path: path.clone(),
        reason: err.to_string(),
    })
}

fn kind_named(name: &str) -> Result<Kind, CtlError> {
    Kind::from_cli_name(name).map_err(|err| CtlError::Usage(err.to_string()))
}

/// Refuses a resource name that would change the request's path rather than name a resource
/// in it (`../users`, `a?b`); an event's name is `ENTITY/CHECK`, two such names.
fn path_name(kind: Kind, name: &str) -> Result<(), CtlError> {
    let plain = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && !part
                .chars()
                .any(|ch| ch.is_control() || ch.is_whitespace() || "/\\?#%".contains(ch))
    };
    let fine = match kind {
        Kind::Event => name
            .split_once('/')
            .is_some_and(|(entity, check)| plain(entity) && plain(check)),
        _ => plain(name),
    };
    if fine {
        Ok(())
    } else if kind == Kind::Event {
        Err(CtlError::Usage(format!(
            "event name {name:?} is not valid: an event is named ENTITY/CHECK"
        )))
    } else {
        Err(CtlError::Usage(format!(
            "{} name {name:?} is not valid: it may not be empty, \".\" or \"..\", nor hold \
             a space, a control character or any of / \\ ? # %",
            kind.cli_singular()
        )))
    }
}

/// One resource; `None` when there is none of that name. The two secrets providers share a
/// collection, so a provider is decoded as the type its answer names.
async fn get_one(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Option<Resource>, CtlError> {
    if !matches!(kind, Kind::EnvProvider | Kind::VaultProvider) {
        return Ok(client.get_resource(kind, namespace, name).await?);
    }
    let path = kind.item_path(namespace, name);
    let body = match client.get_json(&path).await {
        Ok(body) => body,
        Err(ClientError::Status {
            status: reqwest::StatusCode::NOT_FOUND,
            ..
        }) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let kind = match body
        .get("type")
        .and_then(Value::as_str)
        .map(|type_name| Kind::resolve(cairn_api::kind::SECRETS_V1, type_name))
    {
        Some(Ok(cairn_api::kind::Resolved::Modelled(named))) => named,
        _ => kind,
    };
    Resource::from_wire(kind, body)
        .map(Some)
        .map_err(|issue| unexpected(&path, &issue.to_string()))
}

/// Report lines of a text that ends with a newline, or none for an empty text.
pub(crate) fn text_lines(text: &str) -> Vec<String> {
    let text = text.trim_end();
    if text.is_empty() {
        Vec::new()
    } else {
        vec![text.to_owned()]
    }
}

fn pretty_json(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("a JSON value always serializes")
}

/// `cairnctl get TYPE [NAME]`, in sensuctl's formats: a table; `json`, the REST API's own
/// form (core/v2 unwrapped), an object for a name and an array for a list; `wrapped-json`, a
/// stream of `{type, api_version, metadata, spec}` objects; `yaml`, wrapped documents.
/// `wrapped-json` and `yaml` are what `create -f` takes back.
///
/// # Errors
/// Unknown type, or the backend's refusal (404 for a missing name).
pub async fn get(env: &dyn EnvSource, args: &GetArgs) -> Result<Report, CtlError> {
    let kind = kind_named(&args.resource_type)?;
    if let Some(name) = &args.name {
        path_name(kind, name)?;
    }
    if args.all_clusters {
        return get_all_clusters(env, kind, args).await;
    }
    let (client, default_namespace) = connect(env).await?;
    let namespace = args.namespace.clone().unwrap_or(default_namespace);
    let resources = match &args.name {
        Some(name) => match get_one(&client, kind, &namespace, name).await? {
            Some(resource) => vec![resource],
            None => {
                return Err(CtlError::Client(ClientError::Status {
                    status: reqwest::StatusCode::NOT_FOUND,
                    message: format!("{} {name} not found", kind.plural()),
                }))
            }
        },
        None => client.list_resources(kind, &namespace).await?,
    };
    let lines = match args.output {
        OutputFormat::Yaml => text_lines(&codec::to_yaml(&resources)),
        OutputFormat::WrappedJson => text_lines(&codec::to_json_stream(&resources)),
        OutputFormat::Json => {
            let value = match (&args.name, resources.as_slice()) {
                (Some(_), [resource]) => resource.to_wire(),
                _ => Value::Array(resources.iter().map(Resource::to_wire).collect()),
            };
            vec![pretty_json(&value)]
        }
        OutputFormat::Table if kind == Kind::Replicator => {
            return Ok(replicator_table(&client, &resources).await);
        }
        OutputFormat::Table => table::resources(kind, &resources),
    };
    Ok(Report::ok(lines))
}

/// The gateway's replicator statuses (`GET`, a JSON list).
const REPLICATOR_STATUS_PATH: &str = "/api/cairn/v1/replicators";

/// Longest LAST-ERROR cell; the whole message is in the status endpoint's answer.
const ERROR_CELL_LIMIT: usize = 120;

/// Characters kept from the start of a long LAST-ERROR message; the rest of the cell is its
/// end, which names the root cause (a message is a chain of causes, outermost first).
const ERROR_CELL_HEAD: usize = 40;

/// `cairnctl get replicators` as a table: each replicator's destination and type, and how it
/// is doing as the gateway reports it. A status that cannot be read is reported on stderr and
/// its columns show `unknown`.
async fn replicator_table(client: &Client, resources: &[Resource]) -> Report {
    let mut report = Report::ok(Vec::new());
    let statuses: std::collections::HashMap<String, Value> = match replicator_statuses(client).await
    {
        Ok(statuses) => statuses
            .into_iter()
            .filter_map(|status| {
                let name = status.get("name")?.as_str()?.to_owned();
                Some((name, status))
            })
            .collect(),
        Err(err) => {
            report
                .errors
                .push(format!("replicator status unavailable: {err}"));
            std::collections::HashMap::new()
        }
    };
    report.lines = replicator_rows(resources, &statuses);
    report
}

/// The lines of the replicator table, statuses by replicator name.
fn replicator_rows(
    resources: &[Resource],
    statuses: &std::collections::HashMap<String, Value>,
) -> Vec<String> {
    let mut rows = vec![[
        "NAME".to_owned(),
        "CLUSTER".to_owned(),
        "RESOURCE".to_owned(),
        "LAST-REVISION".to_owned(),
        "LAG".to_owned(),
        "STATE".to_owned(),
        "LAST-ERROR".to_owned(),
    ]];
    for resource in resources {
        let cairn_api::Spec::Replicator(spec) = &resource.spec else {
            continue;
        };
        let status = statuses.get(resource.name());
        let number = |field: &str| status.and_then(|status| status.get(field));
        let (last_revision, lag, state) = match status {
            Some(status) => {
                let pending = number("pending").and_then(Value::as_u64).unwrap_or(0);
                let seconds = number("lag_seconds").and_then(Value::as_f64).unwrap_or(0.0);
                (
                    number("last_revision")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        .to_string(),
                    if pending == 0 {
                        "0s".to_owned()
                    } else {
                        format!("{seconds:.1}s ({pending} pending)")
                    },
                    status
                        .get("state")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_owned(),
                )
            }
            None => ("-".to_owned(), "-".to_owned(), "unknown".to_owned()),
        };
        let last_error = status
            .and_then(|status| status.get("last_error"))
            .and_then(|error| error.get("message"))
            .and_then(Value::as_str)
            .map(error_cell)
            .unwrap_or_default();
        let resource_type = if spec.api_version == cairn_api::kind::CORE_V2 {
            spec.resource.clone()
        } else {
            format!("{}.{}", spec.api_version, spec.resource)
        };
        rows.push([
            resource.name().to_owned(),
            spec.cluster.clone(),
            resource_type,
            last_revision,
            lag,
            state,
            last_error,
        ]);
    }
    columns(&rows)
}

/// A message for the LAST-ERROR cell: whole when short, else its start and its end.
fn error_cell(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    if chars.len() <= ERROR_CELL_LIMIT {
        return message.to_owned();
    }
    let head: String = chars[..ERROR_CELL_HEAD].iter().collect();
    let tail_len = ERROR_CELL_LIMIT - ERROR_CELL_HEAD - 1;
    let tail: String = chars[chars.len() - tail_len..].iter().collect();
    format!("{head}…{tail}")
}

async fn replicator_statuses(client: &Client) -> Result<Vec<Value>, CtlError> {
    let response = client
        .send(Method::GET, REPLICATOR_STATUS_PATH, None)
        .await?;
    match response_json(REPLICATOR_STATUS_PATH, response).await? {
        Value::Array(statuses) => Ok(statuses),
        _ => Err(unexpected(
            REPLICATOR_STATUS_PATH,
            "the answer is not a list",
        )),
    }
}

/// `--all-clusters -o wrapped-json`: wrapped documents have no place for the cluster each
/// item comes from.
fn no_wrapped_all_clusters() -> CtlError {
    CtlError::Usage(
        "--all-clusters prints a table, json or yaml (the federated list, each item with its \
         cluster), not wrapped-json"
            .to_owned(),
    )
}

/// The gateway's federated lists, by kind.
const FEDERATION_PATH: &str = "/api/cairn/v1/federation";

/// `cairnctl get events|entities --all-clusters`: the gateway's federated view, a CLUSTER
/// column first. A cluster that refused or could not be reached is reported on stderr and
/// makes the command fail, after the rows of the others.
async fn get_all_clusters(
    env: &dyn EnvSource,
    kind: Kind,
    args: &GetArgs,
) -> Result<Report, CtlError> {
    if !matches!(kind, Kind::Event | Kind::Entity) {
        return Err(CtlError::Usage(format!(
            "--all-clusters lists events or entities, not {}",
            kind.plural()
        )));
    }
    if matches!(args.output, OutputFormat::WrappedJson) {
        return Err(no_wrapped_all_clusters());
    }
    let (client, default_namespace) = connect(env).await?;
    let namespace = args.namespace.clone().unwrap_or(default_namespace);
    if let Some(problem) = cairn_api::validate::check_name(Kind::Namespace, &namespace) {
        return Err(CtlError::Usage(format!("namespace: {problem}")));
    }
    let path = format!("{FEDERATION_PATH}/{}?namespace={namespace}", kind.plural());
    let response = client.send(Method::GET, &path, None).await?;
    let listed = response_json(&path, response).await?;
    let items = listed
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| unexpected(&path, "no items list in the answer"))?;
    let mut report = Report::ok(Vec::new());
    for failure in listed
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let cluster = failure
            .get("cluster")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let message = failure
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("failed");
        report
            .errors
            .push(format!("cluster {cluster} not listed: {message}"));
        report.outcome = Outcome::Failure;
    }
    match args.output {
        OutputFormat::Json => report.lines.push(pretty_json(&listed)),
        OutputFormat::WrappedJson => return Err(no_wrapped_all_clusters()),
        OutputFormat::Yaml => {
            let text = serde_yaml::to_string(&listed)
                .map_err(|err| unexpected(&path, &format!("cannot render YAML: {err}")))?;
            report.lines.push(text.trim_end().to_owned());
        }
        OutputFormat::Table => {
            let mut rows = vec![[vec!["CLUSTER".to_owned()], table::headings(kind)].concat()];
            for item in items {
                let cluster = item
                    .get("cluster")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let wire = item.get("resource").cloned().unwrap_or(Value::Null);
                match Resource::from_wire(kind, wire) {
                    Ok(resource) => {
                        rows.push([vec![cluster], table::row(kind, &resource)].concat());
                    }
                    Err(issue) => {
                        report.errors.push(format!(
                            "cluster {cluster}: an unreadable {}: {issue}",
                            kind.plural()
                        ));
                        report.outcome = Outcome::Failure;
                    }
                }
            }
            report.lines = columns(&rows);
        }
    }
    Ok(report)
}

/// `cairnctl delete TYPE NAME`.
///
/// # Errors
/// Unknown type, a missing resource, or the backend's refusal.
pub async fn delete(
    env: &dyn EnvSource,
    resource_type: &str,
    name: &str,
    namespace: Option<&str>,
) -> Result<Report, CtlError> {
    let kind = kind_named(resource_type)?;
    path_name(kind, name)?;
    let (client, default_namespace) = connect(env).await?;
    let namespace = namespace.map(str::to_owned).unwrap_or(default_namespace);
    if client.delete_resource(kind, &namespace, name).await? {
        Ok(Report::ok(vec![format!(
            "deleted {} {name}",
            kind.plural()
        )]))
    } else {
        Err(CtlError::Client(ClientError::Status {
            status: reqwest::StatusCode::NOT_FOUND,
            message: format!("{} {name} not found", kind.plural()),
        }))
    }
}

/// `cairnctl create -f FILE…`: validates every document first (nothing is sent if any is
/// invalid), then `PUT`s each; a failure of one is reported and the rest still applied.
///
/// # Errors
/// Only configuration errors; invalid input and per-resource failures are in the report.
pub async fn create(
    env: &dyn EnvSource,
    files: &[PathBuf],
    namespace: Option<&str>,
    allow_unsupported: bool,
) -> Result<Report, CtlError> {
    let mut manifests = codec::Manifests::default();
    for file in files {
        manifests.extend(codec::load_path(file));
    }
    let lint = crate::lint::report(&manifests, allow_unsupported);
    if lint.outcome != Outcome::Success {
        let mut errors = lint.lines;
        errors.push(format!("{}; nothing was applied", lint.summary));
        return Ok(Report {
            lines: Vec::new(),
            errors,
            outcome: Outcome::Failure,
        });
    }
    let (client, default_namespace) = connect(env).await?;
    let namespace = namespace.map(str::to_owned).unwrap_or(default_namespace);
    let mut resources: Vec<Resource> = manifests
        .resources
        .into_iter()
        .map(|loaded| loaded.resource)
        .collect();
    // Namespaces first, and so on: the apply order of the registry.
    resources.sort_by_key(|resource| resource.kind().apply_rank());
    let mut report = Report::ok(Vec::new());
    for mut resource in resources {
        if resource.kind().is_namespaced() && resource.metadata.namespace.is_empty() {
            resource.metadata.namespace = namespace.clone();
        }
        match client.put_resource(&resource).await {
            Ok(()) => report.lines.push(format!("created {}", resource.key())),
            Err(err) => {
                report
                    .errors
                    .push(format!("failed to create {}: {err}", resource.key()));
                report.outcome = Outcome::Failure;
            }
        }
    }
    Ok(report)
}

/// `cairnctl user …`.
///
/// # Errors
/// The backend's refusal.
pub async fn user(env: &dyn EnvSource, command: &UserCommand) -> Result<Report, CtlError> {
    let (client, _) = connect(env).await?;
    let path = |name: &str, rest: &str| format!("/api/core/v2/users/{name}{rest}");
    let line = match command {
        UserCommand::Create {
            name,
            password,
            groups,
        } => {
            let body = json!({"username": name, "password": password, "groups": groups});
            client
                .send(Method::POST, "/api/core/v2/users", Some(&body))
                .await?;
            format!("created user {name}")
        }
        UserCommand::AddGroup { name, group } => {
            client
                .send(Method::PUT, &path(name, &format!("/groups/{group}")), None)
                .await?;
            format!("added {name} to {group}")
        }
        UserCommand::RemoveGroup { name, group } => {
            client
                .send(
                    Method::DELETE,
                    &path(name, &format!("/groups/{group}")),
                    None,
                )
                .await?;
            format!("removed {name} from {group}")
        }
        UserCommand::Disable { name } => {
            client.send(Method::DELETE, &path(name, ""), None).await?;
            format!("disabled user {name}")
        }
        UserCommand::Reinstate { name } => {
            client
                .send(Method::PUT, &path(name, "/reinstate"), None)
                .await?;
            format!("reinstated user {name}")
        }
        UserCommand::ChangePassword {
            name,
            new_password,
            current_password,
        } => {
            // Sensu's two calls: `/password` with the current password (one's own), or an
            // administrator's `/reset_password` without it.
            match current_password {
                Some(current) => {
                    let body = json!({"username": name, "password": current, "password_new": new_password});
                    client
                        .send(Method::PUT, &path(name, "/password"), Some(&body))
                        .await?;
                    format!("changed the password of {name}")
                }
                None => {
                    let body = json!({"username": name, "password_new": new_password});
                    client
                        .send(Method::PUT, &path(name, "/reset_password"), Some(&body))
                        .await?;
                    format!("reset the password of {name}")
                }
            }
        }
        UserCommand::List => {
            let users = client.list_resources(Kind::User, "").await?;
            let mut lines = vec!["USERNAME  GROUPS  DISABLED".to_owned()];
            for resource in users {
                if let cairn_api::Spec::User(user) = resource.spec {
                    lines.push(format!(
                        "{}  {}  {}",
                        user.username,
                        user.groups.join(","),
                        user.disabled
                    ));
                }
            }
            return Ok(Report::ok(lines));
        }
    };
    Ok(Report::ok(vec![line]))
}

/// `cairnctl api-key …`.
///
/// # Errors
/// The backend's refusal.
pub async fn api_key(env: &dyn EnvSource, command: &ApiKeyCommand) -> Result<Report, CtlError> {
    let (client, _) = connect(env).await?;
    match command {
        ApiKeyCommand::Grant { username } => {
            let response = client
                .send(
                    Method::POST,
                    "/api/core/v2/apikeys",
                    Some(&json!({"username": username})),
                )
                .await?;
            let key = response
                .headers()
                .get("location")
                .and_then(|value| value.to_str().ok())
                .and_then(|location| location.rsplit('/').next())
                .map(str::to_owned)
                .ok_or_else(|| {
                    CtlError::Client(ClientError::UnexpectedResponse {
                        url: "/api/core/v2/apikeys".into(),
                        reason: "no Location header".into(),
                    })
                })?;
            Ok(Report::ok(vec![format!(
                "Created: /api/core/v2/apikeys/{key}"
            )]))
        }
        ApiKeyCommand::List => {
            let keys = client.list_resources(Kind::ApiKey, "").await?;
            let mut lines = vec!["NAME  USERNAME  CREATED AT".to_owned()];
            for resource in keys {
                if let cairn_api::Spec::ApiKey(key) = &resource.spec {
                    lines.push(format!(
                        "{}  {}  {}",
                        resource.name(),
                        key.username,
                        key.created_at
                    ));
                }
            }
            Ok(Report::ok(lines))
        }
        ApiKeyCommand::Revoke { key } => {
            client
                .send(Method::DELETE, &Kind::ApiKey.item_path("", key), None)
                .await?;
            Ok(Report::ok(vec![format!("revoked {key}")]))
        }
    }
}

/// The join token endpoint.
const JOIN_TOKENS_PATH: &str = "/api/cairn/v1/jointokens";
/// The registered clusters and their health (a federation gateway).
const CLUSTERS_PATH: &str = "/api/cairn/v1/clusters";

/// `cairnctl cluster list`: the registered clusters, probed by the gateway.
///
/// # Errors
/// The backend's refusal, or an answer that is not the list it promises.
pub async fn cluster(env: &dyn EnvSource, command: &ClusterCommand) -> Result<Report, CtlError> {
    let (client, _) = connect(env).await?;
    match command {
        ClusterCommand::List => {
            let response = client.send(Method::GET, CLUSTERS_PATH, None).await?;
            let listed = response_json(CLUSTERS_PATH, response).await?;
            let clusters = listed
                .as_array()
                .ok_or_else(|| unexpected(CLUSTERS_PATH, "the answer is not a list"))?;
            let mut rows = vec![[
                "NAME".to_owned(),
                "URL".to_owned(),
                "HEALTHY".to_owned(),
                "VERSION".to_owned(),
                "ERROR".to_owned(),
            ]];
            for cluster in clusters {
                let urls = cluster
                    .get("api_urls")
                    .and_then(Value::as_array)
                    .map(|urls| {
                        urls.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let version = cluster
                    .get("version")
                    .and_then(|version| {
                        version
                            .get("cairn_backend")
                            .or_else(|| version.get("sensu_backend"))
                    })
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let healthy = cluster
                    .get("healthy")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                rows.push([
                    cluster
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    urls,
                    healthy.to_string(),
                    version,
                    cluster
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ]);
            }
            Ok(Report::ok(columns(&rows)))
        }
    }
}

/// `cairnctl agent …`: join tokens and revocation.
///
/// # Errors
/// An invalid name, or the backend's refusal.
pub async fn agent(env: &dyn EnvSource, command: &AgentCommand) -> Result<Report, CtlError> {
    match command {
        AgentCommand::Token { command } => join_token(env, command).await,
        AgentCommand::Revoke { name, namespace } => {
            if let Some(problem) = cairn_api::validate::check_name(Kind::Entity, name) {
                return Err(CtlError::Usage(format!("agent name: {problem}")));
            }
            let (client, default_namespace) = connect(env).await?;
            let namespace = namespace.clone().unwrap_or(default_namespace);
            if let Some(problem) = cairn_api::validate::check_name(Kind::Namespace, &namespace) {
                return Err(CtlError::Usage(format!("namespace: {problem}")));
            }
            let path = format!("/api/cairn/v1/agents/{namespace}/{name}/revoke");
            let response = client.send(Method::POST, &path, Some(&json!({}))).await?;
            let body = response_json(&path, response).await?;
            let revoked_at = body.get("revoked_at").and_then(Value::as_i64).unwrap_or(0);
            Ok(Report::ok(vec![format!(
                "revoked agent {namespace}/{name}: its certificates issued up to {} are refused; \
                 re-install it with a new join token to enrol it again",
                format_unix_utc(revoked_at)
            )]))
        }
    }
}

async fn join_token(env: &dyn EnvSource, command: &TokenCommand) -> Result<Report, CtlError> {
    let (client, default_namespace) = connect(env).await?;
    match command {
        TokenCommand::Create {
            ttl,
            uses,
            subscriptions,
            namespace,
            replace,
            pin_subscriptions,
        } => {
            let namespace = namespace.clone().unwrap_or(default_namespace);
            let mut body = json!({
                "ttl_seconds": ttl,
                "uses": uses,
                "subscriptions": subscriptions,
                "namespace": namespace,
            });
            if let Some(name) = replace {
                body["replace"] = json!(name);
            }
            if *pin_subscriptions {
                body["pin_subscriptions"] = json!(true);
            }
            let response = client
                .send(Method::POST, JOIN_TOKENS_PATH, Some(&body))
                .await?;
            let created = response_json(JOIN_TOKENS_PATH, response).await?;
            let token = created
                .get("token")
                .and_then(Value::as_str)
                .ok_or_else(|| unexpected(JOIN_TOKENS_PATH, "no token in the answer"))?;
            // The token alone, so that scripts can capture it.
            Ok(Report::ok(vec![token.to_owned()]))
        }
        TokenCommand::List => {
            let response = client.send(Method::GET, JOIN_TOKENS_PATH, None).await?;
            let listed = response_json(JOIN_TOKENS_PATH, response).await?;
            let tokens = listed
                .as_array()
                .ok_or_else(|| unexpected(JOIN_TOKENS_PATH, "the answer is not a list"))?;
            let now = i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_secs())
                    .unwrap_or(0),
            )
            .unwrap_or(i64::MAX);
            let mut rows = vec![[
                "ID".to_owned(),
                "NAMESPACE".to_owned(),
                "USES LEFT".to_owned(),
                "EXPIRES".to_owned(),
                "SUBSCRIPTIONS".to_owned(),
            ]];
            for token in tokens {
                let text = |field: &str| {
                    token
                        .get(field)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let expires_at = token.get("expires_at").and_then(Value::as_i64).unwrap_or(0);
                let expires = if expires_at <= now {
                    format!("{} (expired)", format_unix_utc(expires_at))
                } else {
                    format_unix_utc(expires_at)
                };
                let mut subscriptions = token
                    .get("subscriptions")
                    .and_then(Value::as_array)
                    .map(|list| {
                        list.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                if token.get("pin_subscriptions").and_then(Value::as_bool) == Some(true) {
                    subscriptions.push_str(" (pinned)");
                }
                rows.push([
                    text("id"),
                    text("namespace"),
                    token
                        .get("uses_left")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        .to_string(),
                    expires,
                    subscriptions,
                ]);
            }
            Ok(Report::ok(columns(&rows)))
        }
        TokenCommand::Delete { id } => {
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            {
                return Err(CtlError::Usage(format!(
                    "join token id \"{id}\" is not valid: it is the alphanumeric part after cairn-join."
                )));
            }
            client
                .send(Method::DELETE, &format!("{JOIN_TOKENS_PATH}/{id}"), None)
                .await?;
            Ok(Report::ok(vec![format!("deleted join token {id}")]))
        }
    }
}

fn unexpected(path: &str, reason: &str) -> CtlError {
    CtlError::Client(ClientError::UnexpectedResponse {
        url: path.to_owned(),
        reason: reason.to_owned(),
    })
}

async fn response_json(path: &str, response: reqwest::Response) -> Result<Value, CtlError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|err| unexpected(path, &format!("cannot read the answer: {err}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|err| unexpected(path, &format!("the answer is not JSON: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicators_show_their_status() {
        let replicator = |name: &str, api_version: &str, resource: &str| {
            Resource::new(
                cairn_api::ObjectMeta::named("", name),
                cairn_api::Spec::Replicator(cairn_api::model::Replicator {
                    cluster: "alpha".into(),
                    api_version: api_version.into(),
                    resource: resource.into(),
                    ..cairn_api::model::Replicator::default()
                }),
            )
        };
        let resources = [
            replicator("checks", "core/v2", "CheckConfig"),
            replicator("secrets", "secrets/v1", "Secret"),
            replicator("new", "core/v2", "Role"),
        ];
        let statuses = [
            (
                "checks".to_owned(),
                json!({"name": "checks", "state": "ok", "last_revision": 42, "pending": 0,
                       "lag_seconds": 0.0, "last_error": null}),
            ),
            (
                "secrets".to_owned(),
                json!({"name": "secrets", "state": "backing_off", "last_revision": 7,
                       "pending": 3, "lag_seconds": 2.25,
                       "last_error": {"message": "x".repeat(200), "at": 1}}),
            ),
        ]
        .into_iter()
        .collect();
        let lines = replicator_rows(&resources, &statuses);
        let long_error = format!(
            "{}…{}",
            "x".repeat(ERROR_CELL_HEAD),
            "x".repeat(ERROR_CELL_LIMIT - ERROR_CELL_HEAD - 1)
        );
        assert_eq!(
            lines,
            [
                "NAME     CLUSTER  RESOURCE           LAST-REVISION  LAG               STATE        LAST-ERROR".to_owned(),
                "checks   alpha    CheckConfig        42             0s                ok".to_owned(),
                format!("secrets  alpha    secrets/v1.Secret  7              2.2s (3 pending)  backing_off  {long_error}"),
                "new      alpha    Role               -              -                 unknown".to_owned(),
            ]
        );
    }

    #[test]
    fn long_errors_keep_their_start_and_their_cause() {
        assert_eq!(error_cell("short"), "short");
        let message = format!(
            "cannot list the downstream's copies: {}: invalid peer certificate: UnknownIssuer",
            "x".repeat(200)
        );
        let cell = error_cell(&message);
        assert_eq!(cell.chars().count(), ERROR_CELL_LIMIT);
        assert!(
            cell.starts_with("cannot list the downstream's copies"),
            "{cell}"
        );
        assert!(
            cell.ends_with("invalid peer certificate: UnknownIssuer"),
            "{cell}"
        );
    }
}
