//! The simulated identity provider's access tokens: signed JWTs with the claims Entra ID puts in
//! the tokens Exchange Online checks. The identity provider (token and device-code endpoints)
//! issues them; the simulated services (REST `InvokeCommand`, and WinRM's bearer-in-Basic)
//! verify them. Clients never verify them — like real clients, they only read `tid`, `exp`.
//!
//! HS256 with a random key per simulator: the simulator is both issuer and audience, so a
//! shared secret is enough, and a token from one simulator is worthless at another.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a simulated access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimClaims {
    /// The resource the token is for (`https://outlook.office365.com`, …).
    pub aud: String,
    /// The tenant's GUID.
    pub tid: String,
    /// Seconds since the Unix epoch.
    pub exp: u64,
    pub iat: u64,
    /// The application (client id).
    pub appid: String,
    /// Delegated tokens: the signed-in user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
    /// How the user signed in (`pwd`, `mfa`): a partner's delegated access needs `mfa`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// App-only tokens: application permissions (`Exchange.ManageAsApp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Delegated tokens: scopes (space-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scp: Option<String>,
}

/// Why a presented token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not for this resource")]
    WrongAudience,
    #[error("the token's signature is invalid or the token is malformed")]
    Invalid,
}

/// Signs and verifies the simulator's tokens.
pub struct SimTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl SimTokens {
    pub fn new() -> SimTokens {
        let secret: [u8; 32] = rand::random();
        SimTokens { encoding: EncodingKey::from_secret(&secret), decoding: DecodingKey::from_secret(&secret) }
    }

    pub fn issue(&self, claims: &SimClaims) -> String {
        let header = Header { typ: Some("JWT".into()), ..Header::new(Algorithm::HS256) };
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("HS256 signing of plain claims cannot fail")
    }

    /// Checks signature, expiry (no leeway: the simulator's clock is the only clock) and audience.
    pub fn verify(&self, token: &str, audience: &str) -> Result<SimClaims, TokenRejection> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let data =
            jsonwebtoken::decode::<SimClaims>(token, &self.decoding, &validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenRejection::Expired,
                _ => TokenRejection::Invalid,
            })?;
        if !data.claims.aud.trim_end_matches('/').eq_ignore_ascii_case(audience.trim_end_matches('/')) {
            return Err(TokenRejection::WrongAudience);
        }
        Ok(data.claims)
    }
}

impl Default for SimTokens {
    fn default() -> Self {
        SimTokens::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_in: i64) -> SimClaims {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        SimClaims {
            aud: "https://outlook.office365.com".into(),
            tid: "6babcaad-604b-40ac-a9d7-9fd97c0b779f".into(),
            exp: (now as i64 + exp_in) as u64,
            iat: now,
            appid: "app".into(),
            upn: None,
            amr: vec![],
            roles: vec!["Exchange.ManageAsApp".into()],
            scp: None,
        }
    }

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let tokens = SimTokens::new();
        let token = tokens.issue(&claims(60));
        assert_eq!(tokens.verify(&token, "https://outlook.office365.com/").unwrap(), claims(60));
        assert_eq!(
            tokens.verify(&token, "https://ps.compliance.protection.outlook.com"),
            Err(TokenRejection::WrongAudience)
        );
        assert_eq!(
            tokens.verify(&tokens.issue(&claims(-5)), "https://outlook.office365.com"),
            Err(TokenRejection::Expired)
        );
        assert_eq!(SimTokens::new().verify(&token, "https://outlook.office365.com"), Err(TokenRejection::Invalid));
        assert_eq!(tokens.verify("not.a.token", "https://outlook.office365.com"), Err(TokenRejection::Invalid));
    }
}
