//! Who is calling: the bearer token checked as Exchange Online checks it, then what the identity
//! may do in the tenant the path names.
//!
//! - the token must verify ([`crate::sim::tokens::SimTokens::verify`]) for this service's
//!   audience (its base URL), unexpired: else 401 `invalid_token`;
//! - its `tid` must be the path's tenant: else 401;
//! - a token issued before the tenant's cut-off (continuous access evaluation: sessions revoked)
//!   gets 401 with a claims challenge asking for a newer one (`nbf`);
//! - an app-only token needs the `Exchange.ManageAsApp` role: else 401;
//! - a user must be an account allowed to manage the tenant (else 403 with the service's
//!   permission text) and, when the account must pass MFA, have `mfa` in `amr` (else 401 with
//!   AADSTS50076).

use super::super::{key, text_mfa_required, text_permission_denied, Simulator};
use crate::sim::tokens::TokenRejection;
use base64::Engine as _;

/// The application permission app-only callers need.
pub const MANAGE_AS_APP: &str = "Exchange.ManageAsApp";

/// An authenticated caller in one tenant.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    /// What limits and paging cursors are kept by: the user's UPN, or `app:<appid>`.
    pub identity: String,
    /// The tenant's key (its lowercase domain).
    pub tenant: String,
}

/// Why a request is refused before anything runs.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Refusal {
    /// 401 with `WWW-Authenticate: Bearer …` (`error` and, for a challenge, `claims`).
    Unauthorized { message: String, error: Option<&'static str>, claims: Option<String> },
    /// 403 with the service's message.
    Forbidden(String),
}

impl Refusal {
    fn token(message: impl Into<String>) -> Refusal {
        Refusal::Unauthorized { message: message.into(), error: Some("invalid_token"), claims: None }
    }

    /// The `WWW-Authenticate` value of a 401.
    pub(super) fn challenge(&self) -> Option<String> {
        let Refusal::Unauthorized { error, claims, .. } = self else { return None };
        let mut value =
            r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize""#
                .to_string();
        if let Some(error) = error {
            value.push_str(&format!(r#", error="{error}""#));
        }
        if let Some(claims) = claims {
            value.push_str(&format!(r#", claims="{}""#, base64::engine::general_purpose::STANDARD.encode(claims)));
        }
        Some(value)
    }
}

pub(super) fn authenticate(
    sim: &Simulator,
    authorization: Option<&str>,
    audience: &str,
    path_tenant: &str,
) -> Result<Caller, Refusal> {
    let token = authorization
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Unauthorized { message: "A bearer token is required.".into(), error: None, claims: None })?;
    let claims = sim.access_tokens().verify(token, audience).map_err(|why| match why {
        TokenRejection::Expired => Refusal::token("The access token has expired."),
        TokenRejection::WrongAudience => Refusal::token(format!("The access token is not for {audience}.")),
        TokenRejection::Invalid => Refusal::token("The access token is invalid."),
    })?;
    let tenant = sim
        .tenant_domain_key(path_tenant)
        .ok_or_else(|| Refusal::token(format!("The tenant '{path_tenant}' is not known to this service.")))?;
    if sim.tenant_id(&tenant).map(|id| id.to_string()) != Some(claims.tid.to_ascii_lowercase()) {
        return Err(Refusal::token(format!(
            "The access token was issued for tenant {}, not '{path_tenant}'.",
            claims.tid
        )));
    }
    if let Some(cutoff) = sim.inner.rest.not_before(&tenant).filter(|c| claims.iat < *c) {
        return Err(Refusal::Unauthorized {
            message: "The access token was issued before the tenant's sessions were revoked.".into(),
            error: Some("insufficient_claims"),
            claims: Some(format!(r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{cutoff}"}}}}}}"#)),
        });
    }
    let Some(upn) = claims.upn.as_deref() else {
        if !claims.roles.iter().any(|r| r == MANAGE_AS_APP) {
            return Err(Refusal::token(format!(
                "The application {} has not been granted the {MANAGE_AS_APP} permission (admin consent) in this tenant.",
                claims.appid
            )));
        }
        return Ok(Caller { identity: format!("app:{}", claims.appid), tenant });
    };
    let st = sim.lock();
    let account = st.accounts.get(&key(upn));
    let permitted = account.is_some_and(|a| a.all_tenants || a.tenants.contains(&tenant))
        && !st.denied.contains(&(key(upn), tenant.clone()));
    if !permitted {
        return Err(Refusal::Forbidden(text_permission_denied(upn)));
    }
    if st.mfa.contains(&key(upn)) && !claims.amr.iter().any(|m| m == "mfa") {
        return Err(Refusal::Unauthorized { message: text_mfa_required(), error: Some("invalid_token"), claims: None });
    }
    Ok(Caller { identity: key(upn), tenant })
}
