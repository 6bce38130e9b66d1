//! Decoding `InvokeCommand` answers: one page (`value`, `@odata.nextLink`, `@adminapi.warnings`,
//! `@adminapi.errors`), and the `$batch` envelope around several.
//!
//! A page is decoded straight from its bytes, one output object at a time (each element of
//! `value` goes through one small JSON tree into a typed value), so an answer is never held as
//! bytes, JSON tree and values at once; the caller drops the bytes as soon as the page is decoded.

use super::odata;
use crate::remote::{CommandOutput, ErrorRecord, PsValue};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use std::fmt;

/// One page of a cmdlet's answer.
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// This page's objects; its warnings and non-terminating errors (the service sends those
    /// with the first page).
    pub output: CommandOutput,
    /// Where the next page is (POST the same body there), if there is one.
    pub next_link: Option<String>,
}

impl Page {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Page, String> {
        let wire: PageWire =
            serde_json::from_slice(bytes).map_err(|e| format!("the answer is not an InvokeCommand result: {e}"))?;
        Ok(wire.into_page())
    }
}

#[derive(Deserialize)]
struct PageWire {
    #[serde(default, rename = "value", deserialize_with = "objects")]
    value: Vec<PsValue>,
    #[serde(default, rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(default, rename = "@adminapi.warnings")]
    warnings: Option<Vec<Json>>,
    #[serde(default, rename = "@adminapi.errors")]
    errors: Option<Vec<Json>>,
    /// An OData error in place of a page (only in `$batch` sub-answers).
    #[serde(default)]
    error: Option<Json>,
}

impl PageWire {
    fn into_page(self) -> Page {
        let warnings = self.warnings.unwrap_or_default().into_iter().map(text).collect();
        let errors = self.errors.unwrap_or_default().into_iter().map(error_record).collect();
        Page {
            output: CommandOutput { objects: self.value, errors, warnings, request_id: None },
            next_link: self.next_link.filter(|l| !l.trim().is_empty()),
        }
    }
}

/// `value`: each element decoded into a typed value as soon as it is read.
fn objects<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<PsValue>, D::Error> {
    struct Objects;
    impl<'de> Visitor<'de> for Objects {
        type Value = Vec<PsValue>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(item) = seq.next_element::<Json>()? {
                out.push(odata::decode(item));
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    deserializer.deserialize_any(Objects)
}

fn text(json: Json) -> String {
    match json {
        Json::String(s) => s,
        other => other.to_string(),
    }
}

/// A non-terminating error as the service lists it: a string, or an object with the error
/// record's fields (names compared without case).
fn error_record(json: Json) -> ErrorRecord {
    let Json::Object(map) = json else {
        return ErrorRecord {
            message: text(json),
            category: "NotSpecified".into(),
            fully_qualified_error_id: String::new(),
            target: None,
        };
    };
    let field = |names: &[&str]| {
        map.iter()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    };
    let string = |v: &Json| match v {
        Json::String(s) => s.clone(),
        Json::Object(o) => o
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("message") || k.eq_ignore_ascii_case("category"))
            .map_or_else(|| v.to_string(), |(_, v)| text(v.clone())),
        other => other.to_string(),
    };
    ErrorRecord {
        message: field(&["message", "exception"]).map(string).unwrap_or_default(),
        category: field(&["category", "categoryInfo"]).map(string).unwrap_or_else(|| "NotSpecified".into()),
        fully_qualified_error_id: field(&["fullyQualifiedErrorId"]).map(string).unwrap_or_default(),
        target: field(&["target", "targetObject"]).map(string),
    }
}

/// A `$batch` answer: `{"responses":[{"id","status","headers","body"}, …]}` in any order.
#[derive(Debug, Deserialize)]
pub(crate) struct BatchAnswer {
    #[serde(default)]
    pub responses: Vec<SubAnswer>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SubAnswer {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    pub status: u16,
    #[serde(default)]
    pub headers: Map<String, Json>,
    #[serde(default)]
    pub body: SubBody,
}

impl SubAnswer {
    /// A sub-answer's header (names compared without case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.as_str())
    }
}

/// What a sub-answer carries.
#[derive(Debug)]
pub(crate) enum SubBody {
    Page(Page),
    /// An OData error body (`{"error":{…}}`).
    Error(Json),
    /// Anything else (text, or nothing), described.
    Other(String),
}

impl Default for SubBody {
    fn default() -> Self {
        SubBody::Other(String::new())
    }
}

impl<'de> Deserialize<'de> for SubBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Body;
        impl<'de> Visitor<'de> for Body {
            type Value = SubBody;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sub-answer body")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SubBody, A::Error> {
                let mut wire = PageWire::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(match wire.error.take() {
                    Some(error) => SubBody::Error(serde_json::json!({ "error": error })),
                    None => SubBody::Page(wire.into_page()),
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SubBody, E> {
                Ok(SubBody::Other(v.chars().take(300).collect()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<SubBody, E> {
                Ok(SubBody::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SubBody, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(SubBody::Other("an array".into()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SubBody, E> {
                Ok(SubBody::Other(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SubBody, E> {
                Ok(SubBody::Other(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SubBody, E> {
                Ok(SubBody::Other(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<SubBody, E> {
                Ok(SubBody::Other(v.to_string()))
            }
        }
        deserializer.deserialize_any(Body)
    }
}

/// Sub-answer ids are strings, but a number is accepted as its text.
fn id_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Json::deserialize(deserializer)? {
        Json::String(s) => s,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_page_gives_objects_warnings_errors_and_the_next_link() {
        let body = json!({
            "@odata.context": "https://outlook.office365.com/adminapi/beta/$metadata#Collection(Exchange.GenericHashTable)",
            "value": [{"Name": "a", "Alias": "a1"}, {"Name": "b", "Alias": "b1"}],
            "@odata.nextLink": "https://outlook.office365.com/adminapi/beta/t/InvokeCommand?$skiptoken=abc",
            "@adminapi.warnings": ["By default, only the first 1000 items are returned."],
            "@adminapi.errors": [
                "plain text error",
                {"message": "The operation couldn't be performed because object 'x' couldn't be found.", "category": "NotSpecified", "fullyQualifiedErrorId": "[Server=S] 8C7F9E1B,Microsoft.Exchange.Management.RecipientTasks.GetMailbox", "targetObject": "x"}
            ]
        });
        let page = Page::decode(body.to_string().as_bytes()).unwrap();
        assert_eq!(page.output.objects.len(), 2);
        let PsValue::Object(first) = &page.output.objects[0] else { panic!() };
        assert_eq!(first.properties.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["Name", "Alias"]);
        assert_eq!(
            page.next_link.as_deref(),
            Some("https://outlook.office365.com/adminapi/beta/t/InvokeCommand?$skiptoken=abc")
        );
        assert_eq!(page.output.warnings, ["By default, only the first 1000 items are returned."]);
        assert_eq!(page.output.errors.len(), 2);
        assert_eq!(page.output.errors[0].message, "plain text error");
        let e = &page.output.errors[1];
        assert!(e.fully_qualified_error_id.ends_with("GetMailbox"));
        assert_eq!(e.target.as_deref(), Some("x"));
    }

    #[test]
    fn empty_and_last_pages() {
        let page = Page::decode(br#"{"value":[]}"#).unwrap();
        assert!(page.output.objects.is_empty() && page.next_link.is_none());
        let page = Page::decode(br#"{"value":null,"@odata.nextLink":""}"#).unwrap();
        assert!(page.next_link.is_none());
        assert!(Page::decode(b"[1,2]").is_err());
        assert!(Page::decode(b"\x1f\x8b junk").is_err());
    }

    #[test]
    fn batch_answers_keep_each_sub_answer_apart() {
        let body = json!({"responses": [
            {"id": "2", "status": 404, "headers": {"Content-Type": "application/json"}, "body": {"error": {"code": "NotFound", "message": "m"}}},
            {"id": 1, "status": 200, "body": {"value": [{"Name": "a"}], "@odata.nextLink": "next"}},
            {"id": "3", "status": 403, "headers": {"content-encoding": "gzip"}, "body": "\u{1}\u{2}junk"},
            {"id": "4", "status": 429, "headers": {"Retry-After": "1.5"}}
        ]});
        let answer: BatchAnswer = serde_json::from_slice(body.to_string().as_bytes()).unwrap();
        let by_id = |id: &str| answer.responses.iter().find(|r| r.id == id).unwrap();
        assert!(
            matches!(&by_id("1").body, SubBody::Page(p) if p.output.objects.len() == 1 && p.next_link.as_deref() == Some("next"))
        );
        assert!(matches!(&by_id("2").body, SubBody::Error(e) if e["error"]["code"] == "NotFound"));
        assert!(matches!(&by_id("3").body, SubBody::Other(t) if t.ends_with("junk")));
        assert_eq!(by_id("3").header("Content-Encoding"), Some("gzip"));
        assert_eq!(by_id("4").header("retry-after"), Some("1.5"));
        assert!(matches!(&by_id("4").body, SubBody::Other(t) if t.is_empty()));
    }
}
