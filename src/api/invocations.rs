//! `POST /v1/invocations` and `GET /v1/invocations/{id}`.

use super::auth::Caller;
use super::error::ApiError;
use super::{check_parameter_values, parse_id, read_json, ApiState, InvocationView};
use crate::broker::request::InvocationRequest;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::time::Duration;

pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.intake.admit_request(&caller.name)?;
    let limits = state.limits;
    let req: InvocationRequest =
        read_json(&headers, body, limits.invocation_bytes, limits.invocation_json(), limits.body_timeout).await?;
    check_parameter_values(&req, limits.parameter_values, None)?;
    state.intake.admit_items(&caller.name, 1)?;
    let submitted = state.broker.submit(&req, &caller).await?;
    let wait = if req.wait.unwrap_or(true) {
        let timeout = req.timeout_seconds.map(Duration::from_secs).unwrap_or(state.max_wait);
        timeout.min(state.max_wait)
    } else {
        Duration::ZERO
    };
    let record = state
        .broker
        .wait_for(&submitted, wait)
        .await?
        .ok_or_else(|| ApiError::internal("stored invocation vanished"))?;
    if record.status.is_final() {
        return Ok((StatusCode::OK, Json(InvocationView::from(record))).into_response());
    }
    let location = format!("/v1/invocations/{}", record.accepted.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({"id": record.accepted.id, "status": record.status, "replayed": submitted.replayed})),
    )
        .into_response())
}

/// Someone else's invocation is 404, as if it did not exist (unless the caller is an admin).
pub async fn get_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<InvocationView>, ApiError> {
    let id = parse_id(&id, "invocation")?;
    let record = state
        .broker
        .store()
        .get(id)
        .await?
        .filter(|r| caller.may_see(r.owner.as_deref()))
        .ok_or_else(|| ApiError::not_found("invocation"))?;
    Ok(Json(record.into()))
}
