//! The ledger table in DynamoDB. Every write is conditional on the version that was read, so two
//! concurrent invocations never lose each other's update; history is only ever appended.

use std::collections::HashMap;

use aws_sdk_dynamodb as ddb;
use ddb::types::{AttributeValue, TransactWriteItem, Update};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AwsError, AwsErrorKind, classify};
use crate::DeploymentId;
use crate::ledger::{HistoryRecord, LedgerEntry, RetainedCopy, Status};
use crate::stages::Change;

/// Attribute names: part of the public contract (users query the table directly).
pub mod attr {
    pub const SERVICE_ARN: &str = "serviceArn";
    pub const DEPLOYMENT_ID: &str = "deploymentId";
    pub const STATUS: &str = "status";
    pub const TARGET_GROUP_ARN: &str = "targetGroupArn";
    pub const SERVICE_REVISION_ARN: &str = "serviceRevisionArn";
    pub const TASK_DEFINITION_ARN: &str = "taskDefinitionArn";
    pub const LISTENER_ARN: &str = "listenerArn";
    pub const PRODUCTION_RULE_ARN: &str = "productionRuleArn";
    pub const RULE_ARNS: &str = "ruleArns";
    pub const CREATED_AT: &str = "createdAt";
    pub const UPDATED_AT: &str = "updatedAt";
    pub const SHIFTED_AT: &str = "shiftedAt";
    pub const LIVE_AT: &str = "liveAt";
    pub const DRAIN_UNTIL: &str = "drainUntil";
    pub const SUPERSEDED_BY: &str = "supersededBy";
    pub const RETIRED_AT: &str = "retiredAt";
    pub const EXPIRES_AT: &str = "expiresAt";
    pub const LAST_ERROR: &str = "lastError";
    pub const REASON: &str = "reason";
    pub const VERSION: &str = "version";
    pub const HISTORY: &str = "history";
    // The retention copy (`retention: service`), absent when there is none.
    pub const RETENTION_SERVICE_NAME: &str = "retentionServiceName";
    pub const RETENTION_SERVICE_ARN: &str = "retentionServiceArn";
    pub const RETENTION_TARGET_GROUP_NAME: &str = "retentionTargetGroupName";
    pub const RETENTION_TARGET_GROUP_ARN: &str = "retentionTargetGroupArn";
    pub const RETENTION_TASKS: &str = "retentionTasks";
    pub const RETENTION_STARTED_AT: &str = "retentionStartedAt";
    pub const RETENTION_HEALTHY_AT: &str = "retentionHealthyAt";
    pub const LEFT_PRODUCTION_AT: &str = "leftProductionAt";
    pub const RETAIN_UNTIL: &str = "retainUntil";
    pub const IDLE_CHECKS: &str = "idleChecks";
    pub const RETENTION_CLUSTER: &str = "retentionCluster";
}

/// Every attribute except `history`, which can grow long and is never needed to decide.
const ENTRY_ATTRIBUTES: [&str; 31] = [
    attr::SERVICE_ARN,
    attr::DEPLOYMENT_ID,
    attr::STATUS,
    attr::TARGET_GROUP_ARN,
    attr::SERVICE_REVISION_ARN,
    attr::TASK_DEFINITION_ARN,
    attr::LISTENER_ARN,
    attr::PRODUCTION_RULE_ARN,
    attr::RULE_ARNS,
    attr::CREATED_AT,
    attr::UPDATED_AT,
    attr::SHIFTED_AT,
    attr::LIVE_AT,
    attr::DRAIN_UNTIL,
    attr::SUPERSEDED_BY,
    attr::RETIRED_AT,
    attr::EXPIRES_AT,
    attr::LAST_ERROR,
    attr::REASON,
    attr::VERSION,
    attr::RETENTION_SERVICE_NAME,
    attr::RETENTION_SERVICE_ARN,
    attr::RETENTION_TARGET_GROUP_NAME,
    attr::RETENTION_TARGET_GROUP_ARN,
    attr::RETENTION_TASKS,
    attr::RETENTION_STARTED_AT,
    attr::RETENTION_HEALTHY_AT,
    attr::LEFT_PRODUCTION_AT,
    attr::RETAIN_UNTIL,
    attr::IDLE_CHECKS,
    attr::RETENTION_CLUSTER,
];

/// TransactWriteItems takes at most 100 items.
const MAX_TRANSACTION_ITEMS: usize = 100;

/// Why a ledger read or write failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// DynamoDB answered an error; a lost conditional write is [`LedgerError::is_conflict`].
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// A stored item is not a valid entry (an attribute missing or malformed).
    #[error("ledger item {service_arn} / {deployment_id} is unreadable: {reason}")]
    Corrupt {
        /// The item's partition key.
        service_arn: String,
        /// The item's sort key, as stored.
        deployment_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// One write would change more entries than a DynamoDB transaction takes.
    #[error(
        "too many ledger entries changed at once ({0}); the write limit is {MAX_TRANSACTION_ITEMS}"
    )]
    TooManyChanges(usize),
    /// The SDK refused to build the request (a required field missing).
    #[error("could not build the ledger write: {0}")]
    Request(String),
}

impl LedgerError {
    /// The entries changed since they were read: read again and decide again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, LedgerError::Aws(e) if e.kind == AwsErrorKind::Conflict)
    }
}

/// The ledger table: reads of a service's entries and their history, conditional writes.
#[derive(Clone, Debug)]
pub struct LedgerStore {
    client: ddb::Client,
    table: String,
}

impl LedgerStore {
    /// The ledger in `table`, through `client`.
    pub fn new(client: ddb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// All entries of a service (without history), strongly consistent.
    pub async fn load(&self, service_arn: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        let (projection, names) = projection();
        let mut entries = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_values(":pk", s(service_arn))
                .set_expression_attribute_names(Some(names.clone()))
                .projection_expression(&projection)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("Query", e))?;
            for item in page.items() {
                entries.push(entry_from_item(item)?);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(entries);
            }
        }
    }

    /// Every service that has entries in the ledger (for the CLI and the reconciler).
    pub async fn services(&self) -> Result<Vec<String>, LedgerError> {
        let mut services = std::collections::BTreeSet::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .projection_expression("#pk")
                .expression_attribute_names("#pk", attr::SERVICE_ARN)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("Scan", e))?;
            services.extend(
                page.items()
                    .iter()
                    .filter_map(|i| i.get(attr::SERVICE_ARN)?.as_s().ok().cloned()),
            );
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(services.into_iter().collect());
            }
        }
    }

    /// The history of one entry, oldest first.
    pub async fn history(
        &self,
        service_arn: &str,
        deployment_id: &DeploymentId,
    ) -> Result<Vec<HistoryRecord>, LedgerError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::SERVICE_ARN, s(service_arn))
            .key(attr::DEPLOYMENT_ID, s(deployment_id.as_str()))
            .consistent_read(true)
            .projection_expression("#h")
            .expression_attribute_names("#h", attr::HISTORY)
            .send()
            .await
            .map_err(|e| classify("GetItem", e))?;
        let Some(list) = item
            .item()
            .and_then(|i| i.get(attr::HISTORY))
            .and_then(|h| h.as_l().ok())
        else {
            return Ok(Vec::new());
        };
        Ok(list.iter().filter_map(history_from_value).collect())
    }

    /// Writes the changes all-or-nothing; a conflict means someone else wrote first.
    pub async fn commit(&self, changes: &[Change]) -> Result<(), LedgerError> {
        match changes {
            [] => Ok(()),
            [one] => {
                let update = update_of(&self.table, one)?;
                self.client
                    .update_item()
                    .table_name(update.table_name())
                    .set_key(Some(update.key().clone()))
                    .update_expression(update.update_expression())
                    .set_condition_expression(update.condition_expression().map(str::to_owned))
                    .set_expression_attribute_names(update.expression_attribute_names().cloned())
                    .set_expression_attribute_values(update.expression_attribute_values().cloned())
                    .send()
                    .await
                    .map_err(|e| classify("UpdateItem", e))?;
                Ok(())
            }
            many if many.len() > MAX_TRANSACTION_ITEMS => {
                Err(LedgerError::TooManyChanges(many.len()))
            }
            many => {
                let items = many
                    .iter()
                    .map(|c| {
                        Ok(TransactWriteItem::builder()
                            .update(update_of(&self.table, c)?)
                            .build())
                    })
                    .collect::<Result<Vec<_>, LedgerError>>()?;
                self.client
                    .transact_write_items()
                    .set_transact_items(Some(items))
                    .send()
                    .await
                    .map_err(|e| classify("TransactWriteItems", e))?;
                Ok(())
            }
        }
    }

    /// Records an error on an entry without deciding anything else (for `onError: continue`).
    pub async fn record_error(
        &self,
        service_arn: &str,
        deployment_id: &DeploymentId,
        history: &HistoryRecord,
    ) -> Result<(), LedgerError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(attr::SERVICE_ARN, s(service_arn))
            .key(attr::DEPLOYMENT_ID, s(deployment_id.as_str()))
            .update_expression("SET #err = :err, #upd = :upd, #h = list_append(if_not_exists(#h, :empty), :h), #v = #v + :one")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#err", attr::LAST_ERROR)
            .expression_attribute_names("#upd", attr::UPDATED_AT)
            .expression_attribute_names("#h", attr::HISTORY)
            .expression_attribute_names("#v", attr::VERSION)
            .expression_attribute_names("#pk", attr::SERVICE_ARN)
            .expression_attribute_values(":err", s(&history.change))
            .expression_attribute_values(":upd", s(&rfc3339(history.at)))
            .expression_attribute_values(":h", AttributeValue::L(vec![history_value(history)]))
            .expression_attribute_values(":empty", AttributeValue::L(vec![]))
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .send()
            .await
            .map_err(|e| classify("UpdateItem", e))?;
        Ok(())
    }
}

fn projection() -> (String, HashMap<String, String>) {
    let names: HashMap<String, String> = ENTRY_ATTRIBUTES
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("#a{i}"), (*a).to_owned()))
        .chain([("#pk".to_owned(), attr::SERVICE_ARN.to_owned())])
        .collect();
    let projection = (0..ENTRY_ATTRIBUTES.len())
        .map(|i| format!("#a{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    (projection, names)
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn history_value(h: &HistoryRecord) -> AttributeValue {
    let mut record = HashMap::from([
        ("at".to_owned(), s(&rfc3339(h.at))),
        ("stage".to_owned(), s(&h.stage)),
        ("executionId".to_owned(), s(&h.execution_id)),
        ("change".to_owned(), s(&h.change)),
    ]);
    if !h.actor.is_empty() {
        record.insert("actor".to_owned(), s(&h.actor));
    }
    AttributeValue::M(record)
}

fn history_from_value(v: &AttributeValue) -> Option<HistoryRecord> {
    let m = v.as_m().ok()?;
    let get = |k: &str| {
        m.get(k)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    Some(HistoryRecord {
        at: OffsetDateTime::parse(&get("at"), &Rfc3339).ok()?,
        stage: get("stage"),
        execution_id: get("executionId"),
        actor: get("actor"),
        change: get("change"),
    })
}

/// The conditional update that stores `change`: SET what has a value, REMOVE what has none,
/// append one history record, bump the version.
fn update_of(table: &str, change: &Change) -> Result<Update, LedgerError> {
    let e = &change.entry;
    let mut set: Vec<(&str, AttributeValue)> = vec![
        (attr::STATUS, s(e.status.as_str())),
        (attr::TARGET_GROUP_ARN, s(&e.target_group_arn)),
        (attr::SERVICE_REVISION_ARN, s(&e.service_revision_arn)),
        (attr::TASK_DEFINITION_ARN, s(&e.task_definition_arn)),
        (attr::LISTENER_ARN, s(&e.listener_arn)),
        (attr::PRODUCTION_RULE_ARN, s(&e.production_rule_arn)),
        (
            attr::RULE_ARNS,
            AttributeValue::L(e.rule_arns.iter().map(|a| s(a)).collect()),
        ),
        (attr::CREATED_AT, s(&rfc3339(e.created_at))),
        (attr::UPDATED_AT, s(&rfc3339(e.updated_at))),
        (
            attr::VERSION,
            AttributeValue::N((change.expected_version + 1).to_string()),
        ),
    ];
    let mut remove: Vec<&str> = Vec::new();
    let mut optional = |name: &'static str, value: Option<AttributeValue>| match value {
        Some(v) => set.push((name, v)),
        None => remove.push(name),
    };
    optional(attr::SHIFTED_AT, e.shifted_at.map(|t| s(&rfc3339(t))));
    optional(attr::LIVE_AT, e.live_at.map(|t| s(&rfc3339(t))));
    optional(attr::DRAIN_UNTIL, e.drain_until.map(|t| s(&rfc3339(t))));
    optional(
        attr::SUPERSEDED_BY,
        e.superseded_by.as_ref().map(|d| s(d.as_str())),
    );
    optional(attr::RETIRED_AT, e.retired_at.map(|t| s(&rfc3339(t))));
    optional(
        attr::EXPIRES_AT,
        e.expires_at.map(|n| AttributeValue::N(n.to_string())),
    );
    optional(attr::LAST_ERROR, e.last_error.as_ref().map(|m| s(m)));
    optional(attr::REASON, e.reason.as_ref().map(|m| s(m)));
    for (name, value) in retention_attributes(e.retention.as_ref()) {
        optional(name, value);
    }

    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let mut clauses = Vec::new();
    for (i, (name, value)) in set.into_iter().enumerate() {
        names.insert(format!("#s{i}"), name.to_owned());
        values.insert(format!(":s{i}"), value);
        clauses.push(format!("#s{i} = :s{i}"));
    }
    names.insert("#h".to_owned(), attr::HISTORY.to_owned());
    values.insert(
        ":h".to_owned(),
        AttributeValue::L(vec![history_value(&change.history)]),
    );
    values.insert(":empty".to_owned(), AttributeValue::L(vec![]));
    clauses.push("#h = list_append(if_not_exists(#h, :empty), :h)".to_owned());
    let mut expression = format!("SET {}", clauses.join(", "));
    if !remove.is_empty() {
        let removed: Vec<String> = remove
            .iter()
            .enumerate()
            .map(|(i, name)| {
                names.insert(format!("#r{i}"), (*name).to_owned());
                format!("#r{i}")
            })
            .collect();
        expression.push_str(&format!(" REMOVE {}", removed.join(", ")));
    }
    // DynamoDB rejects names and values the expressions do not use.
    let condition = if change.expected_version == 0 {
        names.insert("#pk".to_owned(), attr::SERVICE_ARN.to_owned());
        "attribute_not_exists(#pk)".to_owned()
    } else {
        names.insert("#v".to_owned(), attr::VERSION.to_owned());
        values.insert(
            ":expected".to_owned(),
            AttributeValue::N(change.expected_version.to_string()),
        );
        "#v = :expected".to_owned()
    };
    Update::builder()
        .table_name(table)
        .key(attr::SERVICE_ARN, s(&e.service_arn))
        .key(attr::DEPLOYMENT_ID, s(e.deployment_id.as_str()))
        .update_expression(expression)
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()
        .map_err(|e| LedgerError::Request(e.to_string()))
}

/// The stored form of a retention copy: every attribute with its value, or `None` (removed)
/// when the entry has no copy or the field no value.
fn retention_attributes(
    copy: Option<&RetainedCopy>,
) -> [(&'static str, Option<AttributeValue>); 11] {
    let time = |t: Option<OffsetDateTime>| t.map(|t| s(&rfc3339(t)));
    let number = |n: u32| Some(AttributeValue::N(n.to_string()));
    [
        (
            attr::RETENTION_SERVICE_NAME,
            copy.map(|c| s(&c.service_name)),
        ),
        (
            attr::RETENTION_SERVICE_ARN,
            copy.and_then(|c| c.service_arn.as_deref().map(s)),
        ),
        (
            attr::RETENTION_TARGET_GROUP_NAME,
            copy.map(|c| s(&c.target_group_name)),
        ),
        (
            attr::RETENTION_TARGET_GROUP_ARN,
            copy.and_then(|c| c.target_group_arn.as_deref().map(s)),
        ),
        (attr::RETENTION_TASKS, copy.and_then(|c| number(c.tasks))),
        (attr::RETENTION_STARTED_AT, time(copy.map(|c| c.started_at))),
        (
            attr::RETENTION_HEALTHY_AT,
            time(copy.and_then(|c| c.healthy_at)),
        ),
        (
            attr::LEFT_PRODUCTION_AT,
            time(copy.map(|c| c.left_production_at)),
        ),
        (attr::RETAIN_UNTIL, time(copy.and_then(|c| c.retain_until))),
        (attr::IDLE_CHECKS, copy.and_then(|c| number(c.idle_checks))),
        (attr::RETENTION_CLUSTER, copy.map(|c| s(&c.cluster_arn))),
    ]
}

fn entry_from_item(item: &HashMap<String, AttributeValue>) -> Result<LedgerEntry, LedgerError> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let service_arn = text(attr::SERVICE_ARN).unwrap_or_default();
    let raw_id = text(attr::DEPLOYMENT_ID).unwrap_or_default();
    let corrupt = |reason: String| LedgerError::Corrupt {
        service_arn: service_arn.clone(),
        deployment_id: raw_id.clone(),
        reason,
    };
    let required = |k: &str| text(k).ok_or_else(|| corrupt(format!("`{k}` is missing")));
    let time = |k: &str| -> Result<Option<OffsetDateTime>, LedgerError> {
        text(k)
            .map(|t| {
                OffsetDateTime::parse(&t, &Rfc3339)
                    .map_err(|e| corrupt(format!("`{k}` is not RFC 3339: {e}")))
            })
            .transpose()
    };
    let number = |k: &str| -> Result<Option<i64>, LedgerError> {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .map(|n| {
                n.parse::<i64>()
                    .map_err(|e| corrupt(format!("`{k}` is not a number: {e}")))
            })
            .transpose()
    };
    let status_raw = required(attr::STATUS)?;
    let count = |k: &str| -> Result<u32, LedgerError> {
        number(k)?
            .unwrap_or(0)
            .try_into()
            .map_err(|e| corrupt(format!("`{k}` is out of range: {e}")))
    };
    let retention = match text(attr::RETENTION_SERVICE_NAME) {
        None => None,
        Some(service_name) => Some(RetainedCopy {
            service_name,
            service_arn: text(attr::RETENTION_SERVICE_ARN),
            target_group_name: required(attr::RETENTION_TARGET_GROUP_NAME)?,
            target_group_arn: text(attr::RETENTION_TARGET_GROUP_ARN),
            tasks: count(attr::RETENTION_TASKS)?,
            started_at: time(attr::RETENTION_STARTED_AT)?
                .ok_or_else(|| corrupt(format!("`{}` is missing", attr::RETENTION_STARTED_AT)))?,
            healthy_at: time(attr::RETENTION_HEALTHY_AT)?,
            left_production_at: time(attr::LEFT_PRODUCTION_AT)?
                .ok_or_else(|| corrupt(format!("`{}` is missing", attr::LEFT_PRODUCTION_AT)))?,
            retain_until: time(attr::RETAIN_UNTIL)?,
            idle_checks: count(attr::IDLE_CHECKS)?,
            cluster_arn: required(attr::RETENTION_CLUSTER)?,
        }),
    };
    Ok(LedgerEntry {
        deployment_id: DeploymentId::parse(&raw_id).map_err(|e| corrupt(e.to_string()))?,
        status: Status::parse(&status_raw)
            .ok_or_else(|| corrupt(format!("unknown status {status_raw:?}")))?,
        target_group_arn: required(attr::TARGET_GROUP_ARN)?,
        service_revision_arn: text(attr::SERVICE_REVISION_ARN).unwrap_or_default(),
        task_definition_arn: text(attr::TASK_DEFINITION_ARN).unwrap_or_default(),
        listener_arn: text(attr::LISTENER_ARN).unwrap_or_default(),
        production_rule_arn: text(attr::PRODUCTION_RULE_ARN).unwrap_or_default(),
        rule_arns: item
            .get(attr::RULE_ARNS)
            .and_then(|v| v.as_l().ok())
            .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
            .unwrap_or_default(),
        created_at: time(attr::CREATED_AT)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        updated_at: time(attr::UPDATED_AT)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        shifted_at: time(attr::SHIFTED_AT)?,
        live_at: time(attr::LIVE_AT)?,
        drain_until: time(attr::DRAIN_UNTIL)?,
        superseded_by: text(attr::SUPERSEDED_BY).and_then(|d| DeploymentId::parse(&d).ok()),
        retired_at: time(attr::RETIRED_AT)?,
        expires_at: number(attr::EXPIRES_AT)?,
        last_error: text(attr::LAST_ERROR),
        reason: text(attr::REASON),
        retention,
        version: number(attr::VERSION)?.unwrap_or(0).max(0) as u64,
        service_arn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{RunningVersion, ServiceWiring};
    use time::macros::datetime;

    #[test]
    fn an_update_sets_present_fields_removes_absent_ones_and_is_conditional() {
        let running = RunningVersion {
            deployment_id: DeploymentId::parse("abc").unwrap(),
            service_revision_arn: "rev".into(),
            target_group_arn: "tg".into(),
            task_definition_arn: "td".into(),
        };
        let wiring = ServiceWiring {
            listener_arn: "l".into(),
            production_rule_arn: "r".into(),
        };
        let now = datetime!(2026-01-01 0:00 UTC);
        let mut entry = LedgerEntry::new("svc", &running, &wiring, Status::Live, now);
        entry.live_at = Some(now);
        let change = Change {
            expected_version: 3,
            entry,
            history: HistoryRecord {
                at: now,
                stage: "S".into(),
                execution_id: "x".into(),
                actor: "req-1".into(),
                change: "c".into(),
            },
        };
        let update = update_of("t", &change).unwrap();
        assert_eq!(update.condition_expression(), Some("#v = :expected"));
        let names = update.expression_attribute_names().unwrap();
        let values = update.expression_attribute_values().unwrap();
        assert_eq!(values[":expected"], AttributeValue::N("3".into()));
        let expression = update.update_expression();
        assert!(expression.contains("list_append"), "{expression}");
        let removed: Vec<&str> = expression
            .split(" REMOVE ")
            .nth(1)
            .unwrap()
            .split(", ")
            .map(|n| names[n].as_str())
            .collect();
        assert!(
            removed.contains(&attr::DRAIN_UNTIL) && !removed.contains(&attr::LIVE_AT),
            "{removed:?}"
        );
        let new = update_of(
            "t",
            &Change {
                expected_version: 0,
                ..change
            },
        )
        .unwrap();
        assert_eq!(
            new.condition_expression(),
            Some("attribute_not_exists(#pk)")
        );
    }

    #[test]
    fn history_records_keep_who_acted_and_older_records_read_without_it() {
        let record = HistoryRecord {
            at: datetime!(2026-01-01 0:00 UTC),
            stage: "POST_PRODUCTION_TRAFFIC_SHIFT".into(),
            execution_id: "ecs-exec-1".into(),
            actor: "8f5c0c1e-request".into(),
            change: "status live -> draining".into(),
        };
        let stored = history_value(&record);
        assert_eq!(stored.as_m().unwrap()["actor"], s("8f5c0c1e-request"));
        assert_eq!(
            stored.as_m().unwrap()["executionId"],
            s("ecs-exec-1"),
            "the execution ID keeps its attribute"
        );
        assert_eq!(history_from_value(&stored), Some(record.clone()));
        let mut older = stored.as_m().unwrap().clone();
        older.remove("actor");
        let read = history_from_value(&AttributeValue::M(older)).unwrap();
        assert_eq!(read.actor, "");
        assert_eq!(read.execution_id, "ecs-exec-1");
    }

    #[test]
    fn items_round_trip() {
        let running = RunningVersion {
            deployment_id: DeploymentId::parse("abc").unwrap(),
            service_revision_arn: "rev".into(),
            target_group_arn: "tg".into(),
            task_definition_arn: "td".into(),
        };
        let wiring = ServiceWiring {
            listener_arn: "l".into(),
            production_rule_arn: "r".into(),
        };
        let now = datetime!(2026-01-01 0:00 UTC);
        let mut entry = LedgerEntry::new("svc", &running, &wiring, Status::Draining, now);
        entry.rule_arns = vec!["r1".into()];
        entry.drain_until = Some(now);
        entry.superseded_by = Some(DeploymentId::parse("def").unwrap());
        entry.version = 4;
        round_trip(&entry);
        entry.status = Status::Retained;
        entry.retention = Some(RetainedCopy {
            service_name: "web-sg-abc".into(),
            service_arn: Some("arn:aws:ecs:us-east-1:1:service/c/web-sg-abc".into()),
            target_group_name: "sg-0123456789abcdef".into(),
            target_group_arn: None,
            tasks: 2,
            started_at: now,
            healthy_at: Some(now),
            left_production_at: now,
            retain_until: None,
            idle_checks: 1,
            cluster_arn: "arn:aws:ecs:us-east-1:1:cluster/c".into(),
        });
        round_trip(&entry);
    }

    /// Stores `entry` through the update expression and reads the item back.
    fn round_trip(entry: &LedgerEntry) {
        let now = entry.created_at;
        let change = Change {
            expected_version: 3,
            entry: entry.clone(),
            history: HistoryRecord {
                at: now,
                stage: "S".into(),
                execution_id: "x".into(),
                actor: "req-1".into(),
                change: "c".into(),
            },
        };
        let update = update_of("t", &change).unwrap();
        let names = update.expression_attribute_names().unwrap();
        let values = update.expression_attribute_values().unwrap();
        let mut item: HashMap<String, AttributeValue> = update.key().clone();
        for (placeholder, name) in names {
            if let Some(v) = values.get(&placeholder.replacen('#', ":", 1)) {
                item.insert(name.clone(), v.clone());
            }
        }
        assert_eq!(&entry_from_item(&item).unwrap(), entry);
    }

    #[test]
    fn an_entry_without_a_retention_copy_removes_its_attributes() {
        let running = RunningVersion {
            deployment_id: DeploymentId::parse("abc").unwrap(),
            service_revision_arn: "rev".into(),
            target_group_arn: "tg".into(),
            task_definition_arn: "td".into(),
        };
        let wiring = ServiceWiring {
            listener_arn: "l".into(),
            production_rule_arn: "r".into(),
        };
        let now = datetime!(2026-01-01 0:00 UTC);
        let entry = LedgerEntry::new("svc", &running, &wiring, Status::Retired, now);
        let update = update_of(
            "t",
            &Change {
                expected_version: 1,
                entry,
                history: HistoryRecord {
                    at: now,
                    stage: "S".into(),
                    execution_id: "x".into(),
                    actor: String::new(),
                    change: "c".into(),
                },
            },
        )
        .unwrap();
        let names = update.expression_attribute_names().unwrap();
        let removed: Vec<&str> = update
            .update_expression()
            .split(" REMOVE ")
            .nth(1)
            .unwrap()
            .split(", ")
            .map(|n| names[n].as_str())
            .collect();
        for name in [
            attr::RETENTION_SERVICE_NAME,
            attr::RETENTION_TARGET_GROUP_ARN,
            attr::RETAIN_UNTIL,
            attr::RETENTION_CLUSTER,
        ] {
            assert!(removed.contains(&name), "{name} kept: {removed:?}");
        }
    }

    #[test]
    fn a_retention_copy_missing_its_target_group_name_is_corrupt_not_dropped() {
        let mut item = HashMap::from([
            (attr::SERVICE_ARN.to_owned(), s("svc")),
            (attr::DEPLOYMENT_ID.to_owned(), s("abc")),
            (attr::STATUS.to_owned(), s("retained")),
            (attr::TARGET_GROUP_ARN.to_owned(), s("tg")),
            (attr::RETENTION_SERVICE_NAME.to_owned(), s("web-sg-abc")),
            (
                attr::RETENTION_STARTED_AT.to_owned(),
                s("2026-01-01T00:00:00Z"),
            ),
            (
                attr::LEFT_PRODUCTION_AT.to_owned(),
                s("2026-01-01T00:00:00Z"),
            ),
            (attr::RETENTION_CLUSTER.to_owned(), s("c")),
        ]);
        let err = entry_from_item(&item).unwrap_err().to_string();
        assert!(err.contains(attr::RETENTION_TARGET_GROUP_NAME), "{err}");
        item.insert(
            attr::RETENTION_TARGET_GROUP_NAME.to_owned(),
            s("sg-0123456789abcdef"),
        );
        let entry = entry_from_item(&item).unwrap();
        assert_eq!(entry.status, Status::Retained);
        assert_eq!(entry.retention.unwrap().tasks, 0);
    }
}
