//! The `cairnctl` command line, as clap parses it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Operate Cairn from Git: lint, diff and apply manifests, and manage the backend.
#[derive(Debug, Parser)]
#[command(name = "cairnctl", version, about)]
pub struct Opts {
    /// Aim every API request at this cluster registered on the configured (gateway) backend,
    /// through the gateway's proxy and with your own login, which the cluster's RBAC judges
    /// (default: CAIRN_CLUSTER). `configure` still logs in at the gateway.
    #[arg(long, global = true, value_name = "NAME")]
    pub cluster: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `cairnctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate manifest files and folders; report every problem with its file, line and field.
    Lint(LintArgs),
    /// Show what applying a source would change; exit 0 in sync, 2 drift found, 1 error.
    Diff(DiffArgs),
    /// Make the backend match a source: create and update in dependency order, prune owned
    /// resources the source no longer has (with --prune).
    Apply(ApplyArgs),
    /// Keep the backend in sync with a source: sync on every push (or change, or poll).
    Watch(WatchArgs),
    /// Show the last sync of a running `cairnctl watch`.
    Status(StatusArgs),
    /// Log in to a backend and save the connection (URL, CA file, tokens).
    Configure(ConfigureArgs),
    /// Show resources.
    Get(GetArgs),
    /// Delete a resource.
    Delete(DeleteArgs),
    /// Create or replace the resources in files, as `sensuctl create -f` does.
    Create(CreateArgs),
    /// Manage users.
    User {
        /// What to do.
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage API keys.
    ApiKey {
        /// What to do.
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Enrol agents (join tokens) and revoke them.
    Agent {
        /// What to do.
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Run a check at once, as `sensuctl check execute` does.
    Check {
        /// What to do.
        #[command(subcommand)]
        command: CheckCommand,
    },
    /// Change an entity's subscriptions and labels, as `sensuctl entity update` does.
    Entity {
        /// What to do.
        #[command(subcommand)]
        command: EntityCommand,
    },
    /// Act on events, as `sensuctl event` does.
    Event {
        /// What to do.
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Silence checks and subscriptions, as `sensuctl silenced` does.
    Silenced {
        /// What to do.
        #[command(subcommand)]
        command: SilencedCommand,
    },
    /// The clusters registered on a federation gateway.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Print a shell completion script, e.g. `source <(cairnctl completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The completion script of `cairnctl` for `shell`.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Opts as clap::CommandFactory>::command(),
        "cairnctl",
        &mut script,
    );
    script
}

/// `cairnctl cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the registered clusters with their health and version, each probed by the gateway.
    List,
}

/// Arguments of `cairnctl lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Files or folders to check (`-` reads standard input). Folders are read recursively.
    #[arg(required_unless_present = "git_dir", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Check a commit of this repository instead of files (for a `pre-receive` hook: `.`).
    #[arg(long, value_name = "DIR", requires = "git_ref")]
    pub git_dir: Option<PathBuf>,
    /// The commit or ref to check with --git-dir (a hook's new revision).
    #[arg(long = "ref", value_name = "REV", requires = "git_dir")]
    pub git_ref: Option<String>,
    /// Only check below this folder of the commit.
    #[arg(long, value_name = "SUBDIR")]
    pub path: Option<String>,
    /// Skip documents of Sensu types Cairn does not model, with a warning, instead of failing.
    #[arg(long)]
    pub allow_unsupported: bool,
}

/// Arguments of `cairnctl configure`.
#[derive(Debug, clap::Args)]
pub struct ConfigureArgs {
    /// Backend API URL, e.g. https://cairn.example.com:8080.
    #[arg(long, env = "CAIRN_URL")]
    pub url: String,
    /// The cluster CA certificate (tls/ca.pem in the backend's data dir).
    #[arg(long, env = "CAIRN_CA_FILE")]
    pub ca_file: PathBuf,
    /// User name.
    #[arg(long, env = "CAIRN_USERNAME")]
    pub username: String,
    /// Password (prefer the environment variable CAIRN_PASSWORD).
    #[arg(long, env = "CAIRN_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// Default namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

/// Output formats of `get`, as sensuctl's `--format` names them.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns (sensuctl's `tabular`).
    #[value(alias = "tabular")]
    Table,
    /// The REST API's own JSON: for core/v2 the unwrapped form (spec fields and `metadata`);
    /// an object for one name, an array for a list.
    Json,
    /// A stream of wrapped `{type, api_version, metadata, spec}` objects that `create -f`
    /// takes back.
    WrappedJson,
    /// Multi-document YAML, wrapped, that `create -f` takes back.
    Yaml,
}

/// Arguments of `cairnctl get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The type, as sensuctl names it: `check`, `checks`, `CheckConfig`, `check_config` or
    /// `core/v2.CheckConfig` (and so for every type: `entity`, `role-binding`, `silenced`,
    /// `secrets/v1.Secret`, …).
    pub resource_type: String,
    /// One resource's name (an event's is ENTITY/CHECK); all of them when left out.
    pub name: Option<String>,
    /// Namespace (default: the configured one).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Output format (`--format`, as with sensuctl).
    #[arg(short, long, visible_alias = "format", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// List events or entities of the gateway and every cluster registered on it, each row
    /// marked with its cluster (every cluster's RBAC judges your own login).
    #[arg(long, conflicts_with = "name")]
    pub all_clusters: bool,
}

/// Arguments of `cairnctl delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The type, as for `get`.
    pub resource_type: String,
    /// The resource's name.
    pub name: String,
    /// Namespace (default: the configured one).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Arguments of `cairnctl create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Files or folders of manifests.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for documents that name none (default: the configured one).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Skip documents of Sensu types Cairn does not model, with a warning.
    #[arg(long)]
    pub allow_unsupported: bool,
}

/// `cairnctl user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        /// User name.
        name: String,
        /// Password (at least 8 characters).
        #[arg(long, env = "CAIRN_USER_PASSWORD", hide_env_values = true)]
        password: String,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// Add a user to a group.
    AddGroup {
        /// User name.
        name: String,
        /// Group.
        group: String,
    },
    /// Remove a user from a group.
    RemoveGroup {
        /// User name.
        name: String,
        /// Group.
        group: String,
    },
    /// Disable a user: their tokens and API keys stop working at once.
    Disable {
        /// User name.
        name: String,
    },
    /// Enable a disabled user again.
    Reinstate {
        /// User name.
        name: String,
    },
    /// Change a user's password.
    ChangePassword {
        /// User name.
        name: String,
        /// The new password.
        #[arg(long, env = "CAIRN_NEW_PASSWORD", hide_env_values = true)]
        new_password: String,
        /// The current password: changes the password as its owner (`PUT /users/NAME/password`).
        /// Without it, an administrator resets it (`PUT /users/NAME/reset_password`).
        #[arg(long, env = "CAIRN_CURRENT_PASSWORD", hide_env_values = true)]
        current_password: Option<String>,
    },
    /// List users.
    List,
}

/// `cairnctl api-key` subcommands.
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key for a user and print it.
    Grant {
        /// The user the key acts as.
        username: String,
    },
    /// List API keys.
    List,
    /// Revoke an API key.
    Revoke {
        /// The key.
        key: String,
    },
}

/// `cairnctl agent` subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Manage join tokens, with which `cairn-agent install` enrols a host.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Revoke an agent's certificates: its session ends at once, and it cannot connect again
    /// until it is re-installed with a new join token.
    Revoke {
        /// The agent's entity name.
        name: String,
        /// Namespace (default: the configured one).
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

/// `cairnctl agent token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it (alone, on the first line of stdout).
    Create {
        /// How long the token works: seconds, or a duration like 30m, 1h, 2d, 1h30m
        /// (1 minute to 30 days).
        #[arg(long, default_value = "1h", value_parser = parse_ttl, value_name = "DURATION")]
        ttl: u64,
        /// How many agents may enrol with it (1 to 10000).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        uses: u32,
        /// Subscriptions granted to the agents, comma-separated.
        #[arg(long, value_delimiter = ',')]
        subscriptions: Vec<String>,
        /// The namespace the agents join (default: the configured one).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Allow enrolling the entity NAME although it has a live certificate; that
        /// certificate is revoked when the new one is issued.
        #[arg(long, value_name = "NAME")]
        replace: Option<String>,
        /// The agents may claim only --subscriptions (and entity:<name>); a hello claiming
        /// others is refused. The pin survives renewals and restarts.
        #[arg(long)]
        pin_subscriptions: bool,
    },
    /// List join tokens (never their secrets).
    List,
    /// Delete a join token so that it cannot be used any more.
    Delete {
        /// The token's id (the part after `cairn-join.`).
        id: String,
    },
}

/// `cairnctl event` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Resolve an event by hand: status 0, output "Resolved manually by cairnctl", now.
    Resolve {
        /// The event's entity.
        entity: String,
        /// The event's check.
        check: String,
        /// Namespace (default: the configured one).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Dry-run an event through the pipeline (beyond sensuctl): which filters pass, what the
    /// mutator makes and what the handler would get. Nothing is stored and no handler runs;
    /// mutators do run.
    Test {
        /// The event, as JSON or YAML (bare or wrapped `{type: Event, spec}`).
        #[arg(long = "event", value_name = "FILE")]
        event: PathBuf,
        /// Try it against this handler only (its filters and mutator).
        #[arg(long, conflicts_with = "pipeline")]
        handler: Option<String>,
        /// Try it against this `core/v2 Pipeline` only.
        #[arg(long)]
        pipeline: Option<String>,
        /// Namespace (default: the configured one).
        #[arg(short, long)]
        namespace: Option<String>,
        /// `json` prints the backend's report as it is.
        #[arg(short, long, visible_alias = "format", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

/// `cairnctl check` subcommands.
#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Ask the agents of the check's subscriptions (or of --subscriptions) to run it now.
    Execute {
        /// The check.
        name: String,
        /// Subscriptions to run it on instead of the check's own, comma-separated
        /// (`entity:NAME` for one agent).
        #[arg(long, value_delimiter = ',')]
        subscriptions: Vec<String>,
        /// Why, for the backend's log.
        #[arg(long, default_value = "")]
        reason: String,
        /// Namespace (default: the configured one).
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

/// `cairnctl entity` subcommands.
#[derive(Debug, Subcommand)]
pub enum EntityCommand {
    /// Add or remove subscriptions and labels of an entity (the scheduler uses them at once,
    /// unless the agent manages its entity itself).
    Update(EntityUpdateArgs),
}

/// Arguments of `cairnctl entity update`.
#[derive(Debug, clap::Args)]
pub struct EntityUpdateArgs {
    /// The entity.
    pub name: String,
    /// A subscription to add (repeat the flag for more).
    #[arg(long = "add-subscription", value_name = "SUBSCRIPTION")]
    pub add_subscriptions: Vec<String>,
    /// A subscription to remove.
    #[arg(long = "remove-subscription", value_name = "SUBSCRIPTION")]
    pub remove_subscriptions: Vec<String>,
    /// A label to set, `KEY=VALUE`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// A label to remove.
    #[arg(long = "remove-label", value_name = "KEY")]
    pub remove_labels: Vec<String>,
    /// Namespace (default: the configured one).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// `cairnctl silenced` subcommands.
#[derive(Debug, Subcommand)]
pub enum SilencedCommand {
    /// Create a silenced entry, named `SUBSCRIPTION:CHECK` (`*` for the one left out).
    Create(SilencedCreateArgs),
    /// List silenced entries.
    List(SilencedListArgs),
    /// Delete a silenced entry, by name or by --subscription and --check.
    Delete(SilencedDeleteArgs),
}

/// Arguments of `cairnctl silenced create`.
#[derive(Debug, clap::Args)]
pub struct SilencedCreateArgs {
    /// The subscription to silence (e.g. `entity:web-01`); at least one of it and --check.
    #[arg(short, long)]
    pub subscription: Option<String>,
    /// The check to silence.
    #[arg(short, long)]
    pub check: Option<String>,
    /// When it starts: RFC 3339 (`2026-12-07T22:00:00Z`) or unix seconds (default: now).
    #[arg(short, long, value_parser = parse_begin, value_name = "TIME")]
    pub begin: Option<i64>,
    /// Seconds until it expires; -1 never.
    #[arg(short, long, default_value_t = -1, allow_negative_numbers = true,
          value_parser = parse_expire, value_name = "SECONDS")]
    pub expire: i64,
    /// Remove it when the check resolves.
    #[arg(short = 'x', long)]
    pub expire_on_resolve: bool,
    /// Why.
    #[arg(short, long)]
    pub reason: Option<String>,
    /// Namespace (default: the configured one).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Arguments of `cairnctl silenced list`.
#[derive(Debug, clap::Args)]
pub struct SilencedListArgs {
    /// Namespace (default: the configured one).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// List the entries of every namespace.
    #[arg(long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Only entries of this subscription.
    #[arg(short, long)]
    pub subscription: Option<String>,
    /// Only entries of this check.
    #[arg(short, long)]
    pub check: Option<String>,
    /// Output format (`--format`, as with sensuctl).
    #[arg(short, long, visible_alias = "format", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `cairnctl silenced delete`.
#[derive(Debug, clap::Args)]
pub struct SilencedDeleteArgs {
    /// The entry's name (`SUBSCRIPTION:CHECK`, e.g. `linux:*`).
    #[arg(required_unless_present_any = ["subscription", "check"],
          conflicts_with_all = ["subscription", "check"])]
    pub name: Option<String>,
    /// Or the entry's subscription.
    #[arg(short, long)]
    pub subscription: Option<String>,
    /// And/or its check.
    #[arg(short, long)]
    pub check: Option<String>,
    /// Namespace (default: the configured one).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// Parses `--begin`: unix seconds, or an RFC 3339 time (`2026-12-07T22:00:00Z`,
/// `2026-12-07T23:00:00+01:00`, fractions of a second ignored), as unix seconds.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_begin(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        if seconds < 0 {
            return Err(format!("invalid begin \"{text}\": a time before 1970"));
        }
        return Ok(seconds);
    }
    rfc3339_seconds(text).ok_or_else(|| {
        format!("invalid begin \"{text}\": use RFC 3339 (2026-12-07T22:00:00Z) or unix seconds")
    })
}

fn rfc3339_seconds(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|byte| byte.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let zone = rest.get(1..)?;
            let (zone_hour, zone_minute) = zone.split_once(':')?;
            if zone_hour.len() != 2 || zone_minute.len() != 2 {
                return None;
            }
            let zone_hour: i64 = zone_hour.parse().ok()?;
            let zone_minute: i64 = zone_minute.parse().ok()?;
            if zone_hour > 23 || zone_minute > 59 {
                return None;
            }
            sign * (zone_hour * 3_600 + zone_minute * 60)
        }
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[usize::try_from(month - 1).ok()?]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Howard Hinnant's days-from-civil.
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset;
    (seconds >= 0).then_some(seconds)
}

/// Parses `--expire`: -1 (never) or a positive number of seconds.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_expire(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(-1) => Ok(-1),
        Ok(seconds) if seconds > 0 => Ok(seconds),
        _ => Err(format!(
            "invalid expire \"{text}\": use -1 (never) or a positive number of seconds"
        )),
    }
}

/// Parses a token lifetime: a number of seconds, or numbers with the units `s`, `m`, `h`, `d`
/// (`90`, `90s`, `30m`, `1h`, `1h30m`, `2d`), as seconds.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("a duration is required, e.g. 30m, 1h or 3600".to_owned());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for character in text.chars() {
        if character.is_ascii_digit() {
            digits.push(character);
            continue;
        }
        let unit: u64 = match character {
            's' => 1,
            'm' => 60,
            'h' => 60 * 60,
            'd' => 24 * 60 * 60,
            other => {
                return Err(format!(
                    "invalid duration \"{text}\": unknown unit '{other}' (use s, m, h or d)"
                ))
            }
        };
        let amount: u64 = digits.parse().map_err(|_| {
            format!("invalid duration \"{text}\": a number must come before '{character}'")
        })?;
        digits.clear();
        total = amount
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("invalid duration \"{text}\": too long"))?;
    }
    if !digits.is_empty() {
        return Err(format!(
            "invalid duration \"{text}\": the number {digits} has no unit (use s, m, h or d)"
        ));
    }
    Ok(total)
}

/// Where manifests come from, shared by `diff`, `apply` and `watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// A folder of manifests (default: the current folder, unless --git is given).
    #[arg(value_name = "FOLDER", conflicts_with = "git")]
    pub folder: Option<PathBuf>,
    /// A Git repository: a local path (bare or not) or a file://, https:// or ssh:// URL.
    /// https takes a token from CAIRN_GIT_TOKEN; ssh uses the SSH agent or CAIRN_GIT_SSH_KEY.
    #[arg(long, value_name = "REPO")]
    pub git: Option<String>,
    /// The branch, tag or commit to read from --git (default: HEAD).
    #[arg(long = "ref", value_name = "REF", requires = "git")]
    pub reference: Option<String>,
    /// Only read below this folder of the source.
    #[arg(long, value_name = "SUBDIR")]
    pub path: Option<String>,
    /// Where remote repositories are fetched to (default: the user's cache folder).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Namespace for namespaced documents that name none and are not under namespaces/<ns>/
    /// (default: the configured one).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Skip documents of Sensu types Cairn does not model, with a warning.
    #[arg(long)]
    pub allow_unsupported: bool,
    /// The owner written to `cairn.io/managed-by`; prune only touches this owner's resources.
    #[arg(long, default_value = "cairnctl")]
    pub owner: String,
}

/// Output formats of `diff`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DiffFormat {
    /// Unified YAML diffs and a summary line.
    Text,
    /// One JSON document for machines.
    Json,
}

/// Arguments of `cairnctl diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The source.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = DiffFormat::Text)]
    pub output: DiffFormat,
    /// Also list unchanged resources.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Prune options, shared by `apply` and `watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneArgs {
    /// Delete resources of this owner that the source no longer has.
    #[arg(long)]
    pub prune: bool,
    /// Refuse to prune more than this percentage of the owner's resources.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_prune_percent: u8,
    /// Prune even when the guard refuses (all, or more than --max-prune-percent).
    #[arg(long)]
    pub force_prune: bool,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

/// Arguments of `cairnctl apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The source.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Prune options.
    #[command(flatten)]
    pub prune: PruneArgs,
    /// Show the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `cairnctl watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The source.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Prune options.
    #[command(flatten)]
    pub prune: PruneArgs,
    /// Seconds between polls of a remote repository (local sources are watched for changes).
    #[arg(long, default_value_t = 60)]
    pub interval: u64,
    /// Re-apply every this many seconds even without a change, repairing out-of-band edits.
    #[arg(long, value_name = "SECONDS")]
    pub self_heal: Option<u64>,
    /// Listen for push webhooks (and serve /status) on this address, e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR")]
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// The webhook's shared secret (GitHub's X-Hub-Signature-256, HMAC-SHA256).
    #[arg(long, value_name = "FILE", requires = "webhook_listen")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Where the last sync's record is written for `cairnctl status`.
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// Milliseconds to wait for a burst of changes to settle before syncing.
    #[arg(long, default_value_t = 200)]
    pub debounce_ms: u64,
    /// Sync once and exit (for cron jobs and tests of the watcher's sync path).
    #[arg(long, hide = true)]
    pub once: bool,
}

/// Arguments of `cairnctl status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The watcher's status file (its --status-file).
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// Or its /status URL (http://ADDR/status of --webhook-listen).
    #[arg(long, value_name = "URL", conflicts_with = "status_file")]
    pub url: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begins_parse_as_unix_seconds() {
        assert_eq!(parse_begin("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_begin("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(
            parse_begin("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000)
        );
        assert_eq!(parse_begin("2023-11-14T21:13:20-01:00"), Ok(1_700_000_000));
        assert_eq!(parse_begin("2000-02-29T00:00:00Z"), Ok(951_782_400));
        assert_eq!(parse_begin("1970-01-01T00:00:00Z"), Ok(0));
        for bad in [
            "",
            "-5",
            "tomorrow",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20+1:00",
            "2023-11-14T22:13:20.Z",
            "1969-12-31T23:59:59Z",
        ] {
            let err = parse_begin(bad).unwrap_err();
            assert!(
                err.contains("invalid begin") && err.contains("RFC 3339") || err.contains("1970"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn expiries_are_never_or_positive() {
        assert_eq!(parse_expire("-1"), Ok(-1));
        assert_eq!(parse_expire("3600"), Ok(3600));
        for bad in ["0", "-2", "1h", ""] {
            assert!(
                parse_expire(bad).unwrap_err().contains("-1 (never)"),
                "{bad}"
            );
        }
    }

    #[test]
    fn silenced_flags_parse_as_sensuctl_spells_them() {
        let opts = Opts::try_parse_from([
            "cairnctl",
            "silenced",
            "create",
            "-s",
            "linux",
            "-c",
            "disk",
            "-b",
            "2023-11-14T22:13:20Z",
            "-e",
            "-1",
            "-x",
            "-r",
            "maintenance",
            "-n",
            "ops",
        ])
        .unwrap();
        let Command::Silenced {
            command: SilencedCommand::Create(args),
        } = opts.command
        else {
            panic!("not silenced create: {opts:?}");
        };
        assert_eq!(args.subscription.as_deref(), Some("linux"));
        assert_eq!(args.check.as_deref(), Some("disk"));
        assert_eq!(args.begin, Some(1_700_000_000));
        assert_eq!(args.expire, -1);
        assert!(args.expire_on_resolve);
        assert_eq!(args.reason.as_deref(), Some("maintenance"));
        assert_eq!(args.namespace.as_deref(), Some("ops"));
        let defaults =
            Opts::try_parse_from(["cairnctl", "silenced", "create", "-c", "disk"]).unwrap();
        let Command::Silenced {
            command: SilencedCommand::Create(args),
        } = defaults.command
        else {
            panic!("not silenced create");
        };
        assert_eq!(
            (args.begin, args.expire, args.expire_on_resolve),
            (None, -1, false)
        );
        // delete takes a name or the parts, not both, and not neither.
        assert!(Opts::try_parse_from(["cairnctl", "silenced", "delete", "linux:*"]).is_ok());
        assert!(Opts::try_parse_from(["cairnctl", "silenced", "delete", "-s", "linux"]).is_ok());
        assert!(Opts::try_parse_from(["cairnctl", "silenced", "delete"]).is_err());
        assert!(
            Opts::try_parse_from(["cairnctl", "silenced", "delete", "a:b", "-c", "b"]).is_err()
        );
        assert!(Opts::try_parse_from([
            "cairnctl",
            "silenced",
            "list",
            "-n",
            "a",
            "--all-namespaces"
        ])
        .is_err());
        assert!(Opts::try_parse_from(["cairnctl", "event", "resolve", "web-01", "disk"]).is_ok());
        assert!(Opts::try_parse_from(["cairnctl", "event", "resolve", "web-01"]).is_err());
    }

    #[test]
    fn ttls_parse_as_seconds() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("3600s"), Ok(3600));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("1h30m"), Ok(5400));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert!(parse_ttl("").is_err());
        assert!(parse_ttl("1w").unwrap_err().contains("unknown unit 'w'"));
        assert!(parse_ttl("h")
            .unwrap_err()
            .contains("a number must come before"));
        assert!(parse_ttl("1h30").unwrap_err().contains("has no unit"));
        assert!(parse_ttl("99999999999999999999d").is_err());
    }
}
