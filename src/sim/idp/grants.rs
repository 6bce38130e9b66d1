//! The token endpoint's grants: client credentials and refresh token (the device-code grant is in
//! `device`). Each checks what Entra checks, in Entra's order, and answers with Entra's refusal.

use super::client_auth::{presented, verify_assertion, Presented};
use super::entra::EntraError;
use super::{key, RegisteredApp, TenantRef, TokenRequestKey};
use crate::identity::cloud::resource_of;
use crate::sim::tokens::SimClaims;
use crate::sim::Simulator;
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// The device-code grant type.
pub(super) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Scopes that name no resource.
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "offline_access", "email"];

/// What the account behind a delegated token may do.
pub(super) struct AccountView {
    pub upn: String,
    pub all_tenants: bool,
    pub tenants: Vec<String>,
    /// `simulator.mfa_required`: its tokens need an MFA sign-in.
    pub mfa_required: bool,
}

impl AccountView {
    pub fn may_access(&self, tenant: &TenantRef) -> bool {
        let home = self.upn.rsplit_once('@').is_some_and(|(_, d)| d.eq_ignore_ascii_case(&tenant.domain));
        home || self.all_tenants || self.tenants.contains(&key(&tenant.domain))
    }
}

/// One token request as the endpoint received it.
pub(crate) struct TokenRequest<'a> {
    /// `{tenant}` of the path: a domain or GUID.
    pub tenant: &'a str,
    pub form: &'a HashMap<String, String>,
    /// `(client_id, secret)` of an `Authorization: Basic` header.
    pub basic: Option<(String, String)>,
    /// The URL it was posted to (what an assertion's `aud` must be).
    pub token_url: String,
}

impl TokenRequest<'_> {
    fn param(&self, name: &str) -> Result<&str, EntraError> {
        self.form.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()).ok_or_else(|| EntraError::missing(name))
    }

    fn client_id(&self) -> Result<String, EntraError> {
        match self.form.get("client_id").map(|s| s.trim()).filter(|s| !s.is_empty()) {
            Some(c) => Ok(c.to_string()),
            None => self.basic.as_ref().map(|(c, _)| c.clone()).ok_or_else(|| EntraError::missing("client_id")),
        }
    }

    fn credential(&self) -> Presented<'_> {
        presented(self.form, self.basic.as_ref().map(|(_, s)| s.as_str()))
    }

    /// The resource of the request's scope (the first one that names a resource).
    fn resource(&self) -> Option<String> {
        let scope = self.form.get("scope")?;
        scope
            .split_whitespace()
            .find(|s| !OIDC_SCOPES.contains(&s.to_ascii_lowercase().as_str()))
            .map(|s| resource_of(s).to_string())
    }
}

/// Checks the application's credential; `required` unless the app may act as a public client.
pub(super) fn check_client(app: &RegisteredApp, request: &TokenRequest<'_>, required: bool) -> Result<(), EntraError> {
    match request.credential() {
        Presented::None if required => Err(EntraError::credential_missing()),
        Presented::None => Ok(()),
        Presented::Secret(s) if app.secrets.iter().any(|known| known == s) => Ok(()),
        Presented::Secret(_) => Err(EntraError::bad_secret(&app.client_id)),
        Presented::Assertion(jwt) => verify_assertion(jwt, &app.client_id, &app.certs, &request.token_url),
    }
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Simulator {
    /// Answers one token request and counts it.
    pub(crate) fn idp_token(&self, request: &TokenRequest<'_>) -> Result<Json, EntraError> {
        let mut user = None;
        let outcome = self.idp_grant(request, &mut user);
        let tenant = self.tenant_ref(request.tenant).map_or_else(|| request.tenant.to_string(), |t| t.guid);
        let grant = match request.form.get("grant_type").map(String::as_str) {
            Some(DEVICE_CODE_GRANT) => "device_code".to_string(),
            Some(g) => g.to_string(),
            None => String::new(),
        };
        let counted = TokenRequestKey {
            grant,
            tenant,
            client_id: request.client_id().unwrap_or_default().to_ascii_lowercase(),
            resource: request.resource().unwrap_or_default(),
            user,
        };
        let mut idp = self.idp();
        idp.count(counted, &outcome);
        if request.form.contains_key("claims") {
            idp.stats.claims_challenges += 1;
        }
        outcome
    }

    fn idp_grant(&self, request: &TokenRequest<'_>, user: &mut Option<String>) -> Result<Json, EntraError> {
        if let Some(unavailable) = self.idp_unavailable() {
            return Err(unavailable);
        }
        let grant = request.param("grant_type")?;
        match grant {
            "client_credentials" => self.client_credentials(request),
            "refresh_token" => self.refresh_token_grant(request, user),
            DEVICE_CODE_GRANT => self.device_code_grant(request, user),
            other => Err(EntraError::unsupported_grant(other)),
        }
    }

    fn client_credentials(&self, request: &TokenRequest<'_>) -> Result<Json, EntraError> {
        let tenant = self.tenant_ref(request.tenant).ok_or_else(|| EntraError::tenant_not_found(request.tenant))?;
        let client_id = request.client_id()?;
        let scope = request.param("scope")?;
        if !scope.ends_with("/.default") || scope.split_whitespace().count() != 1 {
            return Err(EntraError::scope_invalid(scope));
        }
        let (appid, lifetime) = {
            let idp = self.idp();
            let app =
                idp.apps.get(&key(&client_id)).ok_or_else(|| EntraError::app_not_found(&client_id, request.tenant))?;
            check_client(app, request, true)?;
            if !app.consented_in(&tenant.domain) {
                return Err(EntraError::app_not_found(&client_id, &tenant.domain));
            }
            (app.client_id.clone(), idp.token_lifetime.as_secs())
        };
        let now = now_secs();
        let token = self.access_tokens().issue(&SimClaims {
            aud: resource_of(scope).to_string(),
            tid: tenant.guid,
            exp: now + lifetime,
            iat: now,
            appid,
            upn: None,
            amr: vec![],
            roles: vec!["Exchange.ManageAsApp".into()],
            scp: None,
        });
        Ok(json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}))
    }

    /// What a delegated token of `upn` may do; `None` for an unknown account.
    pub(super) fn account_view(&self, upn: &str) -> Option<AccountView> {
        let st = self.lock();
        let account = st.accounts.get(&key(upn))?;
        Some(AccountView {
            upn: account.upn.clone(),
            all_tenants: account.all_tenants,
            tenants: account.tenants.iter().cloned().collect(),
            mfa_required: st.mfa.contains(&key(upn)),
        })
    }

    fn refresh_token_grant(&self, request: &TokenRequest<'_>, user: &mut Option<String>) -> Result<Json, EntraError> {
        let tenant = self.tenant_ref(request.tenant).ok_or_else(|| EntraError::tenant_not_found(request.tenant))?;
        let client_id = request.client_id()?;
        let presented_token = request.param("refresh_token")?;
        let scope = request.param("scope")?.to_string();
        let resource = request.resource().ok_or_else(|| EntraError::scope_invalid(&scope))?;
        let hashed = super::hash(presented_token);
        // The token and the application, then the account (locks taken one at a time: the
        // simulator's state before the identity provider's, never the other way round).
        let (upn, line, mfa) = {
            let mut idp = self.idp();
            let app =
                idp.apps.get(&key(&client_id)).ok_or_else(|| EntraError::app_not_found(&client_id, request.tenant))?;
            check_client(app, request, !app.public_client)?;
            let record = idp.refresh_tokens.get(&hashed).ok_or_else(EntraError::refresh_token_unknown)?;
            if !record.client_id.eq_ignore_ascii_case(&client_id) {
                return Err(EntraError::refresh_token_other_client());
            }
            let (upn, line, mfa, issued) = (record.upn.clone(), record.line, record.mfa, record.issued);
            *user = Some(key(&upn));
            if idp.revoked_before.get(&key(&upn)).is_some_and(|revoked| *revoked >= issued) {
                return Err(EntraError::refresh_token_revoked());
            }
            if issued + idp.refresh_token_lifetime < SystemTime::now() {
                let when = chrono::DateTime::<chrono::Utc>::from(issued).to_rfc3339();
                return Err(EntraError::refresh_token_expired(&when, idp.refresh_token_lifetime.as_secs()));
            }
            if idp.newest_of_line.get(&line) != Some(&hashed) {
                idp.stats.stale_refresh_tokens += 1;
            }
            (upn, line, mfa)
        };
        let account = self.account_view(&upn).ok_or_else(EntraError::refresh_token_revoked)?;
        if !account.may_access(&tenant) {
            return Err(EntraError::user_not_in_tenant(&upn, &tenant.domain));
        }
        let mut idp = self.idp();
        let app =
            idp.apps.get(&key(&client_id)).ok_or_else(|| EntraError::app_not_found(&client_id, request.tenant))?;
        if !app.consented_in(&tenant.domain) {
            return Err(EntraError::consent_missing(&app.client_id, &app.name));
        }
        if account.mfa_required && !mfa {
            return Err(EntraError::mfa_required(&resource));
        }
        let appid = app.client_id.clone();
        let lifetime = idp.token_lifetime.as_secs();
        let refresh_token = idp.new_refresh_token(&upn, &appid, Some(line), mfa);
        drop(idp);
        let token = self.delegated_token(&resource, &tenant.guid, &appid, &upn, mfa, lifetime);
        Ok(json!({
            "token_type": "Bearer", "scope": scope, "expires_in": lifetime, "ext_expires_in": lifetime,
            "access_token": token, "refresh_token": refresh_token,
        }))
    }

    pub(super) fn delegated_token(
        &self,
        resource: &str,
        tid: &str,
        appid: &str,
        upn: &str,
        mfa: bool,
        lifetime: u64,
    ) -> String {
        let now = now_secs();
        let amr = if mfa { vec!["pwd".into(), "mfa".into()] } else { vec!["pwd".into()] };
        self.access_tokens().issue(&SimClaims {
            aud: resource.to_string(),
            tid: tid.to_string(),
            exp: now + lifetime,
            iat: now,
            appid: appid.to_string(),
            upn: Some(upn.to_string()),
            amr,
            roles: vec![],
            scp: Some("Exchange.Manage".into()),
        })
    }
}
