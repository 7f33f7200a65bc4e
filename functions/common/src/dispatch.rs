//! The `dispatch` function: one handler for every event the template sends it,
//! told apart by the event's shape.
//!
//! | event | shape | what runs |
//! |---|---|---|
//! | SQS wake batch | `Records[].eventSource == "aws:sqs"` | one scale decision; on failure every message is reported back (`ReportBatchItemFailures`), so SQS redelivers them |
//! | the every-minute tick | `source` `aws.events` or `aws.scheduler`, `detail-type` `Scheduled Event` | [`Dispatcher::tick`]: re-enqueue, take over or fail lapsed leases, drain dead letters, expire, sweep, scale; then [`WebhookRelay::tick`]: re-enqueue overdue webhook deliveries, prune finished ones |
//! | Spot interruption warning, rebalance recommendation | `source` `aws.ec2`, `detail.instance-id` | `StopTask` each runner on that instance (SIGTERM: it hands its job back) |
//! | Auto Scaling launch failure | `source` `aws.autoscaling`, `EC2 Instance Launch Unsuccessful` | recorded as the fleet's capacity error (health, queued jobs' progress) |
//!
//! Anything else is an error, logged with its shape (its top-level keys, `source`,
//! `detail-type`): never its values, which could carry anything.

use std::sync::Arc;

use aws::EcsLauncher;
use aws::emf::{Emf, Name};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use jobs::dispatch::{Dispatcher, TickReport};
use jobs::ports::{LaunchError, StoreError};
use serde_json::Value;

use crate::Deployment;
use crate::webhooks::WebhookRelay;
use jobs::webhooks::deliver::DeliveryConfig;

pub const SPOT_WARNING: &str = "EC2 Spot Instance Interruption Warning";
pub const REBALANCE: &str = "EC2 Instance Rebalance Recommendation";
pub const LAUNCH_UNSUCCESSFUL: &str = "EC2 Instance Launch Unsuccessful";

/// What an event asks for.
#[derive(Debug)]
pub enum DispatchEvent {
    Wake(SqsEvent),
    Tick,
    /// A Spot notice (warning or rebalance) about one instance.
    Reclaim {
        instance_id: String,
        notice: String,
    },
    LaunchFailed {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("unknown event ({shape})")]
    Unknown { shape: String },
    #[error("malformed {kind} event: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("ECS: {0}")]
    Launch(#[from] LaunchError),
}

/// The shape of an event for a log line: top-level keys, and `source`,
/// `detail-type` and the first record's `eventSource` (names AWS defines), each cut
/// short. No other value.
pub fn shape(event: &Value) -> String {
    let cut = |s: &str| s.chars().take(64).collect::<String>();
    let Some(fields) = event.as_object() else {
        return format!("not an object but {}", kind_of(event));
    };
    let keys: Vec<String> = fields.keys().take(20).map(|k| cut(k)).collect();
    let mut parts = vec![format!("keys [{}]", keys.join(", "))];
    for name in ["source", "detail-type"] {
        if let Some(value) = fields.get(name).and_then(Value::as_str) {
            parts.push(format!("{name} {:?}", cut(value)));
        }
    }
    if let Some(source) = event
        .pointer("/Records/0/eventSource")
        .and_then(Value::as_str)
    {
        parts.push(format!("Records[0].eventSource {:?}", cut(source)));
    }
    parts.join(", ")
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn malformed(kind: &'static str) -> impl Fn(serde_json::Error) -> DispatchError {
    move |e| DispatchError::Malformed {
        kind,
        reason: e.to_string(),
    }
}

/// Tells the event kinds apart by shape.
pub fn classify(event: Value) -> Result<DispatchEvent, DispatchError> {
    let is_sqs = event
        .get("Records")
        .and_then(Value::as_array)
        .is_some_and(|records| {
            !records.is_empty()
                && records
                    .iter()
                    .all(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:sqs"))
        });
    if is_sqs {
        let batch = serde_json::from_value(event).map_err(malformed("SQS"))?;
        return Ok(DispatchEvent::Wake(batch));
    }
    let source = event.get("source").and_then(Value::as_str).unwrap_or("");
    let detail_type = event
        .get("detail-type")
        .and_then(Value::as_str)
        .unwrap_or("");
    match (source, detail_type) {
        ("aws.events" | "aws.scheduler", "Scheduled Event") => Ok(DispatchEvent::Tick),
        ("aws.ec2", SPOT_WARNING | REBALANCE) => {
            let notice = detail_type.to_string();
            let event: EventBridgeEvent<Value> =
                serde_json::from_value(event).map_err(malformed("EC2 notice"))?;
            let instance_id = event
                .detail
                .get("instance-id")
                .and_then(Value::as_str)
                .ok_or_else(|| DispatchError::Malformed {
                    kind: "EC2 notice",
                    reason: "no detail.instance-id".into(),
                })?
                .to_string();
            Ok(DispatchEvent::Reclaim {
                instance_id,
                notice,
            })
        }
        ("aws.autoscaling", LAUNCH_UNSUCCESSFUL) => {
            let event: EventBridgeEvent<Value> =
                serde_json::from_value(event).map_err(malformed("Auto Scaling"))?;
            let why = event
                .detail
                .get("StatusMessage")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            Ok(DispatchEvent::LaunchFailed {
                // The group's own words are bounded here: they end up in health.
                message: format!(
                    "Auto Scaling could not launch a GPU instance: {}",
                    why.chars().take(500).collect::<String>()
                ),
            })
        }
        _ => Err(DispatchError::Unknown {
            shape: shape(&event),
        }),
    }
}

/// The `dispatch` function's handler.
pub struct DispatchHandler {
    dispatcher: Dispatcher,
    launcher: Arc<EcsLauncher>,
    /// EMF metric lines (`aws::emf`), when the stack is named.
    metrics: Option<Emf>,
    /// The tick's webhook safety net, when the deployment has a delivery queue.
    webhooks: Option<WebhookRelay>,
}

impl DispatchHandler {
    pub fn new(deployment: &Deployment) -> Self {
        let launcher = Arc::new(deployment.launcher());
        let app = deployment.app();
        DispatchHandler {
            dispatcher: app.dispatcher(launcher.clone()),
            launcher,
            metrics: Emf::from_env(),
            webhooks: WebhookRelay::new(deployment, &app, DeliveryConfig::default()),
        }
    }

    fn publish(&self, values: &[(Name, f64)]) {
        if let Some(emf) = &self.metrics {
            emf.publish(values);
        }
    }

    /// Handles one event. Answers a `SqsBatchResponse` for a wake batch, the tick's
    /// report for a tick, the stopped tasks for a Spot notice.
    pub async fn handle(&self, event: Value) -> Result<Value, DispatchError> {
        let event = classify(event).inspect_err(|e| tracing::error!("dispatch: {e}"))?;
        match event {
            DispatchEvent::Wake(batch) => Ok(to_json(&self.wake(batch).await)),
            DispatchEvent::Tick => {
                let report = self.dispatcher.tick().await;
                tracing::info!(?report, "tick");
                self.publish(&tick_metrics(&report));
                if let Some(relay) = &self.webhooks {
                    match relay.tick().await {
                        Ok((requeued, pruned)) => {
                            tracing::info!(requeued, pruned, "tick: webhook deliveries")
                        }
                        Err(e) => tracing::error!(error = %e, "tick: webhook safety net failed"),
                    }
                }
                Ok(to_json(&report))
            }
            DispatchEvent::Reclaim {
                instance_id,
                notice,
            } => {
                tracing::warn!(instance = %instance_id, %notice, "stopping the instance's runners");
                let reason = format!("{notice} for {instance_id}");
                let stopped = self
                    .launcher
                    .stop_tasks_on_instance(&instance_id, &reason)
                    .await
                    .inspect_err(|e| tracing::error!("{notice}: {e}"))?;
                Ok(serde_json::json!({ "stopped": stopped }))
            }
            DispatchEvent::LaunchFailed { message } => {
                self.publish(&[(Name::CapacityErrors, 1.0)]);
                self.dispatcher.record_capacity_error(&message).await?;
                Ok(Value::Null)
            }
        }
    }

    /// One scale decision for the whole batch: the messages only say "look again".
    async fn wake(&self, batch: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        match self.dispatcher.scale().await {
            Ok(report) => {
                tracing::info!(?report, messages = batch.records.len(), "wake");
                if report.capacity_error.is_some() {
                    self.publish(&[(Name::CapacityErrors, 1.0)]);
                }
            }
            Err(e) => {
                // Reported back, the messages return after their visibility timeout;
                // the tick decides again meanwhile.
                tracing::error!(error = %e, "scale failed; the wake messages go back to the queue");
                for id in batch.records.into_iter().filter_map(|r| r.message_id) {
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = id;
                    response.batch_item_failures.push(failure);
                }
            }
        }
        response
    }
}

/// What a tick publishes: the jobs waiting for a runner and the busy runners (one
/// job each) as it saw them, the jobs it expired and the dead-lettered jobs it failed,
/// and a capacity error its scale decision met. Without a scale decision (the store
/// could not be read) only the moves it made. Nothing at all when every value is 0:
/// CloudWatch bills a custom metric for each hour it is written in, so an idle
/// deployment's ticks write none (the dashboard shows no data: nothing happened).
pub fn tick_metrics(report: &TickReport) -> Vec<(Name, f64)> {
    let mut out = vec![
        (Name::JobsExpired, f64::from(report.expired)),
        (Name::JobsFailed, f64::from(report.dead_lettered)),
    ];
    if let Some(scale) = &report.scale {
        out.push((Name::JobsQueued, scale.unclaimed_queued as f64));
        out.push((Name::JobsRunning, f64::from(scale.busy)));
        if scale.capacity_error.is_some() {
            out.push((Name::CapacityErrors, 1.0));
        }
    }
    if out.iter().all(|(_, v)| *v == 0.0) {
        out.clear();
    }
    out
}

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobs::dispatch::ScaleReport;

    #[test]
    fn a_tick_publishes_its_counts_and_a_capacity_error() {
        let mut report = TickReport {
            expired: 2,
            dead_lettered: 1,
            ..TickReport::default()
        };
        assert!(
            tick_metrics(&TickReport {
                scale: Some(ScaleReport::default()),
                ..TickReport::default()
            })
            .is_empty(),
            "an idle tick writes no metric (each costs by the hour written)"
        );
        assert_eq!(
            tick_metrics(&report),
            vec![(Name::JobsExpired, 2.0), (Name::JobsFailed, 1.0)],
            "no scale decision: only the moves"
        );
        report.scale = Some(ScaleReport {
            unclaimed_queued: 7,
            busy: 3,
            capacity_error: Some("VcpuLimitExceeded".into()),
            ..ScaleReport::default()
        });
        assert_eq!(
            tick_metrics(&report),
            vec![
                (Name::JobsExpired, 2.0),
                (Name::JobsFailed, 1.0),
                (Name::JobsQueued, 7.0),
                (Name::JobsRunning, 3.0),
                (Name::CapacityErrors, 1.0),
            ]
        );
    }
}
