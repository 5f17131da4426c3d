//! The reconciler sweep at scale: services seeded straight into the stand-ins (listeners and
//! target groups in moto, deployments, revisions and task definitions in the ECS emulator,
//! ledger items in DynamoDB), each in the state a finished deployment leaves, then one
//! scheduled sweep of the real `reconciler` binary over all of them.
//!
//! Each service: its own production rule (a path pattern) on a listener shared by
//! [`SERVICES_PER_LISTENER`] services, two target groups, [`DEPLOYMENTS`] successful
//! deployments (so [`DEPLOYMENTS`] ledger entries: the live one, pinned, and retired ones),
//! each entry with a history of a chosen length. The live pin is created by the hooks' own
//! `sync_pins`, so it is exactly the pin the reconciler wants: a converged world, where a sweep
//! finds nothing to repair (the bench checks that it does not).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use serde_json::{Value, json};
use skewguard_core::DeploymentId;
use skewguard_core::aws::ecs::NewRetentionService;
use skewguard_core::aws::elb::Elb;
use skewguard_core::ledger::{LedgerEntry, RetainedCopy, RunningVersion, ServiceWiring, Status};
use skewguard_core::retention;
use skewguard_core::settings::{EnvDefaults, Settings};
use skewguard_core::stages::Draft;
use skewguard_world::aws::{ACCOUNT_ID, Clients, REGION};
use skewguard_world::ecs_emulator::{
    ContainerDefinition, EcsEmulator, LoadBalancer, ServiceDeployment, ServiceRevision,
};
use skewguard_world::fixtures::{AlbFixture, Vpc, create_ledger_table};
use skewguard_world::lambda::LocalFunction;
use skewguard_world::sweep::SweepQueue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::capacity::Units;
use crate::hooks::{metering_of, units_of};
use crate::procfs;
use crate::proxy::CallLog;

pub const SERVICES_PER_LISTENER: usize = 10;
pub const DEPLOYMENTS: usize = 5;
/// Retained versions per service in the fleet that keeps them: `retention: service`'s default
/// `maxVersions`, all in use.
pub const RETAINED: usize = 3;
/// Seeding runs this many listeners' services at once (moto's ELBv2 is not safe for concurrent creates).
const SEED_PARALLELISM: usize = 1;

/// What a fleet's services keep of their past: with `retained` 0, nothing (`retention: hold`,
/// every skew window over: the live version alone is pinned); otherwise that many previous
/// versions each (`retention: service`), every one served by its own retention copy (an ECS
/// service and target group, tagged, with its pin) and recently requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetKind {
    pub retained: usize,
}

impl FleetKind {
    pub const HOLD: FleetKind = FleetKind { retained: 0 };
    pub const RETAINING: FleetKind = FleetKind { retained: RETAINED };

    /// Each fleet has its own cluster and service names (load balancer names are unique).
    fn cluster(self) -> &'static str {
        if self.retained == 0 {
            "fleet"
        } else {
            "fleet-retaining"
        }
    }

    fn service_name(self, i: usize) -> String {
        let prefix = if self.retained == 0 { "sw" } else { "sr" };
        format!("{prefix}{i:04}")
    }

    fn service_arn(self, i: usize) -> String {
        skewguard_world::ecs_emulator::service_arn(self.cluster(), &self.service_name(i))
    }

    fn hook_details(self) -> Value {
        if self.retained == 0 {
            json!({"retention": "hold", "skewWindow": "1h"})
        } else {
            json!({"retention": "service", "skewWindow": "1h"})
        }
    }

    /// `deploymentConfiguration` as ECS records it, with skewguard's three hooks.
    fn deployment_configuration(self) -> Value {
        let function =
            |name: &str| format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:skewguard-{name}");
        let role = format!("arn:aws:iam::{ACCOUNT_ID}:role/skewguard-ecs-hooks");
        let details = self.hook_details();
        json!({
            "strategy": "BLUE_GREEN",
            "bakeTimeInMinutes": 5,
            "maximumPercent": 200,
            "minimumHealthyPercent": 100,
            "lifecycleHooks": [
                {"hookTargetArn": function("post-test-traffic"), "roleArn": role,
                 "lifecycleStages": ["POST_TEST_TRAFFIC_SHIFT"], "hookDetails": details},
                {"hookTargetArn": function("production-shift"), "roleArn": role,
                 "lifecycleStages": ["TEST_TRAFFIC_SHIFT", "PRODUCTION_TRAFFIC_SHIFT"], "hookDetails": details},
                {"hookTargetArn": function("post-shift"), "roleArn": role,
                 "lifecycleStages": ["POST_PRODUCTION_TRAFFIC_SHIFT"], "hookDetails": details},
            ],
        })
    }
}

/// One seeded service: what the ledger holds for it.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub service_arn: String,
    pub entries: Vec<LedgerEntry>,
}

/// Services seeded so far, grouped by listener.
pub struct Fleet {
    clients: Clients,
    ecs: Arc<EcsEmulator>,
    vpc: Vpc,
    pub kind: FleetKind,
    pub services: Vec<Seeded>,
    listeners: Vec<String>,
}

/// A git-SHA-like deployment ID, distinct per (service, deployment).
fn deployment_id(i: usize, k: usize) -> String {
    let mut z = (i as u64) << 8 | k as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("{:07x}", (z ^ (z >> 31)) & 0xfff_ffff)
}

impl Fleet {
    pub fn new(clients: Clients, ecs: Arc<EcsEmulator>, vpc: Vpc, kind: FleetKind) -> Fleet {
        Fleet {
            clients,
            ecs,
            vpc,
            kind,
            services: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// Seeds services until there are `total` (listeners of [`SERVICES_PER_LISTENER`] each),
    /// writing their ledger items (with `history` records per entry) into `table`.
    pub async fn grow_to(
        &mut self,
        total: usize,
        table: &str,
        history: usize,
    ) -> Result<(), String> {
        let start = self.services.len();
        assert_eq!(start % SERVICES_PER_LISTENER, 0, "whole listeners only");
        let groups: Vec<usize> =
            (start / SERVICES_PER_LISTENER..total.div_ceil(SERVICES_PER_LISTENER)).collect();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(SEED_PARALLELISM));
        let mut tasks = tokio::task::JoinSet::new();
        let kind = self.kind;
        for group in groups {
            let (clients, ecs, vpc) = (self.clients.clone(), self.ecs.clone(), self.vpc.clone());
            let semaphore = semaphore.clone();
            let end = ((group + 1) * SERVICES_PER_LISTENER).min(total);
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await.map_err(|e| e.to_string())?;
                seed_listener(&clients, &ecs, &vpc, kind, group, end).await
            });
        }
        let mut seeded: Vec<(usize, String, Vec<Seeded>)> = Vec::new();
        while let Some(done) = tasks.join_next().await {
            seeded.push(done.map_err(|e| e.to_string())??);
        }
        seeded.sort_by_key(|(group, _, _)| *group);
        for (_, listener, services) in seeded {
            self.listeners.push(listener);
            self.services.extend(services);
        }
        write_ledger(
            &self.clients.dynamodb,
            table,
            &self.services[start..],
            history,
        )
        .await?;
        // The items read back as the entries they were written from.
        let store = skewguard_core::aws::ledger_store::LedgerStore::new(
            self.clients.dynamodb.clone(),
            table,
        );
        for seeded in [
            &self.services[start],
            &self.services[self.services.len() - 1],
        ] {
            let mut read = store
                .load_with_archive(&seeded.service_arn)
                .await
                .map_err(|e| e.to_string())?;
            let mut written = seeded.entries.clone();
            read.sort_by(|a, b| a.deployment_id.cmp(&b.deployment_id));
            written.sort_by(|a, b| a.deployment_id.cmp(&b.deployment_id));
            let same = read.len() == written.len()
                && read.iter().zip(&written).all(|(r, w)| {
                    r.same_state_as(&LedgerEntry {
                        // Written with second precision.
                        created_at: r.created_at,
                        ..w.clone()
                    })
                });
            if !same {
                return Err(format!(
                    "seeded ledger of {} reads back differently:\n{read:#?}\nvs\n{written:#?}",
                    seeded.service_arn
                ));
            }
        }
        Ok(())
    }

    /// Writes every seeded service's entries into another table, with `history` records each.
    pub async fn copy_ledger(&self, table: &str, history: usize) -> Result<(), String> {
        write_ledger(&self.clients.dynamodb, table, &self.services, history).await
    }

    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }
}

/// One listener (on its own ALB) and the services `group * SERVICES_PER_LISTENER .. end` on it.
async fn seed_listener(
    clients: &Clients,
    ecs: &EcsEmulator,
    vpc: &Vpc,
    kind: FleetKind,
    group: usize,
    end: usize,
) -> Result<(usize, String, Vec<Seeded>), String> {
    let elb = &clients.elbv2;
    let first = group * SERVICES_PER_LISTENER;
    let mut listener: Option<String> = None;
    let mut services = Vec::new();
    for i in first..end {
        let slot = (i - first) as i32;
        let name = kind.service_name(i);
        let alb = AlbFixture::with_path_rule_as_production(
            elb,
            vpc,
            &name,
            listener.as_deref(),
            100 * (slot + 1),
            &format!("/{name}/*"),
        )
        .await
        .map_err(|e| format!("seeding {name}: {e}"))?;
        listener.get_or_insert_with(|| alb.listener_arn.clone());
        services.push(seed_service(clients, ecs, kind, i, &alb).await?);
    }
    Ok((group, listener.unwrap_or_default(), services))
}

/// ECS's record of [`DEPLOYMENTS`] successful deployments, and the ledger entries and pins
/// they leave: the live version, the `kind.retained` before it each in its retention copy,
/// the others retired.
async fn seed_service(
    clients: &Clients,
    ecs: &EcsEmulator,
    kind: FleetKind,
    i: usize,
    alb: &AlbFixture,
) -> Result<Seeded, String> {
    let name = kind.service_name(i);
    let service_arn = kind.service_arn(i);
    let cluster = kind.cluster();
    let wiring = ServiceWiring {
        listener_arn: alb.listener_arn.clone(),
        production_rule_arn: alb.production_rule_arn.clone(),
    };
    let settings = Settings::resolve(
        kind.hook_details().as_object().expect("an object"),
        &EnvDefaults::default(),
    )
    .map_err(|e| e.to_string())?;
    let now = OffsetDateTime::now_utc();
    let at = |k: usize| now - time::Duration::days((DEPLOYMENTS + 1 - k) as i64);
    let mut entries: Vec<LedgerEntry> = Vec::new();
    let mut previous: Option<String> = None;
    for k in 1..=DEPLOYMENTS {
        let id = deployment_id(i, k);
        let tg = if k % 2 == 1 {
            &alb.blue_tg
        } else {
            &alb.green_tg
        };
        let task_definition = ecs.register_task_definition(
            &name,
            vec![
                ContainerDefinition::new("web", &format!("registry.local/{name}:{id}"))
                    .env("DEPLOYMENT_ID", &id)
                    .port(8080),
            ],
        );
        let mut revision = ServiceRevision::new(cluster, &name, &task_definition)
            .with_load_balancer(LoadBalancer::blue_green(
                ("web", 8080),
                &alb.blue_tg,
                &alb.green_tg,
                &alb.production_rule_arn,
                None,
            ))
            .with_resolved(tg, Some(&alb.production_rule_arn));
        let started = std::time::SystemTime::from(at(k));
        revision.created_at = started;
        let revision_arn = revision.service_revision_arn.clone();
        ecs.put_service_revision(revision);
        let sources: Vec<&str> = previous.iter().map(String::as_str).collect();
        let mut deployment = ServiceDeployment::new(cluster, &name, &sources, &revision_arn);
        let finished = started + Duration::from_secs(20 * 60);
        deployment.created_at = started;
        deployment.started_at = Some(started);
        deployment.finished_at = Some(finished);
        deployment.updated_at = finished;
        deployment.status = aws_sdk_ecs::types::ServiceDeploymentStatus::Successful;
        deployment.lifecycle_stage = None;
        deployment.deployment_configuration = Some(kind.deployment_configuration());
        ecs.put_service_deployment(deployment);
        previous = Some(revision_arn.clone());

        let running = RunningVersion {
            deployment_id: DeploymentId::parse(&id).map_err(|e| e.to_string())?,
            service_revision_arn: revision_arn,
            target_group_arn: tg.clone(),
            task_definition_arn: task_definition,
        };
        let mut entry = LedgerEntry::new(&service_arn, &running, &wiring, Status::Live, at(k));
        let live_at = at(k) + time::Duration::minutes(10);
        entry.shifted_at = Some(at(k) + time::Duration::minutes(5));
        entry.live_at = Some(live_at);
        entry.updated_at = live_at;
        if let Some(before) = entries.last_mut() {
            let retired = live_at + time::Duration::hours(1);
            before.status = Status::Retired;
            before.shifted_at = None;
            before.superseded_by = Some(running.deployment_id.clone());
            before.retired_at = Some(retired);
            before.expires_at = Some((retired + time::Duration::days(30)).unix_timestamp());
            before.updated_at = retired;
        }
        entries.push(entry);
    }
    let elb = Elb::new(clients.elbv2.clone());
    let copies = retain(&elb, &mut entries, kind, &settings).await?;
    // The pins, exactly as the hooks make them.
    let mut draft = Draft::new(&service_arn, entries);
    skewguard_core::hook::sync_pins(&mut draft, &wiring, &settings, &elb)
        .await
        .map_err(|e| format!("pinning {name}: {e}"))?;
    // The retention services, as post-shift creates them once their target groups are in use.
    let ecs_client = skewguard_core::aws::ecs::Ecs::new(clients.ecs.clone());
    for id in copies {
        let Some(entry) = draft.get_mut(&id) else {
            continue;
        };
        let launch = ecs_client
            .revision_launch(&entry.service_revision_arn)
            .await
            .map_err(|e| format!("seeding {name}'s copy of {id}: {e}"))?;
        let Some(copy) = entry.retention.as_mut() else {
            continue;
        };
        let tags = retention::tags(&service_arn, &id);
        let token = skewguard_core::starter::client_token(&service_arn, &id, copy.started_at);
        let arn = ecs_client
            .create_retention_service(&NewRetentionService {
                cluster,
                name: &copy.service_name,
                launch: &launch,
                target_group_arn: copy.target_group_arn.as_deref().unwrap_or_default(),
                desired_count: copy.tasks,
                tags: &tags,
                client_token: &token,
            })
            .await
            .map_err(|e| format!("seeding {name}'s retention service for {id}: {e:?}"))?;
        copy.service_arn = Some(arn);
        // Requests in the last minutes: the idle check finds it in use.
        put_request_count(clients, entry, now - time::Duration::minutes(5), 40.0).await?;
    }
    Ok(Seeded {
        service_arn,
        entries: draft.entries().cloned().collect(),
    })
}

/// Turns the `kind.retained` entries before the live one into retained versions, each with a
/// retention target group of its own (created tagged, shaped like the version's), in the
/// state post-shift leaves once the copy is healthy: `retained`, forwarding to the copy.
/// Answers their deployment IDs.
async fn retain(
    elb: &Elb,
    entries: &mut [LedgerEntry],
    kind: FleetKind,
    settings: &Settings,
) -> Result<Vec<DeploymentId>, String> {
    let live = entries.len().saturating_sub(1);
    let first = live.saturating_sub(kind.retained);
    let mut retained = Vec::new();
    for n in first..live {
        let left_production = entries[n + 1].live_at.unwrap_or(entries[n + 1].created_at);
        let entry = &mut entries[n];
        let id = entry.deployment_id.clone();
        let service_arn = entry.service_arn.clone();
        let shape = elb
            .target_group_shape(&entry.target_group_arn)
            .await
            .map_err(|e| format!("shape of {}: {e}", entry.target_group_arn))?;
        let target_group_name = retention::target_group_name(&service_arn, &id);
        let copy_tg = elb
            .create_target_group(
                &target_group_name,
                &shape,
                &retention::tags(&service_arn, &id),
            )
            .await
            .map_err(|e| format!("creating {target_group_name}: {e}"))?;
        let healthy_at = left_production + time::Duration::minutes(2);
        entry.status = Status::Retained;
        entry.target_group_arn = copy_tg.clone();
        entry.shifted_at = None;
        entry.drain_until = None;
        entry.retired_at = None;
        entry.expires_at = None;
        entry.updated_at = healthy_at;
        entry.retention = Some(RetainedCopy {
            service_name: retention::service_name(&service_arn, &id),
            service_arn: None,
            target_group_name,
            target_group_arn: Some(copy_tg),
            tasks: 1,
            started_at: left_production,
            healthy_at: Some(healthy_at),
            left_production_at: left_production,
            retain_until: Some(left_production + settings.max_age),
            idle_checks: 0,
            cluster_arn: skewguard_world::ecs_emulator::cluster_arn(kind.cluster()),
        });
        retained.push(id);
    }
    Ok(retained)
}

/// A `RequestCount` datapoint for the target group of `entry` at `at`, as the load balancer
/// publishes it.
async fn put_request_count(
    clients: &Clients,
    entry: &LedgerEntry,
    at: OffsetDateTime,
    requests: f64,
) -> Result<(), String> {
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
    use skewguard_core::aws::cloudwatch::{load_balancer_dimension, target_group_dimension};
    let (Some(tg), Some(lb)) = (
        target_group_dimension(&entry.target_group_arn),
        load_balancer_dimension(&entry.listener_arn),
    ) else {
        return Err(format!(
            "no CloudWatch dimensions for {} on {}",
            entry.target_group_arn, entry.listener_arn
        ));
    };
    let minute = skewguard_core::aws::cloudwatch::minute_floor(at).unix_timestamp();
    clients
        .cloudwatch
        .put_metric_data()
        .namespace("AWS/ApplicationELB")
        .metric_data(
            MetricDatum::builder()
                .metric_name("RequestCount")
                .dimensions(Dimension::builder().name("TargetGroup").value(tg).build())
                .dimensions(Dimension::builder().name("LoadBalancer").value(lb).build())
                .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_secs(minute))
                .value(requests)
                .unit(StandardUnit::Count)
                .storage_resolution(60)
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            format!(
                "PutMetricData: {}",
                aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
            )
        })?;
    Ok(())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Realistic history lines, cycled.
const CHANGES: [(&str, &str); 5] = [
    (
        "POST_TEST_TRAFFIC_SHIFT",
        "recorded as testing on target group app-tg2/3f2a9c1b7d6e5f40 (revision 1745981234567890123)",
    ),
    (
        "PRODUCTION_TRAFFIC_SHIFT",
        "testing -> testing: production traffic shifted to it (100%); pinned by X-Deployment-ID",
    ),
    (
        "POST_PRODUCTION_TRAFFIC_SHIFT",
        "testing -> live: serves production; previous version draining until 2026-11-22T05:00:00Z",
    ),
    (
        "POST_PRODUCTION_TRAFFIC_SHIFT",
        "live -> draining: superseded by a newer deployment; pinned until the skew window ends",
    ),
    (
        "POST_PRODUCTION_TRAFFIC_SHIFT",
        "draining -> retired: skew window over, pins removed (1 rule) before scale-down",
    ),
];

/// The ledger items of `entry` with `history` records, in the table's layout
/// ([`skewguard_core::aws::ledger_store`]): the entry (in play, or archived when final) and one
/// item per history record.
pub fn items(entry: &LedgerEntry, history: usize) -> Vec<HashMap<String, AttributeValue>> {
    let mut items = vec![entry_item(entry, history)];
    items.extend((0..history).map(|n| history_item(entry, n)));
    items
}

/// The entry's own item (what the hooks and the sweep read when it is in play), as the ledger
/// store writes it.
pub fn entry_item(entry: &LedgerEntry, history: usize) -> HashMap<String, AttributeValue> {
    skewguard_core::aws::ledger_store::entry_item(entry, history.max(1) as u64)
}

/// History record `n` of `entry`, as an item of its own.
fn history_item(entry: &LedgerEntry, n: usize) -> HashMap<String, AttributeValue> {
    use skewguard_core::aws::ledger_store::{HISTORY_TTL, attr, key};
    let (stage, change) = CHANGES[n % CHANGES.len()];
    let at = entry.created_at + time::Duration::minutes(n as i64);
    HashMap::from([
        (attr::SERVICE_ARN.to_owned(), s(&entry.service_arn)),
        (
            attr::DEPLOYMENT_ID.to_owned(),
            s(&key::history(
                &entry.deployment_id,
                at,
                &format!("v{:020}", n + 1),
            )),
        ),
        (attr::AT.to_owned(), s(&rfc3339(at))),
        (attr::STAGE.to_owned(), s(stage)),
        (
            attr::EXECUTION_ID.to_owned(),
            s(&format!("{:08x}-5c1e-4b7a-9d3f-{:012x}", n, n * 7919)),
        ),
        (attr::CHANGE.to_owned(), s(change)),
        (
            attr::EXPIRES_AT.to_owned(),
            AttributeValue::N((at + HISTORY_TTL).unix_timestamp().to_string()),
        ),
    ])
}

/// The services directory: one item per service, and the marker saying it is complete.
fn directory_items(services: &[Seeded]) -> Vec<HashMap<String, AttributeValue>> {
    use skewguard_core::aws::ledger_store::{attr, key};
    services
        .iter()
        .map(|svc| {
            HashMap::from([
                (attr::SERVICE_ARN.to_owned(), s(key::SERVICES)),
                (attr::DEPLOYMENT_ID.to_owned(), s(&svc.service_arn)),
            ])
        })
        .chain([HashMap::from([
            (attr::SERVICE_ARN.to_owned(), s(key::SERVICES)),
            (attr::DEPLOYMENT_ID.to_owned(), s(key::LAYOUT_MARKER)),
            (
                attr::LAYOUT.to_owned(),
                AttributeValue::N(key::LAYOUT.to_string()),
            ),
        ])])
        .collect()
}

/// DynamoDB's size of an item (attribute names plus values, by the documented rules).
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => n.trim_start_matches('-').len().div_ceil(2) + 1,
            AttributeValue::L(l) => 3 + l.iter().map(|e| value(e) + 1).sum::<usize>(),
            AttributeValue::M(m) => {
                3 + m.iter().map(|(k, e)| k.len() + value(e) + 1).sum::<usize>()
            }
            _ => 1,
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

async fn write_ledger(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    services: &[Seeded],
    history: usize,
) -> Result<(), String> {
    let items: Vec<HashMap<String, AttributeValue>> = services
        .iter()
        .flat_map(|s| s.entries.iter().flat_map(|e| items(e, history)))
        .chain(directory_items(services))
        .collect();
    for batch in items.chunks(25) {
        let mut requests: Vec<WriteRequest> = batch
            .iter()
            .map(|i| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(i.clone()))
                            .build()
                            .expect("an item"),
                    )
                    .build()
            })
            .collect();
        while !requests.is_empty() {
            let out = ddb
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "BatchWriteItem: {}",
                        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                    )
                })?;
            requests = out
                .unprocessed_items()
                .and_then(|u| u.get(table))
                .cloned()
                .unwrap_or_default();
        }
    }
    Ok(())
}

pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), String> {
    create_ledger_table(ddb, table)
        .await
        .map_err(|e| e.to_string())
}

/// What one sweep did and cost.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub services: usize,
    /// Retained versions per service ([`FleetKind`]).
    pub retained: usize,
    pub history: usize,
    pub listeners: usize,
    pub wall: Duration,
    pub cpu: Duration,
    pub calls: BTreeMap<String, usize>,
    pub total_calls: usize,
    pub reconciled: usize,
    pub repairs: usize,
    pub errors: usize,
    pub peak_rss: u64,
    /// DynamoDB capacity units of the sweep's calls, as DynamoDB bills them (priced at the
    /// counting proxy, [`crate::capacity`]); false when some call could not be priced.
    pub units: Units,
    pub units_complete: bool,
    /// Bytes of ledger items per service.
    pub ledger_bytes: usize,
    /// Time spent waiting for moto's answers (ELBv2 and DynamoDB), in all and by operation.
    pub moto_time: Duration,
    pub moto_by_op: BTreeMap<String, Duration>,
    /// Execution environments consuming the queue at once.
    pub concurrency: usize,
    /// The scheduled run that lists the services and enqueues them.
    pub enqueue: Duration,
    /// Batches delivered (retries of failed ones included), and each one's invocation time.
    pub batches: usize,
    pub batch_wall: Vec<Duration>,
    /// Services whose message succeeded in more than one batch.
    pub duplicates: usize,
    /// Of those, one message received and succeeding twice.
    pub redelivered: usize,
}

/// How long a failed batch's messages stay invisible before they are received again. The
/// template's queue keeps them 30 min (six times the function's timeout); the bench shortens
/// that so a retry shows within the run (no batch here takes longer than a few seconds).
pub const VISIBILITY: Duration = Duration::from_secs(60);

/// One scheduled sweep over `functions` (execution environments of the reconciler, warmed
/// first), metered: the `Scheduled Event` goes to the first and enqueues one message per
/// service on `queue`, then every environment polls the queue for batches of 10 at once, as
/// the event source mapping does at a `MaximumConcurrency` of `functions.len()`
/// ([`SweepQueue::consume`]).
pub async fn sweep(
    functions: &[Arc<LocalFunction>],
    queue: &SweepQueue,
    log: &CallLog,
    ecs: &EcsEmulator,
    fleet: &Fleet,
    history: usize,
) -> Result<Sweep, String> {
    let timeout = Duration::from_secs(1800);
    let function = functions.first().ok_or("no reconciler")?;
    let mut pids = Vec::new();
    for f in functions {
        f.prewarm(timeout)
            .await
            .map_err(|e| format!("reconciler cold start: {e}"))?;
        pids.push(f.pid().ok_or("no reconciler process")?);
    }
    let cpu_of = |pids: &[u32]| -> Duration {
        pids.iter()
            .map(|&pid| procfs::cpu(pid).unwrap_or_default())
            .sum()
    };
    let cpu_before = cpu_of(&pids);
    let (mark, ecs_mark) = (log.len(), ecs.calls().len());
    let event = json!({
        "version": "0",
        "id": "5a1c5c1e-0000-4000-8000-000000000001",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": rfc3339(OffsetDateTime::now_utc()),
        "region": REGION,
        "resources": [format!("arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/skewguard-reconcile")],
        "detail": {},
    });
    let emf_before: Vec<usize> = functions.iter().map(|f| sweep_lines(f).len()).collect();
    let started = Instant::now();
    let enqueued = function
        .invoke(event, timeout)
        .await
        .map_err(|e| format!("reconciler sweep: {e}"))?;
    if enqueued["notEnqueued"] != json!([]) {
        return Err(format!("the sweep was not enqueued whole: {enqueued}"));
    }
    let enqueue = started.elapsed();
    let deliveries = queue
        .consume(functions, 10, timeout, VISIBILITY)
        .await
        .map_err(|e| format!("sweep queue: {e}"))?;
    let logged = log.logged_since(mark);
    // The proxy's pricing reads are not the sweep's time (with several environments at once
    // they may overlap another's call: then less is taken out than was added, never more).
    let wall = started.elapsed().saturating_sub(metering_of(&logged));
    let (units, units_complete) = units_of(&logged);
    for f in functions {
        f.until_idle(timeout)
            .await
            .map_err(|e| format!("reconciler: {e}"))?;
    }
    let cpu = cpu_of(&pids).saturating_sub(cpu_before);
    let mut calls: BTreeMap<String, usize> = BTreeMap::new();
    let mut total_calls = 0;
    for op in ecs.calls().into_iter().skip(ecs_mark) {
        *calls.entry(op).or_default() += 1;
        total_calls += 1;
    }
    let mut moto_time = Duration::ZERO;
    let mut moto_by_op: BTreeMap<String, Duration> = BTreeMap::new();
    for ((_, op), took) in log.timed_since(mark) {
        *moto_by_op.entry(op.clone()).or_default() += took;
        *calls.entry(op).or_default() += 1;
        total_calls += 1;
        moto_time += took;
    }
    // What the batches did, from their metric lines (an SQS batch answers only its failures).
    // (A process's output reaches the bench a little after its answer: wait up to 30 s.)
    let mut lines = Vec::new();
    for _ in 0..1500 {
        lines = functions
            .iter()
            .zip(&emf_before)
            .flat_map(|(f, &before)| {
                let all = sweep_lines(f);
                all[before.min(all.len())..].to_vec()
            })
            .collect();
        if lines.len() >= deliveries.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = &lines[..];
    // A retained version's idle check must have read CloudWatch (a failed read counts nothing
    // as idle and would leave that part of the sweep's cost unmeasured).
    if let Some(failed) = functions
        .iter()
        .flat_map(|f| f.logs())
        .find(|l| l.contains("idle check failed"))
    {
        return Err(format!("an idle check failed during the sweep: {failed}"));
    }
    // The messages that succeeded: a service whose message succeeded in two batches was swept
    // twice (harmless, counted).
    let succeeded: Vec<&(String, String)> = deliveries
        .iter()
        .flat_map(|d| d.messages.iter().filter(|(id, _)| !d.failed.contains(id)))
        .collect();
    let repeats = |mut keys: Vec<&str>| {
        keys.sort_unstable();
        keys.windows(2).filter(|w| w[0] == w[1]).count()
    };
    let duplicates = repeats(succeeded.iter().map(|(_, body)| body.as_str()).collect());
    // Of those, the same message received twice (rather than two messages for one service).
    let redelivered = repeats(succeeded.iter().map(|(id, _)| id.as_str()).collect());
    let batch_wall: Vec<Duration> = deliveries.iter().map(|d| d.took).collect();
    let sum = |name: &str| -> usize {
        lines
            .iter()
            .map(|l| l[name].as_f64().unwrap_or(0.0) as usize)
            .sum()
    };
    let errors: usize = deliveries.iter().map(|d| d.failed.len()).sum();
    let reconciled = sum("ServicesReconciled").saturating_sub(errors);
    let repairs = sum("Repairs");
    // What the sweep reads of each service: its entries in play (history and archive are never
    // read).
    let sizes: Vec<usize> = fleet
        .services
        .iter()
        .map(|s| {
            s.entries
                .iter()
                .filter(|e| !e.status.is_final())
                .map(|e| item_size(&entry_item(e, history)))
                .sum()
        })
        .collect();
    let total: usize = sizes.iter().sum();
    Ok(Sweep {
        services: fleet.services.len(),
        retained: fleet.kind.retained,
        history,
        listeners: fleet.listeners(),
        wall,
        cpu,
        calls,
        total_calls,
        reconciled,
        repairs,
        errors,
        peak_rss: pids
            .iter()
            .filter_map(|&pid| procfs::peak_rss(pid))
            .max()
            .unwrap_or(0),
        concurrency: functions.len(),
        enqueue,
        batches: deliveries.len(),
        batch_wall,
        duplicates,
        redelivered,
        units,
        units_complete,
        ledger_bytes: total / fleet.services.len().max(1),
        moto_time,
        moto_by_op,
    })
}

/// The reconciler's metric lines of sweep-queue batches among its output so far.
fn sweep_lines(function: &LocalFunction) -> Vec<Value> {
    function
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v.get("_aws").is_some() && v["Stage"] == "sweep-queue" && v.get("Invocations").is_some()
        })
        .collect()
}
