use std::sync::Arc;
use std::time::Duration;

use super::*;

/// Monday, March 5, 2018 6:51:53 PM UTC: the timestamp of Sensu's SQE reference examples.
const SENSU_DOCS_TIMESTAMP: u64 = 1_520_275_913;

fn event() -> Arc<[u8]> {
    let event = serde_json::json!({
        "timestamp": SENSU_DOCS_TIMESTAMP,
        "entity": {
            "entity_class": "agent",
            "subscriptions": ["linux", "system"],
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"env": "prod"}},
            "name": "web-1",
            "labels": {"env": "prod"},
        },
        "check": {
            "status": 2,
            "occurrences": 120,
            "interval": 60,
            "output": "CRITICAL: down",
            "history": [{"status": 0, "executed": 1}, {"status": 2, "executed": 2}],
            "metadata": {"name": "check-http"},
            "name": "check-http",
        },
    });
    serde_json::to_vec(&event).unwrap().into()
}

fn engine() -> Engine {
    Engine::new(EngineConfig::default()).unwrap()
}

async fn evaluate(engine: &Engine, expressions: &[&str]) -> Verdict {
    let expressions = expressions
        .iter()
        .map(|source| source.to_string())
        .collect();
    engine
        .filter(expressions, Vec::new(), event())
        .await
        .unwrap()
}

/// `Some(result)`, or `None` when the single expression fails.
async fn check(engine: &Engine, source: &str, expect: Option<bool>) {
    let verdict = evaluate(engine, &[source]).await;
    let actual = verdict.errors.is_empty().then_some(verdict.matched);
    assert_eq!(actual, expect, "{source}: {:?}", verdict.errors);
}

async fn only_error(engine: &Engine, source: &str) -> JsError {
    let mut verdict = evaluate(engine, &[source]).await;
    assert_eq!(verdict.errors.len(), 1, "{source}: {verdict:?}");
    verdict.errors.remove(0).1
}

#[tokio::test]
async fn sensu_documented_expressions() {
    let engine = engine();
    // The examples of Sensu's "Sensu query expressions reference", with its timestamp.
    check(&engine, "weekday(event.timestamp) == 0", Some(false)).await;
    check(&engine, "hour(event.timestamp) >= 17", Some(true)).await;
    check(&engine, "minute(event.timestamp) <= 30", Some(false)).await;
    check(&engine, "second(event.timestamp) >= 30", Some(true)).await;
    check(
        &engine,
        "weekday(event.timestamp) >= 1 && weekday(event.timestamp) <= 5",
        Some(true),
    )
    .await;
    check(&engine, "seconds_since(event.timestamp) > 30", Some(true)).await;
    check(&engine, "hour() == 0", Some(true)).await;
    check(&engine, "!!event.entity.labels.env", Some(true)).await;
    check(&engine, "!!event.entity.labels.webserver", Some(false)).await;
    check(
        &engine,
        "event.entity.subscriptions.indexOf('system') >= 0",
        Some(true),
    )
    .await;
    check(&engine, "typeof sensu === 'object'", Some(true)).await;
}

#[tokio::test]
async fn javascript_beyond_the_old_evaluator() {
    let engine = engine();
    check(
        &engine,
        "event.check.occurrences == 1 || event.check.occurrences % 60 == 0",
        Some(true),
    )
    .await;
    check(
        &engine,
        "/^web-/.test(event.entity.metadata.name)",
        Some(true),
    )
    .await;
    check(&engine, "/^db-/.test(event.entity.name)", Some(false)).await;
    check(
        &engine,
        "event.check.history.some(function (h) { return h.status != 0; })",
        Some(true),
    )
    .await;
    check(
        &engine,
        "event.check.history.every(function (h) { return h.status == 0; })",
        Some(false),
    )
    .await;
    check(
        &engine,
        "(function () { return event.check.status == 2; })()",
        Some(true),
    )
    .await;
    check(
        &engine,
        "event.check.output.indexOf('CRITICAL') === 0",
        Some(true),
    )
    .await;
    check(&engine, "event.check.status === '2'", Some(false)).await;
    check(&engine, "event.check.status == '2'", Some(true)).await;
    check(
        &engine,
        "event.check.name + '!' == 'check-http!'",
        Some(true),
    )
    .await;
    // A program of statements: its value is the last one's, as Otto gives.
    check(
        &engine,
        "var limit = 100; event.check.occurrences > limit",
        Some(true),
    )
    .await;
}

#[tokio::test]
async fn results_other_than_true_or_false_are_errors() {
    let engine = engine();
    for source in [
        "1",
        "'true'",
        "event.check.status",
        "event.entity.labels.missing",
        "null",
        "new Boolean(true)",
    ] {
        assert!(
            matches!(
                only_error(&engine, source).await,
                JsError::NotBoolean { .. }
            ),
            "{source}"
        );
    }
    assert_eq!(
        only_error(&engine, "event.check.status").await.to_string(),
        "expression returned number, not true or false"
    );
}

#[tokio::test]
async fn failures_are_recorded_and_skipped_as_sensu_does() {
    let engine = engine();
    let verdict = evaluate(
        &engine,
        &[
            "event.check.status == 2",
            "event.check.status == = 2",
            "event.nothing.here == 1",
            "event.check.status == 2",
        ],
    )
    .await;
    assert!(verdict.matched, "the failing expressions are skipped");
    let errors: Vec<usize> = verdict.errors.iter().map(|(idx, _)| *idx).collect();
    assert_eq!(errors, [1, 2]);
    assert!(
        matches!(verdict.errors[0].1, JsError::Syntax(_)),
        "{verdict:?}"
    );
    match &verdict.errors[1].1 {
        JsError::Exception(message) => assert!(message.starts_with("TypeError"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Evaluation stops at the first false, as Sensu's loop returns there.
    let stopped = evaluate(&engine, &["event.check.status == 1", "oops("]).await;
    assert_eq!(
        stopped,
        Verdict {
            matched: false,
            errors: Vec::new()
        }
    );
}

#[tokio::test]
async fn evaluations_do_not_leak_into_the_next() {
    let engine = Engine::new(EngineConfig {
        workers: 1,
        ..EngineConfig::default()
    })
    .unwrap();
    check(&engine, "(leaked = 1) == 1", Some(true)).await;
    check(&engine, "typeof leaked === 'undefined'", Some(true)).await;
    check(
        &engine,
        "(Array.prototype.some = function () { return false; }) && true",
        Some(true),
    )
    .await;
    check(
        &engine,
        "[1].some(function () { return true; })",
        Some(true),
    )
    .await;
    check(
        &engine,
        "(hour = function () { return 99; }) && true",
        Some(true),
    )
    .await;
    check(&engine, "hour(event.timestamp) == 18", Some(true)).await;
    check(&engine, "(event.check.status = 0) == 0", Some(true)).await;
    check(&engine, "event.check.status == 2", Some(true)).await;
}

#[tokio::test]
async fn limits_are_errors_and_the_worker_recovers() {
    let engine = Engine::new(EngineConfig {
        workers: 1,
        time_limit: Duration::from_millis(200),
        memory_limit: 8 * 1024 * 1024,
        ..EngineConfig::default()
    })
    .unwrap();
    assert_eq!(
        only_error(&engine, "(function () { while (true) {} })()").await,
        JsError::TimeLimit(Duration::from_millis(200))
    );
    check(&engine, "event.check.status == 2", Some(true)).await;
    assert_eq!(
        only_error(
            &engine,
            "(function () { var a = []; while (true) { a.push(new Array(100000).fill(1)); } })()"
        )
        .await,
        JsError::MemoryLimit(8 * 1024 * 1024)
    );
    check(&engine, "event.check.status == 2", Some(true)).await;
    assert_eq!(
        only_error(&engine, "(function f(n) { return f(n + 1) + 1; })(0)").await,
        JsError::StackLimit(DEFAULT_STACK_LIMIT)
    );
    check(&engine, "event.check.status == 2", Some(true)).await;
    assert_eq!(
        only_error(&engine, "'x'.repeat(1 << 28).length > 0").await,
        JsError::MemoryLimit(8 * 1024 * 1024)
    );
    check(&engine, "event.check.status == 2", Some(true)).await;
}

#[tokio::test]
async fn a_full_queue_is_an_error_at_once() {
    let engine = Engine::new(EngineConfig {
        workers: 1,
        queue_capacity: 1,
        time_limit: Duration::from_millis(300),
        ..EngineConfig::default()
    })
    .unwrap();
    let spin = || engine.filter(vec!["while (true) {}".to_owned()], Vec::new(), event());
    let (first, second, third) = tokio::join!(spin(), spin(), spin());
    let outcomes = [first, second, third];
    assert!(
        outcomes.contains(&Err(JsError::QueueFull { capacity: 1 })),
        "{outcomes:?}"
    );
    check(&engine, "event.check.status == 2", Some(true)).await;
}

#[tokio::test]
async fn bindings_other_than_event() {
    let engine = engine();
    let entity: Arc<[u8]> = br#"{"subscriptions": ["system"], "entity_class": "proxy"}"#
        .to_vec()
        .into();
    let bindings = vec![("entity".to_owned(), entity)];
    let matched = engine
        .evaluate_bool(
            vec![
                "entity.subscriptions.indexOf('system') >= 0".to_owned(),
                "entity.entity_class == 'proxy'".to_owned(),
            ],
            bindings.clone(),
        )
        .await;
    assert_eq!(matched, Ok(true));
    let failed = engine
        .evaluate_bool(vec!["entity.nope.nope".to_owned()], bindings)
        .await;
    assert!(matches!(failed, Err(JsError::Exception(_))), "{failed:?}");
    let not_json = engine
        .filter(vec!["true".to_owned()], Vec::new(), b"{".to_vec().into())
        .await;
    assert!(
        matches!(not_json, Err(JsError::InvalidBinding { ref name, .. }) if name == "event"),
        "{not_json:?}"
    );
}

#[tokio::test]
async fn libraries_run_before_the_expressions() {
    let engine = engine();
    let verdict = engine
        .filter(
            vec!["is_web(event.entity.name)".to_owned()],
            vec!["function is_web(name) { return /^web-/.test(name); }".to_owned()],
            event(),
        )
        .await;
    assert_eq!(
        verdict,
        Ok(Verdict {
            matched: true,
            errors: Vec::new()
        })
    );
    let broken = engine
        .filter(vec!["true".to_owned()], vec!["(".to_owned()], event())
        .await;
    assert!(
        matches!(broken, Err(JsError::Library { index: 0, .. })),
        "{broken:?}"
    );
    // The libraries stay out of the shared context.
    check(&engine, "typeof is_web === 'undefined'", Some(true)).await;
}

#[tokio::test]
async fn mutators_as_sensu_runs_them() {
    let engine = engine();
    let mutate = |eval: &str, env: &[&str]| {
        engine.mutate(
            eval.to_owned(),
            env.iter().map(|entry| entry.to_string()).collect(),
            event(),
        )
    };
    // Sensu's documented example (it assigns the global `data`).
    let output = mutate(
        "data = JSON.parse(JSON.stringify(event)); delete data.check.metadata.name; \
         delete data.entity.metadata.labels.env; return JSON.stringify(data)",
        &[],
    )
    .await
    .unwrap();
    let output: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(output["check"]["metadata"], serde_json::json!({}));
    assert_eq!(
        output["entity"]["metadata"]["labels"],
        serde_json::json!({})
    );
    assert_eq!(output["entity"]["name"], "web-1");
    // No return: the event as the script left it.
    let output = mutate("event.check.output = 'mutated';", &[])
        .await
        .unwrap();
    let output: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(output["check"]["output"], "mutated");
    assert_eq!(output["check"]["status"], 2);
    let output = mutate(
        "return APP_VERSION + '/' + typeof data",
        &["APP_VERSION=2.5.0", "SHELL"],
    )
    .await
    .unwrap();
    assert_eq!(output, b"2.5.0/undefined");
    assert_eq!(
        mutate("return {a: 1}", &[]).await,
        Err(JsError::BadMutatorResult {
            found: "object".to_owned()
        })
    );
    assert!(matches!(
        mutate("return (", &[]).await,
        Err(JsError::Syntax(_))
    ));
    assert!(matches!(
        mutate("while (true) {}", &[]).await,
        Err(JsError::TimeLimit(_))
    ));
}

#[test]
fn check_syntax_parses_without_running() {
    use SourceKind::{Expression, Script};
    assert_eq!(check_syntax("event.check.status == 2", Expression), Ok(()));
    assert_eq!(check_syntax("var a = 1; a == 1", Expression), Ok(()));
    assert_eq!(check_syntax("while (true) {}", Expression), Ok(()));
    assert_eq!(check_syntax("return JSON.stringify(event)", Script), Ok(()));
    let error = check_syntax("event.check.status == = 2", Expression).unwrap_err();
    assert!(error.starts_with("SyntaxError"), "{error}");
    assert!(check_syntax("return (", Script).is_err());
    assert!(
        check_syntax("", Expression).is_ok(),
        "an empty program parses"
    );
}
