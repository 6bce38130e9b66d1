//! Token requests to the identity provider: client credentials, refresh token (the partner flow:
//! one refresh token exchanged at each customer tenant's token endpoint), and the device-code
//! sign-in of `psbroker login`.
//!
//! The `oauth2` crate builds the requests and parses the answers, and runs the device-code
//! polling (`authorization_pending`, `slow_down`). Two things it does not do are added around it:
//! the client assertion (sent as the `client_assertion` parameters, since its `aud` is each
//! tenant's own token URL, a fresh one per request) and the reading of Entra's refusals, whose
//! `AADSTS` codes and `Retry-After` decide the failure class — so every answer goes through
//! [`Transport`], which also counts each request in `psbroker_token_requests_total`.

// RemoteError is the connector seam's error type; its size is the same everywhere.
#![allow(clippy::result_large_err)]

use super::assertion::{ClientCertificate, ASSERTION_TYPE};
use super::cloud::{device_code_url, token_url};
use super::error;
use crate::metrics::Metrics;
use crate::remote::{FaultClass, RemoteError};
use oauth2::basic::BasicClient;
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, DeviceAuthorizationUrl, ErrorResponse, HttpRequest,
    HttpResponse, RefreshToken, RequestTokenError, Scope, StandardDeviceAuthorizationResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How the application proves who it is.
#[derive(Clone)]
pub enum ClientAuth {
    Secret(SecretString),
    Certificate(Arc<ClientCertificate>),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::Secret(_) => f.write_str("Secret([redacted])"),
            ClientAuth::Certificate(c) => write!(f, "Certificate({})", c.thumbprint_s256()),
        }
    }
}

/// The grant a request uses, as the metric labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantKind {
    ClientCredentials,
    RefreshToken,
    DeviceCode,
}

impl GrantKind {
    pub fn label(self) -> &'static str {
        match self {
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::RefreshToken => "refresh_token",
            GrantKind::DeviceCode => "device_code",
        }
    }
}

/// A token the identity provider issued.
pub struct TokenAnswer {
    pub access_token: SecretString,
    /// A new refresh token (Entra rotates them on use): the caller keeps the newest.
    pub refresh_token: Option<SecretString>,
    /// When the token expires, by the answer's `expires_in` counted from when the request was
    /// sent (so it errs early).
    pub expires_at: Option<SystemTime>,
}

/// A pending device-code sign-in: what the user is shown.
pub struct DeviceLogin {
    pub verification_uri: String,
    pub user_code: String,
    pub expires_in: Duration,
    details: StandardDeviceAuthorizationResponse,
}

/// One identity provider client: a dedicated HTTP client with its timeout, and the metric.
#[derive(Clone)]
pub struct IdpClient {
    http: reqwest::Client,
    metrics: Option<Arc<Metrics>>,
}

impl IdpClient {
    pub fn new(timeout: Duration, metrics: Option<Arc<Metrics>>) -> Result<IdpClient, RemoteError> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Token endpoints answer directly; a redirect would carry credentials elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("psbroker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RemoteError::new(FaultClass::Protocol, format!("identity HTTP client: {e}")))?;
        Ok(IdpClient { http, metrics })
    }

    /// App-only: `grant_type=client_credentials` at the tenant's token endpoint.
    pub async fn client_credentials(
        &self,
        login_url: &str,
        tenant: &str,
        client_id: &str,
        auth: &ClientAuth,
        scope: &str,
        claims: Option<&str>,
    ) -> Result<TokenAnswer, RemoteError> {
        let url = token_url(login_url, tenant);
        let client = client(client_id, &url, Some(auth))?;
        let mut request = client.exchange_client_credentials().add_scope(Scope::new(scope.to_string()));
        for (name, value) in extra_params(Some(auth), client_id, &url, claims) {
            request = request.add_extra_param(name, value);
        }
        let transport = Transport::new(self, GrantKind::ClientCredentials);
        let sent = SystemTime::now();
        let answer = request.request_async(&transport).await;
        transport.finish(answer, sent)
    }

    /// Delegated: `grant_type=refresh_token` at the tenant's token endpoint (for a partner, the
    /// customer's), with the application's credential when it has one.
    #[allow(clippy::too_many_arguments)] // one request's parameters, all distinct
    pub async fn refresh(
        &self,
        login_url: &str,
        tenant: &str,
        client_id: &str,
        auth: Option<&ClientAuth>,
        refresh_token: &SecretString,
        scope: &str,
        claims: Option<&str>,
    ) -> Result<TokenAnswer, RemoteError> {
        let url = token_url(login_url, tenant);
        let client = client(client_id, &url, auth)?;
        let refresh_token = RefreshToken::new(refresh_token.expose_secret().to_string());
        let mut request = client.exchange_refresh_token(&refresh_token).add_scope(Scope::new(scope.to_string()));
        for (name, value) in extra_params(auth, client_id, &url, claims) {
            request = request.add_extra_param(name, value);
        }
        let transport = Transport::new(self, GrantKind::RefreshToken);
        let sent = SystemTime::now();
        let answer = request.request_async(&transport).await;
        transport.finish(answer, sent)
    }

    /// Starts a device-code sign-in at `tenant` (the partner's tenant, or `organizations`). A
    /// public-client flow: only the client id is sent.
    pub async fn start_device_login(
        &self,
        login_url: &str,
        tenant: &str,
        client_id: &str,
        scopes: &[String],
    ) -> Result<DeviceLogin, RemoteError> {
        let client = device_client(client_id, login_url, tenant)?;
        let request = client.exchange_device_code().add_scopes(scopes.iter().map(|s| Scope::new(s.clone())));
        let transport = Transport::new(self, GrantKind::DeviceCode);
        let details: StandardDeviceAuthorizationResponse =
            request.request_async(&transport).await.map_err(|e| transport.refusal_or(e))?;
        Ok(DeviceLogin {
            verification_uri: details.verification_uri().to_string(),
            user_code: details.user_code().secret().clone(),
            expires_in: details.expires_in(),
            details,
        })
    }

    /// Polls until the user signs in, declines, or the code expires (each poll is a request).
    pub async fn finish_device_login(
        &self,
        login_url: &str,
        tenant: &str,
        client_id: &str,
        login: &DeviceLogin,
    ) -> Result<TokenAnswer, RemoteError> {
        let client = device_client(client_id, login_url, tenant)?;
        let transport = Transport::new(self, GrantKind::DeviceCode);
        let sent = SystemTime::now();
        let answer = client
            .exchange_device_access_token(&login.details)
            .request_async(&transport, tokio::time::sleep, Some(login.expires_in))
            .await;
        transport.finish(answer, sent)
    }
}

type Oauth2Client = BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn bad_url(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(FaultClass::Protocol, format!("identity provider URL: {e}"))
}

/// A client for one token URL; a secret goes in the request body (`client_secret_post`).
fn client(client_id: &str, url: &str, auth: Option<&ClientAuth>) -> Result<Oauth2Client, RemoteError> {
    let mut client = BasicClient::new(ClientId::new(client_id.to_string()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(TokenUrl::new(url.to_string()).map_err(bad_url)?);
    if let Some(ClientAuth::Secret(secret)) = auth {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_string()));
    }
    Ok(client)
}

type DeviceClient = BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn device_client(client_id: &str, login_url: &str, tenant: &str) -> Result<DeviceClient, RemoteError> {
    Ok(client(client_id, &token_url(login_url, tenant), None)?.set_device_authorization_url(
        DeviceAuthorizationUrl::new(device_code_url(login_url, tenant)).map_err(bad_url)?,
    ))
}

/// What `oauth2` does not send by itself: a certificate's client assertion (its `aud` is this
/// token URL) and a claims challenge.
fn extra_params(
    auth: Option<&ClientAuth>,
    client_id: &str,
    url: &str,
    claims: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut params = Vec::new();
    if let Some(ClientAuth::Certificate(cert)) = auth {
        params.push(("client_assertion_type", ASSERTION_TYPE.to_string()));
        params.push(("client_assertion", cert.assertion(client_id, url)));
    }
    if let Some(c) = claims {
        params.push(("claims", c.to_string()));
    }
    params
}

/// The transport failure of one request (the answer, if any, is classified separately).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(RemoteError);

/// Sends one request's HTTP calls, counts each, and remembers the last refusal classified from
/// the raw answer (status, `AADSTS` codes, `Retry-After`), which is what a failed request
/// reports. Answers are handed to `oauth2` unchanged, so its device-code polling sees
/// `authorization_pending` and `slow_down`.
struct Transport<'a> {
    idp: &'a IdpClient,
    grant: GrantKind,
    refusal: Mutex<Option<RemoteError>>,
}

impl<'a> Transport<'a> {
    fn new(idp: &'a IdpClient, grant: GrantKind) -> Self {
        Transport { idp, grant, refusal: Mutex::new(None) }
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.idp.metrics {
            m.token_requests.with_label_values(&[self.grant.label(), outcome]).inc();
        }
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let request = reqwest::Request::try_from(request).map_err(|e| TransportError(error::unreachable(e)))?;
        let response = match self.idp.http.execute(request).await {
            Ok(r) => r,
            Err(e) => {
                let err = error::unreachable(if e.is_timeout() { "timed out".to_string() } else { e.to_string() });
                self.count(err.class.code());
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.clone());
                return Err(TransportError(err));
            }
        };
        let status = response.status();
        let retry_after = error::retry_after(response.headers());
        let mut builder = oauth2::http::Response::builder().status(status.as_u16());
        for (name, value) in response.headers() {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
        let body = response.bytes().await.map_err(|e| TransportError(error::unreachable(e)))?.to_vec();
        if status.is_success() {
            self.count("issued");
        } else {
            let parsed = error::TokenErrorBody::parse(&body);
            if matches!(parsed.error.as_str(), "authorization_pending" | "slow_down") {
                self.count("pending");
            } else {
                let err = error::from_answer(status.as_u16(), &body, retry_after);
                self.count(err.class.code());
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
            }
        }
        builder.body(body).map_err(|e| TransportError(error::unreachable(e)))
    }

    /// The failure a request ends with: the classified refusal if the provider answered one.
    fn refusal_or<E: ErrorResponse + 'static>(&self, e: RequestTokenError<TransportError, E>) -> RemoteError {
        if let Some(refusal) = self.refusal.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return refusal;
        }
        match e {
            RequestTokenError::Request(TransportError(err)) => err,
            // Never the body: it may hold a token. The JSON path says what did not fit.
            RequestTokenError::Parse(e, _) => RemoteError::new(
                FaultClass::Protocol,
                format!("the identity provider's answer is not what OAuth specifies (at {})", e.path()),
            ),
            // Every refusal is classified from the raw answer above; this is a defensive fallback.
            RequestTokenError::ServerResponse(r) => {
                RemoteError::new(FaultClass::Protocol, format!("identity provider refused the request: {r}"))
            }
            RequestTokenError::Other(text) => {
                RemoteError::new(FaultClass::Protocol, format!("identity provider: {text}"))
            }
        }
    }

    fn finish<R: TokenResponse, E: ErrorResponse + 'static>(
        &self,
        answer: Result<R, RequestTokenError<TransportError, E>>,
        sent: SystemTime,
    ) -> Result<TokenAnswer, RemoteError> {
        let answer = answer.map_err(|e| self.refusal_or(e))?;
        Ok(TokenAnswer {
            access_token: SecretString::from(answer.access_token().secret().clone()),
            refresh_token: answer.refresh_token().map(|r| SecretString::from(r.secret().clone())),
            expires_at: answer.expires_in().map(|d| sent + d),
        })
    }
}

impl<'c> AsyncHttpClient<'c> for Transport<'_> {
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, TransportError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}
