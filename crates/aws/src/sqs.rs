//! The `Queue` port on SQS standard queues.
//!
//! Each [`QueueName`] maps to one queue URL from the configuration; the work and wake
//! queues carry a redrive policy to their dead-letter queues (set by the deployment
//! template, with `maxReceiveCount` far above the jobs' MaxAttempts, because a
//! receive is not an attempt: duplicates and pushed-back copies count too).
//!
//! **How the port's arguments become SQS's.** SQS counts in whole seconds and caps
//! everything:
//! - `wait` (long polling) is rounded *down* and capped at 20 s: the port promises to
//!   wait *at most* that long; zero is a short poll.
//! - `visibility` is rounded *up* and capped at 12 h: a message is never hidden for
//!   less than asked (a 200 ms visibility hides it for 1 s).
//! - `max` is clamped to 1..=10 per call.
//!
//! **What SQS promises less than a local queue** (and the conformance suite's
//! strictest variant checks): a delete or visibility change with a *stale* receipt
//! (one from an earlier receive of a message received again since) may fail with
//! `ReceiptHandleIsInvalid`/`MessageNotInflight` (mapped to
//! [`QueueError::StaleReceipt`]) *or* succeed without acting, and deleting an already
//! deleted message succeeds. The adapter maps the errors it gets and does not invent
//! refusals SQS did not make; callers already treat both outcomes as possible (the
//! port says so). Short polls (`wait` = 0) sample a subset of SQS's servers and may
//! return nothing while messages exist; long polls do not.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError;
use aws_sdk_sqs::operation::delete_message::DeleteMessageError;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use jobs::ports::{Queue, QueueDepth, QueueError, QueueName, QueueResult, Received};
use tracing::Instrument;

use crate::config::QueueUrls;
use crate::error::describe;

/// SQS's largest long-poll wait.
const MAX_WAIT_SECS: u64 = 20;
/// SQS's largest visibility timeout (12 hours).
const MAX_VISIBILITY_SECS: u64 = 12 * 60 * 60;
/// SQS's largest receive batch.
const MAX_BATCH: usize = 10;

/// SQS behind the `Queue` port.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    urls: QueueUrls,
}

impl SqsQueue {
    pub fn new(client: Client, urls: QueueUrls) -> Self {
        SqsQueue { client, urls }
    }

    /// The queues' URLs (what a process configured from the environment reads).
    pub fn urls(&self) -> &QueueUrls {
        &self.urls
    }

    fn url(&self, queue: QueueName) -> &str {
        match queue {
            QueueName::Work => &self.urls.work,
            QueueName::Wake => &self.urls.wake,
            QueueName::WorkDeadLetter => &self.urls.work_dead_letter,
            QueueName::WakeDeadLetter => &self.urls.wake_dead_letter,
        }
    }
}

/// Whole seconds of long polling: never more than asked, at most 20.
fn wait_seconds(wait: Duration) -> i32 {
    wait.as_secs().min(MAX_WAIT_SECS) as i32
}

/// Whole seconds of visibility: never less than asked, at most 12 hours.
fn visibility_seconds(visibility: Duration) -> i32 {
    let secs = visibility.as_secs() + u64::from(visibility.subsec_nanos() > 0);
    secs.min(MAX_VISIBILITY_SECS) as i32
}

fn unavailable(op: &str, url: &str, err: &(dyn std::error::Error + 'static)) -> QueueError {
    QueueError::Unavailable(describe(op, url, err))
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, queue: QueueName, body: &str) -> QueueResult<String> {
        let url = self.url(queue);
        let span = tracing::debug_span!("sqs.send", queue = queue.as_str(), url);
        let out = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .instrument(span)
            .await
            .map_err(|e| unavailable("SendMessage", url, &e))?;
        Ok(out.message_id.unwrap_or_default())
    }

    async fn receive(
        &self,
        queue: QueueName,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> QueueResult<Vec<Received>> {
        let url = self.url(queue);
        let span = tracing::debug_span!("sqs.receive", queue = queue.as_str(), url);
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(wait_seconds(wait))
            .visibility_timeout(visibility_seconds(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .instrument(span)
            .await
            .map_err(|e| unavailable("ReceiveMessage", url, &e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                Received {
                    message_id: m.message_id.unwrap_or_default(),
                    receipt: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    receive_count,
                }
            })
            .collect())
    }

    async fn change_visibility(
        &self,
        queue: QueueName,
        receipt: &str,
        visibility: Duration,
    ) -> QueueResult<()> {
        let url = self.url(queue);
        let span = tracing::debug_span!("sqs.change_visibility", queue = queue.as_str(), url);
        match self
            .client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(visibility_seconds(visibility))
            .send()
            .instrument(span)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(
                    ChangeMessageVisibilityError::MessageNotInflight(_)
                    | ChangeMessageVisibilityError::ReceiptHandleIsInvalid(_),
                ) => Err(QueueError::StaleReceipt),
                _ => Err(unavailable("ChangeMessageVisibility", url, &e)),
            },
        }
    }

    async fn delete(&self, queue: QueueName, receipt: &str) -> QueueResult<()> {
        let url = self.url(queue);
        let span = tracing::debug_span!("sqs.delete", queue = queue.as_str(), url);
        match self
            .client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .instrument(span)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(DeleteMessageError::ReceiptHandleIsInvalid(_)) => {
                    Err(QueueError::StaleReceipt)
                }
                _ => Err(unavailable("DeleteMessage", url, &e)),
            },
        }
    }

    async fn depth(&self, queue: QueueName) -> QueueResult<QueueDepth> {
        let url = self.url(queue);
        let span = tracing::debug_span!("sqs.depth", queue = queue.as_str(), url);
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .instrument(span)
            .await
            .map_err(|e| unavailable("GetQueueAttributes", url, &e))?;
        let count = |name: &QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(name))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: count(&QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_down_and_visibilities_round_up_within_sqs_limits() {
        assert_eq!(wait_seconds(Duration::from_millis(50)), 0, "a short poll");
        assert_eq!(wait_seconds(Duration::from_millis(2900)), 2);
        assert_eq!(wait_seconds(Duration::from_secs(60)), 20);
        assert_eq!(visibility_seconds(Duration::ZERO), 0, "zero reveals");
        assert_eq!(visibility_seconds(Duration::from_millis(200)), 1);
        assert_eq!(visibility_seconds(Duration::from_secs(30)), 30);
        assert_eq!(visibility_seconds(Duration::from_secs(86_400)), 43_200);
    }
}
