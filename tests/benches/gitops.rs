//! GitOps benchmark (issue 4): on a generated repository of 10,000 resources, the time of a full
//! `cairnctl apply`, of a dry-run `cairnctl diff` once in sync, and the latency from `git push`
//! to the change being served by the backend under `cairnctl watch`, each beside a baseline
//! measured in the same run:
//!
//! - apply: the same 10,000 `PUT`s sent by a bare reqwest loop at the same concurrency;
//! - diff: listing the same live state page by page with a bare reqwest loop;
//! - push → applied: the `git push` itself.
//!
//! Run with `cargo bench -p cairn-tests --bench gitops`. `CAIRN_BENCH_RESOURCES` (default
//! 10,000), `CAIRN_BENCH_PUSHES` (default 20) and `CAIRN_BENCH_ROUNDS` (default 5, for diff)
//! change the sizes.

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_api::client::Credentials;
use cairn_tests::{command, Backend, ADMIN_PASSWORD};

const NAMESPACES: usize = 20;
const DOCS_PER_FILE: usize = 20;
const CONCURRENCY: &str = "32";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .filter(|value| *value > 0)
        .unwrap_or(default)
}

fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn check(namespace: usize, index: usize, command: &str) -> String {
    format!(
        "type: CheckConfig\napi_version: core/v2\nmetadata:\n  name: check-{index:05}\n  labels:\n    team: team-{}\nspec:\n  command: \"{command}\"\n  interval: {}\n  timeout: 10\n  subscriptions: [linux, ns-{namespace:02}]\n  handlers: [log]\n  publish: true\n",
        index % 7,
        30 + index % 60
    )
}

/// Writes the repository's files: namespaces in cluster/, then checks spread over the
/// namespaces in files of 20 documents, plus one handler per namespace.
fn generate(work: &Path, resources: usize) -> usize {
    std::fs::create_dir_all(work.join("cluster")).expect("mkdir");
    let mut namespaces = String::new();
    for namespace in 0..NAMESPACES {
        namespaces.push_str(&format!(
            "---\ntype: Namespace\napi_version: core/v2\nmetadata:\n  name: ns-{namespace:02}\nspec:\n  name: ns-{namespace:02}\n"
        ));
    }
    std::fs::write(work.join("cluster/namespaces.yaml"), namespaces).expect("write");
    let mut total = NAMESPACES;
    for namespace in 0..NAMESPACES {
        let dir = work.join(format!("namespaces/ns-{namespace:02}"));
        std::fs::create_dir_all(dir.join("checks")).expect("mkdir");
        std::fs::write(
            dir.join("handler.yaml"),
            "type: Handler\napi_version: core/v2\nmetadata:\n  name: log\nspec:\n  type: pipe\n  command: cat > /dev/null\n  timeout: 10\n",
        )
        .expect("write");
        total += 1;
    }
    let checks = resources.saturating_sub(total);
    for namespace in 0..NAMESPACES {
        let indexes: Vec<usize> = (namespace..checks).step_by(NAMESPACES).collect();
        for (file, chunk) in indexes.chunks(DOCS_PER_FILE).enumerate() {
            let mut text = String::new();
            for index in chunk {
                text.push_str("---\n");
                text.push_str(&check(namespace, *index, "true"));
            }
            let path = work.join(format!(
                "namespaces/ns-{namespace:02}/checks/checks-{file:04}.yaml"
            ));
            std::fs::write(path, text).expect("write");
        }
    }
    total + checks
}

fn cairnctl(config: &Path, args: &[&str]) -> (Duration, String) {
    let started = Instant::now();
    let output = command("cairnctl")
        .args(args)
        .env("CAIRN_CONFIG_DIR", config)
        .output()
        .expect("run cairnctl");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cairnctl {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (elapsed, stdout)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let resources = env_usize("CAIRN_BENCH_RESOURCES", 10_000);
    let pushes = env_usize("CAIRN_BENCH_PUSHES", 20);
    let rounds = env_usize("CAIRN_BENCH_ROUNDS", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backend = Backend::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    let ca = backend.ca_file();
    let ca = ca.to_str().expect("utf-8 path");
    let (_, _) = cairnctl(
        &config,
        &[
            "configure",
            "--url",
            &backend.url,
            "--ca-file",
            ca,
            "--username",
            "admin",
            "--password",
            ADMIN_PASSWORD,
        ],
    );

    // The repository: a bare one to push to, and a work tree.
    let bare = dir.path().join("monitoring.git");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&bare).expect("mkdir");
    git(&bare, &["init", "--bare", "-b", "main"]);
    git(
        dir.path(),
        &["clone", "-q", bare.to_str().expect("utf-8"), "work"],
    );
    let total = generate(&work, resources);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "generated"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let bare_arg = bare.to_str().expect("utf-8 path").to_owned();
    let source = ["--git", bare_arg.as_str(), "--ref", "main"];

    println!("GitOps benchmark (issue 4)");
    println!(
        "repository: {total} resources ({NAMESPACES} namespaces, {NAMESPACES} handlers, the rest checks, {DOCS_PER_FILE} documents per file)"
    );

    // Apply: 10,000 creates.
    let mut args = vec!["apply"];
    args.extend(source);
    args.extend(["--concurrency", CONCURRENCY]);
    let (apply_time, apply_out) = cairnctl(&config, &args);
    println!("apply done in {:.2} s", apply_time.as_secs_f64());
    let last = apply_out.lines().last().unwrap_or_default().to_owned();
    assert!(last.contains(&format!("{total} created")), "{last}");

    // Baseline: the same PUTs from a bare loop, over the resources the apply created.
    let client = backend.client(Credentials::None);
    let token = runtime
        .block_on(client.login("admin", ADMIN_PASSWORD))
        .expect("login")
        .access_token;
    let client = client.with_credentials(Credentials::Bearer(token));
    let listed: Vec<cairn_api::Resource> = runtime.block_on(async {
        let mut all = Vec::new();
        for kind in [
            cairn_api::Kind::Namespace,
            cairn_api::Kind::Handler,
            cairn_api::Kind::CheckConfig,
        ] {
            all.extend(client.list_selected(kind, None, None).await.expect("list"));
        }
        // The backend's own `default` namespace is not the repository's.
        all.retain(|resource| {
            resource
                .metadata
                .labels
                .contains_key(cairn_api::meta::LABEL_MANAGED_BY)
        });
        all
    });
    assert_eq!(listed.len(), total);
    let put_started = Instant::now();
    runtime.block_on(async {
        use futures::stream::StreamExt;
        let concurrency: usize = CONCURRENCY.parse().expect("number");
        futures::stream::iter(listed.iter())
            .map(|resource| client.put_resource(resource))
            .buffer_unordered(concurrency)
            .for_each(|result| async move { result.expect("put") })
            .await;
    });
    let put_time = put_started.elapsed();

    // Diff once in sync, and the baseline listing.
    let mut diff_times = Vec::new();
    let mut list_times = Vec::new();
    for _ in 0..rounds {
        let mut args = vec!["diff"];
        args.extend(source);
        let (elapsed, out) = cairnctl(&config, &args);
        assert!(out.contains("in sync"), "{out}");
        diff_times.push(elapsed.as_secs_f64());
        let started = Instant::now();
        let count = runtime.block_on(async {
            let mut count = 0;
            for kind in [
                cairn_api::Kind::Namespace,
                cairn_api::Kind::Handler,
                cairn_api::Kind::CheckConfig,
            ] {
                count += client
                    .list_selected(kind, None, None)
                    .await
                    .expect("list")
                    .len();
            }
            count
        });
        // Plus the backend's own `default` namespace.
        assert_eq!(count, total + 1);
        list_times.push(started.elapsed().as_secs_f64());
    }

    // Push → applied under `cairnctl watch`.
    let mut watch_args: Vec<&str> = vec!["watch"];
    watch_args.extend(source);
    watch_args.extend(["--concurrency", CONCURRENCY]);
    let watcher = command("cairnctl")
        .args(&watch_args)
        .env("CAIRN_CONFIG_DIR", &config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cairnctl watch");
    let mut watcher = KillOnDrop(watcher);
    let stdout = watcher.0.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // The initial sync finds nothing to do.
    let first = lines_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the watcher's first sync");
    assert!(first.contains("in sync"), "{first}");
    let mut latencies = Vec::new();
    let mut push_times = Vec::new();
    for push in 0..pushes {
        let marker = format!("echo push-{push}");
        let path = work.join("namespaces/ns-00/checks/checks-0000.yaml");
        let text = std::fs::read_to_string(&path).expect("read");
        let changed = text.replacen(
            &text
                .lines()
                .find(|line| line.starts_with("  command:"))
                .expect("a command line")
                .to_owned(),
            &format!("  command: {marker}"),
            1,
        );
        std::fs::write(&path, changed).expect("write");
        git(&work, &["commit", "-qam", &format!("push {push}")]);
        let started = Instant::now();
        git(&work, &["push", "-q", "origin", "HEAD:main"]);
        push_times.push(started.elapsed().as_secs_f64());
        let deadline = started + Duration::from_secs(30);
        loop {
            let live = runtime
                .block_on(client.get_resource(cairn_api::Kind::CheckConfig, "ns-00", "check-00000"))
                .expect("get");
            let command = live.and_then(|resource| match resource.spec {
                cairn_api::Spec::CheckConfig(check) => Some(check.command),
                _ => None,
            });
            if command.as_deref() == Some(marker.as_str()) {
                break;
            }
            assert!(Instant::now() < deadline, "push {push} not applied in 30 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        latencies.push(started.elapsed().as_secs_f64());
    }
    drop(watcher);

    let apply_s = apply_time.as_secs_f64();
    let put_s = put_time.as_secs_f64();
    let diff_s = median(diff_times);
    let list_s = median(list_times);
    let latency_s = median(latencies.clone());
    let push_s = median(push_times);
    println!(
        "| measurement                                        |    median s | baseline s | ours/baseline | goal      |"
    );
    println!(
        "|----------------------------------------------------|------------:|-----------:|--------------:|-----------|"
    );
    println!(
        "| apply {total} creates (baseline: bare PUT loop)      | {apply_s:>11.2} | {put_s:>10.2} | {:>13.2} | < 20 s    |",
        apply_s / put_s
    );
    println!(
        "| dry-run diff, in sync (baseline: bare list)        | {diff_s:>11.3} | {list_s:>10.3} | {:>13.2} | < 2 s     |",
        diff_s / list_s
    );
    println!(
        "| git push → applied, {pushes} pushes (baseline: push)  | {latency_s:>11.3} | {push_s:>10.3} | {:>13.2} | < 1 s     |",
        latency_s / push_s
    );
    println!(
        "push → applied, every push (s): {}",
        latencies
            .iter()
            .map(|value| format!("{value:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("apply is one run; diff is the median of {rounds} runs; ratios > 1 mean slower than the baseline.");
    for (what, value, goal) in [
        ("apply", apply_s, 20.0),
        ("diff", diff_s, 2.0),
        ("push → applied", latency_s, 1.0),
    ] {
        println!(
            "goal {what} < {goal} s: {value:.3} s, {}",
            if value < goal { "met" } else { "NOT met" }
        );
    }
}
