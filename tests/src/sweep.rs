//! The reconciler's sweep queue in the local world: the queue and its dead-letter queue in moto,
//! named as `infra/template.yaml` names them for the stack `skewguard` (so the reconciler's role
//! of the template applies to them), and a local stand-in for Lambda's SQS event source mapping
//! ([`SweepQueue::deliver`]): it receives up to a batch of messages, invokes the function with
//! the SQS event Lambda would build, and deletes the messages the answer does not report in
//! `batchItemFailures` (a function error, or an answer that cannot be read, fails the whole
//! batch, as Lambda does); [`SweepQueue::consume`] runs several such pollers at once, as the
//! mapping does up to its `MaximumConcurrency`.

use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};

use crate::aws::{ACCOUNT_ID, REGION};
use crate::lambda::{InvokeError, LocalFunction};
use crate::moto::WorldError;

/// The sweep queue's name (`${AWS::StackName}-sweep`).
pub const QUEUE: &str = "skewguard-sweep";
/// Its dead-letter queue's name.
pub const DEAD_LETTERS: &str = "skewguard-sweep-dead-letters";
/// The environment variable the reconciler reads the queue's URL from.
pub const QUEUE_URL_ENV: &str = skewguard_core::cold_start::SWEEP_QUEUE_ENV;

/// The sweep queue in moto.
#[derive(Debug, Clone)]
pub struct SweepQueue {
    pub client: aws_sdk_sqs::Client,
    pub url: String,
    pub dead_letters_url: String,
}

/// One batch delivered to the function.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The batch's messages: (message ID, body).
    pub messages: Vec<(String, String)>,
    /// The function's answer, or its error.
    pub answer: Result<Value, InvokeError>,
    /// The message IDs left on the queue (reported failed, or the whole batch on an error).
    pub failed: Vec<String>,
    /// Their receipt handles, to make them visible again ([`SweepQueue::make_visible`]).
    pub failed_receipts: Vec<String>,
    /// How long the invocation took.
    pub took: Duration,
}

fn aws_error(operation: &str) -> impl FnOnce(String) -> WorldError + '_ {
    move |message| WorldError::Aws {
        operation: operation.to_owned(),
        message,
    }
}

impl SweepQueue {
    /// Creates the queue and its dead-letter queue (redrive after `max_receives` receives).
    pub async fn create(
        client: &aws_sdk_sqs::Client,
        max_receives: u32,
    ) -> Result<SweepQueue, WorldError> {
        let dead_letters_url = client
            .create_queue()
            .queue_name(DEAD_LETTERS)
            .send()
            .await
            .map_err(|e| aws_error("CreateQueue")(format!("{e:?}")))?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let redrive = json!({
            "deadLetterTargetArn": format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{DEAD_LETTERS}"),
            "maxReceiveCount": max_receives,
        });
        let url = client
            .create_queue()
            .queue_name(QUEUE)
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .send()
            .await
            .map_err(|e| aws_error("CreateQueue")(format!("{e:?}")))?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        Ok(SweepQueue {
            client: client.clone(),
            url,
            dead_letters_url,
        })
    }

    /// The variable that gives the reconciler this queue.
    pub fn env(&self) -> (String, String) {
        (QUEUE_URL_ENV.to_owned(), self.url.clone())
    }

    /// Receives up to `batch_size` messages (at most 10 per call, like the event source mapping),
    /// invisible for `visibility` while the function works on them.
    pub async fn receive(
        &self,
        batch_size: usize,
        visibility: Duration,
    ) -> Result<Vec<Message>, WorldError> {
        let mut messages = Vec::new();
        while messages.len() < batch_size {
            let want = (batch_size - messages.len()).min(10) as i32;
            let answer = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(want)
                .visibility_timeout(visibility.as_secs() as i32)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(|e| aws_error("ReceiveMessage")(format!("{e:?}")))?;
            let got = answer.messages().to_vec();
            if got.is_empty() {
                break;
            }
            messages.extend(got);
        }
        Ok(messages)
    }

    /// The SQS event Lambda builds for a batch of this queue's messages.
    pub fn event(messages: &[Message]) -> Value {
        let records: Vec<Value> = messages
            .iter()
            .map(|m| {
                let attributes: serde_json::Map<String, Value> = m
                    .attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "messageId": m.message_id(),
                    "receiptHandle": m.receipt_handle(),
                    "body": m.body(),
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{QUEUE}"),
                    "awsRegion": REGION,
                })
            })
            .collect();
        json!({ "Records": records })
    }

    /// One poll of the event source mapping: up to `batch_size` messages to `function`; `None`
    /// when the queue had nothing visible.
    pub async fn deliver(
        &self,
        function: &LocalFunction,
        batch_size: usize,
        timeout: Duration,
    ) -> Result<Option<Delivery>, WorldError> {
        self.deliver_with(function, batch_size, timeout, timeout * 6)
            .await
    }

    /// [`SweepQueue::deliver`] with the messages invisible for `visibility` while the function
    /// works on them (and after it reported them failed).
    pub async fn deliver_with(
        &self,
        function: &LocalFunction,
        batch_size: usize,
        timeout: Duration,
        visibility: Duration,
    ) -> Result<Option<Delivery>, WorldError> {
        let messages = self.receive(batch_size, visibility).await?;
        if messages.is_empty() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let answer = function.invoke(Self::event(&messages), timeout).await;
        let took = started.elapsed();
        let all: Vec<String> = messages
            .iter()
            .filter_map(|m| m.message_id().map(str::to_owned))
            .collect();
        let failed: Vec<String> = match &answer {
            Ok(answer) => match answer.get("batchItemFailures").and_then(Value::as_array) {
                Some(failures) => {
                    let ids: Option<Vec<String>> = failures
                        .iter()
                        .map(|f| {
                            f.get("itemIdentifier")
                                .and_then(Value::as_str)
                                .filter(|id| all.iter().any(|a| a == id))
                                .map(str::to_owned)
                        })
                        .collect();
                    // An identifier that names no message of the batch fails the whole batch.
                    ids.unwrap_or_else(|| all.clone())
                }
                None => Vec::new(),
            },
            Err(_) => all.clone(),
        };
        let mut failed_receipts = Vec::new();
        for message in &messages {
            let id = message.message_id().unwrap_or_default();
            if failed.iter().any(|f| f == id) {
                failed_receipts.push(message.receipt_handle().unwrap_or_default().to_owned());
                continue;
            }
            self.client
                .delete_message()
                .queue_url(&self.url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .map_err(|e| aws_error("DeleteMessage")(format!("{e:?}")))?;
        }
        Ok(Some(Delivery {
            messages: messages
                .iter()
                .map(|m| {
                    (
                        m.message_id().unwrap_or_default().to_owned(),
                        m.body().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
            answer,
            failed,
            failed_receipts,
            took,
        }))
    }

    /// Ends a received message's visibility timeout now, as if it had run out.
    pub async fn make_visible(&self, receipt_handle: &str) -> Result<(), WorldError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| aws_error("ChangeMessageVisibility")(format!("{e:?}")))?;
        Ok(())
    }

    /// Delivers batches until no message is visible (failed ones stay invisible for six times
    /// `timeout`, as the template's visibility timeout keeps them).
    pub async fn drain(
        &self,
        function: &LocalFunction,
        batch_size: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, WorldError> {
        let mut deliveries = Vec::new();
        while let Some(delivery) = self.deliver(function, batch_size, timeout).await? {
            deliveries.push(delivery);
        }
        Ok(deliveries)
    }

    /// Lambda's SQS event source mapping at a `MaximumConcurrency` of `functions.len()`: each
    /// function (one execution environment, one process) polls the queue in a loop of its own,
    /// receiving up to `batch_size` messages (invisible for `visibility`), invoking, and deleting
    /// what the answer does not report failed. A poll that finds nothing visible waits and polls
    /// again while messages are in flight (another environment's batch, or failed ones waiting
    /// out their visibility to be received again, until the queue's redrive moves them to the
    /// dead-letter queue). Returns every delivery, environment by environment.
    pub async fn consume(
        &self,
        functions: &[std::sync::Arc<LocalFunction>],
        batch_size: usize,
        timeout: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, WorldError> {
        let mut pollers = tokio::task::JoinSet::new();
        for function in functions {
            let (queue, function) = (self.clone(), function.clone());
            pollers.spawn(async move {
                let mut deliveries = Vec::new();
                loop {
                    match queue
                        .deliver_with(&function, batch_size, timeout, visibility)
                        .await?
                    {
                        Some(delivery) => deliveries.push(delivery),
                        None if queue.depth().await? == (0, 0) => return Ok(deliveries),
                        None => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            });
        }
        let mut all = Vec::new();
        while let Some(done) = pollers.join_next().await {
            let deliveries: Result<Vec<Delivery>, WorldError> =
                done.map_err(|e| aws_error("event source mapping")(e.to_string()))?;
            all.extend(deliveries?);
        }
        Ok(all)
    }

    /// Messages on the queue: (visible, in flight).
    pub async fn depth(&self) -> Result<(u64, u64), WorldError> {
        let answer = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| aws_error("GetQueueAttributes")(format!("{e:?}")))?;
        let get = |name: QueueAttributeName| {
            answer
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}

/// The `Scheduled Event` EventBridge sends on the reconciler's schedule.
pub fn scheduled_event() -> Value {
    json!({
        "version": "0",
        "id": "5a1c5c1e-0000-4000-8000-000000000001",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "region": REGION,
        "resources": [format!("arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/skewguard-reconcile")],
        "detail": {},
    })
}

/// The message IDs the deliveries left on the queue (an answer names only the failures: what was
/// reconciled is read from the ledger, the listener and the function's logs).
pub fn failed_ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .flat_map(|d| d.failed.iter().cloned())
        .collect()
}
