//! # jobs — the domain of serverless-comfyui
//!
//! Everything that decides what happens to a job lives here, once, and runs the same on
//! AWS and on one machine. The outside world is reached only through [`ports`]:
//!
//! | module | what it holds |
//! |---|---|
//! | [`model`] | the [`model::Job`] record, its status, outputs, progress, queue messages |
//! | [`lifecycle`] | the state machine and the lease protocol: pure, every move tested |
//! | [`validate`] | request and workflow validation, before anything is stored |
//! | [`ports`] | `JobStore`, `BlobStore`, `Queue`, `Launcher`, `Clock`, and the [`ports::Ports`] bundle |
//! | [`error`] | [`DomainError`]: what every service and validator refuses with, without HTTP |
//! | [`service`] | submit, get, list, cancel, get-workflow over the ports |
//! | [`assets`] | uploads, dedup and minting of assets over content-addressed blobs |
//! | [`events`] | a job's live events, as a stream of [`events::JobEvent`] |
//! | [`auth`] | tenants, API keys and the [`auth::Authenticator`] |
//! | [`dispatch`] | the scaling decision and the tick (the safety net) |
//! | [`retention`] | the sweep that removes what is past its deadline |
//! | [`api`] | the Comfy API v2 HTTP router, its error envelope, the HTTP status of each error kind, SSE, `Range`, cross-site rules |
//! | [`app`] | the one application builder every entry point uses (`dev`, the Lambdas) |
//! | [`catalogue`] | the node catalogue runners publish, and the check of a graph against it at submit |
//! | [`blob_keys`] | where bytes live in the blob store: every key prefix, spelled once |
//! | [`content_policy`] | which stored bytes a browser may render (the API sets the headers) |
//! | [`webhooks`] | signed webhooks: endpoints, the outbox, Standard Webhooks signing, retries, SSRF rules |
//! | [`faults`] | a `Queue` decorator that misbehaves as SQS may, for the suites and chaos runs |
//!
//! **HTTP lives in [`api`] only.** The services answer with domain values and
//! [`DomainError`]s; the API reads requests into them (credentials, bodies, queries) and
//! turns the answers into responses, statuses and the v2 envelope. So a Lambda, `dev`
//! and the runner share the services, and only [`api`] depends on the HTTP framework.
//!
//! A newcomer should start with [`lifecycle`]: its module docs draw the state diagram
//! and explain fencing, which is what keeps a crashed or stalled runner from ever
//! losing or double-committing a job.

pub mod api;
pub mod app;
pub mod assets;
pub mod auth;
pub mod blob_keys;
pub mod catalogue;
pub mod content_policy;
pub mod cursor;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod faults;
pub mod json_budget;
pub mod lifecycle;
pub mod model;
pub mod ports;
pub mod quota;
pub mod retention;
pub mod service;
pub mod validate;
pub mod views;
pub mod webhooks;

pub use api::{ApiError, cross_site};
pub use error::{DomainError, ErrorKind};
