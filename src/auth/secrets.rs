//! Secret parameter values: which ones are secret, how they are redacted before anything is
//! stored, and the salted digest of parameter values that the audit keeps instead of values.
//!
//! A parameter is secret when its name contains `password`, `secret`, `credential`, `token` or
//! `key` (ignoring case), or when the name is an abbreviation (3+ letters) of one of them —
//! PowerShell binds unambiguous prefixes, so `-Pass` reaches `-Password`. The real value goes
//! to the remote side; the stored copy says `***`, and the digests never see the value.

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

/// What a stored secret value is replaced with.
pub const REDACTED: &str = "***";

const MARKERS: [&str; 5] = ["password", "secret", "credential", "token", "key"];

pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    MARKERS.iter().any(|m| lower.contains(m) || (lower.len() >= 3 && m.starts_with(lower.as_str())))
}

/// The parameters as they may be stored: secret values replaced by [`REDACTED`]. The flag says
/// whether anything was replaced (such an invocation cannot be resumed after a restart).
pub fn redact(parameters: &Map<String, Json>) -> (Map<String, Json>, bool) {
    let mut redacted = false;
    let map = parameters
        .iter()
        .map(|(k, v)| {
            if is_secret_name(k) {
                redacted = true;
                (k.clone(), Json::String(REDACTED.into()))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    (map, redacted)
}

/// JSON with object keys sorted (parameter names ignoring case, as PowerShell does), so equal
/// parameters give equal text whatever order the caller wrote them in.
pub fn canonical(value: &Json) -> Json {
    match value {
        Json::Object(map) => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.to_ascii_lowercase().cmp(&b.0.to_ascii_lowercase()).then(a.0.cmp(b.0)));
            Json::Object(entries.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), canonical(v))).collect())
        }
        Json::Array(items) => Json::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Hex SHA-256 of `salt` followed by `data`. The salt is per database, random, so equal values
/// in two databases hash differently and no precomputed table applies.
pub fn salted_sha256(salt: &str, data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0u8]);
    h.update(data);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The audit's digest of the parameter values: salted SHA-256 of the canonical, already
/// redacted parameters (secret values never enter it).
pub fn values_hash(salt: &str, redacted_parameters: &Map<String, Json>) -> String {
    let canonical = canonical(&Json::Object(redacted_parameters.clone()));
    salted_sha256(salt, canonical.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_names_include_abbreviations() {
        for s in ["Password", "NewPassword", "ClientSecret", "Credential", "AccessToken", "ApiKey", "pass", "CRED"] {
            assert!(is_secret_name(s), "{s}");
        }
        for s in ["Identity", "ResultSize", "Office", "DisplayName", "pa", "Name"] {
            assert!(!is_secret_name(s), "{s}");
        }
    }

    #[test]
    fn redaction_keeps_names_and_hides_values() {
        let p = json!({"Identity": "u1", "Password": "hunter2", "pwd": "x"});
        let (r, redacted) = redact(p.as_object().unwrap());
        assert!(redacted);
        assert_eq!(r["Password"], REDACTED);
        assert_eq!(r["Identity"], "u1");
        assert!(!Json::Object(r).to_string().contains("hunter2"));
        let (_, none) = redact(json!({"Identity": "u1"}).as_object().unwrap());
        assert!(!none);
    }

    #[test]
    fn hashes_ignore_order_and_case_of_names_and_depend_on_the_salt() {
        let a = json!({"Identity": "u1", "Office": "HQ"});
        let b = json!({"office": "HQ", "identity": "u1"});
        let (ha, hb) = (values_hash("s", a.as_object().unwrap()), values_hash("s", b.as_object().unwrap()));
        assert_eq!(ha, hb);
        assert_ne!(ha, values_hash("t", a.as_object().unwrap()));
        assert_eq!(ha.len(), 64);
        let c = json!({"Identity": "u1", "Office": "HQ2"});
        assert_ne!(ha, values_hash("s", c.as_object().unwrap()));
    }
}
