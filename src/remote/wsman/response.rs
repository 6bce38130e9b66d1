//! Client side: parsing the server's answers.
//!
//! Every `parse_*` function takes the response body and the MessageID of the request it answers
//! (the first element of what the [`envelope`](super::envelope) builders return). A SOAP fault in
//! the body becomes [`WsmanError::Fault`], whatever the HTTP status; otherwise wsa:RelatesTo must
//! name the request, or the answer is [`WsmanError::RelatesTo`].

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use uuid::Uuid;

use super::xml::{self, Element};
use super::{
    fault, ns, parse_duration, parse_uuid_urn, WsmanError, COMMAND_STATE_DONE, COMMAND_STATE_PENDING,
    COMMAND_STATE_RUNNING,
};

/// The addressing header of a response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseHeader {
    pub action: Option<String>,
    pub message_id: Option<String>,
    pub relates_to: Option<String>,
}

/// A shell as the server describes it (in a CreateResponse or an enumeration item).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShellInfo {
    pub shell_id: String,
    pub name: Option<String>,
    /// The configuration hosting the shell, e.g. `http://schemas.microsoft.com/powershell/Microsoft.Exchange`.
    pub resource_uri: Option<String>,
    pub owner: Option<String>,
    pub client_ip: Option<String>,
    pub process_id: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub input_streams: Vec<String>,
    pub output_streams: Vec<String>,
    /// `Connected`, `Disconnected`, ...
    pub state: Option<String>,
    pub shell_run_time: Option<Duration>,
    pub shell_inactivity: Option<Duration>,
}

/// The answer to Create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateResponse {
    /// The id to put in the SelectorSet of every later request: the ResourceCreated selector
    /// when present, else rsp:Shell/rsp:ShellId.
    pub shell_id: String,
    /// The ResourceURI of the ResourceCreated reference (or of rsp:Shell).
    pub resource_uri: Option<String>,
    /// The rsp:Shell description, when the server sent one.
    pub shell: Option<ShellInfo>,
}

/// The answer to Command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResponse {
    pub command_id: String,
}

/// One rsp:Stream of a ReceiveResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamData {
    pub name: String,
    pub command_id: Option<String>,
    /// Decoded from base64.
    pub data: Vec<u8>,
    /// `End="true"`: no more data on this stream.
    pub end: bool,
}

/// rsp:CommandState of a ReceiveResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandState {
    pub command_id: Option<String>,
    /// One of [`COMMAND_STATE_DONE`], [`COMMAND_STATE_RUNNING`], [`COMMAND_STATE_PENDING`].
    pub state: String,
    pub exit_code: Option<i64>,
}

impl CommandState {
    pub fn is_done(&self) -> bool {
        self.state == COMMAND_STATE_DONE || self.state.ends_with("/Done")
    }
    pub fn is_running(&self) -> bool {
        self.state == COMMAND_STATE_RUNNING || self.state.ends_with("/Running")
    }
    pub fn is_pending(&self) -> bool {
        self.state == COMMAND_STATE_PENDING || self.state.ends_with("/Pending")
    }
}

/// The answer to Receive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiveResponse {
    pub streams: Vec<StreamData>,
    pub command_state: Option<CommandState>,
}

/// The answer to Enumerate (with OptimizeEnumeration) or Pull.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnumerationResponse {
    pub items: Vec<ShellInfo>,
    /// The context to Pull with; absent (or meaningless) once `end_of_sequence`.
    pub context: Option<String>,
    pub end_of_sequence: bool,
}

/// Parses an envelope: well-formed, s:Envelope with s:Body, no s:Fault.
fn envelope(body: &str) -> Result<Element, WsmanError> {
    let root = xml::parse(body)?;
    if !root.is(ns::SOAP, "Envelope") {
        return Err(WsmanError::Missing("s:Envelope"));
    }
    let soap_body = root.child(ns::SOAP, "Body").ok_or(WsmanError::Missing("s:Body"))?;
    if let Some(f) = fault::from_body(soap_body) {
        return Err(WsmanError::Fault(Box::new(f)));
    }
    Ok(root)
}

fn header_of(root: &Element) -> ResponseHeader {
    let get = |local: &str| root.path(&[(ns::SOAP, "Header"), (ns::ADDRESSING, local)]).map(|e| e.text_trimmed());
    ResponseHeader { action: get("Action"), message_id: get("MessageID"), relates_to: get("RelatesTo") }
}

/// Parses the envelope and checks wsa:RelatesTo against `request_id`.
fn checked(body: &str, request_id: Uuid) -> Result<(Element, ResponseHeader), WsmanError> {
    let root = envelope(body)?;
    let header = header_of(&root);
    match header.relates_to.as_deref().and_then(parse_uuid_urn) {
        Some(id) if id == request_id => Ok((root, header)),
        _ => Err(WsmanError::RelatesTo { expected: request_id, got: header.relates_to }),
    }
}

fn soap_body(root: &Element) -> &Element {
    // `envelope` has verified it exists.
    root.child(ns::SOAP, "Body").unwrap_or(root)
}

/// The addressing header of any response, faults included, without the RelatesTo check.
pub fn parse_header(body: &str) -> Result<ResponseHeader, WsmanError> {
    let root = xml::parse(body)?;
    if !root.is(ns::SOAP, "Envelope") {
        return Err(WsmanError::Missing("s:Envelope"));
    }
    Ok(header_of(&root))
}

/// Checks an answer that carries nothing but its header (SendResponse, SignalResponse,
/// DeleteResponse, ...): not a fault, and it answers `request_id`.
pub fn parse_empty_response(body: &str, request_id: Uuid) -> Result<ResponseHeader, WsmanError> {
    checked(body, request_id).map(|(_, h)| h)
}

pub(crate) fn decode_b64(what: &'static str, text: &str) -> Result<Vec<u8>, WsmanError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(compact.as_bytes()).map_err(|_| WsmanError::Invalid { what, value: truncate(text) })
}

pub(crate) fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn opt_text(el: &Element, local: &str) -> Option<String> {
    el.child(ns::SHELL, local).map(|e| e.text_trimmed())
}

fn shell_info(shell: &Element) -> ShellInfo {
    let streams = |local: &str| {
        opt_text(shell, local).map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
    };
    let dur = |local: &str| opt_text(shell, local).as_deref().and_then(parse_duration);
    ShellInfo {
        shell_id: opt_text(shell, "ShellId").unwrap_or_default(),
        name: opt_text(shell, "Name"),
        resource_uri: opt_text(shell, "ResourceUri"),
        owner: opt_text(shell, "Owner"),
        client_ip: opt_text(shell, "ClientIP"),
        process_id: opt_text(shell, "ProcessId").and_then(|p| p.parse().ok()),
        idle_timeout: dur("IdleTimeOut"),
        input_streams: streams("InputStreams"),
        output_streams: streams("OutputStreams"),
        state: opt_text(shell, "State"),
        shell_run_time: dur("ShellRunTime"),
        shell_inactivity: dur("ShellInactivity"),
    }
}

pub(crate) fn selector_shell_id(selector_set: &Element) -> Option<String> {
    selector_set
        .children_named(ns::WSMAN, "Selector")
        .find(|s| s.attr("Name") == Some("ShellId"))
        .map(|s| s.text_trimmed())
        .filter(|s| !s.is_empty())
}

/// Parses the answer to Create.
pub fn parse_create_response(body: &str, request_id: Uuid) -> Result<CreateResponse, WsmanError> {
    let (root, _) = checked(body, request_id)?;
    let b = soap_body(&root);
    let reference = b.path(&[(ns::TRANSFER, "ResourceCreated"), (ns::ADDRESSING, "ReferenceParameters")]);
    let selector_id = reference.and_then(|r| r.child(ns::WSMAN, "SelectorSet")).and_then(selector_shell_id);
    let shell = b.child(ns::SHELL, "Shell").map(shell_info);
    let shell_id = selector_id
        .or_else(|| shell.as_ref().map(|s| s.shell_id.clone()).filter(|s| !s.is_empty()))
        .ok_or(WsmanError::Missing("ShellId in CreateResponse"))?;
    let resource_uri = reference
        .and_then(|r| r.child(ns::WSMAN, "ResourceURI"))
        .map(|e| e.text_trimmed())
        .or_else(|| shell.as_ref().and_then(|s| s.resource_uri.clone()));
    Ok(CreateResponse { shell_id, resource_uri, shell })
}

/// Parses the answer to Command.
pub fn parse_command_response(body: &str, request_id: Uuid) -> Result<CommandResponse, WsmanError> {
    let (root, _) = checked(body, request_id)?;
    let command_id = soap_body(&root)
        .path(&[(ns::SHELL, "CommandResponse"), (ns::SHELL, "CommandId")])
        .map(|e| e.text_trimmed())
        .filter(|s| !s.is_empty())
        .ok_or(WsmanError::Missing("rsp:CommandResponse/rsp:CommandId"))?;
    Ok(CommandResponse { command_id })
}

fn is_true(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1")
}

/// Parses the answer to Receive: the streams in document order, data decoded.
pub fn parse_receive_response(body: &str, request_id: Uuid) -> Result<ReceiveResponse, WsmanError> {
    let (root, _) = checked(body, request_id)?;
    let rr = soap_body(&root).child(ns::SHELL, "ReceiveResponse").ok_or(WsmanError::Missing("rsp:ReceiveResponse"))?;
    let mut out = ReceiveResponse::default();
    for s in rr.children_named(ns::SHELL, "Stream") {
        out.streams.push(StreamData {
            name: s.attr("Name").unwrap_or_default().to_string(),
            command_id: s.attr("CommandId").map(str::to_string),
            data: decode_b64("rsp:Stream base64", &s.own_text())?,
            end: is_true(s.attr("End")),
        });
    }
    if let Some(cs) = rr.child(ns::SHELL, "CommandState") {
        out.command_state = Some(CommandState {
            command_id: cs.attr("CommandId").map(str::to_string),
            state: cs.attr("State").ok_or(WsmanError::Missing("rsp:CommandState/@State"))?.trim().to_string(),
            exit_code: cs.child(ns::SHELL, "ExitCode").and_then(|e| e.text_trimmed().parse().ok()),
        });
    }
    Ok(out)
}

fn enumeration(container: &Element) -> EnumerationResponse {
    let either = |local: &str| container.child(ns::ENUMERATION, local).or_else(|| container.child(ns::WSMAN, local));
    let items = either("Items")
        .map(|items| {
            items.children_named(ns::SHELL, "Shell").map(shell_info).filter(|s| !s.shell_id.is_empty()).collect()
        })
        .unwrap_or_default();
    EnumerationResponse {
        items,
        context: either("EnumerationContext").map(|e| e.text_trimmed()).filter(|s| !s.is_empty()),
        end_of_sequence: either("EndOfSequence").is_some(),
    }
}

/// Parses the answer to Enumerate (items present with OptimizeEnumeration). Items without a
/// ShellId are skipped.
pub fn parse_enumerate_response(body: &str, request_id: Uuid) -> Result<EnumerationResponse, WsmanError> {
    let (root, _) = checked(body, request_id)?;
    let er = soap_body(&root)
        .child(ns::ENUMERATION, "EnumerateResponse")
        .ok_or(WsmanError::Missing("wsen:EnumerateResponse"))?;
    Ok(enumeration(er))
}

/// Parses the answer to Pull.
pub fn parse_pull_response(body: &str, request_id: Uuid) -> Result<EnumerationResponse, WsmanError> {
    let (root, _) = checked(body, request_id)?;
    let pr = soap_body(&root).child(ns::ENUMERATION, "PullResponse").ok_or(WsmanError::Missing("wsen:PullResponse"))?;
    Ok(enumeration(pr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::FaultClass;

    const REQ: &str = "F530804C-6D02-4FA9-AE78-1997750594BA";

    fn req() -> Uuid {
        Uuid::parse_str(REQ).unwrap()
    }

    fn wrap(body: &str) -> String {
        format!(
            r#"<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration"><s:Header><a:Action>x</a:Action><a:MessageID>uuid:D9E108AA-E32B-45E3-8601-E9C70999D3BA</a:MessageID><a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To><a:RelatesTo>uuid:{}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"#,
            REQ.to_lowercase()
        )
    }

    #[test]
    fn create_response_with_both_id_sources() {
        let body = wrap(
            r#"<x:ResourceCreated><a:Address>http://host:5985/wsman</a:Address><a:ReferenceParameters><w:ResourceURI>http://schemas.microsoft.com/powershell/Microsoft.PowerShell</w:ResourceURI><w:SelectorSet><w:Selector Name="ShellId">3E80F257-2C19-423F-BE49-58DAC431A78C</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated><rsp:Shell xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"><rsp:ShellId>3E80F257-2C19-423F-BE49-58DAC431A78C</rsp:ShellId><rsp:ResourceUri>http://schemas.microsoft.com/powershell/Microsoft.PowerShell</rsp:ResourceUri><rsp:Owner>DOMAIN\vagrant</rsp:Owner><rsp:ClientIP>192.168.56.1</rsp:ClientIP><rsp:ProcessId>3344</rsp:ProcessId><rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut><rsp:InputStreams>stdin pr</rsp:InputStreams><rsp:OutputStreams>stdout</rsp:OutputStreams><rsp:State>Connected</rsp:State><rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"#,
        );
        let r = parse_create_response(&body, req()).unwrap();
        assert_eq!(r.shell_id, "3E80F257-2C19-423F-BE49-58DAC431A78C");
        assert_eq!(r.resource_uri.as_deref(), Some("http://schemas.microsoft.com/powershell/Microsoft.PowerShell"));
        let shell = r.shell.unwrap();
        assert_eq!(shell.owner.as_deref(), Some("DOMAIN\\vagrant"));
        assert_eq!(shell.process_id, Some(3344));
        assert_eq!(shell.idle_timeout, Some(Duration::from_secs(7200)));
        assert_eq!(shell.input_streams, ["stdin", "pr"]);
        assert_eq!(shell.state.as_deref(), Some("Connected"));

        // Only the selector.
        let only_sel = wrap(
            r#"<x:ResourceCreated><a:Address>a</a:Address><a:ReferenceParameters><w:SelectorSet><w:Selector Name="ShellId">SEL</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"#,
        );
        assert_eq!(parse_create_response(&only_sel, req()).unwrap().shell_id, "SEL");
        // Only rsp:Shell.
        let only_shell = wrap("<rsp:Shell><rsp:ShellId> SH </rsp:ShellId></rsp:Shell>");
        assert_eq!(parse_create_response(&only_shell, req()).unwrap().shell_id, "SH");
        assert_eq!(parse_create_response(&wrap(""), req()), Err(WsmanError::Missing("ShellId in CreateResponse")));
    }

    #[test]
    fn relates_to_must_match() {
        let body = wrap("<rsp:CommandResponse><rsp:CommandId>C1</rsp:CommandId></rsp:CommandResponse>");
        assert_eq!(parse_command_response(&body, req()).unwrap().command_id, "C1");
        let other = Uuid::new_v4();
        match parse_command_response(&body, other) {
            Err(WsmanError::RelatesTo { expected, got }) => {
                assert_eq!(expected, other);
                assert_eq!(got, Some(format!("uuid:{}", REQ.to_lowercase())));
            }
            r => panic!("{r:?}"),
        }
        let no_rel = body.replace(&format!("<a:RelatesTo>uuid:{}</a:RelatesTo>", REQ.to_lowercase()), "");
        assert!(matches!(parse_empty_response(&no_rel, req()), Err(WsmanError::RelatesTo { got: None, .. })));
        assert!(parse_empty_response(&wrap(""), req()).is_ok());
        assert_eq!(parse_header(&no_rel).unwrap().relates_to, None);
    }

    #[test]
    fn receive_response_streams_and_state() {
        let body = wrap(
            r#"<rsp:ReceiveResponse><rsp:Stream Name="stdout" CommandId="C1">c3VjaCBn
            cmVhdA==</rsp:Stream><rsp:Stream Name="stdout" CommandId="C1" End="true"></rsp:Stream><rsp:Stream Name="pr"/><rsp:CommandState CommandId="C1" State="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"><rsp:ExitCode>0</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse>"#,
        );
        let r = parse_receive_response(&body, req()).unwrap();
        assert_eq!(r.streams.len(), 3);
        assert_eq!(r.streams[0].data, b"such great");
        assert_eq!(r.streams[0].command_id.as_deref(), Some("C1"));
        assert!(!r.streams[0].end);
        assert!(r.streams[1].end && r.streams[1].data.is_empty());
        assert_eq!(r.streams[2].name, "pr");
        let cs = r.command_state.unwrap();
        assert!(cs.is_done() && !cs.is_running());
        assert_eq!(cs.exit_code, Some(0));

        let bad =
            wrap(r#"<rsp:ReceiveResponse><rsp:Stream Name="stdout">!!notbase64</rsp:Stream></rsp:ReceiveResponse>"#);
        assert!(matches!(parse_receive_response(&bad, req()), Err(WsmanError::Invalid { .. })));
        assert_eq!(parse_receive_response(&wrap(""), req()), Err(WsmanError::Missing("rsp:ReceiveResponse")));
    }

    #[test]
    fn enumerate_and_pull() {
        let shell = r#"<rsp:Shell><rsp:ShellId>S1</rsp:ShellId><rsp:ResourceUri>http://schemas.microsoft.com/powershell/Microsoft.Exchange</rsp:ResourceUri><rsp:Owner>admin@contoso.com</rsp:Owner><rsp:ClientIP>10.1.2.3</rsp:ClientIP><rsp:IdleTimeOut>PT900.000S</rsp:IdleTimeOut><rsp:State>Connected</rsp:State><rsp:ShellRunTime>P0DT1H2M3S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H5M0S</rsp:ShellInactivity></rsp:Shell>"#;
        let body = wrap(&format!(
            "<n:EnumerateResponse><n:EnumerationContext>uuid:CTX</n:EnumerationContext><w:Items>{shell}<rsp:Shell/></w:Items></n:EnumerateResponse>"
        ));
        let r = parse_enumerate_response(&body, req()).unwrap();
        assert_eq!(r.items.len(), 1);
        assert_eq!(r.context.as_deref(), Some("uuid:CTX"));
        assert!(!r.end_of_sequence);
        let s = &r.items[0];
        assert_eq!(s.owner.as_deref(), Some("admin@contoso.com"));
        assert_eq!(s.client_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(s.shell_run_time, Some(Duration::from_secs(3723)));
        assert_eq!(s.shell_inactivity, Some(Duration::from_secs(300)));
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(900)));

        let pull =
            wrap(&format!("<n:PullResponse><n:Items>{shell}{shell}</n:Items><n:EndOfSequence/></n:PullResponse>"));
        let r = parse_pull_response(&pull, req()).unwrap();
        assert_eq!(r.items.len(), 2);
        assert!(r.end_of_sequence);
        assert_eq!(r.context, None);
        assert!(matches!(parse_pull_response(&body, req()), Err(WsmanError::Missing(_))));
    }

    #[test]
    fn fault_wins_over_relates_to() {
        let body = wrap(
            r#"<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>w:InvalidSelectors</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">bad selectors</s:Text></s:Reason><s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="2150858843" Machine="m"><f:Message>The request for the Windows Remote Shell with ShellId X failed because the shell was not found on the server.</f:Message></f:WSManFault></s:Detail></s:Fault>"#,
        );
        let err = parse_receive_response(&body, Uuid::new_v4()).unwrap_err();
        let fault = err.fault().expect("a fault");
        assert_eq!(fault.code, Some(2_150_858_843));
        assert_eq!(err.class(500), FaultClass::SessionExpired);
        assert_eq!(WsmanError::Missing("x").class(200), FaultClass::Protocol);
    }
}
