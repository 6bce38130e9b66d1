//! Reading an access token's claims without verifying it, as every client does: the token is
//! for the resource, which verifies it; the client only needs to know whom it names (`tid`,
//! `upn`), until when it is good (`exp`), and how the user signed in (`amr`).

use serde::Deserialize;

/// The claims a client reads. Absent claims are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct UnverifiedClaims {
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default)]
    pub upn: Option<String>,
    /// Authentication methods: a user who passed multi-factor authentication has `mfa`.
    #[serde(default)]
    pub amr: Vec<String>,
}

impl UnverifiedClaims {
    /// The payload of a JWT (`header.payload.signature`), or `None` when the token is not one
    /// (some identity providers issue opaque tokens: then nothing is known from it).
    pub fn read(token: &str) -> Option<UnverifiedClaims> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let mut parts = token.split('.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn has_mfa(&self) -> bool {
        self.amr.iter().any(|m| m.eq_ignore_ascii_case("mfa"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tokens::{SimClaims, SimTokens};

    #[test]
    fn reads_the_claims_of_a_signed_token_and_nothing_else() {
        let token = SimTokens::new().issue(&SimClaims {
            aud: "https://outlook.office365.com".into(),
            tid: "6babcaad-604b-40ac-a9d7-9fd97c0b779f".into(),
            exp: 2_000_000_000,
            iat: 1_999_996_400,
            appid: "app".into(),
            upn: Some("alice@partner.example".into()),
            amr: vec!["pwd".into(), "mfa".into()],
            roles: vec![],
            scp: Some("Exchange.Manage".into()),
        });
        let claims = UnverifiedClaims::read(&token).unwrap();
        assert_eq!(claims.tid.as_deref(), Some("6babcaad-604b-40ac-a9d7-9fd97c0b779f"));
        assert_eq!((claims.exp, claims.upn.as_deref()), (Some(2_000_000_000), Some("alice@partner.example")));
        assert!(claims.has_mfa());
        assert_eq!(UnverifiedClaims::read("opaque-token"), None);
        assert_eq!(UnverifiedClaims::read("a.b"), None);
        assert_eq!(UnverifiedClaims::read("a.!!!.c"), None);
    }
}
