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
//! | [`ports`] | `JobStore`, `BlobStore`, `Queue`, `Launcher`, `Clock` |
//! | [`service`] | submit, get, list, cancel, get-workflow over the ports |
//! | [`dispatch`] | the scaling decision and the tick (the safety net) |
//! | [`retention`] | the sweep that removes what is past its deadline |
//! | [`api`] | the Comfy API v2 router (axum) and its error envelope |
//! | [`app`] | the one application builder every entry point uses (`dev`, the Lambdas) |
//! | [`content_policy`] | which stored bytes a browser may render, and the headers blobs carry |
//! | [`conformance`] | the shared test suite every adapter must pass |
//! | [`faults`] | a `Queue` decorator that misbehaves as SQS may, for the suites and chaos runs |
//!
//! A newcomer should start with [`lifecycle`]: its module docs draw the state diagram
//! and explain fencing, which is what keeps a crashed or stalled runner from ever
//! losing or double-committing a job.

pub mod api;
pub mod app;
pub mod assets;
pub mod auth;
pub mod conformance;
pub mod content_policy;
pub mod cross_site;
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

pub use error::ApiError;
