//! CLIXML → `PsValue`.
//!
//! Decoding runs in two bounded passes over one document (one PSRP message body): the XML is
//! read into a small element tree (element depth and count capped), then the tree is turned
//! into values, resolving `<Ref RefId>` to a copy of the earlier, completed `<Obj>` and
//! `<TNRef>` to the earlier type-name list. RefIds are scoped to the document, so a stream of
//! messages is decoded message by message in linear time.
//!
//! Mapping of complex objects (`<Obj>`):
//! - with `<LST>`, `<IE>`, `<QUE>` or `<STK>` → [`PsValue::List`] (type names dropped);
//! - with `<DCT>` → [`PsValue::Dict`];
//! - an integer inside an object whose type names include `System.Enum` → [`PsValue::Enum`]
//!   (name from `<ToString>`); `to_json` shows the name;
//! - another primitive inside an object ("extended primitive") → that primitive when the
//!   object has no properties, else an object whose `to_string` falls back to the primitive's
//!   text (the primitive itself is dropped);
//! - anything else → [`PsValue::Object`] with the adapted (`<Props>`) then extended (`<MS>`)
//!   properties in document order. Unknown child elements of `<Obj>` are ignored.
//!
//! A progress record (`<PR>`) becomes an object typed `System.Management.Automation.ProgressRecord`
//! with Activity, ActivityId, CurrentOperation, ParentActivityId, PercentComplete, RecordType,
//! SecondsRemaining and StatusDescription.

use super::escape::decode_string;
use super::ClixmlError;
use crate::remote::value::{PsObject, PsValue};
use base64::Engine as _;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::collections::{HashMap, HashSet};

/// Bounds on what one decode may consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted document, in bytes.
    pub max_input_bytes: usize,
    /// Deepest accepted value nesting (an object inside a list inside an object is depth 3).
    pub max_depth: usize,
    /// Largest accepted number of XML elements plus values copied out by `<Ref>` resolution
    /// (so a document of back-references cannot expand exponentially).
    pub max_nodes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_input_bytes: 32 * 1024 * 1024, max_depth: 64, max_nodes: 2_000_000 }
    }
}

/// Decodes a document holding exactly one value element (a PSRP message body). A UTF-8 BOM,
/// an XML declaration, comments and surrounding whitespace are allowed.
pub fn from_clixml(input: &[u8]) -> Result<PsValue, ClixmlError> {
    from_clixml_with(input, &DecodeLimits::default())
}

/// [`from_clixml`] with explicit limits.
pub fn from_clixml_with(input: &[u8], limits: &DecodeLimits) -> Result<PsValue, ClixmlError> {
    let roots = parse_tree(input, limits)?;
    let [root] = <[Elem; 1]>::try_from(roots)
        .map_err(|r| ClixmlError::Invalid(format!("expected one root element, found {}", r.len())))?;
    let mut d = Decoder::new(limits, &[&root]);
    d.value(&root, 1).map(|(v, _)| v)
}

/// Decodes a document of zero or more values: either bare value elements one after another,
/// or PowerShell's file form (`#< CLIXML` line, `<Objs>` root). RefIds span the document.
pub fn from_clixml_all(input: &[u8]) -> Result<Vec<PsValue>, ClixmlError> {
    let limits = DecodeLimits::default();
    let mut roots = parse_tree(input, &limits)?;
    if roots.len() == 1 && roots[0].tag == "Objs" {
        roots = std::mem::take(&mut roots[0].children);
    }
    let all: Vec<&Elem> = roots.iter().collect();
    let mut d = Decoder::new(&limits, &all);
    roots.iter().map(|r| d.value(r, 1).map(|(v, _)| v)).collect()
}

/// One XML element, reduced to what CLIXML uses.
#[derive(Debug, Default)]
struct Elem {
    tag: String,
    n: Option<String>,
    ref_id: Option<String>,
    text: String,
    children: Vec<Elem>,
}

fn xml_err(e: impl std::fmt::Display) -> ClixmlError {
    ClixmlError::Xml(e.to_string())
}

fn start_elem(e: &quick_xml::events::BytesStart<'_>, reader: &Reader<&[u8]>) -> Result<Elem, ClixmlError> {
    let tag = std::str::from_utf8(e.local_name().into_inner()).map_err(xml_err)?.to_string();
    let mut elem = Elem { tag, ..Elem::default() };
    for attr in e.attributes() {
        let attr = attr.map_err(xml_err)?;
        let key = attr.key.local_name();
        let slot = match key.into_inner() {
            b"N" => &mut elem.n,
            b"RefId" => &mut elem.ref_id,
            _ => continue,
        };
        let v = attr.decode_and_unescape_value(reader.decoder()).map_err(xml_err)?;
        *slot = Some(v.into_owned());
    }
    Ok(elem)
}

fn parse_tree(input: &[u8], limits: &DecodeLimits) -> Result<Vec<Elem>, ClixmlError> {
    if input.len() > limits.max_input_bytes {
        return Err(ClixmlError::TooLarge("input size"));
    }
    let text = std::str::from_utf8(input).map_err(|e| ClixmlError::Xml(format!("not UTF-8: {e}")))?;
    let mut text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    if let Some(rest) = text.strip_prefix("#< CLIXML") {
        text = rest;
    }
    // Each value nests at most three elements deep per level (Obj > MS > Obj, DCT > En > value).
    let max_xml_depth = limits.max_depth.saturating_mul(3).saturating_add(8);
    let mut reader = Reader::from_reader(text.as_bytes());
    reader.config_mut().check_end_names = true;
    let mut roots = Vec::new();
    let mut stack: Vec<Elem> = Vec::new();
    let mut elements = 0usize;
    loop {
        let ev = reader.read_event().map_err(xml_err)?;
        match ev {
            Event::Start(_) | Event::Empty(_) if stack.len() >= max_xml_depth => {
                return Err(ClixmlError::TooDeep(limits.max_depth));
            }
            Event::Start(e) => {
                elements += 1;
                if elements > limits.max_nodes {
                    return Err(ClixmlError::TooLarge("node count"));
                }
                stack.push(start_elem(&e, &reader)?);
            }
            Event::Empty(e) => {
                elements += 1;
                if elements > limits.max_nodes {
                    return Err(ClixmlError::TooLarge("node count"));
                }
                let elem = start_elem(&e, &reader)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(elem),
                    None => roots.push(elem),
                }
            }
            Event::End(_) => {
                let elem = stack.pop().ok_or_else(|| ClixmlError::Xml("unmatched end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(elem),
                    None => roots.push(elem),
                }
            }
            Event::Text(t) => {
                let s = t.xml10_content().map_err(xml_err)?;
                match stack.last_mut() {
                    Some(cur) => cur.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err(ClixmlError::Xml("text outside the root element".into())),
                }
            }
            Event::CData(t) => {
                let s = t.decode().map_err(xml_err)?;
                match stack.last_mut() {
                    Some(cur) => cur.text.push_str(&s),
                    None => return Err(ClixmlError::Xml("CDATA outside the root element".into())),
                }
            }
            Event::GeneralRef(r) => {
                let resolved = crate::remote::xml_ref::resolve(&r).map_err(ClixmlError::Xml)?;
                match stack.last_mut() {
                    Some(cur) => cur.text.push_str(&resolved),
                    None => return Err(ClixmlError::Xml("reference outside the root element".into())),
                }
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(ClixmlError::Xml("document ends inside an element".into()));
    }
    Ok(roots)
}

struct Decoder<'l> {
    limits: &'l DecodeLimits,
    /// Completed objects by RefId, with their node counts.
    objects: HashMap<String, (PsValue, usize)>,
    /// RefIds some `<Ref>` points at: only those objects are kept for copying.
    referenced: HashSet<String>,
    type_lists: HashMap<String, Vec<String>>,
    copied: usize,
}

fn invalid(msg: impl Into<String>) -> ClixmlError {
    ClixmlError::Invalid(msg.into())
}

fn parse_num<T: std::str::FromStr>(e: &Elem) -> Result<T, ClixmlError> {
    e.text.trim().parse().map_err(|_| invalid(format!("<{}> holds {:?}", e.tag, truncated(&e.text))))
}

fn truncated(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn parse_float<T: std::str::FromStr>(e: &Elem, inf: T, neg_inf: T) -> Result<T, ClixmlError> {
    match e.text.trim() {
        "INF" | "Infinity" | "∞" => Ok(inf),
        "-INF" | "-Infinity" | "-∞" => Ok(neg_inf),
        _ => parse_num(e),
    }
}

fn is_container(tag: &str) -> bool {
    matches!(tag, "LST" | "IE" | "QUE" | "STK")
}

impl<'l> Decoder<'l> {
    fn new(limits: &'l DecodeLimits, roots: &[&Elem]) -> Self {
        let mut referenced = HashSet::new();
        let mut todo: Vec<&Elem> = roots.to_vec();
        while let Some(e) = todo.pop() {
            if e.tag == "Ref" {
                if let Some(id) = &e.ref_id {
                    referenced.insert(id.clone());
                }
            }
            todo.extend(e.children.iter());
        }
        Self { limits, objects: HashMap::new(), referenced, type_lists: HashMap::new(), copied: 0 }
    }

    /// A value and the number of values in it (for the back-reference budget).
    fn value(&mut self, e: &Elem, depth: usize) -> Result<(PsValue, usize), ClixmlError> {
        if depth > self.limits.max_depth {
            return Err(ClixmlError::TooDeep(self.limits.max_depth));
        }
        let v = match e.tag.as_str() {
            "Obj" => return self.object(e, depth),
            "PR" => return self.progress_record(e, depth),
            "Ref" => {
                let id = e.ref_id.as_deref().ok_or_else(|| invalid("<Ref> without RefId"))?;
                let (v, n) = self.objects.get(id).ok_or_else(|| invalid(format!("<Ref> to unknown RefId {id:?}")))?;
                self.copied = self.copied.saturating_add(*n);
                if self.copied > self.limits.max_nodes {
                    return Err(ClixmlError::TooLarge("node count"));
                }
                return Ok((v.clone(), *n));
            }
            _ => self.primitive(e)?.ok_or_else(|| invalid(format!("unknown element <{}>", truncated(&e.tag))))?,
        };
        Ok((v, 1))
    }

    /// The primitive an element holds, or `None` when the tag is not a primitive's.
    fn primitive(&self, e: &Elem) -> Result<Option<PsValue>, ClixmlError> {
        let text = || decode_string(&e.text).into_owned();
        Ok(Some(match e.tag.as_str() {
            "Nil" => PsValue::Null,
            "S" => PsValue::String(text()),
            "B" => match e.text.trim() {
                t if t.eq_ignore_ascii_case("true") || t == "1" => PsValue::Bool(true),
                t if t.eq_ignore_ascii_case("false") || t == "0" => PsValue::Bool(false),
                _ => return Err(invalid(format!("<B> holds {:?}", truncated(&e.text)))),
            },
            "C" => PsValue::Char(parse_num(e)?),
            "By" => PsValue::Byte(parse_num(e)?),
            "SB" => PsValue::SByte(parse_num(e)?),
            "I16" => PsValue::Int16(parse_num(e)?),
            "U16" => PsValue::UInt16(parse_num(e)?),
            "I32" => PsValue::Int32(parse_num(e)?),
            "U32" => PsValue::UInt32(parse_num(e)?),
            "I64" => PsValue::Int64(parse_num(e)?),
            "U64" => PsValue::UInt64(parse_num(e)?),
            "Sg" => PsValue::Single(parse_float(e, f32::INFINITY, f32::NEG_INFINITY)?),
            "Db" => PsValue::Double(parse_float(e, f64::INFINITY, f64::NEG_INFINITY)?),
            "D" => PsValue::Decimal(text().trim().to_string()),
            "DT" => PsValue::DateTime(text()),
            "TS" => PsValue::TimeSpan(text()),
            "G" => PsValue::Guid(
                uuid::Uuid::parse_str(e.text.trim())
                    .map_err(|_| invalid(format!("<G> holds {:?}", truncated(&e.text))))?,
            ),
            "BA" => {
                let compact: String = e.text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                PsValue::Bytes(
                    base64::engine::general_purpose::STANDARD
                        .decode(compact)
                        .map_err(|_| invalid("<BA> is not base64"))?,
                )
            }
            "URI" => PsValue::Uri(text()),
            "Version" => PsValue::Version(text().trim().to_string()),
            "XD" => PsValue::Xml(text()),
            "SBK" => PsValue::ScriptBlock(text()),
            "SS" => PsValue::SecureString(text().trim().to_string()),
            _ => return Ok(None),
        }))
    }

    fn object(&mut self, e: &Elem, depth: usize) -> Result<(PsValue, usize), ClixmlError> {
        let mut type_names: Vec<String> = Vec::new();
        let mut to_string: Option<String> = None;
        let mut properties: Vec<(String, PsValue)> = Vec::new();
        let mut content: Option<PsValue> = None;
        let mut base: Option<PsValue> = None;
        let mut count = 1usize;
        for c in &e.children {
            match c.tag.as_str() {
                "TN" => {
                    type_names = c
                        .children
                        .iter()
                        .filter(|t| t.tag == "T")
                        .map(|t| decode_string(&t.text).into_owned())
                        .collect();
                    if let Some(id) = &c.ref_id {
                        self.type_lists.insert(id.clone(), type_names.clone());
                    }
                }
                "TNRef" => {
                    let id = c.ref_id.as_deref().ok_or_else(|| invalid("<TNRef> without RefId"))?;
                    type_names = self
                        .type_lists
                        .get(id)
                        .cloned()
                        .ok_or_else(|| invalid(format!("<TNRef> to unknown RefId {id:?}")))?;
                }
                "ToString" => to_string = Some(decode_string(&c.text).into_owned()),
                "Props" | "MS" => {
                    for p in &c.children {
                        let (v, n) = self.value(p, depth + 1)?;
                        count = count.saturating_add(n);
                        let name = p.n.as_deref().map(|n| decode_string(n).into_owned()).unwrap_or_default();
                        properties.push((name, v));
                    }
                }
                tag if is_container(tag) => {
                    let mut items = Vec::with_capacity(c.children.len());
                    for item in &c.children {
                        let (v, n) = self.value(item, depth + 1)?;
                        count = count.saturating_add(n);
                        items.push(v);
                    }
                    content.get_or_insert(PsValue::List(items));
                }
                "DCT" => {
                    let mut entries = Vec::with_capacity(c.children.len());
                    for en in &c.children {
                        if en.tag != "En" {
                            return Err(invalid(format!("<{}> inside <DCT>", truncated(&en.tag))));
                        }
                        let (k, v, n) = self.entry(en, depth + 1)?;
                        count = count.saturating_add(n);
                        entries.push((k, v));
                    }
                    content.get_or_insert(PsValue::Dict(entries));
                }
                _ => {
                    if base.is_none() {
                        base = self.primitive(c)?;
                    }
                }
            }
        }
        let value = if let Some(content) = content {
            content
        } else if let Some(base) = base {
            let enum_value = if type_names.iter().any(|t| t == "System.Enum") { base.as_i64() } else { None };
            match enum_value {
                Some(value) if !matches!(base, PsValue::String(_)) => {
                    let name = to_string.unwrap_or_else(|| value.to_string());
                    PsValue::Enum { type_names, name, value }
                }
                _ if properties.is_empty() => base,
                _ => PsValue::Object(PsObject {
                    type_names,
                    to_string: to_string.or_else(|| Some(base.display())),
                    properties,
                }),
            }
        } else {
            PsValue::Object(PsObject { type_names, to_string, properties })
        };
        if let Some(id) = e.ref_id.as_ref().filter(|id| self.referenced.contains(*id)) {
            self.objects.insert(id.clone(), (value.clone(), count));
        }
        Ok((value, count))
    }

    /// A progress record (`<PR>`: AV AI S|Nil PI PC T SR SD) as an object.
    fn progress_record(&mut self, e: &Elem, depth: usize) -> Result<(PsValue, usize), ClixmlError> {
        let mut properties = Vec::with_capacity(8);
        for c in &e.children {
            let name = match c.tag.as_str() {
                "AV" => "Activity",
                "AI" => "ActivityId",
                "S" | "Nil" => "CurrentOperation",
                "PI" => "ParentActivityId",
                "PC" => "PercentComplete",
                "T" => "RecordType",
                "SR" => "SecondsRemaining",
                "SD" => "StatusDescription",
                _ => continue,
            };
            let v = match c.tag.as_str() {
                "S" | "Nil" => self.value(c, depth + 1)?.0,
                "AI" | "PI" | "PC" | "SR" => PsValue::Int32(parse_num(c)?),
                _ => PsValue::String(decode_string(&c.text).into_owned()),
            };
            properties.push((name.to_string(), v));
        }
        let count = properties.len() + 1;
        let obj = PsObject {
            type_names: vec!["System.Management.Automation.ProgressRecord".into()],
            to_string: None,
            properties,
        };
        Ok((PsValue::Object(obj), count))
    }

    fn entry(&mut self, en: &Elem, depth: usize) -> Result<(PsValue, PsValue, usize), ClixmlError> {
        let named = |name: &str| en.children.iter().find(|c| c.n.as_deref() == Some(name));
        let (key, value) = match (named("Key"), named("Value")) {
            (Some(k), Some(v)) => (k, v),
            _ => match en.children.as_slice() {
                [k, v] => (k, v),
                _ => return Err(invalid("<En> without a Key and a Value")),
            },
        };
        let (k, nk) = self.value(key, depth)?;
        let (v, nv) = self.value(value, depth)?;
        Ok((k, v, nk.saturating_add(nv)))
    }
}
