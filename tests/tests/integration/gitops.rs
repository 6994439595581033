//! The reconciler's GitOps commands against real processes: a `cairn-backend` on a free port,
//! Git repositories made with the `git` command line in temp dirs, and the `cairnctl` binary —
//! `diff` and its exit codes, `apply` (with prune and its guard) from commits, `watch` following
//! pushes, and `lint --git-dir` as a `pre-receive` hook.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::client::{Client, ClientError};
use cairn_api::gitops::{ResourceAction, SyncOutcome};
use cairn_api::Kind;
use serde_json::{json, Value};

use cairn_tests::{
    binary, create_user, error_status, eventually_blocking, matching, status_of, text_matching,
    Backend,
};

use crate::common::{Ctl, Run};

const MANAGED_BY: &str = "cairn.io/managed-by";
const SOURCE: &str = "cairn.io/source";

// === fixtures ===

fn namespace_yaml(name: &str) -> String {
    format!(
        "# cluster-wide\ntype: Namespace\napi_version: core/v2\nmetadata:\n  name: {name}\nspec:\n  name: {name}\n"
    )
}

/// A check in SensuFlow's layout: no `metadata.namespace`, the folder names it.
fn check_yaml(name: &str, interval: u32) -> String {
    format!(
        "type: CheckConfig\napi_version: core/v2\nmetadata:\n  name: {name}\nspec:\n  command: check-{name}\n  interval: {interval}\n  publish: true\n  subscriptions:\n    - linux\n"
    )
}

fn handler_yaml(name: &str) -> String {
    format!(
        "type: Handler\napi_version: core/v2\nmetadata:\n  name: {name}\nspec:\n  type: pipe\n  command: cat\n  timeout: 10\n"
    )
}

/// An invalid check: the typo is on line 7, column 3.
const BROKEN_YAML: &str = "type: CheckConfig\napi_version: core/v2\nmetadata:\n  name: broken\nspec:\n  command: 'true'\n  intreval: 10\n";
const BROKEN_PATH: &str = "namespaces/gitops/checks/broken.yaml";

fn write(root: &Path, path: &str, text: &str) {
    let file = root.join(path);
    std::fs::create_dir_all(file.parent().expect("a parent")).expect("mkdir");
    std::fs::write(&file, text).expect("write a manifest");
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

// === the backend's state, read through the REST API ===

struct Api {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Api {
    fn connect(backend: &Backend) -> Api {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let client = runtime.block_on(backend.admin());
        Api { runtime, client }
    }

    fn try_get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Value>, String> {
        match self
            .runtime
            .block_on(self.client.get_json(&kind.item_path(namespace, name)))
        {
            Ok(value) => Ok(Some(value)),
            Err(ClientError::Status { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => {
                Ok(None)
            }
            Err(err) => Err(err.to_string()),
        }
    }

    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.try_get(kind, namespace, name)
            .unwrap_or_else(|err| panic!("GET {kind:?} {namespace}/{name}: {err}"))
    }

    fn check(&self, namespace: &str, name: &str) -> Option<Value> {
        self.get(Kind::CheckConfig, namespace, name)
    }

    fn put(&self, kind: Kind, namespace: &str, name: &str, body: &Value) {
        self.runtime
            .block_on(self.client.send(
                reqwest::Method::PUT,
                &kind.item_path(namespace, name),
                Some(body),
            ))
            .unwrap_or_else(|err| panic!("PUT {kind:?} {namespace}/{name}: {err}"));
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let deleted = self
            .runtime
            .block_on(self.client.delete_resource(kind, namespace, name))
            .unwrap_or_else(|err| panic!("DELETE {kind:?} {namespace}/{name}: {err}"));
        assert!(deleted, "{kind:?} {namespace}/{name} was not there");
    }

    /// Every namespace, check and handler, as the API returns them (resource versions
    /// included), by `plural/namespace/name`.
    fn listing(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for kind in [Kind::Namespace, Kind::CheckConfig, Kind::Handler] {
            let path = format!("{}/{}", kind.group_prefix(), kind.plural());
            let listed = self
                .runtime
                .block_on(self.client.get_json(&path))
                .unwrap_or_else(|err| panic!("GET {path}: {err}"));
            for item in listed.as_array().expect("a list").iter().cloned() {
                let metadata = &item["metadata"];
                let key = format!(
                    "{}/{}/{}",
                    kind.plural(),
                    metadata["namespace"].as_str().unwrap_or(""),
                    metadata["name"].as_str().expect("a name")
                );
                out.insert(key, item);
            }
        }
        out
    }
}

fn managed_by(resource: &Value) -> Option<&str> {
    resource["metadata"]["labels"][MANAGED_BY].as_str()
}

fn source_of(resource: &Value) -> &str {
    resource["metadata"]["annotations"][SOURCE]
        .as_str()
        .unwrap_or_else(|| panic!("no {SOURCE} annotation: {resource:#}"))
}

fn interval(resource: &Value) -> u64 {
    resource["interval"]
        .as_u64()
        .unwrap_or_else(|| panic!("no interval: {resource:#}"))
}

// === git ===

fn git_command(dir: &Path) -> Command {
    let mut git = Command::new("git");
    git.current_dir(dir)
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Cairn Tests")
        .env("GIT_AUTHOR_EMAIL", "tests@cairn.invalid")
        .env("GIT_COMMITTER_NAME", "Cairn Tests")
        .env("GIT_COMMITTER_EMAIL", "tests@cairn.invalid");
    git
}

fn git(dir: &Path, args: &[&str]) -> String {
    let run = Run::of(git_command(dir).args(args).output().expect("run git"));
    assert_eq!(run.code, 0, "git {args:?} in {}:\n{run:#?}", dir.display());
    run.stdout.trim().to_owned()
}

/// A bare repository (what cairnctl reads) and a work tree that pushes to it.
struct Repo {
    dir: tempfile::TempDir,
    bare: PathBuf,
    work: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("monitoring.git");
        let work = dir.path().join("work");
        git(dir.path(), &["init", "--bare", "-b", "main", utf8(&bare)]);
        git(dir.path(), &["init", "-b", "main", utf8(&work)]);
        git(&work, &["remote", "add", "origin", utf8(&bare)]);
        Repo { dir, bare, work }
    }

    fn bare(&self) -> &str {
        utf8(&self.bare)
    }

    fn write(&self, path: &str, text: &str) {
        write(&self.work, path, text);
    }

    fn remove(&self, path: &str) {
        std::fs::remove_file(self.work.join(path)).expect("remove a manifest");
    }

    /// Commits everything in the work tree; returns the commit id.
    fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn push(&self) -> Run {
        Run::of(
            git_command(&self.work)
                .args(["push", "origin", "HEAD:main"])
                .output()
                .expect("run git push"),
        )
    }

    fn commit_and_push(&self, message: &str) -> String {
        let commit = self.commit(message);
        let push = self.push();
        assert_eq!(push.code, 0, "git push:\n{push:#?}");
        commit
    }

    /// Where the bare repository's `main` points.
    fn main(&self) -> String {
        git(&self.bare, &["rev-parse", "main"])
    }
}

/// `cairnctl apply --git <repo> --ref main` with `extra` arguments.
fn applier<'a>(ctl: &'a Ctl, repo: &'a Repo) -> impl Fn(&[&str]) -> Run + 'a {
    move |extra| {
        let mut args = vec!["apply", "--git", repo.bare(), "--ref", "main"];
        args.extend_from_slice(extra);
        ctl.run(&args)
    }
}

// === 1. diff ===

#[test]
fn diff_exit_codes_and_json() {
    let backend = Backend::start();
    let ctl = Ctl::configure(&backend);
    let api = Api::connect(&backend);
    let folder = tempfile::tempdir().expect("tempdir");
    let root = folder.path();
    let dir = utf8(root);
    write(root, "cluster/namespaces.yaml", &namespace_yaml("demo"));
    write(
        root,
        "namespaces/demo/checks/uptime.yaml",
        &check_yaml("uptime", 10),
    );
    write(
        root,
        "namespaces/demo/handlers/log.yaml",
        &handler_yaml("log"),
    );

    // Before the first apply: drift, one create per resource, and nothing changed.
    let run = ctl.expect(2, &["diff", dir]);
    for line in [
        "+ create Namespace demo",
        "+ create Handler demo/log",
        "+ create CheckConfig demo/uptime",
        "    from namespaces/demo/checks/uptime.yaml",
        "3 to create, 0 to update, 0 to delete, 0 unchanged: drift found",
    ] {
        assert!(run.stdout.contains(line), "{line:?} missing:\n{run:#?}");
    }
    assert_eq!(
        api.check("demo", "uptime"),
        None,
        "diff changed the backend"
    );
    assert_eq!(api.get(Kind::Namespace, "", "demo"), None);

    let plan = ctl.expect(2, &["diff", dir, "-o", "json"]).json();
    assert_eq!(plan["source"], json!(dir), "{plan:#}");
    assert_eq!(plan["commit"], Value::Null, "{plan:#}");
    assert_eq!(plan["in_sync"], json!(false), "{plan:#}");
    assert_eq!(
        plan["summary"],
        json!({"create": 3, "update": 0, "delete": 0, "unchanged": 0})
    );
    let changes = plan["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 3, "{plan:#}");
    for change in changes {
        let mut fields: Vec<&str> = change
            .as_object()
            .expect("a change is an object")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "action",
                "adopt",
                "api_version",
                "diff",
                "name",
                "namespace",
                "path",
                "type"
            ]
        );
        assert_eq!(change["action"], "create", "{change:#}");
        assert_eq!(change["api_version"], "core/v2", "{change:#}");
        assert_eq!(change["adopt"], false, "{change:#}");
        let diff = change["diff"].as_str().expect("a diff");
        assert!(diff.contains("+++ source/"), "{diff}");
        assert!(diff.contains("cairn.io/managed-by: cairnctl"), "{diff}");
    }
    // Namespaces come first: the plan is in apply order.
    assert_eq!(changes[0]["type"], "Namespace");
    assert_eq!(changes[0]["name"], "demo");
    assert_eq!(changes[0]["namespace"], "");
    assert_eq!(changes[0]["path"], "cluster/namespaces.yaml");
    let uptime = changes
        .iter()
        .find(|change| change["type"] == "CheckConfig")
        .expect("the check");
    assert_eq!(uptime["name"], "uptime");
    assert_eq!(
        uptime["namespace"], "demo",
        "the folder names the namespace"
    );
    assert_eq!(uptime["path"], "namespaces/demo/checks/uptime.yaml");

    let run = ctl.expect(0, &["apply", dir]);
    assert!(
        run.stdout.contains("created CheckConfig demo/uptime"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("applied: 3 created"), "{run:#?}");
    let uptime = api.check("demo", "uptime").expect("applied");
    assert_eq!(managed_by(&uptime), Some("cairnctl"));
    assert_eq!(
        source_of(&uptime),
        format!("{dir}:namespaces/demo/checks/uptime.yaml")
    );

    let run = ctl.expect(0, &["diff", dir]);
    assert!(run.stdout.contains(": in sync"), "{run:#?}");
    let plan = ctl.expect(0, &["diff", dir, "-o", "json"]).json();
    assert_eq!(plan["in_sync"], json!(true), "{plan:#}");
    assert_eq!(
        plan["summary"],
        json!({"create": 0, "update": 0, "delete": 0, "unchanged": 3})
    );
    for change in plan["changes"].as_array().expect("changes") {
        assert_eq!(change["action"], "unchanged", "{change:#}");
        assert_eq!(change["diff"], "", "{change:#}");
    }

    // A changed file is drift again: an update, with its diff.
    write(
        root,
        "namespaces/demo/checks/uptime.yaml",
        &check_yaml("uptime", 20),
    );
    let run = ctl.expect(2, &["diff", dir]);
    assert!(
        run.stdout.contains("~ update CheckConfig demo/uptime"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("-  interval: 10"), "{run:#?}");
    assert!(run.stdout.contains("+  interval: 20"), "{run:#?}");
    let plan = ctl.expect(2, &["diff", dir, "-o", "json"]).json();
    assert_eq!(
        plan["summary"],
        json!({"create": 0, "update": 1, "delete": 0, "unchanged": 2})
    );
    ctl.expect(0, &["apply", dir]);
    ctl.expect(0, &["diff", dir]);

    // So is an edit made on the backend by hand.
    let mut edited = api.check("demo", "uptime").expect("the check");
    edited["interval"] = json!(99);
    api.put(Kind::CheckConfig, "demo", "uptime", &edited);
    let run = ctl.expect(2, &["diff", dir]);
    assert!(run.stdout.contains("-  interval: 99"), "{run:#?}");
    ctl.expect(0, &["apply", dir]);
    assert_eq!(
        interval(&api.check("demo", "uptime").expect("the check")),
        20
    );

    // The same manifests from a commit: every resource changes source (an update), then in sync.
    let repo = Repo::new();
    repo.write("cluster/namespaces.yaml", &namespace_yaml("demo"));
    repo.write(
        "namespaces/demo/checks/uptime.yaml",
        &check_yaml("uptime", 20),
    );
    repo.write("namespaces/demo/handlers/log.yaml", &handler_yaml("log"));
    let commit = repo.commit_and_push("demo");
    let git_args = ["--git", repo.bare(), "--ref", "main"];
    let diff_git = |extra: &[&'static str]| [&["diff"][..], &git_args, extra].concat();
    let plan = ctl.expect(2, &diff_git(&["-o", "json"])).json();
    assert_eq!(plan["source"], json!(repo.bare()), "{plan:#}");
    assert_eq!(plan["commit"], json!(commit), "{plan:#}");
    assert_eq!(plan["in_sync"], json!(false), "{plan:#}");
    assert_eq!(
        plan["summary"],
        json!({"create": 0, "update": 3, "delete": 0, "unchanged": 0}),
        "{plan:#}"
    );
    ctl.expect(0, &[&["apply"][..], &git_args].concat());
    let run = ctl.expect(0, &diff_git(&[]));
    assert!(run.stdout.contains(": in sync"), "{run:#?}");
    assert!(run.stdout.contains(&commit[..12]), "{run:#?}");
    assert_eq!(
        source_of(&api.check("demo", "uptime").expect("the check")),
        format!(
            "{}@{commit}:namespaces/demo/checks/uptime.yaml",
            repo.bare()
        )
    );

    // An invalid manifest: exit 1, the file and line on stderr, no plan.
    write(root, "namespaces/demo/checks/broken.yaml", BROKEN_YAML);
    let run = ctl.expect(1, &["diff", dir]);
    assert!(
        run.stderr
            .contains("namespaces/demo/checks/broken.yaml:7:3: document 1: spec.intreval"),
        "{run:#?}"
    );
    assert!(!run.stdout.contains("create"), "{run:#?}");
    let failed = ctl.expect(1, &["diff", dir, "-o", "json"]).json();
    assert_eq!(failed["error"], "invalid", "{failed:#}");
    assert!(
        failed["errors"].to_string().contains("broken.yaml:7:3"),
        "{failed:#}"
    );
    repo.write("namespaces/demo/checks/broken.yaml", BROKEN_YAML);
    repo.commit_and_push("broken");
    let run = ctl.expect(1, &diff_git(&[]));
    assert!(
        run.stderr
            .contains("namespaces/demo/checks/broken.yaml:7:3: document 1: spec.intreval"),
        "{run:#?}"
    );
    assert_eq!(api.check("demo", "broken"), None);
}

#[test]
fn diff_usage_errors_exit_64() {
    // Configured, so that only the command line can make it a usage error.
    let backend = Backend::start();
    let ctl = Ctl::configure(&backend);
    let folder = tempfile::tempdir().expect("tempdir");
    let dir = utf8(folder.path());
    for args in [
        &["diff", dir, "-o", "yaml"][..],
        &["diff", dir, "--max-prune-percent", "10"],
        &["apply", dir, "--max-prune-percent", "101"],
        &["diff", dir, "--git", "/srv/git/monitoring.git"],
        // --ref only means something with --git.
        &["diff", dir, "--ref", "main"],
        &["apply", dir, "--ref", "main", "--dry-run"],
    ] {
        let run = ctl.run(args);
        assert!(!run.stderr.contains("no backend configured"), "{run:#?}");
        assert_eq!(
            run.code, 64,
            "cairnctl {args:?}: a usage error, never 1 or 2:\n{run:#?}"
        );
    }
}

// === 2. apply from commits, prune and its guard ===

#[test]
fn apply_from_git_commits_with_prune() {
    let backend = Backend::start();
    let ctl = Ctl::configure(&backend);
    let api = Api::connect(&backend);
    let repo = Repo::new();
    let apply = applier(&ctl, &repo);
    let checks_at = |name: &str| format!("namespaces/gitops/checks/{name}.yaml");

    repo.write("cluster/namespace.yaml", &namespace_yaml("gitops"));
    for name in ["cpu", "disk", "mem", "net"] {
        repo.write(&checks_at(name), &check_yaml(name, 10));
    }
    repo.write("namespaces/gitops/handlers/log.yaml", &handler_yaml("log"));
    let first = repo.commit_and_push("first");

    let run = apply(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stdout.contains("created Namespace gitops"), "{run:#?}");
    assert!(run.stdout.contains("applied: 6 created"), "{run:#?}");
    let namespace = api.get(Kind::Namespace, "", "gitops").expect("created");
    assert_eq!(managed_by(&namespace), Some("cairnctl"));
    assert_eq!(
        source_of(&namespace),
        format!("{}@{first}:cluster/namespace.yaml", repo.bare())
    );
    for name in ["cpu", "disk", "mem", "net"] {
        let check = api
            .check("gitops", name)
            .expect("created in the folder's namespace");
        assert_eq!(managed_by(&check), Some("cairnctl"), "{check:#}");
        assert_eq!(
            source_of(&check),
            format!("{}@{first}:{}", repo.bare(), checks_at(name))
        );
    }
    let handler = api.get(Kind::Handler, "gitops", "log").expect("created");
    assert!(source_of(&handler).contains(&first), "{handler:#}");

    // An edit updates that resource alone: the others keep the commit they were applied from.
    repo.write(&checks_at("cpu"), &check_yaml("cpu", 20));
    let second = repo.commit_and_push("cpu every 20 s");
    let run = apply(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stdout.contains("updated CheckConfig gitops/cpu"),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("0 created, 1 updated, 0 deleted, 5 unchanged"),
        "{run:#?}"
    );
    let cpu = api.check("gitops", "cpu").expect("cpu");
    assert_eq!(interval(&cpu), 20);
    assert!(source_of(&cpu).contains(&second), "{cpu:#}");
    assert!(source_of(&api.check("gitops", "disk").expect("disk")).contains(&first));
    let run = apply(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stdout.contains("in sync"), "{run:#?}");

    // Made by hand: no label, or another owner's. No prune may touch them.
    api.put(
        Kind::Namespace,
        "",
        "manual",
        &json!({"name": "manual", "metadata": {"name": "manual"}}),
    );
    let hand_check = |namespace: &str, name: &str, labels: Value| {
        json!({
            "command": "true",
            "interval": 60,
            "publish": false,
            "subscriptions": ["linux"],
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
        })
    };
    api.put(
        Kind::CheckConfig,
        "manual",
        "handmade",
        &hand_check("manual", "handmade", json!({})),
    );
    api.put(
        Kind::CheckConfig,
        "gitops",
        "handmade",
        &hand_check("gitops", "handmade", json!({})),
    );
    api.put(
        Kind::CheckConfig,
        "gitops",
        "foreign",
        &hand_check("gitops", "foreign", json!({MANAGED_BY: "someone-else"})),
    );
    let by_hand = |api: &Api| -> BTreeMap<String, Value> {
        api.listing()
            .into_iter()
            .filter(|(_, resource)| managed_by(resource) != Some("cairnctl"))
            .filter(|(key, _)| {
                key.contains("manual") || key.contains("handmade") || key.contains("foreign")
            })
            .collect()
    };
    let hand_made = by_hand(&api);
    assert_eq!(hand_made.len(), 4, "{hand_made:#?}");

    // A deleted file: kept without --prune, listed by diff, deleted with it.
    repo.remove(&checks_at("mem"));
    repo.commit_and_push("no more mem");
    let run = apply(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        api.check("gitops", "mem").is_some(),
        "deleted without --prune"
    );
    let diff = ctl.run(&["diff", "--git", repo.bare(), "--ref", "main"]);
    assert_eq!(diff.code, 2, "{diff:#?}");
    assert!(
        diff.stdout
            .contains("- delete CheckConfig gitops/mem (prune candidate)"),
        "{diff:#?}"
    );
    for other in ["handmade", "foreign", "manual"] {
        assert!(!diff.stdout.contains(other), "{diff:#?}");
    }
    let run = apply(&["--prune"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stdout.contains("deleted CheckConfig gitops/mem"),
        "{run:#?}"
    );
    assert_eq!(api.check("gitops", "mem"), None);
    assert_eq!(by_hand(&api), hand_made);

    // The guard: 2 of 5 managed is over --max-prune-percent 30. The prune is refused, the
    // create still applied; with the default 50 % it goes ahead.
    repo.write(&checks_at("fresh"), &check_yaml("fresh", 10));
    repo.remove(&checks_at("disk"));
    repo.remove(&checks_at("net"));
    repo.commit_and_push("fresh, no disk or net");
    let run = apply(&["--prune", "--max-prune-percent", "30"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("prune refused"), "{run:#?}");
    assert!(run.stderr.contains("--max-prune-percent 30"), "{run:#?}");
    assert!(
        api.check("gitops", "fresh").is_some(),
        "the create was not applied"
    );
    assert!(
        api.check("gitops", "disk").is_some(),
        "pruned despite the guard"
    );
    assert!(
        api.check("gitops", "net").is_some(),
        "pruned despite the guard"
    );
    let run = apply(&["--prune"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(api.check("gitops", "disk"), None);
    assert_eq!(api.check("gitops", "net"), None);
    assert_eq!(by_hand(&api), hand_made);

    // An invalid manifest with other changes: nothing applied, nothing pruned.
    repo.write(BROKEN_PATH, BROKEN_YAML);
    repo.write(&checks_at("cpu"), &check_yaml("cpu", 30));
    repo.remove(&checks_at("fresh"));
    repo.commit_and_push("broken");
    let before = api.listing();
    for flags in [&["--prune"][..], &["--prune", "--force-prune"]] {
        let run = apply(flags);
        assert_eq!(run.code, 1, "{run:#?}");
        assert!(
            run.stderr
                .contains(&format!("{BROKEN_PATH}:7:3: document 1: spec.intreval")),
            "{run:#?}"
        );
        assert!(run.stderr.contains("nothing was applied"), "{run:#?}");
        assert_eq!(
            api.listing(),
            before,
            "an invalid commit changed the backend"
        );
    }

    // Unreadable sources: exit 1, and never read as empty (which --force-prune would empty).
    let scratch = repo.dir.path();
    let missing = scratch.join("missing.git");
    let corrupt = scratch.join("corrupt.git");
    git(
        scratch,
        &[
            "clone",
            "-q",
            "--bare",
            "--no-local",
            repo.bare(),
            utf8(&corrupt),
        ],
    );
    for pack in std::fs::read_dir(corrupt.join("objects/pack")).expect("packs") {
        std::fs::remove_file(pack.expect("an entry").path()).expect("remove a pack");
    }
    let missing_folder = scratch.join("missing-folder");
    let unreadable: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--git", utf8(&missing), "--ref", "main"],
            "cannot open repository",
        ),
        (
            vec!["--git", repo.bare(), "--ref", "no-such-branch"],
            "does not name a commit",
        ),
        (vec!["--git", utf8(&corrupt), "--ref", "main"], ""),
        (vec![utf8(&missing_folder)], "cannot read folder"),
    ];
    for (source, message) in &unreadable {
        let mut args = vec!["apply"];
        args.extend_from_slice(source);
        args.extend_from_slice(&["--prune", "--force-prune"]);
        let run = ctl.run(&args);
        assert_eq!(run.code, 1, "{args:?}: {run:#?}");
        assert!(run.stderr.contains(message), "{args:?}: {run:#?}");
        assert!(
            !run.stdout.lines().any(|line| line.starts_with("deleted")),
            "{args:?}: {run:#?}"
        );
        assert_eq!(api.listing(), before, "{args:?} changed the backend");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = scratch.join("locked");
        write(
            &locked,
            "namespaces/gitops/checks/cpu.yaml",
            &check_yaml("cpu", 10),
        );
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        if std::fs::read_dir(&locked).is_ok() {
            eprintln!("running as root: a chmod 000 folder stays readable, case skipped");
        } else {
            let run = ctl.run(&["apply", utf8(&locked), "--prune", "--force-prune"]);
            assert_eq!(run.code, 1, "{run:#?}");
            assert!(run.stderr.contains("cannot read folder"), "{run:#?}");
            assert_eq!(
                api.listing(),
                before,
                "an unreadable folder changed the backend"
            );
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    // Fixed: the edit and the prune go through.
    repo.remove(BROKEN_PATH);
    repo.commit_and_push("fixed");
    let run = apply(&["--prune"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(interval(&api.check("gitops", "cpu").expect("cpu")), 30);
    assert_eq!(api.check("gitops", "fresh"), None);
    assert_eq!(by_hand(&api), hand_made);

    // A commit that deletes every managed resource (the namespace, cpu, log): refused whatever
    // the percentage, nothing deleted.
    git(&repo.work, &["rm", "-r", "-q", "cluster", "namespaces"]);
    repo.write("README.md", "Moved elsewhere.\n");
    repo.commit_and_push("everything gone");
    let before = api.listing();
    for flags in [&["--prune"][..], &["--prune", "--max-prune-percent", "100"]] {
        let run = apply(flags);
        assert_eq!(run.code, 1, "{run:#?}");
        assert!(run.stderr.contains("prune refused"), "{run:#?}");
        assert!(run.stderr.contains("all 3"), "{run:#?}");
        assert_eq!(api.listing(), before, "a refused prune deleted something");
    }

    // --force-prune deletes them; the namespace still holds hand-made checks, so its delete
    // fails and is reported, and the hand-made resources are untouched.
    let run = apply(&["--prune", "--force-prune"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stdout.contains("deleted CheckConfig gitops/cpu"),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains("deleted Handler gitops/log"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("Namespace gitops"), "{run:#?}");
    assert_eq!(api.check("gitops", "cpu"), None);
    assert_eq!(api.get(Kind::Handler, "gitops", "log"), None);
    assert!(api.get(Kind::Namespace, "", "gitops").is_some());
    assert_eq!(by_hand(&api), hand_made);
    api.delete(Kind::CheckConfig, "gitops", "handmade");
    api.delete(Kind::CheckConfig, "gitops", "foreign");
    let run = apply(&["--prune", "--force-prune"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(api.get(Kind::Namespace, "", "gitops"), None);
    assert!(api.get(Kind::Namespace, "", "manual").is_some());
    assert!(api.check("manual", "handmade").is_some());
}

// === 2b. the record of each apply on the backend ===

#[test]
fn apply_records_each_sync_on_the_backend() {
    let backend = Backend::start();
    let ctl = Ctl::configure(&backend);
    let api = Api::connect(&backend);
    let repo = Repo::new();
    let apply = applier(&ctl, &repo);
    repo.write("cluster/namespace.yaml", &namespace_yaml("gitops"));
    for name in ["cpu", "disk"] {
        repo.write(
            &format!("namespaces/gitops/checks/{name}.yaml"),
            &check_yaml(name, 10),
        );
    }
    let first = repo.commit_and_push("first");
    let run = apply(&[]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(!run.stderr.contains("not recorded"), "{run:#?}");

    let syncs = |client: &Client| api.runtime.block_on(client.list_syncs(20));
    let records = syncs(&api.client).expect("list the records");
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record.commit.as_deref(), Some(first.as_str()));
    assert_eq!(record.source, repo.bare());
    assert_eq!(record.result, SyncOutcome::Applied);
    assert_eq!((record.counts.created, record.counts.failed), (3, 0));
    assert_eq!(record.recorded_by.as_deref(), Some("admin"));
    assert!(!record.dry_run);
    let mut resources: Vec<(&str, &str, ResourceAction)> = record
        .resources
        .iter()
        .map(|resource| {
            (
                resource.kind.as_str(),
                resource.name.as_str(),
                resource.action,
            )
        })
        .collect();
    resources.sort_by_key(|(kind, name, _)| (*kind, *name));
    assert_eq!(
        resources,
        [
            ("CheckConfig", "cpu", ResourceAction::Created),
            ("CheckConfig", "disk", ResourceAction::Created),
            ("Namespace", "gitops", ResourceAction::Created),
        ]
    );
    for resource in &record.resources {
        assert!(
            resource
                .source
                .starts_with(&format!("{}@{first}:", repo.bare())),
            "{resource:?}"
        );
    }
    let id = record.id.clone().expect("an id");
    let read = api
        .runtime
        .block_on(
            api.client
                .get_json(&format!("/api/cairn/v1/gitops/syncs/{id}")),
        )
        .expect("read the record back");
    assert_eq!(read["commit"], first.as_str());

    // A dry run is not recorded; an apply that finds nothing to do is, as unchanged.
    repo.write("namespaces/gitops/checks/cpu.yaml", &check_yaml("cpu", 30));
    repo.commit_and_push("cpu every 30 s");
    assert_eq!(apply(&["--dry-run"]).code, 0);
    assert_eq!(syncs(&api.client).expect("list").len(), 1);
    assert_eq!(apply(&[]).code, 0);
    assert_eq!(apply(&[]).code, 0);
    let records = syncs(&api.client).expect("list");
    let results: Vec<_> = records.iter().map(|record| record.result).collect();
    assert_eq!(
        results,
        [
            SyncOutcome::Unchanged,
            SyncOutcome::Applied,
            SyncOutcome::Applied
        ]
    );
    assert_eq!(records[1].counts.updated, 1);
    assert_eq!(records[1].resources[0].action, ResourceAction::Updated);

    // Sensu's `view` reads namespaced resources only, as for clusters and replicators; a role
    // that names `gitopssyncs` reads the records, and recording takes `create`.
    let (viewer, reader) = api.runtime.block_on(async {
        let admin = &api.client;
        for name in ["viewer", "reader"] {
            create_user(admin, name, &format!("{name}-password")).await;
        }
        let role = json!({"metadata": {"name": "gitops-reader"},
                          "rules": [{"verbs": ["get", "list"], "resources": ["gitopssyncs"]}]});
        admin
            .send(
                reqwest::Method::PUT,
                "/api/core/v2/clusterroles/gitops-reader",
                Some(&role),
            )
            .await
            .expect("the reading role");
        for (user, role) in [("viewer", "view"), ("reader", "gitops-reader")] {
            let binding = json!({"metadata": {"name": user},
                                 "role_ref": {"type": "ClusterRole", "name": role},
                                 "subjects": [{"type": "User", "name": user}]});
            admin
                .send(
                    reqwest::Method::PUT,
                    &format!("/api/core/v2/clusterrolebindings/{user}"),
                    Some(&binding),
                )
                .await
                .expect("bind");
        }
        (
            backend.login("viewer", "viewer-password").await.0,
            backend.login("reader", "reader-password").await.0,
        )
    });
    assert_eq!(syncs(&reader).expect("a reader lists").len(), 3);
    assert_eq!(error_status(syncs(&viewer)), reqwest::StatusCode::FORBIDDEN);
    let mut again = records[0].clone();
    (again.id, again.recorded_at, again.recorded_by) = (None, None, None);
    for client in [&reader, &viewer] {
        let refused = api.runtime.block_on(client.record_sync(&again));
        assert_eq!(error_status(refused), reqwest::StatusCode::FORBIDDEN);
    }

    // A bad record: 400 naming the field.
    let mut bad = serde_json::to_value(&again).expect("a record encodes");
    bad["counts"]["created"] = json!("three");
    let refused = api.runtime.block_on(api.client.send(
        reqwest::Method::POST,
        "/api/cairn/v1/gitops/syncs",
        Some(&bad),
    ));
    let (status, message) = status_of(refused);
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert!(message.starts_with("counts.created: "), "{message}");
    assert_eq!(syncs(&api.client).expect("list").len(), 3);
}

// === 3. watch ===

/// A running `cairnctl watch`, killed on drop.
struct Watcher {
    child: Child,
    /// `host:port` of its webhook listener.
    addr: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watcher {
    fn start(ctl: &Ctl, args: &[&str]) -> Watcher {
        let mut child = ctl
            .command()
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cairnctl watch");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (first_line, first) = mpsc::channel();
        {
            let pipe = child.stdout.take().expect("piped stdout");
            let stdout = Arc::clone(&stdout);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = first_line.send(line.clone());
                    stdout.lock().expect("lock").push(line);
                }
            });
        }
        {
            let mut pipe = child.stderr.take().expect("piped stderr");
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(read) = pipe.read(&mut buffer) {
                    if read == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .expect("lock")
                        .push_str(&String::from_utf8_lossy(&buffer[..read]));
                }
            });
        }
        let mut watcher = Watcher {
            child,
            addr: String::new(),
            stdout,
            stderr,
        };
        let line = first
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let status = watcher.child.try_wait();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "cairnctl watch did not report its listener (status {status:?}):\n{}",
                    watcher.output()
                )
            });
        watcher.addr = line
            .strip_prefix("webhook listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        watcher
    }

    /// Everything it printed so far, for failure messages.
    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().expect("lock").join("\n"),
            self.stderr.lock().expect("lock")
        )
    }

    fn stdout_lines(&self) -> usize {
        self.stdout.lock().expect("lock").len()
    }

    /// Lines printed after the first `skip`.
    fn lines_after(&self, skip: usize) -> Vec<String> {
        self.stdout.lock().expect("lock")[skip..].to_vec()
    }

    fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "the watcher exited ({status:?}):\n{}",
            self.output()
        );
    }

    fn status(&self) -> (u16, String) {
        http(&self.addr, "GET", "/status", &[], b"")
    }
}

/// One HTTP/1.1 request over a fresh connection; the status code and the raw body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|err| panic!("connect {addr}: {err}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    stream.write_all(body).expect("send");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (code, body)
}

/// `sha256=<hex HMAC-SHA256 of body>`, as GitHub signs webhooks.
fn signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

const WEBHOOK_SECRET: &str = "it-is-a-secret";

/// The watcher's arguments for `repo`, with a status file and secret in `dir`.
fn watch_args(repo: &Repo, dir: &Path) -> (Vec<String>, PathBuf) {
    let status_file = dir.join("status.json");
    let secret_file = dir.join("webhook-secret");
    std::fs::write(&secret_file, format!("{WEBHOOK_SECRET}\n")).expect("write the secret");
    let args = [
        "--git",
        repo.bare(),
        "--ref",
        "main",
        "--prune",
        "--status-file",
        utf8(&status_file),
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-secret-file",
        utf8(&secret_file),
    ]
    .map(str::to_owned)
    .to_vec();
    (args, status_file)
}

fn read_status(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

const SYNC_DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn watch_follows_pushes() {
    let backend = Backend::start();
    let ctl = Ctl::configure(&backend);
    let api = Api::connect(&backend);
    let repo = Repo::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    repo.write("cluster/namespace.yaml", &namespace_yaml("gitops"));
    repo.write(
        "namespaces/gitops/checks/first.yaml",
        &check_yaml("first", 10),
    );
    repo.write("namespaces/gitops/handlers/log.yaml", &handler_yaml("log"));
    let initial = repo.commit_and_push("first");

    let (args, status_file) = watch_args(&repo, scratch.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut watcher = Watcher::start(&ctl, &args);

    // The first sync applies what is there.
    let first = eventually_blocking("the initial sync", SYNC_DEADLINE, || {
        api.check("gitops", "first").ok_or("no check gitops/first")
    });
    assert_eq!(managed_by(&first), Some("cairnctl"));
    assert!(source_of(&first).contains(&initial), "{first:#}");
    eventually_blocking("a sync line on stdout", SYNC_DEADLINE, || {
        matching(watcher.lines_after(1), |lines| {
            lines
                .iter()
                .any(|line| line.contains("applied") || line.contains("in sync"))
        })
    });
    api.put(
        Kind::CheckConfig,
        "gitops",
        "handmade",
        &json!({
            "command": "true",
            "interval": 60,
            "publish": false,
            "subscriptions": ["linux"],
            "metadata": {"name": "handmade", "namespace": "gitops"},
        }),
    );
    let handmade = api.check("gitops", "handmade").expect("made by hand");

    // A push is applied without anything else happening: measure how long it takes.
    let lines_before = watcher.stdout_lines();
    repo.write(
        "namespaces/gitops/checks/second.yaml",
        &check_yaml("second", 10),
    );
    let commit = repo.commit("second");
    let pushed = Instant::now();
    let push = repo.push();
    assert_eq!(push.code, 0, "{push:#?}");
    let second = eventually_blocking("a pushed check to be applied", SYNC_DEADLINE, || {
        api.check("gitops", "second")
            .ok_or("no check gitops/second")
    });
    let latency = pushed.elapsed();
    eprintln!("watch: push -> applied latency {latency:?}");
    assert!(source_of(&second).contains(&commit), "{second:#}");
    eventually_blocking("the sync's line on stdout", SYNC_DEADLINE, || {
        matching(watcher.lines_after(lines_before), |lines| {
            lines.iter().any(|line| line.contains("applied: 1 created"))
        })
    });

    // An edit is applied.
    repo.write(
        "namespaces/gitops/checks/first.yaml",
        &check_yaml("first", 45),
    );
    repo.commit_and_push("first every 45 s");
    eventually_blocking("an edit to be applied", SYNC_DEADLINE, || {
        matching(api.check("gitops", "first"), |first| {
            first.as_ref().is_some_and(|first| interval(first) == 45)
        })
    });

    // A deleted file is pruned (1 of 4 managed); the hand-made check stays.
    repo.remove("namespaces/gitops/checks/second.yaml");
    repo.commit_and_push("no second");
    eventually_blocking("a deleted file to be pruned", SYNC_DEADLINE, || {
        matching(api.check("gitops", "second"), Option::is_none)
    });
    assert_eq!(api.check("gitops", "handmade"), Some(handmade.clone()));

    // An invalid push: nothing applied, the previous state intact, the error reported with the
    // file's name.
    let before = api.listing();
    repo.write(BROKEN_PATH, BROKEN_YAML);
    repo.write(
        "namespaces/gitops/checks/first.yaml",
        &check_yaml("first", 90),
    );
    repo.write(
        "namespaces/gitops/checks/third.yaml",
        &check_yaml("third", 10),
    );
    repo.commit_and_push("broken");
    let status = eventually_blocking(
        "the status to report the invalid file",
        SYNC_DEADLINE,
        || {
            text_matching(read_status(&status_file), |status| {
                status.contains("broken.yaml")
            })
        },
    );
    let state: Value = serde_json::from_str(&status).expect("the status file is JSON");
    assert_eq!(state["last_sync"]["result"], "invalid", "{state:#}");
    assert!(
        state["last_sync"]["errors"]
            .to_string()
            .contains(&format!("{BROKEN_PATH}:7:3: document 1: spec.intreval")),
        "{state:#}"
    );
    let (code, body) = watcher.status();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(BROKEN_PATH), "{body}");
    let shown = ctl.run(&["status", "--status-file", utf8(&status_file)]);
    assert_eq!(shown.code, 1, "the last sync failed: {shown:#?}");
    assert!(
        shown.stdout.contains("invalid manifests, nothing applied"),
        "{shown:#?}"
    );
    assert!(shown.stdout.contains(BROKEN_PATH), "{shown:#?}");
    assert_eq!(
        api.listing(),
        before,
        "an invalid commit changed the backend"
    );
    watcher.assert_running();

    // Webhooks: a bad signature is refused, a good one accepted.
    let payload = br#"{"ref":"refs/heads/main"}"#;
    let (code, body) = http(
        &watcher.addr,
        "POST",
        "/webhook",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature(b"wrong-secret", payload)),
        ],
        payload,
    );
    assert_eq!(code, 401, "{body}");
    let (code, body) = http(
        &watcher.addr,
        "POST",
        "/webhook",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
        ],
        payload,
    );
    assert_eq!(code, 401, "unsigned: {body}");
    let (code, body) = http(
        &watcher.addr,
        "POST",
        "/webhook",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            (
                "X-Hub-Signature-256",
                &signature(WEBHOOK_SECRET.as_bytes(), payload),
            ),
        ],
        payload,
    );
    assert!((200..300).contains(&code), "{code}: {body}");

    // Fixed: the held-back changes go through.
    repo.remove(BROKEN_PATH);
    repo.commit_and_push("fixed");
    eventually_blocking("the fixed commit to be applied", SYNC_DEADLINE, || {
        let first = api.check("gitops", "first");
        let third = api.check("gitops", "third");
        matching((first, third), |(first, third)| {
            first.as_ref().is_some_and(|first| interval(first) == 90) && third.is_some()
        })
    });
    eventually_blocking("the status to clear the error", SYNC_DEADLINE, || {
        text_matching(read_status(&status_file), |status| {
            !status.contains("broken.yaml")
        })
    });
    let url = format!("http://{}/status", watcher.addr);
    let shown = ctl.run(&["status", "--url", &url]);
    assert_eq!(shown.code, 0, "{shown:#?}");
    assert!(
        shown.stdout.contains("result:               applied"),
        "{shown:#?}"
    );
    assert_eq!(api.check("gitops", "handmade"), Some(handmade));
    watcher.assert_running();
}

#[test]
fn watch_survives_a_backend_outage() {
    let mut backend = Backend::start();
    let ctl = Ctl::configure(&backend);
    let api = Api::connect(&backend);
    let repo = Repo::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    repo.write("cluster/namespace.yaml", &namespace_yaml("gitops"));
    for name in ["a", "b", "c"] {
        repo.write(
            &format!("namespaces/gitops/checks/{name}.yaml"),
            &check_yaml(name, 10),
        );
    }
    repo.commit_and_push("first");
    let (args, status_file) = watch_args(&repo, scratch.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut watcher = Watcher::start(&ctl, &args);
    eventually_blocking("the initial sync", SYNC_DEADLINE, || {
        api.check("gitops", "c").ok_or("no check gitops/c")
    });
    drop(api);

    // Down: a push cannot be applied; the watcher keeps trying and says so.
    backend.stop();
    repo.write("namespaces/gitops/checks/d.yaml", &check_yaml("d", 10));
    repo.write("namespaces/gitops/checks/a.yaml", &check_yaml("a", 30));
    let commit = repo.commit_and_push("d, and a every 30 s");
    eventually_blocking(
        "the status to report the unreachable backend, retried",
        Duration::from_secs(20),
        || {
            let status = read_status(&status_file);
            let state: Value = serde_json::from_str(&status).map_err(|_| status)?;
            matching(state, |state| {
                state["last_sync"]["result"] == "backend_unreachable"
                    && state["consecutive_failures"]
                        .as_u64()
                        .is_some_and(|failures| failures >= 2)
            })
        },
    );
    let url = format!("http://{}/status", watcher.addr);
    let shown = ctl.run(&["status", "--url", &url]);
    assert_eq!(shown.code, 1, "the last sync failed: {shown:#?}");
    assert!(shown.stdout.contains("backend unreachable"), "{shown:#?}");
    let (code, body) = watcher.status();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("unreachable"), "{body}");
    watcher.assert_running();

    // Back on the same address: it catches up, and prunes nothing that is still declared.
    backend.restart();
    let restarted = Instant::now();
    let api = Api::connect(&backend);
    let d = eventually_blocking("the watcher to catch up", Duration::from_secs(30), || {
        let d = api.try_get(Kind::CheckConfig, "gitops", "d")?;
        let a = api.try_get(Kind::CheckConfig, "gitops", "a")?;
        match (d, a) {
            (Some(d), Some(a)) if interval(&a) == 30 => Ok(d),
            other => Err(format!("gitops/d and gitops/a: {other:#?}")),
        }
    });
    eprintln!(
        "watch: caught up {:?} after the backend came back",
        restarted.elapsed()
    );
    assert!(source_of(&d).contains(&commit), "{d:#}");
    for name in ["b", "c"] {
        let check = api.check("gitops", name).unwrap_or_else(|| {
            panic!("{name} was pruned across the outage:\n{}", watcher.output())
        });
        assert_eq!(managed_by(&check), Some("cairnctl"));
    }
    assert!(api.get(Kind::Namespace, "", "gitops").is_some());
    eventually_blocking("the status to show a good sync", SYNC_DEADLINE, || {
        text_matching(read_status(&status_file), |status| {
            !status.contains("unreachable")
        })
    });
    watcher.assert_running();
}

// === 4. lint as a pre-receive hook ===

#[cfg(unix)]
#[test]
fn lint_refuses_invalid_pushes_as_a_pre_receive_hook() {
    use std::os::unix::fs::PermissionsExt;

    let repo = Repo::new();
    let cairnctl = binary("cairnctl");
    let hook = repo.bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
# Refuse pushes whose manifests do not validate.
zero=0000000000000000000000000000000000000000
status=0
while read oldrev newrev refname; do
    if [ "$newrev" = "$zero" ]; then
        continue
    fi
    echo "checking $refname at $newrev"
    '{}' lint --git-dir . --ref "$newrev" || status=1
done
exit $status
"#,
            cairnctl.display()
        ),
    )
    .expect("write the hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    repo.write("cluster/namespace.yaml", &namespace_yaml("gitops"));
    repo.write("namespaces/gitops/checks/cpu.yaml", &check_yaml("cpu", 10));
    let good = repo.commit("valid");
    let push = repo.push();
    assert_eq!(push.code, 0, "a valid push was refused:\n{push:#?}");
    assert!(
        push.stderr.contains("2 documents, 2 types, 0 errors"),
        "{push:#?}"
    );
    assert_eq!(repo.main(), good);

    repo.write(BROKEN_PATH, BROKEN_YAML);
    repo.commit("broken");
    let push = repo.push();
    assert_ne!(push.code, 0, "an invalid push was accepted:\n{push:#?}");
    assert!(
        push.stderr.contains(&format!(
            "{BROKEN_PATH}:7:3: document 1: spec.intreval: unknown field"
        )),
        "{push:#?}"
    );
    assert!(
        push.stderr.contains("pre-receive hook declined"),
        "{push:#?}"
    );
    assert_eq!(
        repo.main(),
        good,
        "the refused commit reached the repository"
    );

    repo.write(BROKEN_PATH, &check_yaml("broken", 10));
    let fixed = repo.commit("fixed");
    let push = repo.push();
    assert_eq!(push.code, 0, "a valid push was refused:\n{push:#?}");
    assert_eq!(repo.main(), fixed);

    // Deleting a branch has nothing to check.
    git(
        &repo.work,
        &["push", "-q", "origin", "HEAD:refs/heads/scratch"],
    );
    git(&repo.work, &["push", "-q", "origin", ":refs/heads/scratch"]);
}
