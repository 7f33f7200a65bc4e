//! The webhook delivery queue on SQS: one message per delivery to attempt.
//!
//! The `webhooks` Lambda sends a message for each delivery a stream record fans out
//! to, receives them through its SQS event source, and, when an attempt fails,
//! sends the message again **delayed** until the next attempt is due. SQS delays a
//! message by at most [`MAX_DELAY`] (15 minutes), so a longer wait of the retry
//! schedule is a chain of delayed messages, each finding the delivery not yet due and
//! sending itself on. The queue's redrive policy moves a message that fails to be
//! *processed* (not a receiver's 5xx, which is a recorded attempt) to its dead-letter
//! queue, which has an alarm.
//!
//! It is not a `jobs::ports::Queue` (whose names are the work and wake queues): only
//! the Lambda and the dispatch tick's safety net use it. [`WebhookQueue::receive`] and
//! [`WebhookQueue::delete`] are what Lambda's event source does, for emulators and
//! tests.

use std::time::Duration;

use aws_sdk_sqs::Client;
use jobs::ports::{QueueError, QueueResult, Received};
use tracing::Instrument;

/// The longest `DelaySeconds` SQS accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// The delivery queue.
#[derive(Clone)]
pub struct WebhookQueue {
    client: Client,
    url: String,
}

fn unavailable(op: &str, url: &str, err: &(dyn std::error::Error + 'static)) -> QueueError {
    QueueError::Unavailable(crate::error::describe(op, url, err))
}

/// A wait as `DelaySeconds`: rounded up (a message is never due early) and capped at
/// [`MAX_DELAY`].
pub fn delay_seconds(delay: Duration) -> i32 {
    let capped = delay.min(MAX_DELAY);
    (capped.as_secs() + u64::from(capped.subsec_nanos() > 0)).min(MAX_DELAY.as_secs()) as i32
}

impl WebhookQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        WebhookQueue {
            client,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `body`, visible after `delay` (capped at [`MAX_DELAY`]).
    pub async fn send(&self, body: &str, delay: Duration) -> QueueResult<String> {
        let span = tracing::debug_span!("sqs.send", queue = "webhooks", url = %self.url);
        let out = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay_seconds(delay))
            .send()
            .instrument(span)
            .await
            .map_err(|e| unavailable("SendMessage", &self.url, &e))?;
        Ok(out.message_id.unwrap_or_default())
    }

    /// Up to 10 messages, waiting at most `wait` (what Lambda's event source polls).
    pub async fn receive(
        &self,
        wait: Duration,
        visibility: Duration,
    ) -> QueueResult<Vec<Received>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(visibility.as_secs().clamp(1, 43_200) as i32)
            .send()
            .await
            .map_err(|e| unavailable("ReceiveMessage", &self.url, &e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Received {
                message_id: m.message_id.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
                receive_count: 1,
            })
            .collect())
    }

    /// Deletes a received message (what the event source does for a message not
    /// reported as failed).
    pub async fn delete(&self, receipt: &str) -> QueueResult<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| unavailable("DeleteMessage", &self.url, &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_and_stop_at_fifteen_minutes() {
        assert_eq!(delay_seconds(Duration::ZERO), 0);
        assert_eq!(delay_seconds(Duration::from_millis(1)), 1);
        assert_eq!(delay_seconds(Duration::from_secs(30)), 30);
        assert_eq!(delay_seconds(Duration::from_secs(3600)), 900);
    }
}
