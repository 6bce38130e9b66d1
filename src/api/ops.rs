//! Operations endpoints: sessions, pools, health, readiness, metrics.

use super::error::ApiError;
use super::ApiState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub async fn sessions(State(state): State<ApiState>) -> Response {
    Json(json!({"sessions": state.broker.sessions().await})).into_response()
}

pub async fn pools(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let pools =
        state.broker.pools().await.ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the scheduler has stopped")
        })?;
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

pub async fn metrics(State(state): State<ApiState>) -> Response {
    state.broker.refresh_gauges().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.broker.metrics().render()).into_response()
}
