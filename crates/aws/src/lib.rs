//! AWS adapters for the ports defined in `jobs::ports`.
//!
//! This crate is where every AWS SDK call lives (DynamoDB for the `JobStore`, S3 for the
//! `BlobStore`, SQS for the `Queue`, ECS for the `Launcher`). It is deliberately empty
//! until the AWS adapters are built: the local adapters in `crates/local` and the
//! conformance suite in `jobs::conformance` define the behaviour these must match.
