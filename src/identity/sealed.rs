//! Refresh tokens at rest: sealed with XChaCha20-Poly1305 under a key the operator gives
//! (`[identity] refresh_token_key`, 32 bytes as base64 or hex, from `env:` or `file:`).
//!
//! XChaCha20's 192-bit nonces are drawn at random for every seal, which is safe for any number of
//! seals under one key. The sealed text binds its context (the identity it belongs to, as
//! associated data), so a row copied onto another identity does not open. A short key id (a hash
//! of the key, not the key) is stored beside each sealed value, so a changed key is reported as
//! such rather than as corrupt data.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest as _;
use std::fmt;

const NONCE_LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("refresh_token_key must be 32 bytes, as base64 (44 characters) or hex (64 characters)")]
    BadKey,
    #[error("the stored refresh token was sealed with another key (key id {0}); sign in again with `psbroker login`")]
    OtherKey(String),
    #[error("the stored refresh token cannot be opened (corrupt, or not this identity's)")]
    Corrupt,
}

/// The key that seals refresh tokens. Never printed.
pub struct SealingKey {
    cipher: XChaCha20Poly1305,
    id: String,
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey").field("id", &self.id).field("key", &"[redacted]").finish()
    }
}

impl SealingKey {
    /// From the configured text: 32 bytes in base64 (standard or URL-safe) or hex.
    pub fn from_text(text: &SecretString) -> Result<SealingKey, SealError> {
        let text = text.expose_secret().trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16)).collect::<Result<Vec<u8>, _>>().ok()
        } else {
            B64.decode(text).or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text)).ok()
        };
        let bytes = secrecy::zeroize::Zeroizing::new(bytes.filter(|b| b.len() == 32).ok_or(SealError::BadKey)?);
        let digest = sha2::Sha256::digest([b"psbroker refresh-token key id\0".as_slice(), bytes.as_slice()].concat());
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| SealError::BadKey)?;
        Ok(SealingKey { cipher, id })
    }

    /// Identifies the key (not secret: a hash).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `base64(nonce ‖ ciphertext ‖ tag)`, bound to `context`.
    pub fn seal(&self, secret: &SecretString, context: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let payload = Payload { msg: secret.expose_secret().as_bytes(), aad: context.as_bytes() };
        let sealed =
            self.cipher.encrypt(XNonce::from_slice(&nonce), payload).expect("XChaCha20-Poly1305 sealing cannot fail");
        B64.encode([nonce.as_slice(), &sealed].concat())
    }

    /// Opens what [`SealingKey::seal`] made under this key for the same `context`.
    pub fn open(&self, sealed: &str, key_id: &str, context: &str) -> Result<SecretString, SealError> {
        if key_id != self.id {
            return Err(SealError::OtherKey(key_id.to_string()));
        }
        let bytes = B64.decode(sealed.trim()).map_err(|_| SealError::Corrupt)?;
        if bytes.len() <= NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: context.as_bytes() })
            .map_err(|_| SealError::Corrupt)?;
        String::from_utf8(plain).map(SecretString::from).map_err(|_| SealError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> SealingKey {
        SealingKey::from_text(&SecretString::from(text)).unwrap()
    }

    #[test]
    fn seals_and_opens_only_for_the_same_key_and_context() {
        let k = key(&B64.encode([7u8; 32]));
        let secret = SecretString::from("0.AXoA-refresh-token-value");
        let sealed = k.seal(&secret, "alice");
        assert!(!sealed.contains("refresh-token"), "sealed text hides the token");
        assert_ne!(k.seal(&secret, "alice"), sealed, "a fresh nonce every time");
        assert_eq!(k.open(&sealed, k.id(), "alice").unwrap().expose_secret(), secret.expose_secret());
        assert_eq!(k.open(&sealed, k.id(), "bob").unwrap_err(), SealError::Corrupt, "bound to its identity");
        let other = key(&"11".repeat(32));
        assert_eq!(other.open(&sealed, k.id(), "alice").unwrap_err(), SealError::OtherKey(k.id().into()));
        let same_id_other_key = SealingKey { cipher: other.cipher, id: k.id().to_string() };
        assert_eq!(same_id_other_key.open(&sealed, k.id(), "alice").unwrap_err(), SealError::Corrupt);
        let mut tampered = B64.decode(&sealed).unwrap();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(k.open(&B64.encode(tampered), k.id(), "alice").unwrap_err(), SealError::Corrupt);
    }

    #[test]
    fn keys_are_32_bytes_in_base64_or_hex_and_never_printed() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert_eq!(key(hex).id().len(), 16);
        assert_ne!(key(hex).id(), key(&"01".repeat(32)).id());
        for bad in ["", "short", &B64.encode([1u8; 16]), &"zz".repeat(32)] {
            assert_eq!(SealingKey::from_text(&SecretString::from(bad)).unwrap_err(), SealError::BadKey, "{bad}");
        }
        assert!(!format!("{:?}", key(hex)).contains("0011"));
    }
}
