//! Snapshot-style tests of the tables and JSON, over fixed data and a fixed clock.

use std::collections::BTreeMap;

use super::explain::explanation;
use super::status::row_of;
use super::*;
use crate::render::plain;
use skewguard_core::DeploymentId;
use skewguard_core::aws::ledger_store::LedgerStore;
use skewguard_core::ledger::{HistoryRecord, LedgerEntry, RunningVersion, ServiceWiring};
use skewguard_core::listener::{
    Condition, ListenerRule, Priority, Request, RuleAction, WeightedTarget, route,
};
use skewguard_core::pins::PinTags;
use skewguard_core::reconcile::{Repair, RepairKind, SettingsSource};
use skewguard_core::reconciler::ServiceReport;
use time::macros::datetime;

const SVC: &str = "arn:aws:ecs:us-east-1:123456789012:service/shop/web";
const TG1: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg1/0a1";
const TG2: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg2/0b2";
const LISTENER: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/web/1/2";
const PROD: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/prod";
const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

fn rule_arn(name: &str) -> String {
    format!("arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/{name}")
}

fn entry(id: &str, tg: &str, status: Status) -> LedgerEntry {
    let running = RunningVersion {
        deployment_id: DeploymentId::parse(id).unwrap(),
        service_revision_arn: format!(
            "arn:aws:ecs:us-east-1:123456789012:service-revision/shop/web/{id}"
        ),
        target_group_arn: tg.to_owned(),
        task_definition_arn: "td".into(),
    };
    let wiring = ServiceWiring {
        listener_arn: LISTENER.into(),
        production_rule_arn: PROD.into(),
    };
    LedgerEntry::new(
        SVC,
        &running,
        &wiring,
        status,
        NOW - time::Duration::hours(2),
    )
}

fn history(minutes_ago: i64, stage: &str, change: &str) -> HistoryRecord {
    HistoryRecord {
        at: NOW - time::Duration::minutes(minutes_ago),
        stage: stage.into(),
        execution_id: "0000000a-exec".into(),
        actor: "0000000b-request".into(),
        change: change.into(),
    }
}

fn the_status() -> ServiceStatus {
    let mut live = entry("v2", TG2, Status::Live);
    live.live_at = Some(NOW - time::Duration::minutes(5));
    live.rule_arns = vec![rule_arn("pin-v2")];
    live.updated_at = NOW - time::Duration::minutes(5);
    let mut draining = entry("v1", TG1, Status::Draining);
    draining.live_at = Some(NOW - time::Duration::hours(2));
    draining.drain_until = Some(NOW + time::Duration::minutes(55));
    draining.rule_arns = vec![rule_arn("pin-v1"), rule_arn("gone")];
    let priorities = BTreeMap::from([
        (rule_arn("pin-v2"), Priority::Number(98)),
        (rule_arn("pin-v1"), Priority::Number(99)),
    ]);
    ServiceStatus {
        service_arn: SVC.into(),
        listener_arn: Some(LISTENER.into()),
        deployments: vec![
            row_of(
                &live,
                &priorities,
                Some(&history(
                    5,
                    "POST_PRODUCTION_TRAFFIC_SHIFT",
                    "status testing -> live",
                )),
                NOW,
            ),
            row_of(
                &draining,
                &priorities,
                Some(&history(
                    5,
                    "POST_PRODUCTION_TRAFFIC_SHIFT",
                    "status live -> draining; drainUntil 2026-03-01T12:55:00Z",
                )),
                NOW,
            ),
        ],
        hidden: 2,
        notes: vec![],
        prices: None,
        now: NOW,
    }
}

#[test]
fn status_table() {
    let out = plain(&Rendered::Status(vec![the_status()]).table());
    println!("{out}");
    assert_eq!(
        out,
        "web  arn:aws:ecs:us-east-1:123456789012:service/shop/web\nDEPLOYMENT  STATUS    TARGET GROUP  PINS        LIVE SINCE            DRAIN UNTIL                         LAST CHANGE\nv2          live      web-tg2       98          2026-03-01 11:55:00Z  -                                   5m 0s ago POST_PRODUCTION_TRAFFIC_SHIFT: status testing -> live\nv1          draining  web-tg1       99,missing  2026-03-01 10:00:00Z  2026-03-01 12:55:00Z (55m 0s left)  5m 0s ago POST_PRODUCTION_TRAFFIC_SHIFT: status live -> draining; drain…\n(2 older retired or rolled-back deployments not shown; --all lists them)\n"
    );
}

#[test]
fn status_shows_a_swallowed_error_and_why_a_version_was_unpinned() {
    let mut status = the_status();
    let mut failed = entry("v3", TG1, Status::Testing);
    failed.last_error = Some(
        "post-test-traffic failed and continued (onError: continue): NoFreePriority: no free priority"
            .into(),
    );
    let mut superseded = entry("v0", TG1, Status::Retired);
    superseded.reason = Some("superseded".into());
    let none = BTreeMap::new();
    status.deployments.push(row_of(&failed, &none, None, NOW));
    status
        .deployments
        .push(row_of(&superseded, &none, None, NOW));
    let out = plain(&Rendered::Status(vec![status.clone()]).table());
    assert!(out.contains("retired (superseded)"), "{out}");
    assert!(
        out.contains(
            "error: v3: post-test-traffic failed and continued (onError: continue): NoFreePriority"
        ),
        "{out}"
    );
    let json = Rendered::Status(vec![status]).json();
    assert!(
        json.contains("\"lastError\": \"post-test-traffic failed"),
        "{json}"
    );
    assert!(json.contains("\"reason\": \"superseded\""), "{json}");
}

#[test]
fn status_json() {
    let out = Rendered::Status(vec![the_status()]).json();
    println!("{out}");
    assert_eq!(
        out,
        "{\n  \"services\": [\n    {\n      \"deployments\": [\n        {\n          \"deploymentId\": \"v2\",\n          \"drainUntil\": null,\n          \"lastChange\": {\n            \"actor\": \"0000000b-request\",\n            \"at\": \"2026-03-01T11:55:00Z\",\n            \"change\": \"status testing -> live\",\n            \"executionId\": \"0000000a-exec\",\n            \"stage\": \"POST_PRODUCTION_TRAFFIC_SHIFT\"\n          },\n          \"liveAt\": \"2026-03-01T11:55:00Z\",\n          \"pins\": [\n            {\n              \"priority\": \"98\",\n              \"ruleArn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/pin-v2\"\n            }\n          ],\n          \"secondsLeft\": null,\n          \"serviceRevisionArn\": \"arn:aws:ecs:us-east-1:123456789012:service-revision/shop/web/v2\",\n          \"status\": \"live\",\n          \"targetGroupArn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg2/0b2\",\n          \"updatedAt\": \"2026-03-01T11:55:00Z\"\n        },\n        {\n          \"deploymentId\": \"v1\",\n          \"drainUntil\": \"2026-03-01T12:55:00Z\",\n          \"lastChange\": {\n            \"actor\": \"0000000b-request\",\n            \"at\": \"2026-03-01T11:55:00Z\",\n            \"change\": \"status live -> draining; drainUntil 2026-03-01T12:55:00Z\",\n            \"executionId\": \"0000000a-exec\",\n            \"stage\": \"POST_PRODUCTION_TRAFFIC_SHIFT\"\n          },\n          \"liveAt\": \"2026-03-01T10:00:00Z\",\n          \"pins\": [\n            {\n              \"priority\": \"99\",\n              \"ruleArn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/pin-v1\"\n            },\n            {\n              \"priority\": null,\n              \"ruleArn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/gone\"\n            }\n          ],\n          \"secondsLeft\": 3300,\n          \"serviceRevisionArn\": \"arn:aws:ecs:us-east-1:123456789012:service-revision/shop/web/v1\",\n          \"status\": \"draining\",\n          \"targetGroupArn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg1/0a1\",\n          \"updatedAt\": \"2026-03-01T10:00:00Z\"\n        }\n      ],\n      \"hidden\": 2,\n      \"listenerArn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/web/1/2\",\n      \"notes\": [],\n      \"serviceArn\": \"arn:aws:ecs:us-east-1:123456789012:service/shop/web\"\n    }\n  ]\n}\n"
    );
}

#[test]
fn history_table() {
    let view = HistoryView {
        service_arn: SVC.into(),
        deployment_id: "v1".into(),
        history: vec![
            ChangeRef::from(&history(
                125,
                "POST_TEST_TRAFFIC_SHIFT",
                "recorded as live on target group web-tg1 (revision 1)",
            )),
            ChangeRef::from(&history(
                5,
                "POST_PRODUCTION_TRAFFIC_SHIFT",
                "status live -> draining; drainUntil 2026-03-01T12:55:00Z",
            )),
        ],
    };
    let out = plain(&Rendered::History(view).table());
    println!("{out}");
    assert_eq!(
        out,
        "v1 of web  arn:aws:ecs:us-east-1:123456789012:service/shop/web\nAT                    STAGE                          EXECUTION      CHANGE\n2026-03-01 09:55:00Z  POST_TEST_TRAFFIC_SHIFT        0000000a-exec  recorded as live on target group web-tg1 (revision 1)\n2026-03-01 11:55:00Z  POST_PRODUCTION_TRAFFIC_SHIFT  0000000a-exec  status live -> draining; drainUntil 2026-03-01T12:55:00Z\n"
    );
}

fn listener_rules() -> Vec<ListenerRule> {
    let forward = |tgs: &[(&str, u32)]| {
        RuleAction::Forward(
            tgs.iter()
                .map(|(tg, w)| WeightedTarget {
                    target_group_arn: (*tg).into(),
                    weight: *w,
                })
                .collect(),
        )
    };
    let api = Condition::PathPattern(vec!["/api/*".into()]);
    let pin = |id: &str| Condition::HttpHeader {
        name: "X-Deployment-ID".into(),
        values: vec![id.into()],
    };
    vec![
        ListenerRule {
            arn: rule_arn("pin-v1"),
            priority: Priority::Number(99),
            conditions: vec![api.clone(), pin("v1")],
            action: forward(&[(TG1, 1)]),
            uncopyable: vec![],
        },
        ListenerRule {
            arn: PROD.into(),
            priority: Priority::Number(100),
            conditions: vec![api],
            action: forward(&[(TG1, 0), (TG2, 1)]),
            uncopyable: vec![],
        },
        ListenerRule {
            arn: rule_arn("default"),
            priority: Priority::Default,
            conditions: vec![],
            action: RuleAction::FixedResponse {
                status_code: 404,
                content_type: None,
                body: None,
            },
            uncopyable: vec![],
        },
    ]
}

fn explained(request: Request) -> Explanation {
    let mut draining = entry("v1", TG1, Status::Draining);
    draining.drain_until = Some(NOW + time::Duration::minutes(55));
    let mut retired = entry("v0", TG2, Status::Retired);
    retired.updated_at = NOW - time::Duration::hours(3);
    let entries = vec![draining, entry("v2", TG2, Status::Live), retired];
    let rules = listener_rules();
    let tags = BTreeMap::from([(
        rule_arn("pin-v1"),
        PinTags {
            service_arn: SVC.into(),
            deployment_id: "v1".into(),
        },
    )]);
    let matched = route(&rules, &request);
    explanation(LISTENER, &request, matched, &tags, &entries, NOW)
}

#[test]
fn explain_a_pinned_request() {
    let e = explained(Request::get("/api/cart").with_header("X-Deployment-ID", "V1"));
    let out = plain(&e.table());
    println!("{out}");
    assert_eq!(
        out,
        "request       GET localhost/api/cart  X-Deployment-ID: V1\nrule          priority 99: pin of v1 for web  arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/pin-v1\naction        forward\ntarget group  web-tg1 weight 1: v1 (draining)\nholds         until 2026-03-01 12:55:00Z (55m 0s left): then the skew window of v1 ends and its pin is removed\n"
    );
    let json = Rendered::Explain(Box::new(e)).json();
    println!("{json}");
    assert_eq!(
        json,
        "{\n  \"action\": \"forward\",\n  \"holds\": \"until 2026-03-01 12:55:00Z (55m 0s left): then the skew window of v1 ends and its pin is removed\",\n  \"holdsUntil\": \"2026-03-01T12:55:00Z\",\n  \"listenerArn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/web/1/2\",\n  \"notes\": [],\n  \"request\": {\n    \"headers\": [\n      [\n        \"X-Deployment-ID\",\n        \"V1\"\n      ]\n    ],\n    \"host\": \"localhost\",\n    \"method\": \"GET\",\n    \"path\": \"/api/cart\",\n    \"query\": []\n  },\n  \"rule\": {\n    \"arn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/pin-v1\",\n    \"deploymentId\": \"v1\",\n    \"kind\": \"pin\",\n    \"priority\": \"99\",\n    \"serviceArn\": \"arn:aws:ecs:us-east-1:123456789012:service/shop/web\"\n  },\n  \"targets\": [\n    {\n      \"deploymentId\": \"v1\",\n      \"serviceArn\": \"arn:aws:ecs:us-east-1:123456789012:service/shop/web\",\n      \"status\": \"draining\",\n      \"targetGroupArn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg1/0a1\",\n      \"weight\": 1\n    }\n  ]\n}\n"
    );
}

#[test]
fn explain_production_and_a_retired_pin() {
    let out =
        plain(&explained(Request::get("/api/cart").with_header("X-Deployment-ID", "v0")).table());
    println!("{out}");
    assert_eq!(
        out,
        "request       GET localhost/api/cart  X-Deployment-ID: v0\nrule          priority 100: production rule of web  arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/prod\naction        forward\ntarget group  web-tg1 weight 0: v1 (draining) (weight 0: never chosen)\ntarget group  web-tg2 weight 1: v2 (live)\nholds         until the next deployment shifts production traffic\nnote          the request names deployment v0 of web, which has no pin here (retired): it reaches production instead\n"
    );
    let out = plain(&explained(Request::get("/elsewhere")).table());
    println!("{out}");
    assert_eq!(
        out,
        "request  GET localhost/elsewhere\nrule     priority default: the listener's default rule  arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/default\naction   fixed-response 404\nholds    as long as the listener's rules stay as they are\n"
    );
}

#[test]
fn reconcile_table() {
    let report = ServiceReport {
        service_arn: SVC.into(),
        dry_run: true,
        latest_deployment: None,
        settled: true,
        settings: SettingsSource::Defaults,
        retirement: None,
        repairs: vec![
            Repair {
                kind: RepairKind::Finished,
                deployment_id: Some(DeploymentId::parse("v3").unwrap()),
                rule_arn: None,
                detail: "testing -> rolled_back: stuck in testing after its deployment ended: ECS no longer runs it".into(),
            },
            Repair {
                kind: RepairKind::PinRemoved,
                deployment_id: Some(DeploymentId::parse("zzz").unwrap()),
                rule_arn: Some(rule_arn("orphan")),
                detail: "tagged for zzz, which the ledger does not know".into(),
            },
        ],
        notes: vec!["left rule x alone".into()],
    };
    let results = vec![
        ReconcileResult {
            service_arn: SVC.into(),
            report: Some(report),
            error: None,
        },
        ReconcileResult {
            service_arn: "arn:aws:ecs:us-east-1:123456789012:service/shop/admin".into(),
            report: None,
            error: Some("AWS DescribeRules failed: ListenerNotFound: gone".into()),
        },
    ];
    let rendered = Rendered::Reconcile(results);
    assert!(rendered.failed());
    let out = plain(&rendered.table());
    println!("{out}");
    assert_eq!(
        out,
        "web: would repair 2 things (dry run: nothing changed)\nREPAIR       DEPLOYMENT  RULE    WHY\nfinished     v3          -       testing -> rolled_back: stuck in testing after its deployment ended: ECS no longer runs it\npin-removed  zzz         orphan  tagged for zzz, which the ledger does not know\nnote: left rule x alone\n\nadmin: failed: AWS DescribeRules failed: ListenerNotFound: gone\n"
    );
    let json = rendered.json();
    println!("{json}");
    assert_eq!(
        json,
        "{\n  \"services\": [\n    {\n      \"error\": null,\n      \"report\": {\n        \"dryRun\": true,\n        \"latestDeployment\": null,\n        \"notes\": [\n          \"left rule x alone\"\n        ],\n        \"repairs\": [\n          {\n            \"deploymentId\": \"v3\",\n            \"detail\": \"testing -> rolled_back: stuck in testing after its deployment ended: ECS no longer runs it\",\n            \"kind\": \"finished\"\n          },\n          {\n            \"deploymentId\": \"zzz\",\n            \"detail\": \"tagged for zzz, which the ledger does not know\",\n            \"kind\": \"pin-removed\",\n            \"ruleArn\": \"arn:aws:elasticloadbalancing:us-east-1:123456789012:listener-rule/app/web/1/2/orphan\"\n          }\n        ],\n        \"serviceArn\": \"arn:aws:ecs:us-east-1:123456789012:service/shop/web\",\n        \"settings\": \"defaults\",\n        \"settled\": true\n      },\n      \"serviceArn\": \"arn:aws:ecs:us-east-1:123456789012:service/shop/web\"\n    },\n    {\n      \"error\": \"AWS DescribeRules failed: ListenerNotFound: gone\",\n      \"report\": null,\n      \"serviceArn\": \"arn:aws:ecs:us-east-1:123456789012:service/shop/admin\"\n    }\n  ]\n}\n"
    );
}

#[test]
fn services_are_named_by_arn_or_cluster_and_name() {
    let known = vec![
        SVC.to_owned(),
        "arn:aws:ecs:eu-west-1:123456789012:service/shop/web".to_owned(),
        "arn:aws:ecs:us-east-1:123456789012:service/shop/admin".to_owned(),
    ];
    let resolve = |given: &str, must: bool| resolve_in(given, &known, "t", "us-east-1", must);
    assert_eq!(resolve("shop/web", true).unwrap(), SVC);
    assert_eq!(resolve(SVC, true).unwrap(), SVC);
    let err = resolve("shop/nope", true).unwrap_err().to_string();
    assert!(
        err.contains("unknown service \"shop/nope\"") && err.contains("shop/admin"),
        "{err}"
    );
    let err = resolve("arn:aws:ecs:us-east-1:123456789012:service/shop/new", true).unwrap_err();
    assert!(err.to_string().contains("no ledger entries"), "{err}");
    assert!(resolve("arn:aws:ecs:us-east-1:123456789012:service/shop/new", false).is_ok());
    assert!(matches!(resolve("web", true), Err(CliError::Usage(_))));
    let _ = LedgerStore::table;
}

const TG_COPY: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/sg-0123456789abcdef/0c3";

/// `v1` retained two hours ago in its copy `web-sg-v1`, retiring by maxAge in 7 days at most.
fn retained_entry(id: &str, hours_ago: i64) -> LedgerEntry {
    use skewguard_core::ledger::RetainedCopy;
    let left = NOW - time::Duration::hours(hours_ago);
    let mut e = entry(id, TG_COPY, Status::Retained);
    e.rule_arns = vec![rule_arn(&format!("pin-{id}"))];
    e.retention = Some(RetainedCopy {
        service_name: format!("web-sg-{id}"),
        service_arn: Some(format!(
            "arn:aws:ecs:us-east-1:123456789012:service/shop/web-sg-{id}"
        )),
        target_group_name: "sg-0123456789abcdef".into(),
        target_group_arn: Some(TG_COPY.into()),
        tasks: 1,
        started_at: left,
        healthy_at: Some(left + time::Duration::minutes(2)),
        left_production_at: left,
        retain_until: Some(left + time::Duration::days(7)),
        idle_checks: 0,
        cluster_arn: "arn:aws:ecs:us-east-1:123456789012:cluster/shop".into(),
    });
    e
}

fn retained_status() -> ServiceStatus {
    use skewguard_core::retirement::{self, RetirementSettings};
    use skewguard_core::retirer;
    let settings = RetirementSettings {
        max_versions: 2,
        max_age: std::time::Duration::from_secs(7 * 24 * 3600),
        min_age: std::time::Duration::from_secs(30 * 60),
        idle_window: std::time::Duration::from_secs(30 * 60),
    };
    let older = retained_entry("v0", 26);
    let mut newer = retained_entry("v1", 2);
    if let Some(copy) = newer.retention.as_mut() {
        copy.idle_checks = 1;
    }
    let candidates: Vec<_> = [&older, &newer]
        .into_iter()
        .filter_map(retirer::candidate)
        .collect();
    let forecasts = retirement::forecast(&candidates, &settings, NOW);
    let mut status = the_status();
    status.deployments.truncate(1);
    let none = BTreeMap::new();
    for (e, running, rpm, cost) in [
        (&newer, Some(1), Some(0.0), Some(1.18488)),
        (&older, Some(0), None, Some(0.0)),
    ] {
        let mut row = row_of(e, &none, None, NOW);
        row.retention = super::status::retained::row_of(
            e,
            forecasts.get(&e.deployment_id),
            running,
            rpm,
            cost,
            NOW,
        );
        status.deployments.push(row);
    }
    status.prices = Some(crate::pricing::PriceTable::default().source);
    status
}

#[test]
fn status_lists_retained_versions_with_tasks_age_time_left_reason_traffic_and_cost() {
    let out = plain(&Rendered::Status(vec![retained_status()]).table());
    println!("{out}");
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("RETAINED"))
        .collect();
    assert_eq!(
        table[0].split_whitespace().collect::<Vec<_>>(),
        [
            "RETAINED", "TASKS", "AGE", "TIME", "LEFT", "RETIRES", "FOR", "REQ/MIN", "(30M)",
            "COST/DAY"
        ]
    );
    let v1 = table[1];
    assert!(v1.starts_with("v1 "), "{v1}");
    assert!(v1.contains(" 2h 0m "), "age: {v1}");
    assert!(v1.contains("6d 22h"), "time left: {v1}");
    assert!(
        v1.contains("idle: 1 of 2 checks measured no request") && !v1.contains("idle: idle"),
        "the rule is named once: {v1}"
    );
    assert!(v1.contains(" 0.0 ") && v1.contains("$1.18"), "{v1}");
    let v0 = table[2];
    assert!(v0.starts_with("v0 "), "{v0}");
    assert!(v0.contains("0/1"), "tasks running/started: {v0}");
    assert!(
        v0.contains("max-versions: the oldest") && !v0.contains("max-versions: max-versions"),
        "the oldest of maxVersions, the rule named once: {v0}"
    );
    assert!(
        v0.contains("no data"),
        "no CloudWatch data is not zero: {v0}"
    );
    assert!(
        out.contains("cost at AWS Fargate list price, US East (N. Virginia)"),
        "{out}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&Rendered::Status(vec![retained_status()]).json()).unwrap();
    let rows = &json["services"][0]["deployments"];
    assert!(
        rows[0].get("retention").is_none(),
        "only retained rows carry it"
    );
    let r = &rows[1]["retention"];
    assert_eq!(r["serviceName"], "web-sg-v1");
    assert_eq!(r["ageSeconds"], 7200);
    assert_eq!(r["secondsLeft"], 7 * 24 * 3600 - 7200);
    assert_eq!(r["retiresFor"], "idle");
    assert_eq!(r["idleChecks"], 1);
    assert_eq!(r["requestsPerMinute"], 0.0);
    assert_eq!(r["costPerDayUsd"], 1.18488);
    assert_eq!(
        rows[2]["retention"]["requestsPerMinute"],
        serde_json::Value::Null
    );
    assert!(json["services"][0]["prices"].is_string());
}

#[test]
fn status_shows_a_retiring_version_as_retiring_now() {
    let mut e = retained_entry("v1", 2);
    e.reason = Some("revoked".into());
    let row = super::status::retained::row_of(&e, None, Some(1), None, None, NOW).unwrap();
    assert!(row.retiring);
    assert_eq!(row.retires_for, "revoked");
    // Not retained (or no copy): no retained row.
    let draining = entry("v2", TG1, Status::Draining);
    assert!(super::status::retained::row_of(&draining, None, None, None, None, NOW).is_none());
}

#[test]
fn revoke_and_cutoff_list_each_retirement_and_fail_when_one_stopped() {
    use super::retire::{Kind, RetireView};
    use skewguard_core::retirer::Retirement;
    let mut view = RetireView {
        service_arn: SVC.into(),
        command: Kind::Cutoff,
        deployment_id: "v3".into(),
        actor: "arn:aws:iam::123456789012:user/ops".into(),
        retirements: vec![
            Retirement {
                deployment_id: DeploymentId::parse("v1").unwrap(),
                reason: "cutoff".into(),
                done: true,
                detail: "1 pin(s) removed; service web-sg-v1 and target group sg-01 deleted".into(),
            },
            Retirement {
                deployment_id: DeploymentId::parse("v2").unwrap(),
                reason: "cutoff".into(),
                done: false,
                detail: "AWS DeleteService failed (ThrottlingException)".into(),
            },
        ],
        notes: vec![],
        at: NOW,
    };
    assert!(Rendered::Retire(view.clone()).failed());
    let out = plain(&Rendered::Retire(view.clone()).table());
    println!("{out}");
    assert!(
        out.starts_with("web: cutoff 2 retained versions at 2026-03-01 12:00:00Z\n"),
        "{out}"
    );
    assert!(out.contains("v1          cutoff  retired"), "{out}");
    assert!(
        out.contains("v2          cutoff  stopped  AWS DeleteService failed"),
        "{out}"
    );
    assert!(
        out.contains("the reconciler's next run carries on"),
        "{out}"
    );
    let json = Rendered::Retire(view.clone()).json();
    assert!(json.contains("\"command\": \"cutoff\""), "{json}");
    assert!(
        json.contains("\"actor\": \"arn:aws:iam::123456789012:user/ops\""),
        "{json}"
    );

    view.retirements.clear();
    assert!(!Rendered::Retire(view.clone()).failed());
    assert_eq!(
        plain(&Rendered::Retire(view).table()),
        "web: no retained version is older than v3; nothing to retire\n"
    );
}

#[test]
fn explain_a_pin_of_a_retained_version() {
    let retained = retained_entry("v1", 2);
    let rules = vec![ListenerRule {
        arn: rule_arn("pin-v1"),
        priority: Priority::Number(99),
        conditions: vec![Condition::HttpHeader {
            name: "X-Deployment-ID".into(),
            values: vec!["v1".into()],
        }],
        action: RuleAction::Forward(vec![WeightedTarget {
            target_group_arn: TG_COPY.into(),
            weight: 1,
        }]),
        uncopyable: vec![],
    }];
    let tags = BTreeMap::from([(
        rule_arn("pin-v1"),
        PinTags {
            service_arn: SVC.into(),
            deployment_id: "v1".into(),
        },
    )]);
    let request = Request::get("/api/cart").with_header("X-Deployment-ID", "v1");
    let matched = route(&rules, &request);
    let e = explanation(
        LISTENER,
        &request,
        matched,
        &tags,
        std::slice::from_ref(&retained),
        NOW,
    );
    let out = plain(&e.table());
    println!("{out}");
    assert!(
        out.contains("sg-0123456789abcdef weight 1: v1 (retained)"),
        "{out}"
    );
    assert!(
        out.contains("while v1 is retained (served by its retention service web-sg-v1): until 2026-03-08 10:00:00Z"),
        "{out}"
    );
    assert_eq!(
        e.holds_until,
        Some(NOW - time::Duration::hours(2) + time::Duration::days(7))
    );

    let mut retiring = retained;
    retiring.reason = Some("revoked".into());
    let e = explanation(LISTENER, &request, matched, &tags, &[retiring], NOW);
    assert!(
        e.holds.contains("not for long: v1 is retiring (revoked)"),
        "{}",
        e.holds
    );
}
