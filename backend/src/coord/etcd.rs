//! Coordination on etcd: a lease per backend, presence and member keys bound to it, one leader
//! key per role, and a watch of `coord/` that keeps every backend's view current.
//!
//! Three tasks per backend:
//!
//! - the **lease keeper** grants the lease, writes the member key, keeps the lease alive and
//!   makes the presence writes in order (claims batched into one transaction each). When the
//!   lease is lost (etcd unreachable for longer than [`LEASE_TTL`]) it grants a new one and
//!   writes again everything this backend holds; on shutdown it revokes the lease, so the other
//!   backends take over at once instead of after the TTL;
//! - the **elections** run every [`ELECTION_EVERY`]: a role's leader key is created only when
//!   absent, bound to the creator's lease, so exactly one backend holds it and etcd removes it
//!   when that backend is gone; a leader that cannot confirm its key for half a TTL steps down;
//! - the **view watcher** lists `coord/` and follows it with a store watch (which resumes after
//!   a lost connection); deleted presence keys are remembered so that the orphans of a backend
//!   that left can be adopted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, watch};

use super::{Coordinator, Presence, Role, Write};
use crate::entity::EntityId;
use crate::store::keyspace;
use crate::store::reflector::{Reflector, View as ReflectedView};
use crate::store::{EtcdStore, Revision, Store, StoreError, WatchEvent};
use cairn_api::backoff::{Backoff, Jitter};

/// The lease's time to live: how long after a backend dies (or loses etcd) its agents are
/// orphans and its roles free.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often the lease is kept alive (a third of its TTL: two keep-alives may be lost).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(3);

/// How often a backend runs for (or confirms) each role.
const ELECTION_EVERY: Duration = Duration::from_secs(1);

/// The longest one coordination request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The most claims written in one transaction (etcd's default `--max-txn-ops` is 128).
const CLAIMS_PER_TXN: usize = 64;

/// Starts coordinating this backend through `store`'s etcd; the tasks run until `shutdown`
/// holds `true`. The handle is the lease keeper's, which revokes the lease on shutdown: await
/// it (briefly) before the process exits, so that the other backends take over at once.
pub(crate) fn start(
    store: EtcdStore,
    id: String,
    shutdown: watch::Receiver<bool>,
) -> (Arc<Coordinator>, tokio::task::JoinHandle<()>) {
    let (writes, pending) = mpsc::unbounded_channel();
    let coordinator = Arc::new(Coordinator::new(id, Some(writes), false));
    let lease = Arc::new(AtomicI64::new(0));
    let etcd = Etcd {
        client: store.client(),
        store: store.clone(),
        coordinator: Arc::clone(&coordinator),
        lease: Arc::clone(&lease),
    };
    let keeper = tokio::spawn(keep_lease(etcd.clone(), pending, shutdown.clone()));
    tokio::spawn(elect(etcd.clone(), shutdown.clone()));
    tokio::spawn(follow(etcd, shutdown));
    (coordinator, keeper)
}

/// What the tasks share.
#[derive(Clone)]
struct Etcd {
    client: Client,
    store: EtcdStore,
    coordinator: Arc<Coordinator>,
    /// The current lease, 0 while there is none.
    lease: Arc<AtomicI64>,
}

/// Why a coordination request failed (for the log).
type Failure = String;

impl Etcd {
    fn key(&self, key: &str) -> Vec<u8> {
        self.store.full_key(key)
    }

    fn presence_key(&self, id: &EntityId) -> Vec<u8> {
        self.key(&format!(
            "{}{}/{}",
            keyspace::COORD_PRESENCE,
            id.namespace,
            id.name
        ))
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, Failure> {
        self.store
            .txn(txn)
            .await
            .map_err(|err| cairn_api::problem::cause_chain(&err))
    }
}

fn put_leased(key: Vec<u8>, value: Vec<u8>, lease: i64) -> TxnOp {
    TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))
}

fn encode(presence: &Presence) -> Vec<u8> {
    // A struct of strings, numbers and booleans always serialises.
    serde_json::to_vec(presence).unwrap_or_default()
}

// === the lease keeper ===

async fn keep_lease(
    etcd: Etcd,
    mut pending: mpsc::UnboundedReceiver<Write>,
    mut shutdown: watch::Receiver<bool>,
) {
    // What this backend holds, to write again under a new lease.
    let mut mine: HashMap<EntityId, Presence> = HashMap::new();
    let mut backoff = Backoff::new(Duration::from_millis(250), LEASE_TTL, Jitter::Equal);
    let member_key = etcd.key(&format!(
        "{}{}",
        keyspace::COORD_MEMBERS,
        etcd.coordinator.id()
    ));
    'grant: loop {
        etcd.lease.store(0, Ordering::SeqCst);
        let granted = async {
            let mut leases = etcd.client.lease_client();
            let ttl = i64::try_from(LEASE_TTL.as_secs()).unwrap_or(10);
            let lease = leases
                .grant(ttl, None)
                .await
                .map_err(|err| err.to_string())?
                .id();
            let keeper = leases
                .keep_alive(lease)
                .await
                .map_err(|err| err.to_string())?;
            Ok::<_, Failure>((lease, keeper))
        };
        let (lease, (mut keeper, mut answers)) = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            granted,
        )
        .await
        {
            Ok(Ok(granted)) => granted,
            failed => {
                let reason = match failed {
                    Ok(Err(reason)) => reason,
                    _ => format!("no answer within {REQUEST_TIMEOUT:?}"),
                };
                tracing::warn!(error = %reason, "cannot get a coordination lease from etcd; retrying");
                if wait(&mut shutdown, &mut pending, &mut mine, backoff.next_delay()).await {
                    return;
                }
                continue 'grant;
            }
        };
        let member = etcd
            .txn(Txn::new().and_then([put_leased(
                member_key.clone(),
                etcd.coordinator.id().as_bytes().to_vec(),
                lease,
            )]))
            .await;
        let republished = match member {
            Ok(_) => republish(&etcd, &mine, lease).await,
            Err(reason) => Err(reason),
        };
        if let Err(reason) = republished {
            tracing::warn!(error = %reason, "cannot announce this backend in etcd; retrying");
            if wait(&mut shutdown, &mut pending, &mut mine, backoff.next_delay()).await {
                return;
            }
            continue 'grant;
        }
        etcd.lease.store(lease, Ordering::SeqCst);
        backoff.reset();
        tracing::info!(backend = %etcd.coordinator.id(), lease, "joined the cluster");
        let mut ticker = tokio::time::interval(KEEPALIVE_EVERY);
        let mut confirmed = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = crate::shutdown::requested(&mut shutdown) => {
                    // Leave at once: the others adopt this backend's agents now, not after
                    // the TTL.
                    let mut leases = etcd.client.lease_client();
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, leases.revoke(lease)).await;
                    return;
                }
                _ = ticker.tick() => {
                    if confirmed.elapsed() >= LEASE_TTL {
                        tracing::warn!(lease, "coordination lease expired (etcd unreachable); joining again");
                        continue 'grant;
                    }
                    if let Err(err) = keeper.keep_alive().await {
                        tracing::debug!(error = %err, "lease keep-alive not sent");
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => confirmed = Instant::now(),
                    Ok(Some(_)) => {
                        tracing::warn!(lease, "coordination lease expired; joining again");
                        continue 'grant;
                    }
                    Ok(None) | Err(_) => {
                        // The keep-alive stream broke (etcd restarted or the connection
                        // moved); open a new one for the same lease.
                        let mut leases = etcd.client.lease_client();
                        match tokio::time::timeout(REQUEST_TIMEOUT, leases.keep_alive(lease)).await {
                            Ok(Ok((new_keeper, new_answers))) => {
                                keeper = new_keeper;
                                answers = new_answers;
                            }
                            _ => {
                                if wait_quietly(&mut shutdown, KEEPALIVE_EVERY).await {
                                    return;
                                }
                            }
                        }
                    }
                },
                Some(first) = pending.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < CLAIMS_PER_TXN {
                        match pending.try_recv() {
                            Ok(write) => batch.push(write),
                            Err(_) => break,
                        }
                    }
                    if let Err(reason) = apply(&etcd, &mut mine, batch, lease).await {
                        tracing::warn!(error = %reason, "presence not written to etcd; joining again");
                        continue 'grant;
                    }
                }
            }
        }
    }
}

/// Waits `delay` while recording the presence writes that arrive (they are written with the
/// next lease); true when shutdown was asked for.
async fn wait(
    shutdown: &mut watch::Receiver<bool>,
    pending: &mut mpsc::UnboundedReceiver<Write>,
    mine: &mut HashMap<EntityId, Presence>,
    delay: Duration,
) -> bool {
    let until = tokio::time::sleep(delay);
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = crate::shutdown::requested(shutdown) => return true,
            () = &mut until => return false,
            Some(write) = pending.recv() => remember(mine, write),
        }
    }
}

async fn wait_quietly(shutdown: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        () = crate::shutdown::requested(shutdown) => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Records a write in what this backend holds, without writing it.
fn remember(mine: &mut HashMap<EntityId, Presence>, write: Write) {
    match write {
        Write::Claim(id, presence) | Write::Update(id, presence) | Write::Adopt(id, presence) => {
            mine.insert(id, presence);
        }
        Write::Remove(id) => {
            mine.remove(&id);
        }
    }
}

/// Writes again, under a new lease, every presence this backend holds: a connected session
/// unconditionally, a keepalive watch only where no other backend took the entity meanwhile.
async fn republish(
    etcd: &Etcd,
    mine: &HashMap<EntityId, Presence>,
    lease: i64,
) -> Result<(), Failure> {
    let mut claims = Vec::new();
    for (id, presence) in mine {
        let key = etcd.presence_key(id);
        if presence.connected {
            claims.push(put_leased(key, encode(presence), lease));
        } else {
            adopt(etcd, id, presence, lease).await?;
        }
    }
    for chunk in claims.chunks(CLAIMS_PER_TXN) {
        etcd.txn(Txn::new().and_then(chunk.to_vec())).await?;
    }
    Ok(())
}

/// Makes a batch of presence writes, in order: consecutive claims in one transaction.
async fn apply(
    etcd: &Etcd,
    mine: &mut HashMap<EntityId, Presence>,
    batch: Vec<Write>,
    lease: i64,
) -> Result<(), Failure> {
    let mut claims = Vec::new();
    for write in batch {
        if let Write::Claim(id, presence) = &write {
            claims.push(put_leased(etcd.presence_key(id), encode(presence), lease));
            remember(mine, write);
            continue;
        }
        if !claims.is_empty() {
            etcd.txn(Txn::new().and_then(std::mem::take(&mut claims)))
                .await?;
        }
        match write {
            Write::Claim(..) => {}
            Write::Update(id, presence) => {
                let key = etcd.presence_key(&id);
                let response = etcd
                    .txn(
                        Txn::new()
                            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                            .and_then([put_leased(key, encode(&presence), lease)]),
                    )
                    .await?;
                if response.succeeded() {
                    mine.insert(id, presence);
                } else {
                    // Another backend holds it now.
                    mine.remove(&id);
                }
            }
            Write::Adopt(id, presence) => {
                if adopt(etcd, &id, &presence, lease).await? {
                    mine.insert(id, presence);
                } else {
                    mine.remove(&id);
                }
            }
            Write::Remove(id) => {
                let key = etcd.presence_key(&id);
                etcd.txn(
                    Txn::new()
                        .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                        .and_then([TxnOp::delete(key, None)]),
                )
                .await?;
                mine.remove(&id);
            }
        }
    }
    if !claims.is_empty() {
        etcd.txn(Txn::new().and_then(claims)).await?;
    }
    Ok(())
}

/// Writes a presence only where no backend holds the entity; whether it was written.
async fn adopt(
    etcd: &Etcd,
    id: &EntityId,
    presence: &Presence,
    lease: i64,
) -> Result<bool, Failure> {
    let key = etcd.presence_key(id);
    let response = etcd
        .txn(
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([put_leased(key, encode(presence), lease)]),
        )
        .await?;
    Ok(response.succeeded())
}

// === the elections ===

async fn elect(etcd: Etcd, mut shutdown: watch::Receiver<bool>) {
    let mut confirmed: HashMap<Role, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(ELECTION_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = crate::shutdown::requested(&mut shutdown) => {
                for role in Role::ALL {
                    etcd.coordinator.set_leader(role, false);
                }
                return;
            }
            _ = ticker.tick() => {}
        }
        let lease = etcd.lease.load(Ordering::SeqCst);
        for role in Role::ALL {
            let leading = if lease == 0 {
                false
            } else {
                match run_for(&etcd, role, lease).await {
                    Ok(true) => {
                        confirmed.insert(role, Instant::now());
                        true
                    }
                    Ok(false) => false,
                    Err(reason) => {
                        // Unconfirmed: keep leading for half a TTL, well before etcd could
                        // hand the role to another backend.
                        let keep = confirmed
                            .get(&role)
                            .is_some_and(|at| at.elapsed() < LEASE_TTL / 2);
                        if etcd.coordinator.is_leader(role) && !keep {
                            tracing::warn!(role = role.name(), error = %reason, "cannot confirm leadership");
                        }
                        keep && etcd.coordinator.is_leader(role)
                    }
                }
            };
            if !leading {
                confirmed.remove(&role);
            }
            etcd.coordinator.set_leader(role, leading);
        }
    }
}

/// Creates the leader key of `role` if absent; whether this backend holds it (under `lease`).
async fn run_for(etcd: &Etcd, role: Role, lease: i64) -> Result<bool, Failure> {
    let key = etcd.key(&format!("{}{}", keyspace::COORD_LEADERS, role.name()));
    let me = etcd.coordinator.id().as_bytes().to_vec();
    let response = etcd
        .txn(
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([put_leased(key.clone(), me.clone(), lease)])
                .or_else([TxnOp::get(key.clone(), None)]),
        )
        .await?;
    if response.succeeded() {
        return Ok(true);
    }
    let holder = response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.lease())),
        _ => None,
    });
    match holder {
        Some((value, held_lease)) if value == me && held_lease == lease => Ok(true),
        // Ours under a lease this backend lost: take it under the current one.
        Some((value, _)) if value == me => {
            let response = etcd
                .txn(
                    Txn::new()
                        .when([Compare::value(key.clone(), CompareOp::Equal, me.clone())])
                        .and_then([put_leased(key, me, lease)]),
                )
                .await?;
            Ok(response.succeeded())
        }
        _ => Ok(false),
    }
}

// === the view ===

/// The members and presence of the cluster as the reflector keeps them.
struct Followed {
    etcd: Etcd,
}

#[async_trait::async_trait]
impl ReflectedView for Followed {
    async fn reload(&mut self, store: &dyn Store) -> Result<Revision, StoreError> {
        let page = store.list(keyspace::COORD, None, 0).await?;
        let me = self.etcd.coordinator.id().to_owned();
        self.etcd.coordinator.with_view(|view| {
            view.members.clear();
            view.presence.clear();
            for entry in &page.entries {
                apply_put(view, &entry.key, &entry.value);
            }
            // A backend always counts itself: its member key may still be on its way.
            view.members.insert(me);
        });
        Ok(page.revision)
    }

    fn apply(&mut self, change: &WatchEvent) {
        match change {
            WatchEvent::Put(entry) => self
                .etcd
                .coordinator
                .with_view(|view| apply_put(view, &entry.key, &entry.value)),
            WatchEvent::Delete { key, .. } => {
                let me = self.etcd.coordinator.id().to_owned();
                self.etcd
                    .coordinator
                    .with_view(|view| apply_delete(view, key, &me));
            }
        }
    }
}

async fn follow(etcd: Etcd, shutdown: watch::Receiver<bool>) {
    let store: Arc<dyn Store> = Arc::new(etcd.store.clone());
    Reflector::new(store, keyspace::COORD, "cluster members")
        .run(Followed { etcd }, shutdown)
        .await;
}

/// The entity of a presence key.
fn presence_id(key: &str) -> Option<EntityId> {
    let rest = key.strip_prefix(keyspace::COORD_PRESENCE)?;
    let (namespace, name) = rest.split_once('/')?;
    Some(EntityId::new(namespace, name))
}

fn apply_put(view: &mut super::View, key: &str, value: &[u8]) {
    if let Some(member) = key.strip_prefix(keyspace::COORD_MEMBERS) {
        view.members.insert(member.to_owned());
    } else if let Some(id) = presence_id(key) {
        match serde_json::from_slice::<Presence>(value) {
            Ok(presence) => {
                view.vanished.remove(&id);
                view.presence.insert(id, presence);
            }
            Err(err) => tracing::warn!(key, error = %err, "unreadable presence in etcd; ignored"),
        }
    }
}

fn apply_delete(view: &mut super::View, key: &str, me: &str) {
    if let Some(member) = key.strip_prefix(keyspace::COORD_MEMBERS) {
        if member != me {
            view.members.remove(member);
        }
    } else if let Some(id) = presence_id(key) {
        if let Some(last) = view.presence.remove(&id) {
            view.vanished.insert(id, (last, Instant::now()));
        }
    }
}
