//! Reading requests and writing JSON answers: the caller's [`Tenant`] (from the
//! headers' [`Credentials`]), JSON bodies (content type, size and parse budget checked
//! before a byte is parsed), and JSON responses.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, ApiState, cross_site};
use crate::auth::{Credentials, Tenant};

/// What the request's headers say about its caller.
pub(super) fn credentials(headers: &HeaderMap) -> Credentials {
    Credentials {
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|value| value.to_str().ok().map(str::to_owned)),
        addressed_to_loopback: cross_site::host_is_loopback(headers),
    }
}

impl FromRequestParts<Arc<ApiState>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        Ok(state
            .auth
            .authenticate(&credentials(&parts.headers))
            .await?)
    }
}

/// The raw body, with body-limit rejections mapped to 413 and others to 400. A large
/// body is read only with a permit ([`crate::json_budget::large_body_gate`]), held
/// while the handler runs: the permit is the second field.
pub(super) struct RawBody(
    pub(super) Bytes,
    pub(super) Option<tokio::sync::OwnedSemaphorePermit>,
);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use crate::json_budget::{LARGE_BODY_QUEUE_WAIT, LARGE_BODY_READ_TIMEOUT};
        // The content type is checked on the headers, and refused before a byte of the
        // body is read unless the body is empty: a cancel `POST` that carries nothing
        // needs no type.
        let declared_json = crate::cross_site::require_json(req.headers(), false);
        let declared = axum::body::HttpBody::size_hint(req.body()).exact();
        if let (Err(refusal), Some(1..)) = (&declared_json, declared) {
            return Err(refusal.clone());
        }
        let permit = crate::json_budget::large_body_gate(declared, LARGE_BODY_QUEUE_WAIT).await?;
        let read = Bytes::from_request(req, state);
        let read = match &permit {
            None => read.await,
            Some(_) => tokio::time::timeout(LARGE_BODY_READ_TIMEOUT, read)
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request body arrived too slowly",
                    )
                })?,
        };
        if let (Ok(bytes), Err(refusal)) = (&read, declared_json)
            && !bytes.is_empty()
        {
            return Err(refusal);
        }
        match read {
            Ok(bytes) => Ok(RawBody(bytes, permit)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large; upload large inputs as assets and reference them",
                ))
            }
            Err(rejection) => Err(ApiError::invalid_request(format!(
                "could not read the request body: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// A strictly parsed JSON body of a declared type.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::json_budget::check_value_count(bytes)?;
    let value = crate::validate::parse_json_strict(bytes)?;
    serde_json::from_value(value).map_err(|e| {
        ApiError::unprocessable(
            "invalid_request",
            format!("the request body does not match: {e}"),
        )
    })
}

pub(super) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, Body::from(bytes)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
