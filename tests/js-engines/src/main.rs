//! Cost of one Sensu filter evaluation in QuickJS (`rquickjs`) and Boa (`boa_engine`), the
//! event's JSON parsed in the engine each time, as `cairn_api::js` does.
//!
//! Run: `cargo run --release --manifest-path tests/js-engines/Cargo.toml` (prints one line per
//! engine and expression: the median over 5 runs of the mean cost per evaluation).

#![recursion_limit = "256"]


use std::time::Instant;

/// Evaluations per run.
const EVALUATIONS: u32 = 20_000;
/// Runs per figure; the median is reported.
const RUNS: usize = 5;

/// Sensu's `hour` and friends, in JavaScript (as `cairn_api::js` defines them).
const PRELUDE: &str = "function hour(t) { return new Date(t * 1000).getUTCHours(); }";

const EXPRESSIONS: [(&str, &str); 2] = [
    (
        "occurrences",
        "event.check.occurrences == 1 || event.check.occurrences % 60 == 0",
    ),
    (
        "regex+hour",
        "/^web-/.test(event.entity.metadata.name) && hour(event.timestamp) >= 9",
    ),
];

fn main() {
    let event = event_json();
    println!("event JSON: {} bytes; {EVALUATIONS} evaluations x {RUNS} runs", event.len());
    for (name, expression) in EXPRESSIONS {
        let quickjs = median(|| quickjs(expression, &event));
        let boa = median(|| boa(expression, &event));
        println!("{name:12} rquickjs {quickjs:7.2} us/eval   boa_engine {boa:7.2} us/eval   ({expression})");
    }
}

fn median(mut run: impl FnMut() -> f64) -> f64 {
    let mut figures: Vec<f64> = (0..RUNS).map(|_| run()).collect();
    figures.sort_by(f64::total_cmp);
    figures[RUNS / 2]
}

/// Mean microseconds per evaluation over [`EVALUATIONS`].
fn quickjs(expression: &str, event: &str) -> f64 {
    use rquickjs::{Context, Function, Runtime};
    let runtime = Runtime::new().unwrap();
    runtime.set_memory_limit(32 << 20);
    let context = Context::full(&runtime).unwrap();
    context.with(|ctx| {
        ctx.eval::<(), _>(PRELUDE).unwrap();
        let filter: Function = ctx
            .eval(format!("(function (event) {{ return ({expression}\n); }})"))
            .unwrap();
        let start = Instant::now();
        for _ in 0..EVALUATIONS {
            let value = ctx.json_parse(event).unwrap();
            let matched: bool = filter.call((value,)).unwrap();
            std::hint::black_box(matched);
        }
        start.elapsed().as_secs_f64() * 1e6 / f64::from(EVALUATIONS)
    })
}

fn boa(expression: &str, event: &str) -> f64 {
    use boa_engine::{js_string, Context, JsString, JsValue, Source};
    let mut context = Context::default();
    context.eval(Source::from_bytes(PRELUDE)).unwrap();
    let filter = context
        .eval(Source::from_bytes(&format!(
            "(function (event) {{ return ({expression}\n); }})"
        )))
        .unwrap();
    let filter = filter.as_object().unwrap().clone();
    let json = context
        .global_object()
        .get(js_string!("JSON"), &mut context)
        .unwrap();
    let parse = json
        .as_object()
        .unwrap()
        .get(js_string!("parse"), &mut context)
        .unwrap();
    let parse = parse.as_object().unwrap().clone();
    let start = Instant::now();
    for _ in 0..EVALUATIONS {
        let text = JsValue::from(JsString::from(event));
        let value = parse.call(&JsValue::undefined(), &[text], &mut context).unwrap();
        let matched = filter
            .call(&JsValue::undefined(), &[value], &mut context)
            .unwrap();
        std::hint::black_box(matched.as_boolean().unwrap());
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(EVALUATIONS)
}

/// A realistic event: an agent entity with its system facts, a check with 21 history entries.
fn event_json() -> String {
    let history: Vec<serde_json::Value> = (0..21)
        .map(|i| serde_json::json!({"status": if i > 17 { 2 } else { 0 }, "executed": 1_700_000_000 + i * 60}))
        .collect();
    serde_json::json!({
        "timestamp": 1_700_001_260,
        "id": "3c4b1e0e-8d2f-4b59-9a55-0d6c1d0f2a11",
        "metadata": {"namespace": "default"},
        "entity": {
            "entity_class": "agent",
            "system": {
                "hostname": "web-1", "os": "linux", "platform": "debian", "platform_family": "debian",
                "platform_version": "12.5", "arch": "amd64", "libc_type": "glibc", "vm_system": "kvm",
                "vm_role": "guest", "cloud_provider": "",
                "network": {"interfaces": [
                    {"name": "lo", "addresses": ["127.0.0.1/8", "::1/128"]},
                    {"name": "eth0", "mac": "52:54:00:12:34:56", "addresses": ["10.0.0.11/24", "fe80::5054:ff:fe12:3456/64"]}
                ]},
                "processes": null
            },
            "subscriptions": ["linux", "web", "entity:web-1"],
            "last_seen": 1_700_001_259,
            "deregister": false,
            "deregistration": {},
            "user": "agent",
            "redact": ["password", "passwd", "pass", "api_key", "api_token", "access_key", "secret_key", "private_key", "secret"],
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"env": "prod", "team": "web", "region": "eu-west-1"}, "annotations": {"runbook": "https://wiki.example.com/runbooks/web"}},
            "sensu_agent_version": "6.9.0"
        },
        "check": {
            "command": "check-http -u https://localhost/health -t 10 --response-code 200",
            "handlers": ["slack", "pagerduty"],
            "high_flap_threshold": 0, "low_flap_threshold": 0,
            "interval": 60, "publish": true, "round_robin": false, "runtime_assets": ["check-http"],
            "stdin": false, "subdue": null, "subscriptions": ["web"], "proxy_entity_name": "",
            "check_hooks": null, "ttl": 0, "timeout": 10, "duration": 0.153, "output_metric_format": "",
            "output_metric_handlers": null, "env_vars": null,
            "executed": 1_700_001_260, "history": history, "issued": 1_700_001_260,
            "output": "CheckHttp CRITICAL: Request error: Failed to open TCP connection to localhost:443 (Connection refused - connect(2) for \"localhost\" port 443)\n",
            "state": "failing", "status": 2, "total_state_change": 6, "last_ok": 1_700_001_020,
            "occurrences": 3, "occurrences_watermark": 3, "output_metric_tags": null,
            "metadata": {"name": "check-http", "namespace": "default", "labels": {"tier": "frontend"}, "annotations": {"fatigue_check/occurrences": "3", "fatigue_check/interval": "3600"}},
            "secrets": null, "is_silenced": false, "scheduler": "memory", "processed_by": "web-1", "pipelines": []
        }
    })
    .to_string()
}
