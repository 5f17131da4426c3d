//! The scheduled sweep fanned out over the sweep queue, with the real reconciler binary confined
//! to its role of infra/template.yaml: a `Scheduled Event` puts one message per service in the
//! ledger on the queue; the event source mapping (its local stand-in) delivers them in batches;
//! every service is reconciled, and the one service that fails is the only batch item failure,
//! left on the queue and retried alone. A duplicate message reconciles a service twice
//! harmlessly.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use skewguard_core::aws::sweep_queue::message_body;
use skewguard_core::ledger::LedgerEntry;
use skewguard_core::listener::Request;
use skewguard_world::engine::{HookRegistration, Intervention, Outcome, Strategy};
use skewguard_world::fixtures::AlbFixture;
use skewguard_world::iam::AuthorisingProxy;
use skewguard_world::lambda::{LocalFunction, workspace_binary};
use skewguard_world::sweep::{Delivery, SweepQueue, failed_ids, scheduled_event};
use skewguard_world::world::{TABLE, World};

/// The reconciler's timeout in infra/template.yaml (a batch starts a service after its first
/// only with `SERVICE_BUDGET` left).
const TIMEOUT: Duration = Duration::from_secs(300);

fn quick() -> Value {
    json!({"retention": "hold", "skewWindow": "2s", "pollInterval": "1s"})
}

fn versions(entries: &[LedgerEntry]) -> Vec<(String, u64, Vec<String>)> {
    entries
        .iter()
        .map(|e| {
            (
                e.deployment_id.as_str().to_owned(),
                e.version,
                e.rule_arns.clone(),
            )
        })
        .collect()
}

/// The services named by a delivery's messages.
fn services_of(delivery: &Delivery) -> Vec<String> {
    delivery
        .messages
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<Value>(body).unwrap()["serviceArn"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Copies a service's ledger items under another service ARN: a service the ledger knows and
/// ECS does not (deleted meanwhile), whose reconciliation fails.
async fn ledger_copy(world: &World, from: &str, to: &str) {
    let items = world
        .clients
        .dynamodb
        .query()
        .table_name(TABLE)
        .key_condition_expression("serviceArn = :s")
        .expression_attribute_values(":s", AttributeValue::S(from.to_owned()))
        .send()
        .await
        .unwrap();
    assert!(!items.items().is_empty());
    for item in items.items() {
        let mut item = item.clone();
        item.insert("serviceArn".into(), AttributeValue::S(to.to_owned()));
        world
            .clients
            .dynamodb
            .put_item()
            .table_name(TABLE)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_sweep_reconciles_every_service_through_the_queue_and_retries_only_the_failure()
{
    let world = World::start().await;
    let (web, _) = world.service("web", "v1", quick()).await;
    // A second service with its own production rule on the same listener.
    let admin_alb = AlbFixture::with_path_rule_as_production(
        &world.clients.elbv2,
        &world.vpc,
        "admin",
        Some(&world.alb.listener_arn),
        200,
        "/admin/*",
    )
    .await
    .unwrap();
    let (admin, _) = world
        .service_on(
            "admin",
            admin_alb,
            Request::get("/admin/users"),
            "v1",
            HookRegistration::skewguard(quick()),
            Strategy::BlueGreen,
        )
        .await;
    let engine = &world.engine;
    let (a, b) = tokio::join!(
        engine.deploy(&web, "v2", &[], Intervention::None),
        engine.deploy(&admin, "v2", &[], Intervention::None),
    );
    assert_eq!(a.unwrap(), Outcome::Succeeded);
    assert_eq!(b.unwrap(), Outcome::Succeeded);
    let services = vec![web.clone(), admin.clone()];
    // Drift the sweep must repair: web's live pin deleted by hand.
    let before = world.ledger().load(&web).await.unwrap();
    let live = before
        .iter()
        .find(|e| e.deployment_id.as_str() == "v2")
        .unwrap();
    world.elb().delete_rule(&live.rule_arns[0]).await.unwrap();
    // A service the ledger knows and ECS no longer does.
    let gone = web.replace("/web", "/gone");
    ledger_copy(&world, &web, &gone).await;

    let queue = SweepQueue::create(&world.clients.sqs, 3).await.unwrap();
    let role = AuthorisingProxy::world("reconciler", &world.endpoints, &world.endpoints)
        .await
        .unwrap();
    let mut env = skewguard_world::aws::function_env(&role.endpoints());
    env.push(("SKEWGUARD_TABLE".into(), TABLE.into()));
    env.push(queue.env());
    let function = LocalFunction::start(
        "reconciler",
        workspace_binary("reconciler", "reconciler").expect("the reconciler is built"),
        env,
    )
    .await
    .unwrap();

    // The schedule: one message per service, nothing reconciled yet.
    let answer = function.invoke(scheduled_event(), TIMEOUT).await.unwrap();
    assert_eq!(answer, json!({"enqueued": 3, "notEnqueued": []}));
    assert_eq!(queue.depth().await.unwrap(), (3, 0));
    let still_drifted = world.ledger().load(&web).await.unwrap();
    assert!(
        world
            .elb()
            .describe_listener_rules(&world.alb.listener_arn)
            .await
            .unwrap()
            .iter()
            .all(|r| !still_drifted
                .iter()
                .any(|e| e.rule_arns.contains(&r.arn) && e.deployment_id.as_str() == "v2")),
        "enqueueing repairs nothing by itself"
    );

    // The event source mapping: batches of two.
    let deliveries = queue.drain(&function, 2, TIMEOUT).await.unwrap();
    let sizes: Vec<usize> = deliveries.iter().map(|d| d.messages.len()).collect();
    assert_eq!(sizes, [2, 1], "{deliveries:?}");
    let mut delivered: Vec<String> = deliveries.iter().flat_map(services_of).collect();
    delivered.sort();
    let mut expected = services.clone();
    expected.push(gone.clone());
    expected.sort();
    assert_eq!(delivered, expected, "every service's message, once");
    for delivery in &deliveries {
        assert!(delivery.answer.is_ok(), "{delivery:?}");
    }
    // Only the failing service's message is a batch item failure, and it stays queued.
    let failed = failed_ids(&deliveries);
    assert_eq!(failed.len(), 1, "{deliveries:?}");
    let failed_batch = deliveries
        .iter()
        .find(|d| d.failed == failed)
        .expect("the failed message's batch");
    let gone_message = failed_batch
        .messages
        .iter()
        .find(|(id, _)| *id == failed[0])
        .unwrap();
    assert_eq!(gone_message.1, message_body(&gone));
    assert_eq!(
        failed_batch.answer.as_ref().unwrap(),
        &json!({"batchItemFailures": [{"itemIdentifier": failed[0]}]})
    );
    assert_eq!(
        queue.depth().await.unwrap(),
        (0, 1),
        "in flight, not deleted"
    );

    // Every other service was reconciled: web's pin is back, and the world holds every
    // invariant.
    let after = world.ledger().load(&web).await.unwrap();
    let restored = &after
        .iter()
        .find(|e| e.deployment_id.as_str() == "v2")
        .unwrap()
        .rule_arns;
    assert_eq!(restored.len(), 1, "{after:?}");
    let rules = world
        .elb()
        .describe_listener_rules(&world.alb.listener_arn)
        .await
        .unwrap();
    assert!(rules.iter().any(|r| r.arn == restored[0]));
    world.check("after the sweep").await;
    world.assert_no_violations();
    let logs = function.logs();
    assert!(
        logs.iter().any(|l| l.contains("reconciling failed")
            && l.contains("shop/gone")
            && l.contains("AwsNotFound")),
        "{}",
        logs.join("\n")
    );
    assert_eq!(role.denials(), [], "the role allows all the sweep does");

    // Retried alone once its visibility timeout runs out: a batch of that message only, failing
    // again.
    queue
        .make_visible(&failed_batch.failed_receipts[0])
        .await
        .unwrap();
    let retried = queue.drain(&function, 10, TIMEOUT).await.unwrap();
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(services_of(&retried[0]), std::slice::from_ref(&gone));
    assert_eq!(retried[0].failed, failed);

    // A duplicate message (the same service twice, in one batch): reconciled twice, harmlessly.
    let web_before = versions(&world.ledger().load(&web).await.unwrap());
    let rules_before: Vec<String> = rules.iter().map(|r| r.arn.clone()).collect();
    for _ in 0..2 {
        queue
            .client
            .send_message()
            .queue_url(&queue.url)
            .message_body(message_body(&web))
            .send()
            .await
            .unwrap();
    }
    let duplicates = queue.drain(&function, 10, TIMEOUT).await.unwrap();
    assert_eq!(duplicates.len(), 1);
    assert_eq!(services_of(&duplicates[0]), [web.clone(), web.clone()]);
    assert_eq!(
        duplicates[0].answer.as_ref().unwrap(),
        &json!({"batchItemFailures": []})
    );
    assert_eq!(
        versions(&world.ledger().load(&web).await.unwrap()),
        web_before,
        "no ledger write"
    );
    let rules_after: Vec<String> = world
        .elb()
        .describe_listener_rules(&world.alb.listener_arn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.arn.clone())
        .collect();
    assert_eq!(rules_after, rules_before, "no listener change");
    world.check("after the duplicates").await;
    world.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread")]
async fn environments_consuming_the_queue_at_once_sweep_each_service_once_and_retry_a_failure_until_it_is_dead_lettered()
 {
    let world = World::start().await;
    let (web, _) = world.service("web", "v1", quick()).await;
    let deployed = world
        .engine
        .deploy(&web, "v2", &[], Intervention::None)
        .await;
    assert_eq!(deployed.unwrap(), Outcome::Succeeded);
    // A service the ledger knows and ECS no longer does: its reconciliation fails every time.
    let gone = web.replace("/web", "/gone");
    ledger_copy(&world, &web, &gone).await;
    let queue = SweepQueue::create(&world.clients.sqs, 2).await.unwrap();
    let mut env = skewguard_world::aws::function_env(&world.endpoints);
    env.push(("SKEWGUARD_TABLE".into(), TABLE.into()));
    env.push(queue.env());
    let binary = workspace_binary("reconciler", "reconciler").expect("the reconciler is built");
    let mut environments = Vec::new();
    for _ in 0..2 {
        let function = LocalFunction::start("reconciler", binary.clone(), env.clone())
            .await
            .unwrap();
        environments.push(std::sync::Arc::new(function));
    }
    let answer = environments[0]
        .invoke(scheduled_event(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(answer, json!({"enqueued": 2, "notEnqueued": []}));

    // One message per batch, visible again 1 s after a failure; the queue's redrive moves a
    // message received twice to the dead-letter queue.
    let deliveries = queue
        .consume(&environments, 1, TIMEOUT, Duration::from_secs(1))
        .await
        .unwrap();
    let succeeded: Vec<String> = deliveries
        .iter()
        .filter(|d| d.failed.is_empty())
        .flat_map(services_of)
        .collect();
    assert_eq!(succeeded, std::slice::from_ref(&web), "{deliveries:?}");
    let failed: Vec<String> = deliveries
        .iter()
        .filter(|d| !d.failed.is_empty())
        .flat_map(services_of)
        .collect();
    assert_eq!(failed, [gone.clone(), gone.clone()], "{deliveries:?}");
    assert_eq!(queue.depth().await.unwrap(), (0, 0));
    let dead = queue
        .client
        .receive_message()
        .queue_url(&queue.dead_letters_url)
        .send()
        .await
        .unwrap();
    let dead: Vec<&str> = dead.messages().iter().filter_map(|m| m.body()).collect();
    assert_eq!(dead, [message_body(&gone).as_str()]);
    world.check("after the sweep").await;
    world.assert_no_violations();
}

/// The world's moto computes a queue's attributes once per call (tests/moto-site): the counts
/// `GetQueueAttributes` answers, and what a receive takes, stay moto's own.
#[tokio::test(flavor = "multi_thread")]
async fn the_queue_counts_what_was_sent_and_received() {
    use skewguard_world::aws::{Clients, Endpoints};
    use skewguard_world::moto::MotoServer;
    let moto = MotoServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        moto.log_tail().contains(
            "SQS computes a queue's attributes once per call and receives one call at a time"
        ),
        "the world's moto runs without its SQS narrowing:\n{}",
        moto.log_tail()
    );
    let clients = Clients::new(&Endpoints::new("http://127.0.0.1:9", moto.endpoint())).await;
    let queue = SweepQueue::create(&clients.sqs, 3).await.unwrap();
    let (_, url) = queue.env();
    for batch in 0..3 {
        let entries: Vec<_> = (0..10)
            .map(|n| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{n}"))
                    .message_body(format!("{{\"n\": {}}}", batch * 10 + n))
                    .build()
                    .unwrap()
            })
            .collect();
        let sent = clients
            .sqs
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.successful().len(), 10);
    }
    assert_eq!(queue.depth().await.unwrap(), (30, 0));
    let received = queue.receive(10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(received.len(), 10);
    assert_eq!(queue.depth().await.unwrap(), (20, 10));
}
