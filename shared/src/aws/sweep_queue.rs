//! The sweep queue (SQS): the scheduled reconciler run puts one message per service on it, and
//! the reconciler function, fed by an SQS event source mapping, reconciles each message's
//! service. A sweep of any fleet size thus fits Lambda's 15-minute limit: each invocation does
//! one batch of a few services.
//!
//! A message is `{"serviceArn": "<ECS service ARN>"}` (nothing else, nothing secret): the same
//! shape as a manual single-service invocation of the reconciler.

use std::time::Duration;

use aws_sdk_sqs as sqs;
use serde_json::json;
use sqs::types::SendMessageBatchRequestEntry;

use super::{AwsError, AwsErrorKind, classify};
use crate::retry::Failure;

/// Entries per `SendMessageBatch` call (the API's maximum).
pub const BATCH: usize = 10;

/// Attempts per entry: an entry SQS fails without blaming the sender (`SenderFault` false:
/// throttling, an internal error), or a whole call failing transiently, is sent again this many
/// times in all, with a short backoff, before the service is reported as not enqueued.
pub const ENTRY_ATTEMPTS: u32 = 3;

/// The first backoff between attempts; it doubles each time.
const BACKOFF: Duration = Duration::from_millis(200);

/// The body of one service's message.
pub fn message_body(service_arn: &str) -> String {
    json!({ "serviceArn": service_arn }).to_string()
}

/// A service whose message SQS did not take after every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotEnqueued {
    pub service_arn: String,
    /// SQS's error code for the entry (or for the whole call).
    pub code: String,
    /// `error_kind` for logs and metrics (see [`AwsErrorKind::error_kind`]).
    pub error_kind: &'static str,
}

/// What one enqueue run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Messages SQS accepted.
    pub enqueued: usize,
    /// `SendMessageBatch` calls made, retries included.
    pub calls: usize,
    pub failed: Vec<NotEnqueued>,
}

/// The sweep queue, by its URL.
#[derive(Clone, Debug)]
pub struct SweepQueue {
    client: sqs::Client,
    url: String,
}

impl SweepQueue {
    pub fn new(client: sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Puts one message per service on the queue, [`BATCH`] per `SendMessageBatch` call,
    /// sending failed entries again (see [`ENTRY_ATTEMPTS`]).
    ///
    /// Errors: a call SQS rejects outright for a reason a retry cannot fix (access denied, the
    /// queue missing, an invalid request) ends the run at once with that error: every later
    /// batch would fail the same way. Messages sent before it stay queued (reconciling a service
    /// twice is harmless). Entries that still fail after every attempt are in
    /// [`Enqueued::failed`].
    pub async fn enqueue(&self, services: &[String]) -> Result<Enqueued, AwsError> {
        let mut run = Enqueued::default();
        for chunk in services.chunks(BATCH) {
            self.send_chunk(chunk, &mut run).await?;
        }
        Ok(run)
    }

    async fn send_chunk(&self, chunk: &[String], run: &mut Enqueued) -> Result<(), AwsError> {
        // (entry ID within the call, service); the ID is the service's index in the chunk.
        let mut pending: Vec<(String, &String)> = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), s))
            .collect();
        let mut last_failure: Vec<(String, String, AwsErrorKind)> = Vec::new();
        for attempt in 0..ENTRY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
            }
            let entries = pending
                .iter()
                .map(|(id, service)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(message_body(service))
                        .build()
                        .map_err(|e| {
                            AwsError::concluded(
                                "SendMessageBatch",
                                "ClientError",
                                AwsErrorKind::Invalid,
                                &e.to_string(),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            run.calls += 1;
            let answer = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    let e = classify("SendMessageBatch", e);
                    if Failure::of_aws(e.kind) != Failure::Transient {
                        return Err(e);
                    }
                    last_failure = pending
                        .iter()
                        .map(|(id, _)| (id.clone(), e.code.clone(), e.kind))
                        .collect();
                    continue;
                }
            };
            run.enqueued += answer
                .successful()
                .iter()
                .filter(|ok| pending.iter().any(|(id, _)| id == ok.id()))
                .count();
            last_failure.clear();
            let mut retry = Vec::new();
            for failed in answer.failed() {
                let Some(entry) = pending.iter().find(|(id, _)| id == failed.id()) else {
                    continue;
                };
                let kind = super::kind_of_code(failed.code());
                if failed.sender_fault() {
                    // The entry itself is wrong: sending it again fails the same way.
                    run.failed.push(NotEnqueued {
                        service_arn: entry.1.clone(),
                        code: failed.code().to_owned(),
                        error_kind: kind.error_kind(),
                    });
                } else {
                    last_failure.push((entry.0.clone(), failed.code().to_owned(), kind));
                    retry.push(entry.clone());
                }
            }
            pending = retry;
            if pending.is_empty() {
                return Ok(());
            }
        }
        for (id, code, kind) in last_failure {
            if let Some((_, service)) = pending.iter().find(|(p, _)| *p == id) {
                run.failed.push(NotEnqueued {
                    service_arn: (*service).clone(),
                    code,
                    error_kind: kind.error_kind(),
                });
            }
        }
        Ok(())
    }
}
