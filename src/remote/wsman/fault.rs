//! SOAP faults with WS-Management detail: parsing (client) and building in WinRM's shape
//! (server simulator).
//!
//! A WinRM fault is an HTTP 500 whose body is `s:Envelope/s:Body/s:Fault` with `s:Code/s:Value`
//! (`s:Sender` or `s:Receiver`), `s:Code/s:Subcode/s:Value` (`w:QuotaLimit`, `w:TimedOut`,
//! `w:InvalidSelectors`, ...), `s:Reason/s:Text`, and `s:Detail/f:WSManFault` carrying the
//! numeric `Code` attribute, a `Machine` attribute and `f:Message`. The message is plain text,
//! or an `f:ProviderFault` holding text or a whole nested `f:WSManFault`.

use std::fmt;
use std::fmt::Write as _;

use uuid::Uuid;

use super::xml::{self, collapse_ws, esc, Element};
use super::{action, ns, uuid_urn, WsmanError, ANONYMOUS};
use crate::remote::fault::{WSMAN_OPERATION_TIMEOUT, WSMAN_QUOTA_LIMIT, WSMAN_SHELL_NOT_FOUND};
use crate::remote::{classify, FaultClass};

/// The reason WinRM gives when a user has too many shells open.
pub const USER_QUOTA_TEXT: &str = "The WS-Management service cannot process the request. The maximum number of concurrent shells for this user has been exceeded. Close existing shells or raise the quota for this user.";

/// A SOAP fault as WinRM sends it, reduced to what a client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsmanFault {
    /// f:WSManFault/@Code (e.g. 2150859173). Negative decimal codes are taken as their u32 bits.
    pub code: Option<u32>,
    /// s:Code/s:Subcode/s:Value as the server wrote it (e.g. `w:QuotaLimit`); see
    /// [`WsmanFault::subcode_name`] for the part without the prefix.
    pub subcode: Option<String>,
    /// s:Reason/s:Text, whitespace collapsed.
    pub reason: String,
    /// The human-readable text of f:Message (the innermost message when provider faults are
    /// nested), whitespace collapsed; the reason when the server sent no message.
    pub message: String,
    /// s:Code/s:Value as written (`s:Sender`, `s:Receiver`); see [`WsmanFault::is_sender`].
    pub soap_code: Option<String>,
    /// f:WSManFault/@Machine.
    pub machine: Option<String>,
}

impl fmt::Display for WsmanFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WS-Management fault")?;
        if let Some(code) = self.code {
            write!(f, " {code}")?;
        }
        if let Some(sub) = &self.subcode {
            write!(f, " ({sub})")?;
        }
        let text = if self.message.is_empty() { &self.reason } else { &self.message };
        write!(f, ": {text}")
    }
}

fn local_part(qname: &str) -> &str {
    qname.rsplit_once(':').map_or(qname, |(_, l)| l).trim()
}

impl WsmanFault {
    /// The subcode without its prefix (`QuotaLimit`).
    pub fn subcode_name(&self) -> Option<&str> {
        self.subcode.as_deref().map(local_part)
    }

    /// True when the fault blames the request (`Sender`), false for `Receiver` or unknown.
    pub fn is_sender(&self) -> bool {
        self.soap_code.as_deref().map(local_part) == Some("Sender")
    }

    /// True for "Receive had nothing to say within the OperationTimeout": benign, the client
    /// simply sends Receive again.
    pub fn is_operation_timeout(&self) -> bool {
        self.code == Some(WSMAN_OPERATION_TIMEOUT) || self.subcode_name() == Some("TimedOut")
    }

    /// Classifies the fault with [`crate::remote::classify`] from the HTTP status, the WSManFault
    /// code and the texts. An operation timeout, which `classify` has no text for, is
    /// [`FaultClass::Timeout`]; callers that poll should test [`Self::is_operation_timeout`]
    /// first, since for Receive it is not a failure at all.
    pub fn class(&self, http_status: u16) -> FaultClass {
        let text = format!("{}\n{}", self.message, self.reason);
        let class = classify(Some(http_status), self.code, &text);
        if class == FaultClass::Protocol && self.is_operation_timeout() {
            FaultClass::Timeout
        } else {
            class
        }
    }

    /// Parses a fault body (normally sent with HTTP 500). Accepts a SOAP envelope with
    /// s:Body/s:Fault, or a bare f:WSManFault document. A document without a fault is
    /// [`WsmanError::Missing`].
    pub fn parse(body: &str) -> Result<WsmanFault, WsmanError> {
        let root = xml::parse(body)?;
        if root.is(ns::WSMAN_FAULT, "WSManFault") {
            let mut fault = WsmanFault {
                code: None,
                subcode: None,
                reason: String::new(),
                message: String::new(),
                soap_code: None,
                machine: None,
            };
            apply_wsman_fault(&mut fault, &root);
            return Ok(fault);
        }
        if !root.is(ns::SOAP, "Envelope") {
            return Err(WsmanError::Missing("s:Envelope"));
        }
        let body = root.child(ns::SOAP, "Body").ok_or(WsmanError::Missing("s:Body"))?;
        from_body(body).ok_or(WsmanError::Missing("s:Fault"))
    }

    /// A user-quota fault as WinRM sends it (code 2150859173, `w:QuotaLimit`).
    pub fn user_shell_quota(machine: Option<&str>) -> WsmanFault {
        WsmanFault {
            code: Some(WSMAN_QUOTA_LIMIT),
            subcode: Some("w:QuotaLimit".into()),
            reason: USER_QUOTA_TEXT.into(),
            message: USER_QUOTA_TEXT.into(),
            soap_code: Some("s:Sender".into()),
            machine: machine.map(str::to_string),
        }
    }

    /// A shell-not-found fault (code 2150858843, `w:InvalidSelectors`).
    pub fn shell_not_found(shell_id: &str, machine: Option<&str>) -> WsmanFault {
        WsmanFault {
            code: Some(WSMAN_SHELL_NOT_FOUND),
            subcode: Some("w:InvalidSelectors".into()),
            reason: "The WS-Management service cannot process the request because the request contained invalid selectors for the resource.".into(),
            message: format!(
                "The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not found on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the server. Provide the correct ShellId or create a new shell and retry the operation."
            ),
            soap_code: Some("s:Sender".into()),
            machine: machine.map(str::to_string),
        }
    }

    /// The benign Receive timeout (code 2150858793, `w:TimedOut`).
    pub fn operation_timeout(machine: Option<&str>) -> WsmanFault {
        let text =
            "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.";
        WsmanFault {
            code: Some(WSMAN_OPERATION_TIMEOUT),
            subcode: Some("w:TimedOut".into()),
            reason: text.into(),
            message: text.into(),
            soap_code: Some("s:Receiver".into()),
            machine: machine.map(str::to_string),
        }
    }

    /// The fault as a complete SOAP envelope in WinRM's shape, to be sent with HTTP 500.
    /// `relates_to` is the request's wsa:MessageID, verbatim, when it is known.
    pub fn to_envelope(&self, relates_to: Option<&str>) -> String {
        let mut x = String::with_capacity(2048);
        let _ = write!(
            x,
            concat!(
                r#"<s:Envelope xml:lang="en-US" xmlns:s="{s}" xmlns:a="{a}" xmlns:x="{x}" xmlns:n="{n}" "#,
                r#"xmlns:w="{w}" xmlns:p="{p}">"#,
                "<s:Header><a:Action>{action}</a:Action><a:MessageID>{mid}</a:MessageID><a:To>{anon}</a:To>"
            ),
            s = ns::SOAP,
            a = ns::ADDRESSING,
            x = ns::TRANSFER,
            n = ns::ENUMERATION,
            w = ns::WSMAN,
            p = ns::WSMV,
            action = action::FAULT,
            mid = uuid_urn(Uuid::new_v4()),
            anon = ANONYMOUS,
        );
        if let Some(rel) = relates_to {
            let _ = write!(x, "<a:RelatesTo>{}</a:RelatesTo>", esc(rel));
        }
        let code = match self.soap_code.as_deref().map(local_part) {
            Some("Sender") => "Sender",
            _ => "Receiver",
        };
        let _ = write!(x, "</s:Header><s:Body><s:Fault><s:Code><s:Value>s:{code}</s:Value>");
        if let Some(sub) = self.subcode_name() {
            let _ = write!(x, "<s:Subcode><s:Value>w:{}</s:Value></s:Subcode>", esc(sub));
        }
        let _ = write!(
            x,
            r#"</s:Code><s:Reason><s:Text xml:lang="en-US">{}</s:Text></s:Reason><s:Detail><f:WSManFault xmlns:f="{}""#,
            esc(&self.reason),
            ns::WSMAN_FAULT
        );
        if let Some(code) = self.code {
            let _ = write!(x, r#" Code="{code}""#);
        }
        if let Some(machine) = &self.machine {
            let _ = write!(x, r#" Machine="{}""#, esc(machine));
        }
        let _ = write!(
            x,
            "><f:Message>{}</f:Message></f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>",
            esc(&self.message)
        );
        x
    }
}

/// The fault in an s:Body, if there is one.
pub(crate) fn from_body(body: &Element) -> Option<WsmanFault> {
    let fault = body.child(ns::SOAP, "Fault")?;
    let code = fault.child(ns::SOAP, "Code");
    let soap_code =
        code.and_then(|c| c.child(ns::SOAP, "Value")).map(|v| collapse_ws(&v.own_text())).filter(|s| !s.is_empty());
    let subcode = code
        .and_then(|c| c.path(&[(ns::SOAP, "Subcode"), (ns::SOAP, "Value")]))
        .map(|v| collapse_ws(&v.own_text()))
        .filter(|s| !s.is_empty());
    // SOAP 1.2 allows one s:Text per language; prefer English, else take the first.
    let reason = fault
        .child(ns::SOAP, "Reason")
        .and_then(|r| {
            let texts: Vec<&Element> = r.children_named(ns::SOAP, "Text").collect();
            texts
                .iter()
                .find(|t| t.attr("lang").is_some_and(|l| l.to_ascii_lowercase().starts_with("en")))
                .or(texts.first())
                .map(|t| collapse_ws(&t.deep_text()))
        })
        .unwrap_or_default();
    let mut out = WsmanFault { code: None, subcode, reason, message: String::new(), soap_code, machine: None };
    if let Some(wf) = fault.path(&[(ns::SOAP, "Detail"), (ns::WSMAN_FAULT, "WSManFault")]) {
        apply_wsman_fault(&mut out, wf);
    }
    if out.message.is_empty() {
        out.message = out.reason.clone();
    }
    Some(out)
}

fn apply_wsman_fault(out: &mut WsmanFault, wf: &Element) {
    out.code = wf.attr("Code").and_then(parse_code).or_else(|| nested_code(wf));
    out.machine = wf.attr("Machine").map(str::to_string).filter(|m| !m.is_empty());
    if let Some(msg) = wf.child(ns::WSMAN_FAULT, "Message") {
        out.message = message_text(msg);
    }
    if out.reason.is_empty() {
        out.reason = out.message.clone();
    }
}

/// The code of a nested provider fault, when the outer WSManFault has none.
fn nested_code(wf: &Element) -> Option<u32> {
    let inner =
        wf.path(&[(ns::WSMAN_FAULT, "Message"), (ns::WSMAN_FAULT, "ProviderFault"), (ns::WSMAN_FAULT, "WSManFault")])?;
    inner.attr("Code").and_then(parse_code).or_else(|| nested_code(inner))
}

/// Decimal (the normal form), negative decimal (HRESULT as i32) or `0x` hex.
fn parse_code(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).ok();
    }
    s.parse::<u32>().ok().or_else(|| s.parse::<i32>().ok().map(|v| v as u32))
}

/// The readable text of an f:Message: the innermost nested message when a provider fault wraps
/// another WSManFault, else all text inside, whitespace collapsed.
fn message_text(msg: &Element) -> String {
    if let Some(pf) = msg.child(ns::WSMAN_FAULT, "ProviderFault") {
        if let Some(inner) = pf.path(&[(ns::WSMAN_FAULT, "WSManFault"), (ns::WSMAN_FAULT, "Message")]) {
            let text = message_text(inner);
            if !text.is_empty() {
                return text;
            }
        }
        let text = collapse_ws(&pf.deep_text());
        if !text.is_empty() {
            return text;
        }
    }
    collapse_ws(&msg.deep_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like the quota fault in pypsrp's tests (prefixes a:, w:, line-wrapped texts).
    const QUOTA_FAULT: &str = r#"<s:Envelope xml:lang="en-US"
        xmlns:s="http://www.w3.org/2003/05/soap-envelope"
        xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"
        xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">
      <s:Header>
        <a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action>
        <a:MessageID>uuid:C7B5ECDB-BA3D-42D5-956A-09F386821B2C</a:MessageID>
        <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
        <a:RelatesTo>uuid:ABABABAB-5890-5844-4351-85278054ABCD</a:RelatesTo>
      </s:Header>
      <s:Body>
        <s:Fault>
          <s:Code>
            <s:Value>s:Sender</s:Value>
            <s:Subcode><s:Value>w:QuotaLimit</s:Value></s:Subcode>
          </s:Code>
          <s:Reason>
            <s:Text xml:lang="">
              The WS-Management service cannot process the request. The
              maximum number of concurrent shells for this user has been
              exceeded. Close existing shells or raise the quota for this
              user.
            </s:Text>
          </s:Reason>
          <s:Detail>
            <f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
                          Code="2150859173" Machine="localhost">
              <f:Message>
                The WS-Management service cannot process the request. This
                user is allowed a maximum number of 5 concurrent shells,
                which has been exceeded. Close existing shells or raise the
                quota for this user.
              </f:Message>
            </f:WSManFault>
          </s:Detail>
        </s:Fault>
      </s:Body>
    </s:Envelope>"#;

    #[test]
    fn quota_fault_parses_and_classifies() {
        let f = WsmanFault::parse(QUOTA_FAULT).unwrap();
        assert_eq!(f.code, Some(2_150_859_173));
        assert_eq!(f.subcode.as_deref(), Some("w:QuotaLimit"));
        assert_eq!(f.subcode_name(), Some("QuotaLimit"));
        assert!(f.is_sender());
        assert_eq!(f.machine.as_deref(), Some("localhost"));
        assert_eq!(f.reason, USER_QUOTA_TEXT);
        assert!(f.message.starts_with("The WS-Management service cannot process the request. This user is allowed"));
        assert_eq!(f.class(500), FaultClass::UserShellQuotaExceeded);
        assert!(!f.is_operation_timeout());
    }

    #[test]
    fn quota_text_alone_classifies() {
        // No code at all: the reason text decides.
        let f = WsmanFault::parse(&QUOTA_FAULT.replace(r#"Code="2150859173""#, "")).unwrap();
        assert_eq!(f.code, None);
        assert_eq!(f.class(500), FaultClass::UserShellQuotaExceeded);
    }

    #[test]
    fn provider_fault_message_is_extracted() {
        let body = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>
            <env:Code><env:Value>env:Receiver</env:Value><env:Subcode><env:Value>wsman:InternalError</env:Value></env:Subcode></env:Code>
            <env:Reason><env:Text xml:lang="en-US"/></env:Reason>
            <env:Detail><fa:WSManFault xmlns:fa="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="2152992672" Machine="10.0.0.5">
              <fa:Message><fa:ProviderFault provider="microsoft.powershell" path="C:\WINDOWS\system32\pwrshplugin.dll">Element 'creationXml' was not found. Line 1, position 2.
              </fa:ProviderFault></fa:Message></fa:WSManFault></env:Detail></env:Fault></env:Body></env:Envelope>"#;
        let f = WsmanFault::parse(body).unwrap();
        assert_eq!(f.code, Some(2_152_992_672));
        assert_eq!(f.subcode_name(), Some("InternalError"));
        assert!(!f.is_sender());
        assert_eq!(f.message, "Element 'creationXml' was not found. Line 1, position 2.");
        assert_eq!(f.reason, f.message);
        assert_eq!(f.class(500), FaultClass::Protocol);
    }

    #[test]
    fn nested_wsman_fault_message_is_the_innermost() {
        let body = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault>
            <s:Reason><s:Text xml:lang="de-DE">Zugriff verweigert</s:Text><s:Text xml:lang="en-US">Access is denied. </s:Text></s:Reason>
            <s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault">
            <f:Message><f:ProviderFault provider="p"><f:WSManFault Code="5" Machine=""><f:Message>Inner
            text here. </f:Message></f:WSManFault></f:ProviderFault></f:Message></f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>"#;
        let f = WsmanFault::parse(body).unwrap();
        assert_eq!(f.message, "Inner text here.");
        assert_eq!(f.reason, "Access is denied.");
        assert_eq!(f.code, Some(5));
        assert_eq!(f.machine, None);
        assert_eq!(f.class(500), FaultClass::LogonFailed);
    }

    #[test]
    fn shell_not_found_is_session_expired_and_timeout_is_benign() {
        for fault in [WsmanFault::shell_not_found("ABC", Some("srv")), WsmanFault::operation_timeout(None)] {
            let parsed = WsmanFault::parse(&fault.to_envelope(Some("uuid:X"))).unwrap();
            assert_eq!(parsed, fault);
        }
        let nf = WsmanFault::parse(&WsmanFault::shell_not_found("ABC", None).to_envelope(None)).unwrap();
        assert_eq!(nf.code, Some(2_150_858_843));
        assert_eq!(nf.class(500), FaultClass::SessionExpired);
        assert!(!nf.is_operation_timeout());

        let to = WsmanFault::parse(&WsmanFault::operation_timeout(None).to_envelope(None)).unwrap();
        assert!(to.is_operation_timeout());
        assert_eq!(to.class(500), FaultClass::Timeout);
        // The subcode alone is enough.
        let bare = WsmanFault { code: None, ..to.clone() };
        assert!(bare.is_operation_timeout());
    }

    #[test]
    fn built_quota_fault_has_winrm_shape() {
        let env = WsmanFault::user_shell_quota(Some("EXHMB01")).to_envelope(Some("uuid:REQ"));
        let root = xml::parse(&env).unwrap();
        let fault = root.path(&[(ns::SOAP, "Body"), (ns::SOAP, "Fault")]).unwrap();
        assert_eq!(fault.path(&[(ns::SOAP, "Code"), (ns::SOAP, "Value")]).unwrap().own_text(), "s:Sender");
        let wf = fault.path(&[(ns::SOAP, "Detail"), (ns::WSMAN_FAULT, "WSManFault")]).unwrap();
        assert_eq!(wf.attr("Code"), Some("2150859173"));
        assert_eq!(wf.attr("Machine"), Some("EXHMB01"));
        let rel = root.path(&[(ns::SOAP, "Header"), (ns::ADDRESSING, "RelatesTo")]).unwrap();
        assert_eq!(rel.own_text(), "uuid:REQ");
        let parsed = WsmanFault::parse(&env).unwrap();
        assert_eq!(parsed.class(500), FaultClass::UserShellQuotaExceeded);
        assert_eq!(parsed, WsmanFault::user_shell_quota(Some("EXHMB01")));
    }

    #[test]
    fn bare_wsman_fault_and_codes() {
        let f = WsmanFault::parse(
            r#"<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="-2144108472"><f:Message>x</f:Message></f:WSManFault>"#,
        )
        .unwrap();
        assert_eq!(f.code, Some(-2_144_108_472i32 as u32));
        assert_eq!(parse_code("0x803381A5"), Some(WSMAN_QUOTA_LIMIT));
        assert_eq!(parse_code("nope"), None);
        assert!(matches!(
            WsmanFault::parse(
                r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/></s:Envelope>"#
            ),
            Err(WsmanError::Missing("s:Fault"))
        ));
        assert!(matches!(WsmanFault::parse("<html>502</html>"), Err(WsmanError::Missing(_))));
        assert!(matches!(WsmanFault::parse("Bad Gateway"), Err(WsmanError::Xml(_))));
    }
}
