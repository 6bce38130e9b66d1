//! How the simulated identity provider checks an application's own credentials: a client secret
//! (in the body or HTTP Basic), or a JWT client assertion found by its certificate thumbprint
//! (`x5t#S256`, or the older `x5t`) and verified with that certificate's public key, addressed
//! (`aud`) to the very token URL it was posted to, issued by and about the client, and current.

use super::entra::EntraError;
use crate::identity::assertion::{thumbprints, ASSERTION_TYPE};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;

/// Clock skew Entra tolerates on assertions.
const LEEWAY_SECS: u64 = 300;

/// A certificate registered on an application.
pub(crate) struct RegisteredCert {
    pub x5t_s256: String,
    pub x5t: String,
    key: DecodingKey,
}

impl RegisteredCert {
    pub fn from_der(der: &[u8]) -> Result<RegisteredCert, String> {
        let cert = picky::x509::Cert::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let pkcs1 = cert.public_key().to_pkcs1().map_err(|_| "the certificate's key is not RSA".to_string())?;
        let (x5t_s256, x5t) = thumbprints(der);
        Ok(RegisteredCert { x5t_s256, x5t, key: DecodingKey::from_rsa_der(&pkcs1) })
    }
}

/// What the client presented.
pub(crate) enum Presented<'a> {
    None,
    Secret(&'a str),
    Assertion(&'a str),
}

/// The credential in a token request: `client_assertion` (with its type), else `client_secret`
/// from the body, else from `Authorization: Basic` (`basic_secret`).
pub(crate) fn presented<'a>(form: &'a HashMap<String, String>, basic_secret: Option<&'a str>) -> Presented<'a> {
    if let Some(a) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str) == Some(ASSERTION_TYPE) {
            return Presented::Assertion(a);
        }
    }
    match form.get("client_secret").map(String::as_str).or(basic_secret) {
        Some(s) => Presented::Secret(s),
        None => Presented::None,
    }
}

#[derive(Deserialize)]
struct AssertionClaims {
    #[serde(default)]
    aud: String,
    #[serde(default)]
    iss: String,
    #[serde(default)]
    sub: String,
}

/// Checks an assertion against the application's certificates; `token_url` is where it was
/// posted.
pub(crate) fn verify_assertion(
    jwt: &str,
    client_id: &str,
    certs: &[RegisteredCert],
    token_url: &str,
) -> Result<(), EntraError> {
    let header =
        jsonwebtoken::decode_header(jwt).map_err(|_| EntraError::bad_assertion("The assertion is not a JWT.", ""))?;
    let (thumbprint, cert) = match (&header.x5t_s256, &header.x5t) {
        (Some(t), _) => (t.clone(), certs.iter().find(|c| &c.x5t_s256 == t)),
        (None, Some(t)) => (t.clone(), certs.iter().find(|c| &c.x5t == t)),
        (None, None) => {
            return Err(EntraError::bad_assertion("No certificate thumbprint specified in token header.", ""))
        }
    };
    let cert = cert.ok_or_else(|| EntraError::bad_assertion("The key was not found.", &thumbprint))?;
    if !matches!(header.alg, Algorithm::PS256 | Algorithm::RS256) {
        return Err(EntraError::bad_assertion("The signing algorithm is not supported.", &thumbprint));
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<AssertionClaims>(jwt, &cert.key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature | jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                EntraError::assertion_time()
            }
            _ => EntraError::bad_assertion(
                "Key was found, but use of the key to verify the signature failed.",
                &thumbprint,
            ),
        })?
        .claims;
    if !claims.iss.eq_ignore_ascii_case(client_id) || !claims.sub.eq_ignore_ascii_case(client_id) {
        return Err(EntraError::assertion_client_mismatch());
    }
    let same = |a: &str, b: &str| a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'));
    if !same(&claims.aud, token_url) {
        return Err(EntraError::bad_assertion("The audience is not this token endpoint.", &thumbprint));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::assertion::{
        pem_certificates, tests::APP_CERT, tests::APP_PEM, tests::OTHER_KEY, ClientCertificate,
    };

    const URL: &str = "http://127.0.0.1:1/contoso.onmicrosoft.com/oauth2/v2.0/token";

    fn registered() -> Vec<RegisteredCert> {
        vec![RegisteredCert::from_der(&pem_certificates(APP_CERT).unwrap()[0]).unwrap()]
    }

    #[test]
    fn the_registered_key_signs_and_nothing_else_does() {
        let cert = ClientCertificate::from_pem(APP_PEM).unwrap();
        assert_eq!(verify_assertion(&cert.assertion("app", URL), "app", &registered(), URL), Ok(()));
        let legacy = cert.sign("app", URL, Algorithm::RS256, std::time::SystemTime::now());
        assert_eq!(verify_assertion(&legacy, "app", &registered(), URL), Ok(()), "x5t with RS256 is accepted");
        let wrong_aud = verify_assertion(&cert.assertion("app", "http://elsewhere/token"), "app", &registered(), URL);
        assert_eq!(wrong_aud.unwrap_err().code, 700027);
        assert_eq!(
            verify_assertion(&cert.assertion("other", URL), "app", &registered(), URL).unwrap_err().code,
            700021
        );
        let old = cert.sign(
            "app",
            URL,
            Algorithm::PS256,
            std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
        );
        assert_eq!(verify_assertion(&old, "app", &registered(), URL).unwrap_err().code, 700024);
        assert_eq!(verify_assertion("junk", "app", &registered(), URL).unwrap_err().code, 700027);
        assert_eq!(verify_assertion(&cert.assertion("app", URL), "app", &[], URL).unwrap_err().code, 700027);
    }

    #[test]
    fn a_wrong_key_with_the_registered_thumbprint_is_refused() {
        // An impostor who knows the certificate (it is public) but holds another key.
        let forged = ClientCertificate::forge_for_test(APP_CERT, OTHER_KEY);
        let err = verify_assertion(&forged.assertion("app", URL), "app", &registered(), URL).unwrap_err();
        assert_eq!((err.status, err.error, err.code), (401, "invalid_client", 700027));
        assert!(err.text.contains("verify the signature failed"), "{}", err.text);
    }
}
