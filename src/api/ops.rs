//! Operations endpoints: sessions, pools, health, readiness, metrics, the OpenAPI document.

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Sessions of the tenants in the caller's scope (all of them for an admin).
pub async fn sessions(State(state): State<ApiState>, caller: Caller) -> Response {
    let mut sessions = state.broker.sessions().await;
    sessions.retain(|s| caller.is_admin() || caller.in_tenant_scope(&s.tenant));
    Json(json!({"sessions": sessions})).into_response()
}

/// Pools; tenants outside the caller's scope are left out (an admin sees all).
pub async fn pools(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    let mut pools =
        state.broker.pools().await.ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the scheduler has stopped")
        })?;
    pools.tenants.retain(|t| caller.is_admin() || caller.in_tenant_scope(&t.name));
    Ok(Json(pools).into_response())
}

/// Alive: the process answers.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready: accepting work and the database answers.
pub async fn readyz(State(state): State<ApiState>) -> Result<Response, ApiError> {
    if !state.broker.accepting() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the daemon is shutting down"));
    }
    state
        .broker
        .store()
        .ping()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()))?;
    Ok(Json(json!({"status": "ready"})).into_response())
}

/// The OpenAPI document ([`super::OPENAPI_DOCUMENT`]), as it is: no token needed.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI_DOCUMENT).into_response()
}

pub async fn metrics(State(state): State<ApiState>) -> Response {
    state.broker.refresh_gauges().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.broker.metrics().render()).into_response()
}
