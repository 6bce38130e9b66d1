//! The read endpoints the web console needs (and any other client may use): the caller's
//! batches, a batch's items by status and code, failures grouped by code, and who the caller is.
//! Each follows the API's ownership rule: a token that is not an admin sees only its own
//! invocations and batches; nothing here shows what the token could not already read elsewhere.

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::view::rfc3339;
use crate::api::{audit, batches, ApiState, InvocationView};
use crate::store::{BatchSummary, FailureGroup, FailureQuery, Status};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// A window of failures without `since` (and without `batch`): the last day.
const DEFAULT_FAILURE_WINDOW_MS: i64 = 24 * 3600 * 1000;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// Query parameters, unknown ones refused (400) like `GET /v1/audit`.
fn query<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params.map(|Query(p)| p).map_err(|e| bad_request(e.body_text()))
}

fn limit(given: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = given.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(bad_request(format!("limit must be between 1 and {max}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchListParams {
    limit: Option<i64>,
    /// The `next` of the previous page.
    after: Option<String>,
}

fn batch_json(b: BatchSummary) -> Value {
    let done = b.counts.done();
    let mut v = serde_json::to_value(&b.counts).expect("counts serialize");
    v["done"] = json!(done);
    v["created_at"] = json!(rfc3339(b.created_at));
    v
}

/// `GET /v1/batches`: newest first; an admin sees every batch, any other token its own.
pub async fn list_batches(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<BatchListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = query(params)?;
    let limit = limit(p.limit, 50, 200)?;
    let after = match p.after.as_deref() {
        Some(text) => Some(uuid::Uuid::parse_str(text).map_err(|_| bad_request("after must be a batch id"))?),
        None => None,
    };
    let owner = (!caller.is_admin()).then_some(caller.name.as_str());
    let list = state.broker.store().list_batches(owner, after, limit).await?;
    let next = (list.len() as i64 == limit).then(|| list.last().map(|b| b.counts.id)).flatten();
    Ok(Json(json!({"batches": list.into_iter().map(batch_json).collect::<Vec<_>>(), "next": next})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemParams {
    status: Option<String>,
    code: Option<String>,
    limit: Option<i64>,
    /// The `next` of the previous page (a position in the batch).
    after: Option<i64>,
}

/// `GET /v1/batches/{id}/items`: one page of the batch's items in submission order, filtered.
pub async fn batch_items(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Result<Query<ItemParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = batches::visible_batch(&state, &caller, &id).await?.id;
    let p = query(params)?;
    let limit = limit(p.limit, 100, 500)?;
    let status = match p.status.as_deref() {
        Some(s) => Some(Status::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
            bad_request(format!("status must be one of queued, running, succeeded, failed, cancelled (not '{s}')"))
        })?),
        None => None,
    };
    let records = state.broker.store().batch_items(id, status, p.code.as_deref(), p.after.unwrap_or(-1), limit).await?;
    let next = (records.len() as i64 == limit).then(|| records.last().map(|r| r.accepted.seq)).flatten();
    let items: Vec<InvocationView> = records.into_iter().map(InvocationView::from).collect();
    Ok(Json(json!({"items": items, "next": next})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureParams {
    since: Option<String>,
    until: Option<String>,
    tenant: Option<String>,
    batch: Option<String>,
}

fn group_json(g: FailureGroup) -> Value {
    let messages: Vec<Value> = g
        .messages
        .into_iter()
        .map(|m| json!({"message": m.message, "count": m.count, "last_at": rfc3339(m.last_at), "example": m.example}))
        .collect();
    json!({
        "code": g.code,
        "count": g.count,
        "last_at": rfc3339(g.last_at),
        "messages": messages,
        "tenant_count": g.tenant_count,
        "tenants": g.tenants,
    })
}

/// `GET /v1/failures`: failed invocations grouped by error code, with the service's messages.
/// An admin sees every invocation's failures, any other token its own.
pub async fn failures(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<FailureParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = query(params)?;
    let batch = match p.batch.as_deref() {
        Some(id) => Some(batches::visible_batch(&state, &caller, id).await?.id),
        None => None,
    };
    let until_ms = audit::time("until", &p.until)?;
    let since_ms = match audit::time("since", &p.since)? {
        Some(s) => Some(s),
        None if batch.is_some() => None,
        None => Some(until_ms.unwrap_or_else(crate::store::now_ms) - DEFAULT_FAILURE_WINDOW_MS),
    };
    let q = FailureQuery {
        owner: (!caller.is_admin()).then(|| caller.name.clone()),
        batch,
        tenant: p.tenant,
        since_ms,
        until_ms,
    };
    let groups = state.broker.store().failures(&q).await?;
    Ok(Json(json!({
        "since": since_ms.map(rfc3339),
        "until": until_ms.map(rfc3339),
        "codes": groups.into_iter().map(group_json).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/whoami`: the calling token's own name, role and scopes (what the console shows and
/// uses to hide what the role cannot do).
pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({
        "name": caller.name,
        "role": caller.role.as_str(),
        "tenants": caller.tenants.to_string(),
        "cmdlets": caller.cmdlets.to_string(),
        "constraints": caller.constraints.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }))
}
