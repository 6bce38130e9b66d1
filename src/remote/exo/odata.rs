//! Exchange Online's JSON typing (OData JSON as the admin API writes it), both ways: typed
//! PowerShell values to JSON and back. The connector encodes parameters and decodes answers; the
//! simulator decodes parameters and encodes answers, with the same rules.
//!
//! JSON has strings, numbers, booleans, arrays and objects; everything else is said with
//! annotations: an object whose `@odata.type` is `#Exchange.GenericHashTable` is a hashtable,
//! and a property `Name` may be typed by a sibling `Name@odata.type` (`#Collection(Exchange.GenericHashTable)`,
//! `#DateTimeOffset`, `#Guid`, `#Int64`, `#Collection(String)`, …). Other annotations
//! (`@odata.context`, `Name@odata.navigationLink`, …) carry no value and are skipped.

use crate::remote::{PsObject, PsValue};
use base64::Engine as _;
use serde_json::{Map, Number, Value as Json};

/// The type of a hashtable (PowerShell's `@{…}`) in a parameter or an answer.
pub const HASHTABLE: &str = "#Exchange.GenericHashTable";
/// The type of an array of hashtables, said by the array's sibling `Name@odata.type`.
pub const HASHTABLE_COLLECTION: &str = "#Collection(Exchange.GenericHashTable)";
/// The instance annotation naming an object's type.
pub const TYPE_KEY: &str = "@odata.type";
/// The suffix of a property's type annotation (`Name@odata.type`).
const TYPE_SUFFIX: &str = "@odata.type";

/// How much type information the encoder writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typing {
    /// Parameters as the ExchangeOnlineManagement module sends them: hashtables (and arrays of
    /// them) are marked, date-times travel as UTC ISO 8601 text, everything else is plain JSON.
    Parameters,
    /// Answers as the service writes them: also the types JSON cannot show by itself
    /// (`#DateTimeOffset`, `#Guid`, `#Int64`, string collections) as sibling annotations.
    Answer,
}

/// A value that cannot be sent as a parameter over REST.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter '{name}': {reason}")]
pub struct Unsendable {
    pub name: String,
    pub reason: String,
}

/// Encodes named values as the members of one JSON object (the `Parameters` of a call, or the
/// properties of an output object), each with its sibling type annotation when it needs one.
pub fn encode_members<'a>(
    members: impl IntoIterator<Item = (&'a str, &'a PsValue)>,
    typing: Typing,
) -> Result<Map<String, Json>, Unsendable> {
    let mut map = Map::new();
    for (name, value) in members {
        let unsendable = |reason: String| Unsendable { name: name.to_string(), reason };
        let (json, annotation) = encode(value, typing).map_err(unsendable)?;
        if let Some(annotation) = annotation {
            map.insert(format!("{name}{TYPE_SUFFIX}"), Json::String(annotation));
        }
        map.insert(name.to_string(), json);
    }
    Ok(map)
}

/// One element of an answer's `value` as the service writes it: an object's properties (typed
/// by annotations where JSON cannot say), or a value.
pub fn encode_item(value: &PsValue) -> Json {
    let encoded = match value {
        PsValue::Object(obj) => {
            encode_members(obj.properties.iter().map(|(n, v)| (n.as_str(), v)), Typing::Answer).map(Json::Object)
        }
        other => encode(other, Typing::Answer)
            .map(|(json, _)| json)
            .map_err(|reason| Unsendable { name: String::new(), reason }),
    };
    encoded.unwrap_or(Json::Null)
}

/// One value and, when JSON alone cannot say its type, the annotation that does.
fn encode(value: &PsValue, typing: Typing) -> Result<(Json, Option<String>), String> {
    let answer = typing == Typing::Answer;
    let typed = |json: Json, ty: &str| (json, answer.then(|| ty.to_string()));
    let plain = |json: Json| (json, None);
    Ok(match value {
        PsValue::Null => plain(Json::Null),
        PsValue::Bool(b) => plain(Json::Bool(*b)),
        PsValue::Int32(i) => plain(Json::from(*i)),
        PsValue::Int64(i) => typed(Json::from(*i), "#Int64"),
        PsValue::Byte(i) => plain(Json::from(*i)),
        PsValue::SByte(i) => plain(Json::from(*i)),
        PsValue::Int16(i) => plain(Json::from(*i)),
        PsValue::UInt16(i) => plain(Json::from(*i)),
        PsValue::UInt32(i) => typed(Json::from(*i), "#Int64"),
        PsValue::UInt64(i) => typed(Json::from(*i), "#Int64"),
        PsValue::Double(d) => plain(finite(*d)?),
        PsValue::Single(f) => plain(finite(f.to_string().parse().unwrap_or(f64::NAN))?),
        PsValue::Decimal(text) => match text.trim().parse::<f64>() {
            Ok(d) if d.is_finite() => typed(finite(d)?, "#Decimal"),
            _ => plain(Json::String(text.clone())),
        },
        PsValue::String(s) => plain(Json::String(s.clone())),
        PsValue::Char(_) | PsValue::Uri(_) | PsValue::Version(_) | PsValue::Xml(_) => {
            plain(Json::String(value.display()))
        }
        PsValue::Enum { name, .. } => plain(Json::String(name.clone())),
        PsValue::DateTime(text) => match typing {
            Typing::Parameters => plain(Json::String(utc_iso8601(text))),
            Typing::Answer => typed(Json::String(text.clone()), "#DateTimeOffset"),
        },
        PsValue::Guid(g) => typed(Json::String(g.to_string()), "#Guid"),
        PsValue::TimeSpan(text) => typed(Json::String(text.clone()), "#Duration"),
        PsValue::Bytes(bytes) => {
            typed(Json::String(base64::engine::general_purpose::STANDARD.encode(bytes)), "#Binary")
        }
        PsValue::List(items) => {
            let mut array = Vec::with_capacity(items.len());
            for item in items {
                array.push(encode(item, typing)?.0);
            }
            let all = |f: fn(&PsValue) -> bool| !items.is_empty() && items.iter().all(f);
            let annotation = if all(|v| matches!(v, PsValue::Dict(_))) {
                Some(HASHTABLE_COLLECTION.to_string())
            } else if answer && all(|v| matches!(v, PsValue::String(_))) {
                Some("#Collection(String)".to_string())
            } else {
                None
            };
            (Json::Array(array), annotation)
        }
        PsValue::Dict(entries) => {
            let keys: Vec<String> = entries.iter().map(|(k, _)| k.display()).collect();
            let mut map = Map::new();
            map.insert(TYPE_KEY.to_string(), Json::String(HASHTABLE.to_string()));
            let members = encode_members(keys.iter().map(String::as_str).zip(entries.iter().map(|(_, v)| v)), typing)
                .map_err(|e| format!("key '{}': {}", e.name, e.reason))?;
            map.extend(members);
            plain(Json::Object(map))
        }
        PsValue::Object(obj) => {
            // A property bag: a hashtable of its properties is what a cmdlet can bind from it.
            let members = encode_members(obj.properties.iter().map(|(n, v)| (n.as_str(), v)), typing)
                .map_err(|e| format!("property '{}': {}", e.name, e.reason))?;
            let mut map = Map::new();
            if typing == Typing::Parameters {
                map.insert(TYPE_KEY.to_string(), Json::String(HASHTABLE.to_string()));
            }
            map.extend(members);
            plain(Json::Object(map))
        }
        PsValue::ScriptBlock(_) if typing == Typing::Parameters => {
            return Err("a script block cannot be sent to Exchange Online".into())
        }
        PsValue::ScriptBlock(text) => plain(Json::String(text.clone())),
        PsValue::SecureString(_) if typing == Typing::Parameters => {
            return Err("a SecureString cannot be sent over REST (send the text; TLS protects it)".into())
        }
        PsValue::SecureString(_) => plain(Json::Null),
    })
}

fn finite(d: f64) -> Result<Json, String> {
    Number::from_f64(d).map(Json::Number).ok_or_else(|| format!("{d} is not a finite number"))
}

/// A date-time as UTC ISO 8601 (`2024-05-01T08:00:00Z`). Text with an offset is converted; text
/// without one is taken as UTC; anything else is sent as written (the service will say why).
pub fn utc_iso8601(text: &str) -> String {
    use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return dt.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::AutoSi, true);
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return naive.and_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true);
        }
    }
    t.to_string()
}

/// Decodes one JSON value (consumed, so a large answer is not held twice). An object is a
/// hashtable when typed so, else a property bag.
pub fn decode(json: Json) -> PsValue {
    decode_typed(json, None)
}

/// The members of a JSON object as named values, in order, typed by their sibling annotations:
/// the `Parameters` of a call, or the properties of an output object.
pub fn decode_members(map: Map<String, Json>) -> Vec<(String, PsValue)> {
    let mut annotations: Vec<(String, String)> = Vec::new();
    let mut members = Vec::with_capacity(map.len());
    for (key, value) in map {
        if let Some(name) = key.strip_suffix(TYPE_SUFFIX).filter(|n| !n.is_empty()) {
            if let Json::String(ty) = value {
                annotations.push((name.to_string(), ty));
            }
        } else if !is_annotation(&key) {
            members.push((key, value));
        }
    }
    members
        .into_iter()
        .map(|(name, value)| {
            let ty = annotations.iter().find(|(n, _)| *n == name).map(|(_, t)| t.as_str());
            let value = decode_typed(value, ty);
            (name, value)
        })
        .collect()
}

/// `@odata.context`, `Name@odata.navigationLink`, …: annotations, not members. A hashtable key
/// may well contain `@` (an address), so only the `odata.` terms and leading `@` count.
fn is_annotation(key: &str) -> bool {
    key.starts_with('@') || key.contains("@odata.")
}

/// A type name without its `#` and `Edm.` prefixes (`#Edm.Guid` and `#Guid` are one type).
fn bare(ty: &str) -> &str {
    let ty = ty.trim().trim_start_matches('#');
    ty.strip_prefix("Edm.").unwrap_or(ty)
}

fn decode_typed(json: Json, ty: Option<&str>) -> PsValue {
    let ty = ty.map(bare);
    match (ty, json) {
        (Some(t), Json::Array(items)) if t.starts_with("Collection(") && t.ends_with(')') => {
            let inner = &t["Collection(".len()..t.len() - 1];
            PsValue::List(items.into_iter().map(|item| decode_typed(item, Some(inner))).collect())
        }
        (Some("DateTimeOffset" | "DateTime" | "Date"), Json::String(s)) => PsValue::DateTime(s),
        (Some("Guid"), Json::String(s)) => match uuid::Uuid::parse_str(&s) {
            Ok(g) => PsValue::Guid(g),
            Err(_) => PsValue::String(s),
        },
        (Some("Int64"), Json::Number(n)) if n.as_i64().is_some() => PsValue::Int64(n.as_i64().unwrap_or_default()),
        (Some("Int32"), Json::Number(n)) if n.as_i64().and_then(|i| i32::try_from(i).ok()).is_some() => {
            PsValue::Int32(n.as_i64().and_then(|i| i32::try_from(i).ok()).unwrap_or_default())
        }
        (Some("Decimal"), Json::Number(n)) => PsValue::Decimal(n.to_string()),
        (Some("Duration"), Json::String(s)) => PsValue::TimeSpan(s),
        (Some("Binary"), Json::String(s)) => match base64::engine::general_purpose::STANDARD.decode(&s) {
            Ok(bytes) => PsValue::Bytes(bytes),
            Err(_) => PsValue::String(s),
        },
        (Some("Exchange.GenericHashTable"), Json::Object(map)) => hashtable(map),
        (_, json) => decode_plain(json),
    }
}

fn decode_plain(json: Json) -> PsValue {
    match json {
        Json::Null => PsValue::Null,
        Json::Bool(b) => PsValue::Bool(b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i32::try_from(i).map(PsValue::Int32).unwrap_or(PsValue::Int64(i)),
            (None, Some(u)) => PsValue::UInt64(u),
            _ => PsValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => PsValue::String(s),
        Json::Array(items) => PsValue::List(items.into_iter().map(decode).collect()),
        Json::Object(map) => {
            let ty = map.get(TYPE_KEY).and_then(Json::as_str).map(str::to_string);
            match ty {
                Some(t) if bare(&t) == "Exchange.GenericHashTable" => hashtable(map),
                _ => {
                    let type_names = ty.iter().map(|t| bare(t).to_string()).collect();
                    PsValue::Object(PsObject { type_names, to_string: None, properties: decode_members(map) })
                }
            }
        }
    }
}

fn hashtable(map: Map<String, Json>) -> PsValue {
    PsValue::Dict(decode_members(map).into_iter().map(|(k, v)| (PsValue::String(k), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dict(entries: &[(&str, PsValue)]) -> PsValue {
        PsValue::Dict(entries.iter().map(|(k, v)| (PsValue::String(k.to_string()), v.clone())).collect())
    }

    fn params(values: &[(&str, PsValue)]) -> Json {
        Json::Object(encode_members(values.iter().map(|(n, v)| (*n, v)), Typing::Parameters).unwrap())
    }

    /// The forms of the module's request body, one by one.
    #[test]
    fn parameters_are_typed_as_the_module_sends_them() {
        let body = params(&[
            ("Identity", "user001".into()),
            ("Confirm", false.into()),
            ("Force", true.into()),
            ("ResultSize", 5000.into()),
            ("Big", PsValue::Int64(5_000_000_000)),
            ("Ratio", PsValue::Double(0.5)),
            ("Members", PsValue::List(vec!["a".into(), "b".into()])),
            (
                "EmailAddresses",
                dict(&[("Add", PsValue::List(vec!["x@contoso.com".into()])), ("Remove", "y@contoso.com".into())]),
            ),
            ("Rules", PsValue::List(vec![dict(&[("Name", "r1".into())]), dict(&[("Name", "r2".into())])])),
            ("Start", PsValue::DateTime("2024-05-01T10:00:00+02:00".into())),
            ("Id", PsValue::Guid(uuid::Uuid::nil())),
            ("Clear", PsValue::Null),
        ]);
        assert_eq!(
            body,
            json!({
                "Identity": "user001",
                "Confirm": false,
                "Force": true,
                "ResultSize": 5000,
                "Big": 5_000_000_000i64,
                "Ratio": 0.5,
                "Members": ["a", "b"],
                "EmailAddresses": {"@odata.type": "#Exchange.GenericHashTable", "Add": ["x@contoso.com"], "Remove": "y@contoso.com"},
                "Rules@odata.type": "#Collection(Exchange.GenericHashTable)",
                "Rules": [
                    {"@odata.type": "#Exchange.GenericHashTable", "Name": "r1"},
                    {"@odata.type": "#Exchange.GenericHashTable", "Name": "r2"}
                ],
                "Start": "2024-05-01T08:00:00Z",
                "Id": "00000000-0000-0000-0000-000000000000",
                "Clear": null
            })
        );
        let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys[0..3], ["Identity", "Confirm", "Force"], "order is kept");
    }

    #[test]
    fn what_rest_cannot_carry_is_refused_by_name() {
        let e = encode_members([("Script", &PsValue::ScriptBlock("rm -r /".into()))], Typing::Parameters).unwrap_err();
        assert_eq!(e.name, "Script");
        let secret = PsValue::SecureString("AAA".into());
        assert!(encode_members([("Password", &secret)], Typing::Parameters).is_err());
        let nan = dict(&[("x", PsValue::Double(f64::NAN))]);
        let e = encode_members([("H", &nan)], Typing::Parameters).unwrap_err();
        assert!(e.reason.contains("key 'x'"), "{e}");
    }

    #[test]
    fn date_times_become_utc() {
        assert_eq!(utc_iso8601("2024-05-01T10:00:00+02:00"), "2024-05-01T08:00:00Z");
        assert_eq!(utc_iso8601("2024-05-01T10:00:00.250-01:00"), "2024-05-01T11:00:00.250Z");
        assert_eq!(utc_iso8601("2024-05-01T10:00:00"), "2024-05-01T10:00:00Z", "no offset: taken as UTC");
        assert_eq!(utc_iso8601("2024-05-01 10:00:00"), "2024-05-01T10:00:00Z");
        assert_eq!(utc_iso8601("next tuesday"), "next tuesday", "left for the service to refuse");
    }

    /// What the simulator decodes from a request is what the connector encoded.
    #[test]
    fn parameters_round_trip() {
        let values = vec![
            ("Identity".to_string(), PsValue::String("user001".into())),
            ("Switch".to_string(), PsValue::Bool(true)),
            ("Count".to_string(), PsValue::Int32(7)),
            ("Big".to_string(), PsValue::Int64(5_000_000_000)),
            ("List".to_string(), PsValue::List(vec![PsValue::Int32(1), PsValue::String("two".into())])),
            ("Table".to_string(), dict(&[("a@b.com", PsValue::Int32(1)), ("Nested", dict(&[("x", PsValue::Null)]))])),
            ("Tables".to_string(), PsValue::List(vec![dict(&[("k", "v".into())])])),
        ];
        let encoded = encode_members(values.iter().map(|(n, v)| (n.as_str(), v)), Typing::Parameters).unwrap();
        let text = serde_json::to_string(&encoded).unwrap();
        let decoded = decode_members(serde_json::from_str(&text).unwrap());
        assert_eq!(decoded, values);
    }

    /// An object without the hashtable type is a property bag, not a hashtable: the service
    /// (and the simulator) can tell whether the client typed it.
    #[test]
    fn untyped_objects_are_not_hashtables() {
        let decoded = decode_members(
            json!({"H": {"a": 1}, "T": {"@odata.type": "#Exchange.GenericHashTable", "a": 1}})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert!(matches!(decoded[0].1, PsValue::Object(_)));
        assert_eq!(decoded[1].1, dict(&[("a", PsValue::Int32(1))]));
    }

    #[test]
    fn answers_decode_with_their_annotations_and_order() {
        let item = json!({
            "@odata.type": "#Exchange.Mailbox",
            "Name": "user001",
            "Guid@odata.type": "#Guid",
            "Guid": "6babcaad-604b-40ac-a9d7-9fd97c0b779f",
            "WhenCreated": "2021-01-04T09:00:00+00:00",
            "WhenCreated@odata.type": "#DateTimeOffset",
            "EmailAddresses@odata.type": "#Collection(String)",
            "EmailAddresses": ["SMTP:user001@contoso.com"],
            "Size@odata.type": "#Edm.Int64",
            "Size": 12,
            "Links@odata.navigationLink": "ignored",
            "Quota": 1.5,
            "Settings": {"@odata.type": "#Exchange.GenericHashTable", "k": "v"}
        });
        let PsValue::Object(obj) = decode(item) else { panic!("not an object") };
        assert_eq!(obj.type_names, ["Exchange.Mailbox"]);
        let names: Vec<_> = obj.properties.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Name", "Guid", "WhenCreated", "EmailAddresses", "Size", "Quota", "Settings"]);
        assert_eq!(obj.get("Guid"), Some(&PsValue::Guid("6babcaad-604b-40ac-a9d7-9fd97c0b779f".parse().unwrap())));
        assert_eq!(obj.get("WhenCreated"), Some(&PsValue::DateTime("2021-01-04T09:00:00+00:00".into())));
        assert_eq!(obj.get("EmailAddresses"), Some(&PsValue::List(vec!["SMTP:user001@contoso.com".into()])));
        assert_eq!(obj.get("Size"), Some(&PsValue::Int64(12)));
        assert_eq!(obj.get("Quota"), Some(&PsValue::Double(1.5)));
        assert_eq!(obj.get("Settings"), Some(&dict(&[("k", "v".into())])));
    }

    /// What the simulator writes is what the connector reads back, types included.
    #[test]
    fn answers_round_trip() {
        let obj = PsObject::new(&[])
            .with("Name", "user001")
            .with("Guid", PsValue::Guid(uuid::Uuid::new_v4()))
            .with("When", PsValue::DateTime("2021-01-04T09:00:00+00:00".into()))
            .with("Addresses", PsValue::List(vec!["a".into(), "b".into()]))
            .with("Big", PsValue::Int64(1))
            .with("Nothing", PsValue::Null)
            .with("Empty", PsValue::List(vec![]));
        let members = encode_members(obj.properties.iter().map(|(n, v)| (n.as_str(), v)), Typing::Answer).unwrap();
        let text = serde_json::to_string(&members).unwrap();
        let back = decode(serde_json::from_str(&text).unwrap());
        assert_eq!(back, PsValue::Object(obj));
    }
}
