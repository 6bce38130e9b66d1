//! The device-code sign-in (RFC 8628 as Entra runs it): the client gets a device code and a
//! user code, the user approves the user code on the sign-in page (or a test calls
//! [`Simulator::approve_device_code`]), the client polls the token endpoint with the device code
//! at the interval it was given, and gets `authorization_pending`, `slow_down` (polling faster
//! than the interval), `expired_token`, `authorization_declined`, or the tokens.

use super::entra::EntraError;
use super::grants::TokenRequest;
use super::{key, random_text, TenantRef};
use crate::sim::{SimCredential, Simulator};
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tenants a sign-in may start at without naming one.
const ANY_ORGANIZATION: [&str; 2] = ["organizations", "common"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Approval {
    Pending,
    Approved { upn: String, mfa: bool },
    Declined,
}

pub(crate) struct DeviceCode {
    user_code: String,
    client_id: String,
    scopes: Vec<String>,
    /// The tenant the sign-in started at (`None`: any organization, i.e. the user's home).
    tenant: Option<TenantRef>,
    expires: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
    approval: Approval,
}

/// `ABCD-EFGH` and `abcdefgh` name the same code.
fn normalize(user_code: &str) -> String {
    user_code.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_uppercase()
}

impl Simulator {
    /// `POST /{tenant}/oauth2/v2.0/devicecode`.
    pub(crate) fn idp_device_code(
        &self,
        tenant: &str,
        form: &HashMap<String, String>,
        origin: &str,
    ) -> Result<Json, EntraError> {
        if let Some(unavailable) = self.idp_unavailable() {
            return Err(unavailable);
        }
        let client_id = form
            .get("client_id")
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| EntraError::missing("client_id"))?;
        let scope = form
            .get("scope")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EntraError::missing("scope"))?;
        let tenant_ref = if ANY_ORGANIZATION.contains(&key(tenant).as_str()) {
            None
        } else {
            Some(self.tenant_ref(tenant).ok_or_else(|| EntraError::tenant_not_found(tenant))?)
        };
        let mut idp = self.idp();
        let app = idp.apps.get(&key(client_id)).ok_or_else(|| EntraError::app_not_found(client_id, tenant))?;
        if !app.public_client {
            return Err(EntraError::public_client_not_allowed());
        }
        let app_client_id = app.client_id.clone();
        let device_code = random_text(48, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");
        let user_code = random_text(8, b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789");
        let (interval, lifetime) = (idp.device_interval, idp.device_lifetime);
        idp.device_codes.insert(
            device_code.clone(),
            DeviceCode {
                user_code: user_code.clone(),
                client_id: app_client_id,
                scopes: scope.split_whitespace().map(str::to_string).collect(),
                tenant: tenant_ref,
                expires: Instant::now() + lifetime,
                interval,
                last_poll: None,
                approval: Approval::Pending,
            },
        );
        idp.stats.device_codes += 1;
        let uri = format!("{origin}/devicelogin");
        Ok(json!({
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": uri,
            "expires_in": lifetime.as_secs(),
            "interval": interval.as_secs(),
            "message": format!("To sign in, use a web browser to open the page {uri} and enter the code {user_code} to authenticate."),
        }))
    }

    /// The device-code grant at the token endpoint.
    pub(super) fn device_code_grant(
        &self,
        request: &TokenRequest<'_>,
        user: &mut Option<String>,
    ) -> Result<Json, EntraError> {
        let code =
            request.form.get("device_code").map(|c| c.trim()).ok_or_else(|| EntraError::missing("device_code"))?;
        let client_id = request.form.get("client_id").map(|c| key(c)).unwrap_or_default();
        let (upn, mfa, scopes, tenant) = {
            let mut idp = self.idp();
            let entry = idp.device_codes.get_mut(code).filter(|d| key(&d.client_id) == client_id);
            let entry = entry.ok_or_else(EntraError::device_code_unknown)?;
            let now = Instant::now();
            if now >= entry.expires {
                idp.device_codes.remove(code);
                return Err(EntraError::device_code_expired());
            }
            match entry.approval.clone() {
                Approval::Pending => {
                    let too_soon = entry.last_poll.is_some_and(|last| now < last + entry.interval.mul_f64(0.8));
                    entry.last_poll = Some(now);
                    return Err(if too_soon { EntraError::slow_down() } else { EntraError::authorization_pending() });
                }
                Approval::Declined => {
                    idp.device_codes.remove(code);
                    return Err(EntraError::device_code_declined());
                }
                Approval::Approved { upn, mfa } => {
                    let entry = idp.device_codes.remove(code).expect("present");
                    (upn, mfa, entry.scopes, entry.tenant)
                }
            }
        };
        *user = Some(key(&upn));
        let account = self.account_view(&upn).ok_or_else(EntraError::device_code_unknown)?;
        let home = upn.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        let tenant = match tenant {
            Some(t) => t,
            None => self.tenant_ref(home).ok_or_else(|| EntraError::tenant_not_found(home))?,
        };
        if !account.may_access(&tenant) {
            return Err(EntraError::user_not_in_tenant(&upn, &tenant.domain));
        }
        let resource = request_resource(&scopes);
        if account.mfa_required && !mfa {
            return Err(EntraError::mfa_required(&resource));
        }
        let mut idp = self.idp();
        let appid = idp.apps.get(&client_id).map(|a| a.client_id.clone()).unwrap_or(client_id);
        let lifetime = idp.token_lifetime.as_secs();
        let refresh_token = scopes
            .iter()
            .any(|s| s.eq_ignore_ascii_case("offline_access"))
            .then(|| idp.new_refresh_token(&upn, &appid, None, mfa));
        drop(idp);
        let token = self.delegated_token(&resource, &tenant.guid, &appid, &upn, mfa, lifetime);
        let mut answer = json!({
            "token_type": "Bearer", "scope": scopes.join(" "), "expires_in": lifetime, "ext_expires_in": lifetime,
            "access_token": token,
        });
        if let Some(rt) = refresh_token {
            answer["refresh_token"] = json!(rt);
        }
        Ok(answer)
    }

    /// The user signs in (as `upn`, with MFA unless configured otherwise) and approves the code.
    pub fn approve_device_code(&self, user_code: &str, upn: &str) -> Result<(), String> {
        let account = self.account_view(upn).ok_or_else(|| format!("no account '{upn}'"))?;
        let mut idp = self.idp();
        let mfa = idp.signs_in_with_mfa(upn);
        let wanted = normalize(user_code);
        let entry = idp
            .device_codes
            .values_mut()
            .find(|d| {
                normalize(&d.user_code) == wanted && d.approval == Approval::Pending && Instant::now() < d.expires
            })
            .ok_or_else(|| format!("no pending sign-in with code {user_code}"))?;
        entry.approval = Approval::Approved { upn: account.upn, mfa };
        Ok(())
    }

    /// The user refuses the sign-in. False when no such code is pending.
    pub fn decline_device_code(&self, user_code: &str) -> bool {
        let wanted = normalize(user_code);
        let mut idp = self.idp();
        match idp
            .device_codes
            .values_mut()
            .find(|d| normalize(&d.user_code) == wanted && d.approval == Approval::Pending)
        {
            Some(entry) => {
                entry.approval = Approval::Declined;
                true
            }
            None => false,
        }
    }

    /// The user codes waiting for a sign-in.
    pub fn pending_device_codes(&self) -> Vec<String> {
        let now = Instant::now();
        let idp = self.idp();
        idp.device_codes
            .values()
            .filter(|d| d.approval == Approval::Pending && now < d.expires)
            .map(|d| d.user_code.clone())
            .collect()
    }

    /// The sign-in page's form: the account's password, then the approval.
    pub(super) fn sign_in_and_approve(&self, user_code: &str, upn: &str, password: &str) -> Result<(), String> {
        self.authenticate(upn, SimCredential::Password(password))
            .map_err(|_| "wrong user name or password".to_string())?;
        self.approve_device_code(user_code, upn)
    }
}

/// The resource a sign-in asked for: its first scope that names one.
fn request_resource(scopes: &[String]) -> String {
    scopes
        .iter()
        .find(|s| s.contains("://"))
        .map(|s| crate::identity::cloud::resource_of(s).to_string())
        .unwrap_or_else(|| crate::identity::cloud::Cloud::Global.exo_base().to_string())
}
