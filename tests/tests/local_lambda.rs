//! The local Lambda runs a real `lambda_runtime` binary through the Runtime API, as the service
//! does: warm reuse, function errors, crashes, timeouts and cold starts.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use skewguard_world::lambda::{InvokeError, LocalFunction, check_request_ids, workspace_binary};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn echo(env: Vec<(String, String)>) -> LocalFunction {
    LocalFunction::start(
        "echo",
        PathBuf::from(env!("CARGO_BIN_EXE_echo-function")),
        env,
    )
    .await
    .expect("the echo function binary exists")
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn an_event_round_trips_and_the_instance_stays_warm() {
    let function = echo(vec![("GREETING".into(), "hello".into())]).await;
    assert_eq!(function.cold_starts(), 0, "cold start is lazy");

    let event = json!({"detail": {"stage": "POST_TEST_TRAFFIC_SHIFT", "n": [1, 2, 3]}});
    let answer = function.invoke(event.clone(), TIMEOUT).await;
    assert_eq!(answer, Ok(event), "logs:\n{}", function.logs().join("\n"));
    let pid = function.pid().expect("a warm instance");

    for i in 0..5 {
        let answer = function.invoke(json!({"i": i}), TIMEOUT).await;
        assert_eq!(answer, Ok(json!({"i": i})));
    }
    assert_eq!(
        function.invoke(json!({"env": "GREETING"}), TIMEOUT).await,
        Ok(json!({"env": "hello"}))
    );
    assert_eq!(
        function
            .invoke(json!({"env": "AWS_LAMBDA_FUNCTION_NAME"}), TIMEOUT)
            .await,
        Ok(json!({"env": "echo"}))
    );
    assert_eq!(
        function.invoke(json!({"env": "HOME"}), TIMEOUT).await,
        Ok(json!({"env": null})),
        "the function gets a clean environment"
    );
    assert_eq!(function.cold_starts(), 1);
    assert_eq!(
        function.pid(),
        Some(pid),
        "the same process served every invocation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invocations_queue_on_one_instance() {
    let function = std::sync::Arc::new(echo(Vec::new()).await);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..4 {
        let function = std::sync::Arc::clone(&function);
        calls.spawn(async move {
            // Queueing behind the others does not eat into this one's timeout.
            let answer = function
                .invoke(
                    json!({"sleep_ms": 100, "i": i}),
                    Duration::from_millis(1000),
                )
                .await;
            (i, answer)
        });
    }
    while let Some(joined) = calls.join_next().await {
        let (i, answer) = joined.unwrap();
        assert_eq!(answer, Ok(json!({"sleep_ms": 100, "i": i})));
    }
    assert_eq!(function.cold_starts(), 1);
}

#[tokio::test]
async fn a_handler_error_is_a_function_error_and_the_instance_stays_warm() {
    let function = echo(Vec::new()).await;
    let answer = function
        .invoke(json!({"error": "cart is empty"}), TIMEOUT)
        .await;
    assert_eq!(
        answer,
        Err(InvokeError::FunctionError {
            error_type: "EchoError".into(),
            message: "cart is empty".into(),
        })
    );
    assert_eq!(function.invoke(json!(1), TIMEOUT).await, Ok(json!(1)));
    assert_eq!(function.cold_starts(), 1);
}

#[tokio::test]
async fn a_crash_fails_the_invocation_and_the_next_one_cold_starts() {
    let function = echo(Vec::new()).await;
    assert_eq!(
        function.invoke(json!("warm"), TIMEOUT).await,
        Ok(json!("warm"))
    );
    let pid = function.pid().expect("a warm instance");

    let answer = function.invoke(json!({"crash": true}), TIMEOUT).await;
    match answer {
        Err(InvokeError::Crashed { status }) => assert!(status.contains('3'), "{status}"),
        other => panic!("expected a crash, got {other:?}"),
    }
    assert!(!process_exists(pid), "the crashed process is reaped");

    assert_eq!(
        function.invoke(json!("again"), TIMEOUT).await,
        Ok(json!("again"))
    );
    assert_eq!(function.cold_starts(), 2);
    assert_ne!(function.pid(), Some(pid));
}

#[tokio::test]
async fn a_timeout_kills_the_process_and_the_next_invocation_cold_starts() {
    let function = echo(Vec::new()).await;
    assert_eq!(function.invoke(json!(0), TIMEOUT).await, Ok(json!(0)));
    let pid = function.pid().expect("a warm instance");

    let started = std::time::Instant::now();
    let answer = function
        .invoke(json!({"sleep_ms": 30_000}), Duration::from_millis(300))
        .await;
    assert_eq!(answer, Err(InvokeError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!process_exists(pid), "a timed-out process is killed");

    assert_eq!(function.invoke(json!(1), TIMEOUT).await, Ok(json!(1)));
    assert_eq!(function.cold_starts(), 2);
}

#[tokio::test]
async fn a_process_that_dies_during_init_is_an_init_error() {
    // Without AWS_LAMBDA_FUNCTION_MEMORY_SIZE as a number, lambda_runtime panics before polling.
    let function = echo(vec![(
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
        "lots".into(),
    )])
    .await;
    match function.invoke(json!(0), TIMEOUT).await {
        Err(InvokeError::InitError { error_type, .. }) => {
            assert_eq!(error_type, "Runtime.ExitError")
        }
        other => panic!("expected an init error, got {other:?}"),
    }
}

#[tokio::test]
async fn logs_are_captured_and_no_process_outlives_the_function() {
    let function = echo(vec![
        ("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into()),
        ("AWS_LAMBDA_LOG_LEVEL".into(), "INFO".into()),
    ])
    .await;
    assert_eq!(
        function
            .invoke(json!({"log": "pin created"}), TIMEOUT)
            .await,
        Ok(json!({"log": "pin created"}))
    );
    let pid = function.pid().expect("a warm instance");
    // The drain threads may trail the response by a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let logged = loop {
        let logged = function.logs().into_iter().find_map(|line| {
            serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .filter(|v| v["fields"]["message"] == "pin created")
        });
        if let Some(logged) = logged {
            break logged;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no JSON log line; logs:\n{}",
            function.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(logged["level"], "INFO");
    assert!(
        function
            .logs()
            .iter()
            .any(|l| l.starts_with("START RequestId: ")),
        "{:?}",
        function.logs()
    );

    assert!(process_exists(pid));
    drop(function);
    assert!(
        !process_exists(pid),
        "the process is killed and reaped on drop"
    );
}

#[tokio::test]
async fn a_missing_binary_is_reported_at_start() {
    let err = LocalFunction::start("nope", PathBuf::from("/nonexistent/bootstrap"), Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cargo build"), "{err}");
}

/// With `AWS_LAMBDA_LOG_LEVEL=WARN` each function still tags its error lines with the request ID
/// (the runtime's invocation span is at INFO): a rejected event, twice, in each of the four.
#[tokio::test]
async fn a_function_logging_only_warnings_still_tags_them_with_the_request_id() {
    for name in [
        "post-test-traffic",
        "production-shift",
        "post-shift",
        "reconciler",
    ] {
        let binary = workspace_binary(name, name).expect("the function is built");
        let function = LocalFunction::start(
            name,
            binary,
            vec![
                ("SKEWGUARD_TABLE".into(), "skewguard".into()),
                (
                    skewguard_world::sweep::QUEUE_URL_ENV.into(),
                    "http://127.0.0.1:9/123456789012/skewguard-sweep".into(),
                ),
                ("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into()),
                ("AWS_LAMBDA_LOG_LEVEL".into(), "WARN".into()),
            ],
        )
        .await
        .unwrap();
        for _ in 0..2 {
            // A hook answers FAILED, the reconciler fails the invocation; both log an error.
            let _ = function.invoke(json!({"nonsense": true}), TIMEOUT).await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match check_request_ids(&function.logs()) {
                Ok(checked) => {
                    assert!(checked >= 2, "{name}: {:?}", function.logs());
                    break;
                }
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "{name}: {e}\n{}",
                    function.logs().join("\n")
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
