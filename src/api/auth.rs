//! The HTTP side of authentication: a middleware that turns `Authorization: Bearer …` into a
//! [`Principal`] (401 `unauthenticated` otherwise) and the [`Caller`] extractor handlers use.

use super::error::ApiError;
use super::ApiState;
use crate::auth::{AuthError, Principal, Refusal};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The authenticated caller of this request.
#[derive(Clone)]
pub struct Caller(pub Arc<Principal>);

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl Caller {
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Refusal::admin_only(what).into())
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| AuthError::Missing.into())
    }
}

/// Authenticates every request it wraps; unauthenticated ones never reach a handler.
pub async fn require_token(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match state.auth.authenticate(header).await {
        Ok(principal) => {
            req.extensions_mut().insert(Caller(principal));
            next.run(req).await
        }
        Err(e) => {
            if !matches!(e, AuthError::Missing | AuthError::Store(_)) {
                tracing::warn!(path = %req.uri().path(), reason = %e, "request with a bad API token refused");
            }
            ApiError::from(e).into_response()
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(s) => ApiError::internal(s),
            other => ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", other.to_string()),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, r.rule.code(), r.message)
    }
}
