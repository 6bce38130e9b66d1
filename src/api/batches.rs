//! Batches: submit many invocations at once (JSON `{items:[...]}` or NDJSON), follow their
//! counts, stream their results, cancel what has not started.

use super::auth::Caller;
use super::error::{body_error, ApiError};
use super::{body_kind, check_parameter_values, parse_id, read_body, scan_json, ApiState, BodyKind, InvocationView};
use crate::broker::request::InvocationRequest;
use crate::broker::{BatchError, BATCH_CHUNK};
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
    // Items are parsed a chunk at a time as the broker takes them (it stores one chunk while the
    // next is parsed); only their number is known first.
    let (id, total) = match kind {
        BodyKind::Ndjson => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "the body is not UTF-8"))?;
            let lines = || text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
            let total = admit_size(&state, &caller, lines().count())?;
            let items = lines().map(|(i, l)| serde_json::from_str(l).map_err(|e| body_error(e, Some(i + 1))));
            (submit(&state, &caller, total, items).await?, total)
        }
        BodyKind::Json => {
            let body: BatchBody = serde_json::from_slice(&bytes).map_err(|e| body_error(e, None))?;
            drop(bytes);
            let total = admit_size(&state, &caller, body.items.len())?;
            (submit(&state, &caller, total, body.items.into_iter().map(Ok)).await?, total)
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/batches/{id}"))],
        Json(json!({"id": id, "total": total})),
    )
        .into_response())
}

/// Refuses an empty or oversized batch, then takes `items` from the caller's item budget.
fn admit_size(state: &ApiState, caller: &Caller, items: usize) -> Result<usize, ApiError> {
    if items == 0 {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "empty_batch", "a batch needs at least one item"));
    }
    let limit = state.limits.batch_items;
    if items > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{items} items; at most {limit} per batch"),
        ));
    }
    state.intake.admit_items(&caller.name, items)?;
    Ok(items)
}

/// Hands `items` to the broker in chunks, each item checked as it is taken.
async fn submit(
    state: &ApiState,
    caller: &Caller,
    total: usize,
    items: impl Iterator<Item = Result<InvocationRequest, ApiError>> + Send,
) -> Result<Uuid, ApiError> {
    let values = state.limits.parameter_values;
    let checked = items.enumerate().map(|(index, item)| {
        let item = item?;
        check_parameter_values(&item, values, Some(index))?;
        if item.wait.is_some() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!(
                    "item {index}: 'wait' applies to single invocations; follow a batch with GET /v1/batches/{{id}}"
                ),
            ));
        }
        Ok(item)
    });
    let chunks = chunked(checked, BATCH_CHUNK);
    state.broker.submit_batch_chunks(total, chunks, caller).await.map_err(|e| match e {
        BatchError::Source(e) => e,
        BatchError::Submit(e) => e.into(),
    })
}

/// Groups `items` into chunks of `size`; the first error ends the chunks with that error.
fn chunked<T, E>(
    mut items: impl Iterator<Item = Result<T, E>>,
    size: usize,
) -> impl Iterator<Item = Result<Vec<T>, E>> {
    std::iter::from_fn(move || {
        let mut chunk = Vec::with_capacity(size);
        for item in items.by_ref() {
            match item {
                Ok(item) => chunk.push(item),
                Err(e) => return Some(Err(e)),
            }
            if chunk.len() == size {
                break;
            }
        }
        (!chunk.is_empty()).then_some(Ok(chunk))
    })
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
