//! Server side, for a WinRM simulator: parses request envelopes and builds the answers in the
//! shape WinRM sends them (prefixes `s`, `a`, `x`, `w`, `n`, `rsp`, `p`).
//!
//! Every builder takes `relates_to`: the request's [`Request::message_id`], copied verbatim.
//! Faults are built by [`WsmanFault::to_envelope`] (see [`fault_response`]) and go out with
//! HTTP 500.

use std::fmt::Write as _;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use uuid::Uuid;

use super::response::{decode_b64, selector_shell_id, truncate, CommandState, ShellInfo, StreamData};
use super::xml::{self, esc, Element};
use super::{action, ns, parse_duration, uuid_urn, WsmanError, WsmanFault, ANONYMOUS};

/// The operation a request asks for (its wsa:Action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Delete,
    Command,
    Send,
    Receive,
    Signal,
    Enumerate,
    Pull,
    /// Any other action URI (Get, Put, Disconnect, Reconnect, Connect, ...).
    Other(String),
}

impl Action {
    pub fn from_uri(uri: &str) -> Action {
        match uri.trim() {
            action::CREATE => Action::Create,
            action::DELETE => Action::Delete,
            action::COMMAND => Action::Command,
            action::SEND => Action::Send,
            action::RECEIVE => Action::Receive,
            action::SIGNAL => Action::Signal,
            action::ENUMERATE => Action::Enumerate,
            action::PULL => Action::Pull,
            other => Action::Other(other.to_string()),
        }
    }

    /// The action's short name (`Create`, `Receive`, ...; the URI for any other action).
    pub fn name(&self) -> &str {
        match self {
            Action::Create => "Create",
            Action::Delete => "Delete",
            Action::Command => "Command",
            Action::Send => "Send",
            Action::Receive => "Receive",
            Action::Signal => "Signal",
            Action::Enumerate => "Enumerate",
            Action::Pull => "Pull",
            Action::Other(uri) => uri,
        }
    }

    pub fn uri(&self) -> &str {
        match self {
            Action::Create => action::CREATE,
            Action::Delete => action::DELETE,
            Action::Command => action::COMMAND,
            Action::Send => action::SEND,
            Action::Receive => action::RECEIVE,
            Action::Signal => action::SIGNAL,
            Action::Enumerate => action::ENUMERATE,
            Action::Pull => action::PULL,
            Action::Other(uri) => uri,
        }
    }
}

/// What the s:Body of a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    CreateShell {
        /// rsp:Shell/@ShellId: the id the client proposes (PSRP: the RunspacePool id).
        shell_id_attr: Option<String>,
        /// The shell's name: rsp:Shell/@Name (PowerShell's form) or an rsp:Name child.
        name: Option<String>,
        /// The decoded `creationXml` (PSRP fragments), when present.
        creation_xml: Option<Vec<u8>>,
        input_streams: Vec<String>,
        output_streams: Vec<String>,
        idle_timeout: Option<Duration>,
    },
    Command {
        command_id: Option<String>,
        /// Every rsp:Arguments, decoded.
        arguments: Vec<Vec<u8>>,
    },
    /// The first rsp:Stream of an rsp:Send.
    Send {
        command_id: Option<String>,
        stream: String,
        data: Vec<u8>,
    },
    Receive {
        command_id: Option<String>,
    },
    Signal {
        command_id: Option<String>,
        code: String,
    },
    Delete,
    Enumerate {
        optimize: bool,
        max_elements: Option<u32>,
    },
    Pull {
        context: String,
        max_elements: Option<u32>,
    },
    /// An action this parser has no body model for.
    Other,
}

/// A parsed request envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    /// wsa:MessageID as sent (`uuid:...`); echo it in wsa:RelatesTo.
    pub message_id: String,
    pub to: Option<String>,
    pub resource_uri: Option<String>,
    pub selector_shell_id: Option<String>,
    /// wsman:OptionSet entries (Name, value), in order.
    pub options: Vec<(String, String)>,
    pub max_envelope_size: Option<u32>,
    pub operation_timeout: Option<Duration>,
    pub session_id: Option<String>,
    /// wsman:Locale/@xml:lang.
    pub locale: Option<String>,
    pub body: RequestBody,
}

impl Request {
    /// The value of an option by name (case-insensitive, as WinRM treats them).
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The CommandId a Command, Send, Receive or Signal names, if any.
    pub fn command_id(&self) -> Option<&str> {
        match &self.body {
            RequestBody::Command { command_id, .. }
            | RequestBody::Send { command_id, .. }
            | RequestBody::Receive { command_id }
            | RequestBody::Signal { command_id, .. } => command_id.as_deref(),
            _ => None,
        }
    }
}

fn header_text(header: Option<&Element>, ns_uri: &str, local: &str) -> Option<String> {
    header.and_then(|h| h.child(ns_uri, local)).map(|e| e.text_trimmed())
}

fn parse_u32(what: &'static str, text: &str) -> Result<u32, WsmanError> {
    text.trim().parse().map_err(|_| WsmanError::Invalid { what, value: truncate(text) })
}

/// Parses a request envelope. Missing wsa:Action or wsa:MessageID, or a body that does not fit
/// its action, is an error: a server answers those with a fault.
pub fn parse_request(body: &str) -> Result<Request, WsmanError> {
    let root = xml::parse(body)?;
    if !root.is(ns::SOAP, "Envelope") {
        return Err(WsmanError::Missing("s:Envelope"));
    }
    let header = root.child(ns::SOAP, "Header");
    let soap_body = root.child(ns::SOAP, "Body").ok_or(WsmanError::Missing("s:Body"))?;

    let action_uri = header_text(header, ns::ADDRESSING, "Action")
        .filter(|s| !s.is_empty())
        .ok_or(WsmanError::Missing("wsa:Action"))?;
    let message_id = header_text(header, ns::ADDRESSING, "MessageID")
        .filter(|s| !s.is_empty())
        .ok_or(WsmanError::Missing("wsa:MessageID"))?;
    let max_envelope_size = header_text(header, ns::WSMAN, "MaxEnvelopeSize")
        .map(|t| parse_u32("wsman:MaxEnvelopeSize", &t))
        .transpose()?;
    let operation_timeout = header_text(header, ns::WSMAN, "OperationTimeout")
        .map(|t| parse_duration(&t).ok_or(WsmanError::Invalid { what: "wsman:OperationTimeout", value: truncate(&t) }))
        .transpose()?;
    let selector_shell_id = header.and_then(|h| h.child(ns::WSMAN, "SelectorSet")).and_then(selector_shell_id);
    let options = header
        .and_then(|h| h.child(ns::WSMAN, "OptionSet"))
        .map(|set| {
            set.children_named(ns::WSMAN, "Option")
                .map(|o| (o.attr("Name").unwrap_or_default().to_string(), o.text_trimmed()))
                .collect()
        })
        .unwrap_or_default();
    let locale = header.and_then(|h| h.child(ns::WSMAN, "Locale")).and_then(|l| l.attr("lang")).map(str::to_string);

    let action = Action::from_uri(&action_uri);
    let body = parse_body(&action, soap_body)?;
    Ok(Request {
        action,
        message_id,
        to: header_text(header, ns::ADDRESSING, "To"),
        resource_uri: header_text(header, ns::WSMAN, "ResourceURI"),
        selector_shell_id,
        options,
        max_envelope_size,
        operation_timeout,
        session_id: header_text(header, ns::WSMV, "SessionId"),
        locale,
        body,
    })
}

fn parse_body(action: &Action, b: &Element) -> Result<RequestBody, WsmanError> {
    let max_elements = |el: &Element, ns_uri: &str| {
        el.child(ns_uri, "MaxElements").map(|m| parse_u32("MaxElements", &m.own_text())).transpose()
    };
    Ok(match action {
        Action::Create => {
            let shell = b.child(ns::SHELL, "Shell").ok_or(WsmanError::Missing("rsp:Shell"))?;
            let streams = |local: &str| {
                shell
                    .child(ns::SHELL, local)
                    .map(|e| e.own_text().split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default()
            };
            let creation_xml = shell
                .child(ns::POWERSHELL, "creationXml")
                .map(|c| decode_b64("creationXml base64", &c.own_text()))
                .transpose()?;
            let idle_timeout = shell
                .child(ns::SHELL, "IdleTimeOut")
                .map(|e| {
                    let t = e.own_text();
                    parse_duration(&t).ok_or(WsmanError::Invalid { what: "rsp:IdleTimeOut", value: truncate(&t) })
                })
                .transpose()?;
            let name = shell
                .attr("Name")
                .map(str::to_string)
                .or_else(|| shell.child(ns::SHELL, "Name").map(|n| n.text_trimmed()))
                .filter(|n| !n.is_empty());
            RequestBody::CreateShell {
                shell_id_attr: shell.attr("ShellId").map(str::to_string),
                name,
                creation_xml,
                input_streams: streams("InputStreams"),
                output_streams: streams("OutputStreams"),
                idle_timeout,
            }
        }
        Action::Command => {
            let cl = b.child(ns::SHELL, "CommandLine").ok_or(WsmanError::Missing("rsp:CommandLine"))?;
            let arguments = cl
                .children_named(ns::SHELL, "Arguments")
                .map(|a| decode_b64("rsp:Arguments base64", &a.own_text()))
                .collect::<Result<Vec<_>, _>>()?;
            RequestBody::Command { command_id: cl.attr("CommandId").map(str::to_string), arguments }
        }
        Action::Send => {
            let stream = b
                .path(&[(ns::SHELL, "Send"), (ns::SHELL, "Stream")])
                .ok_or(WsmanError::Missing("rsp:Send/rsp:Stream"))?;
            RequestBody::Send {
                command_id: stream.attr("CommandId").map(str::to_string),
                stream: stream.attr("Name").ok_or(WsmanError::Missing("rsp:Stream/@Name"))?.to_string(),
                data: decode_b64("rsp:Stream base64", &stream.own_text())?,
            }
        }
        Action::Receive => {
            let r = b.child(ns::SHELL, "Receive").ok_or(WsmanError::Missing("rsp:Receive"))?;
            let command_id = r.child(ns::SHELL, "DesiredStream").and_then(|d| d.attr("CommandId")).map(str::to_string);
            RequestBody::Receive { command_id }
        }
        Action::Signal => {
            let s = b.child(ns::SHELL, "Signal").ok_or(WsmanError::Missing("rsp:Signal"))?;
            let code = s.child(ns::SHELL, "Code").map(|c| c.text_trimmed()).ok_or(WsmanError::Missing("rsp:Code"))?;
            RequestBody::Signal { command_id: s.attr("CommandId").map(str::to_string), code }
        }
        Action::Delete => RequestBody::Delete,
        Action::Enumerate => {
            let e = b.child(ns::ENUMERATION, "Enumerate").ok_or(WsmanError::Missing("wsen:Enumerate"))?;
            RequestBody::Enumerate {
                optimize: e.child(ns::WSMAN, "OptimizeEnumeration").is_some(),
                max_elements: max_elements(e, ns::WSMAN)?,
            }
        }
        Action::Pull => {
            let p = b.child(ns::ENUMERATION, "Pull").ok_or(WsmanError::Missing("wsen:Pull"))?;
            let context = p
                .child(ns::ENUMERATION, "EnumerationContext")
                .map(|c| c.text_trimmed())
                .ok_or(WsmanError::Missing("wsen:EnumerationContext"))?;
            RequestBody::Pull { context, max_elements: max_elements(p, ns::ENUMERATION)? }
        }
        Action::Other(_) => RequestBody::Other,
    })
}

/// The envelope around a response body, with WinRM's prefixes.
fn response(action_uri: &str, relates_to: &str, body: &str) -> String {
    let mut x = String::with_capacity(1024 + body.len());
    let _ = write!(
        x,
        concat!(
            r#"<s:Envelope xml:lang="en-US" xmlns:s="{s}" xmlns:a="{a}" xmlns:x="{x}" xmlns:w="{w}" xmlns:rsp="{rsp}" "#,
            r#"xmlns:n="{n}" xmlns:p="{p}">"#,
            "<s:Header><a:Action>{action}</a:Action><a:MessageID>{mid}</a:MessageID><a:To>{anon}</a:To>",
            "<a:RelatesTo>{rel}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
        ),
        s = ns::SOAP,
        a = ns::ADDRESSING,
        x = ns::TRANSFER,
        w = ns::WSMAN,
        rsp = ns::SHELL,
        n = ns::ENUMERATION,
        p = ns::WSMV,
        action = action_uri,
        mid = uuid_urn(Uuid::new_v4()),
        anon = ANONYMOUS,
        rel = esc(relates_to),
        body = body,
    );
    x
}

/// `P{d}DT{h}H{m}M{s}S`, the form of ShellRunTime and ShellInactivity.
fn format_day_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("P{}DT{}H{}M{}S", s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60)
}

fn write_shell(x: &mut String, shell: &ShellInfo) {
    let _ = write!(x, "<rsp:Shell><rsp:ShellId>{}</rsp:ShellId>", esc(&shell.shell_id));
    let mut text = |local: &str, v: &Option<String>| {
        if let Some(v) = v {
            let _ = write!(x, "<rsp:{local}>{}</rsp:{local}>", esc(v));
        }
    };
    text("Name", &shell.name);
    text("ResourceUri", &shell.resource_uri);
    text("Owner", &shell.owner);
    text("ClientIP", &shell.client_ip);
    text("ProcessId", &shell.process_id.map(|p| p.to_string()));
    text("IdleTimeOut", &shell.idle_timeout.map(|d| format!("PT{}.{:03}S", d.as_secs(), d.subsec_millis())));
    let joined = |v: &[String]| if v.is_empty() { None } else { Some(v.join(" ")) };
    text("InputStreams", &joined(&shell.input_streams));
    text("OutputStreams", &joined(&shell.output_streams));
    text("State", &shell.state);
    text("ShellRunTime", &shell.shell_run_time.map(format_day_duration));
    text("ShellInactivity", &shell.shell_inactivity.map(format_day_duration));
    x.push_str("</rsp:Shell>");
}

/// CreateResponse: ResourceCreated (with `address` and the ShellId selector) and rsp:Shell.
pub fn create_response(relates_to: &str, address: &str, shell: &ShellInfo) -> String {
    let mut body = format!("<x:ResourceCreated><a:Address>{}</a:Address><a:ReferenceParameters>", esc(address));
    if let Some(uri) = &shell.resource_uri {
        let _ = write!(body, "<w:ResourceURI>{}</w:ResourceURI>", esc(uri));
    }
    let _ = write!(
        body,
        r#"<w:SelectorSet><w:Selector Name="ShellId">{}</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"#,
        esc(&shell.shell_id)
    );
    write_shell(&mut body, shell);
    response(action::CREATE_RESPONSE, relates_to, &body)
}

/// CommandResponse with the CommandId.
pub fn command_response(relates_to: &str, command_id: &str) -> String {
    let body = format!("<rsp:CommandResponse><rsp:CommandId>{}</rsp:CommandId></rsp:CommandResponse>", esc(command_id));
    response(action::COMMAND_RESPONSE, relates_to, &body)
}

/// ReceiveResponse with the streams (data base64-encoded) and an optional CommandState.
pub fn receive_response(relates_to: &str, streams: &[StreamData], state: Option<&CommandState>) -> String {
    let mut body = String::from("<rsp:ReceiveResponse>");
    for s in streams {
        let _ = write!(body, r#"<rsp:Stream Name="{}""#, esc(&s.name));
        if let Some(cid) = &s.command_id {
            let _ = write!(body, r#" CommandId="{}""#, esc(cid));
        }
        if s.end {
            body.push_str(r#" End="true""#);
        }
        let _ = write!(body, ">{}</rsp:Stream>", B64.encode(&s.data));
    }
    if let Some(cs) = state {
        body.push_str("<rsp:CommandState");
        if let Some(cid) = &cs.command_id {
            let _ = write!(body, r#" CommandId="{}""#, esc(cid));
        }
        let _ = write!(body, r#" State="{}">"#, esc(&cs.state));
        if let Some(code) = cs.exit_code {
            let _ = write!(body, "<rsp:ExitCode>{code}</rsp:ExitCode>");
        }
        body.push_str("</rsp:CommandState>");
    }
    body.push_str("</rsp:ReceiveResponse>");
    response(action::RECEIVE_RESPONSE, relates_to, &body)
}

pub fn send_response(relates_to: &str) -> String {
    response(action::SEND_RESPONSE, relates_to, "<rsp:SendResponse/>")
}

pub fn signal_response(relates_to: &str) -> String {
    response(action::SIGNAL_RESPONSE, relates_to, "<rsp:SignalResponse/>")
}

pub fn delete_response(relates_to: &str) -> String {
    response(action::DELETE_RESPONSE, relates_to, "")
}

fn enumeration_body(x: &mut String, items_ns: &str, context: Option<&str>, items: &[ShellInfo], end: bool) {
    if let Some(c) = context {
        let _ = write!(x, "<n:EnumerationContext>{}</n:EnumerationContext>", esc(c));
    }
    let _ = write!(x, "<{items_ns}:Items>");
    for s in items {
        write_shell(x, s);
    }
    let _ = write!(x, "</{items_ns}:Items>");
    if end {
        let _ = write!(x, "<{items_ns}:EndOfSequence/>");
    }
}

/// EnumerateResponse for an optimized enumeration: the first items in wsman:Items, with
/// wsman:EndOfSequence when they are all there is.
pub fn enumerate_response(
    relates_to: &str,
    context: Option<&str>,
    items: &[ShellInfo],
    end_of_sequence: bool,
) -> String {
    let mut body = String::from("<n:EnumerateResponse>");
    enumeration_body(&mut body, "w", context, items, end_of_sequence);
    body.push_str("</n:EnumerateResponse>");
    response(action::ENUMERATE_RESPONSE, relates_to, &body)
}

/// PullResponse: items in wsen:Items, wsen:EndOfSequence at the end.
pub fn pull_response(relates_to: &str, context: Option<&str>, items: &[ShellInfo], end_of_sequence: bool) -> String {
    let mut body = String::from("<n:PullResponse>");
    enumeration_body(&mut body, "n", context, items, end_of_sequence);
    body.push_str("</n:PullResponse>");
    response(action::PULL_RESPONSE, relates_to, &body)
}

/// A fault envelope (send with HTTP 500); `relates_to` when the request's MessageID is known.
pub fn fault_response(relates_to: Option<&str>, fault: &WsmanFault) -> String {
    fault.to_envelope(relates_to)
}

/// The IdleTimeOut WinRM reports when the client asked for none (2 hours).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(7200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_uris_round_trip() {
        for a in [
            Action::Create,
            Action::Delete,
            Action::Command,
            Action::Send,
            Action::Receive,
            Action::Signal,
            Action::Enumerate,
            Action::Pull,
            Action::Other("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Disconnect".into()),
        ] {
            assert_eq!(Action::from_uri(a.uri()), a);
        }
    }

    #[test]
    fn foreign_prefixes_parse() {
        // A request written with env:/wsman: prefixes and attributes in another order.
        let body = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:addr="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:shell="http://schemas.microsoft.com/wbem/wsman/1/windows/shell">
          <env:Header>
            <addr:Action env:mustUnderstand="true">http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal</addr:Action>
            <addr:MessageID>uuid:ABC</addr:MessageID>
            <w:SelectorSet><w:Selector Name="Other">o</w:Selector><w:Selector Name="ShellId">S1</w:Selector></w:SelectorSet>
            <w:OperationTimeout>PT60.000S</w:OperationTimeout>
            <w:MaxEnvelopeSize env:mustUnderstand="true">512000</w:MaxEnvelopeSize>
          </env:Header>
          <env:Body><shell:Signal CommandId="C1"><shell:Code>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate</shell:Code></shell:Signal></env:Body>
        </env:Envelope>"#;
        let r = parse_request(body).unwrap();
        assert_eq!(r.action, Action::Signal);
        assert_eq!(r.message_id, "uuid:ABC");
        assert_eq!(r.selector_shell_id.as_deref(), Some("S1"));
        assert_eq!(r.operation_timeout, Some(Duration::from_secs(60)));
        assert_eq!(r.max_envelope_size, Some(512_000));
        assert_eq!(r.to, None);
        assert_eq!(
            r.body,
            RequestBody::Signal {
                command_id: Some("C1".into()),
                code: "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate".into()
            }
        );
    }

    #[test]
    fn missing_header_fields_are_errors() {
        let env = |header: &str, body: &str| {
            format!(
                r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"#
            )
        };
        let act = "<a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action>";
        let mid = "<a:MessageID>uuid:1</a:MessageID>";
        assert_eq!(parse_request(&env(mid, "")), Err(WsmanError::Missing("wsa:Action")));
        assert_eq!(parse_request(&env(act, "")), Err(WsmanError::Missing("wsa:MessageID")));
        assert_eq!(parse_request(&env(&format!("{act}{mid}"), "")), Err(WsmanError::Missing("rsp:Shell")));
        let bad_size = format!("{act}{mid}<w:MaxEnvelopeSize>big</w:MaxEnvelopeSize>");
        assert!(matches!(parse_request(&env(&bad_size, "")), Err(WsmanError::Invalid { .. })));
        let other = "<a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Get</a:Action>";
        let r = parse_request(&env(&format!("{other}{mid}"), "")).unwrap();
        assert_eq!(r.body, RequestBody::Other);
    }

    #[test]
    fn day_durations() {
        assert_eq!(format_day_duration(Duration::from_secs(93_784)), "P1DT2H3M4S");
        assert_eq!(
            parse_duration(&format_day_duration(Duration::from_secs(93_784))),
            Some(Duration::from_secs(93_784))
        );
    }
}
