//! The one error envelope of the API: `{"error": {"code": "...", "message": "..."}}`, with a
//! stable `code` per cause and a 4xx status for every caller mistake.

use crate::broker::SubmitError;
use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
    /// Seconds for `Retry-After` (429; a 503 says 5). Small, so the error stays small.
    pub retry_after: Option<std::num::NonZeroU16>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None, retry_after: None }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// Says `Retry-After: seconds` (at least 1).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        let clamped = seconds.clamp(1, u64::from(u16::MAX)) as u16;
        self.retry_after = std::num::NonZeroU16::new(clamped);
        self
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the daemon's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(d) = self.details {
            body["error"]["details"] = d;
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.get()));
        } else if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"psbroker\""));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::IdempotencyConflict(key) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!("idempotency key '{key}' was already used for a different request"),
            ),
            StoreError::Conflict(what) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", format!("{what} already exists"))
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(r) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.code(), r.to_string()),
            SubmitError::InvalidItem { index, error } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: error.code(),
                message: format!("item {index}: {error}; nothing was stored"),
                details: Some(json!({"index": index})),
                retry_after: None,
            },
            SubmitError::Forbidden { index: None, refusal } => refusal.into(),
            SubmitError::Forbidden { index: Some(index), refusal } => ApiError {
                status: StatusCode::FORBIDDEN,
                code: refusal.rule.code(),
                message: format!("item {index}: {refusal}; nothing was stored"),
                details: Some(json!({"index": index})),
                retry_after: None,
            },
            SubmitError::IdempotencyConflict(key) => StoreError::IdempotencyConflict(key).into(),
            SubmitError::ShuttingDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", e.to_string()),
            SubmitError::Store(s) => ApiError::internal(s),
        }
    }
}

/// Turns a serde_json failure into `invalid_json` (not JSON at all) or `invalid_request`
/// (JSON of the wrong shape), naming where it went wrong.
pub fn body_error(e: serde_json::Error, line: Option<usize>) -> ApiError {
    use serde_json::error::Category;
    let at = match line {
        Some(l) => format!("line {l}: "),
        None => String::new(),
    };
    match e.classify() {
        Category::Data => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("{at}{e}")),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("{at}{e}")),
    }
}
