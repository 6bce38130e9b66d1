//! What a caller may ask for, and the checks that run before anything is stored or queued.
//!
//! An invocation is one cmdlet name plus named parameters whose values are data. Names are
//! checked against PowerShell's shapes so nothing a caller sends can ever become script text.

use super::directory::{AdminIdx, Directory, TenantIdx};
use super::scheduler::Priority;
use crate::auth::Class;
use crate::remote::PsValue;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// The body of `POST /v1/invocations`, and one item of a batch.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InvocationRequest {
    pub tenant: String,
    pub cmdlet: String,
    #[serde(default)]
    pub parameters: Map<String, Json>,
    #[serde(default)]
    pub admin: Option<String>,
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Only for single invocations: wait for the result (default true).
    #[serde(default)]
    pub wait: Option<bool>,
    #[serde(default, deserialize_with = "whole_number")]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Declares the command safe to run twice. Defaults to true for reads only, by the cmdlet's
    /// class (`auth::classify`): `Search-Mailbox -DeleteContent` is not a read.
    #[serde(default)]
    pub idempotent: Option<bool>,
}

/// JSON has one number type, so `30.0` is the whole number 30 (JSON Schema's `integer` agrees):
/// a whole-valued float is taken as that integer (saturating), while a fraction or a negative
/// number is a shape error like any other wrong type.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(Some(f as u64)),
        _ => Err(D::Error::custom(format!("invalid value: {n}, expected a whole number of seconds"))),
    }
}

/// A request that passed every check, resolved against the directory.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub tenant: TenantIdx,
    pub admin: Option<AdminIdx>,
    pub cmdlet: String,
    pub parameters: Vec<(String, PsValue)>,
    pub priority: Priority,
    pub timeout_seconds: u64,
    pub idempotent: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("tenant '{0}' is not configured")]
    UnknownTenant(String),
    #[error("admin '{0}' is not configured")]
    UnknownAdmin(String),
    #[error("admin '{admin}' may not manage tenant '{tenant}'")]
    AdminNotAllowed { admin: String, tenant: String },
    #[error("'{0}' is not a cmdlet name (expected Verb-Noun, letters and digits only)")]
    InvalidCmdletName(String),
    #[error("'{0}' is not a parameter name (letters, digits and _, starting with a letter, at most 64)")]
    InvalidParameterName(String),
    #[error("parameters '{0}' and '{1}' are ambiguous: PowerShell takes names ignoring case and binds abbreviations, so both name the same parameter")]
    DuplicateParameter(String, String),
    #[error("parameter '{parameter}' has a hashtable with the keys '{first}' and '{second}', which PowerShell takes as the same key (keys ignore case)")]
    DuplicateKey { parameter: String, first: String, second: String },
    #[error("{0}")]
    InvalidParameterValue(String),
    #[error("timeout_seconds must be between 1 and {max}")]
    InvalidTimeout { max: u64 },
    #[error("idempotency_key must be 1 to 200 printable characters")]
    InvalidIdempotencyKey,
}

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::UnknownTenant(_) => "unknown_tenant",
            RequestError::UnknownAdmin(_) => "unknown_admin",
            RequestError::AdminNotAllowed { .. } => "admin_not_allowed",
            RequestError::InvalidCmdletName(_) => "invalid_cmdlet_name",
            RequestError::InvalidParameterName(_) => "invalid_parameter_name",
            RequestError::DuplicateParameter(..) => "duplicate_parameter",
            RequestError::DuplicateKey { .. } => "duplicate_key",
            RequestError::InvalidParameterValue(_) => "invalid_parameter_value",
            RequestError::InvalidTimeout { .. } => "invalid_timeout",
            RequestError::InvalidIdempotencyKey => "invalid_idempotency_key",
        }
    }
}

/// Limits on parameters, so one request cannot make the broker or the remote side choke.
pub const MAX_PARAMETERS: usize = 64;
pub const MAX_VALUE_DEPTH: usize = 16;
pub const MAX_STRING_BYTES: usize = 1 << 20;
pub const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

fn valid_cmdlet_name(name: &str) -> bool {
    let mut parts = name.split('-');
    let (Some(verb), Some(noun), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    name.len() <= 128
        && !verb.is_empty()
        && verb.chars().all(|c| c.is_ascii_alphabetic())
        && !noun.is_empty()
        && noun.chars().all(|c| c.is_ascii_alphanumeric())
}

fn valid_parameter_name(name: &str) -> bool {
    name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// 1 to 200 characters (not bytes: the document says characters, as JSON Schema counts them),
/// none of them a control character.
fn valid_idempotency_key(key: &str) -> bool {
    (1..=200).contains(&key.chars().count()) && !key.chars().any(char::is_control)
}

/// Two parameter names PowerShell would bind to the same parameter: equal ignoring case, or
/// one an abbreviation of the other (the broker does not know the cmdlet's parameters, so it
/// cannot tell which one a prefix means: it refuses, as PowerShell refuses a parameter given
/// twice). Sorted ignoring case, any such pair is adjacent.
fn ambiguous_parameters(parameters: &Map<String, Json>) -> Option<(String, String)> {
    let mut names: Vec<&String> = parameters.keys().collect();
    names.sort_by_key(|n| n.to_ascii_lowercase());
    names.windows(2).find(|w| crate::auth::classify::binds_to(w[0], w[1])).map(|w| (w[0].clone(), w[1].clone()))
}

/// Hashtable keys equal ignoring case, anywhere in a value (PowerShell refuses `@{a=1; A=2}`).
fn duplicate_key(value: &Json) -> Option<(String, String)> {
    match value {
        Json::Array(items) => items.iter().find_map(duplicate_key),
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| k.to_lowercase());
            let pair = keys.windows(2).find(|w| w[0].to_lowercase() == w[1].to_lowercase());
            pair.map(|w| (w[0].clone(), w[1].clone())).or_else(|| map.values().find_map(duplicate_key))
        }
        _ => None,
    }
}

/// JSON values inside one parameter value: every array element and hashtable entry, at any
/// depth (the value itself not counted).
fn nested_values(value: &Json) -> usize {
    match value {
        Json::Array(items) => items.len() + items.iter().map(nested_values).sum::<usize>(),
        Json::Object(map) => map.len() + map.values().map(nested_values).sum::<usize>(),
        _ => 0,
    }
}

fn check_value(name: &str, value: &Json, depth: usize) -> Result<(), RequestError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(RequestError::InvalidParameterValue(format!(
            "parameter '{name}' nests deeper than {MAX_VALUE_DEPTH} levels"
        )));
    }
    match value {
        Json::String(s) if s.len() > MAX_STRING_BYTES => Err(RequestError::InvalidParameterValue(format!(
            "parameter '{name}' has a string longer than {MAX_STRING_BYTES} bytes"
        ))),
        Json::Number(n) if n.as_i64().is_none() && n.as_f64().is_none_or(|f| !f.is_finite()) => Err(
            RequestError::InvalidParameterValue(format!("parameter '{name}' has a number outside the 64-bit range")),
        ),
        Json::Array(items) => items.iter().try_for_each(|v| check_value(name, v, depth + 1)),
        Json::Object(map) => map.values().try_for_each(|v| check_value(name, v, depth + 1)),
        _ => Ok(()),
    }
}

impl InvocationRequest {
    pub fn validate(&self, dir: &Directory, default_timeout: u64) -> Result<ValidRequest, RequestError> {
        let tenant = dir.tenant(&self.tenant).ok_or_else(|| RequestError::UnknownTenant(self.tenant.clone()))?;
        let admin = match &self.admin {
            None => None,
            Some(name) => {
                let a = dir.admin(name).ok_or_else(|| RequestError::UnknownAdmin(name.clone()))?;
                if !dir.may_manage(a, tenant) {
                    return Err(RequestError::AdminNotAllowed { admin: name.clone(), tenant: self.tenant.clone() });
                }
                Some(a)
            }
        };
        if !valid_cmdlet_name(&self.cmdlet) {
            return Err(RequestError::InvalidCmdletName(self.cmdlet.clone()));
        }
        if self.parameters.len() > MAX_PARAMETERS {
            return Err(RequestError::InvalidParameterValue(format!("at most {MAX_PARAMETERS} parameters")));
        }
        let mut parameters = Vec::with_capacity(self.parameters.len());
        for (name, value) in &self.parameters {
            if !valid_parameter_name(name) {
                return Err(RequestError::InvalidParameterName(name.clone()));
            }
            check_value(name, value, 0)?;
            if let Some((first, second)) = duplicate_key(value) {
                return Err(RequestError::DuplicateKey { parameter: name.clone(), first, second });
            }
        }
        if let Some((a, b)) = ambiguous_parameters(&self.parameters) {
            return Err(RequestError::DuplicateParameter(a, b));
        }
        for (name, value) in &self.parameters {
            parameters.push((name.clone(), PsValue::from_json(value)));
        }
        let timeout_seconds = self.timeout_seconds.unwrap_or(default_timeout);
        if timeout_seconds == 0 || timeout_seconds > MAX_TIMEOUT_SECONDS {
            return Err(RequestError::InvalidTimeout { max: MAX_TIMEOUT_SECONDS });
        }
        if self.idempotency_key.as_deref().is_some_and(|k| !valid_idempotency_key(k)) {
            return Err(RequestError::InvalidIdempotencyKey);
        }
        Ok(ValidRequest {
            tenant,
            admin,
            cmdlet: self.cmdlet.clone(),
            parameters,
            priority: self.priority.unwrap_or(Priority::Interactive),
            timeout_seconds,
            idempotent: self.idempotent.unwrap_or_else(|| self.class() == Class::Read),
        })
    }

    /// What the cmdlet does with these parameters (read, write, destructive, host-level).
    pub fn class(&self) -> Class {
        crate::auth::classify(&self.cmdlet, &self.parameters).class
    }

    /// JSON values in the parameters: each parameter, and every array element and hashtable
    /// entry inside, at any depth (what `server.max_parameter_values` bounds).
    pub fn parameter_values(&self) -> usize {
        self.parameters.len() + self.parameters.values().map(nested_values).sum::<usize>()
    }

    /// A digest of what the request asks for, to tell an idempotent replay from a different
    /// request that reuses the same key. Salted, and taken over the redacted parameters: no
    /// secret value, nor anything derived from one, is ever stored (so two requests that differ
    /// only in a secret value count as the same request). Names are compared ignoring case, as
    /// PowerShell does; validation refuses names that collide that way, so on an accepted
    /// request the canonical form keeps every name and value apart.
    ///
    /// Returned with the digest of the parameter values alone (the audit's): both are taken of
    /// the one canonical text of `stored`, the parameters as stored (secret values redacted).
    pub fn digests(&self, salt: &str, stored: &Map<String, Json>) -> (String, String) {
        let parameters = crate::auth::secrets::canonical_text(stored);
        let lower = |s: &str| Json::String(s.to_ascii_lowercase()).to_string();
        let admin = self.admin.as_deref().map_or_else(|| "null".to_string(), lower);
        // The compact JSON of [tenant, cmdlet, parameters, admin], written out.
        let request = format!("[{},{},{parameters},{admin}]", lower(&self.tenant), lower(&self.cmdlet));
        let hash = |text: &str| crate::auth::secrets::salted_sha256(salt, text.as_bytes());
        (hash(&request), hash(&parameters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digests are those of the canonical JSON (stored digests must keep matching).
    #[test]
    fn digests_are_taken_of_the_canonical_json() {
        use crate::auth::secrets::{canonical, redact, salted_sha256};
        for admin in [None, Some("Ops@Contoso.com")] {
            let req: InvocationRequest = serde_json::from_value(serde_json::json!({
                "tenant": "Contoso.onmicrosoft.com", "cmdlet": "Set-Mailbox", "admin": admin,
                "parameters": {"Identity": "a\"b\u{e9}", "password": "x", "B": [2, {"z": 1, "A": true}], "a": null}
            }))
            .unwrap();
            let (stored, redacted) = redact(&req.parameters);
            assert!(redacted);
            let whole = serde_json::json!([
                "contoso.onmicrosoft.com",
                "set-mailbox",
                canonical(&Json::Object(stored.clone())),
                admin.map(str::to_ascii_lowercase),
            ]);
            let params = canonical(&Json::Object(stored.clone())).to_string();
            assert_eq!(
                req.digests("salt", &stored),
                (salted_sha256("salt", whole.to_string().as_bytes()), salted_sha256("salt", params.as_bytes()))
            );
        }
    }

    #[test]
    fn cmdlet_names_must_be_verb_noun() {
        for ok in ["Get-Mailbox", "Set-CASMailbox", "Get-EXOMailbox2"] {
            assert!(valid_cmdlet_name(ok), "{ok}");
        }
        for bad in [
            "Get-Mailbox; rm -rf",
            "Get Mailbox",
            "Get-Mailbox|x",
            "$(x)",
            "Get-",
            "-Mailbox",
            "a-b-c",
            "Get-Mail`box",
            "",
        ] {
            assert!(!valid_cmdlet_name(bad), "{bad}");
        }
    }

    #[test]
    fn parameter_names_are_identifiers() {
        assert!(valid_parameter_name("ResultSize"));
        assert!(!valid_parameter_name("Result Size"));
        assert!(!valid_parameter_name("1x"));
        assert!(!valid_parameter_name("a;b"));
    }

    #[test]
    fn parameter_names_that_powershell_would_take_as_one_are_ambiguous() {
        let names = |j: Json| ambiguous_parameters(j.as_object().unwrap());
        assert_eq!(names(serde_json::json!({"key": "2", "Key": "1"})), Some(("key".into(), "Key".into())));
        assert!(names(serde_json::json!({"Ident": "a", "Identity": "b"})).is_some(), "an abbreviation and its name");
        assert_eq!(names(serde_json::json!({"Identity": "a", "Office": "b", "Name": "c"})), None);
        let keys = |j: Json| duplicate_key(&j);
        assert_eq!(keys(serde_json::json!([{"x": 1}, {"a": 1, "A": 2}])), Some(("a".into(), "A".into())));
        assert_eq!(keys(serde_json::json!({"a": {"B": 1, "b": 2}})), Some(("B".into(), "b".into())));
        assert_eq!(keys(serde_json::json!({"a": 1, "ab": 2})), None, "hashtable keys do not abbreviate");
    }

    #[test]
    fn values_are_counted_at_every_depth() {
        let req: InvocationRequest = serde_json::from_value(serde_json::json!({
            "tenant": "t", "cmdlet": "Set-X", "parameters": {"A": [1, 2, [3]], "B": {"c": 1}, "D": "x"}
        }))
        .unwrap();
        assert_eq!(req.parameter_values(), 3 + 3 + 1 + 1);
    }

    #[test]
    fn idempotency_keys_count_characters_not_bytes() {
        assert!(valid_idempotency_key(&"é".repeat(200)), "200 characters, 400 bytes");
        assert!(!valid_idempotency_key(&"é".repeat(201)));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("a\u{85}b"), "C1 control");
        assert!(valid_idempotency_key("order-42 ✓"));
    }

    #[test]
    fn timeouts_are_whole_numbers_in_any_json_spelling() {
        let parse = |timeout: &str| {
            serde_json::from_str::<InvocationRequest>(&format!(
                r#"{{"tenant":"t","cmdlet":"Get-X","timeout_seconds":{timeout}}}"#
            ))
            .map(|r| r.timeout_seconds)
        };
        assert_eq!(parse("30").unwrap(), Some(30));
        assert_eq!(parse("30.0").unwrap(), Some(30));
        assert_eq!(parse("3e2").unwrap(), Some(300));
        assert_eq!(parse("null").unwrap(), None);
        assert_eq!(parse("1e300").unwrap(), Some(u64::MAX), "too large for u64: refused later as invalid_timeout");
        for bad in ["30.5", "-1", "-1.0", "\"30\"", "true"] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.classify(), serde_json::error::Category::Data, "{bad}: {e}");
        }
    }

    #[test]
    fn deep_values_are_refused() {
        let mut v = Json::from(1);
        for _ in 0..20 {
            v = Json::Array(vec![v]);
        }
        assert!(matches!(check_value("p", &v, 0), Err(RequestError::InvalidParameterValue(_))));
    }
}
