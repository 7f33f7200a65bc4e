//! Errors as the API shows them: the v2 envelope `{"error": {code, message, details}}`.
//!
//! Every failure a handler can meet becomes an [`ApiError`] with a stable machine code and
//! the right status. The services report a [`DomainError`]; this is the one place that
//! says which status each [`ErrorKind`] is ([`status_of`]). Store failures are 503
//! (retryable) with a generic message: the underlying error is logged, never sent.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::{DomainError, ErrorKind};
use crate::ports::{QueueError, StoreError};

/// The status a kind of domain error is answered with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        ApiError {
            status: status_of(err.kind),
            code: err.code,
            message: err.message,
            details: err.details,
            retry_after: err.retry_after,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Box<Value>>,
    /// Seconds, for 409 `idempotency_conflict`, 429 and 503.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
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

    // The common refusals are the domain's, with the status their kind maps to: one
    // wording for each, whichever layer refuses.

    /// 422: the request is well-formed but its content is refused.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        DomainError::unprocessable(code, message).into()
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        DomainError::invalid_request(message).into()
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str) -> Self {
        DomainError::not_found(what).into()
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        DomainError::unauthorized(message).into()
    }

    /// 503 `unavailable`, retry after a second.
    pub fn unavailable() -> Self {
        DomainError::unavailable().into()
    }

    /// The envelope body.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        DomainError::from(err).into()
    }
}

impl From<QueueError> for ApiError {
    fn from(err: QueueError) -> Self {
        DomainError::from(err).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Rewrites any error response that is not already JSON into the v2 envelope, so
/// rejections produced inside axum (body limits, extractors) look like ours.
pub async fn envelope_errors(request: Request, next: Next) -> Response {
    let is_head = request.method() == axum::http::Method::HEAD;
    let response = next.run(request).await;
    let status = response.status();
    if is_head || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || status == StatusCode::RANGE_NOT_SATISFIABLE {
        return response;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than this endpoint accepts",
        ),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not accept that method",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "unsupported content type")
        }
        s if s.is_client_error() => ("invalid_request", "the request could not be understood"),
        _ => ("internal", "internal error"),
    };
    ApiError::new(status, code, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statuses clients have always seen for these codes.
    #[test]
    fn kinds_keep_their_statuses() {
        let cases = [
            (DomainError::invalid_request("x"), 400),
            (DomainError::unauthorized("x"), 401),
            (
                DomainError::new(ErrorKind::Forbidden, "forbidden", "x"),
                403,
            ),
            (DomainError::not_found("job"), 404),
            (
                DomainError::new(ErrorKind::Timeout, "request_timeout", "x"),
                408,
            ),
            (DomainError::new(ErrorKind::Conflict, "conflict", "x"), 409),
            (
                DomainError::new(ErrorKind::Gone, "upload_expired", "x"),
                410,
            ),
            (
                DomainError::new(ErrorKind::TooLarge, "payload_too_large", "x"),
                413,
            ),
            (
                DomainError::new(
                    ErrorKind::UnsupportedMediaType,
                    "unsupported_media_type",
                    "x",
                ),
                415,
            ),
            (DomainError::unprocessable("invalid_workflow", "x"), 422),
            (
                DomainError::new(ErrorKind::TooManyRequests, "too_many_streams", "x"),
                429,
            ),
            (DomainError::unavailable(), 503),
        ];
        for (domain, status) in cases {
            let api = ApiError::from(domain.clone().with_retry_after(3));
            assert_eq!(api.status.as_u16(), status, "{}", domain.code);
            assert_eq!(api.code, domain.code);
            assert_eq!(api.message, domain.message);
            assert_eq!(api.retry_after, Some(3));
        }
        let not_found = ApiError::from(DomainError::not_found("job"));
        assert_eq!(
            not_found.body(),
            json!({"error": {"code": "not_found", "message": "job not found", "details": null}})
        );
    }
}
