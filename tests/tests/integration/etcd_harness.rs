//! The etcd harness itself (`cairn_tests::etcd`): a real 3-member cluster replicates, keeps a
//! quorum with a member killed and takes it back, requires client certificates with TLS; and
//! two backends of one cluster on it (`init --store etcd`, then `Backend::join`) see each
//! other's writes.

use std::time::Duration;

use cairn_api::client::Client;
use cairn_tests::etcd::{self, EtcdCluster, EtcdClusterConfig};
use cairn_tests::{eventually, Backend, BackendOptions};
use etcd_client::{Certificate, ConnectOptions, GetOptions, TlsOptions};
use reqwest::Method;
use serde_json::json;

/// One request of a test to etcd; past it, etcd is taken not to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a write through one backend may take to show through the other.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

/// The value of `key` read through `client` (linearizable), or why it could not be read.
async fn read(client: &mut etcd_client::Client, key: &str) -> Result<Option<String>, String> {
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, client.get(key, None))
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|err| err.to_string())?;
    Ok(answer
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

async fn write(client: &mut etcd_client::Client, key: &str, value: &str) -> Result<(), String> {
    tokio::time::timeout(REQUEST_TIMEOUT, client.put(key, value, None))
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
        .map(|_| ())
        .map_err(|err| err.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_form_one_cluster_and_replicate_writes() {
    if !etcd::required() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(cluster.endpoints_arg(), endpoints.join(","));
    assert!(
        endpoints
            .iter()
            .all(|url| url.starts_with("http://127.0.0.1:")),
        "{endpoints:?}"
    );

    let mut first = cluster.member_client(0).await;
    let members = first.member_list().await.expect("member list");
    assert_eq!(members.members().len(), 3, "the members joined one cluster");

    write(&mut first, "harness/a", "through member 0")
        .await
        .expect("write through member 0");
    let mut third = cluster.member_client(2).await;
    assert_eq!(
        read(&mut third, "harness/a")
            .await
            .expect("read at member 2"),
        Some("through member 0".to_owned())
    );
    assert!(
        cluster.member_log(2).contains("m2"),
        "member 2 logs to its own file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_leaves_a_quorum_and_comes_back_with_the_writes_it_missed() {
    if !etcd::required() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    let pid = cluster.member_pid(1).expect("member 1 runs");
    cluster.kill(1);
    assert_eq!(cluster.member_pid(1), None);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "member 1's process is gone"
    );
    let mut killed = cluster.member_client(1).await;
    assert!(
        read(&mut killed, "harness/b").await.is_err(),
        "a killed member answered"
    );

    // The two others are a quorum: writes through them still commit (once they have elected
    // a new leader, if member 1 led; on a loaded machine that can take a few seconds).
    let survivors = [cluster.endpoint(0), cluster.endpoint(2)];
    let mut client = etcd_client::Client::connect(survivors, Some(cluster.connect_options()))
        .await
        .expect("client of members 0 and 2");
    eventually(
        "a write through members 0 and 2 with member 1 down",
        Duration::from_secs(30),
        || {
            // A clone per attempt: the probe's future cannot borrow `client` mutably.
            let mut client = client.clone();
            async move { write(&mut client, "harness/b/0", "while 1 was down").await }
        },
    )
    .await;
    for n in 1..10 {
        write(&mut client, &format!("harness/b/{n}"), "while 1 was down")
            .await
            .unwrap_or_else(|err| panic!("write {n} with member 1 down: {err}"));
    }

    cluster.start_member(1);
    assert!(cluster.member_pid(1).is_some_and(|new| new != pid));
    let mut back = cluster.member_client(1).await;
    let answer = back
        .get(
            "harness/b/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("read at the restarted member");
    assert_eq!(answer.count(), 10, "member 1 caught up on what it missed");
    write(&mut back, "harness/c", "through member 1 again")
        .await
        .expect("write through the restarted member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_requires_a_client_certificate() {
    if !etcd::required() {
        return;
    }
    let cluster = EtcdCluster::start_tls(3);
    let (ca, cert, key) = cluster.tls_files().expect("TLS files");
    assert!(ca.is_file() && cert.is_file() && key.is_file());
    assert!(cluster.endpoint(0).starts_with("https://127.0.0.1:"));

    let mut client = cluster.client().await;
    write(&mut client, "harness/tls", "ok")
        .await
        .expect("write with the client certificate");
    assert_eq!(
        read(&mut client, "harness/tls").await.unwrap(),
        Some("ok".to_owned())
    );

    // The same CA but no client certificate: refused.
    let ca_only =
        TlsOptions::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    let options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_tls(ca_only);
    let refused = match etcd_client::Client::connect(cluster.endpoints(), Some(options)).await {
        Ok(mut anonymous) => read(&mut anonymous, "harness/tls").await,
        Err(err) => Err(err.to_string()),
    };
    assert!(
        refused.is_err(),
        "read without a client certificate: {refused:?}"
    );
}

#[test]
fn a_member_that_cannot_start_fails_naming_it_and_quoting_its_log() {
    if !etcd::required() {
        return;
    }
    let started = std::panic::catch_unwind(|| {
        EtcdClusterConfig::new(1)
            .arg("--no-such-flag-for-the-harness")
            .start()
    });
    let panic = started.err().expect("a member with a bad flag started");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("etcd member 0 exited"), "{message}");
    assert!(
        message.contains("no-such-flag-for-the-harness"),
        "the message quotes etcd's complaint: {message}"
    );
}

/// Two backends on one TLS etcd cluster: `init --store etcd` seeds the first (and the admin
/// user into etcd), the second starts on a copy of its data dir; a namespace and a check created
/// through one are read through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_on_one_etcd_cluster_see_each_others_writes() {
    if !etcd::required() {
        return;
    }
    let cluster = EtcdCluster::start_tls(3);
    // The first names the store to `start` as well; the second has only the copied data dir.
    let first = Backend::start_with(
        BackendOptions::default()
            .init_args(cluster.backend_args())
            .args(cluster.backend_args())
            .capture_logs(),
    );
    let second = Backend::join(&first, BackendOptions::default().capture_logs());
    assert_ne!(first.url, second.url);
    assert_ne!(first.agent_addr, second.agent_addr);

    // The admin user lives in etcd: both backends log them in.
    let (alpha, beta) = (first.admin().await, second.admin().await);
    alpha
        .send(
            Method::PUT,
            "/api/core/v2/namespaces/shared",
            Some(&json!({"name": "shared"})),
        )
        .await
        .expect("create namespace shared through the first backend");
    let namespace = get_eventually(&beta, "/api/core/v2/namespaces/shared", &second).await;
    assert_eq!(namespace["name"], "shared");

    let check = json!({
        "metadata": {"name": "disk", "namespace": "shared"},
        "command": "check-disk --warn 80",
        "interval": 30,
        "subscriptions": ["linux"],
        "publish": false,
    });
    beta.send(
        Method::PUT,
        "/api/core/v2/namespaces/shared/checks/disk",
        Some(&check),
    )
    .await
    .expect("create check disk through the second backend");
    let stored = get_eventually(&alpha, "/api/core/v2/namespaces/shared/checks/disk", &first).await;
    assert_eq!(stored["command"], "check-disk --warn 80");

    // The data dir holds no store of its own: everything above is in etcd.
    let mut client = cluster.client().await;
    let keys = client
        .get(
            "/cairn/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("list the backend's keys");
    let keys: Vec<String> = keys
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    assert!(
        keys.iter().any(|key| key.ends_with("/shared/disk")),
        "the check is stored under etcd's /cairn/ prefix: {keys:?}"
    );
}

/// GETs `path` through `client` until it answers, for up to [`VISIBLE_WITHIN`].
async fn get_eventually(client: &Client, path: &str, backend: &Backend) -> serde_json::Value {
    eventually(
        &format!("{path} visible at {}", backend.url),
        VISIBLE_WITHIN,
        || async {
            client
                .get_json(path)
                .await
                .map_err(|err| format!("last error: {err}\nthat backend's log:\n{}", backend.log()))
        },
    )
    .await
}
