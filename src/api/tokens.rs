//! Token management over the API (admin tokens only): create (the token is in this answer and
//! nowhere else, ever), list, revoke (any token but the caller's own). `psbroker token …` does
//! the same on the store directly.

use super::auth::Caller;
use super::error::ApiError;
use super::json_scan::JsonLimits;
use super::{read_json, ApiState};
use crate::auth::token::{self, TokenSpec};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default = "default_role")]
    role: String,
    #[serde(default = "everything")]
    tenants: String,
    #[serde(default = "everything")]
    cmdlets: String,
    #[serde(default)]
    constraints: Vec<String>,
}

fn default_role() -> String {
    "read-only".into()
}
fn everything() -> String {
    "*".into()
}

pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require_admin("creating tokens")?;
    let json = JsonLimits { max_values: 1024, max_depth: 3 };
    let b: CreateBody = read_json(&headers, body, 64 << 10, json, state.limits.body_timeout).await?;
    let spec = TokenSpec::parse(&b.name, &b.role, &b.tenants, &b.cmdlets, &b.constraints)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_token_spec", m))?;
    let secret = token::issue(state.broker.store(), &spec).await?;
    tracing::info!(by = %caller.name, token = %spec.name, role = %spec.role, "API token created");
    let body = json!({
        "name": spec.name, "role": spec.role, "tenants": spec.tenants.to_string(), "cmdlets": spec.cmdlets.to_string(),
        "constraints": spec.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "token": secret,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn list(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require_admin("listing tokens")?;
    let tokens = state.broker.store().list_tokens().await?;
    Ok(Json(json!({"tokens": tokens})).into_response())
}

pub async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin("revoking tokens")?;
    // A token revoking itself locks its holder out mid-work (for the bootstrap token: out of
    // the API altogether). Another admin token, or `psbroker token revoke`, can do it.
    if name == caller.name {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "revoking_own_token",
            format!("token '{name}' is the one making this request and cannot revoke itself; use another admin token or 'psbroker token revoke'"),
        ));
    }
    let revoked = state.broker.store().revoke_token(&name).await?;
    // Revoked through this node: refused here from the next request, not after TOKEN_TRUST.
    state.auth.forget(&name);
    if !revoked {
        return Err(ApiError::not_found("active token"));
    }
    tracing::info!(by = %caller.name, token = %name, "API token revoked");
    Ok(Json(json!({"name": name, "revoked": true})).into_response())
}
