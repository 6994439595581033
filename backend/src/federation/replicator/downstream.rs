//! The downstream side of a replicator: listing its copies, writing and deleting one resource
//! through the downstream's REST API, and the rule that nothing without this replicator's
//! label is ever overwritten or deleted.
//!
//! [`Downstream`] is the interface the worker uses; [`HttpDownstream`] speaks the REST API
//! through a [`ClusterClient`] with a short-lived token of the replication identity, and the
//! unit tests use an in-memory fake.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use cairn_api::meta::LABEL_REPLICATED_FROM;
use cairn_api::model::Cluster;
use cairn_api::{Kind, Resource};

use super::plan::{key_of, Change, Desired};
use crate::auth::{AccessToken, Grant, TokenIssuer};
use crate::federation::budget::{Budget, Share, REQUEST_LIMIT};
use crate::federation::client::{
    encode, encode_query, error_message, ClusterClient, ClusterError, Listing, RESPONSE_LIMIT,
};

/// The identity replicators write as: every cluster of the federation grants its group
/// (`cluster-admins`) the `cluster-admin` role.
pub(crate) const REPLICATOR_USERNAME: &str = "cairn:replicator";

/// How long a replication token lives (Sensu's access token lifetime). Each is meant for its
/// one downstream (`aud`), so no other cluster accepts it.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// A token is minted again when it has less than this left, so that no request carries one
/// that expires on the way.
const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(60);

/// Resources per page when listing the downstream's copies (fewer for a page over
/// [`RESPONSE_LIMIT`]: see [`ClusterClient::list`]).
const LIST_PAGE: usize = 1000;

/// Why a downstream request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DownstreamError {
    /// A create found a resource of that name already there (409). Expected; the caller looks
    /// at its label before doing anything else.
    #[error("already exists")]
    Exists,
    /// The downstream refused this one resource (a 4xx other than 401, 403, 408 and 429: an
    /// invalid spec, a missing namespace, a conflict). Expected; a retry does not help until
    /// something changes, so it is recorded per resource and the rest go on.
    #[error("{status}: {message}")]
    Rejected {
        /// The HTTP status, or 409 for a conflict found here.
        status: u16,
        /// What the downstream (or the conflict check) said.
        message: String,
    },
    /// The downstream as a whole cannot take writes now: unreachable (a TLS failure
    /// included), the replication token refused (401/403), overloaded (408/429), failing
    /// (5xx), or an answer that is not understood. A retry after a backoff may help.
    #[error("{0}")]
    Unavailable(String),
}

/// What a downstream resource of a given name is, as far as replication is concerned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Existing {
    /// There is none.
    Missing,
    /// It carries the replication label with this value.
    Labelled(String),
    /// It carries no replication label: the downstream's own, never touched. With its spec
    /// when it could be read, so that one identical to the source (a default role every
    /// cluster seeds) counts as in sync rather than as a conflict.
    Unlabelled(Option<Box<cairn_api::Spec>>),
}

/// What one push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The copy was written.
    Put,
    /// The copy was deleted.
    Deleted,
    /// Nothing needed doing (no copy of ours to delete).
    Nothing,
}

/// A downstream cluster's REST API, as a replicator uses it.
#[async_trait::async_trait]
pub(crate) trait Downstream: Send + Sync + 'static {
    /// Every resource of `kind` (all namespaces) whose replication label is `label`, by store
    /// key; `None` for one that does not decode (it is rewritten or deleted).
    async fn list_copies(
        &self,
        kind: Kind,
        label: &str,
    ) -> Result<BTreeMap<String, Option<Resource>>, DownstreamError>;

    /// Whether a resource exists and what its replication label is.
    async fn existing(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Existing, DownstreamError>;

    /// Creates `resource`; [`DownstreamError::Exists`] when one of that name exists.
    async fn create(&self, resource: &Resource) -> Result<(), DownstreamError>;

    /// Writes `resource`, replacing one of that name.
    async fn put(&self, resource: &Resource) -> Result<(), DownstreamError>;

    /// Deletes a resource; one that is already gone is not an error.
    async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), DownstreamError>;
}

/// Makes a [`Downstream`] for a registered cluster (tests give a fake one).
pub(crate) trait Connector: Send + Sync + 'static {
    /// The downstream for the cluster `name` as registered.
    ///
    /// # Errors
    /// The registration cannot be used (no URL, no or a bad CA).
    fn connect(&self, name: &str, cluster: &Cluster) -> Result<Arc<dyn Downstream>, String>;
}

/// Pushes one change, never touching a resource without `label`.
///
/// A present copy that is `owned` (listed with the label moments ago, or written by this
/// replicator) is written over; otherwise it is created, and when a resource of that name is
/// there already it is only written over when it carries `label`. An absent copy is deleted
/// only when the resource there carries `label` (checked first unless `owned`).
///
/// # Errors
/// [`DownstreamError::Rejected`] for this resource alone (a conflict with a resource that is
/// not ours included), [`DownstreamError::Unavailable`] for the downstream as a whole.
pub(crate) async fn push(
    downstream: &dyn Downstream,
    kind: Kind,
    label: &str,
    change: &Change,
    owned: bool,
) -> Result<Pushed, DownstreamError> {
    let (namespace, name) = (change.namespace.as_str(), change.name.as_str());
    match &change.desired {
        Desired::Present(copy) => {
            if owned {
                downstream.put(copy).await?;
                return Ok(Pushed::Put);
            }
            // Twice at most: a resource deleted between the create and the look is created
            // on the second round.
            for _ in 0..2 {
                match downstream.create(copy).await {
                    Ok(()) => return Ok(Pushed::Put),
                    Err(DownstreamError::Exists) => {}
                    Err(err) => return Err(err),
                }
                match downstream.existing(kind, namespace, name).await? {
                    Existing::Labelled(value) if value == label => {
                        downstream.put(copy).await?;
                        return Ok(Pushed::Put);
                    }
                    Existing::Labelled(value) => {
                        return Err(conflict(format!(
                            "exists on the downstream as a copy from {value}; left alone"
                        )))
                    }
                    Existing::Unlabelled(Some(spec)) if *spec == copy.spec => {
                        return Ok(Pushed::Nothing);
                    }
                    Existing::Unlabelled(_) => {
                        return Err(conflict(format!(
                            "exists on the downstream without the {LABEL_REPLICATED_FROM} label; left alone"
                        )))
                    }
                    Existing::Missing => {}
                }
            }
            Err(conflict(
                "was created and deleted on the downstream while being replicated".to_owned(),
            ))
        }
        Desired::Absent => {
            if !owned {
                match downstream.existing(kind, namespace, name).await? {
                    Existing::Labelled(value) if value == label => {}
                    _ => return Ok(Pushed::Nothing),
                }
            }
            downstream.delete(kind, namespace, name).await?;
            Ok(Pushed::Deleted)
        }
    }
}

fn conflict(message: String) -> DownstreamError {
    DownstreamError::Rejected {
        status: StatusCode::CONFLICT.as_u16(),
        message,
    }
}

// === impl HttpDownstream ===

/// A downstream's REST API over HTTPS (trusting only its registered CA), as the replication
/// identity.
pub(crate) struct HttpDownstream {
    client: ClusterClient,
    tokens: Tokens,
    /// The gateway's budget of downstream bytes held at once: a listing holds up to
    /// [`REQUEST_LIMIT`] of it, any other answer up to [`RESPONSE_LIMIT`].
    budget: Budget,
}

impl HttpDownstream {
    /// A downstream for the cluster `name` as registered, with tokens signed by `issuer` and
    /// meant for `name` (which must be the downstream's `--cluster-name`).
    ///
    /// # Errors
    /// [`ClusterError::Config`] when the registration cannot be used.
    pub(crate) fn new(
        name: &str,
        cluster: &Cluster,
        issuer: Arc<TokenIssuer>,
        budget: Budget,
    ) -> Result<HttpDownstream, ClusterError> {
        Ok(HttpDownstream {
            client: ClusterClient::new(name, cluster)?,
            tokens: Tokens::new(issuer, name),
            budget,
        })
    }

    /// Sends one request as the replication identity and sorts out the answer: `Ok` for a
    /// 2xx, the response's status and message otherwise.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, DownstreamError> {
        let authorization = self.tokens.authorization()?;
        let response = self
            .client
            .send(method.clone(), path, Some(&authorization), body)
            .await
            .map_err(|err| DownstreamError::Unavailable(err.to_string()))?;
        let status = response.status();
        let what = format!("{method} {path}");
        let mut share = self.budget.allowance(RESPONSE_LIMIT).share();
        let bytes = self
            .client
            .read(response, &what, &mut share)
            .await
            .map_err(|err| DownstreamError::Unavailable(err.to_string()))?;
        Ok(Answer {
            status,
            bytes,
            what,
            _share: share,
        })
    }
}

/// A downstream's answer.
struct Answer {
    status: StatusCode,
    bytes: Vec<u8>,
    what: String,
    /// The budget `bytes` holds.
    _share: Share,
}

impl Answer {
    /// `Ok` for a 2xx; otherwise the failure its status means.
    fn success(self) -> Result<Answer, DownstreamError> {
        if self.status.is_success() {
            return Ok(self);
        }
        Err(failure(
            self.status,
            &self.what,
            &error_message(&self.bytes),
        ))
    }

    fn to_value(&self) -> Result<Value, DownstreamError> {
        serde_json::from_slice(&self.bytes).map_err(|err| {
            DownstreamError::Unavailable(format!("{}: the answer is not JSON: {err}", self.what))
        })
    }
}

/// The failure a non-2xx status means: the resource's own (most 4xx) or the downstream's.
fn failure(status: StatusCode, what: &str, message: &str) -> DownstreamError {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => DownstreamError::Unavailable(format!(
            "{what}: {status}: {message} (the downstream must share this gateway's JWT signing \
             key, be named as registered here (its --cluster-name) and grant the \
             {REPLICATOR_USERNAME} identity's group cluster-admin)"
        )),
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            DownstreamError::Unavailable(format!("{what}: {status}: {message}"))
        }
        status if status.is_client_error() => DownstreamError::Rejected {
            status: status.as_u16(),
            message: message.to_owned(),
        },
        status => DownstreamError::Unavailable(format!("{what}: {status}: {message}")),
    }
}

#[async_trait::async_trait]
impl Downstream for HttpDownstream {
    async fn list_copies(
        &self,
        kind: Kind,
        label: &str,
    ) -> Result<BTreeMap<String, Option<Resource>>, DownstreamError> {
        let selector = format!("{LABEL_REPLICATED_FROM} == {label}");
        let path = format!(
            "{}/{}?labelSelector={}",
            kind.group_prefix(),
            kind.plural(),
            encode_query(&selector)
        );
        let mut copies = BTreeMap::new();
        // The listing's pages hold the budget until the copies are decoded and the listing
        // returns.
        let mut share = self.budget.allowance(REQUEST_LIMIT).share();
        let listed = self
            .client
            .list(
                Listing {
                    path: &path,
                    page_size: LIST_PAGE,
                },
                &mut share,
                || self.tokens.authorization().map_err(|err| err.to_string()),
                |page| {
                    // One row at a time: a page is never a tree of values as a whole. Each row
                    // was checked as JSON already, so none fails here.
                    for item in page
                        .iter()
                        .filter_map(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                    {
                        copy_in(kind, label, item, &mut copies);
                    }
                },
            )
            .await;
        match listed {
            Ok(()) => Ok(copies),
            Err(ClusterError::Status {
                what,
                status,
                message,
                ..
            }) => Err(failure(status, &what, &message)),
            Err(err) => Err(DownstreamError::Unavailable(err.to_string())),
        }
    }

    async fn existing(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Existing, DownstreamError> {
        let answer = self
            .send(Method::GET, &item_path(kind, namespace, name), None)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Existing::Missing);
        }
        let body = answer.success()?.to_value()?;
        Ok(match label_in(&body) {
            Some(value) => Existing::Labelled(value),
            None => Existing::Unlabelled(
                Resource::from_wire(kind, body)
                    .ok()
                    .map(|resource| Box::new(resource.spec)),
            ),
        })
    }

    async fn create(&self, resource: &Resource) -> Result<(), DownstreamError> {
        let kind = resource.kind();
        if matches!(kind, Kind::Event | Kind::ApiKey) {
            // Their collections' POST does something else; look, then write.
            return match self
                .existing(kind, resource.namespace(), resource.name())
                .await?
            {
                Existing::Missing => self.put(resource).await,
                _ => Err(DownstreamError::Exists),
            };
        }
        let path = collection_path(kind, resource.namespace());
        let answer = self
            .send(Method::POST, &path, Some(&resource.to_wire()))
            .await?;
        if answer.status == StatusCode::CONFLICT {
            return Err(DownstreamError::Exists);
        }
        answer.success().map(|_| ())
    }

    async fn put(&self, resource: &Resource) -> Result<(), DownstreamError> {
        let path = item_path(resource.kind(), resource.namespace(), resource.name());
        self.send(Method::PUT, &path, Some(&resource.to_wire()))
            .await?
            .success()
            .map(|_| ())
    }

    async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), DownstreamError> {
        let answer = self
            .send(Method::DELETE, &item_path(kind, namespace, name), None)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        answer.success().map(|_| ())
    }
}

/// Adds `item` (a row of the listing of `kind` with `label`) to `copies` when it is one of
/// this replicator's copies (as `None` when it does not decode: it is rewritten or deleted).
fn copy_in(kind: Kind, label: &str, item: Value, copies: &mut BTreeMap<String, Option<Resource>>) {
    // Never trust the filter alone: a downstream that ignores `labelSelector` must not make
    // its own resources look like copies.
    if label_in(&item).as_deref() != Some(label) {
        return;
    }
    let Some((namespace, name)) = identity_in(&item, kind) else {
        return;
    };
    let item_kind = match item.get("type").and_then(Value::as_str) {
        Some("Env") if kind.plural() == Kind::EnvProvider.plural() => Kind::EnvProvider,
        Some("VaultProvider") if kind.plural() == Kind::VaultProvider.plural() => {
            Kind::VaultProvider
        }
        _ => kind,
    };
    if item_kind != kind {
        // The other provider type shares the collection: not ours to list.
        return;
    }
    copies.insert(
        key_of(kind, &namespace, &name),
        Resource::from_wire(kind, item).ok(),
    );
}

/// The replication label of a wire-form resource (wrapped or not: `metadata` is at the top
/// level in both).
fn label_in(item: &Value) -> Option<String> {
    item.get("metadata")?
        .get("labels")?
        .get(LABEL_REPLICATED_FROM)?
        .as_str()
        .map(str::to_owned)
}

/// `(namespace, name)` of a wire-form resource.
fn identity_in(item: &Value, kind: Kind) -> Option<(String, String)> {
    let metadata = item.get("metadata")?;
    let name = metadata.get("name")?.as_str()?.to_owned();
    let namespace = if kind.is_namespaced() {
        metadata.get("namespace")?.as_str()?.to_owned()
    } else {
        String::new()
    };
    (!name.is_empty()).then_some((namespace, name))
}

/// The REST path of one resource, each segment percent-encoded (a name's own `/`, as in an
/// asset or an event name, stays a separator, as the API expects).
fn item_path(kind: Kind, namespace: &str, name: &str) -> String {
    let name: Vec<String> = name.split('/').map(encode_segment).collect();
    format!("{}/{}", collection_path(kind, namespace), name.join("/"))
}

fn collection_path(kind: Kind, namespace: &str) -> String {
    kind.collection_path(&encode_segment(namespace))
}

fn encode_segment(text: &str) -> String {
    encode(text, |byte| {
        byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':' | b'@')
    })
}

// === impl Tokens ===

/// Short-lived tokens of the replication identity for one downstream, minted again before
/// they expire.
pub(crate) struct Tokens {
    issuer: Arc<TokenIssuer>,
    /// The downstream's cluster name: the tokens' audience.
    audience: String,
    current: Mutex<Option<AccessToken>>,
}

impl Tokens {
    /// Tokens signed by `issuer` (the federation's shared key), meant for the cluster
    /// `audience`.
    pub(crate) fn new(issuer: Arc<TokenIssuer>, audience: &str) -> Tokens {
        Tokens {
            issuer,
            audience: audience.to_owned(),
            current: Mutex::new(None),
        }
    }

    /// The `Authorization` header value: `Bearer <token>`, minted when none is left with
    /// more than a minute to live.
    ///
    /// # Errors
    /// [`DownstreamError::Unavailable`] when this backend cannot sign (it has no private key).
    pub(crate) fn authorization(&self) -> Result<String, DownstreamError> {
        let now = crate::clock::unix_now_u64();
        let mut current = self.current.lock();
        if let Some(token) = current
            .as_ref()
            .filter(|token| token.expires_at > now + TOKEN_RENEW_BEFORE.as_secs())
        {
            return Ok(format!("Bearer {}", token.token));
        }
        let groups = [crate::auth::rbac::GROUP_CLUSTER_ADMINS.to_owned()];
        let token = self
            .issuer
            .issue_for(&Grant {
                subject: REPLICATOR_USERNAME,
                groups: &groups,
                origin: None,
                audience: &self.audience,
                ttl: TOKEN_TTL,
            })
            .map_err(|err| {
                DownstreamError::Unavailable(format!("cannot sign a replication token: {err}"))
            })?;
        tracing::debug!(expires_at = token.expires_at, "replication token minted");
        let header = format!("Bearer {}", token.token);
        *current = Some(token);
        Ok(header)
    }
}

/// Connects to registered clusters over HTTPS.
pub(crate) struct HttpConnector {
    /// Signs the replication tokens.
    pub(crate) issuer: Arc<TokenIssuer>,
    /// The gateway's budget of downstream bytes held at once, shared with the federated view.
    pub(crate) budget: Budget,
}

impl Connector for HttpConnector {
    fn connect(&self, name: &str, cluster: &Cluster) -> Result<Arc<dyn Downstream>, String> {
        HttpDownstream::new(name, cluster, Arc::clone(&self.issuer), self.budget.clone())
            .map(|downstream| Arc::new(downstream) as Arc<dyn Downstream>)
            .map_err(|err| err.to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use cairn_api::model::CheckConfig;
    use cairn_api::{ObjectMeta, Spec};

    /// An in-memory downstream: resources by store key, every request counted, and failures
    /// that can be switched on.
    #[derive(Default)]
    pub(crate) struct FakeDownstream {
        pub(crate) resources: Mutex<BTreeMap<String, Resource>>,
        /// When set, every request fails with this as `Unavailable`.
        pub(crate) down: Mutex<Option<String>>,
        /// Per store key: a rejection for writes of that resource.
        pub(crate) rejects: Mutex<HashMap<String, String>>,
        pub(crate) requests: AtomicUsize,
        pub(crate) writes: AtomicUsize,
    }

    impl FakeDownstream {
        fn check(&self) -> Result<(), DownstreamError> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            match self.down.lock().clone() {
                Some(reason) => Err(DownstreamError::Unavailable(reason)),
                None => Ok(()),
            }
        }

        fn write(&self, resource: &Resource) -> Result<String, DownstreamError> {
            let key = key_of(resource.kind(), resource.namespace(), resource.name());
            if let Some(message) = self.rejects.lock().get(&key) {
                return Err(DownstreamError::Rejected {
                    status: 400,
                    message: message.clone(),
                });
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            Ok(key)
        }

        /// A copy of the resource as the downstream's API would store it.
        fn stored(resource: &Resource) -> Resource {
            let mut stored = resource.clone();
            stored.metadata.created_by = REPLICATOR_USERNAME.to_owned();
            stored
        }

        pub(crate) fn get(&self, key: &str) -> Option<Resource> {
            self.resources.lock().get(key).cloned()
        }

        pub(crate) fn insert(&self, resource: Resource) {
            let key = key_of(resource.kind(), resource.namespace(), resource.name());
            self.resources.lock().insert(key, resource);
        }
    }

    #[async_trait::async_trait]
    impl Downstream for FakeDownstream {
        async fn list_copies(
            &self,
            kind: Kind,
            label: &str,
        ) -> Result<BTreeMap<String, Option<Resource>>, DownstreamError> {
            self.check()?;
            Ok(self
                .resources
                .lock()
                .iter()
                .filter(|(_, resource)| resource.kind() == kind)
                .filter(|(_, resource)| {
                    resource
                        .metadata
                        .labels
                        .get(LABEL_REPLICATED_FROM)
                        .map(String::as_str)
                        == Some(label)
                })
                .map(|(key, resource)| (key.clone(), Some(resource.clone())))
                .collect())
        }

        async fn existing(
            &self,
            kind: Kind,
            namespace: &str,
            name: &str,
        ) -> Result<Existing, DownstreamError> {
            self.check()?;
            Ok(
                match self.resources.lock().get(&key_of(kind, namespace, name)) {
                    None => Existing::Missing,
                    Some(resource) => match resource.metadata.labels.get(LABEL_REPLICATED_FROM) {
                        Some(value) => Existing::Labelled(value.clone()),
                        None => Existing::Unlabelled(Some(Box::new(resource.spec.clone()))),
                    },
                },
            )
        }

        async fn create(&self, resource: &Resource) -> Result<(), DownstreamError> {
            self.check()?;
            let key = key_of(resource.kind(), resource.namespace(), resource.name());
            if self.resources.lock().contains_key(&key) {
                return Err(DownstreamError::Exists);
            }
            let key = self.write(resource)?;
            self.resources
                .lock()
                .insert(key, FakeDownstream::stored(resource));
            Ok(())
        }

        async fn put(&self, resource: &Resource) -> Result<(), DownstreamError> {
            self.check()?;
            let key = self.write(resource)?;
            self.resources
                .lock()
                .insert(key, FakeDownstream::stored(resource));
            Ok(())
        }

        async fn delete(
            &self,
            kind: Kind,
            namespace: &str,
            name: &str,
        ) -> Result<(), DownstreamError> {
            self.check()?;
            self.resources.lock().remove(&key_of(kind, namespace, name));
            Ok(())
        }
    }

    pub(crate) fn check(namespace: &str, name: &str, command: &str) -> Resource {
        Resource::new(
            ObjectMeta::named(namespace, name),
            Spec::CheckConfig(CheckConfig {
                command: command.to_owned(),
                interval: 60,
                subscriptions: vec!["linux".into()],
                ..CheckConfig::default()
            }),
        )
    }

    fn labelled(mut resource: Resource, label: &str) -> Resource {
        resource
            .metadata
            .labels
            .insert(LABEL_REPLICATED_FROM.to_owned(), label.to_owned());
        resource
    }

    fn present(resource: &Resource) -> Change {
        Change {
            key: key_of(resource.kind(), resource.namespace(), resource.name()),
            namespace: resource.namespace().to_owned(),
            name: resource.name().to_owned(),
            revision: 1,
            desired: Desired::Present(Box::new(resource.clone())),
        }
    }

    fn absent(namespace: &str, name: &str) -> Change {
        Change {
            key: key_of(Kind::CheckConfig, namespace, name),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            revision: 2,
            desired: Desired::Absent,
        }
    }

    const LABEL: &str = "gw/checks";

    #[tokio::test]
    async fn pushes_create_overwrite_ours_and_leave_others_alone() {
        let fake = FakeDownstream::default();
        let copy = labelled(check("default", "a", "new"), LABEL);
        // Missing: created.
        let pushed = push(&fake, Kind::CheckConfig, LABEL, &present(&copy), false).await;
        assert_eq!(pushed, Ok(Pushed::Put));
        // Ours but not known as ours: looked at, then written over.
        let mut newer = copy.clone();
        newer.metadata.annotations.insert("v".into(), "2".into());
        let pushed = push(&fake, Kind::CheckConfig, LABEL, &present(&newer), false).await;
        assert_eq!(pushed, Ok(Pushed::Put));
        assert_eq!(
            fake.get("res/checks/default/a")
                .unwrap()
                .metadata
                .annotations["v"],
            "2"
        );
        // The downstream's own resource of the same name: refused, untouched.
        let own = check("default", "b", "local");
        fake.insert(own.clone());
        let copy_b = labelled(check("default", "b", "from the gateway"), LABEL);
        let err = push(&fake, Kind::CheckConfig, LABEL, &present(&copy_b), false)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DownstreamError::Rejected { status: 409, message } if message.contains("without")),
            "{err:?}"
        );
        assert_eq!(fake.get("res/checks/default/b").unwrap(), own);
        // Another replicator's copy: refused too.
        let other = labelled(check("default", "c", "x"), "gw/other");
        fake.insert(other.clone());
        let copy_c = labelled(check("default", "c", "y"), LABEL);
        let err = push(&fake, Kind::CheckConfig, LABEL, &present(&copy_c), false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("gw/other"), "{err}");
        assert_eq!(fake.get("res/checks/default/c").unwrap(), other);
        // The downstream's own resource identical to the source (a default role every cluster
        // seeds): in sync, not a conflict, and still untouched.
        let same = check("default", "d", "same everywhere");
        fake.insert(same.clone());
        let copy_d = labelled(same.clone(), LABEL);
        let pushed = push(&fake, Kind::CheckConfig, LABEL, &present(&copy_d), false).await;
        assert_eq!(pushed, Ok(Pushed::Nothing));
        assert_eq!(fake.get("res/checks/default/d").unwrap(), same);
    }

    #[tokio::test]
    async fn deletes_only_remove_labelled_copies() {
        let fake = FakeDownstream::default();
        fake.insert(labelled(check("default", "ours", "x"), LABEL));
        fake.insert(check("default", "theirs", "x"));
        let deleted = push(
            &fake,
            Kind::CheckConfig,
            LABEL,
            &absent("default", "ours"),
            false,
        )
        .await;
        assert_eq!(deleted, Ok(Pushed::Deleted));
        assert!(fake.get("res/checks/default/ours").is_none());
        let kept = push(
            &fake,
            Kind::CheckConfig,
            LABEL,
            &absent("default", "theirs"),
            false,
        )
        .await;
        assert_eq!(kept, Ok(Pushed::Nothing));
        assert!(fake.get("res/checks/default/theirs").is_some());
        let missing = push(
            &fake,
            Kind::CheckConfig,
            LABEL,
            &absent("default", "none"),
            false,
        )
        .await;
        assert_eq!(missing, Ok(Pushed::Nothing));
    }

    #[test]
    fn statuses_sort_into_per_resource_and_downstream_failures() {
        let what = "PUT /api/core/v2/namespaces/default/checks/a";
        for status in [400, 404, 409, 422] {
            let err = failure(StatusCode::from_u16(status).unwrap(), what, "bad");
            assert!(matches!(err, DownstreamError::Rejected { .. }), "{status}");
        }
        for status in [401, 403, 408, 429, 500, 502, 503] {
            let err = failure(StatusCode::from_u16(status).unwrap(), what, "bad");
            assert!(matches!(err, DownstreamError::Unavailable(_)), "{status}");
        }
        let unauthorized = failure(StatusCode::UNAUTHORIZED, what, "invalid credentials");
        assert!(unauthorized.to_string().contains("JWT signing key"));
        assert_eq!(
            error_message(br#"{"message":"namespace not found","code":5}"#),
            "namespace not found"
        );
        assert_eq!(error_message(b"plain text"), "plain text");
        assert!(error_message("x".repeat(1000).as_bytes()).chars().count() <= 301);
    }

    #[test]
    fn paths_encode_each_segment() {
        assert_eq!(
            item_path(Kind::CheckConfig, "default", "disk"),
            "/api/core/v2/namespaces/default/checks/disk"
        );
        assert_eq!(
            item_path(Kind::Asset, "default", "sensu/check-disk"),
            "/api/core/v2/namespaces/default/assets/sensu/check-disk"
        );
        assert_eq!(
            item_path(Kind::Role, "default", "a b?"),
            "/api/core/v2/namespaces/default/roles/a%20b%3F"
        );
        assert_eq!(
            item_path(Kind::ClusterRole, "", "system:agent"),
            "/api/core/v2/clusterroles/system:agent"
        );
        assert_eq!(
            encode_query("cairn.io/replicated-from == gw/r"),
            "cairn.io%2Freplicated-from%20%3D%3D%20gw%2Fr"
        );
    }

    #[test]
    fn wire_items_give_their_label_and_identity() {
        let copy = labelled(check("default", "a", "x"), LABEL);
        let wire = copy.to_wire();
        assert_eq!(label_in(&wire).as_deref(), Some(LABEL));
        assert_eq!(
            identity_in(&wire, Kind::CheckConfig),
            Some(("default".into(), "a".into()))
        );
        assert_eq!(label_in(&check("default", "a", "x").to_wire()), None);
    }

    #[test]
    fn tokens_are_reused_until_close_to_expiry() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = Arc::new(
            TokenIssuer::from_pem(Some(&key.serialize_pem()), &key.public_key_pem(), "gw").unwrap(),
        );
        let tokens = Tokens::new(Arc::clone(&issuer), "alpha");
        let first = tokens.authorization().unwrap();
        assert_eq!(tokens.authorization().unwrap(), first, "reused while fresh");
        let alpha = TokenIssuer::from_pem(None, &key.public_key_pem(), "alpha").unwrap();
        let claims = alpha
            .verify(first.strip_prefix("Bearer ").unwrap())
            .unwrap();
        assert_eq!(claims.sub, REPLICATOR_USERNAME);
        assert_eq!(claims.aud, "alpha", "meant for its downstream only");
        assert!(issuer
            .verify(first.strip_prefix("Bearer ").unwrap())
            .is_err());
        assert_eq!(claims.groups, ["cluster-admins"]);
        assert!(claims.exp <= crate::clock::unix_now_u64() + TOKEN_TTL.as_secs());
        // One about to expire is replaced.
        tokens.current.lock().as_mut().unwrap().expires_at = crate::clock::unix_now_u64() + 30;
        assert_ne!(tokens.authorization().unwrap(), first);
        // A verify-only issuer cannot sign: a clear error, not a panic.
        let verify_only = Tokens::new(
            Arc::new(TokenIssuer::from_pem(None, &key.public_key_pem(), "gw").unwrap()),
            "alpha",
        );
        let err = verify_only.authorization().unwrap_err();
        assert!(err.to_string().contains("cannot sign"), "{err}");
    }
}
