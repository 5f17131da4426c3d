//! The ledger table in DynamoDB. Every write is conditional on the version that was read, so two
//! concurrent invocations never lose each other's update; history is only ever appended.
//!
//! One table, partition key `serviceArn`, sort key `deploymentId`, holds four kinds of item,
//! told apart by the sort key ([`key`]):
//!
//! | item | `serviceArn` | `deploymentId` | holds |
//! |---|---|---|---|
//! | entry in play (not final) | the service | the deployment ID | the entry ([`attr`]), no history |
//! | archived entry (final) | the service | `~archive#<id>` | the final entry, `expiresAt` 30 days on |
//! | history record | the service | `~history#<id>#<at>#<suffix>` | one [`HistoryRecord`], `expiresAt` [`HISTORY_TTL`] on |
//! | services directory | `~services` | the service ARN (and `~layout`) | nothing else |
//!
//! Deployment IDs use letters, digits, `.`, `_` and `-` only, so every kind's `~` prefix sorts
//! after every ID: the hooks and the reconciler read a service with one Query of the range
//! `deploymentId < "~"` ([`LedgerStore::load`]) and never pay for its history or archive, however
//! long the service has lived. Items written by earlier releases (the history as a `history`
//! list on the entry, final entries under their plain key) are read as they are and moved to this
//! layout the first time they are loaded ([`LedgerStore::load`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb as ddb;
use ddb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::warn;

use super::{AwsError, AwsErrorKind, classify};
use crate::DeploymentId;
use crate::ledger::{HistoryRecord, LedgerEntry, RETENTION, RetainedCopy, Status};
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
    /// The history list of items written by earlier releases (moved to history items on load).
    pub const HISTORY: &str = "history";
    /// A history item's (and a legacy history list record's) time, RFC 3339.
    pub const AT: &str = "at";
    /// A history item's lifecycle stage or tool.
    pub const STAGE: &str = "stage";
    /// A history item's ECS execution ID or invocation.
    pub const EXECUTION_ID: &str = "executionId";
    /// A history item's actor: Lambda request ID or caller's IAM ARN.
    pub const ACTOR: &str = "actor";
    /// A history item's description of what changed.
    pub const CHANGE: &str = "change";
    /// The layout marker's layout number.
    pub const LAYOUT: &str = "layout";
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

/// Sort keys and partition keys of the items that are not entries in play.
pub mod key {
    use time::OffsetDateTime;
    use time::macros::format_description;

    use crate::DeploymentId;

    /// Every sort key of an item that is not an entry in play is at or after this one, and every
    /// deployment ID before it (IDs never contain `~`).
    pub const NOT_IN_PLAY: &str = "~";
    /// The partition of the services directory: one item per service ARN.
    pub const SERVICES: &str = "~services";
    /// The sort key, in [`SERVICES`], of the marker saying the directory is complete.
    pub const LAYOUT_MARKER: &str = "~layout";
    /// The current layout's number, stored on the marker.
    pub const LAYOUT: u32 = 2;

    /// `~archive#<id>`: where a final entry is kept until its TTL.
    pub fn archive(id: &DeploymentId) -> String {
        format!("~archive#{id}")
    }

    /// The prefix shared by every archived entry of a service.
    pub const ARCHIVE_PREFIX: &str = "~archive#";

    /// `~history#<id>#`: the prefix of every history item of one deployment ID.
    pub fn history_prefix(id: &DeploymentId) -> String {
        format!("~history#{id}#")
    }

    /// `~history#<id>#<at>#<suffix>`: one history record. `at` is UTC with nine fractional
    /// digits, so items sort by time; `suffix` tells records of the same instant apart.
    pub fn history(id: &DeploymentId, at: OffsetDateTime, suffix: &str) -> String {
        let fixed = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
        );
        let at = at
            .to_offset(time::UtcOffset::UTC)
            .format(&fixed)
            .unwrap_or_default();
        format!("{}{at}#{suffix}", history_prefix(id))
    }
}

/// How long a history item is kept after it is written (DynamoDB TTL on `expiresAt`): two years,
/// far longer than a deployment stays in flight plus the 30 days an archived entry is kept.
/// Setting it once, when the record is written, keeps every write's cost independent of how much
/// history exists; a version that stays live for longer loses its oldest lines.
pub const HISTORY_TTL: Duration = Duration::from_secs(730 * 24 * 3600);

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
    /// One write would change more entries than a DynamoDB transaction takes (each changed
    /// entry takes two or three items of it: the entry, its archive, its history record).
    #[error(
        "too many ledger entries changed at once ({0}); one transaction takes at most {MAX_TRANSACTION_ITEMS} items"
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

/// The ledger table: reads of a service's entries, archive and history; conditional writes.
#[derive(Clone, Debug)]
pub struct LedgerStore {
    client: ddb::Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

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

    /// The entries in play of a service (none final, no history), strongly consistent: one
    /// paginated Query of `deploymentId < "~"`, whose cost does not grow with history.
    ///
    /// An item written by an earlier release (with a `history` list, or final under its plain
    /// key) is moved to the current layout here, once, without changing its `version`: its
    /// records become history items, and a final one is archived and not returned. When that
    /// move cannot be made (a concurrent write, missing permissions) the item is returned as it
    /// was read and a warning logged; the next load tries again.
    pub async fn load(&self, service_arn: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        let items = self
            .query(
                service_arn,
                "#pk = :pk AND #sk < :kinds",
                (":kinds", key::NOT_IN_PLAY),
            )
            .await?;
        let mut entries = Vec::with_capacity(items.len());
        for item in &items {
            let entry = entry_from_item(item)?;
            let legacy = item.contains_key(attr::HISTORY) || entry.status.is_final();
            if !legacy {
                entries.push(entry);
                continue;
            }
            match self.migrate(&entry, &legacy_history(item)).await {
                Ok(()) if entry.status.is_final() => {}
                Ok(()) => entries.push(entry),
                Err(err) => {
                    warn!(service = %service_arn, deployment_id = %entry.deployment_id, error = %err, "could not move a ledger entry of an earlier release to the current layout; reading it as it is");
                    entries.push(entry);
                }
            }
        }
        Ok(entries)
    }

    /// The archived (final) entry of a deployment ID, if it ended within the last 30 days: a
    /// Query of that one key (as cheap as a GetItem, and no other permission), strongly
    /// consistent.
    pub async fn archived(
        &self,
        service_arn: &str,
        deployment_id: &DeploymentId,
    ) -> Result<Option<LedgerEntry>, LedgerError> {
        let items = self
            .query(
                service_arn,
                "#pk = :pk AND #sk = :archived",
                (":archived", key::archive(deployment_id).as_str()),
            )
            .await?;
        items.first().map(entry_from_item).transpose()
    }

    /// Every archived (final) entry of a service, by deployment ID (for the CLI and tests).
    pub async fn archive(&self, service_arn: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        let items = self
            .query(
                service_arn,
                "#pk = :pk AND begins_with(#sk, :prefix)",
                (":prefix", key::ARCHIVE_PREFIX),
            )
            .await?;
        items.iter().map(entry_from_item).collect()
    }

    /// The entries in play and the archived ones of a service, one per deployment ID (the one
    /// in play when an ID has both: its version runs again), by deployment ID. For the CLI and
    /// tests; the hooks and the reconciler read [`LedgerStore::load`] only.
    pub async fn load_with_archive(
        &self,
        service_arn: &str,
    ) -> Result<Vec<LedgerEntry>, LedgerError> {
        let mut by_id: BTreeMap<DeploymentId, LedgerEntry> = self
            .archive(service_arn)
            .await?
            .into_iter()
            .map(|e| (e.deployment_id.clone(), e))
            .collect();
        for entry in self.load(service_arn).await? {
            by_id.insert(entry.deployment_id.clone(), entry);
        }
        Ok(by_id.into_values().collect())
    }

    /// Every service that has entries in the ledger (for the CLI and the reconciler's sweep):
    /// a paginated Query of the services directory. A table written by an earlier release has no
    /// directory yet: it is built once from a Scan, then marked complete, so that no later call
    /// scans (when it cannot be written, the Scan's answer is still returned).
    pub async fn services(&self) -> Result<Vec<String>, LedgerError> {
        let items = self.query(key::SERVICES, "#pk = :pk", None).await?;
        let mut complete = false;
        let mut services = BTreeSet::new();
        for item in &items {
            match item.get(attr::DEPLOYMENT_ID).and_then(|v| v.as_s().ok()) {
                Some(sk) if sk == key::LAYOUT_MARKER => complete = true,
                Some(sk) if !sk.starts_with(key::NOT_IN_PLAY) => {
                    services.insert(sk.clone());
                }
                _ => {}
            }
        }
        if complete {
            return Ok(services.into_iter().collect());
        }
        let scanned = self.scan_services().await?;
        let missing: Vec<&String> = scanned.difference(&services).collect();
        if let Err(err) = self.write_directory(&missing).await {
            warn!(error = %err, "could not write the ledger's services directory; the next sweep scans again");
        }
        services.extend(scanned);
        Ok(services.into_iter().collect())
    }

    /// The history of one deployment ID (every entry that had it), oldest first: its history
    /// items, and the `history` list of an entry written by an earlier release not moved yet.
    pub async fn history(
        &self,
        service_arn: &str,
        deployment_id: &DeploymentId,
    ) -> Result<Vec<HistoryRecord>, LedgerError> {
        let legacy = self
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
        let mut records = legacy.item().map(legacy_history).unwrap_or_default();
        let unmoved = !records.is_empty();
        let items = self
            .query(
                service_arn,
                "#pk = :pk AND begins_with(#sk, :prefix)",
                (":prefix", key::history_prefix(deployment_id).as_str()),
            )
            .await?;
        for item in &items {
            let sk = item
                .get(attr::DEPLOYMENT_ID)
                .and_then(|v| v.as_s().ok())
                .map_or("", String::as_str);
            // A move cut short left some of the list's records as items too.
            if unmoved && sk.contains(LEGACY_SUFFIX) {
                continue;
            }
            records.extend(history_from_item(item));
        }
        records.sort_by_key(|r| r.at);
        Ok(records)
    }

    /// Writes the changes all-or-nothing in one TransactWriteItems; a conflict means someone else
    /// wrote first. Per changed entry: the entry in play is updated (or created) on its
    /// `version`, or, when it becomes final, deleted on its `version` and put to its archive;
    /// one history item is put; an entry created puts its service in the directory. The cost
    /// does not depend on how much history the entries have.
    pub async fn commit(&self, changes: &[Change]) -> Result<(), LedgerError> {
        if changes.is_empty() {
            return Ok(());
        }
        let items = transaction_of(&self.table, changes)?;
        if items.len() > MAX_TRANSACTION_ITEMS {
            return Err(LedgerError::TooManyChanges(changes.len()));
        }
        self.transact(items).await
    }

    /// Records an error on an entry (in play or archived) without deciding anything else (for
    /// `onError: continue`): sets `lastError` and puts a history item, whatever its version.
    pub async fn record_error(
        &self,
        entry: &LedgerEntry,
        history: &HistoryRecord,
    ) -> Result<(), LedgerError> {
        let sort_key = if entry.status.is_final() {
            key::archive(&entry.deployment_id)
        } else {
            entry.deployment_id.as_str().to_owned()
        };
        let update = Update::builder()
            .table_name(&self.table)
            .key(attr::SERVICE_ARN, s(&entry.service_arn))
            .key(attr::DEPLOYMENT_ID, s(&sort_key))
            .update_expression("SET #err = :err, #upd = :upd, #v = #v + :one")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#err", attr::LAST_ERROR)
            .expression_attribute_names("#upd", attr::UPDATED_AT)
            .expression_attribute_names("#v", attr::VERSION)
            .expression_attribute_names("#pk", attr::SERVICE_ARN)
            .expression_attribute_values(":err", s(&history.change))
            .expression_attribute_values(":upd", s(&rfc3339(history.at)))
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .build()
            .map_err(|e| LedgerError::Request(e.to_string()))?;
        let record = history_put(&self.table, entry, history, "error")?;
        self.transact(vec![
            TransactWriteItem::builder().update(update).build(),
            TransactWriteItem::builder().put(record).build(),
        ])
        .await
    }

    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<(), LedgerError> {
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(|e| classify("TransactWriteItems", e))?;
        Ok(())
    }

    /// Every item of a partition matching `condition` (on `#pk`, `#sk`, `:pk` and at most one
    /// more value), strongly consistent, every page.
    async fn query<'a>(
        &self,
        partition: &str,
        condition: &str,
        value: impl Into<Option<(&'a str, &'a str)>>,
    ) -> Result<Vec<Item>, LedgerError> {
        let mut items = Vec::new();
        let mut start = None;
        let value = value.into();
        loop {
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression(condition)
                .expression_attribute_names("#pk", attr::SERVICE_ARN)
                .expression_attribute_values(":pk", s(partition))
                .set_exclusive_start_key(start);
            if let Some((name, v)) = value {
                request = request
                    .expression_attribute_names("#sk", attr::DEPLOYMENT_ID)
                    .expression_attribute_values(name, s(v));
            }
            let page = request.send().await.map_err(|e| classify("Query", e))?;
            items.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// The services of a table written before the directory existed (read once).
    async fn scan_services(&self) -> Result<BTreeSet<String>, LedgerError> {
        let mut services = BTreeSet::new();
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
                    .filter_map(|i| i.get(attr::SERVICE_ARN)?.as_s().ok().cloned())
                    .filter(|arn| !arn.starts_with(key::NOT_IN_PLAY)),
            );
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(services);
            }
        }
    }

    /// Puts the services in the directory, then the marker saying it is complete.
    async fn write_directory(&self, services: &[&String]) -> Result<(), LedgerError> {
        for chunk in services.chunks(MAX_TRANSACTION_ITEMS) {
            let items = chunk
                .iter()
                .map(|arn| directory_put(&self.table, arn))
                .collect::<Result<Vec<_>, _>>()?;
            self.transact(items).await?;
        }
        let marker = Put::builder()
            .table_name(&self.table)
            .item(attr::SERVICE_ARN, s(key::SERVICES))
            .item(attr::DEPLOYMENT_ID, s(key::LAYOUT_MARKER))
            .item(attr::LAYOUT, AttributeValue::N(key::LAYOUT.to_string()))
            .build()
            .map_err(|e| LedgerError::Request(e.to_string()))?;
        self.transact(vec![TransactWriteItem::builder().put(marker).build()])
            .await
    }

    /// Moves an item of an earlier release to the current layout, keeping its `version` (a
    /// writer that read it before still writes it): its history list becomes history items
    /// (idempotent puts, in chunks a transaction takes), then, conditional on the version read,
    /// the list is removed, or the final entry is archived.
    async fn migrate(
        &self,
        entry: &LedgerEntry,
        history: &[HistoryRecord],
    ) -> Result<(), LedgerError> {
        let mut records = history
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let put = history_put(&self.table, entry, h, &format!("{LEGACY_SUFFIX}{i:06}"))?;
                Ok(TransactWriteItem::builder().put(put).build())
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        let mut last = vec![
            TransactWriteItem::builder()
                .put(directory_put_item(&self.table, &entry.service_arn)?)
                .build(),
        ];
        let names = HashMap::from([
            ("#v".to_owned(), attr::VERSION.to_owned()),
            ("#h".to_owned(), attr::HISTORY.to_owned()),
        ]);
        let values = HashMap::from([(
            ":read".to_owned(),
            AttributeValue::N(entry.version.to_string()),
        )]);
        let plain_key = || {
            HashMap::from([
                (attr::SERVICE_ARN.to_owned(), s(&entry.service_arn)),
                (
                    attr::DEPLOYMENT_ID.to_owned(),
                    s(entry.deployment_id.as_str()),
                ),
            ])
        };
        if entry.status.is_final() {
            let mut names = names;
            names.remove("#h");
            last.push(
                TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.table)
                            .set_key(Some(plain_key()))
                            .condition_expression("#v = :read")
                            .set_expression_attribute_names(Some(names))
                            .set_expression_attribute_values(Some(values))
                            .build()
                            .map_err(|e| LedgerError::Request(e.to_string()))?,
                    )
                    .build(),
            );
            last.push(
                TransactWriteItem::builder()
                    .put(archive_put(&self.table, entry, entry.version)?)
                    .build(),
            );
        } else {
            last.push(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(plain_key()))
                            .update_expression("REMOVE #h")
                            .condition_expression("#v = :read")
                            .set_expression_attribute_names(Some(names))
                            .set_expression_attribute_values(Some(values))
                            .build()
                            .map_err(|e| LedgerError::Request(e.to_string()))?,
                    )
                    .build(),
            );
        }
        let room = MAX_TRANSACTION_ITEMS - last.len();
        let tail = records.split_off(records.len() - records.len().min(room));
        for chunk in records.chunks(MAX_TRANSACTION_ITEMS) {
            self.transact(chunk.to_vec()).await?;
        }
        last.extend(tail);
        self.transact(last).await
    }
}

/// The suffix of the history items moved from an earlier release's `history` list.
const LEGACY_SUFFIX: &str = "legacy";

/// The one transaction of [`LedgerStore::commit`].
fn transaction_of(table: &str, changes: &[Change]) -> Result<Vec<TransactWriteItem>, LedgerError> {
    let mut items = Vec::with_capacity(changes.len() * 3);
    let mut created = BTreeSet::new();
    for change in changes {
        let e = &change.entry;
        let next = change.expected_version + 1;
        if e.status.is_final() {
            let plain_key = HashMap::from([
                (attr::SERVICE_ARN.to_owned(), s(&e.service_arn)),
                (attr::DEPLOYMENT_ID.to_owned(), s(e.deployment_id.as_str())),
            ]);
            if change.expected_version > 0 {
                // An item of an earlier release still carrying its history list is never
                // deleted: the write conflicts and the next load moves the list first.
                let delete = Delete::builder()
                    .table_name(table)
                    .set_key(Some(plain_key))
                    .condition_expression("#v = :expected AND attribute_not_exists(#h)")
                    .expression_attribute_names("#v", attr::VERSION)
                    .expression_attribute_names("#h", attr::HISTORY)
                    .expression_attribute_values(
                        ":expected",
                        AttributeValue::N(change.expected_version.to_string()),
                    )
                    .build()
                    .map_err(|e| LedgerError::Request(e.to_string()))?;
                items.push(TransactWriteItem::builder().delete(delete).build());
            }
            items.push(
                TransactWriteItem::builder()
                    .put(archive_put(table, e, next)?)
                    .build(),
            );
        } else {
            items.push(
                TransactWriteItem::builder()
                    .update(update_of(table, change)?)
                    .build(),
            );
        }
        items.push(
            TransactWriteItem::builder()
                .put(history_put(
                    table,
                    e,
                    &change.history,
                    &format!("v{next:020}"),
                )?)
                .build(),
        );
        if change.expected_version == 0 {
            created.insert(e.service_arn.as_str());
        }
    }
    for service in created {
        items.push(directory_put(table, service)?);
    }
    Ok(items)
}

/// The directory item of a service (idempotent).
fn directory_put_item(table: &str, service_arn: &str) -> Result<Put, LedgerError> {
    Put::builder()
        .table_name(table)
        .item(attr::SERVICE_ARN, s(key::SERVICES))
        .item(attr::DEPLOYMENT_ID, s(service_arn))
        .build()
        .map_err(|e| LedgerError::Request(e.to_string()))
}

fn directory_put(table: &str, service_arn: &str) -> Result<TransactWriteItem, LedgerError> {
    Ok(TransactWriteItem::builder()
        .put(directory_put_item(table, service_arn)?)
        .build())
}

/// The archive item of a final entry, at `version`, expiring with the entry (30 days after it
/// ended).
fn archive_put(table: &str, e: &LedgerEntry, version: u64) -> Result<Put, LedgerError> {
    Put::builder()
        .table_name(table)
        .set_item(Some(archive_item(e, version)))
        .build()
        .map_err(|e| LedgerError::Request(e.to_string()))
}

fn archive_item(e: &LedgerEntry, version: u64) -> Item {
    let mut item: Item = entry_attributes(e)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    item.insert(attr::SERVICE_ARN.to_owned(), s(&e.service_arn));
    item.insert(
        attr::DEPLOYMENT_ID.to_owned(),
        s(&key::archive(&e.deployment_id)),
    );
    item.insert(
        attr::VERSION.to_owned(),
        AttributeValue::N(version.to_string()),
    );
    let expires = e
        .expires_at
        .unwrap_or_else(|| (e.updated_at + RETENTION).unix_timestamp());
    item.insert(
        attr::EXPIRES_AT.to_owned(),
        AttributeValue::N(expires.to_string()),
    );
    item
}

/// The item a commit leaves for `e` at `version` (its history apart): under its deployment ID
/// while in play, archived under `~archive#<id>` once final. For tools that seed a ledger in
/// bulk (the bench's fleets); the hooks and the reconciler write through [`LedgerStore::commit`].
pub fn entry_item(e: &LedgerEntry, version: u64) -> HashMap<String, AttributeValue> {
    if e.status.is_final() {
        return archive_item(e, version);
    }
    let mut item: Item = entry_attributes(e)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    item.insert(attr::SERVICE_ARN.to_owned(), s(&e.service_arn));
    item.insert(attr::DEPLOYMENT_ID.to_owned(), s(e.deployment_id.as_str()));
    item.insert(
        attr::VERSION.to_owned(),
        AttributeValue::N(version.to_string()),
    );
    item
}

/// One history item, never overwriting another.
fn history_put(
    table: &str,
    e: &LedgerEntry,
    h: &HistoryRecord,
    suffix: &str,
) -> Result<Put, LedgerError> {
    let mut item = match history_value(h) {
        AttributeValue::M(m) => m,
        _ => HashMap::new(),
    };
    item.insert(attr::SERVICE_ARN.to_owned(), s(&e.service_arn));
    item.insert(
        attr::DEPLOYMENT_ID.to_owned(),
        s(&key::history(&e.deployment_id, h.at, suffix)),
    );
    item.insert(
        attr::EXPIRES_AT.to_owned(),
        AttributeValue::N((h.at + HISTORY_TTL).unix_timestamp().to_string()),
    );
    let legacy = suffix.starts_with(LEGACY_SUFFIX);
    let put = Put::builder().table_name(table).set_item(Some(item));
    // Records moved from a list are put again, identical, when a move is retried.
    let put = if legacy {
        put
    } else {
        put.condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", attr::SERVICE_ARN)
    };
    put.build().map_err(|e| LedgerError::Request(e.to_string()))
}

/// The `history` list of an item written by an earlier release (empty for current items).
fn legacy_history(item: &Item) -> Vec<HistoryRecord> {
    item.get(attr::HISTORY)
        .and_then(|h| h.as_l().ok())
        .map(|l| l.iter().filter_map(history_from_value).collect())
        .unwrap_or_default()
}

fn history_from_item(item: &Item) -> Option<HistoryRecord> {
    history_from_value(&AttributeValue::M(item.clone()))
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

/// The attributes of an entry that have a value, and the optional ones that have none.
fn entry_attributes(e: &LedgerEntry) -> Vec<(&'static str, AttributeValue)> {
    let (set, _) = entry_attributes_split(e);
    set
}

fn entry_attributes_split(
    e: &LedgerEntry,
) -> (Vec<(&'static str, AttributeValue)>, Vec<&'static str>) {
    let mut set: Vec<(&'static str, AttributeValue)> = vec![
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
    ];
    let mut remove: Vec<&'static str> = Vec::new();
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
    (set, remove)
}

/// The conditional update that stores an entry in play: SET what has a value, REMOVE what has
/// none, bump the version (its history record is an item of its own).
fn update_of(table: &str, change: &Change) -> Result<Update, LedgerError> {
    let e = &change.entry;
    let (mut set, remove) = entry_attributes_split(e);
    set.push((
        attr::VERSION,
        AttributeValue::N((change.expected_version + 1).to_string()),
    ));

    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let mut clauses = Vec::new();
    for (i, (name, value)) in set.into_iter().enumerate() {
        names.insert(format!("#s{i}"), name.to_owned());
        values.insert(format!(":s{i}"), value);
        clauses.push(format!("#s{i} = :s{i}"));
    }
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

/// An entry item, in play or archived (whose sort key is `~archive#<id>`).
fn entry_from_item(item: &Item) -> Result<LedgerEntry, LedgerError> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let service_arn = text(attr::SERVICE_ARN).unwrap_or_default();
    let sort_key = text(attr::DEPLOYMENT_ID).unwrap_or_default();
    let raw_id = sort_key
        .strip_prefix(key::ARCHIVE_PREFIX)
        .unwrap_or(&sort_key)
        .to_owned();
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
    use crate::ledger::{RetainedCopy, RunningVersion, ServiceWiring};
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
        assert!(
            !names.values().any(|n| n == attr::HISTORY),
            "the history is kept in items of its own: {expression}"
        );
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
        // The item a bulk seeder writes reads back the same, in play and archived.
        assert_eq!(entry_from_item(&entry_item(&entry, 4)).unwrap(), entry);
        entry.status = Status::Retired;
        entry.retention = None;
        entry.expires_at = Some(1_800_000_000);
        let archived = entry_item(&entry, 4);
        assert_eq!(
            archived[attr::DEPLOYMENT_ID].as_s().unwrap(),
            &key::archive(&entry.deployment_id)
        );
        assert_eq!(entry_from_item(&archived).unwrap(), entry);
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
