//! Coordination of the backends that share one store (several backends, one cluster).
//!
//! Each backend schedules checks for its own agent sessions, so an ordinary check reaches each
//! subscribed agent once whichever backend it is connected to. What needs the whole cluster goes
//! through a [`Coordinator`]:
//!
//! - **Presence**: which backend holds which agent entity (its session, or the watch of its
//!   keepalives after it disconnected), with the entity's subscriptions. A round-robin check
//!   picks its agent from every backend's connected agents, so it runs once per firing
//!   cluster-wide; a backend stops watching the keepalives of an entity another backend claimed.
//! - **Membership**: a backend that dies (or loses the store for longer than its lease) leaves;
//!   the entities it held become *orphans*, which the watchdog leader adopts so that their
//!   keepalives are still watched.
//! - **Leadership**: one backend at a time runs each cluster-wide duty ([`Role`]).
//!
//! On the embedded store there is one backend: [`Coordinator::single`] keeps presence in memory
//! and leads every role. On etcd, `etcd::start` keeps it in etcd under `coord/`: a lease per
//! backend (kept alive while the backend runs, revoked on a clean shutdown), the member key and
//! presence keys bound to it, so that etcd itself deletes them when the backend is gone, and one
//! leader key per role, created only when absent and bound to the leader's lease.

#[cfg(feature = "etcd")]
pub(crate) mod etcd;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::entity::EntityId;

/// How long a deleted presence of a live member is kept in case that member turns out to
/// have left (see [`Coordinator::take_orphans`]).
pub(crate) const VANISHED_GRACE: Duration = Duration::from_secs(30);

/// A duty that one backend of the cluster runs at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    /// Adopting the keepalive watch of orphaned entities, and raising check TTLs.
    Watchdogs,
    /// Running the federation replicators.
    Replicators,
}

impl Role {
    /// Every role.
    #[cfg(any(test, feature = "etcd"))]
    pub(crate) const ALL: [Role; 2] = [Role::Watchdogs, Role::Replicators];

    /// The role's name in its leader key.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Watchdogs => "watchdogs",
            Role::Replicators => "replicators",
        }
    }

    fn index(self) -> usize {
        match self {
            Role::Watchdogs => 0,
            Role::Replicators => 1,
        }
    }
}

/// Which backend holds an agent entity, as stored at `coord/presence/<namespace>/<entity>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Presence {
    /// The id of the backend that holds it.
    pub backend: String,
    /// The entity's subscriptions (`entity:<name>` included).
    pub subscriptions: Vec<String>,
    /// Whether its session is connected to that backend now (otherwise the backend only
    /// watches its keepalives).
    pub connected: bool,
    /// Seconds between keepalives the agent promised.
    pub keepalive_interval: u32,
    /// Seconds of silence before a keepalive warning (0: the default).
    pub keepalive_warning_timeout: u32,
    /// Seconds of silence before a keepalive critical (0: none).
    pub keepalive_critical_timeout: u32,
    /// Whether the entity is deleted when its keepalive reaches its last stage.
    pub deregister: bool,
    /// The pipelines its keepalive events name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keepalive_pipelines: Vec<String>,
}

impl Presence {
    /// Whether the entity subscribes to any of `subscriptions`.
    pub(crate) fn subscribes_to_any(&self, subscriptions: &[String]) -> bool {
        crate::entity::subscribes_to_any(&self.subscriptions, subscriptions)
    }
}

/// A presence write for the etcd writer, in the order they were made.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) enum Write {
    /// This backend holds the entity's session: write unconditionally.
    Claim(EntityId, Presence),
    /// Update the presence only while it is still this backend's.
    Update(EntityId, Presence),
    /// Take an orphan over: write only while no backend holds it.
    Adopt(EntityId, Presence),
    /// Remove the presence only while it is still this backend's.
    Remove(EntityId),
}

/// This backend's view of the cluster, and its handle to announce what it holds.
pub(crate) struct Coordinator {
    id: String,
    view: Mutex<View>,
    leaders: [watch::Sender<bool>; 2],
    /// Presence writes for the etcd writer; `None` for a single backend.
    writes: Option<mpsc::UnboundedSender<Write>>,
}

/// What a backend knows of the cluster.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// Every backend alive, by id.
    pub(crate) members: HashSet<String>,
    /// Who holds each entity.
    pub(crate) presence: HashMap<EntityId, Presence>,
    /// Entities whose presence was deleted, with what their backend last said and when the
    /// delete was seen; orphans when that backend is no longer a member.
    pub(crate) vanished: HashMap<EntityId, (Presence, Instant)>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("id", &self.id)
            .field("distributed", &self.writes.is_some())
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// The coordinator of a backend that is alone on its store: it leads every role, and its
    /// presence lives in memory.
    pub(crate) fn single(id: impl Into<String>) -> std::sync::Arc<Coordinator> {
        let id = id.into();
        let coordinator = Coordinator::new(id.clone(), None, true);
        coordinator.view.lock().members.insert(id);
        std::sync::Arc::new(coordinator)
    }

    pub(crate) fn new(
        id: String,
        writes: Option<mpsc::UnboundedSender<Write>>,
        leading: bool,
    ) -> Coordinator {
        Coordinator {
            id,
            view: Mutex::new(View::default()),
            leaders: [watch::channel(leading).0, watch::channel(leading).0],
            writes,
        }
    }

    /// This backend's id, unique to the process.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Whether other backends may share the store.
    pub(crate) fn is_distributed(&self) -> bool {
        self.writes.is_some()
    }

    /// Whether this backend leads `role` now.
    pub(crate) fn is_leader(&self, role: Role) -> bool {
        *self.leaders[role.index()].borrow()
    }

    /// Follows whether this backend leads `role`.
    pub(crate) fn leadership(&self, role: Role) -> watch::Receiver<bool> {
        self.leaders[role.index()].subscribe()
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) fn set_leader(&self, role: Role, leading: bool) {
        let changed = self.leaders[role.index()].send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
        if changed {
            if leading {
                tracing::info!(backend = %self.id, "leading {}", role.name());
            } else {
                tracing::info!(backend = %self.id, "stepped down from {}", role.name());
            }
        }
    }

    /// Announces that this backend holds the session of `id` (it just connected here).
    pub(crate) fn claim(&self, id: &EntityId, presence: Presence) {
        self.view
            .lock()
            .presence
            .insert(id.clone(), presence.clone());
        self.write(Write::Claim(id.clone(), presence));
    }

    /// Announces a change of an entity this backend holds (its session ended, so it only
    /// watches its keepalives now); nothing when another backend holds it by now.
    pub(crate) fn update(&self, id: &EntityId, presence: Presence) {
        {
            let mut view = self.view.lock();
            match view.presence.get(id) {
                Some(current) if current.backend != self.id => return,
                _ => view.presence.insert(id.clone(), presence.clone()),
            };
        }
        self.write(Write::Update(id.clone(), presence));
    }

    /// Takes over the keepalive watch of an orphan (see [`Coordinator::take_orphans`]).
    pub(crate) fn adopt(&self, id: &EntityId, presence: Presence) {
        self.view
            .lock()
            .presence
            .insert(id.clone(), presence.clone());
        self.write(Write::Adopt(id.clone(), presence));
    }

    /// Announces that this backend no longer holds `id` (deregistered, revoked); nothing when
    /// another backend holds it.
    pub(crate) fn withdraw(&self, id: &EntityId) {
        {
            let mut view = self.view.lock();
            match view.presence.get(id) {
                Some(current) if current.backend == self.id => {
                    view.presence.remove(id);
                }
                _ => return,
            }
        }
        self.write(Write::Remove(id.clone()));
    }

    fn write(&self, write: Write) {
        if let Some(writes) = &self.writes {
            // The writer only stops at shutdown, when presence no longer matters.
            let _ = writes.send(write);
        }
    }

    /// The backend that holds `id`, as far as this backend knows.
    pub(crate) fn owner(&self, id: &EntityId) -> Option<String> {
        self.view
            .lock()
            .presence
            .get(id)
            .map(|presence| presence.backend.clone())
    }

    /// The connected agents of the whole cluster in `namespace` that subscribe to any of
    /// `subscriptions`, sorted: what a round-robin check chooses from.
    pub(crate) fn connected_matching(
        &self,
        namespace: &str,
        subscriptions: &[String],
    ) -> Vec<EntityId> {
        let mut matching: Vec<EntityId> = self
            .view
            .lock()
            .presence
            .iter()
            .filter(|(id, presence)| {
                id.namespace == namespace
                    && presence.connected
                    && presence.subscribes_to_any(subscriptions)
            })
            .map(|(id, _)| id.clone())
            .collect();
        matching.sort();
        matching
    }

    /// Entities whose backend left the cluster without handing them over, with what that
    /// backend last said of them; each is returned once.
    ///
    /// A deleted presence whose backend is still a member is kept for [`VANISHED_GRACE`]
    /// before it is taken as withdrawn on purpose: etcd deletes a lost backend's member key and
    /// presence keys in one revision, but the watch hands them over one at a time.
    pub(crate) fn take_orphans(&self) -> Vec<(EntityId, Presence)> {
        let now = Instant::now();
        let mut view = self.view.lock();
        let View {
            members,
            presence,
            vanished,
        } = &mut *view;
        let mut orphans = Vec::new();
        vanished.retain(|id, (last, since)| {
            if presence.contains_key(id) {
                // Held again (the agent reconnected somewhere).
                return false;
            }
            if members.contains(&last.backend) {
                return now.saturating_duration_since(*since) < VANISHED_GRACE;
            }
            orphans.push((id.clone(), last.clone()));
            false
        });
        orphans.sort_by(|left, right| left.0.cmp(&right.0));
        orphans
    }

    /// Runs `change` on the view (the etcd watcher keeps it current).
    #[cfg_attr(not(any(test, feature = "etcd")), allow(dead_code))]
    pub(crate) fn with_view<T>(&self, change: impl FnOnce(&mut View) -> T) -> T {
        change(&mut self.view.lock())
    }
}

/// A fresh backend id: the host name and a random suffix, unique to the process.
pub(crate) fn new_backend_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "backend".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(backend: &str, subscriptions: &[&str], connected: bool) -> Presence {
        Presence {
            backend: backend.to_owned(),
            subscriptions: subscriptions.iter().map(|s| (*s).to_owned()).collect(),
            connected,
            keepalive_interval: 20,
            keepalive_warning_timeout: 120,
            keepalive_critical_timeout: 0,
            deregister: false,
            keepalive_pipelines: Vec::new(),
        }
    }

    fn id(name: &str) -> EntityId {
        EntityId::new("default", name)
    }

    #[test]
    fn a_single_backend_leads_every_role_and_sees_its_own_agents() {
        let coordinator = Coordinator::single("one");
        assert!(Role::ALL.iter().all(|role| coordinator.is_leader(*role)));
        assert!(!coordinator.is_distributed());
        coordinator.claim(&id("web"), presence("one", &["linux"], true));
        coordinator.claim(&id("db"), presence("one", &["linux", "db"], true));
        coordinator.claim(&id("gone"), presence("one", &["linux"], false));
        assert_eq!(
            coordinator.connected_matching("default", &["linux".to_owned()]),
            [id("db"), id("web")]
        );
        assert!(coordinator
            .connected_matching("prod", &["linux".to_owned()])
            .is_empty());
        assert_eq!(coordinator.owner(&id("web")).as_deref(), Some("one"));
        coordinator.withdraw(&id("web"));
        assert_eq!(coordinator.owner(&id("web")), None);
    }

    #[test]
    fn updates_and_withdrawals_leave_another_backends_entity_alone() {
        let coordinator = Coordinator::single("one");
        coordinator.with_view(|view| {
            view.presence
                .insert(id("web"), presence("two", &["linux"], true));
        });
        coordinator.update(&id("web"), presence("one", &["linux"], false));
        coordinator.withdraw(&id("web"));
        assert_eq!(coordinator.owner(&id("web")).as_deref(), Some("two"));
    }

    #[test]
    fn orphans_are_the_entities_of_backends_that_left() {
        let coordinator = Coordinator::single("one");
        coordinator.with_view(|view| {
            view.members.insert("two".to_owned());
            // Withdrawn on purpose by a live backend: not an orphan.
            let long_ago = Instant::now() - VANISHED_GRACE;
            view.vanished
                .insert(id("deregistered"), (presence("two", &[], false), long_ago));
            // Deleted just now by a backend that is still a member: wait and see.
            view.vanished
                .insert(id("pending"), (presence("two", &[], true), Instant::now()));
            // Its backend left: an orphan.
            view.vanished
                .insert(id("lost"), (presence("three", &[], true), Instant::now()));
            // Its backend left, but the agent is back elsewhere.
            view.vanished
                .insert(id("back"), (presence("three", &[], true), Instant::now()));
            view.presence.insert(id("back"), presence("two", &[], true));
        });
        let orphans = coordinator.take_orphans();
        assert_eq!(
            orphans
                .iter()
                .map(|(id, _)| id.name.as_str())
                .collect::<Vec<_>>(),
            ["lost"]
        );
        assert!(coordinator.take_orphans().is_empty(), "each orphan once");
        // The member that still held `pending` leaves after all.
        coordinator.with_view(|view| {
            view.members.remove("two");
        });
        assert_eq!(coordinator.take_orphans()[0].0, id("pending"));
    }
}
