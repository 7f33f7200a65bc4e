//! Configuration from environment variables, and the SDK clients built once.
//!
//! A deployed function or runner knows its resources by name only through its
//! environment (the template sets them). [`AwsConfig::from_env`] reads them all and
//! fails fast with one error naming every variable that is missing or empty, so a
//! broken deployment says what to fix on its first line of log, not on its first
//! request.
//!
//! | variable | what |
//! |---|---|
//! | `SERVERLESS_COMFYUI_TABLE` | the DynamoDB table |
//! | `SERVERLESS_COMFYUI_BUCKET` | the S3 bucket (workflows, assets, outputs) |
//! | `SERVERLESS_COMFYUI_WORK_QUEUE_URL` | the SQS work queue (one message per job) |
//! | `SERVERLESS_COMFYUI_WAKE_QUEUE_URL` | the SQS wake queue (dispatcher nudges) |
//! | `SERVERLESS_COMFYUI_WORK_DLQ_URL` | the work queue's dead-letter queue |
//! | `SERVERLESS_COMFYUI_WAKE_DLQ_URL` | the wake queue's dead-letter queue |
//! | `SERVERLESS_COMFYUI_ECS_CLUSTER` | the ECS cluster the runners run in |
//! | `SERVERLESS_COMFYUI_TASK_DEFINITION` | the runner task definition (family or ARN) |
//! | `SERVERLESS_COMFYUI_CAPACITY_PROVIDER` | the capacity provider RunTask places on |
//! | `SERVERLESS_COMFYUI_ECS_STARTED_BY` | optional; `startedBy` on RunTask (default `serverless-comfyui`) |
//!
//! The runner reads only the first six ([`DataConfig`]): it launches nothing. Its own
//! settings are read by `gpu_runner::aws_env`.
//!
//! Credentials, region and endpoints are not ours: they come from the SDK's usual
//! chain (`AWS_REGION`, the Lambda or ECS role, `AWS_ENDPOINT_URL*` for emulators).

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::ecs::EcsSettings;

const TABLE: &str = "SERVERLESS_COMFYUI_TABLE";
const BUCKET: &str = "SERVERLESS_COMFYUI_BUCKET";
const WORK_QUEUE: &str = "SERVERLESS_COMFYUI_WORK_QUEUE_URL";
const WAKE_QUEUE: &str = "SERVERLESS_COMFYUI_WAKE_QUEUE_URL";
const WORK_DLQ: &str = "SERVERLESS_COMFYUI_WORK_DLQ_URL";
const WAKE_DLQ: &str = "SERVERLESS_COMFYUI_WAKE_DLQ_URL";
const CLUSTER: &str = "SERVERLESS_COMFYUI_ECS_CLUSTER";
const TASK_DEFINITION: &str = "SERVERLESS_COMFYUI_TASK_DEFINITION";
const CAPACITY_PROVIDER: &str = "SERVERLESS_COMFYUI_CAPACITY_PROVIDER";
const STARTED_BY: &str = "SERVERLESS_COMFYUI_ECS_STARTED_BY";

/// `startedBy` when none is configured: lets operators find our tasks (`ListTasks
/// --started-by`).
pub const DEFAULT_STARTED_BY: &str = "serverless-comfyui";

/// The configuration is incomplete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Every required variable that is unset or empty, in a stable order.
    #[error("missing environment variables: {}", .0.join(", "))]
    Missing(Vec<&'static str>),
}

/// The four SQS queues, by URL (SQS addresses queues by URL, not name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrls {
    pub work: String,
    pub wake: String,
    pub work_dead_letter: String,
    pub wake_dead_letter: String,
}

/// Every resource name the AWS adapters need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub table: String,
    pub bucket: String,
    pub queues: QueueUrls,
    pub ecs: EcsSettings,
}

/// The data resources alone (table, bucket, queues): what the runner needs. It starts
/// no task, so it reads no ECS name (the runner's task definition cannot name itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataConfig {
    pub table: String,
    pub bucket: String,
    pub queues: QueueUrls,
}

/// Reads required variables, remembering every one that is missing or empty.
struct Required<F> {
    lookup: F,
    missing: Vec<&'static str>,
}

impl<F: Fn(&str) -> Option<String>> Required<F> {
    fn get(&mut self, name: &'static str) -> String {
        match (self.lookup)(name) {
            Some(value) if !value.trim().is_empty() => value.trim().to_string(),
            _ => {
                self.missing.push(name);
                String::new()
            }
        }
    }

    fn data(&mut self) -> DataConfig {
        DataConfig {
            table: self.get(TABLE),
            bucket: self.get(BUCKET),
            queues: QueueUrls {
                work: self.get(WORK_QUEUE),
                wake: self.get(WAKE_QUEUE),
                work_dead_letter: self.get(WORK_DLQ),
                wake_dead_letter: self.get(WAKE_DLQ),
            },
        }
    }
}

impl DataConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads through `lookup`; the error names every missing variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut required = Required {
            lookup,
            missing: Vec::new(),
        };
        let data = required.data();
        if !required.missing.is_empty() {
            return Err(ConfigError::Missing(required.missing));
        }
        Ok(data)
    }
}

impl AwsConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut required = Required {
            lookup,
            missing: Vec::new(),
        };
        let data = required.data();
        let ecs = EcsSettings {
            cluster: required.get(CLUSTER),
            task_definition: required.get(TASK_DEFINITION),
            capacity_provider: required.get(CAPACITY_PROVIDER),
            started_by: DEFAULT_STARTED_BY.to_string(),
            tags: vec![("app".to_string(), DEFAULT_STARTED_BY.to_string())],
        };
        if !required.missing.is_empty() {
            return Err(ConfigError::Missing(required.missing));
        }
        let mut config = AwsConfig {
            table: data.table,
            bucket: data.bucket,
            queues: data.queues,
            ecs,
        };
        if let Some(by) = (required.lookup)(STARTED_BY).filter(|v| !v.trim().is_empty()) {
            config.ecs.started_by = by.trim().to_string();
        }
        Ok(config)
    }
}

/// The SDK clients, built once per process and cloned into the adapters.
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub ecs: aws_sdk_ecs::Client,
}

impl Clients {
    /// Loads the SDK configuration from the usual chain (environment, Lambda or ECS
    /// role, profile) with the standard retry mode. Makes no network call: credentials
    /// are fetched lazily on the first request.
    pub async fn load() -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard())
            .load()
            .await;
        Self::from_sdk_config(&sdk)
    }

    /// Clients from an already loaded configuration (tests point it at moto).
    pub fn from_sdk_config(sdk: &SdkConfig) -> Self {
        // An emulator behind an endpoint override has no per-bucket DNS names.
        let s3 = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(sdk.endpoint_url().is_some())
            .build();
        Clients {
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            s3: aws_sdk_s3::Client::from_conf(s3),
            sqs: aws_sdk_sqs::Client::new(sdk),
            ecs: aws_sdk_ecs::Client::new(sdk),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn full() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (TABLE, "jobs"),
            (BUCKET, "bucket"),
            (WORK_QUEUE, "https://sqs/work"),
            (WAKE_QUEUE, "https://sqs/wake"),
            (WORK_DLQ, "https://sqs/work-dlq"),
            (WAKE_DLQ, "https://sqs/wake-dlq"),
            (CLUSTER, "gpu"),
            (TASK_DEFINITION, "runner:3"),
            (CAPACITY_PROVIDER, "spot-gpu"),
        ])
    }

    #[test]
    fn a_complete_environment_reads_into_the_config() {
        let env = full();
        let config = AwsConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(config.table, "jobs");
        assert_eq!(config.queues.wake_dead_letter, "https://sqs/wake-dlq");
        assert_eq!(config.ecs.capacity_provider, "spot-gpu");
        assert_eq!(config.ecs.started_by, DEFAULT_STARTED_BY);
    }

    #[test]
    fn every_missing_or_empty_variable_is_named_at_once() {
        let mut env = full();
        env.remove(BUCKET);
        env.remove(CAPACITY_PROVIDER);
        env.insert(WAKE_DLQ, "  ");
        let err = AwsConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing(vec![BUCKET, WAKE_DLQ, CAPACITY_PROVIDER])
        );
        assert_eq!(
            err.to_string(),
            "missing environment variables: SERVERLESS_COMFYUI_BUCKET, \
             SERVERLESS_COMFYUI_WAKE_DLQ_URL, SERVERLESS_COMFYUI_CAPACITY_PROVIDER"
        );
        let none = AwsConfig::from_lookup(|_| None).unwrap_err();
        let ConfigError::Missing(names) = none;
        assert_eq!(names.len(), 9, "all nine required variables are named");
    }

    #[test]
    fn the_runner_reads_the_data_resources_only() {
        let mut env = full();
        env.remove(CLUSTER);
        env.remove(TASK_DEFINITION);
        env.remove(CAPACITY_PROVIDER);
        let data = DataConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(data.table, "jobs");
        assert_eq!(data.queues.work, "https://sqs/work");
        env.remove(TABLE);
        env.remove(WORK_DLQ);
        assert_eq!(
            DataConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap_err(),
            ConfigError::Missing(vec![TABLE, WORK_DLQ])
        );
    }

    #[test]
    fn started_by_can_be_overridden() {
        let mut env = full();
        env.insert(STARTED_BY, "staging");
        let config = AwsConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(config.ecs.started_by, "staging");
    }
}
