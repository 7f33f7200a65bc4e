//! The domain's one error type: what went wrong, in words a client can act on, and no HTTP.
//!
//! Every service ([`crate::service`], [`crate::assets`], [`crate::auth`],
//! [`crate::events`]) and every validator answers a refusal with a [`DomainError`]: a
//! [`ErrorKind`] (the category: not found, conflict, over a limit...), a stable machine
//! `code` (`invalid_workflow`, `quota_storage`...), a human message, optional details
//! and, for refusals worth retrying, a delay. Which HTTP status a kind becomes, and the
//! v2 envelope `{"error": {code, message, details}}` around it, are decided once, in
//! [`crate::api::ApiError`]; the services never see a status code, so the same errors
//! serve an API Gateway Lambda, `dev`, or a runner that is no HTTP server at all.
//!
//! Store and queue failures become [`ErrorKind::Unavailable`] with a generic message:
//! the underlying error is logged, never sent.

use serde_json::Value;

use crate::ports::{QueueError, StoreError};

/// The category of a refusal. The API maps each to one status (shown in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request could not be understood: malformed, not JSON, a bad parameter (400).
    InvalidRequest,
    /// No credentials, or unknown or revoked ones (401).
    Unauthenticated,
    /// The caller may not do this (403).
    Forbidden,
    /// No such thing, or not the caller's (404).
    NotFound,
    /// The request body arrived too slowly (408).
    Timeout,
    /// The thing is in a state that refuses this now (409).
    Conflict,
    /// The thing existed and lapsed (410).
    Gone,
    /// More bytes or values than allowed (413).
    TooLarge,
    /// The body is not of a type this operation reads (415).
    UnsupportedMediaType,
    /// Well-formed, but its content is refused (422).
    Unprocessable,
    /// Over a rate or concurrency limit; retry later (429).
    TooManyRequests,
    /// Storage or the queue failed, or the server is saturated; retry shortly (503).
    Unavailable,
}

/// A refusal or failure, as the domain reports it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DomainError {
    pub kind: ErrorKind,
    /// The stable machine code clients branch on.
    pub code: &'static str,
    pub message: String,
    pub details: Option<Box<Value>>,
    /// Seconds a client should wait before retrying (conflicts in flight, limits,
    /// unavailability).
    pub retry_after: Option<u32>,
}

impl DomainError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        DomainError {
            kind,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The request is well-formed but its content is refused.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unprocessable, code, message)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, "invalid_request", message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, "unauthorized", message)
    }

    pub fn unavailable() -> Self {
        Self::new(
            ErrorKind::Unavailable,
            "unavailable",
            "the service is temporarily unavailable; retry shortly",
        )
        .with_retry_after(1)
    }
}

impl From<StoreError> for DomainError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "store failure");
        DomainError::unavailable()
    }
}

impl From<QueueError> for DomainError {
    fn from(err: QueueError) -> Self {
        tracing::error!(error = %err, "queue failure");
        DomainError::unavailable()
    }
}
