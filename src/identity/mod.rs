//! Identity: OAuth access tokens for the endpoints that want them (Exchange Online and Security
//! & Compliance over REST; the bearer-in-Basic form of WinRM).
//!
//! This is the seam the connectors see: a [`TokenSource`] gives a valid bearer token for a
//! (tenant, scope) on behalf of one configured identity (an admin). How tokens are obtained,
//! cached, refreshed and kept is the token service's business (this module's submodules); a
//! connector only asks, and after a 401 says the token was no good.

pub mod assertion;
pub mod cache;
pub mod cloud;
pub mod error;
pub mod grants;
pub mod jwt;
pub mod sealed;
pub mod service;

pub use service::{Identity, TokenService};

/// The token sources of the admins with an OAuth identity, by lower-case admin name.
pub type TokenSources = std::collections::HashMap<String, std::sync::Arc<dyn TokenSource>>;

use crate::remote::RemoteError;
use async_trait::async_trait;
use secrecy::SecretString;
use std::fmt;
use std::time::SystemTime;

/// How the identity acts in the tenant, which decides e.g. Exchange's `X-AnchorMailbox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An application acting as itself (client credentials): `APP:SystemMailbox{…}@{tenant}`.
    App,
    /// A user (delegated: partner refresh token, device-code sign-in): `UPN:<upn>`.
    User { upn: String },
}

/// A bearer token and what the connector needs to know about it. The token itself never
/// appears in logs or `Debug` output.
#[derive(Clone)]
pub struct AccessToken {
    pub bearer: SecretString,
    pub expires_at: SystemTime,
    /// The tenant's GUID (the token's `tid` claim), when known: the safe form of the tenant in
    /// Exchange's REST paths.
    pub tenant_id: Option<String>,
    pub actor: Actor,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("bearer", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("tenant_id", &self.tenant_id)
            .field("actor", &self.actor)
            .finish()
    }
}

/// Access tokens of one identity. Implementations cache per (tenant, scope), refresh before
/// expiry, and make one request per key however many callers ask at once.
///
/// Failures are [`RemoteError`]s of the identity classes (`reauth_required`, `mfa_required`,
/// `consent_required`, `invalid_client`, `identity_service_unreachable`), so the broker's one
/// failure table (`broker::failure`) applies to them as to any remote failure.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// A token for `scope` (e.g. `https://outlook.office365.com/.default`) in `tenant` (a domain
    /// or GUID). `claims`: a claims challenge from a 401 (`WWW-Authenticate: … claims="…"`) that
    /// the new token must satisfy; such a request bypasses the cache.
    async fn token(&self, tenant: &str, scope: &str, claims: Option<&str>) -> Result<AccessToken, RemoteError>;

    /// The service refused a token this source gave out (HTTP 401): forget it, so the next
    /// [`TokenSource::token`] call for that key asks the identity provider again.
    fn invalidate(&self, tenant: &str, scope: &str);
}
