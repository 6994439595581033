//! Several backends, one cluster (issue 8): real `cairn-backend` processes on a real 3-member
//! etcd cluster on loopback, with simulated agents keeping real mutual-TLS sessions
//! (`cairn_agent::sim`, the agent's own session code).
//!
//! - Two backends share state: what one writes the other reads; 100 agents spread over both get
//!   each check exactly once per interval, and a round-robin check runs once per firing across
//!   the cluster. A backend killed with SIGKILL: its agents reconnect to the other, nothing they
//!   sent is lost or stored twice, and the keepalive watch of an agent that went away with it is
//!   taken over.
//! - etcd losing a member under load fails no write; losing quorum gives 503s and an unhealthy
//!   `/health`, and the backend recovers by itself when the members return.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_agent::sim::{self, CheckTiming, Observer, SimAgent};
use cairn_api::client::Client;
use cairn_api::model::CheckConfig;
use cairn_api::{Kind, ObjectMeta, Resource, Spec};
use cairn_tests::etcd::EtcdCluster;
use cairn_tests::{eventually, fleet, Backend, BackendOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

/// Agents that run the fleet-wide check.
const FLEET: usize = 100;
/// Agents that share the round-robin check.
const ROUND_ROBIN: usize = 10;
/// Seconds between firings of both checks.
const INTERVAL: i64 = 2;
/// Firings compared in each window.
const WINDOW_FIRINGS: i64 = 4;

/// What the simulated agents report: per agent, the `issued` time of every acknowledged check
/// result, and how many sessions it established.
#[derive(Default)]
struct Recorder {
    acked: Mutex<HashMap<String, Vec<i64>>>,
    sessions: Mutex<HashMap<String, usize>>,
}

impl Observer for Recorder {
    fn connected(&self, name: &str) {
        *lock(&self.sessions).entry(name.to_owned()).or_default() += 1;
    }

    fn acked(&self, name: &str, timing: &CheckTiming) {
        lock(&self.acked)
            .entry(name.to_owned())
            .or_default()
            .push(timing.issued);
    }
}

impl Recorder {
    fn sessions(&self, name: &str) -> usize {
        lock(&self.sessions).get(name).copied().unwrap_or(0)
    }

    /// For each firing second in `[from, to)`, which agents (of `names`) had a result of it
    /// acknowledged, with repeats.
    fn firings(&self, names: &[String], from: i64, to: i64) -> BTreeMap<i64, Vec<String>> {
        let acked = lock(&self.acked);
        let mut firings: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for name in names {
            for &issued in acked.get(name).map_or(&[][..], Vec::as_slice) {
                if (from..to).contains(&issued) {
                    firings.entry(issued).or_default().push(name.clone());
                }
            }
        }
        firings
    }

    fn latest(&self, names: &[String]) -> i64 {
        let acked = lock(&self.acked);
        names
            .iter()
            .filter_map(|name| acked.get(name).and_then(|issued| issued.iter().max()))
            .copied()
            .max()
            .unwrap_or(0)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(0))
}

fn etcd_options(cluster: &EtcdCluster) -> BackendOptions {
    BackendOptions::default()
        .init_arg("--store")
        .init_arg("etcd")
        .init_arg("--etcd-endpoints")
        .init_arg(cluster.endpoints_arg())
        .capture_logs()
}

fn check(name: &str, subscription: &str, round_robin: bool) -> Resource {
    Resource::new(
        ObjectMeta::named("default", name),
        Spec::CheckConfig(CheckConfig {
            command: "true".into(),
            interval: INTERVAL,
            subscriptions: vec![subscription.into()],
            publish: true,
            round_robin,
            timeout: 10,
            ..CheckConfig::default()
        }),
    )
}

/// Waits until every firing in a window of [`WINDOW_FIRINGS`] firings starting after `after`
/// has been acknowledged everywhere it went, then checks that the fleet check reached each
/// fleet agent exactly once per firing and the round-robin check exactly one agent per firing.
/// Returns the round-robin agents chosen.
async fn assert_exactly_once(
    recorder: &Recorder,
    fleet: &[String],
    round_robin: &[String],
    after: i64,
    what: &str,
) -> BTreeSet<String> {
    // Firings come every INTERVAL seconds; wait until results issued past the window arrive,
    // so that everything inside it has had its chance.
    let from = after;
    let to = after + WINDOW_FIRINGS * INTERVAL;
    eventually(
        &format!("{what}: results issued after the window [{from}, {to})"),
        Duration::from_secs(u64::try_from(WINDOW_FIRINGS * INTERVAL).unwrap_or(8) + 20),
        || async {
            let latest = recorder.latest(fleet);
            if latest < to + INTERVAL || recorder.latest(round_robin) < to + INTERVAL {
                Err(format!("latest fleet result issued at {latest}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    let fleet_firings = recorder.firings(fleet, from, to);
    assert!(
        i64::try_from(fleet_firings.len()).unwrap_or(0) >= WINDOW_FIRINGS - 1,
        "{what}: expected about {WINDOW_FIRINGS} fleet firings in [{from}, {to}), saw {:?}",
        fleet_firings.keys().collect::<Vec<_>>()
    );
    for (issued, agents) in &fleet_firings {
        let distinct: BTreeSet<&String> = agents.iter().collect();
        assert_eq!(
            agents.len(),
            distinct.len(),
            "{what}: the fleet firing at {issued} reached some agent twice"
        );
        assert_eq!(
            agents.len(),
            fleet.len(),
            "{what}: the fleet firing at {issued} reached {} of {} agents; missing {:?}",
            agents.len(),
            fleet.len(),
            fleet
                .iter()
                .filter(|name| !distinct.contains(name))
                .take(5)
                .collect::<Vec<_>>()
        );
    }
    let rr_firings = recorder.firings(round_robin, from, to);
    assert!(
        i64::try_from(rr_firings.len()).unwrap_or(0) >= WINDOW_FIRINGS - 1,
        "{what}: expected about {WINDOW_FIRINGS} round-robin firings, saw {rr_firings:?}"
    );
    for (issued, agents) in &rr_firings {
        assert_eq!(
            agents.len(),
            1,
            "{what}: the round-robin firing at {issued} ran on {agents:?}, not on exactly one agent"
        );
    }
    rr_firings.into_values().flatten().collect()
}

/// The stored event of `entity/check` as seen through `client`.
async fn stored_event(client: &Client, entity: &str, check: &str) -> Option<Value> {
    client
        .get_json(&format!(
            "/api/core/v2/namespaces/default/events/{entity}/{check}"
        ))
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_backends_share_the_store_split_the_fleet_and_take_over_from_each_other() {
    let etcd = EtcdCluster::start(3);
    // Both at info, so that their logs say which leads the cluster-wide roles.
    let mut alpha = Backend::start_with(etcd_options(&etcd).env("CAIRN_LOG", "info"));
    // At info, so that its log says when it takes a keepalive watch over.
    let beta = Backend::join(
        &alpha,
        BackendOptions::default()
            .env("CAIRN_LOG", "info")
            .capture_logs(),
    );
    let admin_alpha = alpha.admin().await;
    let admin_beta = beta.admin().await;

    // What one backend writes, the other reads.
    admin_alpha
        .put_resource(&check("fleet-check", "fleet", false))
        .await
        .expect("create the fleet check through alpha");
    admin_beta
        .put_resource(&check("rr-check", "rr", true))
        .await
        .expect("create the round-robin check through beta");
    let seen = admin_beta
        .get_resource(Kind::CheckConfig, "default", "fleet-check")
        .await
        .expect("read through beta")
        .expect("the check created through alpha is there");
    assert_eq!(seen.name(), "fleet-check");
    assert!(admin_alpha
        .get_resource(Kind::CheckConfig, "default", "rr-check")
        .await
        .expect("read through alpha")
        .is_some());

    // 100 fleet agents and 10 round-robin agents, alternately preferring alpha and beta.
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet_names: Vec<String> = (0..FLEET).map(|idx| format!("fleet-{idx:03}")).collect();
    let rr_names: Vec<String> = (0..ROUND_ROBIN).map(|idx| format!("rr-{idx:02}")).collect();
    let all: Vec<String> = fleet_names.iter().chain(&rr_names).cloned().collect();
    fleet::mint_certificates(&alpha.data_dir, dir.path(), &all);
    let alpha_url = format!("wss://{}", alpha.agent_addr);
    let beta_url = format!("wss://{}", beta.agent_addr);
    let system = cairn_agent::facts::collect();
    let recorder = Arc::new(Recorder::default());
    let (stop_all, stopped) = watch::channel(false);
    // The agent that goes away together with alpha, on its own switch.
    let (stop_lost, lost_stopped) = watch::channel(false);
    let lost_agent = fleet_names[0].clone();
    let mut on_alpha = Vec::new();
    for (idx, name) in all.iter().enumerate() {
        let urls = if idx % 2 == 0 {
            on_alpha.push(name.clone());
            vec![alpha_url.clone(), beta_url.clone()]
        } else {
            vec![beta_url.clone(), alpha_url.clone()]
        };
        let subscription = if name.starts_with("rr-") {
            "rr"
        } else {
            "fleet"
        };
        let mut config = fleet::agent_config(
            name,
            urls,
            dir.path(),
            &alpha.ca_file(),
            vec![subscription.into()],
        );
        config.keepalive_interval = 2;
        config.keepalive_warning_timeout = 6;
        let agent = SimAgent {
            config: Arc::new(config),
            system: system.clone(),
        };
        let stop = if *name == lost_agent {
            lost_stopped.clone()
        } else {
            stopped.clone()
        };
        tokio::spawn(sim::run(agent, recorder.clone(), stop));
    }
    eventually("every agent connected", Duration::from_secs(30), || async {
        match all
            .iter()
            .filter(|name| recorder.sessions(name) == 0)
            .count()
        {
            0 => Ok(()),
            waiting => Err(format!("{waiting} agents not connected")),
        }
    })
    .await;

    // Each check exactly once per interval across both backends.
    let chosen = assert_exactly_once(
        &recorder,
        &fleet_names,
        &rr_names,
        unix_now() + INTERVAL,
        "two backends",
    )
    .await;
    assert!(
        chosen.iter().any(|name| on_alpha.contains(name))
            && chosen.iter().any(|name| !on_alpha.contains(name)),
        "the round-robin check should rotate over the agents of both backends: chose {chosen:?}"
    );

    // Exactly one backend runs the replicators (and one the watchdogs).
    for role in ["replicators", "watchdogs"] {
        let line = format!("leading {role}");
        let leaders = [&alpha, &beta]
            .iter()
            .filter(|backend| backend.log().contains(&line))
            .count();
        assert_eq!(leaders, 1, "{line}: {leaders} backends say so");
    }
    let alpha_led_replicators = alpha.log().contains("leading replicators");

    // Kill alpha, and one of its agents with it.
    let lost_issued = recorder.latest(std::slice::from_ref(&lost_agent));
    stop_lost.send_replace(true);
    alpha.kill();
    let killed_at = unix_now();
    let moved: Vec<&String> = on_alpha
        .iter()
        .filter(|name| **name != lost_agent)
        .collect();
    eventually(
        "alpha's agents reconnect to beta",
        Duration::from_secs(30),
        || async {
            match moved
                .iter()
                .filter(|name| recorder.sessions(name) < 2)
                .count()
            {
                0 => Ok(()),
                waiting => Err(format!("{waiting} of alpha's agents not reconnected")),
            }
        },
    )
    .await;
    let survivors: Vec<String> = fleet_names
        .iter()
        .filter(|name| **name != lost_agent)
        .cloned()
        .collect();
    assert_exactly_once(
        &recorder,
        &survivors,
        &rr_names,
        unix_now() + INTERVAL,
        "after alpha was killed",
    )
    .await;

    // The keepalive watch of the agent that went away with alpha: beta adopts it once alpha's
    // lease runs out and raises the warning.
    eventually(
        &format!("a keepalive warning for {lost_agent} from beta"),
        Duration::from_secs(45),
        || async {
            let event = stored_event(&admin_beta, &lost_agent, "keepalive").await;
            let status = event.as_ref().map(|event| event["check"]["status"].clone());
            if status == Some(json!(1)) {
                Ok(())
            } else {
                Err(format!(
                    "keepalive event status {status:?}; beta's log:\n{}",
                    beta.log()
                ))
            }
        },
    )
    .await;
    if alpha_led_replicators {
        assert!(
            beta.log().contains("leading replicators"),
            "beta should run the replicators once alpha is gone:\n{}",
            beta.log()
        );
    }
    assert!(
        beta.log().contains("keepalive watch taken over"),
        "beta should say it took the watch over:\n{}",
        beta.log()
    );

    // Nothing lost, nothing stored twice: every result an agent had acknowledged is the one
    // stored last or in its history, once; the others' keepalives stayed passing.
    let acked = lock(&recorder.acked).clone();
    for name in &survivors {
        let event = stored_event(&admin_beta, name, "fleet-check")
            .await
            .unwrap_or_else(|| panic!("no stored fleet-check event for {name}"));
        let history: Vec<i64> = event["check"]["history"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|entry| entry["executed"].as_i64())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            history.windows(2).all(|pair| pair[0] < pair[1]),
            "{name}: a result was stored twice (history executed times {history:?})"
        );
        let issued = event["check"]["issued"].as_i64().unwrap_or(0);
        let latest = acked.get(name).and_then(|all| all.iter().max()).copied();
        assert!(
            latest.is_some_and(|latest| latest <= issued + INTERVAL),
            "{name}: stored result issued at {issued}, but results up to {latest:?} were acknowledged"
        );
        let keepalive = stored_event(&admin_beta, name, "keepalive")
            .await
            .unwrap_or_else(|| panic!("no keepalive event for {name}"));
        assert_eq!(
            keepalive["check"]["status"], 0,
            "{name}: its keepalive should have stayed passing across the takeover"
        );
    }
    // The lost agent's results up to its end were all stored.
    let event = stored_event(&admin_beta, &lost_agent, "fleet-check")
        .await
        .expect("the lost agent's last result");
    assert!(event["check"]["issued"].as_i64().unwrap_or(0) >= lost_issued);
    assert!(killed_at > 0);
    stop_all.send_replace(true);
}

/// Posts events as fast as `workers` clients can, counting the outcomes by status, until
/// `stop` turns true.
async fn load(
    client: Client,
    workers: usize,
    stop: watch::Receiver<bool>,
) -> Arc<Mutex<BTreeMap<u16, usize>>> {
    let outcomes = Arc::new(Mutex::new(BTreeMap::new()));
    for worker in 0..workers {
        let client = client.clone();
        let outcomes = Arc::clone(&outcomes);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !*stop.borrow() {
                n += 1;
                let event = json!({
                    "entity": {"entity_class": "proxy", "metadata": {"name": format!("load-{worker}")}},
                    "check": {"metadata": {"name": format!("c-{}", n % 16)}, "status": n % 3, "output": "load", "interval": 60},
                });
                let status = match client
                    .send(
                        Method::POST,
                        "/api/core/v2/namespaces/default/events",
                        Some(&event),
                    )
                    .await
                {
                    Ok(response) => response.status().as_u16(),
                    Err(cairn_api::client::ClientError::Status { status, message }) => {
                        eprintln!("load: {status}: {message}");
                        status.as_u16()
                    }
                    Err(err) => {
                        eprintln!("load: {err}");
                        0
                    }
                };
                *lock(&outcomes).entry(status).or_default() += 1;
            }
        });
    }
    outcomes
}

/// The index of the member that leads the etcd cluster.
async fn etcd_leader(etcd: &EtcdCluster) -> usize {
    for idx in 0..etcd.len() {
        let mut client = etcd.member_client(idx).await;
        let status = client.status().await.expect("etcd member status");
        let me = status.header().map(|header| header.member_id());
        if me == Some(status.leader()) {
            return idx;
        }
    }
    panic!("no etcd member says it leads");
}

async fn health(backend: &Backend) -> u16 {
    let client = backend.client(cairn_api::client::Credentials::None);
    match client.send(Method::GET, "/health", None).await {
        Ok(response) => response.status().as_u16(),
        Err(cairn_api::client::ClientError::Status { status, .. }) => status.as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_an_etcd_member_fails_no_write_and_losing_quorum_is_a_503_until_it_returns() {
    let mut etcd = EtcdCluster::start(3);
    let backend = Backend::start_with(etcd_options(&etcd));
    let admin = backend.admin().await;
    assert_eq!(health(&backend).await, 200);

    // Under load, one member dies: no write fails.
    let (stop, stopped) = watch::channel(false);
    let outcomes = load(admin.clone(), 8, stopped).await;
    // A probe: `Ok` once `at_least` writes succeeded, else the outcomes so far.
    let until_ok = |at_least: usize| {
        let outcomes = Arc::clone(&outcomes);
        move || {
            let counted = lock(&outcomes).clone();
            let ok = counted.get(&201).copied().unwrap_or(0) >= at_least;
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(format!("{counted:?}"))
                }
            }
        }
    };
    eventually(
        "the load is running",
        Duration::from_secs(20),
        until_ok(200),
    )
    .await;
    // The leader, the hardest member to lose: a new one must be elected under the load.
    let leader = etcd_leader(&etcd).await;
    etcd.kill(leader);
    let before = lock(&outcomes).get(&201).copied().unwrap_or(0);
    eventually(
        "writes go on with one member down",
        Duration::from_secs(30),
        until_ok(before + 500),
    )
    .await;
    stop.send_replace(true);
    let counted = lock(&outcomes).clone();
    assert_eq!(
        counted.keys().copied().collect::<Vec<_>>(),
        [201],
        "with one etcd member down every write should succeed: {counted:?}\n{}",
        backend.log()
    );
    assert_eq!(health(&backend).await, 200, "quorum holds: healthy");

    // A second member dies: no quorum. The backend stays up, says so, and refuses writes.
    let second = (leader + 1) % 3;
    etcd.kill(second);
    eventually(
        "/health reports the lost quorum",
        Duration::from_secs(30),
        || async {
            if health(&backend).await == 503 {
                Ok(())
            } else {
                Err(backend.log())
            }
        },
    )
    .await;
    let event = json!({
        "entity": {"entity_class": "proxy", "metadata": {"name": "no-quorum"}},
        "check": {"metadata": {"name": "c"}, "status": 0, "output": "x", "interval": 60},
    });
    match admin
        .send(
            Method::POST,
            "/api/core/v2/namespaces/default/events",
            Some(&event),
        )
        .await
    {
        Err(cairn_api::client::ClientError::Status { status, .. }) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        }
        other => panic!("a write without quorum should be a 503, got {other:?}"),
    }

    // The members return: healthy again, writes succeed, with no restart of the backend.
    let pid = backend.pid();
    etcd.start_member(leader);
    etcd.start_member(second);
    eventually(
        "the backend recovers by itself",
        Duration::from_secs(40),
        || async {
            if health(&backend).await == 200
                && admin
                    .send(
                        Method::POST,
                        "/api/core/v2/namespaces/default/events",
                        Some(&event),
                    )
                    .await
                    .is_ok()
            {
                Ok(())
            } else {
                Err(backend.log())
            }
        },
    )
    .await;
    assert_eq!(backend.pid(), pid, "the same backend process recovered");
}
