//! Agent enrolment and revocation: join tokens, the bootstrap endpoint that trades a token and
//! a CSR for a client certificate, and revoked certificates with the in-memory view the agent
//! listener checks.
//!
//! # Endpoints
//!
//! - `POST /api/cairn/v1/jointokens` (RBAC: `create` on the cluster-wide resource `jointokens`),
//!   body `{"ttl_seconds": 3600, "uses": 1, "subscriptions": [], "namespace": "default",
//!   "replace": "NAME", "pin_subscriptions": false}` (every field optional) →
//!   `201 {"token", "id", "expires_at"}`. The token is
//!   [`JoinToken::encode`]: its id, a random secret and the fingerprint of the cluster CA that
//!   signs the API listener, which the agent pins while it bootstraps.
//! - `GET /api/cairn/v1/jointokens` (`list jointokens`) → `200 [{"id", "namespace",
//!   "subscriptions", "expires_at", "uses_left", "created_by", "created_at"}]`, never the digest.
//! - `DELETE /api/cairn/v1/jointokens/{id}` (`delete jointokens`) → `204`, or `404`.
//! - `POST` [`cairn_api::agent::BOOTSTRAP_PATH`], unauthenticated (the join token is the credential): a
//!   [`BootstrapRequest`] → `200` [`BootstrapResponse`] (with the agent listener's URLs, see
//!   [`AgentUrls`]); `401` for any problem with the token,
//!   `400` for a bad name or CSR, `409` for an entity that has a live certificate (or a
//!   concurrent bootstrap of the same name). A refused request writes nothing.
//! - `POST /api/cairn/v1/agents/{namespace}/{name}/revoke` (RBAC: `delete` on the cluster-wide
//!   resource `agents`) → `200 {"namespace", "name", "revoked_at", "revoked_by",
//!   "certificates": [{"serial", "fingerprint"}]}`.
//!
//! `jointokens` and `agents` are not namespaced resource kinds, so only cluster-wide grants
//! (a `ClusterRoleBinding`; `cluster-admin`'s `*` included) allow them: minting an identity or
//! taking one away is a cluster administrator's act, like managing users.
//!
//! # Store layout
//!
//! Outside `res/`, so that the resource API and the reconciler never see it:
//!
//! ```text
//! agents/jointokens/<id>          JoinTokenRecord (JSON); only the secret's SHA-256 is kept
//! agents/certs/<ns>/<name>        CertRecord (JSON): the entity's current certificate (serial,
//!                                 SHA-256 fingerprint, issued_at, not_after, token id, pinned
//!                                 subscriptions), written with guarded writes
//! agents/revoked/<ns>/<name>      Revocation (JSON)
//! ```
//!
//! # Identity
//!
//! A certificate names its namespace and entity (CN = entity, URI SAN
//! `cairn:agent:<namespace>/<entity>`, both forced by [`crate::pki::sign_csr`] from the join
//! token's namespace and the name asked for); the agent listener takes both from it. Bootstrap
//! for an entity whose recorded certificate is still live (not expired, not revoked) is refused
//! with `409` unless the token was minted with `replace` naming exactly that entity; such a
//! bootstrap then revokes the certificate it replaces. Two concurrent bootstraps for one name
//! cannot both win: the record is written with a write guarded by the revision read. A token
//! minted with `pin_subscriptions` pins its subscriptions into the record: the agent may claim
//! only those (and `entity:<name>`), across renewals and restarts.
//!
//! # Revocation
//!
//! A revocation refuses every certificate of that entity issued at or before `revoked_at`, and
//! names the certificates it refuses by serial and fingerprint (the entity's recorded one when it
//! was stored, and one renewed meanwhile), which are refused whatever their issue time.
//! [`crate::pki`] back-dates `notBefore` by [`PKI_NOT_BEFORE_BACKDATE_SECS`], so a
//! certificate's issue time is its `notBefore` plus that much. Signing waits until the clock is
//! past a same-second revocation, so a certificate issued at bootstrap after a revocation works:
//! an agent re-installed with a new token connects again. A renewal never waits: it is refused
//! for a revoked certificate, and after signing it reads the revocation again from the store, so
//! that a revocation stored before or while it signed is never outrun by the new certificate.
//! Every backend sharing the store keeps the view current through a watch (and reloads it at
//! start), and drops a live session of a revoked certificate at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cairn_api::agent::{parse_agent_url, JoinToken, MAX_AGENT_URLS};
use cairn_api::validate::check_name;
use cairn_api::Kind;

use rustls::pki_types::pem::PemObject;

use crate::datadir::DataDir;
use crate::entity::EntityId;
use crate::pki::{self, CertifiedKeyPem, PkiError};
use crate::store::keyspace;
use crate::store::reflector::{Reflector, View};
use crate::store::{Precondition, Revision, Store, StoreError, WatchEvent};

/// The RBAC resource of join tokens (cluster-wide).
pub(crate) const JOIN_TOKENS_RESOURCE: &str = "jointokens";

/// The RBAC resource of agent identities, whose revocation is verb `delete` (cluster-wide).
pub(crate) const AGENTS_RESOURCE: &str = "agents";

/// How long an agent certificate (from bootstrap or renewal) is valid: 90 days.
pub(crate) const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// How far [`crate::pki`] sets a certificate's `notBefore` before the moment it signs it
/// (its clock-skew allowance); a unit test below keeps the two in step.
pub(crate) const PKI_NOT_BEFORE_BACKDATE_SECS: i64 = 5 * 60;

/// A join token's lifetime when the request names none, seconds.
pub(crate) const DEFAULT_TOKEN_TTL_SECS: u64 = 60 * 60;
/// The shortest join token lifetime, seconds.
pub(crate) const MIN_TOKEN_TTL_SECS: u64 = 60;
/// The longest join token lifetime, seconds (30 days).
pub(crate) const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 60 * 60;
/// The most uses one join token may grant.
pub(crate) const MAX_TOKEN_USES: u32 = 10_000;

/// Length of a token's secret: 48 alphanumeric characters, about 285 bits.
pub(crate) const SECRET_LEN: usize = 48;
/// Length of a token's id: 16 lower-case alphanumeric characters.
pub(crate) const ID_LEN: usize = 16;
pub(crate) const SECRET_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub(crate) const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// How many times a guarded write of a token is recomputed when another writer got there first.
pub(crate) const TOKEN_WRITE_ATTEMPTS: usize = 16;

/// How long expired tokens are kept (so that a late use is told "expired", not "unknown").
const EXPIRED_TOKEN_GRACE_SECS: u64 = 24 * 60 * 60;

/// How often the sweeper removes tokens past their grace period.
const TOKEN_SWEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// How long a revocation request waits for the local view (and so the session drop) to catch up.
pub(crate) const REVOCATION_CATCH_UP: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------
// Certificate authority material
// ------------------------------------------------------------------------------------------

/// The CA material that bootstrap and renewal need, loaded and checked once at start, and the
/// agent URLs the bootstrap answer names.
pub(crate) struct AgentPki {
    pub(crate) agent_ca: CertifiedKeyPem,
    pub(crate) ca_pem: String,
    ca_fingerprint: String,
    pub(crate) agent_urls: AgentUrls,
}

/// Why [`AgentPki::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentPkiError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFailed {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The material is unusable (a damaged file, a key that does not match its certificate).
    #[error("{what} is unusable: {source}")]
    Unusable {
        /// Which material.
        what: &'static str,
        /// The cause.
        #[source]
        source: PkiError,
    },
}

impl std::fmt::Debug for AgentPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPki")
            .field("agent_ca", &self.agent_ca)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("agent_urls", &self.agent_urls)
            .finish_non_exhaustive()
    }
}

impl AgentPki {
    /// Reads the agent CA (certificate and key) and the cluster CA from the data directory and
    /// checks that the agent CA can sign.
    ///
    /// # Errors
    /// A missing or unreadable file, or unusable material, named.
    pub(crate) fn load(dir: &DataDir) -> Result<AgentPki, AgentPkiError> {
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path)
                .map_err(|source| AgentPkiError::ReadFailed { path, source })
        };
        let agent_ca = CertifiedKeyPem {
            cert_pem: read(dir.agent_ca_cert())?,
            key_pem: read(dir.agent_ca_key())?,
        };
        let ca_pem = read(dir.ca_cert())?;
        let ca_fingerprint =
            pki::fingerprint_sha256(&ca_pem).map_err(|source| AgentPkiError::Unusable {
                what: "the cluster CA certificate",
                source,
            })?;
        // Fail at start, not at the first bootstrap, when the agent CA's key and certificate do
        // not belong together.
        pki::issue_client_cert(&agent_ca, "cairn-startup-check", Duration::from_secs(60)).map_err(
            |source| AgentPkiError::Unusable {
                what: "the agent CA",
                source,
            },
        )?;
        Ok(AgentPki::from_parts(agent_ca, ca_pem, ca_fingerprint))
    }

    /// Builds the material from PEM already in memory (tests), with [`AgentUrls::Unknown`].
    pub(crate) fn from_parts(
        agent_ca: CertifiedKeyPem,
        ca_pem: String,
        ca_fingerprint: String,
    ) -> Self {
        AgentPki {
            agent_ca,
            ca_pem,
            ca_fingerprint,
            agent_urls: AgentUrls::Unknown,
        }
    }

    /// The same material, the bootstrap answer naming `agent_urls`.
    #[must_use]
    pub(crate) fn with_agent_urls(self, agent_urls: AgentUrls) -> Self {
        AgentPki { agent_urls, ..self }
    }

    /// The SHA-256 fingerprint of the cluster CA, which join tokens carry.
    pub(crate) fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }

    /// Signs an agent's CSR as the client certificate of `namespace`/`name` (CN and URI SAN,
    /// see [`pki::sign_csr`]), valid [`AGENT_CERT_VALIDITY`]; returns it with the facts its
    /// certificate record keeps.
    ///
    /// # Errors
    /// [`PkiError::InvalidCsr`] for a bad CSR; other variants are internal faults.
    pub(crate) fn sign(
        &self,
        csr_pem: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Issued, PkiError> {
        let cert_pem = pki::sign_csr(
            &self.agent_ca,
            csr_pem,
            namespace,
            name,
            AGENT_CERT_VALIDITY,
        )?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(PkiError::NoCertificate)?;
        // A certificate just signed here always reads back; an error is an internal fault.
        let identity = crate::agents::connection::peer_identity(der.as_ref()).map_err(|_| {
            PkiError::SigningFailed {
                common_name: name.to_owned(),
                source: rcgen::Error::CouldNotParseCertificate,
            }
        })?;
        Ok(Issued { cert_pem, identity })
    }
}

/// A certificate just signed, with what the agent listener reads from it.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its identity, serial, fingerprint and validity.
    pub identity: crate::agents::connection::PeerIdentity,
}

impl Issued {
    /// The certificate record of this certificate, enrolled with token `token_id`.
    pub(crate) fn record(
        &self,
        token_id: &str,
        pinned_subscriptions: Option<Vec<String>>,
    ) -> CertRecord {
        CertRecord {
            serial: self.identity.serial.clone(),
            fingerprint: self.identity.fingerprint.clone(),
            issued_at: self.identity.issued_at(),
            not_after: self.identity.not_after,
            token_id: token_id.to_owned(),
            pinned_subscriptions,
        }
    }
}

/// A [`PkiError`] with its source, for a message to an agent or an operator.
pub(crate) fn describe_pki_error(err: &PkiError) -> String {
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// Agent URLs in the bootstrap answer
// ------------------------------------------------------------------------------------------

/// The longest request authority (`host:port`) an agent URL is derived from, bytes: a DNS
/// name's 253, a colon and a port.
const MAX_AUTHORITY_BYTES: usize = 253 + 6;

/// Where the bootstrap answer tells agents to connect ([`BootstrapResponse::agent_urls`]).
///
/// # Who controls what
///
/// With `--agent-advertise-url`, or an agent listener bound to one address, the URLs are fixed
/// at start. With a listener on every address (`0.0.0.0`, `[::]`) the host is the one the
/// bootstrap request reached (HTTP/2's `:authority`, else `Host`), which the sender of the
/// request chooses freely. So it is taken only when it is an IP address or a DNS name
/// ([`request_host`]; anything else names no URL, and the agent falls back to its own guess),
/// the port is always the listener's, and the URL only ever goes back to that sender, in the
/// answer to its own request, which its join token authenticates. An agent takes the URLs only
/// from an answer over TLS pinned to the CA fingerprint of its join token, and opens its
/// sessions trusting only that CA with its own client certificate; so neither a forged header
/// nor anyone on the path can make an agent trust a listener that is not the cluster's, and the
/// worst a URL can do is point an agent at an address where its session then fails. Bounded:
/// at most [`MAX_AGENT_URLS`] URLs of at most [`cairn_api::agent::MAX_AGENT_URL_BYTES`] each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum AgentUrls {
    /// Not known (a backend built in tests): the answer names none, and the agent guesses.
    #[default]
    Unknown,
    /// These URLs, whatever the request.
    Fixed(Vec<String>),
    /// `wss://<the host the request reached>:<port>`.
    RequestHost {
        /// The agent listener's bound port.
        port: u16,
    },
}

impl AgentUrls {
    /// Checks the `--agent-advertise-url` values ([`parse_agent_url`], at most
    /// [`MAX_AGENT_URLS`]); returns them without a trailing `/`.
    ///
    /// # Errors
    /// A message naming the flag and the URL that is wrong.
    pub(crate) fn check_advertised(urls: &[String]) -> Result<Vec<String>, String> {
        if urls.len() > MAX_AGENT_URLS {
            return Err(format!(
                "--agent-advertise-url: at most {MAX_AGENT_URLS} URLs, got {}",
                urls.len()
            ));
        }
        urls.iter()
            .map(|url| {
                parse_agent_url(url)
                    .map(|_| url.trim_end_matches('/').to_owned())
                    .map_err(|message| format!("--agent-advertise-url: {message}"))
            })
            .collect()
    }

    /// The URLs of an agent listener bound at `bound` (its real port, also when port 0 was
    /// asked for): `advertised` when there are any (checked by [`AgentUrls::check_advertised`]);
    /// else `wss://<ip>:<port>` for a listener on one address, and the request's host on the
    /// listener's port for one on every address.
    pub(crate) fn new(advertised: Vec<String>, bound: SocketAddr) -> AgentUrls {
        if !advertised.is_empty() {
            AgentUrls::Fixed(advertised)
        } else if bound.ip().is_unspecified() {
            AgentUrls::RequestHost { port: bound.port() }
        } else {
            AgentUrls::Fixed(vec![agent_url(&url_host(bound.ip()), bound.port())])
        }
    }

    /// The URLs to answer a bootstrap request with that reached `authority` (its `:authority`
    /// or `Host`, `None` when it had neither); empty when they cannot be known.
    pub(crate) fn for_request(&self, authority: Option<&str>) -> Vec<String> {
        match self {
            AgentUrls::Unknown => Vec::new(),
            AgentUrls::Fixed(urls) => urls.clone(),
            AgentUrls::RequestHost { port } => authority
                .and_then(request_host)
                .map(|host| agent_url(&host, *port))
                // Built from a checked host, so this holds; checked all the same.
                .filter(|url| parse_agent_url(url).is_ok())
                .into_iter()
                .collect(),
        }
    }

    /// What the start log says of them.
    pub(crate) fn describe(&self) -> String {
        match self {
            AgentUrls::Unknown => "none (agents guess)".to_owned(),
            AgentUrls::Fixed(urls) => urls.join(", "),
            AgentUrls::RequestHost { port } => {
                format!("wss://<the host each bootstrap request reached>:{port}")
            }
        }
    }
}

/// `wss://host:port`; `host` is already in URL form (an IPv6 address in brackets).
fn agent_url(host: &str, port: u16) -> String {
    format!("wss://{host}:{port}")
}

/// An IP address as the host of a URL.
fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// The host of a request's authority (`host`, `host:port`, `[v6]` or `[v6]:port`) in URL form,
/// lower-case, when it is usable for an agent URL: an IP address that is not unspecified,
/// multicast or broadcast, or a DNS name (labels of ASCII letters, digits and `-`, no `-` at
/// either end of one, at most 63 bytes each and 253 in all, one trailing `.` dropped, a last
/// label that is not all digits, so that nothing reads as a malformed IPv4 address); the port,
/// if any, must be decimal digits of a `u16`. `None` for anything else (user info, a path,
/// other characters, empty parts, too long).
pub(crate) fn request_host(authority: &str) -> Option<String> {
    if authority.is_empty() || authority.len() > MAX_AUTHORITY_BYTES {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (inner, port) = rest.split_once(']')?;
            let ip: Ipv6Addr = inner.parse().ok()?;
            (usable_ip(IpAddr::V6(ip))?, port)
        }
        None => {
            let (host, port) = match authority.find(':') {
                Some(colon) => authority.split_at(colon),
                None => (authority, ""),
            };
            let host = match host.parse::<Ipv4Addr>() {
                Ok(ip) => usable_ip(IpAddr::V4(ip))?,
                Err(_) => dns_name(host)?,
            };
            (host, port)
        }
    };
    if !port.is_empty() {
        let digits = port.strip_prefix(':')?;
        if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u16>().ok()?;
    }
    Some(host)
}

/// `ip` in URL form, unless no agent could reach a listener there.
fn usable_ip(ip: IpAddr) -> Option<String> {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    (!ip.is_unspecified() && !ip.is_multicast() && !broadcast).then(|| url_host(ip))
}

/// `name` lower-cased when it is a DNS host name (see [`request_host`]).
fn dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return None;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

// ------------------------------------------------------------------------------------------
// Join tokens
// ------------------------------------------------------------------------------------------

/// A join token as stored: never the secret, only its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JoinTokenRecord {
    /// SHA-256 of the secret, lowercase hex.
    pub digest: String,
    /// The namespace the agents join.
    pub namespace: String,
    /// Subscriptions the token grants.
    pub subscriptions: Vec<String>,
    /// When it stops working, unix seconds.
    pub expires_at: u64,
    /// Bootstraps it still allows.
    pub uses_left: u32,
    /// The user who created it.
    pub created_by: String,
    /// When, unix seconds.
    pub created_at: u64,
    /// The one entity this token may enrol over a live certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
    /// Whether the agents may claim only `subscriptions` (and `entity:<name>`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin_subscriptions: bool,
}

/// The body of `POST /api/cairn/v1/jointokens`; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct CreateJoinToken {
    /// Lifetime in seconds ([`DEFAULT_TOKEN_TTL_SECS`] when absent).
    pub ttl_seconds: Option<u64>,
    /// How many agents may bootstrap with it (1 when absent).
    pub uses: Option<u32>,
    /// Subscriptions granted to the agents.
    pub subscriptions: Vec<String>,
    /// The namespace they join (`default` when absent).
    pub namespace: Option<String>,
    /// An entity this token may enrol although it has a live certificate (which is revoked).
    pub replace: Option<String>,
    /// Pin the subscriptions: the agents may claim no others.
    pub pin_subscriptions: bool,
}

/// A validated [`CreateJoinToken`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinTokenSpec {
    /// Lifetime, seconds.
    pub ttl_seconds: u64,
    /// Uses.
    pub uses: u32,
    /// Subscriptions, without duplicates.
    pub subscriptions: Vec<String>,
    /// Namespace.
    pub namespace: String,
    /// The entity it may enrol over a live certificate.
    pub replace: Option<String>,
    /// Whether the subscriptions are pinned.
    pub pin_subscriptions: bool,
}

/// How a join token is listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JoinTokenInfo {
    /// The token's id (the part after `cairn-join.`).
    pub id: String,
    /// The namespace the agents join.
    pub namespace: String,
    /// Subscriptions granted.
    pub subscriptions: Vec<String>,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// Uses left.
    pub uses_left: u32,
    /// Who created it.
    pub created_by: String,
    /// When, unix seconds.
    pub created_at: u64,
    /// The entity it may enrol over a live certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
    /// Whether the subscriptions are pinned.
    #[serde(default)]
    pub pin_subscriptions: bool,
}

/// Why a join token was refused at bootstrap; every variant answers `401`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenRefusal {
    /// The text is not a join token.
    #[error("{0}")]
    Malformed(String),
    /// It carries the fingerprint of another cluster's CA.
    #[error(
        "join token is for another cluster: its CA fingerprint does not match this cluster's CA"
    )]
    OtherCluster,
    /// No token with this id (never created here, deleted, or swept after expiring).
    #[error("join token unknown (id {0}): it was never created on this cluster, or was deleted")]
    Unknown(String),
    /// The secret does not match.
    #[error("join token secret is wrong (id {0})")]
    WrongSecret(String),
    /// Past its expiry.
    #[error("join token expired (id {0})")]
    Expired(String),
    /// No uses left.
    #[error("join token used up (id {0})")]
    UsedUp(String),
}

/// Why consuming a join token failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsumeError {
    /// The token is refused (401).
    #[error(transparent)]
    Refused(#[from] TokenRefusal),
    /// Concurrent bootstraps kept changing the token (409; a retry helps).
    #[error("join token {0} kept changing under concurrent bootstraps; retry")]
    Contended(String),
    /// The store failed or holds an unreadable record.
    #[error("{0}")]
    Store(String),
}

/// SHA-256 of a token secret, lowercase hex: what the store keeps.
pub(crate) fn secret_digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// Checks a stored token against the secret presented and the time: the secret first (so that
/// nobody without it learns whether a token expired or is used up), then the expiry, then the
/// uses left.
///
/// # Errors
/// The [`TokenRefusal`] to answer with.
pub(crate) fn check_token(
    id: &str,
    record: &JoinTokenRecord,
    secret: &str,
    now: u64,
) -> Result<(), TokenRefusal> {
    if !constant_time_eq(record.digest.as_bytes(), secret_digest(secret).as_bytes()) {
        return Err(TokenRefusal::WrongSecret(id.to_owned()));
    }
    if now >= record.expires_at {
        return Err(TokenRefusal::Expired(id.to_owned()));
    }
    if record.uses_left == 0 {
        return Err(TokenRefusal::UsedUp(id.to_owned()));
    }
    Ok(())
}

/// Why a join token request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenRequestError {
    /// A field is out of bounds or malformed (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// The namespace does not exist.
    #[error("namespace \"{0}\" not found")]
    UnknownNamespace(String),
}

/// Validates a token request; `namespace_exists` answers for the namespace.
///
/// # Errors
/// [`TokenRequestError`]: a field out of bounds (named), or a namespace that does not exist.
pub(crate) fn validate_create(
    request: CreateJoinToken,
    namespace_exists: impl Fn(&str) -> bool,
) -> Result<JoinTokenSpec, TokenRequestError> {
    let ttl_seconds = request.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if !(MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(&ttl_seconds) {
        return Err(TokenRequestError::Invalid(format!(
            "ttl_seconds: {ttl_seconds} is out of range; a join token lives from {MIN_TOKEN_TTL_SECS} s to {MAX_TOKEN_TTL_SECS} s (30 days)"
        )));
    }
    let uses = request.uses.unwrap_or(1);
    if !(1..=MAX_TOKEN_USES).contains(&uses) {
        return Err(TokenRequestError::Invalid(format!(
            "uses: {uses} is out of range; a join token allows 1 to {MAX_TOKEN_USES} uses"
        )));
    }
    let namespace = request.namespace.unwrap_or_else(|| "default".to_owned());
    if let Some(problem) = check_name(Kind::Namespace, &namespace) {
        return Err(TokenRequestError::Invalid(format!("namespace: {problem}")));
    }
    if !namespace_exists(&namespace) {
        return Err(TokenRequestError::UnknownNamespace(namespace));
    }
    let mut subscriptions: Vec<String> = Vec::with_capacity(request.subscriptions.len());
    for (idx, subscription) in request.subscriptions.into_iter().enumerate() {
        if let Some(problem) = subscription_problem(&subscription) {
            return Err(TokenRequestError::Invalid(format!(
                "subscriptions[{idx}]: {problem}"
            )));
        }
        if !subscriptions.contains(&subscription) {
            subscriptions.push(subscription);
        }
    }
    if let Some(problem) = request
        .replace
        .as_deref()
        .and_then(|name| check_name(Kind::Entity, name))
    {
        return Err(TokenRequestError::Invalid(format!("replace: {problem}")));
    }
    Ok(JoinTokenSpec {
        ttl_seconds,
        uses,
        subscriptions,
        namespace,
        replace: request.replace,
        pin_subscriptions: request.pin_subscriptions,
    })
}

/// Sensu's rule for subscription names, which it shares with RBAC names.
fn subscription_problem(subscription: &str) -> Option<String> {
    check_name(Kind::Role, subscription)
}

/// `len` characters drawn uniformly from `alphabet` (at most 256 symbols) with the operating
/// system's random number generator.
pub(crate) fn random_string(len: usize, alphabet: &[u8]) -> Result<String, getrandom::Error> {
    let symbols = alphabet.len().clamp(1, 256);
    // Bytes at or above this bound are dropped so that every symbol is equally likely.
    let bound = 256 - 256 % symbols;
    let mut out = String::with_capacity(len);
    let mut buffer = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buffer)?;
        for byte in buffer {
            let byte = usize::from(byte);
            if byte < bound && out.len() < len {
                out.push(char::from(alphabet[byte % symbols]));
            }
        }
    }
    Ok(out)
}

pub(crate) fn token_key(id: &str) -> String {
    format!("{}{id}", keyspace::JOIN_TOKENS)
}

pub(crate) fn decode_record(key: &str, value: &[u8]) -> Result<JoinTokenRecord, ConsumeError> {
    serde_json::from_slice(value)
        .map_err(|err| ConsumeError::Store(format!("join token record {key} is unreadable: {err}")))
}

/// Reads a token and checks it without using it.
///
/// # Errors
/// [`ConsumeError::Refused`] for a bad token; store failures.
pub(crate) async fn peek_join_token(
    store: &dyn Store,
    token: &JoinToken,
    now: u64,
) -> Result<JoinTokenRecord, ConsumeError> {
    let key = token_key(&token.id);
    let entry = store
        .get(&key)
        .await
        .map_err(|err| ConsumeError::Store(err.to_string()))?
        .ok_or_else(|| TokenRefusal::Unknown(token.id.clone()))?;
    let record = decode_record(&key, &entry.value)?;
    check_token(&token.id, &record, &token.secret, now)?;
    Ok(record)
}

/// Uses a token once: checks it and decrements its uses with a write guarded by the revision it
/// read, so that of two concurrent bootstraps only one gets the last use. Returns the record
/// after the decrement.
///
/// # Errors
/// [`ConsumeError::Refused`] for a bad, expired or used-up token (nothing is written);
/// [`ConsumeError::Contended`] when the token kept changing; store failures.
pub(crate) async fn consume_join_token(
    store: &dyn Store,
    token: &JoinToken,
    now: u64,
) -> Result<JoinTokenRecord, ConsumeError> {
    let key = token_key(&token.id);
    for _ in 0..TOKEN_WRITE_ATTEMPTS {
        let entry = store
            .get(&key)
            .await
            .map_err(|err| ConsumeError::Store(err.to_string()))?
            .ok_or_else(|| TokenRefusal::Unknown(token.id.clone()))?;
        let mut record = decode_record(&key, &entry.value)?;
        check_token(&token.id, &record, &token.secret, now)?;
        record.uses_left -= 1;
        let value = serde_json::to_vec(&record)
            .map_err(|err| ConsumeError::Store(format!("cannot encode {key}: {err}")))?;
        match store
            .put(&key, value, Precondition::Revision(entry.mod_revision))
            .await
        {
            Ok(_) => return Ok(record),
            Err(StoreError::PreconditionFailed { .. }) => {
                tracing::debug!(token_id = %token.id, "join token changed while in use; retrying");
            }
            Err(err) => return Err(ConsumeError::Store(err.to_string())),
        }
    }
    Err(ConsumeError::Contended(token.id.clone()))
}

#[cfg(test)]
/// Removes join tokens past their grace period; returns how many.
///
/// # Errors
/// A store failure.
pub(crate) async fn sweep_expired_tokens(store: &dyn Store, now: u64) -> Result<usize, StoreError> {
    crate::store::sweep::delete_expired(store, keyspace::JOIN_TOKENS, now, join_token_expired).await
}

fn join_token_expired(value: &[u8], now: u64) -> Option<bool> {
    let record = serde_json::from_slice::<JoinTokenRecord>(value).ok()?;
    Some(record.expires_at.saturating_add(EXPIRED_TOKEN_GRACE_SECS) <= now)
}

/// Starts the task that sweeps expired join tokens every hour.
pub(crate) fn spawn_token_sweeper(store: Arc<dyn Store>) -> JoinHandle<()> {
    crate::store::sweep::spawn_sweeper(
        store,
        "join tokens",
        keyspace::JOIN_TOKENS,
        TOKEN_SWEEP_INTERVAL,
        join_token_expired,
    )
}

/// The refusal of a bootstrap over a live certificate: what it is and the two ways forward.
pub(crate) fn live_certificate_refusal(
    namespace: &str,
    name: &str,
    current: &CertRecord,
) -> String {
    format!(
        "entity \"{namespace}/{name}\" already has a live certificate (serial {}, valid until {}); \
         to enrol this host in its place, revoke it first (cairnctl agent revoke {name} --namespace {namespace}) \
         or mint a join token with --replace {name}",
        current.serial, current.not_after
    )
}

// ------------------------------------------------------------------------------------------
// Certificate records
// ------------------------------------------------------------------------------------------

/// An entity's current certificate, as stored at `agents/certs/<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CertRecord {
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of its DER, lowercase hex.
    pub fingerprint: String,
    /// When it was issued, unix seconds.
    pub issued_at: i64,
    /// When it expires (`notAfter`), unix seconds.
    pub not_after: i64,
    /// The join token the entity enrolled with.
    pub token_id: String,
    /// The only subscriptions the agent may claim (besides `entity:<name>`), when its token
    /// pinned them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_subscriptions: Option<Vec<String>>,
}

impl CertRecord {
    /// Whether the recorded certificate still works at `now`: not expired, not revoked.
    pub(crate) fn is_live(&self, revocation: Option<&Revocation>, now: i64) -> bool {
        self.not_after > now
            && !revocation
                .is_some_and(|revocation| revocation.refuses(self.issued_at, &self.fingerprint))
    }

    /// How a revocation names this certificate.
    pub(crate) fn certificate(&self) -> CertRef {
        CertRef {
            serial: self.serial.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

fn cert_record_key(namespace: &str, name: &str) -> String {
    format!("{}{namespace}/{name}", keyspace::AGENT_CERTS)
}

/// The certificate record of an entity and its revision, if any.
///
/// # Errors
/// Store failures, and an unreadable record (as [`StoreError::Backend`]).
pub(crate) async fn load_cert_record(
    store: &dyn Store,
    namespace: &str,
    name: &str,
) -> Result<Option<(CertRecord, Revision)>, StoreError> {
    let key = cert_record_key(namespace, name);
    let Some(entry) = store.get(&key).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&entry.value).map_err(|err| {
        StoreError::Backend(format!("certificate record {key} is unreadable: {err}").into())
    })?;
    Ok(Some((record, entry.mod_revision)))
}

/// Writes an entity's certificate record, guarded by the revision of `previous` (or its
/// absence); returns the revision written.
///
/// # Errors
/// [`StoreError::PreconditionFailed`] when someone else wrote it since it was read.
pub(crate) async fn put_cert_record(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    record: &CertRecord,
    previous: &Option<(CertRecord, Revision)>,
) -> Result<Revision, StoreError> {
    let precondition = match previous {
        Some((_, revision)) => Precondition::Revision(*revision),
        None => Precondition::Absent,
    };
    let value = serde_json::to_vec(record).map_err(|err| {
        StoreError::Backend(format!("cannot encode a certificate record: {err}").into())
    })?;
    store
        .put(&cert_record_key(namespace, name), value, precondition)
        .await
}

/// Puts back the record `written` replaced (or removes it), unless it changed again since.
pub(crate) async fn restore_cert_record(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    previous: Option<&(CertRecord, Revision)>,
    written: Revision,
) {
    let key = cert_record_key(namespace, name);
    let guard = Precondition::Revision(written);
    let undone = match previous {
        Some((record, _)) => match serde_json::to_vec(record) {
            Ok(value) => store.put(&key, value, guard).await.map(|_| ()),
            Err(err) => Err(StoreError::Backend(Box::new(err))),
        },
        None => store.delete(&key, guard).await.map(|_| ()),
    };
    if let Err(err) = undone {
        tracing::warn!(namespace, entity = name, error = %err, "cannot restore the certificate record");
    }
}

/// The stored revocation of an entity, read from the store (not the view).
///
/// # Errors
/// Store failures.
pub(crate) async fn load_revocation(
    store: &dyn Store,
    namespace: &str,
    name: &str,
) -> Result<Option<Revocation>, StoreError> {
    let key = revocation_key(namespace, name);
    Ok(store
        .get(&key)
        .await?
        .and_then(|entry| decode_revocation(&key, &entry.value).map(|(_, revocation)| revocation)))
}

/// Adds certificates to an entity's revocation (creating it, or raising its `revoked_at` to at
/// least `revoked_at`), with a write guarded by the revision read; returns what was stored and
/// its revision.
///
/// # Errors
/// Store failures, or a revocation that kept changing.
pub(crate) async fn merge_revocation(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    revoked_at: i64,
    by: &str,
    certificates: &[CertRef],
) -> Result<(Revocation, Revision), StoreError> {
    let key = revocation_key(namespace, name);
    for _ in 0..TOKEN_WRITE_ATTEMPTS {
        let entry = store.get(&key).await?;
        let (mut revocation, precondition) = match &entry {
            Some(entry) => match decode_revocation(&key, &entry.value) {
                Some((_, revocation)) => (revocation, Precondition::Revision(entry.mod_revision)),
                None => (
                    Revocation::new(revoked_at, by),
                    Precondition::Revision(entry.mod_revision),
                ),
            },
            None => (Revocation::new(revoked_at, by), Precondition::Absent),
        };
        if revocation.revoked_at < revoked_at {
            revocation.revoked_at = revoked_at;
            by.clone_into(&mut revocation.by);
        }
        for certificate in certificates {
            if !revocation.certificates.contains(certificate) {
                revocation.certificates.push(certificate.clone());
            }
        }
        let value = serde_json::to_vec(&revocation).map_err(|err| {
            StoreError::Backend(format!("cannot encode a revocation: {err}").into())
        })?;
        match store.put(&key, value, precondition).await {
            Ok(revision) => return Ok((revocation, revision)),
            Err(StoreError::PreconditionFailed { .. }) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Backend(
        format!("revocation {key} kept changing under concurrent writes").into(),
    ))
}

/// Revokes the certificate a `replace` bootstrap replaced (and every older one), dropping its
/// live session on every backend.
pub(crate) async fn retire_replaced(
    store: &Arc<dyn Store>,
    namespace: &str,
    name: &str,
    replaced: &CertRecord,
    by: &str,
) -> Result<(), StoreError> {
    merge_revocation(
        store.as_ref(),
        namespace,
        name,
        replaced.issued_at,
        by,
        &[replaced.certificate()],
    )
    .await?;
    tracing::info!(namespace, entity = name, serial = %replaced.serial, "replaced agent certificate revoked");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Revocations
// ------------------------------------------------------------------------------------------

/// A certificate as a revocation names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CertRef {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
}

/// A revocation as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Revocation {
    /// Certificates of the entity issued at or before this moment (unix seconds) are refused.
    pub revoked_at: i64,
    /// The user who revoked it.
    pub by: String,
    /// The certificates it names, refused whatever their issue time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertRef>,
}

impl Revocation {
    /// A revocation at `revoked_at` by `by`, naming no certificate yet.
    pub(crate) fn new(revoked_at: i64, by: &str) -> Revocation {
        Revocation {
            revoked_at,
            by: by.to_owned(),
            certificates: Vec::new(),
        }
    }

    /// Whether it refuses the certificate issued at `issued_at` with this fingerprint.
    pub(crate) fn refuses(&self, issued_at: i64, fingerprint: &str) -> bool {
        is_revoked(issued_at, self.revoked_at)
            || self
                .certificates
                .iter()
                .any(|certificate| certificate.fingerprint == fingerprint)
    }
}

/// When a certificate was issued, from its `notBefore` (unix seconds).
pub(crate) fn issued_at(not_before: i64) -> i64 {
    not_before.saturating_add(PKI_NOT_BEFORE_BACKDATE_SECS)
}

/// Whether a revocation at `revoked_at` refuses a certificate issued at `issued_at`: every
/// certificate issued in the same second or before is refused.
pub(crate) fn is_revoked(issued_at: i64, revoked_at: i64) -> bool {
    issued_at <= revoked_at
}

/// Called with every revocation the view learns (and all of them again after a reload).
pub(crate) type RevocationHook = Arc<dyn Fn(&EntityId, &Revocation) + Send + Sync>;

/// The revocations in the store, kept in memory by a watch.
pub(crate) struct Revocations {
    entries: RwLock<HashMap<EntityId, Revocation>>,
    applied: watch::Sender<Revision>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("entries", &self.entries.read().len())
            .field("applied", &*self.applied.borrow())
            .finish()
    }
}

impl Revocations {
    /// A view with no revocation and no watch (tests, tools).
    pub(crate) fn empty() -> Arc<Revocations> {
        let (applied, _) = watch::channel(0);
        Arc::new(Revocations {
            entries: RwLock::new(HashMap::new()),
            applied,
        })
    }

    /// Loads the revocations and starts the task that keeps the view current; `hook` hears of
    /// each one (the agent listener drops the sessions it revokes).
    ///
    /// # Errors
    /// When the initial load fails.
    pub(crate) async fn start(
        store: Arc<dyn Store>,
        hook: RevocationHook,
    ) -> Result<(Arc<Revocations>, JoinHandle<()>), StoreError> {
        let view = Revocations::empty();
        let revision = view.reload(store.as_ref(), &hook).await?;
        let reflector =
            Reflector::new(store, keyspace::AGENT_REVOCATIONS, "revocations").loaded_at(revision);
        let reflected = Reflected {
            view: Arc::clone(&view),
            hook,
        };
        // The view lives as long as the backend: the task is aborted, not asked, at shutdown.
        let (_, never) = crate::shutdown::channel();
        let task = tokio::spawn(reflector.run(reflected, never));
        Ok((view, task))
    }

    /// The revocation of an entity, if any.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Revocation> {
        self.entries
            .read()
            .get(&EntityId::new(namespace, name))
            .cloned()
    }

    /// Whether the certificate of this entity issued at `issued_at` with `fingerprint` is
    /// revoked.
    pub(crate) fn revokes(
        &self,
        namespace: &str,
        name: &str,
        issued_at: i64,
        fingerprint: &str,
    ) -> bool {
        self.get(namespace, name)
            .is_some_and(|revocation| revocation.refuses(issued_at, fingerprint))
    }

    #[cfg(test)]
    /// Adds a revocation by hand (tests; the watch does this in a running backend).
    pub(crate) fn insert(&self, id: EntityId, revocation: Revocation) {
        self.entries.write().insert(id, revocation);
    }

    /// Waits (bounded) until the view includes `revision`.
    pub(crate) async fn wait_for(&self, revision: Revision) {
        let mut applied = self.applied.subscribe();
        let caught_up = tokio::time::timeout(
            REVOCATION_CATCH_UP,
            applied.wait_for(|seen| *seen >= revision),
        );
        if caught_up.await.is_err() {
            tracing::warn!(revision, "revocation view did not catch up in time");
        }
    }

    async fn reload(
        &self,
        store: &dyn Store,
        hook: &RevocationHook,
    ) -> Result<Revision, StoreError> {
        let page = store.list(keyspace::AGENT_REVOCATIONS, None, 0).await?;
        let mut entries = HashMap::with_capacity(page.entries.len());
        for entry in &page.entries {
            if let Some((id, revocation)) = decode_revocation(&entry.key, &entry.value) {
                entries.insert(id, revocation);
            }
        }
        *self.entries.write() = entries.clone();
        self.applied.send_replace(page.revision);
        // A revocation missed while the watch was down still drops its sessions.
        for (id, revocation) in &entries {
            hook(id, revocation);
        }
        Ok(page.revision)
    }

    fn apply(&self, event: &WatchEvent, hook: &RevocationHook) {
        match event {
            WatchEvent::Put(entry) => {
                if let Some((id, revocation)) = decode_revocation(&entry.key, &entry.value) {
                    self.entries.write().insert(id.clone(), revocation.clone());
                    tracing::info!(
                        namespace = %id.namespace,
                        entity = %id.name,
                        revoked_at = revocation.revoked_at,
                        by = %revocation.by,
                        "agent certificates revoked"
                    );
                    // The view first, then the hook: a session registering meanwhile checks the
                    // view after registering, so one of the two always sees the other.
                    hook(&id, &revocation);
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let Some(id) = revocation_id(key) {
                    self.entries.write().remove(&id);
                }
            }
        }
        self.applied.send_replace(event.revision());
    }
}

/// The revocation view as the reflector keeps it.
struct Reflected {
    view: Arc<Revocations>,
    hook: RevocationHook,
}

#[async_trait::async_trait]
impl View for Reflected {
    async fn reload(&mut self, store: &dyn Store) -> Result<Revision, StoreError> {
        self.view.reload(store, &self.hook).await
    }

    fn apply(&mut self, change: &WatchEvent) {
        self.view.apply(change, &self.hook);
    }
}

fn revocation_key(namespace: &str, name: &str) -> String {
    format!("{}{namespace}/{name}", keyspace::AGENT_REVOCATIONS)
}

fn revocation_id(key: &str) -> Option<EntityId> {
    let (namespace, name) = key
        .strip_prefix(keyspace::AGENT_REVOCATIONS)?
        .split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/'))
        .then(|| EntityId::new(namespace, name))
}

fn decode_revocation(key: &str, value: &[u8]) -> Option<(EntityId, Revocation)> {
    let Some(id) = revocation_id(key) else {
        tracing::warn!(key, "revocation key not understood; ignored");
        return None;
    };
    match serde_json::from_slice(value) {
        Ok(revocation) => Some((id, revocation)),
        Err(err) => {
            tracing::error!(key, error = %err, "unreadable revocation; ignored");
            None
        }
    }
}

/// Waits until the clock is past a revocation of this entity made in the current second, so
/// that a certificate signed next is newer than the revocation (at most about a second).
pub(crate) async fn wait_past_revocation(revocations: &Revocations, namespace: &str, name: &str) {
    if let Some(revocation) = revocations.get(namespace, name) {
        wait_past(revocation.revoked_at).await;
    }
}

/// Waits until the clock is past the second `moment` (unix seconds), when that is at most a
/// few seconds ahead.
pub(crate) async fn wait_past(moment: i64) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if seconds > moment {
            return;
        }
        if moment.saturating_sub(seconds) > 5 {
            // Dated in the future (another backend's clock): do not wait for it.
            tracing::warn!(
                moment,
                "a revocation is dated in the future; this backend's clock may be behind"
            );
            return;
        }
        let to_next_second = Duration::from_secs(1)
            .saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
        tokio::time::sleep(to_next_second + Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::RedbStore;

    /// Agent CA material over a new CA, and a CSR for a new key.
    pub(crate) fn pki_and_csr() -> (AgentPki, String) {
        let ca = pki::generate_ca("agent CA").unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let pki = AgentPki::from_parts(ca.clone(), ca.cert_pem.clone(), "00".repeat(32));
        (pki, csr)
    }

    fn record(secret: &str, expires_at: u64, uses_left: u32) -> JoinTokenRecord {
        JoinTokenRecord {
            digest: secret_digest(secret),
            namespace: "default".into(),
            subscriptions: vec!["linux".into()],
            expires_at,
            uses_left,
            created_by: "admin".into(),
            created_at: 1,
            replace: None,
            pin_subscriptions: false,
        }
    }

    fn token(id: &str, secret: &str) -> JoinToken {
        JoinToken {
            id: id.into(),
            secret: secret.into(),
            ca_fingerprint: "ab".repeat(32),
        }
    }

    #[test]
    fn digest_is_sha256_hex_and_comparison_is_exact() {
        assert_eq!(
            secret_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq(b"same", b"same"));
        assert!(!constant_time_eq(b"same", b"sane"));
        assert!(!constant_time_eq(b"same", b"same!"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn token_rules_check_the_secret_first_then_expiry_then_uses() {
        let secret = "s".repeat(48);
        let good = record(&secret, 1_000, 1);
        assert_eq!(check_token("t1", &good, &secret, 999), Ok(()));
        // Wrong secret wins over everything else: nobody without it learns more.
        let stale = record(&secret, 10, 0);
        assert_eq!(
            check_token("t1", &stale, &"x".repeat(48), 999),
            Err(TokenRefusal::WrongSecret("t1".into()))
        );
        assert_eq!(
            check_token("t1", &good, &secret, 1_000),
            Err(TokenRefusal::Expired("t1".into()))
        );
        assert_eq!(
            check_token("t1", &record(&secret, 1_000, 0), &secret, 999),
            Err(TokenRefusal::UsedUp("t1".into()))
        );
        assert_eq!(
            check_token("t1", &stale, &secret, 999),
            Err(TokenRefusal::Expired("t1".into()))
        );
        for (refusal, phrase) in [
            (TokenRefusal::Expired("t1".into()), "join token expired"),
            (TokenRefusal::UsedUp("t1".into()), "join token used up"),
            (
                TokenRefusal::OtherCluster,
                "join token is for another cluster",
            ),
        ] {
            assert!(refusal.to_string().starts_with(phrase), "{refusal}");
        }
        assert!(!format!("{:?}", TokenRefusal::WrongSecret("t1".into())).contains(&secret));
    }

    #[test]
    fn random_strings_use_their_alphabet_and_parse_as_tokens() {
        let secret = random_string(SECRET_LEN, SECRET_ALPHABET).unwrap();
        let id = random_string(ID_LEN, ID_ALPHABET).unwrap();
        assert_eq!(secret.len(), SECRET_LEN);
        assert_eq!(id.len(), ID_LEN);
        assert!(secret.bytes().all(|byte| byte.is_ascii_alphanumeric()));
        assert!(id
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit()));
        assert_ne!(secret, random_string(SECRET_LEN, SECRET_ALPHABET).unwrap());
        let token = JoinToken {
            id,
            secret,
            ca_fingerprint: "0f".repeat(32),
        };
        assert_eq!(JoinToken::parse(&token.encode()).unwrap(), token);
    }

    #[test]
    fn create_requests_are_validated() {
        let exists = |namespace: &str| namespace == "default" || namespace == "prod";
        let spec = validate_create(CreateJoinToken::default(), exists).unwrap();
        assert_eq!(
            spec,
            JoinTokenSpec {
                ttl_seconds: 3600,
                uses: 1,
                subscriptions: Vec::new(),
                namespace: "default".into(),
                replace: None,
                pin_subscriptions: false,
            }
        );
        let spec = validate_create(
            CreateJoinToken {
                ttl_seconds: Some(60),
                uses: Some(10_000),
                subscriptions: vec!["linux".into(), "entity:web".into(), "linux".into()],
                namespace: Some("prod".into()),
                replace: Some("web".into()),
                pin_subscriptions: true,
            },
            exists,
        )
        .unwrap();
        assert_eq!(spec.subscriptions, ["linux", "entity:web"]);
        assert_eq!(spec.replace.as_deref(), Some("web"));
        assert!(spec.pin_subscriptions);
        let refused =
            |request: CreateJoinToken| validate_create(request, exists).unwrap_err().to_string();
        assert!(refused(CreateJoinToken {
            ttl_seconds: Some(59),
            ..CreateJoinToken::default()
        })
        .starts_with("ttl_seconds: 59 is out of range"));
        assert!(refused(CreateJoinToken {
            ttl_seconds: Some(MAX_TOKEN_TTL_SECS + 1),
            ..CreateJoinToken::default()
        })
        .starts_with("ttl_seconds"));
        assert!(refused(CreateJoinToken {
            uses: Some(0),
            ..CreateJoinToken::default()
        })
        .starts_with("uses: 0 is out of range"));
        assert!(refused(CreateJoinToken {
            uses: Some(10_001),
            ..CreateJoinToken::default()
        })
        .starts_with("uses"));
        assert_eq!(
            refused(CreateJoinToken {
                namespace: Some("nope".into()),
                ..CreateJoinToken::default()
            }),
            "namespace \"nope\" not found"
        );
        assert!(refused(CreateJoinToken {
            subscriptions: vec!["ok".into(), "not ok".into()],
            ..CreateJoinToken::default()
        })
        .starts_with("subscriptions[1]: "));
        assert!(refused(CreateJoinToken {
            replace: Some("a b".into()),
            ..CreateJoinToken::default()
        })
        .starts_with("replace: "));
        assert!(serde_json::from_str::<CreateJoinToken>(r#"{"ttl": 5}"#).is_err());
    }

    #[test]
    fn revocation_refuses_certificates_issued_up_to_its_second() {
        assert!(is_revoked(100, 100));
        assert!(is_revoked(99, 100));
        assert!(!is_revoked(101, 100));
        assert_eq!(issued_at(1_000), 1_300);
        let view = Revocations::empty();
        let mut revocation = Revocation::new(500, "admin");
        revocation.certificates.push(CertRef {
            serial: "0a".into(),
            fingerprint: "named".into(),
        });
        view.insert(EntityId::new("default", "web"), revocation.clone());
        assert!(view.revokes("default", "web", 500, "other"));
        assert!(!view.revokes("default", "web", 501, "other"));
        assert!(
            view.revokes("default", "web", 900, "named"),
            "a named certificate is refused whatever its issue time"
        );
        assert!(!view.revokes("prod", "web", 1, "named"));
        // A certificate record is live until it expires or a revocation covers it.
        let record = CertRecord {
            serial: "0b".into(),
            fingerprint: "current".into(),
            issued_at: 600,
            not_after: 1_000,
            token_id: "t".into(),
            pinned_subscriptions: None,
        };
        assert!(record.is_live(None, 999));
        assert!(!record.is_live(None, 1_000));
        assert!(record.is_live(Some(&revocation), 999));
        assert!(!record.is_live(Some(&Revocation::new(600, "admin")), 999));
        revocation.certificates.push(record.certificate());
        assert!(!record.is_live(Some(&revocation), 999));
        assert_eq!(
            revocation_id("agents/revoked/default/web"),
            Some(EntityId::new("default", "web"))
        );
        assert_eq!(revocation_id("agents/revoked/default"), None);
        assert_eq!(revocation_id("agents/revoked/default/a/b"), None);
    }

    /// The issue time read back from a freshly signed certificate is now: `pki` back-dates
    /// `notBefore` by exactly [`PKI_NOT_BEFORE_BACKDATE_SECS`].
    #[test]
    fn signed_certificates_give_back_their_issue_time() {
        let (pki, csr) = pki_and_csr();
        let before = i64::try_from(crate::clock::unix_now_u64()).unwrap();
        let issued = pki.sign(&csr, "dev", "web-01").unwrap();
        let after = i64::try_from(crate::clock::unix_now_u64()).unwrap();
        assert_eq!(issued.identity.namespace, Ok("dev".to_owned()));
        assert_eq!(
            issued.identity.fingerprint,
            pki::fingerprint_sha256(&issued.cert_pem).unwrap()
        );
        let record = issued.record("tok", Some(vec!["linux".into()]));
        assert_eq!(record.issued_at, issued.identity.issued_at());
        assert_eq!(record.token_id, "tok");
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        let parsed = pem.parse_x509().unwrap();
        let issued = issued_at(parsed.validity().not_before.timestamp());
        assert!(
            (before..=after).contains(&issued),
            "{before} {issued} {after}"
        );
        let lifetime =
            parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
        assert_eq!(
            lifetime,
            i64::try_from(AGENT_CERT_VALIDITY.as_secs()).unwrap() + PKI_NOT_BEFORE_BACKDATE_SECS
        );
        let err = pki.sign("garbage", "dev", "web-01").unwrap_err();
        assert!(describe_pki_error(&err).starts_with("certificate signing request is invalid"));
    }

    #[tokio::test]
    async fn a_token_is_used_at_most_uses_times_even_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("s.redb")).unwrap());
        let secret = "k".repeat(48);
        let put = |id: &str, record: JoinTokenRecord| {
            let store = Arc::clone(&store);
            let key = token_key(id);
            async move {
                store
                    .put(
                        &key,
                        serde_json::to_vec(&record).unwrap(),
                        Precondition::None,
                    )
                    .await
                    .unwrap()
            }
        };
        put("one", record(&secret, u64::MAX, 1)).await;
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                let token = token("one", &secret);
                tokio::spawn(async move { consume_join_token(store.as_ref(), &token, 10).await })
            })
            .collect();
        let mut used = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(record) => {
                    assert_eq!(record.uses_left, 0);
                    used += 1;
                }
                Err(ConsumeError::Refused(TokenRefusal::UsedUp(_))) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(used, 1);

        // Refusals write nothing.
        put("two", record(&secret, 100, 3)).await;
        let before = store.get(&token_key("two")).await.unwrap().unwrap();
        for (token, now) in [
            (token("two", &"w".repeat(48)), 10),
            (token("two", &secret), 100),
            (token("missing", &secret), 10),
        ] {
            assert!(consume_join_token(store.as_ref(), &token, now)
                .await
                .is_err());
        }
        let after = store.get(&token_key("two")).await.unwrap().unwrap();
        assert_eq!(before, after);
        assert!(matches!(
            consume_join_token(store.as_ref(), &token("missing", &secret), 10).await,
            Err(ConsumeError::Refused(TokenRefusal::Unknown(_)))
        ));
        let left = consume_join_token(store.as_ref(), &token("two", &secret), 10)
            .await
            .unwrap();
        assert_eq!(left.uses_left, 2);

        // The sweeper removes tokens a day past their expiry only.
        assert_eq!(sweep_expired_tokens(store.as_ref(), 100).await.unwrap(), 0);
        let removed = sweep_expired_tokens(store.as_ref(), 100 + EXPIRED_TOKEN_GRACE_SECS)
            .await
            .unwrap();
        assert_eq!(removed, 1);
        assert!(store.get(&token_key("two")).await.unwrap().is_none());
        assert!(store.get(&token_key("one")).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_view_follows_the_store_and_calls_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("s.redb")).unwrap());
        let early = Revocation::new(10, "admin");
        store
            .put(
                &revocation_key("default", "old"),
                serde_json::to_vec(&early).unwrap(),
                Precondition::None,
            )
            .await
            .unwrap();
        let heard = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let hook: RevocationHook = {
            let heard = Arc::clone(&heard);
            Arc::new(move |id: &EntityId, revocation: &Revocation| {
                heard.lock().push((id.clone(), revocation.revoked_at));
            })
        };
        let (view, task) = Revocations::start(Arc::clone(&store), hook).await.unwrap();
        assert!(view.revokes("default", "old", 10, "f"));
        let revision = store
            .put(
                &revocation_key("prod", "web"),
                serde_json::to_vec(&Revocation::new(20, "admin")).unwrap(),
                Precondition::None,
            )
            .await
            .unwrap();
        view.wait_for(revision).await;
        assert!(view.revokes("prod", "web", 20, "f"));
        assert_eq!(
            *heard.lock(),
            [
                (EntityId::new("default", "old"), 10),
                (EntityId::new("prod", "web"), 20)
            ]
        );
        let revision = store
            .delete(&revocation_key("prod", "web"), Precondition::None)
            .await
            .unwrap()
            .unwrap();
        view.wait_for(revision).await;
        assert!(!view.revokes("prod", "web", 20, "f"));
        task.abort();
    }

    #[test]
    fn agent_urls_come_from_the_flag_the_bound_address_or_the_request_host() {
        let bound = |text: &str| text.parse::<SocketAddr>().unwrap();
        // --agent-advertise-url wins over everything, whatever the request says.
        let advertised = AgentUrls::check_advertised(&[
            "wss://agents.example.com:443/".into(),
            "wss://10.0.0.9:8081".into(),
        ])
        .unwrap();
        let urls = AgentUrls::new(advertised, bound("0.0.0.0:40000"));
        let expected = ["wss://agents.example.com:443", "wss://10.0.0.9:8081"];
        assert_eq!(urls.for_request(Some("evil.example:1")), expected);
        assert_eq!(urls.for_request(None), expected);
        // A listener on one address: that address and its real port.
        let urls = AgentUrls::new(Vec::new(), bound("127.0.0.1:41234"));
        assert_eq!(urls, AgentUrls::Fixed(vec!["wss://127.0.0.1:41234".into()]));
        assert_eq!(
            urls.for_request(Some("localhost:8080")),
            ["wss://127.0.0.1:41234"]
        );
        let urls = AgentUrls::new(Vec::new(), bound("[fd00::5]:8081"));
        assert_eq!(urls.for_request(None), ["wss://[fd00::5]:8081"]);
        // On every address: the host the request reached, the port replaced by the listener's.
        for any in ["0.0.0.0:39001", "[::]:39001"] {
            let urls = AgentUrls::new(Vec::new(), bound(any));
            assert_eq!(urls, AgentUrls::RequestHost { port: 39001 });
            assert_eq!(
                urls.for_request(Some("Cairn.Example.COM:8080")),
                ["wss://cairn.example.com:39001"]
            );
            assert_eq!(
                urls.for_request(Some("cairn.example.com.")),
                ["wss://cairn.example.com:39001"]
            );
            assert_eq!(
                urls.for_request(Some("192.0.2.7:8080")),
                ["wss://192.0.2.7:39001"]
            );
            assert_eq!(
                urls.for_request(Some("[2001:DB8::1]:8080")),
                ["wss://[2001:db8::1]:39001"]
            );
            assert_eq!(urls.for_request(Some("[::1]")), ["wss://[::1]:39001"]);
            // No host, or an unusable one: no URL, and the agent guesses.
            assert!(urls.for_request(None).is_empty());
            assert!(urls.for_request(Some("user@host:8080")).is_empty());
        }
        assert!(AgentUrls::Unknown.for_request(Some("h:1")).is_empty());
        assert!(AgentUrls::RequestHost { port: 1 }
            .describe()
            .ends_with(":1"));
    }

    #[test]
    fn forged_hosts_name_no_agent_url() {
        let urls = AgentUrls::RequestHost { port: 8081 };
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = vec!["abcdefghi"; 26].join(".");
        let long_authority = format!("{}:8080", "a".repeat(300));
        for bad in [
            "",
            ":8080",
            "host:",
            "host:port",
            "host:+80",
            "host:65536",
            "host:80:80",
            "user@host",
            "user:pw@host:8080",
            "a b",
            "host/path",
            "host?x",
            "host#x",
            "-host",
            "host-",
            "ho_st",
            "a..b",
            ".host",
            "1.2.3",
            "999.1.1.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "[::]",
            "[ff02::1]:80",
            "[::1",
            "[::1]x",
            "[not-ip]:80",
            "::1",
            "hôst.example",
            "host\u{0}x",
            "%68ost",
            long_label.as_str(),
            long_name.as_str(),
            long_authority.as_str(),
        ] {
            assert_eq!(request_host(bad), None, "{bad:?}");
            assert!(urls.for_request(Some(bad)).is_empty(), "{bad:?}");
        }
        // The longest legal name still fits.
        let longest = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(longest.len(), 253);
        assert_eq!(
            request_host(&format!("{longest}:8080")),
            Some(longest.clone())
        );
        assert_eq!(request_host(&format!("{longest}x")), None);
        assert_eq!(
            request_host("xn--bcher-kva.example:443").as_deref(),
            Some("xn--bcher-kva.example")
        );
    }

    #[test]
    fn advertised_urls_are_checked() {
        let check = |urls: &[&str]| {
            AgentUrls::check_advertised(
                &urls.iter().map(|url| (*url).to_owned()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(check(&[]), Ok(Vec::new()));
        for (bad, phrase) in [
            ("https://h:8081", "must be a wss:// URL"),
            ("wss://user:pw@h:8081", "must not carry credentials"),
            ("not a url", "is not a URL"),
        ] {
            let err = check(&["wss://good:1", bad]).unwrap_err();
            assert!(err.starts_with("--agent-advertise-url: "), "{err}");
            assert!(err.contains(phrase), "{err}");
        }
        let long = format!("wss://{}:1", "a".repeat(2000));
        assert!(check(&[&long])
            .unwrap_err()
            .contains("longer than 1024 bytes"));
        let many = vec!["wss://h:1"; MAX_AGENT_URLS + 1];
        assert!(check(&many).unwrap_err().contains("at most 16 URLs"));
        assert_eq!(check(&vec!["wss://h:1"; MAX_AGENT_URLS]).unwrap().len(), 16);
    }

    #[test]
    fn bootstrap_path_is_outside_the_resource_routes() {
        assert!(cairn_api::agent::BOOTSTRAP_PATH.starts_with("/api/cairn/v1/"));
        assert_eq!(token_key("abc"), "agents/jointokens/abc");
        assert_eq!(revocation_key("ns", "n"), "agents/revoked/ns/n");
        assert_eq!(cert_record_key("ns", "n"), "agents/certs/ns/n");
    }
}
