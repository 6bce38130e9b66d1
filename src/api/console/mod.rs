//! The web console at `/console`: a static page and one small ES module, embedded in the binary,
//! that call the same `/v1` API with the bearer token the user types in (kept in the tab's
//! `sessionStorage`, sent only as `Authorization`, never in a URL). The page itself holds no
//! data and needs no token; everything it shows comes from the API under the token's scopes.
//!
//! Every console response carries a strict Content-Security-Policy (no inline script or style,
//! no other origin, no framing, no form submission), `nosniff` and no referrer.

pub mod api;

use super::error::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

/// Served at `/console`.
const INDEX: &str = include_str!("assets/index.html");

/// Served at `/console/{asset}`: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("console.js", "text/javascript; charset=utf-8", include_str!("assets/console.js")),
    ("console.css", "text/css; charset=utf-8", include_str!("assets/console.css")),
    ("favicon.svg", "image/svg+xml", include_str!("assets/favicon.svg")),
];

/// Only this origin's script, style, images and API; nothing inline, nothing framed, no forms
/// sent anywhere (the login form is handled by the script, so a token never lands in a URL).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn serve(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // The files change with the binary: always revalidate.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

/// `GET /console`: the page.
pub async fn page() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{asset}`: the script, the style sheet, the icon; anything else is 404.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, content_type, body)| serve(content_type, body))
        .ok_or_else(|| ApiError::not_found("console asset"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads exactly the embedded assets, and nothing inline that the policy would block.
    #[test]
    fn the_page_references_only_embedded_assets_and_nothing_inline() {
        for (name, _, body) in ASSETS {
            assert!(!body.is_empty(), "{name} is empty");
            if *name != "favicon.svg" {
                assert!(INDEX.contains(&format!("/console/{name}")), "index.html does not load {name}");
            }
        }
        let lower = INDEX.to_lowercase();
        assert!(!lower.contains("<style"), "inline style");
        assert!(!lower.contains(" style="), "inline style attribute");
        let handler = lower.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "inline event handler: on{}", handler.unwrap_or_default());
        assert_eq!(lower.matches("<script").count(), 1, "one script, the module");
        assert!(lower.contains(r#"<script type="module" src="/console/console.js"></script>"#));
        assert!(!lower.contains("http://") && !lower.contains("https://"), "no other origin");
    }
}
