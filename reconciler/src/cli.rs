//! The `cairnctl` command line, as clap parses it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Operate Cairn from Git: lint, diff and apply manifests, and manage the backend.
#[derive(Debug, Parser)]
#[command(name = "cairnctl", version, about)]
pub struct Opts {
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

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// Multi-document YAML that `create -f` takes back.
    Yaml,
    /// A stream of JSON objects that `create -f` takes back.
    Json,
}

/// Arguments of `cairnctl get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The type: a plural (`checks`), a type name (`CheckConfig`) or `core/v2.CheckConfig`.
    pub resource_type: String,
    /// One resource's name; all of them when left out.
    pub name: Option<String>,
    /// Namespace (default: the configured one).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
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
        /// The current password (required when changing your own).
        #[arg(long)]
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
