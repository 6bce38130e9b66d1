//! The HTTP face: JSON in, JSON out, one error envelope. Handlers validate and hand work to the
//! broker; they never talk to a remote service themselves.

mod audit;
pub mod auth;
mod batches;
pub mod error;
mod invocations;
mod ops;
mod tokens;
mod view;

use crate::auth::Authenticator;
use crate::broker::Broker;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use error::ApiError;
use std::sync::Arc;
use std::time::Duration;

pub use view::InvocationView;

#[derive(Clone)]
pub struct ApiState {
    pub broker: Arc<Broker>,
    pub max_wait: Duration,
    pub max_body_bytes: usize,
    pub max_batch_items: usize,
    pub auth: Arc<Authenticator>,
    /// `/metrics` answers without a token (the daemon listens on loopback only).
    pub metrics_open: bool,
}

/// Everything under `/v1` needs a token; `/healthz` and `/readyz` never do; `/metrics` does
/// unless the daemon listens on loopback only.
pub fn router(state: ApiState) -> Router {
    let require_token = || middleware::from_fn_with_state(state.clone(), auth::require_token);
    let metrics = Router::new().route("/metrics", get(ops::metrics));
    let metrics = if state.metrics_open { metrics } else { metrics.route_layer(require_token()) };
    Router::new()
        .route("/v1/invocations", post(invocations::create))
        .route("/v1/invocations/{id}", get(invocations::get_one))
        .route("/v1/batches", post(batches::create))
        .route("/v1/batches/{id}", get(batches::get_one).delete(batches::cancel))
        .route("/v1/batches/{id}/results", get(batches::results))
        .route("/v1/sessions", get(ops::sessions))
        .route("/v1/pools", get(ops::pools))
        .route("/v1/audit", get(audit::list))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{name}", delete(tokens::revoke))
        .route_layer(require_token())
        .merge(metrics)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Counts requests by matched route (never the raw path: ids would explode the label set).
async fn count_requests(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state.broker.metrics().http_requests.with_label_values(&[&route, resp.status().as_str()]).inc();
    resp
}

/// Reads a body up to the configured limit, answering 413 with the envelope beyond it.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    })
}

pub(crate) fn parse_id(text: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(text).map_err(|_| ApiError::not_found(what))
}
