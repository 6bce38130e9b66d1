//! The HTTP face: JSON in, JSON out, one error envelope. Handlers validate and hand work to the
//! broker; they never talk to a remote service themselves.

mod audit;
pub mod auth;
mod batches;
pub mod console;
pub mod error;
pub mod host;
mod invocations;
pub mod json_scan;
mod ops;
pub mod rate_limit;
pub mod server;
mod tokens;
mod view;

use crate::auth::Authenticator;
use crate::broker::Broker;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use bytes::BytesMut;
use error::ApiError;
use futures::StreamExt;
use host::HostPolicy;
use json_scan::{JsonLimits, ScanError};
use rate_limit::IntakeLimits;
use std::sync::Arc;
use std::time::Duration;

pub use view::InvocationView;

/// The OpenAPI 3.1 document of this API, served at `GET /openapi.json`. Hand-written; the test
/// `openapi_document_and_router_agree` (tests/openapi.rs) fails when a route is missing from
/// either side, and the schemathesis test checks every answer against it.
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

/// Every route the router serves, as `(method, path)` in the document's spelling: [`router`] is
/// built from this list (and [`handler`]), and the test that keeps the document honest compares
/// it with the document's operations.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/invocations"),
    ("GET", "/v1/invocations/{id}"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches"),
    ("GET", "/v1/batches/{id}"),
    ("DELETE", "/v1/batches/{id}"),
    ("GET", "/v1/batches/{id}/results"),
    ("GET", "/v1/batches/{id}/items"),
    ("GET", "/v1/failures"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/pools"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/whoami"),
    ("POST", "/v1/tokens"),
    ("GET", "/v1/tokens"),
    ("DELETE", "/v1/tokens/{name}"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/console"),
    ("GET", "/console/{asset}"),
];

#[derive(Clone)]
pub struct ApiState {
    pub broker: Arc<Broker>,
    pub max_wait: Duration,
    pub limits: RequestLimits,
    pub auth: Arc<Authenticator>,
    /// `/metrics` answers without a token (the daemon listens on loopback only).
    pub metrics_open: bool,
    /// The `Host` check (DNS rebinding), when there is one.
    pub hosts: Option<Arc<HostPolicy>>,
    pub intake: Arc<IntakeLimits>,
}

/// What one request may cost, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// The body of `POST /v1/invocations`.
    pub invocation_bytes: usize,
    /// The body of `POST /v1/batches`.
    pub batch_bytes: usize,
    /// JSON values in one invocation's parameters.
    pub parameter_values: usize,
    /// JSON values in a whole batch body.
    pub batch_values: usize,
    pub batch_items: usize,
    /// The time a request body may take to arrive.
    pub body_timeout: Duration,
}

impl RequestLimits {
    pub fn from_config(c: &crate::config::ServerConfig) -> RequestLimits {
        RequestLimits {
            invocation_bytes: c.max_invocation_body_bytes,
            batch_bytes: c.max_body_bytes,
            parameter_values: c.max_parameter_values,
            batch_values: c.max_batch_values,
            batch_items: c.max_batch_items,
            body_timeout: Duration::from_secs_f64(c.body_timeout_seconds),
        }
    }

    /// A single invocation's body: its parameters' values plus the few of the envelope.
    fn invocation_json(&self) -> JsonLimits {
        JsonLimits { max_values: self.parameter_values + ENVELOPE_VALUES, max_depth: MAX_BODY_DEPTH }
    }

    fn batch_json(&self) -> JsonLimits {
        JsonLimits { max_values: self.batch_values, max_depth: MAX_BODY_DEPTH }
    }
}

/// Room for the fields of an invocation body around its parameters (and the parameters
/// themselves are values of their object: at most 64).
const ENVELOPE_VALUES: usize = 16 + crate::broker::request::MAX_PARAMETERS;

/// A batch body's object, its `items` array, an item and its `parameters`, then the values'
/// own nesting: deeper is refused by validation anyway, so the scan refuses it before serde.
const MAX_BODY_DEPTH: usize = 4 + crate::broker::request::MAX_VALUE_DEPTH + 1;

/// Everything under `/v1` needs a token; `/healthz`, `/readyz`, `/openapi.json` and the console's
/// static files (`/console`, which then calls `/v1` with the token its user gives) never do;
/// `/metrics` does unless the daemon listens on loopback only. The routes are exactly
/// [`ROUTES`], so the list the OpenAPI test checks is the router itself.
pub fn router(state: ApiState) -> Router {
    let require_token = || middleware::from_fn_with_state(state.clone(), auth::require_token);
    let (mut v1, mut metrics, mut open) = (Router::new(), Router::new(), Router::new());
    let mut paths: Vec<&str> = ROUTES.iter().map(|&(_, p)| p).collect();
    paths.dedup();
    for path in paths {
        let methods = ROUTES.iter().filter(|&&(_, p)| p == path).map(|&(m, _)| handler(m, path));
        let endpoint = methods.reduce(MethodRouter::merge).expect("a listed path").fallback(method_not_allowed);
        let part = match path {
            "/metrics" => &mut metrics,
            p if p.starts_with("/v1/") => &mut v1,
            _ => &mut open,
        };
        *part = std::mem::take(part).route(path, endpoint);
    }
    let metrics = if state.metrics_open { metrics } else { metrics.route_layer(require_token()) };
    // Outermost last: every answer is no-store and counted; the Host check runs before
    // authentication and every route.
    v1.route_layer(require_token())
        .merge(metrics)
        .merge(open)
        .fallback(|| async { ApiError::not_found("route") })
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(middleware::map_response(no_store))
        .with_state(state)
}

/// Answers carry tokens, tenant data and audit records: no cache (a browser's, a proxy's) may
/// keep any of them. (The console's static files say `no-cache` themselves: they hold no data.)
async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().entry(header::CACHE_CONTROL).or_insert(header::HeaderValue::from_static("no-store"));
    resp
}

/// 421 `host_not_allowed` for a `Host` the daemon does not answer to (see [`host`]).
async fn check_host(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(policy) = &state.hosts else { return next.run(req).await };
    let given = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match given {
        Some(host) if policy.allows(&host) => next.run(req).await,
        given => {
            let shown: String = given.unwrap_or_default().chars().take(100).collect();
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                format!("Host '{shown}' is not a name this daemon answers to (localhost, or server.allowed_hosts)"),
            )
            .into_response()
        }
    }
}

/// The handler of one entry of [`ROUTES`].
fn handler(method: &str, path: &str) -> MethodRouter<ApiState> {
    match (method, path) {
        ("POST", "/v1/invocations") => post(invocations::create),
        ("GET", "/v1/invocations/{id}") => get(invocations::get_one),
        ("POST", "/v1/batches") => post(batches::create),
        ("GET", "/v1/batches") => get(console::api::list_batches),
        ("GET", "/v1/batches/{id}") => get(batches::get_one),
        ("DELETE", "/v1/batches/{id}") => delete(batches::cancel),
        ("GET", "/v1/batches/{id}/results") => get(batches::results),
        ("GET", "/v1/batches/{id}/items") => get(console::api::batch_items),
        ("GET", "/v1/failures") => get(console::api::failures),
        ("GET", "/v1/whoami") => get(console::api::whoami),
        ("GET", "/v1/sessions") => get(ops::sessions),
        ("GET", "/v1/pools") => get(ops::pools),
        ("GET", "/v1/audit") => get(audit::list),
        ("POST", "/v1/tokens") => post(tokens::create),
        ("GET", "/v1/tokens") => get(tokens::list),
        ("DELETE", "/v1/tokens/{name}") => delete(tokens::revoke),
        ("GET", "/metrics") => get(ops::metrics),
        ("GET", "/healthz") => get(ops::healthz),
        ("GET", "/readyz") => get(ops::readyz),
        ("GET", "/openapi.json") => get(ops::openapi),
        ("GET", "/console") => get(console::page),
        ("GET", "/console/{asset}") => get(console::asset),
        _ => panic!("ROUTES lists {method} {path} but no handler serves it"),
    }
}

/// A known path asked with another method: 405 with the envelope (axum adds `Allow`).
async fn method_not_allowed(path: Option<MatchedPath>) -> ApiError {
    let path = path.as_ref().map(MatchedPath::as_str).unwrap_or("");
    let methods: Vec<&str> = ROUTES.iter().filter(|&&(_, p)| p == path).map(|&(m, _)| m).collect();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{path} answers {} only", methods.join(", ")),
    )
}

/// Counts requests by matched route (never the raw path: ids would explode the label set).
async fn count_requests(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state.broker.metrics().http_requests.with_label_values(&[&route, resp.status().as_str()]).inc();
    resp
}

/// Reads a body of at most `limit` bytes within `timeout`. A `Content-Length` over the limit is
/// 413 at once, before any of the body is read — so a client that sent `Expect: 100-continue`
/// never gets "100 Continue" for it (hyper sends that only when the body is first polled). A
/// body that does not arrive in time is 408 `body_timeout`.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let collect = async {
        // One buffer of the declared size: the body costs its own bytes, once.
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        let mut frames = body.into_data_stream();
        while let Some(chunk) = frames.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("the body could not be read: {e}"))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, collect).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {} s", timeout.as_secs_f64()),
        )
    })?
}

/// Counts a body's JSON values and nesting before serde builds anything (see [`json_scan`]).
pub(crate) fn scan_json(bytes: &[u8], limits: JsonLimits) -> Result<(), ApiError> {
    json_scan::scan(bytes, limits).map(|_| ()).map_err(|e| match e {
        ScanError::TooManyValues(_) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_values", e.to_string()),
        ScanError::TooDeep(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter_value",
            format!("{e}: parameter values nest at most {} levels", crate::broker::request::MAX_VALUE_DEPTH),
        ),
    })
}

/// 413 `too_many_values` when one invocation's parameters hold more values than allowed.
pub(crate) fn check_parameter_values(
    req: &crate::broker::request::InvocationRequest,
    limit: usize,
    index: Option<usize>,
) -> Result<(), ApiError> {
    let count = req.parameter_values();
    if count <= limit {
        return Ok(());
    }
    let at = index.map(|i| format!("item {i}: ")).unwrap_or_default();
    let mut e = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_values",
        format!("{at}the parameters hold {count} JSON values; at most {limit}"),
    );
    e.details = index.map(|i| serde_json::json!({"index": i}));
    Err(e)
}

/// What a request body is, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Json,
    /// One JSON value per line (`application/x-ndjson`, `application/jsonl`, ...).
    Ndjson,
}

/// Reads `Content-Type`: JSON is `application/json` or `application/*+json` (parameters such as
/// `charset` allowed); NDJSON, where the route takes it, any type naming `ndjson` or `jsonl`.
/// Anything else, or no type at all, is 415 `unsupported_media_type`: a browser sends such
/// bodies cross-origin without asking first (a CORS "simple request"), so accepting them as
/// JSON would let any web page submit work to a daemon whose authentication is switched off.
pub(crate) fn body_kind(headers: &HeaderMap, ndjson_ok: bool) -> Result<BodyKind, ApiError> {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        return Ok(BodyKind::Json);
    }
    if ndjson_ok && (essence.contains("ndjson") || essence.contains("jsonl")) {
        return Ok(BodyKind::Ndjson);
    }
    let expected = if ndjson_ok { "application/json or application/x-ndjson" } else { "application/json" };
    let given = if value.is_empty() { "no Content-Type".to_string() } else { format!("Content-Type '{value}'") };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("{given}: send {expected}"),
    ))
}

/// A JSON request body: the Content-Type checked (415), the size limited (413), its values and
/// nesting counted before parsing (413/422), the shape parsed (400/422 with the envelope).
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    json: JsonLimits,
    timeout: Duration,
) -> Result<T, ApiError> {
    body_kind(headers, false)?;
    let bytes = read_body(headers, body, limit, timeout).await?;
    scan_json(&bytes, json)?;
    serde_json::from_slice(&bytes).map_err(|e| error::body_error(e, None))
}

pub(crate) fn parse_id(text: &str, what: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(text).map_err(|_| ApiError::not_found(what))
}
