//! Batches: submit many invocations at once (JSON `{items:[...]}` or NDJSON), follow their
//! counts, stream their results, cancel what has not started.

use super::auth::Caller;
use super::error::{body_error, ApiError};
use super::{body_kind, check_parameter_values, parse_id, read_body, scan_json, ApiState, BodyKind, InvocationView};
use crate::broker::request::InvocationRequest;
use crate::store::{BatchCounts, Store};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    items: Vec<InvocationRequest>,
}

fn parse_items(kind: BodyKind, bytes: &Bytes) -> Result<Vec<InvocationRequest>, ApiError> {
    match kind {
        BodyKind::Ndjson => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "the body is not UTF-8"))?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| serde_json::from_str(l).map_err(|e| body_error(e, Some(i + 1))))
                .collect()
        }
        BodyKind::Json => {
            let body: BatchBody = serde_json::from_slice(bytes).map_err(|e| body_error(e, None))?;
            Ok(body.items)
        }
    }
}

pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = body_kind(&headers, true)?;
    state.intake.admit_request(&caller.name)?;
    let limits = state.limits;
    let bytes = read_body(&headers, body, limits.batch_bytes, limits.body_timeout).await?;
    // Every item together, before any is parsed: a hostile body costs its bytes, no more.
    scan_json(&bytes, limits.batch_json())?;
    let items = parse_items(kind, &bytes)?;
    drop(bytes);
    if items.is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "empty_batch", "a batch needs at least one item"));
    }
    if items.len() > limits.batch_items {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{} items; at most {} per batch", items.len(), limits.batch_items),
        ));
    }
    for (index, item) in items.iter().enumerate() {
        check_parameter_values(item, limits.parameter_values, Some(index))?;
    }
    state.intake.admit_items(&caller.name, items.len())?;
    if let Some(i) = items.iter().position(|i| i.wait.is_some()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("item {i}: 'wait' applies to single invocations; follow a batch with GET /v1/batches/{{id}}"),
        ));
    }
    let (id, total) = state.broker.submit_batch(&items, &caller).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/batches/{id}"))],
        Json(json!({"id": id, "total": total})),
    )
        .into_response())
}

/// The batch's counts, if the caller may see it: someone else's batch is 404, as if it did not
/// exist (unless the caller is an admin).
pub(super) async fn visible_batch(state: &ApiState, caller: &Caller, id: &str) -> Result<BatchCounts, ApiError> {
    let id = parse_id(id, "batch")?;
    state
        .broker
        .store()
        .batch_counts(id)
        .await?
        .filter(|c| caller.may_see(c.owner.as_deref()))
        .ok_or_else(|| ApiError::not_found("batch"))
}

pub async fn get_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let counts = visible_batch(&state, &caller, &id).await?;
    let done = counts.done();
    let mut body = serde_json::to_value(&counts).map_err(ApiError::internal)?;
    body["done"] = json!(done);
    Ok(Json(body).into_response())
}

pub async fn cancel(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = visible_batch(&state, &caller, &id).await?.id;
    let cancelled = state.broker.cancel_batch(id).await?.ok_or_else(|| ApiError::not_found("batch"))?;
    Ok(Json(json!({"id": id, "cancelled": cancelled})).into_response())
}

/// Streams every item of the batch as one JSON line, in submission order, page by page, so a
/// 100,000-item batch never sits in memory at once.
pub async fn results(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = visible_batch(&state, &caller, &id).await?.id;
    let store = state.broker.store().clone();
    let pages = futures::stream::unfold(Some((store, id, -1i64)), |cursor| async move {
        let (store, id, after) = cursor?;
        match next_page(&store, id, after).await {
            Ok(Some((chunk, last))) => Some((Ok::<_, std::io::Error>(chunk), Some((store, id, last)))),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(pages)).into_response())
}

const PAGE: i64 = 500;

async fn next_page(store: &Store, id: Uuid, after: i64) -> Result<Option<(Bytes, i64)>, crate::store::StoreError> {
    let records = store.batch_page(id, after, PAGE).await?;
    let Some(last) = records.last().map(|r| r.accepted.seq) else { return Ok(None) };
    let mut chunk = Vec::new();
    for r in records {
        serde_json::to_writer(&mut chunk, &InvocationView::from(r)).expect("views serialize");
        chunk.push(b'\n');
    }
    Ok(Some((Bytes::from(chunk), last)))
}
