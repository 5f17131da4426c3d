//! The ledger table's layout, against moto: what the hooks and the sweep read does not grow with
//! history, finished entries move to their archive, the services directory, and items written
//! by earlier releases (history as a list on the entry, final entries under their plain key).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use skewguard_core::DeploymentId;
use skewguard_core::aws::ledger_store::{LedgerStore, attr, key};
use skewguard_core::ledger::{HistoryRecord, LedgerEntry, RunningVersion, ServiceWiring, Status};
use skewguard_core::stages::{Actor, Change, Draft};
use skewguard_world::aws::{Clients, Endpoints};
use skewguard_world::fixtures::create_ledger_table;
use skewguard_world::moto::MotoServer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

const TABLE: &str = "ledger";
const NOWHERE: &str = "http://127.0.0.1:9";

struct Table {
    _moto: MotoServer,
    ddb: aws_sdk_dynamodb::Client,
    store: LedgerStore,
}

async fn table() -> Table {
    let moto = MotoServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let clients = Clients::new(&Endpoints::new(NOWHERE, moto.endpoint())).await;
    create_ledger_table(&clients.dynamodb, TABLE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Table {
        _moto: moto,
        store: LedgerStore::new(clients.dynamodb.clone(), TABLE),
        ddb: clients.dynamodb,
    }
}

fn service(name: &str) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:service/shop/{name}")
}

fn id(raw: &str) -> DeploymentId {
    DeploymentId::parse(raw).unwrap()
}

fn running(raw: &str) -> RunningVersion {
    RunningVersion {
        deployment_id: id(raw),
        service_revision_arn: format!("rev-{raw}"),
        target_group_arn: "tg-blue".into(),
        task_definition_arn: format!("td-{raw}"),
    }
}

fn wiring() -> ServiceWiring {
    ServiceWiring {
        listener_arn: "listener".into(),
        production_rule_arn: "production".into(),
    }
}

fn actor(n: usize) -> Actor {
    Actor {
        stage: "POST_PRODUCTION_TRAFFIC_SHIFT".into(),
        execution_id: format!("exec-{n}"),
        identity: format!("request-{n}"),
        now: datetime!(2026-03-01 0:00 UTC) + time::Duration::seconds(n as i64),
    }
}

/// A live entry with `changes` history records: created, then edited by load, change, commit as
/// a hook would. Returns the entry as stored at the end.
async fn live_entry_with_history(store: &LedgerStore, svc: &str, changes: usize) -> LedgerEntry {
    let now = actor(0).now;
    let mut entry = LedgerEntry::new(svc, &running("v1"), &wiring(), Status::Live, now);
    entry.live_at = Some(now);
    store
        .commit(&[Change {
            expected_version: 0,
            entry,
            history: HistoryRecord {
                at: now,
                stage: "POST_TEST_TRAFFIC_SHIFT".into(),
                execution_id: "exec-0".into(),
                actor: "request-0".into(),
                change: "created".into(),
            },
        }])
        .await
        .unwrap();
    for n in 1..changes {
        let mut draft = Draft::new(svc, store.load(svc).await.unwrap());
        draft.get_mut(&id("v1")).unwrap().rule_arns = vec![format!("rule-{n}")];
        store.commit(&draft.changes(&actor(n))).await.unwrap();
    }
    let entries = store.load(svc).await.unwrap();
    assert_eq!(entries.len(), 1);
    entries[0].clone()
}

/// The hooks' and the sweep's read of a service, as DynamoDB bills it: the Query of the entries
/// in play ([`key::NOT_IN_PLAY`]), with the capacity it consumed and the items it went through.
async fn in_play_read(ddb: &aws_sdk_dynamodb::Client, svc: &str) -> (i32, f64, usize) {
    let out = ddb
        .query()
        .table_name(TABLE)
        .consistent_read(true)
        .key_condition_expression("#pk = :pk AND #sk < :kinds")
        .expression_attribute_names("#pk", attr::SERVICE_ARN)
        .expression_attribute_names("#sk", attr::DEPLOYMENT_ID)
        .expression_attribute_values(":pk", AttributeValue::S(svc.into()))
        .expression_attribute_values(":kinds", AttributeValue::S(key::NOT_IN_PLAY.into()))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .unwrap();
    let units = out
        .consumed_capacity()
        .and_then(|c| c.capacity_units())
        .unwrap_or(-1.0);
    let bytes = out
        .items()
        .iter()
        .map(|i| format!("{i:?}").len())
        .sum::<usize>();
    (out.scanned_count(), units, bytes)
}

async fn raw_item(
    ddb: &aws_sdk_dynamodb::Client,
    svc: &str,
    sort_key: &str,
) -> Option<HashMap<String, AttributeValue>> {
    ddb.get_item()
        .table_name(TABLE)
        .key(attr::SERVICE_ARN, AttributeValue::S(svc.into()))
        .key(attr::DEPLOYMENT_ID, AttributeValue::S(sort_key.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item()
        .cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_hooks_read_is_the_same_at_5_and_at_50_history_records() {
    let t = table().await;
    let (short, long) = (service("short"), service("long"));
    let a = live_entry_with_history(&t.store, &short, 5).await;
    let b = live_entry_with_history(&t.store, &long, 50).await;
    assert_eq!(t.store.history(&short, &id("v1")).await.unwrap().len(), 5);
    let history = t.store.history(&long, &id("v1")).await.unwrap();
    assert_eq!(history.len(), 50, "every record is kept");
    assert!(
        history.windows(2).all(|w| w[0].at <= w[1].at),
        "oldest first"
    );
    assert_eq!(history[49].execution_id, "exec-49");

    // The entries the hooks load are the same size whatever their history...
    assert_eq!(a.rule_arns, ["rule-4"]);
    assert_eq!(b.rule_arns, ["rule-49"]);
    assert!(
        !raw_item(&t.ddb, &long, "v1")
            .await
            .unwrap()
            .contains_key(attr::HISTORY),
        "no history on the entry"
    );
    // ...and the Query they make goes through the entry only, for the same capacity.
    let (scanned_short, units_short, bytes_short) = in_play_read(&t.ddb, &short).await;
    let (scanned_long, units_long, bytes_long) = in_play_read(&t.ddb, &long).await;
    assert_eq!((scanned_short, scanned_long), (1, 1));
    assert!(units_short > 0.0, "moto reports the capacity consumed");
    assert_eq!(units_short, units_long);
    assert!(
        bytes_long.abs_diff(bytes_short) < 16,
        "{bytes_short} vs {bytes_long} bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_entry_moves_to_its_archive_in_the_same_write() {
    let t = table().await;
    let svc = service("web");
    live_entry_with_history(&t.store, &svc, 3).await;
    let mut draft = Draft::new(&svc, t.store.load(&svc).await.unwrap());
    let now = datetime!(2026-03-02 0:00 UTC);
    draft.get_mut(&id("v1")).unwrap().rule_arns.clear();
    draft
        .get_mut(&id("v1"))
        .unwrap()
        .finish(Status::Retired, now);
    let changes = draft.changes(&Actor { now, ..actor(9) });
    t.store.commit(&changes).await.unwrap();

    assert!(t.store.load(&svc).await.unwrap().is_empty(), "not in play");
    assert!(raw_item(&t.ddb, &svc, "v1").await.is_none());
    let archived = t.store.archived(&svc, &id("v1")).await.unwrap().unwrap();
    assert_eq!(archived.status, Status::Retired);
    assert_eq!(archived.retired_at, Some(now));
    assert_eq!(archived.version, 4);
    let item = raw_item(&t.ddb, &svc, "~archive#v1").await.unwrap();
    assert_eq!(
        item[attr::EXPIRES_AT],
        AttributeValue::N(
            (now + time::Duration::days(30))
                .unix_timestamp()
                .to_string()
        ),
        "kept 30 days"
    );
    assert_eq!(t.store.history(&svc, &id("v1")).await.unwrap().len(), 4);
    assert_eq!(
        t.store.load_with_archive(&svc).await.unwrap(),
        vec![archived.clone()]
    );

    // The ID deployed again: a new entry in play, which wins over the archive.
    let later = datetime!(2026-03-03 0:00 UTC);
    let fresh = LedgerEntry::new(&svc, &running("v1"), &wiring(), Status::Testing, later);
    t.store
        .commit(&[Change {
            expected_version: 0,
            entry: fresh,
            history: HistoryRecord {
                at: later,
                stage: "POST_TEST_TRAFFIC_SHIFT".into(),
                execution_id: "exec-again".into(),
                actor: String::new(),
                change: "created".into(),
            },
        }])
        .await
        .unwrap();
    let both = t.store.load_with_archive(&svc).await.unwrap();
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].status, Status::Testing);
    assert_eq!(t.store.history(&svc, &id("v1")).await.unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_services_directory_is_built_once_from_an_old_table_then_read_without_a_scan() {
    let t = table().await;
    // A table of an earlier release: entries only.
    for name in ["a", "b"] {
        t.ddb
            .put_item()
            .table_name(TABLE)
            .set_item(Some(old_item(&service(name), "v1", Status::Live, 2)))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        t.store.services().await.unwrap(),
        [service("a"), service("b")]
    );
    assert!(
        raw_item(&t.ddb, key::SERVICES, key::LAYOUT_MARKER)
            .await
            .is_some()
    );
    // An item nobody registered (written around skewguard) is not seen: the directory is read,
    // not the table.
    t.ddb
        .put_item()
        .table_name(TABLE)
        .set_item(Some(old_item(&service("stray"), "v1", Status::Live, 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        t.store.services().await.unwrap(),
        [service("a"), service("b")]
    );
    // A service's first entry registers it, in the same write.
    live_entry_with_history(&t.store, &service("c"), 1).await;
    assert_eq!(
        t.store.services().await.unwrap(),
        [service("a"), service("b"), service("c")]
    );
}

/// An entry item as an earlier release wrote it: its history as a `history` list.
fn old_item(
    svc: &str,
    raw_id: &str,
    status: Status,
    records: usize,
) -> HashMap<String, AttributeValue> {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let at = |n: usize| {
        (datetime!(2026-01-01 0:00 UTC) + time::Duration::minutes(n as i64))
            .format(&Rfc3339)
            .unwrap()
    };
    let mut item = HashMap::from([
        (attr::SERVICE_ARN.to_owned(), s(svc)),
        (attr::DEPLOYMENT_ID.to_owned(), s(raw_id)),
        (attr::STATUS.to_owned(), s(status.as_str())),
        (attr::TARGET_GROUP_ARN.to_owned(), s("tg-blue")),
        (
            attr::SERVICE_REVISION_ARN.to_owned(),
            s(&format!("rev-{raw_id}")),
        ),
        (attr::LISTENER_ARN.to_owned(), s("listener")),
        (attr::PRODUCTION_RULE_ARN.to_owned(), s("production")),
        (attr::RULE_ARNS.to_owned(), AttributeValue::L(vec![])),
        (attr::CREATED_AT.to_owned(), s(&at(0))),
        (attr::UPDATED_AT.to_owned(), s(&at(records))),
        (
            attr::VERSION.to_owned(),
            AttributeValue::N(records.to_string()),
        ),
        (
            attr::HISTORY.to_owned(),
            AttributeValue::L(
                (0..records)
                    .map(|n| {
                        AttributeValue::M(HashMap::from([
                            ("at".to_owned(), s(&at(n))),
                            ("stage".to_owned(), s("POST_TEST_TRAFFIC_SHIFT")),
                            ("executionId".to_owned(), s(&format!("old-{n}"))),
                            ("change".to_owned(), s(&format!("change {n}"))),
                        ]))
                    })
                    .collect(),
            ),
        ),
    ]);
    if status.is_final() {
        item.insert(attr::RETIRED_AT.to_owned(), s(&at(records)));
        item.insert(
            attr::EXPIRES_AT.to_owned(),
            AttributeValue::N(
                (datetime!(2026-01-31 0:00 UTC))
                    .unix_timestamp()
                    .to_string(),
            ),
        );
    }
    item
}

#[tokio::test(flavor = "multi_thread")]
async fn items_of_an_earlier_release_are_read_then_moved_to_the_layout_on_first_load() {
    let t = table().await;
    let svc = service("web");
    for item in [
        old_item(&svc, "v1", Status::Retired, 120),
        old_item(&svc, "v2", Status::Live, 3),
    ] {
        t.ddb
            .put_item()
            .table_name(TABLE)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }
    // Before any load, the CLI reads the history from the list.
    let before = t.store.history(&svc, &id("v2")).await.unwrap();
    assert_eq!(
        before
            .iter()
            .map(|h| h.execution_id.as_str())
            .collect::<Vec<_>>(),
        ["old-0", "old-1", "old-2"]
    );

    // The first load moves both: the live one keeps its key and version, without the list...
    let loaded = t.store.load(&svc).await.unwrap();
    assert_eq!(loaded.len(), 1, "the retired entry is archived: {loaded:?}");
    assert_eq!(loaded[0].deployment_id, id("v2"));
    assert_eq!(loaded[0].version, 3);
    let v2 = raw_item(&t.ddb, &svc, "v2").await.unwrap();
    assert!(!v2.contains_key(attr::HISTORY));
    assert_eq!(t.store.history(&svc, &id("v2")).await.unwrap(), before);
    // ...the retired one (more records than one transaction takes) is archived, all kept.
    assert!(raw_item(&t.ddb, &svc, "v1").await.is_none());
    let archived = t.store.archived(&svc, &id("v1")).await.unwrap().unwrap();
    assert_eq!(archived.status, Status::Retired);
    assert_eq!(archived.version, 120);
    let history = t.store.history(&svc, &id("v1")).await.unwrap();
    assert_eq!(history.len(), 120);
    assert_eq!(history[0].execution_id, "old-0");
    assert_eq!(history[119].execution_id, "old-119");
    assert_eq!(t.store.services().await.unwrap(), [svc.as_str()]);

    // A hook's write on what it loaded (read before the move) still lands.
    let mut draft = Draft::new(&svc, loaded);
    draft.get_mut(&id("v2")).unwrap().rule_arns = vec!["rule-1".into()];
    t.store.commit(&draft.changes(&actor(1))).await.unwrap();
    assert_eq!(t.store.load(&svc).await.unwrap()[0].version, 4);
    assert_eq!(t.store.history(&svc, &id("v2")).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_never_drops_the_history_list_of_an_item_not_moved_yet() {
    let t = table().await;
    let svc = service("web");
    // Read as an earlier release wrote it (a load that could not move it, say)...
    t.ddb
        .put_item()
        .table_name(TABLE)
        .set_item(Some(old_item(&svc, "v1", Status::Draining, 2)))
        .send()
        .await
        .unwrap();
    let stale = vec![LedgerEntry {
        version: 2,
        ..LedgerEntry::new(
            &svc,
            &running("v1"),
            &wiring(),
            Status::Draining,
            OffsetDateTime::UNIX_EPOCH,
        )
    }];
    // ...ending it conflicts instead of archiving without its list.
    let mut draft = Draft::new(&svc, stale);
    draft
        .get_mut(&id("v1"))
        .unwrap()
        .finish(Status::Retired, actor(1).now);
    let err = t.store.commit(&draft.changes(&actor(1))).await.unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert!(
        raw_item(&t.ddb, &svc, "v1")
            .await
            .unwrap()
            .contains_key(attr::HISTORY)
    );
    assert_eq!(t.store.history(&svc, &id("v1")).await.unwrap().len(), 2);
}

/// The world's moto reads a Query's partition alone (tests/moto-site/sitecustomize.py): the
/// answers are exactly moto's own — every item of the partition and none of another, in key
/// order either way, page by page.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_reads_its_partition_alone_in_order_and_by_pages() {
    let t = table().await;
    assert!(
        t._moto
            .log_tail()
            .contains("DynamoDB Query reads its partition alone"),
        "the world's moto runs without its Query narrowing:\n{}",
        t._moto.log_tail()
    );
    let keys =
        |svc: &str, n: usize| -> Vec<String> { (0..n).map(|i| format!("{svc}#{i:03}")).collect() };
    for (svc, n) in [("a", 7), ("b", 23), ("c", 1)] {
        for sort_key in keys(svc, n) {
            t.ddb
                .put_item()
                .table_name(TABLE)
                .item(attr::SERVICE_ARN, AttributeValue::S(svc.to_owned()))
                .item(attr::DEPLOYMENT_ID, AttributeValue::S(sort_key))
                .send()
                .await
                .unwrap();
        }
    }
    for (svc, n) in [("a", 7), ("b", 23), ("c", 1), ("d", 0)] {
        for forward in [true, false] {
            let mut read: Vec<String> = Vec::new();
            let mut start = None;
            loop {
                let page = t
                    .ddb
                    .query()
                    .table_name(TABLE)
                    .key_condition_expression("#pk = :pk")
                    .expression_attribute_names("#pk", attr::SERVICE_ARN)
                    .expression_attribute_values(":pk", AttributeValue::S(svc.to_owned()))
                    .scan_index_forward(forward)
                    .limit(5)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .unwrap();
                read.extend(
                    page.items()
                        .iter()
                        .map(|item| item[attr::DEPLOYMENT_ID].as_s().unwrap().clone()),
                );
                start = page.last_evaluated_key().cloned();
                if start.is_none() {
                    break;
                }
            }
            let mut expected = keys(svc, n);
            if !forward {
                expected.reverse();
            }
            assert_eq!(read, expected, "partition {svc}, forward {forward}");
        }
    }
}
