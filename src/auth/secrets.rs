//! Secret parameter values: which ones are secret, how they are redacted before anything is
//! stored, and the salted digest of parameter values that the audit keeps instead of values.
//!
//! A name is secret (ignoring case, and reading the digits people put in for letters —
//! `Passw0rd` is `password`) when
//!
//! * it contains a marker: `password`, `passwd`, `pwd`, `passphrase`, `secret`, `credential`,
//!   `cred`, `token`, `key`, `securestring`, `connectionstring`; or
//! * it abbreviates a secret name, PowerShell binding any unambiguous prefix: the name, or the
//!   part of it from a word start (`NewPa`: `Pa`; `client_sec`: `sec`), is a prefix of
//!   `password`, `passphrase`, `credential`, `securestring` or `secret` of 2+ letters (`Pa`,
//!   `Cred`, `Sec`), or of `token` of 3+ (`Tok`; `To` is the recipient of a message).
//!
//! Values are secret too when they say so: a hashtable whose `@type`/`@types` names
//! `SecureString` or `PSCredential`, or any hashtable entry whose key is a secret name (a
//! credential written as `{"UserName": …, "Password": …}`), at any depth. The real value goes to
//! the remote side; the stored copy says `***`, and the digests never see the value.

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

/// What a stored secret value is replaced with.
pub const REDACTED: &str = "***";

const MARKERS: [&str; 11] = [
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "credential",
    "cred",
    "token",
    "key",
    "securestring",
    "connectionstring",
];

/// Secret names whose abbreviations count, with the shortest abbreviation that does.
const ABBREVIATED: [(&str, usize); 6] =
    [("password", 2), ("passphrase", 2), ("credential", 2), ("securestring", 2), ("secret", 2), ("token", 3)];

/// Type names that make a hashtable value secret.
const SECRET_TYPES: [&str; 2] = ["securestring", "pscredential"];

/// Lower case, with the digits and signs that stand in for letters read as those letters.
fn normalize(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '0' => 'o',
            '1' => 'i',
            '3' => 'e',
            '4' => 'a',
            '5' | '$' => 's',
            '7' => 't',
            '@' => 'a',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Where words start in `name`: its start, an upper-case letter after a lower-case one, and
/// after `_`, `-` or a digit.
fn word_starts(name: &str) -> Vec<usize> {
    let chars: Vec<(usize, char)> = name.char_indices().collect();
    let mut starts = vec![0];
    for w in chars.windows(2) {
        let ((_, a), (i, b)) = (w[0], w[1]);
        if (a.is_lowercase() && b.is_uppercase())
            || matches!(a, '_' | '-')
            || (a.is_ascii_digit() && !b.is_ascii_digit())
        {
            starts.push(i);
        }
    }
    starts
}

pub fn is_secret_name(name: &str) -> bool {
    let normal = normalize(name);
    if MARKERS.iter().any(|m| normal.contains(m)) {
        return true;
    }
    word_starts(name).into_iter().any(|start| {
        let tail = normalize(&name[start..]);
        let tail = tail.trim_start_matches(['_', '-']);
        ABBREVIATED.iter().any(|(full, min)| tail.len() >= *min && full.starts_with(tail))
    })
}

/// Whether a value declares itself a SecureString or PSCredential.
fn is_secret_value(value: &Json) -> bool {
    let Json::Object(map) = value else { return false };
    map.iter().any(|(k, v)| {
        let k = k.to_ascii_lowercase();
        (k == "@type" || k == "@types") && {
            let text = v.to_string().to_ascii_lowercase();
            SECRET_TYPES.iter().any(|t| text.contains(t))
        }
    })
}

/// A value with its secret parts (see the module's rules) replaced by [`REDACTED`].
fn redact_value(value: &Json, redacted: &mut bool) -> Json {
    if is_secret_value(value) {
        *redacted = true;
        return Json::String(REDACTED.into());
    }
    match value {
        Json::Array(items) => Json::Array(items.iter().map(|v| redact_value(v, redacted)).collect()),
        Json::Object(map) => Json::Object(redact_map(map, redacted)),
        other => other.clone(),
    }
}

fn redact_map(map: &Map<String, Json>, redacted: &mut bool) -> Map<String, Json> {
    map.iter()
        .map(|(k, v)| {
            if is_secret_name(k) {
                *redacted = true;
                (k.clone(), Json::String(REDACTED.into()))
            } else {
                (k.clone(), redact_value(v, redacted))
            }
        })
        .collect()
}

/// The parameters as they may be stored: secret values replaced by [`REDACTED`]. The flag says
/// whether anything was replaced (such an invocation cannot be resumed after a restart).
pub fn redact(parameters: &Map<String, Json>) -> (Map<String, Json>, bool) {
    let mut redacted = false;
    let map = redact_map(parameters, &mut redacted);
    (map, redacted)
}

/// JSON with object keys sorted (parameter names ignoring case, as PowerShell does), so equal
/// parameters give equal text whatever order the caller wrote them in.
pub fn canonical(value: &Json) -> Json {
    match value {
        Json::Object(map) => canonical_object(map),
        Json::Array(items) => Json::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

fn canonical_object(map: &Map<String, Json>) -> Json {
    let mut entries: Vec<(&String, &Json)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.to_ascii_lowercase().cmp(&b.0.to_ascii_lowercase()).then(a.0.cmp(b.0)));
    Json::Object(entries.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), canonical(v))).collect())
}

/// The canonical text of a parameter map: what the digests of parameter values are taken of.
pub fn canonical_text(parameters: &Map<String, Json>) -> String {
    canonical_object(parameters).to_string()
}

/// Hex SHA-256 of `salt` followed by `data`. The salt is per database, random, so equal values
/// in two databases hash differently and no precomputed table applies.
pub fn salted_sha256(salt: &str, data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0u8]);
    h.update(data);
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        hex.push(HEX[usize::from(b >> 4)] as char);
        hex.push(HEX[usize::from(b & 0xf)] as char);
    }
    hex
}

/// The audit's digest of the parameter values: salted SHA-256 of the canonical, already
/// redacted parameters (secret values never enter it).
pub fn values_hash(salt: &str, redacted_parameters: &Map<String, Json>) -> String {
    salted_sha256(salt, canonical_text(redacted_parameters).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn salted_digests_are_lower_hex_sha256_of_salt_nul_data() {
        let want = format!("{:x}", Sha256::digest(b"salt\0data"));
        assert_eq!(salted_sha256("salt", b"data"), want);
        assert_eq!(want.len(), 64);
    }

    #[test]
    fn secret_names_include_abbreviations() {
        for s in [
            "Password",
            "NewPassword",
            "ClientSecret",
            "Credential",
            "AccessToken",
            "ApiKey",
            "pass",
            "CRED",
            "Pa",
            "Pwd",
            "Passw0rd",
            "P4ssword",
            "SecureString",
            "PSCredential",
            "NewPa",
            "OldPass",
            "client_sec",
            "AccessTok",
            "Sec",
            "ConnectionString",
        ] {
            assert!(is_secret_name(s), "{s}");
        }
        for s in [
            "Identity",
            "ResultSize",
            "Office",
            "DisplayName",
            "Name",
            "PassThru",
            "Database",
            "To",
            "Server",
            "SearchQuery",
            "EmailAddresses",
            "Pages",
            "P",
        ] {
            assert!(!is_secret_name(s), "{s}");
        }
    }

    #[test]
    fn secret_values_are_redacted_where_they_are() {
        let p = json!({
            "Identity": "u1",
            "Settings": {"UserName": "u", "Password": "hunter2", "Nested": [{"pwd": "hunter3"}]},
            "Blob": {"@type": "System.Security.SecureString", "value": "hunter4"},
            "Who": {"@types": ["System.Management.Automation.PSCredential"], "u": "hunter5"},
        });
        let (r, redacted) = redact(p.as_object().unwrap());
        let text = Json::Object(r.clone()).to_string();
        assert!(redacted);
        for s in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!text.contains(s), "{s} in {text}");
        }
        assert_eq!(r["Settings"]["UserName"], "u");
        assert_eq!(r["Identity"], "u1");
    }

    #[test]
    fn redaction_keeps_names_and_hides_values() {
        let p = json!({"Identity": "u1", "Password": "hunter2", "pw": "x"});
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
