//! Client requests: complete SOAP 1.2 envelopes with the WS-Addressing / WS-Management header.
//!
//! Every builder returns `(message_id, body)`: the server's reply must carry
//! `wsa:RelatesTo uuid:<message_id>`, which [`crate::remote::wsman::response`] checks.

use std::fmt::Write as _;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use uuid::Uuid;

use super::xml::esc;
use super::{action, format_duration, ns, powershell_resource_uri, upper, uuid_urn, ANONYMOUS, SHELL_RESOURCE_URI};

/// The PowerShell stop signal. PowerShell spells it `crtl_c`, and servers match it literally.
pub const SIGNAL_PS_CTRL_C: &str = "http://schemas.microsoft.com/powershell/signal/crtl_c";
/// The generic WinRS terminate signal.
pub const SIGNAL_TERMINATE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate";

/// What every request of one connection shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// wsa:To: the full endpoint URL the request is POSTed to.
    pub to: String,
    /// wsman:ResourceURI, e.g. [`powershell_resource_uri`]`("Microsoft.Exchange")`.
    pub resource_uri: String,
    /// wsman:MaxEnvelopeSize, in bytes.
    pub max_envelope_size: u32,
    /// wsman:OperationTimeout.
    pub operation_timeout: Duration,
    /// wsmv:SessionId: one per client connection.
    pub session_id: Uuid,
    /// wsman:Locale and wsmv:DataLocale (`en-US`).
    pub locale: String,
}

impl RequestContext {
    /// The envelope size every WinRM server accepts (Windows 2008 R2's default); newer servers
    /// accept 512000.
    pub const DEFAULT_MAX_ENVELOPE_SIZE: u32 = 153_600;
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

    /// A context for a PowerShell session configuration at `to`, with the defaults above, a
    /// fresh session id and `en-US`.
    pub fn powershell(to: impl Into<String>, configuration_name: &str) -> Self {
        Self {
            to: to.into(),
            resource_uri: powershell_resource_uri(configuration_name),
            max_envelope_size: Self::DEFAULT_MAX_ENVELOPE_SIZE,
            operation_timeout: Self::DEFAULT_OPERATION_TIMEOUT,
            session_id: Uuid::new_v4(),
            locale: "en-US".to_string(),
        }
    }

    /// How many raw bytes one Send (or Command arguments, or creationXml) may carry so that the
    /// base64-encoded envelope stays within `max_envelope_size`, with a margin for header
    /// variations. Zero when the envelope size leaves no room.
    pub fn max_payload_size(&self) -> usize {
        let id = Uuid::nil();
        let (_, skeleton) = send(self, &upper(id), Some(&upper(id)), "stdin", b"");
        let room = (self.max_envelope_size as usize).saturating_sub(skeleton.len() + 256);
        room / 4 * 3
    }
}

/// One wsman:Option of an OptionSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsOption<'a> {
    pub name: &'a str,
    pub value: &'a str,
    /// Adds `MustComply="true"`: the server must fault rather than ignore the option.
    pub must_comply: bool,
}

/// Builds a request with any action and body (the builders below use it; it serves actions this
/// module has no builder for, e.g. Disconnect). `body` is inserted into s:Body verbatim and may
/// use the prefixes `s`, `wsa`, `wsman`, `wsmv`, `rsp`, `wsen` declared on the envelope.
pub fn request(
    ctx: &RequestContext,
    action: &str,
    shell_id: Option<&str>,
    options: &[WsOption<'_>],
    body: &str,
) -> (Uuid, String) {
    request_with_uri(ctx, &ctx.resource_uri, action, shell_id, options, body)
}

fn request_with_uri(
    ctx: &RequestContext,
    resource_uri: &str,
    action: &str,
    shell_id: Option<&str>,
    options: &[WsOption<'_>],
    body: &str,
) -> (Uuid, String) {
    let message_id = Uuid::new_v4();
    let mut x = String::with_capacity(1536 + body.len());
    let _ = write!(
        x,
        concat!(
            r#"<s:Envelope xmlns:s="{s}" xmlns:wsa="{wsa}" xmlns:wsman="{wsman}" xmlns:wsmv="{wsmv}" "#,
            r#"xmlns:rsp="{rsp}" xmlns:wsen="{wsen}">"#,
            "<s:Header>",
            "<wsa:To>{to}</wsa:To>",
            r#"<wsman:ResourceURI s:mustUnderstand="true">{uri}</wsman:ResourceURI>"#,
            r#"<wsa:ReplyTo><wsa:Address s:mustUnderstand="true">{anon}</wsa:Address></wsa:ReplyTo>"#,
            r#"<wsa:Action s:mustUnderstand="true">{action}</wsa:Action>"#,
            r#"<wsman:MaxEnvelopeSize s:mustUnderstand="true">{max}</wsman:MaxEnvelopeSize>"#,
            "<wsa:MessageID>{mid}</wsa:MessageID>",
            r#"<wsman:Locale xml:lang="{locale}" s:mustUnderstand="false"/>"#,
            r#"<wsmv:DataLocale xml:lang="{locale}" s:mustUnderstand="false"/>"#,
            r#"<wsmv:SessionId s:mustUnderstand="false">{sid}</wsmv:SessionId>"#,
            "<wsman:OperationTimeout>{timeout}</wsman:OperationTimeout>",
        ),
        s = ns::SOAP,
        wsa = ns::ADDRESSING,
        wsman = ns::WSMAN,
        wsmv = ns::WSMV,
        rsp = ns::SHELL,
        wsen = ns::ENUMERATION,
        to = esc(&ctx.to),
        uri = esc(resource_uri),
        anon = ANONYMOUS,
        action = esc(action),
        max = ctx.max_envelope_size,
        mid = uuid_urn(message_id),
        locale = esc(&ctx.locale),
        sid = uuid_urn(ctx.session_id),
        timeout = format_duration(ctx.operation_timeout),
    );
    if let Some(shell_id) = shell_id {
        let _ = write!(
            x,
            r#"<wsman:SelectorSet><wsman:Selector Name="ShellId">{}</wsman:Selector></wsman:SelectorSet>"#,
            esc(shell_id)
        );
    }
    if !options.is_empty() {
        x.push_str(r#"<wsman:OptionSet s:mustUnderstand="true">"#);
        for o in options {
            let comply = if o.must_comply { r#" MustComply="true""# } else { "" };
            let _ = write!(x, r#"<wsman:Option Name="{}"{comply}>{}</wsman:Option>"#, esc(o.name), esc(o.value));
        }
        x.push_str("</wsman:OptionSet>");
    }
    x.push_str("</s:Header><s:Body>");
    x.push_str(body);
    x.push_str("</s:Body></s:Envelope>");
    (message_id, x)
}

/// Create: opens a shell (for PSRP, the runspace pool). `shell_id` is the RunspacePool id;
/// `creation_xml` holds the SESSION_CAPABILITY and INIT_RUNSPACEPOOL fragments.
pub fn create_shell(
    ctx: &RequestContext,
    shell_id: Uuid,
    creation_xml: &[u8],
    idle_timeout: Option<Duration>,
) -> (Uuid, String) {
    create_named_shell(ctx, shell_id, None, creation_xml, idle_timeout)
}

/// [`create_shell`] with a shell `Name` (an attribute of rsp:Shell, as PowerShell sends it), which
/// the server reports back when the user's shells are enumerated: the way a client recognises its
/// own shells later.
pub fn create_named_shell(
    ctx: &RequestContext,
    shell_id: Uuid,
    name: Option<&str>,
    creation_xml: &[u8],
    idle_timeout: Option<Duration>,
) -> (Uuid, String) {
    let mut body = format!(r#"<rsp:Shell ShellId="{}""#, upper(shell_id));
    if let Some(name) = name {
        let _ = write!(body, r#" Name="{}""#, esc(name));
    }
    body.push('>');
    if let Some(idle) = idle_timeout {
        let _ = write!(body, "<rsp:IdleTimeOut>{}</rsp:IdleTimeOut>", format_duration(idle));
    }
    let _ = write!(
        body,
        concat!(
            "<rsp:InputStreams>stdin pr</rsp:InputStreams><rsp:OutputStreams>stdout</rsp:OutputStreams>",
            r#"<creationXml xmlns="{}">{}</creationXml></rsp:Shell>"#
        ),
        ns::POWERSHELL,
        B64.encode(creation_xml)
    );
    let options = [WsOption { name: "protocolversion", value: "2.3", must_comply: true }];
    request(ctx, action::CREATE, None, &options, &body)
}

/// Command: starts a command (for PSRP, a pipeline) in the shell. `command_id` is the
/// PowerShell pipeline id; `arguments` holds the CREATE_PIPELINE fragments.
pub fn command(ctx: &RequestContext, shell_id: &str, command_id: Uuid, arguments: &[u8]) -> (Uuid, String) {
    let body = format!(
        r#"<rsp:CommandLine CommandId="{}"><rsp:Command></rsp:Command><rsp:Arguments>{}</rsp:Arguments></rsp:CommandLine>"#,
        upper(command_id),
        B64.encode(arguments)
    );
    let options = [WsOption { name: "WINRS_SKIP_CMD_SHELL", value: "False", must_comply: false }];
    request(ctx, action::COMMAND, Some(shell_id), &options, &body)
}

/// Send: input on `stream` (`"stdin"` for pipeline input, `"pr"` for PSRP messages to the pool
/// or a pipeline), for the pool when `command_id` is None.
pub fn send(
    ctx: &RequestContext,
    shell_id: &str,
    command_id: Option<&str>,
    stream: &str,
    data: &[u8],
) -> (Uuid, String) {
    let mut body = format!(r#"<rsp:Send><rsp:Stream Name="{}""#, esc(stream));
    if let Some(cid) = command_id {
        let _ = write!(body, r#" CommandId="{}""#, esc(cid));
    }
    let _ = write!(body, ">{}</rsp:Stream></rsp:Send>", B64.encode(data));
    request(ctx, action::SEND, Some(shell_id), &[], &body)
}

/// Receive: waits (up to the operation timeout) for output of the pool (`command_id` None) or a
/// command, on the `stdout` stream.
pub fn receive(ctx: &RequestContext, shell_id: &str, command_id: Option<&str>) -> (Uuid, String) {
    let body = match command_id {
        Some(cid) => format!(
            r#"<rsp:Receive><rsp:DesiredStream CommandId="{}">stdout</rsp:DesiredStream></rsp:Receive>"#,
            esc(cid)
        ),
        None => "<rsp:Receive><rsp:DesiredStream>stdout</rsp:DesiredStream></rsp:Receive>".to_string(),
    };
    let options = [WsOption { name: "WSMAN_CMDSHELL_OPTION_KEEPALIVE", value: "True", must_comply: false }];
    request(ctx, action::RECEIVE, Some(shell_id), &options, &body)
}

/// Signal: sends `code` ([`SIGNAL_TERMINATE`], [`SIGNAL_PS_CTRL_C`]) to a command.
pub fn signal(ctx: &RequestContext, shell_id: &str, command_id: &str, code: &str) -> (Uuid, String) {
    let body =
        format!(r#"<rsp:Signal CommandId="{}"><rsp:Code>{}</rsp:Code></rsp:Signal>"#, esc(command_id), esc(code));
    request(ctx, action::SIGNAL, Some(shell_id), &[], &body)
}

/// Delete: closes the shell and releases its quota.
pub fn delete(ctx: &RequestContext, shell_id: &str) -> (Uuid, String) {
    request(ctx, action::DELETE, Some(shell_id), &[], "")
}

/// Delete of a shell found by enumeration: the ResourceURI is the shell's own (its
/// `ShellInfo::resource_uri`), which may belong to another configuration than `ctx`'s.
pub fn delete_with_resource_uri(ctx: &RequestContext, resource_uri: &str, shell_id: &str) -> (Uuid, String) {
    request_with_uri(ctx, resource_uri, action::DELETE, Some(shell_id), &[], "")
}

/// Enumerate the user's shells on [`SHELL_RESOURCE_URI`] (whatever `ctx.resource_uri` says), with
/// the first batch of at most `max_elements` returned at once (OptimizeEnumeration).
pub fn enumerate_shells(ctx: &RequestContext, max_elements: u32) -> (Uuid, String) {
    let body = format!(
        "<wsen:Enumerate><wsman:OptimizeEnumeration/><wsman:MaxElements>{max_elements}</wsman:MaxElements></wsen:Enumerate>"
    );
    request_with_uri(ctx, SHELL_RESOURCE_URI, action::ENUMERATE, None, &[], &body)
}

/// Pull the next batch of an enumeration started with [`enumerate_shells`].
pub fn pull_shells(ctx: &RequestContext, enumeration_context: &str, max_elements: u32) -> (Uuid, String) {
    let body = format!(
        "<wsen:Pull><wsen:EnumerationContext>{}</wsen:EnumerationContext><wsen:MaxElements>{max_elements}</wsen:MaxElements></wsen:Pull>",
        esc(enumeration_context)
    );
    request_with_uri(ctx, SHELL_RESOURCE_URI, action::PULL, None, &[], &body)
}

#[cfg(test)]
mod tests {
    use super::super::xml;
    use super::*;

    fn ctx() -> RequestContext {
        RequestContext {
            to: "https://ps.example.com/powershell-liveid?DelegatedOrg=contoso.onmicrosoft.com&x=1".into(),
            resource_uri: powershell_resource_uri("Microsoft.Exchange"),
            max_envelope_size: 512_000,
            operation_timeout: Duration::from_secs(20),
            session_id: Uuid::parse_str("11111111-2222-3333-4444-555555555555").unwrap(),
            locale: "en-US".into(),
        }
    }

    fn header_text(doc: &xml::Element, ns_uri: &str, local: &str) -> String {
        doc.path(&[(ns::SOAP, "Header"), (ns_uri, local)]).unwrap().own_text()
    }

    #[test]
    fn header_carries_every_field() {
        let shell = Uuid::new_v4();
        let (mid, body) = create_shell(&ctx(), shell, b"caps", Some(Duration::from_secs(600)));
        let doc = xml::parse(&body).unwrap();
        assert!(doc.is(ns::SOAP, "Envelope"));
        assert_eq!(header_text(&doc, ns::ADDRESSING, "Action"), action::CREATE);
        assert_eq!(header_text(&doc, ns::ADDRESSING, "To"), ctx().to);
        assert_eq!(header_text(&doc, ns::ADDRESSING, "MessageID"), format!("uuid:{}", upper(mid)));
        assert!(header_text(&doc, ns::ADDRESSING, "MessageID").chars().skip(5).all(|c| !c.is_ascii_lowercase()));
        assert_eq!(
            doc.path(&[(ns::SOAP, "Header"), (ns::ADDRESSING, "ReplyTo"), (ns::ADDRESSING, "Address")])
                .unwrap()
                .own_text(),
            ANONYMOUS
        );
        assert_eq!(
            header_text(&doc, ns::WSMAN, "ResourceURI"),
            "http://schemas.microsoft.com/powershell/Microsoft.Exchange"
        );
        let max = doc.path(&[(ns::SOAP, "Header"), (ns::WSMAN, "MaxEnvelopeSize")]).unwrap();
        assert_eq!(max.own_text(), "512000");
        assert_eq!(max.attr("mustUnderstand"), Some("true"));
        assert_eq!(header_text(&doc, ns::WSMAN, "OperationTimeout"), "PT20S");
        let locale = doc.path(&[(ns::SOAP, "Header"), (ns::WSMAN, "Locale")]).unwrap();
        assert_eq!(locale.attrs.iter().find(|a| a.local == "lang").unwrap().ns.as_deref(), Some(ns::XML));
        assert_eq!(locale.attr("lang"), Some("en-US"));
        assert_eq!(locale.attr("mustUnderstand"), Some("false"));
        assert!(doc.path(&[(ns::SOAP, "Header"), (ns::WSMV, "DataLocale")]).is_some());
        assert_eq!(header_text(&doc, ns::WSMV, "SessionId"), "uuid:11111111-2222-3333-4444-555555555555");
        let opt = doc.path(&[(ns::SOAP, "Header"), (ns::WSMAN, "OptionSet"), (ns::WSMAN, "Option")]).unwrap();
        assert_eq!(
            (opt.attr("Name"), opt.attr("MustComply"), opt.own_text().as_str()),
            (Some("protocolversion"), Some("true"), "2.3")
        );
        assert!(doc.path(&[(ns::SOAP, "Header"), (ns::WSMAN, "SelectorSet")]).is_none());

        let shell_el = doc.path(&[(ns::SOAP, "Body"), (ns::SHELL, "Shell")]).unwrap();
        assert_eq!(shell_el.attr("ShellId"), Some(upper(shell).as_str()));
        assert_eq!(shell_el.child(ns::SHELL, "InputStreams").unwrap().own_text(), "stdin pr");
        assert_eq!(shell_el.child(ns::SHELL, "OutputStreams").unwrap().own_text(), "stdout");
        assert_eq!(shell_el.child(ns::SHELL, "IdleTimeOut").unwrap().own_text(), "PT600S");
        let cx = shell_el.child(ns::POWERSHELL, "creationXml").unwrap();
        assert_eq!(cx.ns.as_deref(), Some(ns::POWERSHELL));
        assert_eq!(cx.own_text(), B64.encode(b"caps"));
    }

    #[test]
    fn shell_operations_carry_the_selector() {
        let c = ctx();
        let cid = Uuid::new_v4();
        let bodies = [
            command(&c, "SHELL-1", cid, b"args").1,
            send(&c, "SHELL-1", Some("CMD"), "pr", b"x").1,
            receive(&c, "SHELL-1", None).1,
            signal(&c, "SHELL-1", "CMD", SIGNAL_PS_CTRL_C).1,
            delete(&c, "SHELL-1").1,
        ];
        for body in bodies {
            let doc = xml::parse(&body).unwrap();
            let sel = doc.path(&[(ns::SOAP, "Header"), (ns::WSMAN, "SelectorSet"), (ns::WSMAN, "Selector")]).unwrap();
            assert_eq!((sel.attr("Name"), sel.own_text().as_str()), (Some("ShellId"), "SHELL-1"));
        }
    }

    #[test]
    fn enumerate_uses_the_shell_resource_uri() {
        let (_, body) = enumerate_shells(&ctx(), 100);
        let doc = xml::parse(&body).unwrap();
        assert_eq!(header_text(&doc, ns::WSMAN, "ResourceURI"), SHELL_RESOURCE_URI);
        let en = doc.path(&[(ns::SOAP, "Body"), (ns::ENUMERATION, "Enumerate")]).unwrap();
        assert!(en.child(ns::WSMAN, "OptimizeEnumeration").is_some());
        assert_eq!(en.child(ns::WSMAN, "MaxElements").unwrap().own_text(), "100");
        let (_, body) = pull_shells(&ctx(), "uuid:ctx<&>", 5);
        let doc = xml::parse(&body).unwrap();
        let pull = doc.path(&[(ns::SOAP, "Body"), (ns::ENUMERATION, "Pull")]).unwrap();
        assert_eq!(pull.child(ns::ENUMERATION, "EnumerationContext").unwrap().own_text(), "uuid:ctx<&>");
    }

    #[test]
    fn payload_size_leaves_room_for_the_envelope() {
        let mut c = ctx();
        c.max_envelope_size = 153_600;
        let max = c.max_payload_size();
        assert!(max > 100_000 && max < 115_200, "{max}");
        let (_, body) = send(&c, &upper(Uuid::new_v4()), Some(&upper(Uuid::new_v4())), "stdin", &vec![7u8; max]);
        assert!(body.len() <= 153_600);
        c.max_envelope_size = 100;
        assert_eq!(c.max_payload_size(), 0);
    }
}
