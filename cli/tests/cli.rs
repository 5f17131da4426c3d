//! The `skewguard` binary against the local world, configured only the standard way
//! (`AWS_ENDPOINT_URL_*`, credentials and region from the environment): status, history,
//! explain (checked against what the local ALB data plane does with the same request), release,
//! reconcile, wait (following a deployment through the shift, a rollback, a timeout), and clear
//! errors.

use std::time::Duration;

use serde_json::{Value, json};
use skewguard_cli::commands::wait::LIFECYCLE_STAGES;
use skewguard_core::event::LifecycleStage;
use skewguard_core::ledger::Status;
use skewguard_world::data_plane::{DataPlane, RULE_HEADER, TARGET_GROUP_HEADER};
use skewguard_world::engine::{Intervention, Outcome};
use skewguard_world::world::{TABLE, World};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Who moto says calls (`sts:GetCallerIdentity`): the CLI records it as the actor.
const MOTO_CALLER: &str = "arn:aws:sts::123456789012:user/moto";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `skewguard` with exactly `env` (nothing inherited but PATH).
async fn skewguard_with(env: &[(String, String)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_skewguard"));
    command.env_clear().args(args);
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("skewguard finishes")
        .expect("skewguard runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn world_env(world: &World) -> Vec<(String, String)> {
    let mut env = skewguard_world::aws::function_env(&world.endpoints);
    env.push(("SKEWGUARD_TABLE".into(), TABLE.into()));
    env.push(("HOME".into(), "/nonexistent".into()));
    // moto answers STS too (who is calling, for the history of release and reconcile).
    env.push((
        "AWS_ENDPOINT_URL_STS".into(),
        world.endpoints.dynamodb.clone(),
    ));
    env
}

async fn skewguard(world: &World, args: &[&str]) -> Run {
    skewguard_with(&world_env(world), args).await
}

/// Starts `skewguard wait` and returns once its first progress line is out, so that what
/// follows is sure to happen while it waits; the handle yields the whole run.
async fn wait_started(world: &World, args: &[&str]) -> tokio::task::JoinHandle<Run> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_skewguard"));
    command
        .env_clear()
        .arg("wait")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (k, v) in world_env(world) {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("skewguard runs");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    tokio::time::timeout(Duration::from_secs(30), stderr.read_line(&mut first))
        .await
        .expect("skewguard wait reports progress")
        .unwrap();
    tokio::spawn(async move {
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
            .await
            .expect("skewguard wait finishes")
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: first + &rest,
        }
    })
}

/// The lifecycle stages named by `wait`'s progress lines, in the order printed.
fn stages_reported(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split(" at ").nth(1)?.split(';').next().map(str::to_owned))
        .collect()
}

/// Sends one request through the data plane; the rule and target group it reports.
async fn through_plane(
    plane: &DataPlane,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, Option<String>) {
    let mut stream = tokio::net::TcpStream::connect(plane.addr()).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the data plane answers")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    (
        header(RULE_HEADER).unwrap_or_else(|| panic!("no rule header in {head}")),
        header(TARGET_GROUP_HEADER),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_clear_and_exit_non_zero() {
    let world = World::start().await;
    // No credentials anywhere.
    let bare = vec![
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED".to_owned(), "true".to_owned()),
        ("HOME".to_owned(), "/nonexistent".to_owned()),
    ];
    let run = skewguard_with(&bare, &["status"]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("no AWS credentials found"),
        "{}",
        run.stderr
    );
    // The table does not exist.
    let run = skewguard(&world, &["--table", "nope", "status"]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("the ledger table \"nope\" does not exist in us-east-1"),
        "{}",
        run.stderr
    );
    // An unknown service, both ways of naming it.
    for given in [
        "shop/nope",
        "arn:aws:ecs:us-east-1:123456789012:service/shop/nope",
    ] {
        let run = skewguard(&world, &["history", given, "v1"]).await;
        assert_ne!(run.code, 0);
        assert!(run.stderr.contains("unknown service"), "{}", run.stderr);
    }
    let run = skewguard(
        &world,
        &[
            "explain",
            "--listener",
            &world.alb.listener_arn,
            "--header",
            "nonsense",
        ],
    )
    .await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("NAME=VALUE"), "{}", run.stderr);
    // wait asks ECS, which knows no such service either.
    let run = skewguard(&world, &["wait", "shop/nope", "--timeout", "5s"]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("unknown service \"shop/nope\": ECS has no such service in us-east-1"),
        "{}",
        run.stderr
    );
    let run = skewguard(&world, &["wait", "shop/web", "--timeout", "soon"]).await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--timeout"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_explain_release_and_reconcile_against_the_world() {
    let world = std::sync::Arc::new(World::start().await);
    let (service, _) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s"}),
        )
        .await;
    let deploy = {
        let (world, service) = (world.clone(), service.clone());
        tokio::spawn(async move {
            world
                .engine
                .deploy(&service, "v2", &[], Intervention::None)
                .await
        })
    };
    // Wait for the hold: v1 draining for an hour, v2 live.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hold never began"
        );
        if let Ok(entries) = world.ledger().load(&service).await
            && entries
                .iter()
                .any(|e| e.deployment_id.as_str() == "v1" && e.status == Status::Draining)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // status, as JSON and as a table (no colour when piped).
    let status = skewguard(&world, &["status", "-o", "json"]).await.json();
    let web = &status["services"][0];
    assert_eq!(web["serviceArn"], json!(service));
    let row = |id: &str| {
        web["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["deploymentId"] == json!(id))
            .cloned()
            .unwrap()
    };
    assert_eq!(row("v2")["status"], json!("live"));
    assert_eq!(row("v1")["status"], json!("draining"));
    let left = row("v1")["secondsLeft"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "{left}");
    let priority = |id: &str| row(id)["pins"][0]["priority"].as_str().unwrap().to_owned();
    let table = skewguard(&world, &["status", "shop/web"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(!table.stdout.contains('\x1b'), "no colour when piped");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines[0], format!("web  {service}"));
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "DEPLOYMENT",
            "STATUS",
            "TARGET",
            "GROUP",
            "PINS",
            "LIVE",
            "SINCE",
            "DRAIN",
            "UNTIL",
            "LAST",
            "CHANGE"
        ]
    );
    let cells = |line: &str| {
        line.split_whitespace()
            .take(4)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(cells(lines[2]), ["v2", "live", "web-tg2", &priority("v2")]);
    assert_eq!(
        cells(lines[3]),
        ["v1", "draining", "web-tg1", &priority("v1")]
    );
    assert!(lines[3].contains(" left)"), "{}", lines[3]);
    let coloured = skewguard_with(
        &[
            world_env(&world),
            vec![("CLICOLOR_FORCE".into(), "1".into())],
        ]
        .concat(),
        &["status"],
    )
    .await;
    assert!(
        coloured.stdout.contains("\x1b[33mdraining\x1b[0m"),
        "{}",
        coloured.stdout
    );
    // NO_COLOR wins over CLICOLOR_FORCE.
    let no_color = skewguard_with(
        &[
            world_env(&world),
            vec![
                ("CLICOLOR_FORCE".into(), "1".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
        ]
        .concat(),
        &["status"],
    )
    .await;
    assert_eq!(no_color.code, 0, "{}", no_color.stderr);
    assert!(!no_color.stdout.contains('\x1b'), "{}", no_color.stdout);
    assert!(no_color.stdout.contains("draining"), "{}", no_color.stdout);

    // history
    let history = skewguard(&world, &["history", "shop/web", "v1", "-o", "json"])
        .await
        .json();
    let changes: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["change"].as_str().unwrap())
        .collect();
    assert!(changes[0].starts_with("recorded as live"), "{changes:?}");
    assert!(
        changes.last().unwrap().contains("live -> draining"),
        "{changes:?}"
    );

    // explain agrees with the data plane, request by request.
    let plane = DataPlane::start(world.clients.elbv2.clone(), world.alb.listener_arn.clone())
        .await
        .unwrap();
    let truth = world.engine.truths().remove(0);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/api/cart", vec![]),
        ("/api/cart", vec![("X-Deployment-ID", "v1")]),
        ("/api/cart", vec![("X-Deployment-ID", "V2")]),
        ("/api/cart", vec![("X-Deployment-ID", "ghost")]),
        ("/api/cart", vec![("X-Test-Traffic", "1")]),
        ("/elsewhere", vec![("X-Deployment-ID", "v1")]),
    ];
    for (path, headers) in &cases {
        let mut args = vec![
            "explain",
            "--listener",
            &world.alb.listener_arn,
            "--path",
            path,
        ];
        let pairs: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for p in &pairs {
            args.extend(["--header", p.as_str()]);
        }
        args.extend(["-o", "json"]);
        let explained = skewguard(&world, &args).await.json();
        let (rule, target_group) = through_plane(&plane, path, headers).await;
        assert_eq!(
            explained["rule"]["priority"],
            json!(rule),
            "{path} {headers:?}: {explained}"
        );
        let chosen: Vec<&Value> = explained["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["weight"].as_u64() > Some(0))
            .collect();
        match &target_group {
            Some(tg) => {
                assert_eq!(chosen.len(), 1, "{explained}");
                assert_eq!(chosen[0]["targetGroupArn"], json!(tg), "{path} {headers:?}");
                // The deployment explain names is the one that runs there.
                assert_eq!(
                    chosen[0]["deploymentId"].as_str(),
                    truth.running.get(tg).map(|d| d.as_str()),
                    "{path} {headers:?}: {explained}"
                );
            }
            None => assert!(chosen.is_empty(), "{explained}"),
        }
    }
    let pinned = skewguard(
        &world,
        &[
            "explain",
            "--listener",
            &world.alb.listener_arn,
            "--path",
            "/api/cart",
            "--header",
            "X-Deployment-ID=v1",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(pinned["rule"]["kind"], json!("pin"));
    let drain_until = world
        .ledger()
        .load(&service)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.deployment_id.as_str() == "v1")
        .unwrap()
        .drain_until
        .unwrap();
    assert_eq!(
        pinned["holdsUntil"],
        json!(
            drain_until
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        )
    );
    let ghost = skewguard(
        &world,
        &[
            "explain",
            "--listener",
            &world.alb.listener_arn,
            "--path",
            "/api/cart",
            "--header",
            "X-Deployment-ID=ghost",
        ],
    )
    .await;
    assert!(
        ghost.stdout.contains("production rule of web"),
        "{}",
        ghost.stdout
    );

    // release ends the hold: the deployment completes on the hook's next poll.
    let released = skewguard(&world, &["release", "shop/web"]).await;
    assert_eq!(released.code, 0, "{}", released.stderr);
    assert!(
        released.stdout.contains("skew window ended"),
        "{}",
        released.stdout
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), deploy)
        .await
        .expect("the released hold ends")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    let again = skewguard(&world, &["release", "shop/web", "-o", "json"])
        .await
        .json();
    assert_eq!(again["released"], json!([]));
    let history = skewguard(&world, &["history", "shop/web", "v1", "-o", "json"])
        .await
        .json();
    let lines = history["history"].as_array().unwrap();
    assert!(
        lines.iter().any(|h| h["stage"] == json!("release")
            && h["executionId"] == json!("cli")
            && h["actor"] == json!(MOTO_CALLER)
            && h["change"].as_str().unwrap().contains("ended early")),
        "{history}"
    );
    assert!(
        lines.last().unwrap()["change"]
            .as_str()
            .unwrap()
            .contains("draining -> retired")
    );

    // reconcile: in line; then drift, a dry run, a run, and a run that finds nothing.
    let run = skewguard(&world, &["reconcile"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "web: in line; nothing to repair\n");
    let pin = world
        .ledger()
        .load(&service)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.deployment_id.as_str() == "v2")
        .unwrap()
        .rule_arns[0]
        .clone();
    world.elb().delete_rule(&pin).await.unwrap();
    let dry = skewguard(&world, &["reconcile", &service, "--dry-run", "-o", "json"])
        .await
        .json();
    let kinds: Vec<&str> = dry["services"][0]["report"]["repairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["pin-restored", "pin-forgotten"]);
    let run = skewguard(&world, &["reconcile", "shop/web"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("web: repaired 2 things\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["pin-restored", "v2"])),
        "{}",
        run.stdout
    );
    world.check("after skewguard reconcile").await;
    world.assert_no_violations();
    let history = skewguard(&world, &["history", "shop/web", "v2", "-o", "json"])
        .await
        .json();
    assert!(
        history["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["stage"] == json!("reconciler") && h["actor"] == json!(MOTO_CALLER)),
        "the repair names who ran it: {history}"
    );
    let run = skewguard(&world, &["reconcile", "-o", "json"]).await.json();
    assert_eq!(run["services"][0]["report"]["repairs"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_returns_once_production_shifted_while_the_hold_runs() {
    let world = std::sync::Arc::new(World::start().await);
    let (service, _) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s"}),
        )
        .await;
    // Started before the deployment: it waits for one to begin, then follows it.
    let waiting = wait_started(
        &world,
        &[
            "shop/web",
            "--interval",
            "200ms",
            "--timeout",
            "60s",
            "-o",
            "json",
        ],
    )
    .await;
    let deploy = {
        let (world, service) = (world.clone(), service.clone());
        tokio::spawn(async move {
            world
                .engine
                .deploy(&service, "v2", &[], Intervention::None)
                .await
        })
    };
    let run = waiting.await.unwrap();
    println!("{}{}", run.stderr, run.stdout);
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    // It returned during the hold: the deployment is still in progress, v1 still pinned.
    assert!(!deploy.is_finished(), "the hold lasts an hour");
    let result: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(result["outcome"], json!("shifted"), "{result}");
    assert_eq!(result["serviceArn"], json!(service));
    assert_eq!(result["deploymentId"], json!("v2"));
    assert_eq!(result["status"], json!("IN_PROGRESS"));
    assert_eq!(
        result["lifecycleStage"],
        json!("POST_PRODUCTION_TRAFFIC_SHIFT")
    );
    let entries = world.ledger().load_with_archive(&service).await.unwrap();
    let entry = |id: &str| {
        entries
            .iter()
            .find(|e| e.deployment_id.as_str() == id)
            .unwrap()
    };
    assert_eq!(entry("v2").status, Status::Live);
    assert!(!entry("v2").rule_arns.is_empty());
    assert_eq!(entry("v1").status, Status::Draining);
    assert_eq!(
        result["holdUntil"],
        json!(
            entry("v1")
                .drain_until
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        )
    );
    // Progress went to stderr, one line per change, stages in deployment order.
    let mut lines = run.stderr.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .ends_with("shop/web: no deployment yet; waiting for a deployment to start"),
        "{}",
        run.stderr
    );
    let order = |stage: &String| {
        LIFECYCLE_STAGES
            .iter()
            .position(|s| s == stage)
            .unwrap_or_else(|| panic!("{stage}: {}", run.stderr))
    };
    let positions: Vec<usize> = stages_reported(&run.stderr).iter().map(order).collect();
    assert!(positions.is_sorted(), "{}", run.stderr);

    // Waiting for the whole deployment outlasts a short timeout: the hold is still running.
    let timed_out = skewguard(
        &world,
        &[
            "wait",
            "shop/web",
            "--until",
            "done",
            "--interval",
            "200ms",
            "--timeout",
            "1s",
        ],
    )
    .await;
    println!("{}{}", timed_out.stderr, timed_out.stdout);
    assert_ne!(timed_out.code, 0);
    assert!(
        timed_out.stdout.starts_with("web: gave up after 1s: deployment ")
            && timed_out.stdout.contains(
                "is IN_PROGRESS at POST_PRODUCTION_TRAFFIC_SHIFT; still waiting for the deployment to complete (skewguard holds it until "
            ),
        "{}",
        timed_out.stdout
    );

    // Once the skew window is released, `--until done` sees the deployment complete.
    let released = skewguard(&world, &["release", "shop/web"]).await;
    assert_eq!(released.code, 0, "{}", released.stderr);
    let done = skewguard(
        &world,
        &[
            "wait",
            &service,
            "--until",
            "done",
            "--interval",
            "200ms",
            "--timeout",
            "60s",
            "-o",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(done["outcome"], json!("done"), "{done}");
    assert_eq!(done["status"], json!("SUCCESSFUL"));
    let outcome = tokio::time::timeout(Duration::from_secs(60), deploy)
        .await
        .expect("the released hold ends")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);

    // Right after a completed deployment, the newest deployment is that one; a pipeline whose
    // deployment starts after `wait` does (a stack update) names the time it started from.
    let newest = skewguard(&world, &["wait", "shop/web", "--timeout", "5s"]).await;
    assert_eq!(newest.code, 0, "{}", newest.stderr);
    let started = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let not_yet = skewguard(
        &world,
        &[
            "wait",
            "shop/web",
            "--created-after",
            &started,
            "--interval",
            "200ms",
            "--timeout",
            "1s",
        ],
    )
    .await;
    assert_ne!(not_yet.code, 0);
    assert_eq!(
        not_yet.stdout,
        "web: gave up after 1s: no deployment seen; still waiting for a deployment to start\n"
    );
    world.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_fails_with_the_reason_when_the_deployment_rolls_back() {
    let world = std::sync::Arc::new(World::start().await);
    let (service, _) = world
        .service(
            "web",
            "v1",
            json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s"}),
        )
        .await;
    let waiting = wait_started(
        &world,
        &["shop/web", "--interval", "200ms", "--timeout", "60s"],
    )
    .await;
    let outcome = world
        .engine
        .deploy(
            &service,
            "v2",
            &[],
            Intervention::StopAt(LifecycleStage::ProductionTrafficShift),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    let run = waiting.await.unwrap();
    println!("{}{}", run.stderr, run.stdout);
    assert_ne!(run.code, 0, "{}", run.stdout);
    let line = run.stdout.trim_end();
    assert!(
        line.starts_with("web: deployment ")
            && line.contains(" rolled back (ROLLBACK_")
            && line.ends_with("): deployment stopped with ROLLBACK at PRODUCTION_TRAFFIC_SHIFT"),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
}

/// Runs `skewguard doctor` on `shop/doc` with `extra` arguments: its exit code and JSON report.
async fn doctor(world: &World, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["doctor", "shop/doc", "-o", "json"];
    args.extend_from_slice(extra);
    let run = skewguard(world, &args).await;
    let report = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", run.stdout, run.stderr));
    (run.code, report)
}

/// The report's one finding of `check` that is not ok; panics unless there is exactly one.
fn problem<'a>(report: &'a Value, check: &str) -> &'a Value {
    let found: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == json!(check) && c["result"] != json!("ok"))
        .collect();
    assert_eq!(found.len(), 1, "one problem with {check} in {report:#}");
    found[0]
}

/// Asserts the report fails with exactly one error, of `check`, saying `says` and fixed by
/// `fix`.
fn fails_with(code: i32, report: &Value, check: &str, says: &str, fix: &str) {
    assert_ne!(code, 0, "{report:#}");
    assert_eq!(report["errors"], json!(1), "{report:#}");
    let found = problem(report, check);
    assert_eq!(found["result"], json!("error"), "{report:#}");
    let message = found["message"].as_str().unwrap();
    assert!(message.contains(says), "{check}: {message}");
    let given = found["fix"].as_str().unwrap();
    assert!(given.contains(fix), "{check}: {given}");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_a_good_setup_and_names_each_broken_thing_with_its_fix() {
    use aws_sdk_dynamodb::types::TimeToLiveSpecification;
    use skewguard_core::listener::Request;
    use skewguard_world::engine::{HookRegistration, Strategy};
    use skewguard_world::fixtures::{AlbFixture, header_condition, weighted_forward};

    let world = World::start().await;
    let elb = &world.clients.elbv2;
    // An ALB whose every action forwards: production is the listener's default rule.
    let alb = AlbFixture::with_default_rule_as_production(elb, &world.vpc, "doc")
        .await
        .unwrap();
    let mut hooks = HookRegistration::skewguard(json!({"retention": "hold", "skewWindow": "1h"}));
    for hook in &mut hooks {
        hook.timeout = Duration::from_secs(120 * 60);
    }
    let (service, _) = world
        .service_on(
            "doc",
            alb.clone(),
            Request::get("/"),
            "v1",
            hooks,
            Strategy::BlueGreen,
        )
        .await;

    // A good setup: every check ok, exit 0; the table ends with the verdict.
    let (code, report) = doctor(&world, &[]).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["serviceArn"], json!(service));
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|c| assert_eq!(c["result"], json!("ok"), "{report:#}"))
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for check in [
        "strategy",
        "hooks",
        "hook-details",
        "settings",
        "timeout",
        "deployment-id",
        "listener",
        "listener-actions",
        "pin-room",
        "alb-rules",
        "alb-target-groups",
        "ledger-table",
        "ledger-ttl",
    ] {
        assert!(checks.contains(&check), "{check} missing from {checks:?}");
    }
    let table = skewguard(&world, &["doctor", "shop/doc"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.ends_with("no problems found\n"),
        "{}",
        table.stdout
    );

    // Then one thing broken at a time, and put back.
    let original = world.ecs.with_state(|s| {
        s.services[&service]
            .deployment_configuration
            .clone()
            .unwrap()
    });
    let configure = |change: &dyn Fn(&mut Value)| {
        world.ecs.with_state(|s| {
            let mut configuration = original.clone();
            change(&mut configuration);
            s.service_mut(&service).deployment_configuration = Some(configuration);
        })
    };
    let restore = || {
        world.ecs.with_state(|s| {
            s.service_mut(&service).deployment_configuration = Some(original.clone())
        })
    };
    let hook_at = |c: &mut Value, i: usize| c["lifecycleHooks"][i].clone();
    assert!(
        hook_at(&mut original.clone(), 2)["hookTargetArn"]
            .as_str()
            .unwrap()
            .ends_with(":function:skewguard-post-shift")
    );

    // 1. A rolling deployment has no lifecycle hooks.
    configure(&|c| c["strategy"] = json!("ROLLING"));
    let (code, report) = doctor(&world, &[]).await;
    fails_with(
        code,
        &report,
        "strategy",
        "deploymentConfiguration.strategy is ROLLING",
        "set deploymentConfiguration.strategy to BLUE_GREEN",
    );
    // 2. A stage missing, different hookDetails, invalid settings.
    configure(&|c| {
        c["lifecycleHooks"][0]["lifecycleStages"] = json!(["RECONCILE_SERVICE", "PRE_SCALE_UP"])
    });
    let (code, report) = doctor(&world, &[]).await;
    fails_with(
        code,
        &report,
        "hooks",
        "post-test-traffic (skewguard-post-test-traffic) is not registered at POST_TEST_TRAFFIC_SHIFT",
        "add POST_TEST_TRAFFIC_SHIFT to its lifecycleStages",
    );
    configure(&|c| {
        c["lifecycleHooks"][1]["hookDetails"] = json!({"retention": "hold", "skewWindow": "2h"})
    });
    let (code, report) = doctor(&world, &[]).await;
    fails_with(
        code,
        &report,
        "hook-details",
        "production-shift has other hookDetails than post-test-traffic",
        "give every skewguard hook the same hookDetails",
    );
    configure(&|c| {
        for i in 0..3 {
            c["lifecycleHooks"][i]["hookDetails"] =
                json!({"retention": "hold", "skewWindow": "forever"});
        }
    });
    let (code, report) = doctor(&world, &[]).await;
    assert_ne!(code, 0);
    let settings = problem(&report, "settings");
    assert_eq!(settings["result"], json!("error"));
    assert!(
        settings["message"]
            .as_str()
            .unwrap()
            .contains("invalid setting `skewWindow` = \"forever\""),
        "{settings}"
    );
    // 3. A post-shift timeout shorter than the hold, and CONTINUE on timeout.
    configure(&|c| c["lifecycleHooks"][2]["timeoutConfiguration"]["timeoutInMinutes"] = json!(60));
    let (code, report) = doctor(&world, &[]).await;
    fails_with(
        code,
        &report,
        "timeout",
        "post-shift: timeoutInMinutes 60 cannot hold the skew window",
        "to at least 62",
    );
    configure(&|c| c["lifecycleHooks"][2]["timeoutConfiguration"]["action"] = json!("CONTINUE"));
    let (code, report) = doctor(&world, &[]).await;
    fails_with(
        code,
        &report,
        "timeout",
        "post-shift: timeout action CONTINUE lets ECS go on and scale the old version down",
        "set post-shift's timeoutConfiguration.action to ROLLBACK",
    );
    // 6. The deployment ID is not where deploymentIdFrom says.
    configure(&|c| {
        for i in 0..3 {
            c["lifecycleHooks"][i]["hookDetails"] = json!({"deploymentIdFrom": "label:sha"});
        }
    });
    let (code, report) = doctor(&world, &[]).await;
    fails_with(
        code,
        &report,
        "deployment-id",
        "has no docker label sha",
        "point deploymentIdFrom",
    );
    restore();

    // 4. Another rule right before the production rule leaves no room for pins.
    let last = elb
        .create_rule()
        .listener_arn(&alb.listener_arn)
        .priority(50_000)
        .conditions(header_condition("X-Other", "1"))
        .actions(weighted_forward(&[(&alb.blue_tg, 1)]))
        .send()
        .await
        .unwrap();
    let last = last.rules()[0].rule_arn().unwrap().to_owned();
    let (code, report) = doctor(&world, &[]).await;
    fails_with(
        code,
        &report,
        "pin-room",
        "pins need 3 free priorities (3 live versions × 1 pin rules) between 50000",
        "leave at least 3 free priorities just below the production rule",
    );
    elb.delete_rule().rule_arn(&last).send().await.unwrap();
    // 5. A fixed response on the listener.
    let fixed = elb
        .create_rule()
        .listener_arn(&alb.listener_arn)
        .priority(5)
        .conditions(header_condition("X-Maintenance", "1"))
        .actions(
            aws_sdk_elasticloadbalancingv2::types::Action::builder()
                .r#type(aws_sdk_elasticloadbalancingv2::types::ActionTypeEnum::FixedResponse)
                .fixed_response_config(
                    aws_sdk_elasticloadbalancingv2::types::FixedResponseActionConfig::builder()
                        .status_code("503")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let fixed = fixed.rules()[0].rule_arn().unwrap().to_owned();
    let (code, report) = doctor(&world, &[]).await;
    fails_with(
        code,
        &report,
        "listener-actions",
        "mixes forward with other actions (priority 5: fixed-response 503)",
        "make every action on the production listener a forward",
    );
    elb.delete_rule().rule_arn(&fixed).send().await.unwrap();
    // 7. The load balancer's quotas.
    let (code, report) = doctor(&world, &["--rules-quota", "2"]).await;
    fails_with(
        code,
        &report,
        "alb-rules",
        "with this service's 3 pins that is 3, over the quota of 2 rules per load balancer",
        "remove unused rules",
    );
    let (code, report) = doctor(&world, &["--target-groups-quota", "1"]).await;
    fails_with(
        code,
        &report,
        "alb-target-groups",
        "target groups on the load balancer, over the quota of 1",
        "detach unused target groups",
    );
    // 8. No ledger table; a ledger without TTL is a warning only (exit 0).
    let (code, report) = doctor(&world, &["--table", "nope"]).await;
    fails_with(
        code,
        &report,
        "ledger-table",
        "the ledger table nope does not exist in us-east-1",
        "pass --table (or set SKEWGUARD_TABLE)",
    );
    world
        .clients
        .dynamodb
        .update_time_to_live()
        .table_name(TABLE)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(false)
                .attribute_name("expiresAt")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let (code, report) = doctor(&world, &[]).await;
    assert_eq!(code, 0, "warnings alone exit 0: {report:#}");
    assert_eq!(report["warnings"], json!(1), "{report:#}");
    let ttl = problem(&report, "ledger-ttl");
    assert!(
        ttl["fix"]
            .as_str()
            .unwrap()
            .contains("enable TTL on attribute expiresAt"),
        "{ttl}"
    );
}
