//! CloudWatch metrics as log lines: the embedded metric format (EMF).
//!
//! A process writes one JSON line to stdout; CloudWatch Logs (a Lambda's log group, or
//! the runner's through the `awslogs` driver) reads the `_aws` block and records each
//! named value as a metric. No `PutMetricData` call, no SDK client, no request billed:
//! the line costs its log bytes only.
//!
//! ```json
//! {"_aws":{"Timestamp":1767225600000,"CloudWatchMetrics":[{"Namespace":"ServerlessComfyUI",
//!   "Dimensions":[["Stack"]],"Metrics":[{"Name":"ExecutionSeconds","Unit":"Seconds"}]}]},
//!  "Stack":"my-stack","ExecutionSeconds":11.2}
//! ```
//!
//! Every metric the project publishes is named here ([`Name`]) and nowhere else in
//! code; template.yaml's dashboard and alarms reference exactly these names (a test
//! reads the template). Who publishes what:
//!
//! | metric | unit | from | when |
//! |---|---|---|---|
//! | `JobsQueued`, `JobsRunning` | Count | `dispatch` | each tick: unclaimed queued jobs, busy runners |
//! | `JobsExpired`, `JobsFailed` | Count | `dispatch` | each tick: jobs it expired, dead-lettered jobs it failed |
//! | `CapacityErrors` | Count | `dispatch` | a scale decision that met a capacity error, or a launch-failure event |
//! | `JobsSucceeded`, `JobsFailed`, `JobsCanceled` | Count | the runner | a job it finished |
//! | `QueueWaitSeconds`, `ExecutionSeconds`, `GpuSeconds` | Seconds | the runner | a job it finished (`GpuSeconds`: the time the job held the GPU, ComfyUI's execution) |
//!
//! Publishing is on when `SERVERLESS_COMFYUI_METRICS_STACK` names the stack (the
//! template sets it to the stack name, the metrics' one dimension); off otherwise
//! (tests, the local stack).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// The namespace of every metric.
pub const NAMESPACE: &str = "ServerlessComfyUI";
/// The variable naming the stack (the `Stack` dimension); unset: no metrics.
pub const STACK_VAR: &str = "SERVERLESS_COMFYUI_METRICS_STACK";

/// Every metric the project publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    JobsQueued,
    JobsRunning,
    JobsSucceeded,
    JobsFailed,
    JobsCanceled,
    JobsExpired,
    CapacityErrors,
    QueueWaitSeconds,
    ExecutionSeconds,
    GpuSeconds,
}

impl Name {
    pub const ALL: [Name; 10] = [
        Name::JobsQueued,
        Name::JobsRunning,
        Name::JobsSucceeded,
        Name::JobsFailed,
        Name::JobsCanceled,
        Name::JobsExpired,
        Name::CapacityErrors,
        Name::QueueWaitSeconds,
        Name::ExecutionSeconds,
        Name::GpuSeconds,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Name::JobsQueued => "JobsQueued",
            Name::JobsRunning => "JobsRunning",
            Name::JobsSucceeded => "JobsSucceeded",
            Name::JobsFailed => "JobsFailed",
            Name::JobsCanceled => "JobsCanceled",
            Name::JobsExpired => "JobsExpired",
            Name::CapacityErrors => "CapacityErrors",
            Name::QueueWaitSeconds => "QueueWaitSeconds",
            Name::ExecutionSeconds => "ExecutionSeconds",
            Name::GpuSeconds => "GpuSeconds",
        }
    }

    /// The CloudWatch unit.
    pub fn unit(self) -> &'static str {
        match self {
            Name::QueueWaitSeconds | Name::ExecutionSeconds | Name::GpuSeconds => "Seconds",
            _ => "Count",
        }
    }
}

/// A publisher for one stack.
#[derive(Debug, Clone)]
pub struct Emf {
    stack: String,
}

impl Emf {
    pub fn new(stack: impl Into<String>) -> Self {
        Emf {
            stack: stack.into(),
        }
    }

    /// On when [`STACK_VAR`] is set and not empty.
    pub fn from_env() -> Option<Emf> {
        std::env::var(STACK_VAR)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .map(Emf::new)
    }

    /// The EMF line for `values` at `at` (None when there is nothing to publish).
    pub fn line(&self, at: DateTime<Utc>, values: &[(Name, f64)]) -> Option<String> {
        if values.is_empty() {
            return None;
        }
        let metrics: Vec<Value> = values
            .iter()
            .map(|(name, _)| json!({"Name": name.as_str(), "Unit": name.unit()}))
            .collect();
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": at.timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Stack"]],
                    "Metrics": metrics,
                }],
            }),
        );
        root.insert("Stack".into(), Value::String(self.stack.clone()));
        for (name, value) in values {
            root.insert(name.as_str().into(), json!(value));
        }
        Some(Value::Object(root).to_string())
    }

    /// Writes the line to stdout, where CloudWatch Logs picks it up.
    pub fn publish(&self, values: &[(Name, f64)]) {
        if let Some(line) = self.line(Utc::now(), values) {
            use std::io::Write;
            // One write of the whole line, so it never interleaves with a log line.
            let _ = std::io::stdout()
                .lock()
                .write_all(format!("{line}\n").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_line_is_the_embedded_metric_format() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let line = Emf::new("my-stack")
            .line(
                at,
                &[(Name::ExecutionSeconds, 11.5), (Name::JobsSucceeded, 1.0)],
            )
            .unwrap();
        assert!(!line.contains('\n'), "one line");
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({
                "_aws": {
                    "Timestamp": 1_767_225_600_000_i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "ServerlessComfyUI",
                        "Dimensions": [["Stack"]],
                        "Metrics": [
                            {"Name": "ExecutionSeconds", "Unit": "Seconds"},
                            {"Name": "JobsSucceeded", "Unit": "Count"},
                        ],
                    }],
                },
                "Stack": "my-stack",
                "ExecutionSeconds": 11.5,
                "JobsSucceeded": 1.0,
            })
        );
    }

    #[test]
    fn nothing_to_publish_is_no_line() {
        assert_eq!(Emf::new("s").line(Utc::now(), &[]), None);
    }

    /// The dashboard and the alarms reference exactly the metrics published: every
    /// `ServerlessComfyUI` metric template.yaml names is one of [`Name::ALL`], and the
    /// dashboard shows each of the job metrics.
    #[test]
    fn the_template_references_exactly_the_published_names() {
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml"),
        )
        .unwrap();
        let published: Vec<&str> = Name::ALL.iter().map(|n| n.as_str()).collect();
        let mut referenced = Vec::new();
        // Alarms: `Namespace: ServerlessComfyUI` then `MetricName: X`.
        let lines: Vec<&str> = template.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim() == format!("Namespace: {NAMESPACE}") {
                let next = lines[i + 1].trim();
                let name = next.strip_prefix("MetricName: ").expect("a metric name");
                referenced.push(name.to_string());
            }
        }
        // The dashboard: `["ServerlessComfyUI", "X", ...]` and `[".", "X", ...]` rows
        // that follow one.
        let mut in_ours = false;
        for line in &lines {
            let row = line.trim().trim_start_matches('[');
            if let Some(rest) = row.strip_prefix(&format!("\"{NAMESPACE}\", \"")) {
                in_ours = true;
                referenced.push(rest.split('"').next().unwrap().to_string());
            } else if let Some(rest) = row.strip_prefix("\".\", \"") {
                if in_ours {
                    referenced.push(rest.split('"').next().unwrap().to_string());
                }
            } else if row.starts_with('"') && !row.starts_with("\"...\"") {
                in_ours = false;
            }
        }
        for name in &referenced {
            assert!(
                published.contains(&name.as_str()),
                "template.yaml references {name}, which nothing publishes"
            );
        }
        for name in [
            "JobsQueued",
            "JobsRunning",
            "JobsSucceeded",
            "JobsFailed",
            "JobsExpired",
            "QueueWaitSeconds",
            "ExecutionSeconds",
            "GpuSeconds",
            "CapacityErrors",
        ] {
            assert!(
                referenced.iter().any(|r| r == name),
                "template.yaml does not show {name}"
            );
        }
    }
}
