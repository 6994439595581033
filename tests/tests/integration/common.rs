//! What several areas share: `cairnctl` run with a configuration of its own, the workspace's
//! example manifests, and the federation of the operators' walk-through (a gateway, `alpha`,
//! and the federation-viewer), which `federation_view` drives over the API and `ui` in a
//! browser.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cairn_api::client::Client;
use cairn_api::meta::LABEL_REPLICATED_FROM;
use cairn_api::model::Replicator;
use cairn_api::{Kind, ObjectMeta, Resource, Spec};
use cairn_tests::{
    cluster_registration, command, eventually, Backend, FederationKeys, ADMIN_PASSWORD,
};
use reqwest::Method;
use serde_json::{json, Value};

/// The federation-viewer's demo password (see the manifest's comment).
pub(crate) const VIEWER_PASSWORD: &str = "view-only-demo";

/// How long a wait on replication may take: far above a watched change's push, so that a
/// failure means it did not happen.
const REPLICATED_WITHIN: Duration = Duration::from_secs(30);

/// The `CAIRN_*` variables cairnctl reads besides its config directory, removed from its
/// environment so that the caller's settings do not leak into a test.
const CAIRNCTL_ENV: [&str; 7] = [
    "CAIRN_URL",
    "CAIRN_CA_FILE",
    "CAIRN_API_KEY",
    "CAIRN_NAMESPACE",
    "CAIRN_CLUSTER",
    "CAIRN_GIT_TOKEN",
    "CAIRN_GIT_SSH_KEY",
];

/// The workspace's `manifests/`, which tests load directly (they keep no private copies).
pub(crate) fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// A `cairnctl` command with its config in `config_dir`, no colours and none of the caller's
/// `CAIRN_*` settings.
pub(crate) fn cairnctl_command(config_dir: &Path) -> Command {
    let mut command = command("cairnctl");
    command
        .env("CAIRN_CONFIG_DIR", config_dir)
        .env("NO_COLOR", "1");
    for variable in CAIRNCTL_ENV {
        command.env_remove(variable);
    }
    command
}

/// Runs cairnctl with its config in `config_dir` and returns (exit code, stdout, stderr).
pub(crate) fn cairnctl(config_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cairnctl_command(config_dir)
        .args(args)
        .output()
        .expect("run cairnctl");
    (
        status.code().expect("exited normally"),
        String::from_utf8(stdout).expect("utf-8"),
        String::from_utf8(stderr).expect("utf-8"),
    )
}

/// Runs cairnctl like [`cairnctl`], asserts that it succeeded and returns its stdout.
pub(crate) fn ok(config_dir: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = cairnctl(config_dir, args);
    assert_eq!(code, 0, "cairnctl {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// Logs cairnctl, its config in `config_dir`, in to `backend` as `username`.
pub(crate) fn configure(config_dir: &Path, backend: &Backend, username: &str, password: &str) {
    let ca_file = backend.ca_file();
    ok(
        config_dir,
        &[
            "configure",
            "--url",
            &backend.url,
            "--ca-file",
            ca_file.to_str().expect("utf-8 path"),
            "--username",
            username,
            "--password",
            password,
        ],
    );
}

/// Posts a warning event of the check `disk` ("83% used") for the proxy entity `entity` in
/// `default`, as `client`.
pub(crate) async fn post_event(client: &Client, entity: &str) {
    let event = json!({
        "entity": {"entity_class": "proxy", "metadata": {"name": entity}},
        "check": {"metadata": {"name": "disk"}, "status": 1, "output": "83% used", "interval": 60},
    });
    client
        .send(
            Method::POST,
            "/api/core/v2/namespaces/default/events",
            Some(&event),
        )
        .await
        .unwrap_or_else(|err| panic!("post the event of {entity}: {err}"));
}

/// A replicator of the gateway copying every `core/v2` `resource` (cluster-wide) to `cluster`.
fn replicator(name: &str, cluster: &str, resource: &str) -> Resource {
    Resource::new(
        ObjectMeta::named("", name),
        Spec::Replicator(Replicator {
            cluster: cluster.to_owned(),
            api_version: "core/v2".into(),
            resource: resource.to_owned(),
            namespace: String::new(),
            ..Replicator::default()
        }),
    )
}

// === impl ViewerFederation ===

/// The federation of the operators' walk-through (issue 7): real backend processes sharing one
/// JWT key pair, a gateway and a downstream `alpha` registered on it, the read-only user of
/// `manifests/cluster/rbac/federation-viewer.yaml` on the gateway only, and replicators that
/// copy ClusterRoles and ClusterRoleBindings to alpha, so that alpha binds the user's group
/// without anyone touching alpha's RBAC.
pub(crate) struct ViewerFederation {
    /// The gateway (cluster name `gateway`).
    pub(crate) gateway: Backend,
    /// The downstream (cluster name `alpha`), registered on the gateway.
    pub(crate) alpha: Backend,
    /// The gateway's admin, logged in there.
    pub(crate) gateway_admin: Client,
    /// Alpha's own admin, logged in there.
    pub(crate) alpha_admin: Client,
    _keys_dir: tempfile::TempDir,
}

impl ViewerFederation {
    /// Starts both backends, applies the viewer's manifest on the gateway, registers alpha and
    /// waits (at most 30 s each) until the viewer's role and binding are replicated to alpha,
    /// checking the copies and that alpha's own built-in roles and bindings were left alone.
    ///
    /// # Panics
    /// When a step fails or a copy does not arrive in time.
    pub(crate) async fn start() -> ViewerFederation {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let keys = FederationKeys::generate(keys_dir.path());
        let gateway = Backend::start_federated("gateway", &keys);
        let alpha = Backend::start_federated("alpha", &keys);
        let gateway_admin = gateway.admin().await;
        let alpha_admin = alpha.admin().await;

        // The read-only operator: the manifest's user, role and binding, on the gateway only.
        let viewer_manifest = manifests().join("cluster/rbac/federation-viewer.yaml");
        let loaded = cairn_api::codec::load_path(&viewer_manifest);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        for resource in loaded.resources.iter().map(|loaded| &loaded.resource) {
            gateway_admin
                .put_resource(resource)
                .await
                .unwrap_or_else(|err| panic!("put {} on the gateway: {err}", resource.key()));
        }
        gateway_admin
            .put_resource(&cluster_registration("alpha", &alpha.url, &alpha.ca()))
            .await
            .expect("register alpha on the gateway");
        // Alpha gets the role and the binding of the viewer's group from the gateway's replicators
        // (never the user: there is no such user at alpha).
        for (name, resource) in [
            ("clusterroles-to-alpha", "ClusterRole"),
            ("clusterrolebindings-to-alpha", "ClusterRoleBinding"),
        ] {
            gateway_admin
                .put_resource(&replicator(name, "alpha", resource))
                .await
                .unwrap_or_else(|err| panic!("create the replicator {name}: {err}"));
        }
        for (kind, replicator_name) in [
            (Kind::ClusterRole, "clusterroles-to-alpha"),
            (Kind::ClusterRoleBinding, "clusterrolebindings-to-alpha"),
        ] {
            let source = loaded
                .resources
                .iter()
                .map(|loaded| &loaded.resource)
                .find(|resource| resource.kind() == kind)
                .unwrap_or_else(|| panic!("the manifest has a {kind}"));
            let what = format!("the {kind} federation-viewer replicated to alpha");
            let copy = eventually(&what, REPLICATED_WITHIN, || async {
                let copy = alpha_admin
                    .get_resource(kind, "", "federation-viewer")
                    .await
                    .map_err(|err| format!("read alpha: {err}"))?;
                match copy {
                    Some(copy) if copy.metadata.labels.contains_key(LABEL_REPLICATED_FROM) => {
                        Ok(copy)
                    }
                    other => {
                        let status = gateway_admin
                            .get_json(&format!("/api/cairn/v1/replicators/{replicator_name}"))
                            .await
                            .map_or_else(|err| err.to_string(), |status| status.to_string());
                        Err(format!("{other:?}; replicator status: {status}"))
                    }
                }
            })
            .await;
            assert_eq!(
                copy.metadata.labels[LABEL_REPLICATED_FROM],
                format!("gateway/{replicator_name}")
            );
            assert_eq!(copy.spec, source.spec, "{kind} copied as it is");
            assert_eq!(copy.metadata.created_by, "cairn:replicator");
        }
        // Alpha's own roles and bindings of the same names as the gateway's built-in ones are
        // never written over.
        for kind in [Kind::ClusterRole, Kind::ClusterRoleBinding] {
            let own = alpha_admin
                .get_resource(kind, "", "cluster-admin")
                .await
                .expect("read alpha")
                .unwrap_or_else(|| panic!("alpha's own {kind} cluster-admin"));
            assert!(
                !own.metadata.labels.contains_key(LABEL_REPLICATED_FROM),
                "alpha's {kind} cluster-admin was overwritten: {own:?}"
            );
        }
        ViewerFederation {
            gateway,
            alpha,
            gateway_admin,
            alpha_admin,
            _keys_dir: keys_dir,
        }
    }
}

// === impl Ctl ===

/// `cairnctl` with its own configuration, logged in to one backend as the admin.
pub(crate) struct Ctl {
    config: tempfile::TempDir,
}

impl Ctl {
    /// A fresh configuration, logged in to `backend` as the admin.
    pub(crate) fn configure(backend: &Backend) -> Ctl {
        let ctl = Ctl {
            config: tempfile::tempdir().expect("tempdir"),
        };
        configure(ctl.config.path(), backend, "admin", ADMIN_PASSWORD);
        ctl
    }

    /// A cairnctl command with this configuration (see [`cairnctl_command`]).
    pub(crate) fn command(&self) -> Command {
        cairnctl_command(self.config.path())
    }

    /// Runs cairnctl with `args` to the end.
    pub(crate) fn output(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run cairnctl")
    }

    /// Runs cairnctl with `args` and keeps what it printed.
    pub(crate) fn run(&self, args: &[&str]) -> Run {
        Run::of(self.output(args))
    }

    /// Runs and checks the exit code.
    pub(crate) fn expect(&self, code: i32, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, code, "cairnctl {args:?}:\n{run:#?}");
        run
    }
}

// === impl Run ===

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Run {
    /// Its exit code.
    pub(crate) code: i32,
    /// Its stdout, lossily decoded.
    pub(crate) stdout: String,
    /// Its stderr, lossily decoded.
    pub(crate) stderr: String,
}

impl Run {
    /// The exit code and the decoded output of `output`.
    pub(crate) fn of(output: Output) -> Run {
        Run {
            code: output.status.code().expect("exited normally"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Stdout as one JSON document.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|err| panic!("stdout is not one JSON document ({err}):\n{self:#?}"))
    }
}
