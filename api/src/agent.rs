//! The agent protocol: what an agent and the backend say to each other.
//!
//! Two channels:
//!
//! - **Bootstrap** (`POST` [`BOOTSTRAP_PATH`] on the API listener, HTTPS pinned by the agent to
//!   the CA fingerprint its join token carries): a [`BootstrapRequest`] with the join token and
//!   a CSR; the answer is a [`BootstrapResponse`] with the client certificate and the agent CA.
//!   The certificate names its identity twice: CN = entity name, and exactly one URI SAN
//!   [`agent_uri`] `cairn:agent:<namespace>/<entity>`. The private key never leaves the host.
//! - **Session** (WebSocket at [`AGENT_PATH`] on the agent listener, TLS 1.3 with a client
//!   certificate from the agent CA): one JSON text frame per message, [`AgentMessage`] from the
//!   agent and [`BackendMessage`] from the backend. The agent opens with [`Hello`]; namespace and
//!   entity come from the certificate's URI SAN, and a hello naming another one is refused.
//!
//! Events carry an id chosen by the agent; the backend answers [`BackendMessage::Ack`] once the
//! event is stored, and the agent keeps an event in its on-disk queue until then. The backend
//! drops an id it has already stored, so a resend after a reconnect is never a duplicate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Asset, CheckConfig, Event, HookConfig, System};

/// The protocol version in [`Hello::protocol`]; the backend refuses others.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket path on the agent listener.
pub const AGENT_PATH: &str = "/agentconnect";

/// The bootstrap endpoint on the API listener.
pub const BOOTSTRAP_PATH: &str = "/api/cairn/v1/agents/bootstrap";

/// The prefix of every join token.
pub const JOIN_TOKEN_PREFIX: &str = "cairn-join";

/// The scheme and prefix of the URI SAN that binds an agent certificate to its identity.
pub const AGENT_URI_PREFIX: &str = "cairn:agent:";

/// The URI SAN of the agent certificate of `namespace`/`name`: `cairn:agent:<namespace>/<name>`.
pub fn agent_uri(namespace: &str, name: &str) -> String {
    format!("{AGENT_URI_PREFIX}{namespace}/{name}")
}

/// The namespace and entity of an agent URI SAN; `None` when `uri` is not one (another scheme,
/// no `/`, an empty part, or more than one `/`).
pub fn parse_agent_uri(uri: &str) -> Option<(&str, &str)> {
    let (namespace, name) = uri.strip_prefix(AGENT_URI_PREFIX)?.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then_some((namespace, name))
}

/// Largest message either side accepts, bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Read buffer of a session's WebSocket on either side, bytes. Messages are small (a check
/// request or an event is ~1–2 KiB), and the buffer is held for the whole session, so the
/// library's 128 KiB default would be most of a backend's memory per agent.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// `keepalive_interval` when the agent sets none, seconds (as Sensu).
pub const DEFAULT_KEEPALIVE_INTERVAL: u32 = 20;
/// `keepalive_warning_timeout` default, seconds (as Sensu).
pub const DEFAULT_KEEPALIVE_WARNING_TIMEOUT: u32 = 120;
/// `keepalive_critical_timeout` default, seconds; 0 disables the critical stage.
pub const DEFAULT_KEEPALIVE_CRITICAL_TIMEOUT: u32 = 180;

/// The first message of a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The entity name; must equal the certificate's CN.
    pub name: String,
    /// The entity's namespace; must equal the certificate's (empty means the certificate's).
    pub namespace: String,
    /// Subscriptions (the backend adds `entity:<name>`); a token minted with pinned
    /// subscriptions allows only those.
    pub subscriptions: Vec<String>,
    /// Entity labels.
    pub labels: BTreeMap<String, String>,
    /// Entity annotations.
    pub annotations: BTreeMap<String, String>,
    /// Host facts.
    pub system: System,
    /// Seconds between keepalives.
    pub keepalive_interval: u32,
    /// Seconds without a keepalive before a warning.
    pub keepalive_warning_timeout: u32,
    /// Seconds without a keepalive before a critical; 0 for none.
    pub keepalive_critical_timeout: u32,
    /// Delete the entity when its keepalive goes critical.
    pub deregister: bool,
    /// The agent's version.
    pub agent_version: String,
    /// `core/v2 Pipeline`s its keepalive events name (Sensu's `keepalive-pipelines`), besides
    /// the entity's keepalive handlers. Left out when empty, so older backends take the hello.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keepalive_pipelines: Vec<String>,
    /// The agent manages its entity (Sensu's `agent-managed-entity`): its configuration's
    /// subscriptions, labels and annotations replace the stored entity's at every connection,
    /// and the API does not change them. Otherwise (the default, Sensu's backend-managed
    /// entities) they are taken from the agent only when the entity is created, and then from
    /// the stored entity, which the API may change. Left out when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub agent_managed: bool,
    /// Handlers its keepalive events name (Sensu's `keepalive-handlers`); the backend sets them
    /// on the entity, in place of what an operator set there. Left out when empty (the entity
    /// keeps its own), so older backends take the hello.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keepalive_handlers: Vec<String>,
    /// The handler the backend runs when it deregisters the entity (Sensu's
    /// `deregistration-handler`), set as the entity's `deregistration.handler`. Left out when
    /// empty (the entity keeps its own), so older backends take the hello.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub deregistration_handler: String,
}

/// A check the backend asks an agent to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckRequest {
    /// The check, with its metadata (name, namespace).
    pub config: CheckConfig,
    /// Hooks the check names, resolved by the backend.
    pub hooks: Vec<HookConfig>,
    /// When the request was issued (unix seconds).
    pub issued: i64,
    /// Environment variables from secrets, resolved by the backend and sent only on an
    /// authenticated session; never stored or logged by either side.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretValue>,
    /// The secrets of each hook in `hooks` that has any, by hook name; the same rules as
    /// `secrets`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hook_secrets: BTreeMap<String, Vec<SecretValue>>,
    /// The `core/v2` `Asset`s named by the check's and its hooks' `runtime_assets`, resolved
    /// by the backend, each with its `metadata.name`, in the order first named (check first,
    /// then each hook), without repeats. Left out when empty, so older agents take the request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assets: Vec<Asset>,
}

/// One resolved secret: the variable name the check asked for and its value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretValue {
    /// The environment variable.
    pub name: String,
    /// The value.
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("value", &"*****")
            .finish()
    }
}

/// From the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// Opens the session.
    Hello(Box<Hello>),
    /// A check result or an event from the local API.
    Event {
        /// Chosen by the agent (a UUID); acknowledged by [`BackendMessage::Ack`].
        id: String,
        /// The event.
        event: Box<Event>,
    },
    /// I am alive.
    Keepalive {
        /// Agent clock, unix seconds.
        sent_at: i64,
    },
    /// Please sign a new certificate for my key (sent before the current one expires).
    RenewCertificate {
        /// A CSR for the same name, PEM.
        csr_pem: String,
    },
}

/// From the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendMessage {
    /// The session is open.
    Welcome {
        /// The entity name the backend registered.
        entity: String,
    },
    /// Run this check.
    CheckRequest(Box<CheckRequest>),
    /// The stored entity's subscriptions, labels and annotations, for an entity the backend
    /// manages (Sensu's backend-managed entities): sent after the welcome and whenever they
    /// change through the API; the agent's checks (their tokens) and events use them from then
    /// on instead of its configuration's.
    EntityConfig {
        /// Subscriptions, `entity:<name>` included.
        subscriptions: Vec<String>,
        /// Labels.
        labels: BTreeMap<String, String>,
        /// Annotations.
        annotations: BTreeMap<String, String>,
    },
    /// The event with this id is stored.
    Ack {
        /// The event id.
        id: String,
    },
    /// A renewed certificate.
    Certificate {
        /// The certificate, PEM.
        cert_pem: String,
    },
    /// The backend refuses the session or a message; the session ends after it when `fatal`.
    Refused {
        /// Why, for the agent's log.
        reason: String,
        /// Whether the session ends.
        fatal: bool,
    },
}

/// `POST` [`BOOTSTRAP_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapRequest {
    /// The whole join token.
    pub token: String,
    /// The entity name asked for; the certificate's CN.
    pub name: String,
    /// A PKCS#10 CSR, PEM, for a key made on the host.
    pub csr_pem: String,
}

/// The answer to a [`BootstrapRequest`].
///
/// Unknown fields are ignored, so that a backend may add to the answer without breaking the
/// agents already deployed; an agent older than a field never sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootstrapResponse {
    /// The client certificate, PEM.
    pub cert_pem: String,
    /// The agent CA (which signed it), PEM.
    pub agent_ca_pem: String,
    /// The cluster CA (which signed the backend's listeners), PEM.
    pub ca_pem: String,
    /// Subscriptions the token grants.
    pub subscriptions: Vec<String>,
    /// The entity namespace.
    pub namespace: String,
    /// The agent listener's URLs (`wss://host:port`), at most [`MAX_AGENT_URLS`] of at most
    /// [`MAX_AGENT_URL_BYTES`] each: those the backend was told to advertise, else one made of
    /// the listener's own address, or of the host name the bootstrap request reached and the
    /// listener's port. Empty when the backend does not know (or predates the field): the
    /// agent then guesses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agent_urls: Vec<String>,
}

/// The most agent URLs a [`BootstrapResponse`] carries, and an agent takes from one.
pub const MAX_AGENT_URLS: usize = 16;

/// The longest agent URL either side accepts, bytes.
pub const MAX_AGENT_URL_BYTES: usize = 1024;

/// Parses an agent listener URL, `wss://host[:port][/path]`: scheme `wss`, a host, no user
/// name or password, at most [`MAX_AGENT_URL_BYTES`]. The one check of these URLs wherever
/// they come from (`agent.yaml`, `--agent-url`, `--agent-advertise-url`, a bootstrap answer).
///
/// # Errors
///
/// A message saying what is wrong (quoting at most the first 100 characters of `text`).
#[cfg(feature = "client")]
pub fn parse_agent_url(text: &str) -> Result<reqwest::Url, String> {
    if text.len() > MAX_AGENT_URL_BYTES {
        let start: String = text.chars().take(100).collect();
        return Err(format!(
            "{start:?}... is longer than {MAX_AGENT_URL_BYTES} bytes"
        ));
    }
    let url = reqwest::Url::parse(text).map_err(|err| format!("{text:?} is not a URL ({err})"))?;
    if url.scheme() != "wss" {
        return Err(format!(
            "{text:?} must be a wss:// URL (the agent session always uses TLS)"
        ));
    }
    if url.host().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not carry credentials"));
    }
    Ok(url)
}

/// A parsed join token: `cairn-join.<id>.<secret>.<ca-sha256-hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Names the token in the store.
    pub id: String,
    /// The secret half (only its digest is stored).
    pub secret: String,
    /// SHA-256 of the cluster CA certificate (DER), lowercase hex.
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"*****")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

/// Why a join token does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid join token: {0}")]
pub struct JoinTokenError(String);

impl JoinToken {
    /// The token as the operator copies it.
    pub fn encode(&self) -> String {
        format!(
            "{JOIN_TOKEN_PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_fingerprint
        )
    }

    /// Parses a token.
    ///
    /// # Errors
    /// [`JoinTokenError`] naming the part that is wrong (never echoing the secret).
    pub fn parse(text: &str) -> Result<JoinToken, JoinTokenError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, id, secret, fingerprint] = parts.as_slice() else {
            return Err(JoinTokenError(format!(
                "expected {JOIN_TOKEN_PREFIX}.<id>.<secret>.<ca fingerprint>, got {} parts",
                parts.len()
            )));
        };
        if *prefix != JOIN_TOKEN_PREFIX {
            return Err(JoinTokenError(format!(
                "it does not start with {JOIN_TOKEN_PREFIX}"
            )));
        }
        let alphanumeric = |text: &str| {
            !text.is_empty()
                && text
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        };
        if !alphanumeric(id) {
            return Err(JoinTokenError("the id is empty or not alphanumeric".into()));
        }
        if !alphanumeric(secret) || secret.len() < 32 {
            return Err(JoinTokenError(
                "the secret is too short or not alphanumeric".into(),
            ));
        }
        if fingerprint.len() != 64 || !fingerprint.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(JoinTokenError(
                "the CA fingerprint is not 64 hex digits".into(),
            ));
        }
        Ok(JoinToken {
            id: (*id).to_owned(),
            secret: (*secret).to_owned(),
            ca_fingerprint: fingerprint.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_leaves_out_empty_handlers_for_older_backends() {
        let plain = serde_json::to_value(Hello::default()).unwrap();
        for field in [
            "keepalive_pipelines",
            "keepalive_handlers",
            "deregistration_handler",
        ] {
            assert!(plain.get(field).is_none(), "{field} in {plain}");
        }
        let hello = Hello {
            keepalive_handlers: vec!["slack".into()],
            deregistration_handler: "cleanup".into(),
            ..Hello::default()
        };
        let json = serde_json::to_value(&hello).unwrap();
        assert_eq!(json["keepalive_handlers"], serde_json::json!(["slack"]));
        assert_eq!(json["deregistration_handler"], "cleanup");
        assert_eq!(serde_json::from_value::<Hello>(json).unwrap(), hello);
    }

    #[test]
    fn join_token_round_trips_and_hides_its_secret() {
        let token = JoinToken {
            id: "k3x9".into(),
            secret: "a".repeat(40),
            ca_fingerprint: "ab".repeat(32),
        };
        assert_eq!(JoinToken::parse(&token.encode()), Ok(token.clone()));
        assert!(!format!("{token:?}").contains(&"a".repeat(40)));
        for bad in [
            "",
            "cairn-join.a.b",
            "other.k3x9.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.abab",
            &format!("cairn-join.k3x9.short.{}", "ab".repeat(32)),
            &format!("cairn-join.k3x9.{}.{}", "a".repeat(40), "zz".repeat(32)),
        ] {
            let error = JoinToken::parse(bad).expect_err(bad).to_string();
            assert!(!error.contains(&"a".repeat(40)), "{error}");
        }
    }

    #[test]
    fn agent_uris_round_trip() {
        assert_eq!(agent_uri("prod", "web-01"), "cairn:agent:prod/web-01");
        assert_eq!(
            parse_agent_uri("cairn:agent:prod/web-01"),
            Some(("prod", "web-01"))
        );
        for bad in [
            "cairn:agent:prod",
            "cairn:agent:/web",
            "cairn:agent:prod/",
            "cairn:agent:prod/a/b",
            "https://prod/web",
        ] {
            assert_eq!(parse_agent_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_are_tagged_json() {
        let message = AgentMessage::Keepalive { sent_at: 7 };
        let json = serde_json::to_string(&message).expect("serialise");
        assert_eq!(json, r#"{"type":"keepalive","sent_at":7}"#);
        let back: BackendMessage =
            serde_json::from_str(r#"{"type":"ack","id":"e1"}"#).expect("parse");
        assert_eq!(back, BackendMessage::Ack { id: "e1".into() });
        assert!(serde_json::from_str::<BackendMessage>(r#"{"type":"nope"}"#).is_err());
        let secret = SecretValue {
            name: "TOKEN".into(),
            value: "hunter2".into(),
        };
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
