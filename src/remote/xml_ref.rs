//! Entity references (`&amp;`, `&#x41;`) arrive from quick-xml as their own events; both XML
//! readers (CLIXML and WS-Management) resolve them here.

use quick_xml::events::BytesRef;

/// The text an entity or character reference stands for.
pub fn resolve(r: &BytesRef<'_>) -> Result<String, String> {
    if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
        return Ok(c.to_string());
    }
    let name = r.decode().map_err(|e| e.to_string())?;
    quick_xml::escape::resolve_xml_entity(&name).map(str::to_string).ok_or_else(|| format!("unknown entity &{name};"))
}
