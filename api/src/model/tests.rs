//! The two forms of every kind: the wire form carries the keys of Sensu's json tags
//! (`api/core/v2/*.proto` of sensu-go 6.9; the enterprise types from Sensu's API docs), with
//! `null` where Go writes a nil slice, map or pointer; the manifest form stays compact; and a
//! wire body decodes back to the same resource.

use serde_json::{json, Value};

use crate::{Decoded, Kind, Resource};

fn decode(document: Value) -> Resource {
    match Resource::from_document(document) {
        Ok(Decoded::Resource(resource)) => resource,
        other => panic!("not a resource: {other:?}"),
    }
}

/// Asserts both forms of the resource `document` decodes to, and that its wire form reads
/// back as the same resource and writes the same wire form again.
fn assert_forms(document: Value, manifest: Value, wire: Value) {
    let resource = decode(document);
    assert_eq!(resource.to_document(), manifest, "manifest form");
    assert_eq!(resource.to_wire(), wire, "wire form");
    let read_back =
        Resource::from_wire(resource.kind(), resource.to_wire()).expect("the wire form decodes");
    assert_eq!(
        read_back, resource,
        "the wire form reads back as the resource"
    );
    assert_eq!(read_back.to_wire(), wire, "the wire form is stable");
}

fn core(type_name: &str, metadata: Value, spec: Value) -> Value {
    json!({"type": type_name, "api_version": "core/v2", "metadata": metadata, "spec": spec})
}

fn default_meta(name: &str) -> Value {
    json!({"name": name, "namespace": "default"})
}

#[test]
fn check_config() {
    let spec = json!({"command": "check-cpu", "interval": 60, "subscriptions": ["linux"]});
    assert_forms(
        core("CheckConfig", default_meta("cpu"), spec),
        core(
            "CheckConfig",
            default_meta("cpu"),
            json!({
                "command": "check-cpu", "interval": 60, "subscriptions": ["linux"],
                "handlers": [], "timeout": 0, "ttl": 0, "publish": false, "round_robin": false,
                "stdin": false, "high_flap_threshold": 0, "low_flap_threshold": 0,
            }),
        ),
        json!({
            "metadata": default_meta("cpu"),
            "command": "check-cpu", "interval": 60, "subscriptions": ["linux"],
            "handlers": [], "timeout": 0, "ttl": 0, "publish": false, "round_robin": false,
            "stdin": false, "high_flap_threshold": 0, "low_flap_threshold": 0,
            "runtime_assets": null, "env_vars": null, "check_hooks": null, "secrets": null,
            "pipelines": null, "output_metric_handlers": null, "output_metric_format": "",
            "proxy_entity_name": "", "subdue": null,
        }),
    );
}

#[test]
fn check_config_with_omitempty_fields_set() {
    let spec = json!({
        "command": "true", "cron": "* * * * *", "subscriptions": [],
        "proxy_requests": {"splay": true, "splay_coverage": 50},
        "max_output_size": 10, "discard_output": true,
        "output_metric_tags": [{"name": "a", "value": "b"}],
        "output_metric_thresholds": [{"name": "m", "thresholds": [{"max": "5", "status": 2}]}],
        "check_hooks": [{"critical": ["dump"]}],
        "secrets": [{"name": "TOKEN", "secret": "token"}],
        "pipelines": [{"name": "p"}],
    });
    let wire = decode(core("CheckConfig", default_meta("c"), spec)).to_wire();
    assert_eq!(wire["subscriptions"], json!([]), "never null for checks");
    assert_eq!(
        wire["proxy_requests"],
        json!({"entity_attributes": null, "splay": true, "splay_coverage": 50})
    );
    assert_eq!(
        wire["output_metric_thresholds"],
        json!([{"name": "m", "tags": null, "null_status": null,
                "thresholds": [{"min": null, "max": "5", "status": 2}]}])
    );
    assert_eq!(
        wire["pipelines"],
        json!([{"name": "p", "type": "", "api_version": ""}])
    );
    for key in [
        "cron",
        "max_output_size",
        "discard_output",
        "output_metric_tags",
    ] {
        assert!(wire.get(key).is_some(), "{key} is set and written");
    }
    let read_back = Resource::from_wire(Kind::CheckConfig, wire.clone()).expect("decodes");
    assert_eq!(read_back.to_wire(), wire);
}

#[test]
fn hook() {
    assert_forms(
        core(
            "HookConfig",
            default_meta("dump"),
            json!({"command": "ps", "timeout": 10}),
        ),
        core(
            "HookConfig",
            default_meta("dump"),
            json!({"command": "ps", "timeout": 10, "stdin": false}),
        ),
        json!({"metadata": default_meta("dump"), "command": "ps", "timeout": 10,
               "stdin": false, "runtime_assets": null}),
    );
}

#[test]
fn handler() {
    assert_forms(
        core(
            "Handler",
            default_meta("slack"),
            json!({"type": "pipe", "command": "slack"}),
        ),
        core(
            "Handler",
            default_meta("slack"),
            json!({"type": "pipe", "command": "slack", "timeout": 0, "handlers": [],
                   "filters": []}),
        ),
        json!({"metadata": default_meta("slack"), "type": "pipe", "command": "slack",
               "timeout": 0, "handlers": null, "filters": null, "env_vars": null,
               "runtime_assets": null, "secrets": null}),
    );
    let tcp = decode(core(
        "Handler",
        default_meta("tcp"),
        json!({"type": "tcp", "socket": {"host": "", "port": 514}, "mutator": "only_check_output"}),
    ));
    assert_eq!(tcp.to_wire()["socket"], json!({"port": 514}));
    assert_eq!(tcp.to_wire()["mutator"], "only_check_output");
}

#[test]
fn filter() {
    assert_forms(
        core(
            "EventFilter",
            default_meta("prod"),
            json!({"action": "allow", "expressions": ["event.check.occurrences == 1"]}),
        ),
        core(
            "EventFilter",
            default_meta("prod"),
            json!({"action": "allow", "expressions": ["event.check.occurrences == 1"]}),
        ),
        json!({"metadata": default_meta("prod"), "action": "allow",
               "expressions": ["event.check.occurrences == 1"], "runtime_assets": null}),
    );
}

#[test]
fn mutator() {
    assert_forms(
        core("Mutator", default_meta("m"), json!({"command": "jq ."})),
        core(
            "Mutator",
            default_meta("m"),
            json!({"command": "jq .", "timeout": 0}),
        ),
        json!({"metadata": default_meta("m"), "command": "jq .", "timeout": 0,
               "env_vars": null, "runtime_assets": null, "secrets": null}),
    );
}

#[test]
fn asset_with_one_build() {
    let sha = "a".repeat(128);
    assert_forms(
        core(
            "Asset",
            default_meta("ruby"),
            json!({"url": "https://example.com/ruby.tar.gz", "sha512": sha}),
        ),
        core(
            "Asset",
            default_meta("ruby"),
            json!({"url": "https://example.com/ruby.tar.gz", "sha512": sha}),
        ),
        json!({"metadata": default_meta("ruby"), "url": "https://example.com/ruby.tar.gz",
               "sha512": sha, "filters": null, "headers": null, "builds": null}),
    );
}

#[test]
fn asset_with_builds() {
    let sha = "b".repeat(128);
    let build = json!({"url": "https://example.com/a.tar.gz", "sha512": sha});
    assert_forms(
        core("Asset", default_meta("multi"), json!({"builds": [build]})),
        core("Asset", default_meta("multi"), json!({"builds": [build]})),
        json!({"metadata": default_meta("multi"), "filters": null, "headers": null,
               "builds": [{"url": "https://example.com/a.tar.gz", "sha512": sha,
                           "filters": null, "headers": null}]}),
    );
}

#[test]
fn pipeline() {
    assert_forms(
        core(
            "Pipeline",
            default_meta("p"),
            json!({"workflows": [{"name": "w", "filters": [{"name": "f", "type": "EventFilter"}]}]}),
        ),
        core(
            "Pipeline",
            default_meta("p"),
            json!({"workflows": [{"name": "w", "filters": [{"name": "f", "type": "EventFilter"}]}]}),
        ),
        json!({"metadata": default_meta("p"),
               "workflows": [{"name": "w", "handler": null,
                              "filters": [{"name": "f", "type": "EventFilter", "api_version": ""}]}]}),
    );
}

/// The entity Sensu writes for one with no facts: `system`, its `network` and
/// `deregistration` are struct values in Go, so they are objects even when unset.
fn bare_entity_wire(metadata: Value, class: &str, subscriptions: Value) -> Value {
    json!({
        "metadata": metadata, "entity_class": class, "subscriptions": subscriptions,
        "system": {"network": {"interfaces": null}, "libc_type": "", "vm_system": "",
                   "vm_role": "", "cloud_provider": "", "processes": null},
        "last_seen": 0, "deregister": false, "deregistration": {}, "sensu_agent_version": "",
    })
}

#[test]
fn entity() {
    assert_forms(
        core(
            "Entity",
            default_meta("db-1"),
            json!({"entity_class": "proxy", "subscriptions": ["entity:db-1"]}),
        ),
        core(
            "Entity",
            default_meta("db-1"),
            json!({"entity_class": "proxy", "subscriptions": ["entity:db-1"], "deregister": false}),
        ),
        bare_entity_wire(default_meta("db-1"), "proxy", json!(["entity:db-1"])),
    );
    let agent = decode(core(
        "Entity",
        default_meta("web-1"),
        json!({"entity_class": "agent", "subscriptions": [],
               "system": {"hostname": "web-1", "network": {"interfaces": [{"name": "lo", "addresses": []}]}},
               "deregistration": {"handler": "dereg"}}),
    ));
    let wire = agent.to_wire();
    assert_eq!(wire["subscriptions"], Value::Null);
    assert_eq!(
        wire["system"]["network"],
        json!({"interfaces": [{"name": "lo", "addresses": null}]})
    );
    assert_eq!(wire["system"]["hostname"], "web-1");
    assert_eq!(wire["deregistration"], json!({"handler": "dereg"}));
    assert_eq!(
        Resource::from_wire(Kind::Entity, wire).expect("decodes"),
        agent
    );
}

#[test]
fn entity_objects_sensu_writes_for_unset_facts_read_back_as_unset() {
    let sensu = bare_entity_wire(default_meta("x"), "proxy", Value::Null);
    let resource = Resource::from_wire(Kind::Entity, sensu).expect("decodes");
    let crate::Spec::Entity(entity) = &resource.spec else {
        panic!("not an entity")
    };
    assert_eq!((&entity.system, &entity.deregistration), (&None, &None));
}

#[test]
fn event() {
    let document = core(
        "Event",
        json!({"namespace": "default"}),
        json!({
            "timestamp": 1700000000,
            "entity": {"entity_class": "proxy", "subscriptions": ["entity:db-1"],
                       "metadata": default_meta("db-1")},
            "check": {"metadata": default_meta("disk"), "interval": 60, "status": 2,
                      "output": "full", "handlers": ["slack"], "total_state_change": 0},
        }),
    );
    assert_forms(
        document,
        core(
            "Event",
            json!({"namespace": "default"}),
            json!({
                "timestamp": 1700000000,
                "entity": {"entity_class": "proxy", "subscriptions": ["entity:db-1"],
                           "metadata": default_meta("db-1"), "deregister": false},
                "check": {"metadata": default_meta("disk"), "interval": 60, "status": 2,
                          "output": "full", "handlers": ["slack"], "subscriptions": [],
                          "timeout": 0, "ttl": 0, "publish": false, "round_robin": false,
                          "stdin": false, "high_flap_threshold": 0, "low_flap_threshold": 0,
                          "total_state_change": 0},
            }),
        ),
        json!({
            "metadata": {"namespace": "default"},
            "timestamp": 1700000000, "id": null, "sequence": 0, "pipelines": null,
            "entity": bare_entity_wire(default_meta("db-1"), "proxy", json!(["entity:db-1"])),
            "check": {
                "metadata": default_meta("disk"), "interval": 60, "handlers": ["slack"],
                "subscriptions": [], "timeout": 0, "ttl": 0, "publish": false,
                "round_robin": false, "stdin": false, "high_flap_threshold": 0,
                "low_flap_threshold": 0, "runtime_assets": null, "env_vars": null,
                "check_hooks": null, "secrets": null, "pipelines": null,
                "output_metric_handlers": null, "output_metric_format": "",
                "proxy_entity_name": "", "subdue": null, "scheduler": null,
                "status": 2, "output": "full", "issued": 0, "executed": 0, "history": null,
                "occurrences": 0, "occurrences_watermark": 0, "last_ok": 0,
                "total_state_change": 0, "is_silenced": false,
            },
        }),
    );
}

#[test]
fn event_metrics_carry_sensu_keys_on_the_wire_only() {
    let metrics = json!({"points": [{"name": "cpu", "value": 0.5}, "odd"]});
    let resource = decode(core(
        "Event",
        json!({"namespace": "default"}),
        json!({"entity": {"entity_class": "proxy", "metadata": default_meta("db-1")},
               "metrics": metrics}),
    ));
    assert_eq!(resource.to_document()["spec"]["metrics"], metrics);
    assert_eq!(
        resource.to_wire()["metrics"],
        json!({"handlers": null, "points": [
            {"name": "cpu", "value": 0.5, "timestamp": null, "tags": null}, "odd"]})
    );
    let read_back = Resource::from_wire(Kind::Event, resource.to_wire()).expect("decodes");
    assert_eq!(read_back, resource);
}

#[test]
fn silenced() {
    assert_forms(
        core(
            "Silenced",
            default_meta("linux:*"),
            json!({"subscription": "linux"}),
        ),
        core(
            "Silenced",
            default_meta("linux:*"),
            json!({"subscription": "linux", "expire": -1, "expire_on_resolve": false}),
        ),
        json!({"metadata": default_meta("linux:*"), "subscription": "linux", "expire": -1,
               "expire_on_resolve": false, "begin": 0, "expire_at": 0}),
    );
}

#[test]
fn namespace() {
    assert_forms(
        core("Namespace", json!({}), json!({"name": "ops"})),
        core("Namespace", json!({"name": "ops"}), json!({"name": "ops"})),
        json!({"name": "ops", "metadata": {"name": "ops"}}),
    );
}

#[test]
fn roles_and_bindings() {
    let rules = json!([{"verbs": ["get"], "resources": ["checks"]}]);
    for (type_name, metadata) in [
        ("Role", default_meta("viewer")),
        ("ClusterRole", json!({"name": "viewer"})),
    ] {
        assert_forms(
            core(type_name, metadata.clone(), json!({"rules": rules})),
            core(type_name, metadata.clone(), json!({"rules": rules})),
            json!({"metadata": metadata,
                   "rules": [{"verbs": ["get"], "resources": ["checks"], "resource_names": null}]}),
        );
    }
    let binding = json!({"role_ref": {"type": "Role", "name": "viewer"},
                         "subjects": [{"type": "Group", "name": "ops"}]});
    for (type_name, metadata) in [
        ("RoleBinding", default_meta("b")),
        ("ClusterRoleBinding", json!({"name": "b"})),
    ] {
        let mut wire = binding.clone();
        wire["metadata"] = metadata.clone();
        assert_forms(
            core(type_name, metadata.clone(), binding.clone()),
            core(type_name, metadata, binding.clone()),
            wire,
        );
    }
}

#[test]
fn user_without_password_or_hash_in_the_wire_form() {
    assert_forms(
        core("User", json!({}), json!({"username": "alice"})),
        core(
            "User",
            json!({}),
            json!({"username": "alice", "groups": [], "disabled": false}),
        ),
        json!({"metadata": {}, "username": "alice", "disabled": false}),
    );
}

#[test]
fn api_key() {
    assert_forms(
        core(
            "APIKey",
            json!({"name": "0b3f7a2e-5b8e-4c5e-9b52-6f1d2f0c8a11"}),
            json!({"username": "alice", "created_at": 1700000000}),
        ),
        core(
            "APIKey",
            json!({"name": "0b3f7a2e-5b8e-4c5e-9b52-6f1d2f0c8a11"}),
            json!({"username": "alice", "created_at": 1700000000}),
        ),
        json!({"metadata": {"name": "0b3f7a2e-5b8e-4c5e-9b52-6f1d2f0c8a11"},
               "username": "alice", "created_at": 1700000000}),
    );
}

fn wrapped(type_name: &str, api_version: &str, metadata: Value, spec: Value) -> Value {
    json!({"type": type_name, "api_version": api_version, "metadata": metadata, "spec": spec})
}

#[test]
fn secrets() {
    let secret = wrapped(
        "Secret",
        "secrets/v1",
        default_meta("pd"),
        json!({"id": "PD_KEY", "provider": "env"}),
    );
    assert_forms(secret.clone(), secret.clone(), secret);
    assert_forms(
        wrapped("Env", "secrets/v1", json!({"name": "env"}), json!({})),
        wrapped(
            "Env",
            "secrets/v1",
            json!({"name": "env"}),
            json!({"allow": []}),
        ),
        wrapped("Env", "secrets/v1", json!({"name": "env"}), json!({})),
    );
}

#[test]
fn vault_provider_has_tls_and_rate_limiter_keys() {
    let client = json!({"address": "https://vault:8200", "version": "v2"});
    assert_forms(
        wrapped(
            "VaultProvider",
            "secrets/v1",
            json!({"name": "vault"}),
            json!({"client": client}),
        ),
        wrapped(
            "VaultProvider",
            "secrets/v1",
            json!({"name": "vault"}),
            json!({"client": {"address": "https://vault:8200", "version": "v2",
                              "max_retries": 2, "timeout": "60s"}}),
        ),
        wrapped(
            "VaultProvider",
            "secrets/v1",
            json!({"name": "vault"}),
            json!({"client": {"address": "https://vault:8200", "version": "v2", "tls": null,
                              "max_retries": 2, "timeout": "60s", "rate_limiter": null}}),
        ),
    );
}

#[test]
fn federation() {
    let cluster = wrapped(
        "Cluster",
        "federation/v1",
        json!({"name": "eu"}),
        json!({"api_urls": ["https://eu:8080"]}),
    );
    assert_forms(cluster.clone(), cluster.clone(), cluster);
    let replicator = wrapped(
        "Replicator",
        "federation/v1",
        json!({"name": "roles"}),
        json!({"cluster": "eu", "resource": "Role"}),
    );
    let replicator_full = wrapped(
        "Replicator",
        "federation/v1",
        json!({"name": "roles"}),
        json!({"cluster": "eu", "api_version": "core/v2", "resource": "Role",
               "replication_interval_seconds": 30}),
    );
    assert_forms(replicator, replicator_full.clone(), replicator_full);
    let etcd = wrapped(
        "EtcdReplicator",
        "federation/v1",
        json!({"name": "roles"}),
        json!({"insecure": true, "url": "http://remote:2379", "resource": "Role"}),
    );
    assert_forms(
        etcd,
        wrapped(
            "EtcdReplicator",
            "federation/v1",
            json!({"name": "roles"}),
            json!({"insecure": true, "url": "http://remote:2379", "api_version": "core/v2",
                   "resource": "Role", "replication_interval_seconds": 30}),
        ),
        wrapped(
            "EtcdReplicator",
            "federation/v1",
            json!({"name": "roles"}),
            json!({"ca_cert": "", "cert": "", "key": "", "insecure": true,
                   "url": "http://remote:2379", "api_version": "core/v2", "resource": "Role",
                   "replication_interval_seconds": 30}),
        ),
    );
}

/// A resource of every kind with every field at its default: its wire form reads back as
/// the same resource (a namespace takes its name from its spec, see `namespace`).
#[test]
fn default_specs_of_every_kind_round_trip_through_the_wire_form() {
    for kind in Kind::ALL
        .into_iter()
        .filter(|kind| *kind != Kind::Namespace)
    {
        let namespace = if kind.is_namespaced() { "default" } else { "" };
        let name = if kind == Kind::Event { "" } else { "x" };
        let resource = Resource::new(
            crate::ObjectMeta::named(namespace, name),
            crate::Spec::default_for(kind),
        );
        let wire = resource.to_wire();
        let read_back = Resource::from_wire(kind, wire.clone())
            .unwrap_or_else(|issue| panic!("{kind}: {issue}\n{wire:#}"));
        assert_eq!(read_back, resource, "{kind}: {wire:#}");
    }
}
