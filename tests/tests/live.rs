//! End-to-end scenarios in the live world: the compiled hook binaries behind a local Lambda
//! Runtime API, real checkout backends, the ALB data plane, and browser tabs calling through it.
//! Every scenario checks the safety invariants after every step and that no tab ever got an
//! answer from another version while its own was promised a pin.

use std::time::Duration;

use serde_json::json;
use skewguard_core::hook::HookFunction;
use skewguard_core::ledger::Status;
use skewguard_core::stages::short_arn;
use skewguard_world::engine::{Intervention, Outcome, ScaleDownAt, Strategy, SupersedeWhen};
use skewguard_world::lambda::{LocalFunction, check_request_ids, workspace_binary};
use skewguard_world::live::{LiveWorld, TabCounters, schema_env};
use skewguard_world::sweep::{SweepQueue, failed_ids, scheduled_event};

const A: &str = "a1b2c3d";
const B: &str = "b2c3d4e";
const C: &str = "c3d4e5f";
const D: &str = "d4e5f6a";

async fn live() -> LiveWorld {
    LiveWorld::start(|_, _| None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn counters_of(live: &LiveWorld, name: &str) -> TabCounters {
    live.traffic
        .counters()
        .into_iter()
        .find(|(tab, _)| tab.name == name)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no tab {name}"))
}

/// No skew, no errors, no invariant violation, and traffic actually flowed.
async fn assert_clean(live: &LiveWorld) {
    live.traffic.stop().await;
    let (requests, skewed, errors) = live.traffic.totals();
    let report: Vec<String> = live
        .traffic
        .counters()
        .iter()
        .map(|(tab, c)| format!("{}: {c:?}", tab.name))
        .collect();
    assert!(requests > 20, "traffic flowed: {report:#?}");
    assert_eq!(skewed, 0, "skewed answers: {report:#?}");
    assert_eq!(errors, 0, "errors: {report:#?}");
    live.world.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread")]
async fn three_deployments_keep_every_tab_on_its_version_until_its_window_ends() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"retention": "hold", "skewWindow": "3s", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    live.open_tab("visitor", &service, None, None);
    assert_eq!(
        live.deploy(&service, B, "v2", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    live.open_tab("B", &service, Some(B), Some("v2"));
    assert_eq!(
        live.deploy(&service, C, "v3", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    live.open_tab("C", &service, Some(C), Some("v3"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_clean(&live).await;

    let a = counters_of(&live, "A");
    assert!(a.own > 0 && a.served_by.get(A) == Some(&a.own), "{a:?}");
    assert!(
        a.fell_back > 0,
        "after A's window the A tab reaches production: {a:?}"
    );
    assert_eq!(
        a.invalid, a.fell_back,
        "v1 cannot read later schemas, so every fallback is visible"
    );
    let b = counters_of(&live, "B");
    assert!(
        b.own > 0 && b.fell_back > 0 && b.invalid == 0,
        "v2 reads v3: {b:?}"
    );
    let c = counters_of(&live, "C");
    assert_eq!(c.own, c.requests, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollbacks_at_every_point_leave_old_tabs_on_their_version() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    live.open_tab("visitor", &service, None, None);

    // A hook answering FAILED at post-test-traffic: an ID skewguard must refuse.
    let outcome = live
        .deploy(&service, "bad*id", "v2", Intervention::None)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("post-test-traffic answered FAILED")),
        "{outcome:?}"
    );

    // An alarm-style stop during the hold.
    let stop = live.world.engine.stop_handle(&service).unwrap();
    let stopper = tokio::spawn({
        let ledger = live.world.ledger().clone();
        let service = service.clone();
        async move {
            loop {
                // moto applies an update's attributes one by one, so a read racing a write can
                // see a half-written item (DynamoDB itself never shows one): just read again.
                let entries = ledger.load(&service).await.unwrap_or_default();
                if entries.iter().any(|e| e.status == Status::Draining) {
                    stop.request();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let outcome = live
        .deploy(&service, B, "v2", Intervention::None)
        .await
        .unwrap();
    stopper.abort();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("held")),
        "{outcome:?}"
    );

    // A stop during bake time, after the hold: A was retired at the end of its window, yet
    // ECS rolls production back to it.
    let outcome = live
        .deploy(&service, C, "v3", Intervention::StopDuringBake)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("bake")),
        "{outcome:?}"
    );
    let entries = live
        .world
        .ledger()
        .load_with_archive(&service)
        .await
        .unwrap();
    let status = |id: &str| {
        entries
            .iter()
            .find(|e| e.deployment_id.as_str() == id)
            .map(|e| e.status)
    };
    assert_eq!(
        status(A),
        Some(Status::Live),
        "A serves production again and is pinned: {entries:?}"
    );
    assert_eq!(status(C), Some(Status::RolledBack));
    assert_eq!(status(B), Some(Status::RolledBack));

    assert_clean(&live).await;
    let a = counters_of(&live, "A");
    assert!(a.own > 0, "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_process_that_crashes_mid_invocation_rolls_back_cleanly() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    // post-test-traffic's revision lookup hangs; the process is killed while it waits.
    live.world
        .ecs
        .delay_next("DescribeServiceRevisions", Duration::from_secs(3));
    let function = live.invoker.function(HookFunction::PostTestTraffic);
    let killer = tokio::spawn({
        let ecs = live.world.ecs.clone();
        async move {
            while ecs.call_count("DescribeServiceRevisions") == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let deploy = live.deploy(&service, B, "v2", Intervention::None);
    tokio::pin!(deploy);
    let outcome = tokio::select! {
        outcome = &mut deploy => outcome,
        _ = killer => {
            let pid = function.last_pid().expect("the hook process runs");
            // SAFETY: signalling a child process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            deploy.await
        }
    }
    .unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("exited")),
        "{outcome:?}"
    );
    assert_eq!(
        function.cold_starts(),
        1,
        "no invocation after the crash yet"
    );

    // ECS invokes the hooks again on the next deployment; a fresh process picks up cleanly.
    assert_eq!(
        live.deploy(&service, C, "v3", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    assert_eq!(function.cold_starts(), 2);
    assert_clean(&live).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_redeploy_of_the_same_id_never_strands_its_tabs() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"retention": "hold", "skewWindow": "1h", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        live.deploy(&service, A, "v1", Intervention::None),
    )
    .await
    .expect("one version: no hold")
    .unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    assert_clean(&live).await;
    let a = counters_of(&live, "A");
    assert_eq!(a.own, a.requests, "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn linear_and_canary_shifts_keep_tabs_pinned_at_every_step() {
    let live = live().await;
    let linear = live
        .service_with(
            "linear",
            A,
            "v1",
            json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s"}),
            Strategy::Linear(34.0),
        )
        .await;
    live.open_tab("A", &linear, Some(A), Some("v1"));
    assert_eq!(
        live.deploy(&linear, B, "v2", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    live.open_tab("B", &linear, Some(B), Some("v2"));
    let steps = live.world.checker.steps.lock().unwrap().clone();
    for weight in ["34%", "68%", "100%"] {
        assert!(
            steps
                .iter()
                .any(|s| s.contains(&format!("PRODUCTION_TRAFFIC_SHIFT {weight}"))),
            "{steps:?}"
        );
    }
    // The same listener, the next deployment as a canary.
    live.world
        .engine
        .set_strategy(&linear, Strategy::Canary(10.0))
        .await
        .unwrap();
    assert_eq!(
        live.deploy(&linear, C, "v3", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    assert_clean(&live).await;
    let b = counters_of(&live, "B");
    assert!(b.own > 0, "{b:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_hook_is_caught_by_the_live_checks() {
    // The check must be able to fail: the same deployment without the post-shift hook retires
    // nothing before clean-up, so the old pin outlives its version.
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s"}),
        )
        .await;
    live.world
        .engine
        .drop_hook(&service, HookFunction::PostShift)
        .await
        .unwrap();
    live.open_tab("A", &service, Some(A), Some("v1"));
    assert_eq!(
        live.deploy(&service, B, "v2", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    live.traffic.stop().await;
    let found = live.world.checker.found();
    assert!(
        found.iter().any(|v| v.contains("invariant 3")),
        "a pin surviving its version's scale-down must be reported: {found:#?}"
    );
}

/// Every line a function logs during an invocation can be found by that invocation's request
/// ID: the three hooks through a whole deployment (the post-shift hook holding, then retiring)
/// and a rejected event each, the reconciler on a scheduled run, a batch of the sweep queue and
/// a rejected event.
#[tokio::test(flavor = "multi_thread")]
async fn every_log_line_of_an_invocation_carries_its_request_id() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s"}),
        )
        .await;
    assert_eq!(
        live.deploy(&service, B, "v2", Intervention::None)
            .await
            .unwrap(),
        Outcome::Succeeded
    );
    let timeout = Duration::from_secs(60);
    let hooks = [
        HookFunction::PostTestTraffic,
        HookFunction::ProductionShift,
        HookFunction::PostShift,
    ];
    for hook in hooks {
        let answer = live
            .invoker
            .function(hook)
            .invoke(json!({"executionDetails": "not a hook event"}), timeout)
            .await
            .unwrap();
        assert_eq!(answer["hookStatus"], "FAILED", "{answer}");
    }

    let queue = SweepQueue::create(&live.world.clients.sqs, 3)
        .await
        .unwrap();
    let mut env = skewguard_world::aws::function_env(&live.world.endpoints);
    env.push((
        "SKEWGUARD_TABLE".into(),
        skewguard_world::world::TABLE.into(),
    ));
    env.push(queue.env());
    let reconciler = LocalFunction::start(
        "reconciler",
        workspace_binary("reconciler", "reconciler").expect("the reconciler is built"),
        env,
    )
    .await
    .unwrap();
    let answer = reconciler.invoke(scheduled_event(), timeout).await.unwrap();
    assert_eq!(answer["notEnqueued"], json!([]), "{answer}");
    let deliveries = queue.drain(&reconciler, 10, timeout).await.unwrap();
    assert!(!deliveries.is_empty());
    assert_eq!(failed_ids(&deliveries), Vec::<String>::new());
    let rejected = reconciler
        .invoke(json!({"source": "nowhere"}), timeout)
        .await;
    assert!(rejected.is_err(), "{rejected:?}");

    let functions = hooks
        .iter()
        .map(|hook| live.invoker.function(*hook))
        .chain([&reconciler]);
    for function in functions {
        // The function's output is read from its pipes asynchronously: give the last lines a
        // moment to arrive.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let checked = loop {
            match check_request_ids(&function.logs()) {
                Ok(checked) => break checked,
                Err(e) if std::time::Instant::now() >= deadline => {
                    panic!("{}: {e}\n{}", function.name(), function.logs().join("\n"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let invocations = function
            .logs()
            .iter()
            .filter(|l| l.starts_with("START "))
            .count();
        assert!(
            invocations >= 2 && checked >= invocations,
            "{}: {checked} lines over {invocations} invocations",
            function.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_started_during_a_hold_never_sends_an_old_tab_to_the_new_version() {
    let live = live().await;
    let service = live
        .service(
            "checkout",
            A,
            "v1",
            json!({"retention": "hold", "skewWindow": "3s", "pollInterval": "1s"}),
        )
        .await;
    live.open_tab("A", &service, Some(A), Some("v1"));
    live.open_tab("visitor", &service, None, None);
    // B's post-shift hook holds A pinned; C starts meanwhile and takes A's target group.
    let outcome = live
        .deploy(
            &service,
            B,
            "v2",
            Intervention::Supersede {
                when: SupersedeWhen::WhileHolding,
                by: C.to_owned(),
                environment: schema_env("v3"),
                scale_down: ScaleDownAt::ReconcileService,
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Succeeded, "C deploys");
    live.open_tab("C", &service, Some(C), Some("v3"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_clean(&live).await;
    let a = counters_of(&live, "A");
    assert!(a.own > 0, "A's tab was served by A while A ran: {a:?}");
    assert!(
        a.fell_back > 0,
        "once A's pin was gone, A's tab reached production: {a:?}"
    );
    let ledger = live
        .world
        .ledger()
        .load_with_archive(&service)
        .await
        .unwrap();
    let a_entry = ledger
        .iter()
        .find(|e| e.deployment_id.as_str() == A)
        .unwrap();
    assert_eq!(a_entry.status, Status::Retired);
    assert_eq!(a_entry.reason.as_deref(), Some("superseded"));
}

/// `demo --keep` as a newcomer runs it: a child process with piped stdin and stdout, whose stdout
/// says how to reach the world it keeps, and whose stdin takes commands.
struct KeptDemo {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl KeptDemo {
    fn start() -> KeptDemo {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_demo"))
            .arg("--keep")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the demo starts");
        let stdin = child.stdin.take().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, stdout) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        tokio::spawn(async move {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer).await {
                let text = String::from_utf8_lossy(&buffer[..n]);
                collected.lock().unwrap().push_str(&text);
            }
        });
        KeptDemo {
            child,
            stdin,
            stdout,
            seen: Vec::new(),
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the demo runs")
    }

    /// Everything the demo printed so far, for failure messages.
    fn transcript(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Reads stdout up to the first line `found` accepts.
    async fn line(&mut self, timeout: Duration, found: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stdout.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if found(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!("the demo's output ended\n{}", self.transcript()),
                Err(_) => panic!("no such line within {timeout:?}\n{}", self.transcript()),
            }
        }
    }

    async fn send(&mut self, command: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("the demo reads its input");
    }

    /// The demo's exit status, once it has exited.
    async fn exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the demo is still running\n{}", self.transcript()),
        }
    }
}

/// Every process under `pid` (children, their children…), as `(pid, command name)`, from `ps`.
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let out = std::process::Command::new("ps")
        .args(["-e", "-o", "pid=,ppid=,comm="])
        .output()
        .expect("ps runs");
    let table: Vec<(u32, u32, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let pid = words.next()?.parse().ok()?;
            let ppid = words.next()?.parse().ok()?;
            Some((pid, ppid, words.collect::<Vec<_>>().join(" ")))
        })
        .collect();
    let mut found = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for (pid, _, name) in table.iter().filter(|(_, ppid, _)| *ppid == parent) {
            found.push((*pid, name.clone()));
            parents.push(*pid);
        }
    }
    found
}

/// Those of `processes` that `ps` still lists (same pid, same command name).
fn still_running(processes: &[(u32, String)]) -> Vec<String> {
    let pids: Vec<String> = processes.iter().map(|(pid, _)| pid.to_string()).collect();
    let out = std::process::Command::new("ps")
        .args(["-o", "pid=,comm=", "-p", &pids.join(",")])
        .output()
        .expect("ps runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| {
            processes.iter().any(|(pid, name)| {
                line.split_whitespace().collect::<Vec<_>>() == [&pid.to_string(), name.as_str()]
            })
        })
        .map(str::to_owned)
        .collect()
}

/// The world's own processes: moto, the three hooks, and at least one checkout backend.
fn assert_world_processes(processes: &[(u32, String)]) {
    for name in [
        "moto_server",
        "post-test-traff",
        "production-shif",
        "post-shift",
        "checkout",
    ] {
        assert!(
            processes.iter().any(|(_, n)| n == name),
            "no {name} among {processes:?}"
        );
    }
}

/// One request through the world's ALB data plane: the answering deployment (its
/// `X-Deployment-ID` response header) and the target group the listener chose.
async fn through_alb(url: &str, pin: Option<&str>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.strip_prefix("http://").expect("an http:// URL");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = pin.map_or(String::new(), |id| format!("X-Deployment-ID: {id}\r\n"));
    let request =
        format!("GET /v2/cart HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{header}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let header = |name: &str| {
        answer
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in {answer}"))
    };
    (
        header("x-deployment-id"),
        header(skewguard_world::data_plane::TARGET_GROUP_HEADER),
    )
}

/// The `skewguard` binary run with exactly the environment the demo printed (nothing inherited
/// but PATH); its stdout, once it succeeded.
async fn skewguard(env: &[(String, String)], args: &[&str]) -> String {
    let binary = workspace_binary("skewguard", "skewguard-cli").expect("the CLI is built");
    let out = tokio::process::Command::new(binary)
        .env_clear()
        .envs(std::env::var("PATH").map(|p| ("PATH".to_owned(), p)))
        .env("HOME", "/nonexistent")
        .envs(env.iter().cloned())
        .args(args)
        .output()
        .await
        .expect("skewguard runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "skewguard {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `skewguard status` as a table: per deployment shown, its cells DEPLOYMENT, STATUS,
/// TARGET GROUP and PINS.
async fn status_rows(env: &[(String, String)]) -> Vec<[String; 4]> {
    let table = skewguard(env, &["status", "shop/checkout"]).await;
    table
        .lines()
        .skip(2)
        .take_while(|line| !line.trim().is_empty() && !line.starts_with("RETAINED"))
        .filter(|line| !line.starts_with('('))
        .filter_map(|line| {
            let cells: Vec<String> = line.split_whitespace().take(4).map(str::to_owned).collect();
            cells.try_into().ok()
        })
        .collect()
}

/// `skewguard explain` for the cart API with (or without) a pin header: the chosen target
/// group's name and the deployment it runs.
async fn explain(env: &[(String, String)], listener: &str, pin: Option<&str>) -> (String, String) {
    let header = pin.map(|id| format!("X-Deployment-ID={id}"));
    let mut args = vec!["explain", "--listener", listener, "--path", "/v2/cart"];
    if let Some(header) = &header {
        args.extend(["--header", header.as_str()]);
    }
    args.extend(["-o", "json"]);
    let explained: serde_json::Value =
        serde_json::from_str(&skewguard(env, &args).await).expect("JSON");
    let chosen: Vec<&serde_json::Value> = explained["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| t["weight"].as_u64() > Some(0))
        .collect();
    assert_eq!(chosen.len(), 1, "{explained}");
    (
        short_arn(
            chosen[0]["targetGroupArn"]
                .as_str()
                .expect("a target group"),
        )
        .to_owned(),
        chosen[0]["deploymentId"]
            .as_str()
            .expect("a deployment")
            .to_owned(),
    )
}

/// `./dev demo --keep`: after the scripted deployments the world stays up; the `export` lines it
/// prints are all the `skewguard` CLI needs to see it, a deployment started on its stdin shows in
/// the CLI (the previous version retained in a service of its own, reached through its pin),
/// `skewguard revoke` retires it, and `quit` stops it with every process it started.
#[tokio::test(flavor = "multi_thread")]
async fn the_kept_demo_world_answers_the_cli_and_quits_with_every_process_it_started() {
    let mut demo = KeptDemo::start();
    demo.line(Duration::from_secs(400), |l| l.starts_with("Here:"))
        .await;
    let mut env = Vec::new();
    for line in &demo.seen {
        if let Some(assignments) = line.strip_prefix("export ") {
            for assignment in assignments.split_whitespace() {
                let (k, v) = assignment.split_once('=').expect("NAME=VALUE");
                env.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    let var = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no export of {name}: {env:?}"))
    };
    let (listener, url) = (var("LISTENER"), var("DEMO_URL"));

    // After A -> B -> C -> D, B revoked and A idle: D is live, C retained in its own service,
    // reached through its pin on its own target group; A and B retired.
    let status = |rows: &[[String; 4]], id: &str| {
        rows.iter()
            .find(|r| r[0] == id)
            .map(|r| r[1].clone())
            .unwrap_or_else(|| panic!("no row for {id}: {rows:?}"))
    };
    let rows = status_rows(&env).await;
    assert_eq!(rows[0][..3], [D, "live", "web-tg2"], "{rows:?}");
    assert_eq!(status(&rows, C), "retained", "{rows:?}");
    assert_eq!(status(&rows, B), "retired", "{rows:?}");
    assert_eq!(status(&rows, A), "retired", "{rows:?}");
    let (copy_tg, served) = explain(&env, &listener, Some(C)).await;
    assert!(
        copy_tg.starts_with("sg-"),
        "C's pin leads to its copy: {copy_tg}"
    );
    assert_eq!(served, C);
    let (served_by, target_group) = through_alb(&url, Some(C)).await;
    assert_eq!(
        (served_by.as_str(), short_arn(&target_group)),
        (C, copy_tg.as_str())
    );
    assert_eq!(through_alb(&url, None).await.0, D);
    assert_eq!(through_alb(&url, Some(B)).await.0, D, "B is revoked");

    // A deployment started on the demo's stdin finishes by itself; D is then retained too.
    const E: &str = "e5f6a7b";
    demo.send(&format!("deploy {E} v3")).await;
    demo.line(Duration::from_secs(60), |l| {
        l == format!("== {E} is production")
    })
    .await;
    let rows = status_rows(&env).await;
    assert_eq!(rows[0][..2], [E, "live"], "{rows:?}");
    assert_eq!(status(&rows, D), "retained", "{rows:?}");
    assert_eq!(status(&rows, C), "retained", "{rows:?}");
    assert_eq!(through_alb(&url, Some(D)).await.0, D);
    assert_eq!(through_alb(&url, Some(C)).await.0, C);
    assert_eq!(through_alb(&url, None).await.0, E);

    // Revoking D from the CLI: its pin, service and target group go; its clients reach E.
    skewguard(&env, &["revoke", "shop/checkout", D]).await;
    let rows = status_rows(&env).await;
    assert_eq!(status(&rows, D), "retired", "{rows:?}");
    assert_eq!(through_alb(&url, Some(D)).await.0, E);
    assert_eq!(through_alb(&url, Some(C)).await.0, C);

    // quit: the demo exits successfully and nothing it started runs on.
    let processes = descendants(demo.pid());
    assert_world_processes(&processes);
    demo.send("quit").await;
    let status = demo.exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}\n{}", demo.transcript());
    assert_eq!(still_running(&processes), Vec::<String>::new());
}

/// Ctrl-C while the kept demo is still deploying: it stops at once, with the exit status of an
/// interrupted command, and leaves none of its processes behind.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_the_kept_demo_with_every_process_it_started() {
    let mut demo = KeptDemo::start();
    // Every hook has run once the first deployment is done (its copy's task runs too).
    demo.line(Duration::from_secs(90), |l| {
        l.contains("is production after")
    })
    .await;
    let processes = descendants(demo.pid());
    assert_world_processes(&processes);
    // SAFETY: kill(2) on the child this test started, which has not been reaped yet.
    unsafe { libc::kill(demo.pid() as libc::pid_t, libc::SIGINT) };
    let status = demo.exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130), "{status}\n{}", demo.transcript());
    assert_eq!(still_running(&processes), Vec::<String>::new());
}
