//! The identity provider's HTTP face, merged into the simulator's wire listener.

use super::entra::EntraError;
use super::grants::TokenRequest;
use crate::sim::Simulator;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::collections::HashMap;

#[derive(Clone)]
struct Idp {
    sim: Simulator,
    scheme: &'static str,
}

impl Idp {
    /// `http://host:port` as the client addressed it.
    fn origin(&self, headers: &HeaderMap) -> String {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        format!("{}://{host}", self.scheme)
    }
}

/// The token, device-code and sign-in endpoints for `sim`; `tls` says whether the listener
/// serves HTTPS (the origin a client addresses, which assertions name).
pub fn router(sim: Simulator, tls: bool) -> Router {
    let state = Idp { sim, scheme: if tls { "https" } else { "http" } };
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(device_code))
        .route("/devicelogin", get(sign_in_page).post(sign_in))
        .with_state(state)
}

fn answer(result: Result<serde_json::Value, EntraError>, origin: &str) -> Response {
    let mut response = match result {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut r = (status, Json(e.body(origin))).into_response();
            if let Some(secs) = e.retry_after {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        }
    };
    // Tokens are never cached by intermediaries.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache"));
    response
}

/// `Authorization: Basic base64(client_id:secret)` (client_secret_basic).
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(B64.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

async fn token(
    State(idp): State<Idp>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let origin = idp.origin(&headers);
    let Ok(Form(form)) = form else {
        return answer(Err(EntraError::missing("grant_type")), &origin);
    };
    let request = TokenRequest {
        tenant: &tenant,
        form: &form,
        basic: basic(&headers),
        token_url: format!("{origin}{}", uri.path()),
    };
    answer(idp.sim.idp_token(&request), &origin)
}

async fn device_code(
    State(idp): State<Idp>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let origin = idp.origin(&headers);
    let Ok(Form(form)) = form else {
        return answer(Err(EntraError::missing("client_id")), &origin);
    };
    answer(idp.sim.idp_device_code(&tenant, &form, &origin), &origin)
}

const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>Sign in (psbroker simulator)</title></head>
<body><h1>Simulated sign-in</h1><form method="post" action="/devicelogin">
<label>Code <input name="code" autocomplete="off"></label><br>
<label>User <input name="upn"></label><br>
<label>Password <input name="password" type="password"></label><br>
<button name="action" value="approve">Sign in</button> <button name="action" value="decline">Decline</button>
</form></body></html>"#;

async fn sign_in_page() -> Html<&'static str> {
    Html(PAGE)
}

/// The form of the sign-in page: `code`, `upn`, `password`, `action` (`approve` or `decline`).
async fn sign_in(State(idp): State<Idp>, form: Result<Form<HashMap<String, String>>, FormRejection>) -> Response {
    let Ok(Form(form)) = form else {
        return (StatusCode::BAD_REQUEST, "expected a form").into_response();
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    if field("action") == "decline" {
        return match idp.sim.decline_device_code(field("code")) {
            true => (StatusCode::OK, "Sign-in declined.").into_response(),
            false => (StatusCode::BAD_REQUEST, "No pending sign-in with that code.").into_response(),
        };
    }
    match idp.sim.sign_in_and_approve(field("code"), field("upn"), field("password")) {
        Ok(()) => (StatusCode::OK, "You have signed in. You may close this window.").into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}
