//! AWS adapters for the ports defined in `jobs::ports`.
//!
//! Every AWS SDK call of the project lives in this crate; the domain (`jobs`) only
//! sees the port traits, and the binaries only wire. What is here today:
//!
//! | port | adapter | service | module |
//! |---|---|---|---|
//! | `Queue` | [`SqsQueue`] | SQS (standard queues with a redrive policy) | [`sqs`] |
//! | `BlobStore` | [`S3BlobStore`] | S3 (one private bucket) | [`s3`] |
//! | `BlobStore` (small job inputs) | [`InlineInputs`] around [`S3BlobStore`] | DynamoDB items up to 4 KiB, S3 beyond | [`inline`] |
//! | `Launcher` | [`EcsLauncher`] | ECS `RunTask` / `StopTask` | [`ecs`] |
//! | `JobStore` | [`DynamoJobStore`] | DynamoDB (one table, two indexes) | [`dynamodb`] |
//! | `WebhookStore` | [`DynamoWebhookStore`] | DynamoDB (the same table) | [`webhooks`] |
//! | the runner's model sync | [`S3Models`] | S3 (the bucket's `models/` prefix) | [`models`] |
//! | webhook delivery messages (the `webhooks` Lambda) | [`WebhookQueue`] | SQS (one queue with a DLQ) | [`webhook_queue`] |
//! | the jobs table's stream records (the `webhooks` Lambda) | — | DynamoDB Streams images | [`stream`] |
//!
//! **How a process gets them.** [`AwsConfig::from_env`] reads the resource names
//! (table, bucket, queue URLs, cluster...) and fails naming *every* missing variable at
//! once; [`Clients::load`] builds the SDK clients once per process from the usual
//! credential chain with the standard retry mode. Clients are cheap to clone (an `Arc`
//! inside): build them in `main`, hand clones to each adapter.
//!
//! **The rules every adapter follows.**
//! - Same behaviour as the local adapters: each passes the shared conformance suite
//!   (`testkit::conformance`) against `moto_server` in this crate's tests. Where SQS
//!   itself promises less than the suite's strictest checks, the adapter does not
//!   pretend: see [`sqs`].
//! - SDK errors never leak out: they become the port's error (`StoreError`,
//!   `QueueError`, `LaunchError`) with a message that names the operation and the
//!   resource, and never a credential or a presigned signature.
//! - Spans carry the table, queue and bucket names.

pub mod config;
pub mod dynamodb;
pub mod ecs;
pub mod emf;
mod error;
pub mod inline;
pub mod models;
pub mod s3;
pub mod sqs;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod webhook_queue;
pub mod webhooks;

pub use config::{AwsConfig, Clients, ConfigError, DataConfig, QueueUrls};
pub use dynamodb::DynamoJobStore;
pub use ecs::{EcsLauncher, EcsSettings};
pub use inline::InlineInputs;
pub use models::{ModelObject, S3Models};
pub use s3::S3BlobStore;
pub use sqs::SqsQueue;
pub use webhook_queue::WebhookQueue;
pub use webhooks::DynamoWebhookStore;
