//! A minimal namespace-aware element tree over `quick-xml`, and escaping helpers for writing.
//!
//! Parsing resolves every element and attribute name to (namespace URI, local name), so callers
//! match on URIs, never on the prefixes a particular server happened to choose. A prefix that is
//! not declared (some servers and hand-written fixtures omit `xmlns:` declarations) leaves the
//! name without a namespace; [`Element::is`] then matches on the local name alone.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use super::WsmanError;

/// Deeper nesting than this is refused: real envelopes are about ten levels deep, and a bound
/// keeps hostile input from exhausting the stack when the tree is dropped or walked.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr {
    pub ns: Option<String>,
    pub local: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Element(Element),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub ns: Option<String>,
    pub local: String,
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
}

impl Element {
    /// True when the element has this local name and either this namespace or none at all
    /// (an undeclared prefix).
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref().is_none_or(|n| n == ns)
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(ns, local))
    }

    pub fn children_named<'a>(&'a self, ns: &'a str, local: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.elements().filter(move |e| e.is(ns, local))
    }

    /// Follows a path of (namespace, local name) steps, taking the first match at each step.
    pub fn path(&self, steps: &[(&str, &str)]) -> Option<&Element> {
        let mut current = self;
        for (ns, local) in steps {
            current = current.child(ns, local)?;
        }
        Some(current)
    }

    /// An attribute by local name. Unqualified attributes are matched first, then any
    /// namespace-qualified one of the same local name.
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_none() && a.local == local)
            .or_else(|| self.attrs.iter().find(|a| a.local == local))
            .map(|a| a.value.as_str())
    }

    /// The concatenated text of this element's direct text children.
    pub fn own_text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            if let Node::Text(t) = node {
                out.push_str(t);
            }
        }
        out
    }

    /// The concatenated text of this element and all its descendants, in document order.
    pub fn deep_text(&self) -> String {
        let mut out = String::new();
        self.collect_text(&mut out);
        out
    }

    fn collect_text(&self, out: &mut String) {
        for node in &self.children {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Element(e) => e.collect_text(out),
            }
        }
    }

    /// Own text with surrounding whitespace removed.
    pub fn text_trimmed(&self) -> String {
        self.own_text().trim().to_string()
    }
}

fn resolved_ns(res: ResolveResult<'_>) -> Option<String> {
    match res {
        ResolveResult::Bound(ns) => Some(String::from_utf8_lossy(ns.as_ref()).into_owned()),
        ResolveResult::Unbound | ResolveResult::Unknown(_) => None,
    }
}

fn xml_err(e: impl std::fmt::Display) -> WsmanError {
    WsmanError::Xml(e.to_string())
}

fn make_element(reader: &NsReader<&[u8]>, start: &BytesStart<'_>, ns: Option<String>) -> Result<Element, WsmanError> {
    let local = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(xml_err)?;
        let key = attr.key;
        if key.as_ref() == b"xmlns" || key.as_ref().starts_with(b"xmlns:") {
            continue;
        }
        let (ans, alocal) = reader.resolve_attribute(key);
        let value = attr.unescape_value().map_err(xml_err)?.into_owned();
        attrs.push(Attr { ns: resolved_ns(ans), local: String::from_utf8_lossy(alocal.as_ref()).into_owned(), value });
    }
    Ok(Element { ns, local, attrs, children: Vec::new() })
}

/// Parses a complete document into its root element. Any well-formedness problem the reader
/// reports, a missing or second root, unclosed elements or nesting deeper than [`MAX_DEPTH`]
/// is an error.
pub(crate) fn parse(input: &str) -> Result<Element, WsmanError> {
    let mut reader = NsReader::from_reader(input.as_bytes());
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;

    loop {
        let (res, event) = reader.read_resolved_event().map_err(xml_err)?;
        let ns = resolved_ns(res);
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(WsmanError::Xml("content after the root element".into()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(WsmanError::Xml(format!("elements nested deeper than {MAX_DEPTH}")));
                }
                let el = make_element(&reader, &start, ns)?;
                stack.push(el);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(WsmanError::Xml("content after the root element".into()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(WsmanError::Xml(format!("elements nested deeper than {MAX_DEPTH}")));
                }
                let el = make_element(&reader, &start, ns)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| WsmanError::Xml("unexpected end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => root = Some(el),
                }
            }
            Event::GeneralRef(r) => {
                let text = crate::remote::xml_ref::resolve(&r).map_err(WsmanError::Xml)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Text(text)),
                    None => return Err(WsmanError::Xml("reference outside the root element".into())),
                }
            }
            Event::Text(text) => {
                let text = text.xml10_content().map_err(xml_err)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Text(text.into_owned())),
                    None if text.trim().is_empty() => {}
                    None => return Err(WsmanError::Xml("text outside the root element".into())),
                }
            }
            Event::CData(data) => {
                let text = String::from_utf8(data.into_inner().into_owned()).map_err(xml_err)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Text(text)),
                    None => return Err(WsmanError::Xml("CDATA outside the root element".into())),
                }
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(WsmanError::Xml("unexpected end of document: unclosed elements".into()));
    }
    root.ok_or_else(|| WsmanError::Xml("no root element".into()))
}

/// Escapes text for element content or a double-quoted attribute value.
pub(crate) fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// Collapses every run of whitespace to one space and trims the ends (servers wrap fault texts).
pub(crate) fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_namespaces_not_prefixes() {
        let a = parse(r#"<s:E xmlns:s="urn:x"><s:B k="1">t</s:B></s:E>"#).unwrap();
        let b = parse(r#"<env:E xmlns:env="urn:x"><env:B k="1">t</env:B></env:E>"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.ns.as_deref(), Some("urn:x"));
        assert_eq!(a.child("urn:x", "B").unwrap().attr("k"), Some("1"));
        assert!(a.child("urn:other", "B").is_none());
    }

    #[test]
    fn undeclared_prefix_matches_on_local_name() {
        let a = parse("<s:E><s:B>x</s:B></s:E>").unwrap();
        assert_eq!(a.child("urn:any", "B").unwrap().own_text(), "x");
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in ["", "<a>", "<a></b>", "<a/><b/>", "text", "<a>&bogus;</a>", "</a>", "<a b=></a>"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn entities_and_cdata_decode() {
        let a = parse("<a x=\"&lt;&quot;\">1 &amp; 2<![CDATA[<raw>]]></a>").unwrap();
        assert_eq!(a.attr("x"), Some("<\""));
        assert_eq!(a.own_text(), "1 & 2<raw>");
    }
}
