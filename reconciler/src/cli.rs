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
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
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
