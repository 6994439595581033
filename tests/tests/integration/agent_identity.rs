//! Every agent identity stays inside what it was granted (issue 13, agents), against real
//! backends, real `cairn-agent install` with join tokens and real mutual TLS:
//!
//! - a certificate enrolled with a `dev` token cannot say hello in `prod` (the real agent with
//!   its `agent.yaml` edited): refused, prod's entity untouched and prod's check never received;
//! - a revoked certificate is refused whatever namespace its hello names, on a second backend
//!   sharing the store and after a restart, and the revocation names the certificate;
//! - a renewal signs for the session's own namespace, and a renewed certificate is revoked with
//!   its entity;
//! - a second enrolment of an entity with a live certificate is refused (also two at once),
//!   unless the token was minted with `replace` for that name, which retires the old one;
//! - a token that pins its subscriptions refuses a hello claiming others, across a restart.
//!
//! The forged sessions use the agent's own session code (`cairn_agent::session`).

use std::path::Path;
use std::time::Duration;

use cairn_agent::config::AgentConfig;
use cairn_api::agent::{AgentMessage, BackendMessage};
use cairn_api::client::{Client, ClientError};
use cairn_api::model::System;
use cairn_tests::etcd::EtcdCluster;
use cairn_tests::{
    create_namespaces, eventually, text_matching, Agent, AgentInstall, Backend, BackendOptions,
};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// How long an agent gets to connect, or to be refused.
const CONNECT_WITHIN: Duration = Duration::from_secs(20);

// === the REST API ===

/// `PUT` a core/v2 resource of `namespace`.
async fn put(admin: &Client, namespace: &str, plural: &str, name: &str, mut body: Value) {
    body["metadata"]["name"] = json!(name);
    body["metadata"]["namespace"] = json!(namespace);
    admin
        .send(
            Method::PUT,
            &format!("/api/core/v2/namespaces/{namespace}/{plural}/{name}"),
            Some(&body),
        )
        .await
        .unwrap_or_else(|err| panic!("PUT {plural}/{name} in {namespace}: {err}"));
}

/// `GET` a core/v2 resource of `namespace`; `None` for a 404.
async fn get(admin: &Client, namespace: &str, plural: &str, name: &str) -> Option<Value> {
    let path = format!("/api/core/v2/namespaces/{namespace}/{plural}/{name}");
    match admin.get_json(&path).await {
        Ok(value) => Some(value),
        Err(ClientError::Status { status, .. }) if status == StatusCode::NOT_FOUND => None,
        Err(err) => panic!("GET {path}: {err}"),
    }
}

/// Mints a join token with `body` (`ttl_seconds` and `uses` defaulted); returns the token.
async fn mint(admin: &Client, mut body: Value) -> String {
    if body.get("ttl_seconds").is_none() {
        body["ttl_seconds"] = json!(600);
    }
    let response = admin
        .send(Method::POST, "/api/cairn/v1/jointokens", Some(&body))
        .await
        .unwrap_or_else(|err| panic!("create a join token {body}: {err}"));
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("the token as JSON");
    created["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {created}"))
        .to_owned()
}

/// Revokes `namespace`/`name` through the API; returns the answer.
async fn revoke(admin: &Client, namespace: &str, name: &str) -> Value {
    let path = format!("/api/cairn/v1/agents/{namespace}/{name}/revoke");
    let response = admin
        .send(Method::POST, &path, Some(&json!({})))
        .await
        .unwrap_or_else(|err| panic!("revoke {namespace}/{name}: {err}"));
    response.json().await.expect("the revocation as JSON")
}

// === installed agents ===

/// The configuration `install` wrote.
fn load_config(install: &AgentInstall) -> AgentConfig {
    AgentConfig::load(&install.config()).expect("the installed agent.yaml")
}

/// Rewrites the installed `agent.yaml` with `edit` applied (the agent side of a forgery).
fn edit_config(install: &AgentInstall, edit: impl FnOnce(&mut AgentConfig)) {
    let mut config = load_config(install);
    edit(&mut config);
    std::fs::write(install.config(), config.to_yaml()).expect("write agent.yaml");
}

/// Waits until the agent's log contains `text`.
async fn wait_logged(agent: &Agent, text: &str) {
    eventually(
        &format!("the agent logging {text:?}"),
        CONNECT_WITHIN,
        || async { text_matching(agent.log(), |log| log.contains(text)) },
    )
    .await;
}

/// Waits until the agent's entity is registered in `namespace`; returns it.
async fn wait_entity(admin: &Client, agent: &Agent, namespace: &str, name: &str) -> Value {
    eventually(
        &format!("entity {namespace}/{name}"),
        CONNECT_WITHIN,
        || async {
            match get(admin, namespace, "entities", name).await {
                Some(entity) if entity["entity_class"] == "agent" => Ok(entity),
                _ => Err(agent.log()),
            }
        },
    )
    .await
}

/// The serial (lowercase hex) and the URI SANs of a PEM certificate.
fn serial_and_uris(pem: &str) -> (String, Vec<String>) {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("a certificate");
    let serial = cert
        .raw_serial()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let uris = cert
        .subject_alternative_name()
        .expect("parseable SANs")
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (serial, uris)
}

// === forged sessions, with the agent's own session code ===

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Connects to `agent_addr` with the key and certificate of `config`, says the hello of
/// `config` (as edited by the caller) and returns the socket and the backend's first answer.
async fn say_hello(config: &AgentConfig, agent_addr: &str) -> (Socket, BackendMessage) {
    let url = format!("wss://{agent_addr}");
    let mut ws = cairn_agent::session::connect(config, &url)
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"));
    let hello = cairn_agent::session::hello(config, System::default());
    send(&mut ws, &AgentMessage::Hello(Box::new(hello))).await;
    let answer = next_answer(&mut ws).await;
    (ws, answer)
}

async fn send(ws: &mut Socket, message: &AgentMessage) {
    let text = serde_json::to_string(message).expect("serialise");
    ws.send(Message::text(text)).await.expect("send");
}

/// The next backend message other than a check request or an acknowledgement.
async fn next_answer(ws: &mut Socket) -> BackendMessage {
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let message: BackendMessage =
                        serde_json::from_str(text.as_str()).expect("a backend message");
                    if !matches!(
                        message,
                        BackendMessage::CheckRequest(_)
                            | BackendMessage::Ack { .. }
                            | BackendMessage::EntityConfig { .. }
                    ) {
                        return message;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the session ended without an answer: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("an answer within 15 s")
}

/// Says hello until the backend refuses it (another backend's view may take a moment);
/// returns the reason.
async fn wait_refused(config: &AgentConfig, agent_addr: &str, what: &str) -> String {
    eventually(what, Duration::from_secs(10), || async {
        let (mut ws, answer) = say_hello(config, agent_addr).await;
        let _ = ws.close(None).await;
        match answer {
            BackendMessage::Refused { reason, fatal } => {
                assert!(fatal, "{reason}");
                Ok(reason)
            }
            other => Err(format!("last answer: {other:?}")),
        }
    })
    .await
}

fn csr_for(install: &AgentInstall) -> String {
    let key_pem = std::fs::read_to_string(install.config_dir.join("agent.key")).expect("key");
    let key = rcgen::KeyPair::from_pem(&key_pem).expect("the agent key");
    cairn_agent::certs::csr_pem(&key, &install.name).expect("a CSR")
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|err| panic!("read {file}: {err}"))
}

// === the tests ===

/// Finding 1: a dev token's certificate saying hello in prod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_certificate_cannot_speak_for_prod() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    create_namespaces(&admin, &["dev", "prod"]).await;
    // Prod already has an entity of that name, and a check for `linux`.
    put(
        &admin,
        "prod",
        "entities",
        "web-01",
        json!({"metadata": {"labels": {"team": "prod"}}, "entity_class": "proxy", "subscriptions": ["linux"]}),
    )
    .await;
    for namespace in ["dev", "prod"] {
        put(
            &admin,
            namespace,
            "checks",
            "hostcheck",
            json!({"command": "true", "interval": 1, "subscriptions": ["linux"], "publish": true}),
        )
        .await;
    }
    let token = mint(
        &admin,
        json!({"namespace": "dev", "subscriptions": ["linux"]}),
    )
    .await;
    let install = AgentInstall::install(&backend, &token, "web-01");

    edit_config(&install, |config| "prod".clone_into(&mut config.namespace));
    let mut agent = install.start();
    wait_logged(
        &agent,
        "the hello names namespace \"prod\" but the certificate is for namespace \"dev\"",
    )
    .await;
    agent.terminate();
    let entity = get(&admin, "prod", "entities", "web-01")
        .await
        .expect("prod's entity");
    assert_eq!(entity["entity_class"], "proxy", "{entity:#}");
    assert_eq!(entity["metadata"]["labels"]["team"], "prod", "{entity:#}");
    assert!(
        get(&admin, "prod", "events", "web-01/hostcheck")
            .await
            .is_none(),
        "prod's check reached the dev agent"
    );

    // The forged hello of the agent's own session code is refused the same way; an empty
    // namespace means the certificate's.
    let mut config = load_config(&install);
    let (_, answer) = say_hello(&config, &backend.agent_addr).await;
    assert!(
        matches!(&answer, BackendMessage::Refused { reason, fatal: true } if reason.contains("namespace \"prod\"")),
        "{answer:?}"
    );
    config.namespace.clear();
    let (mut ws, answer) = say_hello(&config, &backend.agent_addr).await;
    assert_eq!(
        answer,
        BackendMessage::Welcome {
            entity: "web-01".into()
        }
    );
    let _ = ws.close(None).await;

    // Control: in its own namespace the agent connects and runs dev's check.
    edit_config(&install, |config| "dev".clone_into(&mut config.namespace));
    let agent = install.start();
    wait_entity(&admin, &agent, "dev", "web-01").await;
    eventually("dev's check result", CONNECT_WITHIN, || async {
        get(&admin, "dev", "events", "web-01/hostcheck")
            .await
            .ok_or_else(|| agent.log())
    })
    .await;
    assert!(get(&admin, "prod", "events", "web-01/hostcheck")
        .await
        .is_none());
    let (_, uris) = serial_and_uris(&read(&install.config_dir, "agent.pem"));
    assert_eq!(uris, ["cairn:agent:dev/web-01"]);
}

/// Finding 2: a revoked certificate on another backend, in another namespace, after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_holds_on_every_backend_whatever_the_hello_says() {
    let etcd = EtcdCluster::start(1);
    let mut alpha = Backend::start_with(
        BackendOptions::default()
            .init_arg("--store")
            .init_arg("etcd")
            .init_arg("--etcd-endpoints")
            .init_arg(etcd.endpoints_arg()),
    );
    let beta = Backend::join(&alpha, BackendOptions::default());
    let admin = alpha.admin().await;
    create_namespaces(&admin, &["dev", "prod"]).await;
    let token = mint(&admin, json!({"namespace": "dev"})).await;
    let install = AgentInstall::install(&alpha, &token, "rev-01");
    let (serial, _) = serial_and_uris(&read(&install.config_dir, "agent.pem"));
    let config = load_config(&install);
    let (mut ws, answer) = say_hello(&config, &beta.agent_addr).await;
    assert_eq!(
        answer,
        BackendMessage::Welcome {
            entity: "rev-01".into()
        }
    );

    let revoked = revoke(&admin, "dev", "rev-01").await;
    // Beta drops the live session.
    assert_eq!(
        next_answer(&mut ws).await,
        BackendMessage::Refused {
            reason: "certificate revoked".into(),
            fatal: true
        }
    );

    // Whatever namespace the hello names, on either backend.
    for (namespace, backend) in [("dev", &beta), ("prod", &beta), ("", &alpha)] {
        let mut forged = config.clone();
        namespace.clone_into(&mut forged.namespace);
        let reason = wait_refused(
            &forged,
            &backend.agent_addr,
            &format!("the revoked certificate refused with namespace {namespace:?}"),
        )
        .await;
        assert!(
            reason.contains("revoked") || reason.contains("namespace \"prod\""),
            "{reason}"
        );
    }
    assert!(get(&admin, "prod", "entities", "rev-01").await.is_none());
    assert_eq!(
        revoked["certificates"][0]["serial"], serial,
        "the revocation names the certificate: {revoked:#}"
    );

    // And after a restart.
    alpha.restart();
    for namespace in ["dev", "prod"] {
        let mut forged = config.clone();
        namespace.clone_into(&mut forged.namespace);
        let (_, answer) = say_hello(&forged, &alpha.agent_addr).await;
        assert!(
            matches!(&answer, BackendMessage::Refused { fatal: true, .. }),
            "{namespace}: {answer:?}"
        );
    }
}

/// Finding 2: renewal signs for the session's namespace, and what it signed is revoked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_keeps_its_namespace_and_is_revoked_with_it() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    create_namespaces(&admin, &["dev", "prod"]).await;
    let token = mint(&admin, json!({"namespace": "dev"})).await;
    let install = AgentInstall::install(&backend, &token, "ren-01");
    let config = load_config(&install);
    let (mut ws, answer) = say_hello(&config, &backend.agent_addr).await;
    assert!(
        matches!(answer, BackendMessage::Welcome { .. }),
        "{answer:?}"
    );
    send(
        &mut ws,
        &AgentMessage::RenewCertificate {
            csr_pem: csr_for(&install),
        },
    )
    .await;
    let BackendMessage::Certificate { cert_pem } = next_answer(&mut ws).await else {
        panic!("no renewed certificate");
    };
    let _ = ws.close(None).await;
    std::fs::write(&config.cert_file, &cert_pem).expect("install the renewed certificate");

    let revoked = revoke(&admin, "dev", "ren-01").await;
    // The renewed certificate is refused in its namespace and cannot move to another one to
    // renew its way out.
    for namespace in ["dev", "prod"] {
        let mut forged = config.clone();
        namespace.clone_into(&mut forged.namespace);
        let (mut ws, answer) = say_hello(&forged, &backend.agent_addr).await;
        if answer
            != (BackendMessage::Welcome {
                entity: "ren-01".into(),
            })
        {
            assert!(
                matches!(&answer, BackendMessage::Refused { fatal: true, .. }),
                "{answer:?}"
            );
            continue;
        }
        send(
            &mut ws,
            &AgentMessage::RenewCertificate {
                csr_pem: csr_for(&install),
            },
        )
        .await;
        panic!(
            "a revoked certificate was welcomed in {namespace}; its renewal: {:?}",
            next_answer(&mut ws).await
        );
    }
    let (renewed_serial, uris) = serial_and_uris(&cert_pem);
    assert_eq!(uris, ["cairn:agent:dev/ren-01"]);
    assert_eq!(
        revoked["certificates"][0]["serial"], renewed_serial,
        "the revocation names the renewed certificate: {revoked:#}"
    );
}

/// Finding 3: enrolling over a live entity needs `replace`, and two at once cannot both win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_entity_is_enrolled_again_only_with_replace() {
    let backend = Backend::start();
    let admin = backend.admin().await;
    let token = mint(&admin, json!({"uses": 4})).await;
    let first = AgentInstall::install(&backend, &token, "live-01");
    let agent = first.start();
    wait_entity(&admin, &agent, "default", "live-01").await;

    let refusal = AgentInstall::try_install(&backend, &token, "live-01")
        .err()
        .expect("a second enrolment of a live entity is refused");
    assert!(
        refusal.contains("already has a live certificate") && refusal.contains("--replace live-01"),
        "{refusal}"
    );

    // Two enrolments of a new name at once: exactly one wins.
    let (left, right) = std::thread::scope(|scope| {
        let left = scope.spawn(|| AgentInstall::try_install(&backend, &token, "race-01"));
        let right = scope.spawn(|| AgentInstall::try_install(&backend, &token, "race-01"));
        (left.join().expect("join"), right.join().expect("join"))
    });
    assert_eq!(
        usize::from(left.is_ok()) + usize::from(right.is_ok()),
        1,
        "{:?} {:?}",
        left.as_ref().err(),
        right.as_ref().err()
    );

    // A token minted to replace another name does not help.
    let other = mint(&admin, json!({"replace": "someone-else"})).await;
    assert!(AgentInstall::try_install(&backend, &other, "live-01").is_err());
    assert!(!agent.log().contains("replaced"), "{}", agent.log());

    // With `replace` for that name: enrolled, and the old certificate is retired at once.
    let replace = mint(&admin, json!({"replace": "live-01"})).await;
    let second = AgentInstall::install(&backend, &replace, "live-01");
    wait_logged(&agent, "certificate revoked").await;
    let (_, answer) = say_hello(&load_config(&first), &backend.agent_addr).await;
    assert!(
        matches!(&answer, BackendMessage::Refused { reason, fatal: true } if reason.contains("revoked")),
        "{answer:?}"
    );
    let successor = second.start();
    wait_logged(&successor, " connected").await;
}

/// Finding 4: pinned subscriptions, across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_subscriptions_refuse_others_across_a_restart() {
    let mut backend = Backend::start();
    let admin = backend.admin().await;
    let token = mint(
        &admin,
        json!({"subscriptions": ["linux"], "pin_subscriptions": true}),
    )
    .await;
    let install = AgentInstall::install(&backend, &token, "pin-01");
    edit_config(&install, |config| {
        config.subscriptions = vec!["linux".into(), "prod-db".into()];
    });
    let claim = "subscription \"prod-db\" is not allowed";
    let mut agent = install.start();
    wait_logged(&agent, claim).await;
    agent.terminate();
    assert!(get(&admin, "default", "entities", "pin-01").await.is_none());

    backend.restart();
    let config = load_config(&install);
    let (_, answer) = say_hello(&config, &backend.agent_addr).await;
    assert!(
        matches!(&answer, BackendMessage::Refused { reason, fatal: true } if reason.contains("\"prod-db\" is not allowed") && reason.contains("[linux]")),
        "{answer:?}"
    );

    // Control: its own subscriptions (and entity:<name>) are fine.
    edit_config(&install, |config| {
        config.subscriptions = vec!["linux".into(), "entity:pin-01".into()];
    });
    let admin = backend.admin().await;
    let agent = install.start();
    wait_entity(&admin, &agent, "default", "pin-01").await;
}
