//! The token service: every configured OAuth identity's [`TokenSource`], one shared cache, and
//! the sealed refresh tokens of the delegated identities.
//!
//! - App-only identities (`grant = "client_credentials"`) ask each tenant's token endpoint with
//!   their certificate assertion or secret.
//! - Delegated identities (`grant = "refresh_token"`, the partner flow) exchange their one
//!   refresh token at each customer tenant's token endpoint. Entra answers with a new refresh
//!   token each time and does not revoke the old one: the newest is kept, sealed, in the store
//!   (read again before every exchange, so a `psbroker login` while the daemon runs counts at
//!   once). Partner access must be signed in with MFA (seed 002): a delegated token whose `amr`
//!   lacks `mfa` is refused here as `mfa_required`.

use super::assertion::ClientCertificate;
use super::cache::{CacheKey, TokenCache};
use super::grants::{ClientAuth, DeviceLogin, GrantKind, IdpClient, TokenAnswer};
use super::jwt::UnverifiedClaims;
use super::sealed::SealingKey;
use super::{AccessToken, Actor, TokenSource};
use crate::config::{AdminConfig, Config, CredentialRef, OAuthConfig, OAuthGrant};
use crate::metrics::Metrics;
use crate::remote::{FaultClass, RemoteError};
use crate::store::{SealedRefreshToken, Store};
use async_trait::async_trait;
use base64::Engine as _;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a token answer without `expires_in` or `exp` is assumed to last.
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);

/// One configured OAuth identity (an admin's).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The admin's name (the key of its stored refresh token).
    pub name: String,
    pub upn: String,
    pub grant: OAuthGrant,
    pub cloud: super::cloud::Cloud,
    pub login_url: String,
    pub client_id: String,
    pub client_auth: Option<ClientAuth>,
    /// Where `psbroker login` signs in.
    pub home_tenant: String,
}

impl Identity {
    /// Resolves the admin's `[admins.oauth]`: reads the secret or loads the certificate.
    pub fn from_config(admin: &AdminConfig, oauth: &OAuthConfig) -> Result<Identity, String> {
        let reference = |what: &str, r: &str| CredentialRef::parse(r).map_err(|e| format!("oauth.{what}: {e}"));
        let client_auth = match (&oauth.client_secret, &oauth.certificate) {
            (Some(secret), _) => {
                let secret =
                    reference("client_secret", secret)?.resolve().map_err(|e| format!("oauth.client_secret: {e}"))?;
                Some(ClientAuth::Secret(secret))
            }
            (None, Some(cert)) => {
                let bytes =
                    reference("certificate", cert)?.resolve_bytes().map_err(|e| format!("oauth.certificate: {e}"))?;
                let password = match &oauth.certificate_password {
                    Some(p) => Some(
                        CredentialRef::parse(p)
                            .and_then(|c| c.resolve())
                            .map_err(|e| format!("oauth.certificate_password: {e}"))?,
                    ),
                    None => None,
                };
                let cert = ClientCertificate::load(&bytes, password.as_ref())
                    .map_err(|e| format!("oauth.certificate: {e}"))?;
                Some(ClientAuth::Certificate(Arc::new(cert)))
            }
            (None, None) => None,
        };
        Ok(Identity {
            name: admin.name.to_ascii_lowercase(),
            upn: admin.upn.clone(),
            grant: oauth.grant,
            cloud: oauth.cloud,
            login_url: oauth.login_url(),
            client_id: oauth.client_id.trim().to_string(),
            client_auth,
            home_tenant: oauth.tenant.clone().unwrap_or_else(|| "organizations".into()),
        })
    }

    fn grant_kind(&self) -> GrantKind {
        match self.grant {
            OAuthGrant::ClientCredentials => GrantKind::ClientCredentials,
            OAuthGrant::RefreshToken => GrantKind::RefreshToken,
        }
    }

    fn cache_key(&self, tenant: &str, scope: &str) -> CacheKey {
        CacheKey {
            login_url: self.login_url.to_ascii_lowercase(),
            tenant: tenant.trim().to_ascii_lowercase(),
            client_id: self.client_id.to_ascii_lowercase(),
            scope: scope.trim().to_string(),
            grant: self.grant_kind(),
            user: (self.grant == OAuthGrant::RefreshToken).then(|| self.name.clone()),
        }
    }

    /// The associated data a stored refresh token is sealed with: its identity and client.
    fn seal_context(&self) -> String {
        format!("psbroker refresh token\0{}\0{}", self.name, self.client_id)
    }
}

/// Sealed refresh tokens in the store.
pub struct RefreshTokens {
    pub store: Store,
    pub key: SealingKey,
}

impl RefreshTokens {
    /// The store with the configured `[identity] refresh_token_key`; `None` without a key.
    pub fn from_config(config: &Config, store: Store) -> anyhow::Result<Option<RefreshTokens>> {
        match &config.identity.refresh_token_key {
            Some(reference) => Ok(Some(RefreshTokens { store, key: sealing_key(reference)? })),
            None => Ok(None),
        }
    }

    async fn load(&self, identity: &Identity) -> Result<SecretString, RemoteError> {
        let login_again = |why: String| {
            RemoteError::new(
                FaultClass::ReauthRequired,
                format!("{why}: sign in with `psbroker login --admin {}`", identity.name),
            )
        };
        let row = self.store.refresh_token(&identity.name).await.map_err(|e| {
            RemoteError::new(
                FaultClass::IdentityServiceUnreachable,
                format!("cannot read the stored refresh token: {e}"),
            )
        })?;
        let row =
            row.ok_or_else(|| login_again(format!("no refresh token is stored for admin '{}'", identity.name)))?;
        if !row.client_id.eq_ignore_ascii_case(&identity.client_id) {
            return Err(login_again(format!(
                "the stored refresh token was issued to another application ({})",
                row.client_id
            )));
        }
        self.key.open(&row.sealed, &row.key_id, &identity.seal_context()).map_err(|e| login_again(e.to_string()))
    }

    /// Keeps `token` unless a newer one is stored already.
    pub async fn save(&self, identity: &Identity, token: &SecretString, account: Option<&str>) -> Result<bool, String> {
        let row = SealedRefreshToken {
            identity: identity.name.clone(),
            client_id: identity.client_id.clone(),
            account: account.map(str::to_string),
            key_id: self.key.id().to_string(),
            sealed: self.key.seal(token, &identity.seal_context()),
            issued_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
        };
        self.store.put_refresh_token(&row).await.map_err(|e| e.to_string())
    }
}

/// Gets, caches and renews access tokens for every identity.
pub struct TokenService {
    idp: IdpClient,
    cache: TokenCache,
    refresh_tokens: Option<RefreshTokens>,
}

impl TokenService {
    pub fn new(idp: IdpClient, refresh_tokens: Option<RefreshTokens>) -> TokenService {
        TokenService { idp, cache: TokenCache::default(), refresh_tokens }
    }

    /// Builds the service and a [`TokenSource`] per admin with an `[admins.oauth]` identity
    /// (keyed by admin name, lower case). `store` keeps the delegated identities' refresh
    /// tokens. Fails on an unreadable certificate, secret or key.
    pub fn from_config(
        config: &Config,
        store: Option<Store>,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<(Arc<TokenService>, super::TokenSources)> {
        let idp = IdpClient::new(Duration::from_secs(config.identity.request_timeout_seconds), metrics)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let refresh_tokens = match store {
            Some(store) => RefreshTokens::from_config(config, store)?,
            None => None,
        };
        let service = Arc::new(TokenService::new(idp, refresh_tokens));
        let mut sources = super::TokenSources::new();
        for admin in &config.admins {
            if let Some(oauth) = &admin.oauth {
                let identity =
                    Identity::from_config(admin, oauth).map_err(|e| anyhow::anyhow!("admin '{}': {e}", admin.name))?;
                sources.insert(identity.name.clone(), service.source(identity));
            }
        }
        Ok((service, sources))
    }

    /// The [`TokenSource`] of one identity.
    pub fn source(self: &Arc<Self>, identity: Identity) -> Arc<dyn TokenSource> {
        Arc::new(IdentitySource { service: self.clone(), identity: Arc::new(identity) })
    }

    /// Asks the identity provider (no cache).
    async fn fetch(
        &self,
        identity: &Identity,
        tenant: &str,
        scope: &str,
        claims: Option<&str>,
    ) -> Result<AccessToken, RemoteError> {
        tracing::debug!(admin = %identity.name, tenant, scope, grant = identity.grant_kind().label(), "requesting an access token");
        match identity.grant {
            OAuthGrant::ClientCredentials => {
                let auth = identity.client_auth.as_ref().ok_or_else(|| {
                    RemoteError::new(FaultClass::InvalidClient, "client credentials need a secret or a certificate")
                })?;
                let answer = self
                    .idp
                    .client_credentials(&identity.login_url, tenant, &identity.client_id, auth, scope, claims)
                    .await?;
                Ok(access_token(answer, Actor::App).0)
            }
            OAuthGrant::RefreshToken => {
                let store = self.refresh_tokens.as_ref().ok_or_else(|| {
                    RemoteError::new(
                        FaultClass::ReauthRequired,
                        "no refresh-token store: configure [identity] refresh_token_key and sign in with `psbroker login`",
                    )
                })?;
                let refresh_token = store.load(identity).await?;
                let answer = self
                    .idp
                    .refresh(
                        &identity.login_url,
                        tenant,
                        &identity.client_id,
                        identity.client_auth.as_ref(),
                        &refresh_token,
                        scope,
                        claims,
                    )
                    .await?;
                if let Some(rotated) = &answer.refresh_token {
                    if let Err(e) = store.save(identity, rotated, None).await {
                        tracing::warn!(admin = %identity.name, error = %e, "could not keep the rotated refresh token; the previous one stays in use");
                    }
                }
                let (token, claims) = access_token(answer, Actor::User { upn: identity.upn.clone() });
                if claims.is_some_and(|c| !c.has_mfa()) {
                    return Err(RemoteError::new(
                        FaultClass::MfaRequired,
                        format!(
                            "the delegated token's sign-in did not use multi-factor authentication (no `mfa` in amr), which partner access requires: sign in with MFA via `psbroker login --admin {}`",
                            identity.name
                        ),
                    ));
                }
                Ok(token)
            }
        }
    }

    async fn token(
        &self,
        identity: &Identity,
        tenant: &str,
        scope: &str,
        claims: Option<&str>,
    ) -> Result<AccessToken, RemoteError> {
        let key = identity.cache_key(tenant, scope);
        match claims {
            None => self.cache.get(&key, || self.fetch(identity, tenant, scope, None)).await,
            Some(challenge) => {
                let token = self.fetch(identity, tenant, scope, Some(&claims_parameter(challenge))).await?;
                self.cache.put(&key, &token);
                Ok(token)
            }
        }
    }

    /// `psbroker login`: a device-code sign-in at the identity's home tenant. `show` gets the
    /// verification URI and user code to print; on success the refresh token is sealed and
    /// stored, and the signed-in account (UPN) is returned.
    pub async fn device_login(
        &self,
        identity: &Identity,
        show: impl FnOnce(&DeviceLogin),
    ) -> Result<Option<String>, RemoteError> {
        let store = self.refresh_tokens.as_ref().ok_or_else(|| {
            RemoteError::new(FaultClass::Protocol, "[identity] refresh_token_key is needed to keep the refresh token")
        })?;
        let scopes = vec![identity.cloud.exo_scope(), "offline_access".to_string()];
        let login = self
            .idp
            .start_device_login(&identity.login_url, &identity.home_tenant, &identity.client_id, &scopes)
            .await?;
        show(&login);
        let answer = self
            .idp
            .finish_device_login(&identity.login_url, &identity.home_tenant, &identity.client_id, &login)
            .await?;
        let account =
            UnverifiedClaims::read(secrecy::ExposeSecret::expose_secret(&answer.access_token)).and_then(|c| c.upn);
        let refresh_token = answer.refresh_token.ok_or_else(|| {
            RemoteError::new(
                FaultClass::Protocol,
                "the identity provider issued no refresh token (offline_access was refused)",
            )
        })?;
        store
            .save(identity, &refresh_token, account.as_deref())
            .await
            .map_err(|e| RemoteError::new(FaultClass::Protocol, format!("cannot store the refresh token: {e}")))?;
        Ok(account)
    }
}

/// The token and what it says about itself. Its expiry is the earlier of `expires_in` and the
/// token's own `exp` (whole seconds: an `exp` can be earlier than `expires_in` suggests).
fn access_token(answer: TokenAnswer, actor: Actor) -> (AccessToken, Option<UnverifiedClaims>) {
    let claims = UnverifiedClaims::read(secrecy::ExposeSecret::expose_secret(&answer.access_token));
    let exp = claims.as_ref().and_then(|c| c.exp).map(|s| UNIX_EPOCH + Duration::from_secs(s));
    let expires_at = match (answer.expires_at, exp) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or_else(|| SystemTime::now() + UNKNOWN_LIFETIME),
    };
    let actor = match (actor, claims.as_ref().and_then(|c| c.upn.clone())) {
        (Actor::User { .. }, Some(upn)) => Actor::User { upn },
        (actor, _) => actor,
    };
    let token = AccessToken {
        bearer: answer.access_token,
        expires_at,
        tenant_id: claims.as_ref().and_then(|c| c.tid.clone()),
        actor,
    };
    (token, claims)
}

/// A claims challenge as the token endpoint wants it: JSON. `WWW-Authenticate` carries it in
/// base64; either form is accepted.
fn claims_parameter(challenge: &str) -> String {
    let challenge = challenge.trim();
    if serde_json::from_str::<serde_json::Value>(challenge).is_ok() {
        return challenge.to_string();
    }
    let engines = [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE_NO_PAD];
    engines
        .iter()
        .filter_map(|e| e.decode(challenge.trim_end_matches('=')).ok().or_else(|| e.decode(challenge).ok()))
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        .find(|text| serde_json::from_str::<serde_json::Value>(text).is_ok())
        .unwrap_or_else(|| challenge.to_string())
}

fn sealing_key(reference: &str) -> anyhow::Result<SealingKey> {
    let text = CredentialRef::parse(reference)
        .and_then(|r| r.resolve())
        .map_err(|e| anyhow::anyhow!("identity.refresh_token_key: {e}"))?;
    SealingKey::from_text(&text).map_err(|e| anyhow::anyhow!("identity.refresh_token_key: {e}"))
}

/// One identity's view of the service.
struct IdentitySource {
    service: Arc<TokenService>,
    identity: Arc<Identity>,
}

#[async_trait]
impl TokenSource for IdentitySource {
    async fn token(&self, tenant: &str, scope: &str, claims: Option<&str>) -> Result<AccessToken, RemoteError> {
        self.service.token(&self.identity, tenant, scope, claims).await
    }

    fn invalidate(&self, tenant: &str, scope: &str) {
        self.service.cache.invalidate(&self.identity.cache_key(tenant, scope));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_challenges_are_sent_as_json() {
        let json = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        assert_eq!(claims_parameter(json), json);
        assert_eq!(claims_parameter(&b64), json);
        assert_eq!(claims_parameter(b64.trim_end_matches('=')), json);
    }
}
