//! `GET /v1/audit`: who ran what where, newest first. Admins see every record; any other token
//! sees its own.

use super::auth::Caller;
use super::error::ApiError;
use super::view::rfc3339;
use super::ApiState;
use crate::store::{AuditQuery, AuditRecord};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json as JsonBody;
use serde::Deserialize;
use serde_json::{json, Value as Json};

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    tenant: Option<String>,
    token: Option<String>,
    cmdlet: Option<String>,
    outcome: Option<String>,
    /// RFC 3339 time or milliseconds since the epoch; inclusive.
    since: Option<String>,
    /// Exclusive.
    until: Option<String>,
    limit: Option<i64>,
    /// The `next` of the previous page: continues after its last (oldest) record.
    after: Option<i64>,
}

pub(super) fn time(name: &str, text: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(text).map(|t| Some(t.timestamp_millis())).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{name} must be an RFC 3339 time or milliseconds since the epoch"),
        )
    })
}

fn view(r: AuditRecord) -> Json {
    let e = r.entry;
    json!({
        "id": r.id,
        "at": rfc3339(e.at),
        "token": e.token,
        "tenant": e.tenant,
        "cmdlet": e.cmdlet,
        "parameter_names": e.param_names,
        "parameters_sha256": e.params_hash,
        "status": e.status,
        "code": e.code,
        "duration_ms": e.duration_ms,
        "session_id": e.session_id,
        "admin": e.admin,
        "invocation_id": e.invocation_id,
        "batch_id": e.batch_id,
    })
}

pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<JsonBody<Json>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    // A token that is not an admin sees its own records only, whatever it asks for.
    let token = if caller.is_admin() { p.token } else { Some(caller.name.clone()) };
    let query = AuditQuery {
        tenant: p.tenant,
        token,
        cmdlet: p.cmdlet,
        outcome: p.outcome,
        since_ms: time("since", &p.since)?,
        until_ms: time("until", &p.until)?,
        before_id: p.after,
        limit,
    };
    let records = state.broker.store().audit_page(&query).await?;
    let next = if records.len() as i64 == limit { records.last().map(|r| r.id) } else { None };
    Ok(JsonBody(json!({"entries": records.into_iter().map(view).collect::<Vec<_>>(), "next": next})))
}
