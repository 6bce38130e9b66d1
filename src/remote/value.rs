//! A protocol-neutral model of PowerShell values.
//!
//! Parameters travel *to* the remote side as `PsValue`s built from JSON; output objects come
//! *back* as `PsValue`s and are turned into JSON for callers. The wire codec (CLIXML) and the
//! in-process simulator both speak this model, so the two paths give callers identical JSON.

use serde_json::{Map, Number, Value as Json};

/// The JSON key under which an output object's PowerShell type names are kept.
pub const TYPE_NAMES_KEY: &str = "@types";

#[derive(Debug, Clone, PartialEq)]
pub enum PsValue {
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Double(f64),
    String(String),
    /// An ISO-8601 date-time, kept as text (the remote decides its meaning).
    DateTime(String),
    Guid(uuid::Uuid),
    List(Vec<PsValue>),
    /// A hashtable; PowerShell keys are usually strings but need not be.
    Dict(Vec<(PsValue, PsValue)>),
    Object(PsObject),
    /// A UTF-16 code unit (`System.Char`); not necessarily a valid scalar on its own.
    Char(u16),
    Byte(u8),
    SByte(i8),
    Int16(i16),
    UInt16(u16),
    UInt32(u32),
    UInt64(u64),
    Single(f32),
    /// A `System.Decimal`, kept as its invariant-culture text (e.g. `"1.10"`) to keep precision.
    Decimal(String),
    /// A `System.TimeSpan` as xs:duration text (e.g. `"PT9.0269026S"`).
    TimeSpan(String),
    /// A byte array (`System.Byte[]`).
    Bytes(Vec<u8>),
    Uri(String),
    /// A `System.Version` as text (e.g. `"2.3"`, `"1.1.0.1"`).
    Version(String),
    /// An XML document as text.
    Xml(String),
    /// A script block's text. Only ever received; never built from caller input.
    ScriptBlock(String),
    /// A SecureString exactly as it travels: base64 of the session-key-encrypted bytes.
    SecureString(String),
    /// An enum value: its type names (most derived first, including `System.Enum`), its
    /// name as PowerShell prints it (`ToString`, e.g. `"None"` or `"Read, Write"`) and its
    /// numeric value.
    Enum {
        type_names: Vec<String>,
        name: String,
        value: i64,
    },
}

/// A complex object: type names (most derived first), its ToString, and properties in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PsObject {
    pub type_names: Vec<String>,
    pub to_string: Option<String>,
    pub properties: Vec<(String, PsValue)>,
}

impl PsObject {
    pub fn new(type_names: &[&str]) -> Self {
        Self { type_names: type_names.iter().map(|s| s.to_string()).collect(), ..Self::default() }
    }

    pub fn with(mut self, name: &str, value: impl Into<PsValue>) -> Self {
        self.properties.push((name.to_string(), value.into()));
        self
    }

    pub fn get(&self, name: &str) -> Option<&PsValue> {
        self.properties.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    pub fn set(&mut self, name: &str, value: PsValue) {
        match self.properties.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, v)) => *v = value,
            None => self.properties.push((name.to_string(), value)),
        }
    }
}

impl From<&str> for PsValue {
    fn from(s: &str) -> Self {
        PsValue::String(s.to_string())
    }
}
impl From<String> for PsValue {
    fn from(s: String) -> Self {
        PsValue::String(s)
    }
}
impl From<bool> for PsValue {
    fn from(b: bool) -> Self {
        PsValue::Bool(b)
    }
}
impl From<i32> for PsValue {
    fn from(i: i32) -> Self {
        PsValue::Int32(i)
    }
}
impl From<i64> for PsValue {
    fn from(i: i64) -> Self {
        PsValue::Int64(i)
    }
}

impl PsValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PsValue::String(s) | PsValue::DateTime(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            PsValue::Int32(i) => Some(*i as i64),
            PsValue::Int64(i) => Some(*i),
            PsValue::Byte(i) => Some(*i as i64),
            PsValue::SByte(i) => Some(*i as i64),
            PsValue::Int16(i) => Some(*i as i64),
            PsValue::UInt16(i) => Some(*i as i64),
            PsValue::UInt32(i) => Some(*i as i64),
            PsValue::UInt64(i) => i64::try_from(*i).ok(),
            PsValue::Enum { value, .. } => Some(*value),
            PsValue::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// PowerShell's truthiness for a parameter value (switches and `-Flag:$true`).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            PsValue::Bool(b) => Some(*b),
            PsValue::String(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("$true") => Some(true),
            PsValue::String(s) if s.eq_ignore_ascii_case("false") || s.eq_ignore_ascii_case("$false") => Some(false),
            _ => None,
        }
    }

    /// The text PowerShell would show for a scalar (used where a cmdlet accepts "an identity").
    pub fn display(&self) -> String {
        match self {
            PsValue::Null => String::new(),
            PsValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            PsValue::Int32(i) => i.to_string(),
            PsValue::Int64(i) => i.to_string(),
            PsValue::Double(d) => d.to_string(),
            PsValue::String(s) | PsValue::DateTime(s) => s.clone(),
            PsValue::Guid(g) => g.to_string(),
            PsValue::List(items) => items.iter().map(PsValue::display).collect::<Vec<_>>().join(" "),
            PsValue::Dict(_) => "System.Collections.Hashtable".to_string(),
            PsValue::Object(o) => {
                o.to_string.clone().unwrap_or_else(|| o.type_names.first().cloned().unwrap_or_default())
            }
            PsValue::Char(c) => char_text(*c),
            PsValue::Byte(i) => i.to_string(),
            PsValue::SByte(i) => i.to_string(),
            PsValue::Int16(i) => i.to_string(),
            PsValue::UInt16(i) => i.to_string(),
            PsValue::UInt32(i) => i.to_string(),
            PsValue::UInt64(i) => i.to_string(),
            PsValue::Single(f) => f.to_string(),
            PsValue::Decimal(s)
            | PsValue::TimeSpan(s)
            | PsValue::Uri(s)
            | PsValue::Version(s)
            | PsValue::Xml(s)
            | PsValue::ScriptBlock(s) => s.clone(),
            PsValue::Bytes(b) => b.iter().map(u8::to_string).collect::<Vec<_>>().join(" "),
            PsValue::SecureString(_) => "System.Security.SecureString".to_string(),
            PsValue::Enum { name, .. } => name.clone(),
        }
    }

    /// Maps a caller's JSON parameter value to a typed PowerShell value.
    ///
    /// Integers that fit become Int32 (what PowerShell itself infers for a literal), larger ones
    /// Int64; objects become hashtables. Nothing here is ever turned into script text.
    pub fn from_json(json: &Json) -> PsValue {
        match json {
            Json::Null => PsValue::Null,
            Json::Bool(b) => PsValue::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => i32::try_from(i).map(PsValue::Int32).unwrap_or(PsValue::Int64(i)),
                None => PsValue::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => PsValue::String(s.clone()),
            Json::Array(items) => PsValue::List(items.iter().map(PsValue::from_json).collect()),
            Json::Object(map) => {
                PsValue::Dict(map.iter().map(|(k, v)| (PsValue::String(k.clone()), PsValue::from_json(v))).collect())
            }
        }
    }

    /// Maps an output value to JSON: objects keep their properties by name and their type names
    /// under [`TYPE_NAMES_KEY`].
    pub fn to_json(&self) -> Json {
        match self {
            PsValue::Null => Json::Null,
            PsValue::Bool(b) => Json::Bool(*b),
            PsValue::Int32(i) => Json::from(*i),
            PsValue::Int64(i) => Json::from(*i),
            PsValue::Double(d) => Number::from_f64(*d).map(Json::Number).unwrap_or(Json::Null),
            PsValue::String(s) | PsValue::DateTime(s) => Json::String(s.clone()),
            PsValue::Guid(g) => Json::String(g.to_string()),
            PsValue::List(items) => Json::Array(items.iter().map(PsValue::to_json).collect()),
            PsValue::Dict(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    map.insert(k.display(), v.to_json());
                }
                Json::Object(map)
            }
            PsValue::Object(obj) => {
                let mut map = Map::new();
                if !obj.type_names.is_empty() {
                    map.insert(TYPE_NAMES_KEY.to_string(), Json::from(obj.type_names.clone()));
                }
                for (name, v) in &obj.properties {
                    map.insert(name.clone(), v.to_json());
                }
                Json::Object(map)
            }
            PsValue::Char(c) => Json::String(char_text(*c)),
            PsValue::Byte(i) => Json::from(*i),
            PsValue::SByte(i) => Json::from(*i),
            PsValue::Int16(i) => Json::from(*i),
            PsValue::UInt16(i) => Json::from(*i),
            PsValue::UInt32(i) => Json::from(*i),
            PsValue::UInt64(i) => Json::from(*i),
            // Through the shortest decimal text, so 0.1f32 becomes 0.1 rather than 0.10000000149.
            PsValue::Single(f) => {
                f.to_string().parse::<f64>().ok().and_then(Number::from_f64).map(Json::Number).unwrap_or(Json::Null)
            }
            // A number when it is one (precision beyond f64 is lost), else the text.
            PsValue::Decimal(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Json::Number)
                .unwrap_or_else(|| Json::String(s.clone())),
            PsValue::TimeSpan(s)
            | PsValue::Uri(s)
            | PsValue::Version(s)
            | PsValue::Xml(s)
            | PsValue::ScriptBlock(s) => Json::String(s.clone()),
            PsValue::Bytes(b) => {
                use base64::Engine as _;
                Json::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
            // Encrypted with the session key: meaningless to callers, and not to be echoed.
            PsValue::SecureString(_) => Json::Null,
            PsValue::Enum { name, .. } => Json::String(name.clone()),
        }
    }
}

/// A UTF-16 code unit as text; a lone surrogate becomes U+FFFD.
fn char_text(c: u16) -> String {
    char::from_u32(c as u32).unwrap_or(char::REPLACEMENT_CHARACTER).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_parameters_become_typed_values() {
        let v = PsValue::from_json(&json!({"a": 5, "b": 5_000_000_000i64, "c": [true, null, 1.5], "d": "x"}));
        let PsValue::Dict(entries) = v else { panic!("not a dict") };
        assert_eq!(entries[0].1, PsValue::Int32(5));
        assert_eq!(entries[1].1, PsValue::Int64(5_000_000_000));
        assert_eq!(entries[2].1, PsValue::List(vec![PsValue::Bool(true), PsValue::Null, PsValue::Double(1.5)]));
        assert_eq!(entries[3].1, PsValue::String("x".into()));
    }

    #[test]
    fn objects_keep_type_names_and_property_order() {
        let obj = PsObject::new(&["Deserialized.Mailbox", "System.Object"]).with("Name", "a").with("Quota", 5);
        let j = PsValue::Object(obj).to_json();
        assert_eq!(j[TYPE_NAMES_KEY][0], "Deserialized.Mailbox");
        let keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec![TYPE_NAMES_KEY, "Name", "Quota"]);
    }
}
