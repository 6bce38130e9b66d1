//! Client credentials with a certificate: the JWT client assertion an application signs with its
//! private key instead of sending a secret.
//!
//! As Entra ID wants it: header `{"alg":"PS256","typ":"JWT","x5t#S256":<base64url SHA-256 of the
//! certificate's DER>}`; claims `aud` = the token URL the assertion is posted to, `iss` = `sub` =
//! the client id, a fresh `jti`, `nbf` = `iat` = now, `exp` = now + 5 minutes. The identity
//! provider finds the registered certificate by the thumbprint and checks the signature with its
//! public key.
//!
//! The certificate comes from a PEM file (the certificate and its unencrypted private key, PKCS#8
//! or PKCS#1, in one file) or a PKCS#12 (PFX) file with its password — both parsed by `picky`,
//! pure Rust.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use picky::key::PrivateKey;
use picky::pem::parse_pem;
use picky::pkcs12::{Pfx, Pkcs12CryptoContext, Pkcs12ParsingParams, SafeBagKind, SafeContentsKind};
use picky::x509::Cert;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Digest as _;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// How long an assertion is good for (Entra accepts up to about ten minutes).
const ASSERTION_LIFETIME_SECS: u64 = 300;

/// The assertion type Entra expects next to `client_assertion`.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("no certificate in the file")]
    NoCertificate,
    #[error("no private key in the file (a PEM file must hold the certificate and its private key)")]
    NoKey,
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("encrypted PEM private keys are not supported: use an unencrypted PEM readable only by the daemon, or a PFX with certificate_password")]
    EncryptedPem,
    #[error("the private key is not an RSA key (Entra client assertions are signed with RSA)")]
    NotRsa,
    #[error("cannot read the PFX file (wrong certificate_password, or not PKCS#12): {0}")]
    Pfx(String),
    #[error("unreadable PEM: {0}")]
    Pem(String),
}

/// A certificate and its private key, ready to sign assertions. Never printed.
pub struct ClientCertificate {
    x5t_s256: String,
    x5t: String,
    /// The certificate (public: the identity provider registers it).
    cert_der: Vec<u8>,
    key: EncodingKey,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate").field("x5t#S256", &self.x5t_s256).field("key", &"[redacted]").finish()
    }
}

/// The thumbprints a certificate is registered (and looked up) by: base64url of the SHA-256
/// (`x5t#S256`) and of the SHA-1 (`x5t`) of its DER encoding.
pub fn thumbprints(cert_der: &[u8]) -> (String, String) {
    (URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert_der)), URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(cert_der)))
}

/// The certificates of a PEM text, as DER (the identity provider registers them).
pub fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, CertificateError> {
    let mut certs = Vec::new();
    for block in pem_blocks(text)? {
        if block.label() == "CERTIFICATE" {
            certs.push(block.data().to_vec());
        }
    }
    Ok(certs)
}

fn pem_blocks(text: &str) -> Result<Vec<picky::pem::Pem<'static>>, CertificateError> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = parse_pem(&rest[start..]).map_err(|e| CertificateError::Pem(e.to_string()))?;
        let end = rest[start..].find("-----END ").map_or(rest.len(), |e| start + e + "-----END ".len());
        rest = &rest[end..];
        blocks.push(block);
    }
    Ok(blocks)
}

impl ClientCertificate {
    /// From a file's bytes: PEM text, else a PFX (PKCS#12) opened with `password`.
    pub fn load(bytes: &[u8], password: Option<&SecretString>) -> Result<ClientCertificate, CertificateError> {
        match std::str::from_utf8(bytes) {
            Ok(text) if text.contains("-----BEGIN ") => Self::from_pem(text),
            _ => Self::from_pfx(bytes, password.map(|p| p.expose_secret()).unwrap_or("")),
        }
    }

    pub fn from_pem(text: &str) -> Result<ClientCertificate, CertificateError> {
        let mut cert = None;
        let mut key = None;
        for block in pem_blocks(text)? {
            match block.label() {
                "CERTIFICATE" if cert.is_none() => {
                    cert = Some(Cert::from_der(block.data()).map_err(|e| CertificateError::Pem(e.to_string()))?)
                }
                "PRIVATE KEY" | "RSA PRIVATE KEY" if key.is_none() => {
                    key = Some(PrivateKey::from_pem(&block).map_err(|e| CertificateError::Pem(e.to_string()))?)
                }
                "ENCRYPTED PRIVATE KEY" => return Err(CertificateError::EncryptedPem),
                _ => {}
            }
        }
        Self::from_parts(cert.ok_or(CertificateError::NoCertificate)?, key.ok_or(CertificateError::NoKey)?)
    }

    pub fn from_pfx(der: &[u8], password: &str) -> Result<ClientCertificate, CertificateError> {
        let pfx_error = |e: &dyn fmt::Display| CertificateError::Pfx(e.to_string());
        let context = Pkcs12CryptoContext::new_with_password(password).map_err(|e| pfx_error(&e))?;
        let pfx = Pfx::from_der(der, &context, &Pkcs12ParsingParams::default()).map_err(|e| pfx_error(&e))?;
        let mut certs = Vec::new();
        let mut key = None;
        for contents in pfx.safe_contents() {
            let bags = match contents.kind() {
                SafeContentsKind::SafeBags(bags) | SafeContentsKind::EncryptedSafeBags { safe_bags: bags, .. } => bags,
                SafeContentsKind::Unknown => continue,
            };
            for bag in bags {
                match bag.kind() {
                    SafeBagKind::Certificate(cert) => certs.push(cert.clone()),
                    SafeBagKind::PrivateKey(k) | SafeBagKind::EncryptedPrivateKey { key: k, .. } if key.is_none() => {
                        key = Some(k.clone())
                    }
                    _ => {}
                }
            }
        }
        let key = key.ok_or(CertificateError::NoKey)?;
        // A PFX may carry the chain: the client certificate is the one whose key we hold.
        let public = key.to_public_key().map_err(|_| CertificateError::NotRsa)?;
        let cert = certs.into_iter().find(|c| *c.public_key() == public).ok_or(CertificateError::NoCertificate)?;
        Self::from_parts(cert, key)
    }

    fn from_parts(cert: Cert, key: PrivateKey) -> Result<ClientCertificate, CertificateError> {
        if key.to_public_key().ok().as_ref() != Some(cert.public_key()) {
            return Err(CertificateError::KeyMismatch);
        }
        let pkcs1 = key.to_pkcs1().map_err(|_| CertificateError::NotRsa)?;
        let der = cert.to_der().map_err(|e| CertificateError::Pem(e.to_string()))?;
        let (x5t_s256, x5t) = thumbprints(&der);
        Ok(ClientCertificate { x5t_s256, x5t, cert_der: der, key: EncodingKey::from_rsa_der(&pkcs1) })
    }

    /// A certificate paired with a key that is not its own (tests of a forged assertion).
    #[cfg(test)]
    pub(crate) fn forge_for_test(cert_pem: &str, key_pem: &str) -> ClientCertificate {
        let der = pem_certificates(cert_pem).unwrap().remove(0);
        let key = PrivateKey::from_pem_str(key_pem).unwrap();
        let (x5t_s256, x5t) = thumbprints(&der);
        ClientCertificate { x5t_s256, x5t, cert_der: der, key: EncodingKey::from_rsa_der(&key.to_pkcs1().unwrap()) }
    }

    /// `x5t#S256`: how the identity provider finds the registered certificate.
    pub fn thumbprint_s256(&self) -> &str {
        &self.x5t_s256
    }

    /// The certificate's DER encoding (what an application registration holds).
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// `x5t` (SHA-1), the older form.
    pub fn thumbprint_sha1(&self) -> &str {
        &self.x5t
    }

    /// A fresh signed assertion for a request to `token_url`.
    pub fn assertion(&self, client_id: &str, token_url: &str) -> String {
        self.sign(client_id, token_url, Algorithm::PS256, SystemTime::now())
    }

    pub(crate) fn sign(&self, client_id: &str, token_url: &str, alg: Algorithm, at: SystemTime) -> String {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            iss: &'a str,
            sub: &'a str,
            jti: String,
            nbf: u64,
            iat: u64,
            exp: u64,
        }
        let now = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut header = Header { typ: Some("JWT".into()), ..Header::new(alg) };
        match alg {
            Algorithm::RS256 => header.x5t = Some(self.x5t.clone()),
            _ => header.x5t_s256 = Some(self.x5t_s256.clone()),
        }
        let claims = Claims {
            aud: token_url,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).expect("RSA signing with a validated key cannot fail")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    pub(crate) const APP_PEM: &str = include_str!("../../tests/fixtures/identity/app.pem");
    pub(crate) const APP_CERT: &str = include_str!("../../tests/fixtures/identity/app-cert.pem");
    pub(crate) const OTHER_KEY: &str = include_str!("../../tests/fixtures/identity/other-key.pem");
    const PFX: &[u8] = include_bytes!("../../tests/fixtures/identity/app.pfx");
    const LEGACY_PFX: &[u8] = include_bytes!("../../tests/fixtures/identity/app-legacy.pfx");
    const PFX_PASSWORD: &str = "fixture-pfx-password";

    fn public_key() -> DecodingKey {
        let cert = Cert::from_pem_str(APP_CERT).unwrap();
        DecodingKey::from_rsa_der(&cert.public_key().to_pkcs1().unwrap())
    }

    #[test]
    fn signs_what_entra_checks() {
        let cert = ClientCertificate::from_pem(APP_PEM).unwrap();
        let url = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
        let jwt = cert.assertion("app-id", url);
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!((header.alg, header.typ.as_deref()), (Algorithm::PS256, Some("JWT")));
        let der = pem_certificates(APP_CERT).unwrap().remove(0);
        assert_eq!(header.x5t_s256.as_deref(), Some(thumbprints(&der).0.as_str()));
        let mut validation = Validation::new(Algorithm::PS256);
        validation.set_audience(&[url]);
        validation.set_issuer(&["app-id"]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&jwt, &public_key(), &validation).unwrap();
        let c = data.claims;
        assert_eq!(c["sub"], "app-id");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), ASSERTION_LIFETIME_SECS);
        assert_eq!(c["nbf"], c["iat"]);
        assert_ne!(cert.assertion("app-id", url), jwt, "every assertion has its own jti");
        let legacy = cert.sign("app-id", url, Algorithm::RS256, SystemTime::now());
        assert_eq!(jsonwebtoken::decode_header(&legacy).unwrap().x5t.as_deref(), Some(cert.thumbprint_sha1()));
    }

    #[test]
    fn pfx_files_old_and_new_give_the_same_certificate() {
        let pem = ClientCertificate::from_pem(APP_PEM).unwrap();
        for file in [PFX, LEGACY_PFX] {
            let password = SecretString::from(PFX_PASSWORD);
            let pfx = ClientCertificate::load(file, Some(&password)).unwrap();
            assert_eq!(pfx.thumbprint_s256(), pem.thumbprint_s256());
            let jwt = pfx.assertion("a", "u");
            let mut v = Validation::new(Algorithm::PS256);
            v.set_audience(&["u"]);
            jsonwebtoken::decode::<serde_json::Value>(&jwt, &public_key(), &v).unwrap();
        }
        let wrong = SecretString::from("wrong");
        assert!(matches!(ClientCertificate::load(PFX, Some(&wrong)), Err(CertificateError::Pfx(_))));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        assert!(matches!(ClientCertificate::from_pem(APP_CERT), Err(CertificateError::NoKey)));
        assert!(matches!(ClientCertificate::from_pem(OTHER_KEY), Err(CertificateError::NoCertificate)));
        let mismatched = format!("{APP_CERT}{OTHER_KEY}");
        assert!(matches!(ClientCertificate::from_pem(&mismatched), Err(CertificateError::KeyMismatch)));
        let encrypted =
            format!("{APP_CERT}-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
        assert!(matches!(ClientCertificate::from_pem(&encrypted), Err(CertificateError::EncryptedPem)));
        assert!(ClientCertificate::load(b"\x30\x03garbage", None).is_err());
        let debug = format!("{:?}", ClientCertificate::from_pem(APP_PEM).unwrap());
        assert!(debug.contains("redacted") && !debug.contains("MII"), "{debug}");
    }
}
