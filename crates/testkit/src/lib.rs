//! The test kit for adapters of the [`jobs`] ports. It is a dev-dependency only: no
//! production binary links it.
//!
//! An adapter (SQLite and files in `crates/local`; DynamoDB, S3 and SQS in
//! `crates/aws`) proves that it keeps the ports' promises by running the
//! [`conformance`] suite from its own tests, each run with fresh, isolated resources:
//!
//! ```ignore
//! #[tokio::test]
//! async fn job_store_conformance() {
//!     let clock = Arc::new(ManualClock::new(start));
//!     let store = Arc::new(MyStore::open_fresh(clock.clone()).await);
//!     testkit::conformance::job_store(store, clock).await;
//! }
//! ```
//!
//! Every check panics with a message naming the promise that broke, so a failing
//! adapter test reads as a list of broken promises rather than as a diff of values.
//!
//! The fault-injecting queue the chaos suites wrap around any queue is re-exported here
//! as [`faults`]. Its home stays `jobs::faults` because the AWS runner binary can wrap
//! its SQS queue in it when a chaos test asks (a test-only environment variable), and a
//! binary cannot use a dev-dependency.

pub mod conformance;

pub use jobs::faults;
