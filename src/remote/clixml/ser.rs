//! `PsValue` → CLIXML.
//!
//! [`ClixmlWriter`] writes one document fragment (what one PSRP message carries): it allocates
//! `RefId`s for every `<Obj>`, writes each distinct type-name list once as `<TN RefId>` and
//! refers back to it with `<TNRef>` afterwards. [`to_clixml`] is the one-call form for a
//! single value. Values are written as trees: equal sub-values are written twice, never as
//! `<Ref>`.

use super::escape::{encode_string, escape_attr, escape_text};
use crate::remote::value::{PsObject, PsValue};
use base64::Engine as _;
use std::collections::HashMap;

/// Type names written for [`PsValue::List`].
pub const LIST_TYPE_NAMES: [&str; 3] = ["System.Object[]", "System.Array", "System.Object"];
/// Type names written for [`PsValue::Dict`].
pub const DICT_TYPE_NAMES: [&str; 2] = ["System.Collections.Hashtable", "System.Object"];
/// Appended to an enum's own type name when [`PsValue::Enum`] does not list them.
pub const ENUM_BASE_TYPE_NAMES: [&str; 3] = ["System.Enum", "System.ValueType", "System.Object"];

/// Which member set a property goes to: adapted (`<Props>`) or extended (`<MS>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberSet {
    Props,
    Ms,
}

impl MemberSet {
    fn tag(self) -> &'static str {
        match self {
            MemberSet::Props => "Props",
            MemberSet::Ms => "MS",
        }
    }
}

/// Serializes a single value as one CLIXML element (no `N` attribute).
pub fn to_clixml(value: &PsValue) -> String {
    let mut w = ClixmlWriter::new();
    w.value(None, value);
    w.finish()
}

/// An append-only CLIXML writer with the RefId and TN bookkeeping of one document.
#[derive(Debug, Default)]
pub struct ClixmlWriter {
    out: String,
    next_ref_id: u32,
    type_lists: HashMap<Vec<String>, u32>,
}

impl ClixmlWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The CLIXML written so far.
    pub fn finish(self) -> String {
        self.out
    }

    fn open(&mut self, tag: &str, name: Option<&str>, ref_id: Option<u32>, empty: bool) {
        self.out.push('<');
        self.out.push_str(tag);
        if let Some(name) = name {
            self.out.push_str(" N=\"");
            escape_attr(&encode_string(name), &mut self.out);
            self.out.push('"');
        }
        if let Some(id) = ref_id {
            self.out.push_str(" RefId=\"");
            self.out.push_str(&id.to_string());
            self.out.push('"');
        }
        self.out.push_str(if empty { " />" } else { ">" });
    }

    fn close(&mut self, tag: &str) {
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push('>');
    }

    /// `<tag N=name>text</tag>`, with `text` already in its wire form except XML escaping.
    fn leaf(&mut self, tag: &str, name: Option<&str>, text: &str) {
        if text.is_empty() {
            self.open(tag, name, None, true);
        } else {
            self.open(tag, name, None, false);
            escape_text(text, &mut self.out);
            self.close(tag);
        }
    }

    fn string_leaf(&mut self, tag: &str, name: Option<&str>, text: &str) {
        self.leaf(tag, name, &encode_string(text));
    }

    fn alloc_ref(&mut self) -> u32 {
        let id = self.next_ref_id;
        self.next_ref_id += 1;
        id
    }

    fn type_names<S: AsRef<str>>(&mut self, names: &[S]) {
        if names.is_empty() {
            return;
        }
        let key: Vec<String> = names.iter().map(|s| s.as_ref().to_string()).collect();
        if let Some(id) = self.type_lists.get(&key) {
            let id = *id;
            self.out.push_str("<TNRef RefId=\"");
            self.out.push_str(&id.to_string());
            self.out.push_str("\" />");
            return;
        }
        let id = self.type_lists.len() as u32;
        self.type_lists.insert(key, id);
        self.open("TN", None, Some(id), false);
        for n in names {
            self.string_leaf("T", None, n.as_ref());
        }
        self.close("TN");
    }

    /// Writes `<Obj N=name RefId=…>`, its type names and `<ToString>`, then lets `body` write
    /// the rest (member sets, a primitive, a collection), then `</Obj>`.
    pub fn object<S: AsRef<str>>(
        &mut self,
        name: Option<&str>,
        type_names: &[S],
        to_string: Option<&str>,
        body: impl FnOnce(&mut Self),
    ) {
        let id = self.alloc_ref();
        self.open("Obj", name, Some(id), false);
        self.type_names(type_names);
        if let Some(ts) = to_string {
            self.string_leaf("ToString", None, ts);
        }
        body(self);
        self.close("Obj");
    }

    /// Writes `<Props>` or `<MS>` around what `body` writes (named values, normally).
    pub fn members(&mut self, set: MemberSet, body: impl FnOnce(&mut Self)) {
        self.open(set.tag(), None, None, false);
        body(self);
        self.close(set.tag());
    }

    /// Writes a list object with the given type names; `body` writes the items (unnamed).
    pub fn list_with<S: AsRef<str>>(&mut self, name: Option<&str>, type_names: &[S], body: impl FnOnce(&mut Self)) {
        self.object(name, type_names, None, |w| {
            w.open("LST", None, None, false);
            body(w);
            w.close("LST");
        });
    }

    /// Writes a dictionary object with the given type names.
    pub fn dict<S: AsRef<str>>(&mut self, name: Option<&str>, type_names: &[S], entries: &[(PsValue, PsValue)]) {
        self.object(name, type_names, None, |w| {
            if entries.is_empty() {
                w.open("DCT", None, None, true);
                return;
            }
            w.open("DCT", None, None, false);
            for (k, v) in entries {
                w.open("En", None, None, false);
                w.value(Some("Key"), k);
                w.value(Some("Value"), v);
                w.close("En");
            }
            w.close("DCT");
        });
    }

    /// Writes an enum value: `<Obj><TN>…</TN><ToString>name</ToString><I32>value</I32></Obj>`.
    pub fn enum_value<S: AsRef<str>>(&mut self, name: Option<&str>, type_names: &[S], to_string: &str, value: i64) {
        let mut names: Vec<&str> = type_names.iter().map(|s| s.as_ref()).collect();
        if !names.contains(&"System.Enum") {
            for base in ENUM_BASE_TYPE_NAMES {
                if !names.contains(&base) {
                    names.push(base);
                }
            }
        }
        self.object(name, &names, Some(to_string), |w| match i32::try_from(value) {
            Ok(v) => w.leaf("I32", None, &v.to_string()),
            Err(_) => w.leaf("I64", None, &value.to_string()),
        });
    }

    /// Writes a complex object with all its properties as extended members (`<MS>`).
    pub fn ps_object(&mut self, name: Option<&str>, obj: &PsObject) {
        self.object(name, &obj.type_names, obj.to_string.as_deref(), |w| {
            if !obj.properties.is_empty() {
                w.members(MemberSet::Ms, |w| {
                    for (n, v) in &obj.properties {
                        w.value(Some(n), v);
                    }
                });
            }
        });
    }

    /// Writes any value, with `N="name"` when given.
    pub fn value(&mut self, name: Option<&str>, value: &PsValue) {
        match value {
            PsValue::Null => self.open("Nil", name, None, true),
            PsValue::Bool(b) => self.leaf("B", name, if *b { "true" } else { "false" }),
            PsValue::Int32(i) => self.leaf("I32", name, &i.to_string()),
            PsValue::Int64(i) => self.leaf("I64", name, &i.to_string()),
            PsValue::Double(d) => self.leaf("Db", name, &format_float(*d)),
            PsValue::String(s) => self.string_leaf("S", name, s),
            PsValue::DateTime(s) => self.string_leaf("DT", name, s),
            PsValue::Guid(g) => self.leaf("G", name, &g.hyphenated().to_string()),
            PsValue::List(items) => self.list_with(name, &LIST_TYPE_NAMES, |w| {
                for item in items {
                    w.value(None, item);
                }
            }),
            PsValue::Dict(entries) => self.dict(name, &DICT_TYPE_NAMES, entries),
            PsValue::Object(obj) => self.ps_object(name, obj),
            PsValue::Char(c) => self.leaf("C", name, &c.to_string()),
            PsValue::Byte(i) => self.leaf("By", name, &i.to_string()),
            PsValue::SByte(i) => self.leaf("SB", name, &i.to_string()),
            PsValue::Int16(i) => self.leaf("I16", name, &i.to_string()),
            PsValue::UInt16(i) => self.leaf("U16", name, &i.to_string()),
            PsValue::UInt32(i) => self.leaf("U32", name, &i.to_string()),
            PsValue::UInt64(i) => self.leaf("U64", name, &i.to_string()),
            PsValue::Single(f) => self.leaf("Sg", name, &format_float(*f)),
            PsValue::Decimal(s) => self.string_leaf("D", name, s),
            PsValue::TimeSpan(s) => self.string_leaf("TS", name, s),
            PsValue::Bytes(b) => self.leaf("BA", name, &base64::engine::general_purpose::STANDARD.encode(b)),
            PsValue::Uri(s) => self.string_leaf("URI", name, s),
            PsValue::Version(s) => self.string_leaf("Version", name, s),
            PsValue::Xml(s) => self.string_leaf("XD", name, s),
            PsValue::ScriptBlock(s) => self.string_leaf("SBK", name, s),
            PsValue::SecureString(s) => self.string_leaf("SS", name, s),
            PsValue::Enum { type_names, name: text, value } => self.enum_value(name, type_names, text, *value),
        }
    }
}

/// Formats a float the way `XmlConvert` reads it back: shortest round-trip digits, exponent
/// form for very large or small magnitudes, `INF`/`-INF`/`NaN` for the specials.
fn format_float<F: Float>(f: F) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f.is_sign_negative() { "-INF" } else { "INF" }.into()
    } else {
        let a = f.abs_f64();
        if a == 0.0 || (1e-5..1e15).contains(&a) {
            f.plain()
        } else {
            f.exp()
        }
    }
}

trait Float: Copy {
    fn is_nan(self) -> bool;
    fn is_infinite(self) -> bool;
    fn is_sign_negative(self) -> bool;
    fn abs_f64(self) -> f64;
    fn plain(self) -> String;
    fn exp(self) -> String;
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn is_infinite(self) -> bool {
                <$t>::is_infinite(self)
            }
            fn is_sign_negative(self) -> bool {
                <$t>::is_sign_negative(self)
            }
            fn abs_f64(self) -> f64 {
                <$t>::abs(self) as f64
            }
            fn plain(self) -> String {
                format!("{}", self)
            }
            fn exp(self) -> String {
                format!("{:E}", self)
            }
        }
    };
}
impl_float!(f32);
impl_float!(f64);
