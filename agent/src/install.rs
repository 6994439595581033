//! `cairn-agent install`: enrols the host with a join token.
//!
//! The key is made here and never leaves the host; the backend gets a CSR over HTTPS pinned to
//! the CA fingerprint in the token, and answers with the client certificate and the cluster CA.
//! Then the key (0600 from the moment it exists), the certificates, `agent.yaml` and the
//! systemd unit are written. The agent URLs in `agent.yaml` are those given with `--agent-url`,
//! else those the answer names (taken only from this pinned answer, checked and bounded), else,
//! from a backend that names none, a guess: the backend URL's host on port 8081. Nothing is written before the backend has answered, and the
//! token's secret is never printed or logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use cairn_api::agent::{
    BootstrapRequest, BootstrapResponse, JoinToken, JoinTokenError, BOOTSTRAP_PATH, MAX_AGENT_URLS,
};
use cairn_api::validate::check_name;
use cairn_api::Kind;

use crate::certs::{self, CertError, CertInfo};
use crate::config::{
    self, AgentConfig, CA_FILE_NAME, CERT_FILE_NAME, CONFIG_FILE_NAME, DEFAULT_AGENT_PORT,
    DEFAULT_NAMESPACE, KEY_FILE_NAME, QUEUE_DIR_NAME,
};
use crate::fsutil::{self, PRIVATE_MODE, PUBLIC_MODE};
use crate::pin::{PinFailure, PinnedCaVerifier};

/// How long the bootstrap request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the backend may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `install` was asked to do.
#[derive(Clone)]
pub struct InstallOptions {
    /// The backend's REST API, `https://host:8080`.
    pub backend_url: String,
    /// The join token (secret).
    pub token: String,
    /// The entity name; the host name when `None`.
    pub name: Option<String>,
    /// Subscriptions, added to those the token grants.
    pub subscriptions: Vec<String>,
    /// The agent WebSocket URLs; when empty, those the backend's answer names, else
    /// `wss://<backend host>:8081`.
    pub agent_urls: Vec<String>,
    /// Where the configuration, key and certificates go.
    pub config_dir: PathBuf,
    /// Where the systemd unit goes; printed when `None`.
    pub systemd_unit: Option<PathBuf>,
    /// Replace an existing installation.
    pub force: bool,
}

impl fmt::Debug for InstallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallOptions")
            .field("backend_url", &self.backend_url)
            .field("token", &"*****")
            .field("name", &self.name)
            .field("subscriptions", &self.subscriptions)
            .field("agent_urls", &self.agent_urls)
            .field("config_dir", &self.config_dir)
            .field("systemd_unit", &self.systemd_unit)
            .field("force", &self.force)
            .finish()
    }
}

/// What `install` did.
#[derive(Debug, Clone)]
pub struct InstallReport {
    /// The configuration file written.
    pub config_file: PathBuf,
    /// The entity name (the certificate's CN).
    pub name: String,
    /// The entity's namespace.
    pub namespace: String,
    /// The subscriptions configured.
    pub subscriptions: Vec<String>,
    /// The agent URLs configured.
    pub agent_urls: Vec<String>,
    /// Where they came from.
    pub agent_urls_from: AgentUrlSource,
    /// When the certificate expires, unix seconds.
    pub cert_not_after: i64,
    /// Where the unit was written, if it was.
    pub unit_file: Option<PathBuf>,
    /// The unit's text.
    pub unit: String,
}

/// Where the agent URLs of an installation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentUrlSource {
    /// `--agent-url`.
    Given,
    /// The backend's bootstrap answer.
    Backend,
    /// Guessed from the backend URL: the backend's answer named none.
    Guessed,
}

/// Why `install` failed. No variant carries the token's secret.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The token does not parse.
    #[error(transparent)]
    Token(#[from] JoinTokenError),
    /// An option is unusable.
    #[error("{0}")]
    Usage(String),
    /// The host is already enrolled.
    #[error("{} already exists: this host is already installed (pass --force to replace it)", path.display())]
    AlreadyInstalled {
        /// The existing file.
        path: PathBuf,
    },
    /// The key or CSR could not be made.
    #[error("cannot make the agent's key: {0}")]
    Key(CertError),
    /// The backend's CA is not the one the token pins.
    #[error("the backend's CA does not match the join token ({0})")]
    CaMismatch(String),
    /// The backend's certificate is from the pinned CA but not acceptable (host name, dates).
    #[error("the backend's certificate is not acceptable: {0}")]
    ServerCertificate(String),
    /// The backend could not be reached.
    #[error("cannot reach the backend at {url}: {cause}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        cause: String,
    },
    /// The backend refused the token (401).
    #[error("the backend refused the join token: {0}")]
    Refused(String),
    /// The backend answered with another error.
    #[error("the backend answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The backend's message.
        message: String,
    },
    /// The backend's answer is not what the protocol promises.
    #[error("unexpected answer from the backend: {0}")]
    UnexpectedResponse(String),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

// === impl InstallError ===

impl InstallError {
    /// Whether the command line was at fault (exit 64) rather than the environment (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, InstallError::Token(_) | InstallError::Usage(_))
    }
}

/// The files of an installation in `dir`.
#[derive(Debug, Clone)]
struct Layout {
    dir: PathBuf,
    config: PathBuf,
    key: PathBuf,
    cert: PathBuf,
    ca: PathBuf,
    queue: PathBuf,
}

impl Layout {
    fn new(dir: PathBuf) -> Layout {
        Layout {
            config: dir.join(CONFIG_FILE_NAME),
            key: dir.join(KEY_FILE_NAME),
            cert: dir.join(CERT_FILE_NAME),
            ca: dir.join(CA_FILE_NAME),
            queue: dir.join(QUEUE_DIR_NAME),
            dir,
        }
    }
}

/// Enrols the host.
///
/// # Errors
///
/// [`InstallError`]; nothing is written unless the backend issued a certificate.
pub async fn install(options: &InstallOptions) -> Result<InstallReport, InstallError> {
    let token = JoinToken::parse(&options.token)?;
    let api_url = config::parse_api_url(&options.backend_url)
        .map_err(|message| InstallError::Usage(format!("--backend-url: {message}")))?;
    let given_urls = given_agent_urls(&options.agent_urls)?;
    let name = match &options.name {
        Some(name) => name.clone(),
        None => hostname::get()
            .map_err(|err| {
                InstallError::Usage(format!("cannot read the host name ({err}); pass --name"))
            })?
            .to_string_lossy()
            .into_owned(),
    };
    if let Some(message) = check_name(Kind::Entity, &name) {
        return Err(InstallError::Usage(format!(
            "the entity name {name:?} is not valid: {message} (pass --name)"
        )));
    }
    for subscription in &options.subscriptions {
        if let Some(message) = config::check_subscription(subscription) {
            return Err(InstallError::Usage(format!(
                "--subscriptions: {subscription:?}: {message}"
            )));
        }
    }
    let dir = std::path::absolute(&options.config_dir).map_err(|err| {
        InstallError::Usage(format!(
            "--config-dir {}: {err}",
            options.config_dir.display()
        ))
    })?;
    let layout = Layout::new(dir);
    let unit_file = match &options.systemd_unit {
        Some(path) => Some(std::path::absolute(path).map_err(|err| {
            InstallError::Usage(format!("--systemd-unit {}: {err}", path.display()))
        })?),
        None => None,
    };
    if !options.force {
        let existing = [&layout.config, &layout.key, &layout.cert]
            .into_iter()
            .chain(unit_file.as_ref())
            .find(|path| path.exists());
        if let Some(path) = existing {
            return Err(InstallError::AlreadyInstalled { path: path.clone() });
        }
    }

    let key = certs::generate_key().map_err(InstallError::Key)?;
    let csr_pem = certs::csr_pem(&key, &name).map_err(InstallError::Key)?;
    let request = BootstrapRequest {
        token: options.token.trim().to_owned(),
        name: name.clone(),
        csr_pem,
    };
    let response = bootstrap(&api_url, &token, &request).await?;

    let issued =
        certs::check_issued(&response.cert_pem, &key, &name, certs::now_unix()).map_err(|err| {
            InstallError::UnexpectedResponse(format!("the issued certificate is unusable: {err}"))
        })?;
    let ca = CertInfo::from_pem(&response.ca_pem).map_err(|err| {
        InstallError::UnexpectedResponse(format!("the cluster CA in the answer: {err}"))
    })?;
    if ca.fingerprint != token.ca_fingerprint {
        return Err(InstallError::CaMismatch(format!(
            "the answer's cluster CA has fingerprint {}, the token pins {}",
            ca.fingerprint, token.ca_fingerprint
        )));
    }

    let namespace = if response.namespace.is_empty() {
        DEFAULT_NAMESPACE.to_owned()
    } else {
        response.namespace.clone()
    };
    let mut subscriptions = response.subscriptions.clone();
    for subscription in &options.subscriptions {
        if !subscriptions.contains(subscription) {
            subscriptions.push(subscription.clone());
        }
    }
    let (agent_urls, agent_urls_from) = match given_urls {
        Some(urls) => (urls, AgentUrlSource::Given),
        None => match answer_agent_urls(&response.agent_urls)? {
            Some(urls) => (urls, AgentUrlSource::Backend),
            None => (guessed_agent_urls(&api_url)?, AgentUrlSource::Guessed),
        },
    };
    let mut config = AgentConfig::new(&name, agent_urls.clone());
    config.namespace.clone_from(&namespace);
    config.subscriptions.clone_from(&subscriptions);
    config.api_url = api_url.as_str().trim_end_matches('/').to_owned();
    config.key_file.clone_from(&layout.key);
    config.cert_file.clone_from(&layout.cert);
    config.ca_file.clone_from(&layout.ca);
    config.queue_dir.clone_from(&layout.queue);
    if let Some(problem) = config.validate().into_iter().next() {
        return Err(InstallError::UnexpectedResponse(format!(
            "the resulting configuration is invalid: {problem}"
        )));
    }

    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/cairn-agent"));
    let unit = systemd_unit(&exe, &layout.config, &[&layout.dir]);

    let write = |path: &Path, contents: &[u8], mode: u32| {
        fsutil::write_atomic(path, contents, mode).map_err(|source| InstallError::Write {
            path: path.to_owned(),
            source,
        })
    };
    fsutil::create_dir_private(&layout.dir).map_err(|source| InstallError::Write {
        path: layout.dir.clone(),
        source,
    })?;
    write(&layout.key, key.serialize_pem().as_bytes(), PRIVATE_MODE)?;
    write(&layout.cert, response.cert_pem.as_bytes(), PUBLIC_MODE)?;
    write(&layout.ca, response.ca_pem.as_bytes(), PUBLIC_MODE)?;
    // The configuration last: its presence means the installation is complete.
    write(&layout.config, config.to_yaml().as_bytes(), PUBLIC_MODE)?;
    if let Some(path) = &unit_file {
        write(path, unit.as_bytes(), PUBLIC_MODE)?;
    }
    tracing::info!(
        entity = %name,
        namespace = %namespace,
        config = %layout.config.display(),
        agent_urls = %agent_urls.join(", "),
        "installed"
    );
    Ok(InstallReport {
        config_file: layout.config,
        name,
        namespace,
        subscriptions,
        agent_urls,
        agent_urls_from,
        cert_not_after: issued.not_after,
        unit_file,
        unit,
    })
}

/// The `--agent-url` values checked (without a trailing `/`); `None` when there are none.
fn given_agent_urls(given: &[String]) -> Result<Option<Vec<String>>, InstallError> {
    if given.is_empty() {
        return Ok(None);
    }
    given
        .iter()
        .map(|url| {
            config::parse_agent_url(url)
                .map(|_| url.trim_end_matches('/').to_owned())
                .map_err(|message| InstallError::Usage(format!("--agent-url: {message}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The agent URLs of the backend's answer, checked (at most [`MAX_AGENT_URLS`], each a
/// `wss://` URL as [`config::parse_agent_url`] takes it); `None` when it names none (a backend
/// that predates them, or one that could not tell).
fn answer_agent_urls(answer: &[String]) -> Result<Option<Vec<String>>, InstallError> {
    if answer.is_empty() {
        return Ok(None);
    }
    if answer.len() > MAX_AGENT_URLS {
        return Err(InstallError::UnexpectedResponse(format!(
            "the answer names {} agent URLs, more than {MAX_AGENT_URLS}; pass --agent-url",
            answer.len()
        )));
    }
    answer
        .iter()
        .enumerate()
        .map(|(index, url)| {
            config::parse_agent_url(url)
                .map(|_| url.trim_end_matches('/').to_owned())
                .map_err(|message| {
                    InstallError::UnexpectedResponse(format!(
                        "agent_urls[{index}]: {message}; pass --agent-url"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The guess for a backend whose answer names no agent URL: its API host on port
/// [`DEFAULT_AGENT_PORT`].
fn guessed_agent_urls(api_url: &reqwest::Url) -> Result<Vec<String>, InstallError> {
    let host = api_url
        .host_str()
        .ok_or_else(|| InstallError::Usage("--backend-url has no host".into()))?;
    Ok(vec![format!("wss://{host}:{DEFAULT_AGENT_PORT}")])
}

/// `POST`s the bootstrap request over TLS pinned to the token's CA fingerprint.
async fn bootstrap(
    api_url: &reqwest::Url,
    token: &JoinToken,
    request: &BootstrapRequest,
) -> Result<BootstrapResponse, InstallError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCaVerifier::new(
        &token.ca_fingerprint,
        provider.clone(),
    ));
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| InstallError::Usage(format!("tls: {err}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|err| InstallError::Usage(format!("cannot build the HTTP client: {err}")))?;
    let url = format!(
        "{}{}",
        api_url.as_str().trim_end_matches('/'),
        BOOTSTRAP_PATH
    );
    let response = match http.post(&url).json(request).send().await {
        Ok(response) => response,
        Err(err) => {
            return Err(match verifier.last_failure() {
                Some(failure) => pin_error(failure, token, api_url),
                None => InstallError::Unreachable {
                    url: api_url.as_str().trim_end_matches('/').to_owned(),
                    cause: cause_chain(&err),
                },
            })
        }
    };
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|err| InstallError::UnexpectedResponse(cause_chain(&err)))?;
    if !status.is_success() {
        let message = error_message(&body);
        return Err(if status == reqwest::StatusCode::UNAUTHORIZED {
            InstallError::Refused(message)
        } else {
            InstallError::Status {
                status: status.as_u16(),
                message,
            }
        });
    }
    serde_json::from_slice(&body).map_err(|err| InstallError::UnexpectedResponse(err.to_string()))
}

fn pin_error(failure: PinFailure, token: &JoinToken, api_url: &reqwest::Url) -> InstallError {
    match failure {
        PinFailure::NoPinnedCertificate { presented: 1, .. } => InstallError::CaMismatch(format!(
            "the token pins the CA with SHA-256 {}, but the backend presented only its own \
             certificate and no CA",
            token.ca_fingerprint
        )),
        PinFailure::NoPinnedCertificate { others, .. } => InstallError::CaMismatch(format!(
            "the token pins the CA with SHA-256 {}, the backend presented {}",
            token.ca_fingerprint,
            others.join(", ")
        )),
        PinFailure::LeafRejected(reason) if reason.contains("NotValidForName") => {
            InstallError::ServerCertificate(format!(
                "it is not valid for {} ({reason}); use a host name the backend's certificate \
                 names",
                api_url.host_str().unwrap_or_default()
            ))
        }
        PinFailure::LeafRejected(reason)
            if reason.contains("Expired") || reason.contains("NotValidYet") =>
        {
            InstallError::ServerCertificate(reason)
        }
        PinFailure::LeafRejected(reason) => InstallError::CaMismatch(format!(
            "the backend's certificate does not verify against the pinned CA: {reason}"
        )),
    }
}

/// The backend's `{"message"}`, or the body's text.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(message) => message.message,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "no message".to_owned()
            } else {
                text.chars().take(500).collect()
            }
        }
    }
}

pub use cairn_api::client::cause_chain;

/// The systemd unit that runs `exe start --config <config_file>` with hardening; the agent may
/// write only under `writable` (its certificate on renewal, its queue).
pub fn systemd_unit(exe: &Path, config_file: &Path, writable: &[&Path]) -> String {
    let writable: Vec<String> = writable.iter().map(|path| unit_word(path)).collect();
    format!(
        "# Written by `cairn-agent install`.
[Unit]
Description=Cairn agent
Documentation=https://example.invalid/cairn
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe} start --config {config}
Restart=always
RestartSec=5s
KillMode=mixed
TimeoutStopSec=30s
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=strict
ReadWritePaths={writable}
ProtectHome=read-only
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
",
        exe = unit_word(exe),
        config = unit_word(config_file),
        writable = writable.join(" "),
    )
}

/// A path as one word of a unit file: `%` escaped, quoted when it holds white space or quotes.
fn unit_word(path: &Path) -> String {
    let text = path.to_string_lossy().replace('%', "%%");
    if text
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> InstallOptions {
        InstallOptions {
            backend_url: "https://127.0.0.1:1".into(),
            token: format!("cairn-join.k3x9.{}.{}", "s".repeat(40), "ab".repeat(32)),
            name: Some("web-01".into()),
            subscriptions: vec![],
            agent_urls: vec![],
            config_dir: dir.to_owned(),
            systemd_unit: None,
            force: false,
        }
    }

    #[test]
    fn options_debug_hides_the_token() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!("{:?}", options(tmp.path()));
        assert!(!text.contains(&"s".repeat(40)), "{text}");
    }

    #[tokio::test]
    async fn bad_options_are_usage_errors_and_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc");
        let secret = "s".repeat(40);
        let cases: Vec<(InstallOptions, &str)> = vec![
            (
                InstallOptions {
                    token: "cairn-join.only.two".into(),
                    ..options(&dir)
                },
                "invalid join token: expected cairn-join.<id>.<secret>.<ca fingerprint>, got 3 parts",
            ),
            (
                InstallOptions {
                    token: format!("cairn-join.k3x9.{secret}.xyz"),
                    ..options(&dir)
                },
                "invalid join token: the CA fingerprint is not 64 hex digits",
            ),
            (
                InstallOptions {
                    backend_url: "http://h:8080".into(),
                    ..options(&dir)
                },
                "--backend-url: \"http://h:8080\" must be an https:// URL",
            ),
            (
                InstallOptions {
                    name: Some("web 01".into()),
                    ..options(&dir)
                },
                "the entity name \"web 01\" is not valid",
            ),
            (
                InstallOptions {
                    agent_urls: vec!["https://h:8081".into()],
                    ..options(&dir)
                },
                "--agent-url: \"https://h:8081\" must be a wss:// URL",
            ),
        ];
        for (options, expected) in cases {
            let err = install(&options).await.unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with(expected), "{text}");
            assert!(!text.contains(&secret), "{text}");
            assert!(err.is_usage(), "{err:?}");
        }
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn existing_installation_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("agent.yaml"), "name: x\n").unwrap();
        let err = install(&options(tmp.path())).await.unwrap_err();
        assert!(
            matches!(err, InstallError::AlreadyInstalled { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("--force"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_backend_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        // Port 1 on loopback: nothing listens there.
        let err = install(&options(tmp.path())).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot reach the backend at https://127.0.0.1:1"),
            "{text}"
        );
        assert!(!text.contains(&"s".repeat(40)), "{text}");
        assert!(!tmp.path().join("agent.key").exists());
    }

    #[test]
    fn agent_urls_are_given_or_the_answers_or_guessed() {
        let url = reqwest::Url::parse("https://cairn.example.com:8080").unwrap();
        assert_eq!(
            guessed_agent_urls(&url).unwrap(),
            ["wss://cairn.example.com:8081"]
        );
        let url = reqwest::Url::parse("https://[::1]:8080").unwrap();
        assert_eq!(guessed_agent_urls(&url).unwrap(), ["wss://[::1]:8081"]);
        assert_eq!(given_agent_urls(&[]).unwrap(), None);
        assert_eq!(
            given_agent_urls(&["wss://a:1/".into(), "wss://b:2".into()]).unwrap(),
            Some(vec!["wss://a:1".to_owned(), "wss://b:2".to_owned()])
        );
        assert_eq!(answer_agent_urls(&[]).unwrap(), None);
        assert_eq!(
            answer_agent_urls(&["wss://10.0.0.1:40123/".into()]).unwrap(),
            Some(vec!["wss://10.0.0.1:40123".to_owned()])
        );
    }

    #[test]
    fn a_bad_answer_is_refused_naming_the_url() {
        for (answer, phrase) in [
            (
                vec!["wss://good:1".to_owned(), "ws://plain:1".to_owned()],
                "agent_urls[1]: \"ws://plain:1\" must be a wss:// URL",
            ),
            (
                vec!["wss://user:pw@h:1".to_owned()],
                "agent_urls[0]: \"wss://user:pw@h:1\" must not carry credentials",
            ),
            (
                vec![format!("wss://{}:1", "a".repeat(2000))],
                "is longer than 1024 bytes",
            ),
            (
                vec!["wss://h:1".to_owned(); MAX_AGENT_URLS + 1],
                "the answer names 17 agent URLs, more than 16",
            ),
        ] {
            let err = answer_agent_urls(&answer).unwrap_err();
            assert!(
                matches!(err, InstallError::UnexpectedResponse(_)),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(phrase), "{text}");
            assert!(text.ends_with("pass --agent-url"), "{text}");
            assert!(text.len() < 400, "{text}");
        }
    }

    #[test]
    fn an_old_backends_answer_without_agent_urls_still_parses() {
        let old = r#"{"cert_pem":"c","agent_ca_pem":"a","ca_pem":"p","subscriptions":[],"namespace":"ns"}"#;
        let answer: BootstrapResponse = serde_json::from_str(old).unwrap();
        assert!(answer.agent_urls.is_empty());
        let newer = r#"{"cert_pem":"c","agent_urls":["wss://h:1"],"some_later_field":1}"#;
        let answer: BootstrapResponse = serde_json::from_str(newer).unwrap();
        assert_eq!(answer.agent_urls, ["wss://h:1"]);
    }

    #[test]
    fn unit_runs_start_with_hardening() {
        let unit = systemd_unit(
            Path::new("/usr/bin/cairn-agent"),
            Path::new("/etc/cairn agent/agent.yaml"),
            &[Path::new("/etc/cairn agent")],
        );
        assert!(
            unit.contains(
                "ExecStart=/usr/bin/cairn-agent start --config \"/etc/cairn agent/agent.yaml\"\n"
            ),
            "{unit}"
        );
        assert!(unit.contains("NoNewPrivileges=yes\n"));
        assert!(unit.contains("ProtectSystem=strict\n"));
        assert!(unit.contains("ReadWritePaths=\"/etc/cairn agent\"\n"));
        assert_eq!(unit_word(Path::new("/a%b")), "/a%%b");
    }

    #[test]
    fn error_messages_from_the_backend() {
        assert_eq!(
            error_message(br#"{"message":"join token expired","code":401}"#),
            "join token expired"
        );
        assert_eq!(error_message(b"plain text"), "plain text");
        assert_eq!(error_message(b""), "no message");
    }
}
