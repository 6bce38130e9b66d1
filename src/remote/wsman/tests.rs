//! Both directions: client-built requests parse with the server parser, server-built responses
//! with the client parsers; and no parser panics on garbage.

use std::time::Duration;

use proptest::prelude::*;
use uuid::Uuid;

use super::envelope::{self, RequestContext};
use super::response::{self, CommandState, ShellInfo, StreamData};
use super::server::{self, Action, Request, RequestBody};
use super::*;
use crate::remote::FaultClass;

fn ctx() -> RequestContext {
    let mut c = RequestContext::powershell(
        "https://outlook.office365.com/powershell-liveid?DelegatedOrg=contoso.onmicrosoft.com&BasicAuthToOAuthConversion=true",
        "Microsoft.Exchange",
    );
    c.max_envelope_size = 512_000;
    c.operation_timeout = Duration::from_millis(20_500);
    c
}

fn parsed((id, body): (Uuid, String)) -> (Uuid, Request) {
    let req = server::parse_request(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(req.message_id, format!("uuid:{}", upper(id)));
    (id, req)
}

#[test]
fn client_requests_parse_on_the_server() {
    let c = ctx();
    let rpid = Uuid::new_v4();
    let (_, create) = parsed(envelope::create_shell(&c, rpid, b"\x00\x01caps", Some(Duration::from_secs(900))));
    assert_eq!(create.action, Action::Create);
    assert_eq!(create.to.as_deref(), Some(c.to.as_str()));
    assert_eq!(create.resource_uri.as_deref(), Some("http://schemas.microsoft.com/powershell/Microsoft.Exchange"));
    assert_eq!(create.max_envelope_size, Some(512_000));
    assert_eq!(create.operation_timeout, Some(Duration::from_millis(20_500)));
    assert_eq!(create.session_id, Some(format!("uuid:{}", upper(c.session_id))));
    assert_eq!(create.locale.as_deref(), Some("en-US"));
    assert_eq!(create.selector_shell_id, None);
    assert_eq!(create.option("ProtocolVersion"), Some("2.3"));
    assert_eq!(
        create.body,
        RequestBody::CreateShell {
            shell_id_attr: Some(upper(rpid)),
            name: None,
            creation_xml: Some(b"\x00\x01caps".to_vec()),
            input_streams: vec!["stdin".into(), "pr".into()],
            output_streams: vec!["stdout".into()],
            idle_timeout: Some(Duration::from_secs(900)),
        }
    );

    let pid = Uuid::new_v4();
    let (_, cmd) = parsed(envelope::command(&c, "SHELL", pid, b"pipeline"));
    assert_eq!(cmd.action, Action::Command);
    assert_eq!(cmd.selector_shell_id.as_deref(), Some("SHELL"));
    assert_eq!(cmd.options, vec![("WINRS_SKIP_CMD_SHELL".to_string(), "False".to_string())]);
    assert_eq!(cmd.body, RequestBody::Command { command_id: Some(upper(pid)), arguments: vec![b"pipeline".to_vec()] });

    let (_, send) = parsed(envelope::send(&c, "SHELL", Some("CMD"), "stdin", b"input"));
    assert_eq!(
        send.body,
        RequestBody::Send { command_id: Some("CMD".into()), stream: "stdin".into(), data: b"input".to_vec() }
    );
    let (_, send) = parsed(envelope::send(&c, "SHELL", None, "pr", b""));
    assert_eq!(send.body, RequestBody::Send { command_id: None, stream: "pr".into(), data: vec![] });

    let (_, recv) = parsed(envelope::receive(&c, "SHELL", Some("CMD")));
    assert_eq!(recv.option("WSMAN_CMDSHELL_OPTION_KEEPALIVE"), Some("True"));
    assert_eq!(recv.body, RequestBody::Receive { command_id: Some("CMD".into()) });
    let (_, recv) = parsed(envelope::receive(&c, "SHELL", None));
    assert_eq!(recv.body, RequestBody::Receive { command_id: None });

    let (_, sig) = parsed(envelope::signal(&c, "SHELL", "CMD", SIGNAL_TERMINATE));
    assert_eq!(sig.body, RequestBody::Signal { command_id: Some("CMD".into()), code: SIGNAL_TERMINATE.into() });

    let (_, del) = parsed(envelope::delete(&c, "SHELL"));
    assert_eq!((del.action.clone(), del.body.clone()), (Action::Delete, RequestBody::Delete));
    let (_, del) =
        parsed(envelope::delete_with_resource_uri(&c, "http://schemas.microsoft.com/powershell/Other", "S2"));
    assert_eq!(del.resource_uri.as_deref(), Some("http://schemas.microsoft.com/powershell/Other"));
    assert_eq!(del.selector_shell_id.as_deref(), Some("S2"));

    let (_, en) = parsed(envelope::enumerate_shells(&c, 50));
    assert_eq!(en.resource_uri.as_deref(), Some(SHELL_RESOURCE_URI));
    assert_eq!(en.body, RequestBody::Enumerate { optimize: true, max_elements: Some(50) });
    let (_, pull) = parsed(envelope::pull_shells(&c, "uuid:CTX", 20));
    assert_eq!(pull.body, RequestBody::Pull { context: "uuid:CTX".into(), max_elements: Some(20) });

    let (_, other) = parsed(envelope::request(
        &c,
        "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Disconnect",
        Some("SHELL"),
        &[],
        "<rsp:Disconnect/>",
    ));
    assert_eq!(
        other.action,
        Action::Other("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Disconnect".into())
    );
    assert_eq!(other.body, RequestBody::Other);
}

fn shell(id: &str) -> ShellInfo {
    ShellInfo {
        shell_id: id.into(),
        name: Some("Runspace1".into()),
        resource_uri: Some("http://schemas.microsoft.com/powershell/Microsoft.Exchange".into()),
        owner: Some("admin@contoso.onmicrosoft.com".into()),
        client_ip: Some("203.0.113.9".into()),
        process_id: Some(4242),
        idle_timeout: Some(Duration::from_millis(900_250)),
        input_streams: vec!["stdin".into(), "pr".into()],
        output_streams: vec!["stdout".into()],
        state: Some("Connected".into()),
        shell_run_time: Some(Duration::from_secs(3_723)),
        shell_inactivity: Some(Duration::from_secs(61)),
    }
}

#[test]
fn server_responses_parse_on_the_client() {
    let c = ctx();
    // Each request is parsed by the server, answered with its MessageID, and the answer parsed
    // by the client against the id the builder returned.
    let (id, req) = parsed(envelope::create_shell(&c, Uuid::new_v4(), b"x", None));
    let s = shell("5A416EA5-FB2A-4AAA-91BF-77BF51043386");
    let body = server::create_response(&req.message_id, &c.to, &s);
    let created = response::parse_create_response(&body, id).unwrap();
    assert_eq!(created.shell_id, s.shell_id);
    assert_eq!(created.resource_uri, s.resource_uri);
    assert_eq!(created.shell.as_ref(), Some(&s));

    let (id, req) = parsed(envelope::command(&c, &created.shell_id, Uuid::new_v4(), b"p"));
    let cid = match &req.body {
        RequestBody::Command { command_id, .. } => command_id.clone().unwrap(),
        b => panic!("{b:?}"),
    };
    let body = server::command_response(&req.message_id, &cid);
    assert_eq!(response::parse_command_response(&body, id).unwrap().command_id, cid);

    let (id, req) = parsed(envelope::receive(&c, &created.shell_id, Some(&cid)));
    let streams = vec![
        StreamData { name: "stdout".into(), command_id: Some(cid.clone()), data: (0..=255).collect(), end: false },
        StreamData { name: "stdout".into(), command_id: Some(cid.clone()), data: vec![], end: true },
    ];
    let state = CommandState { command_id: Some(cid.clone()), state: COMMAND_STATE_DONE.into(), exit_code: Some(0) };
    let body = server::receive_response(&req.message_id, &streams, Some(&state));
    let got = response::parse_receive_response(&body, id).unwrap();
    assert_eq!(got.streams, streams);
    assert_eq!(got.command_state, Some(state));
    let running = CommandState { command_id: None, state: COMMAND_STATE_RUNNING.into(), exit_code: None };
    let body = server::receive_response(&req.message_id, &[], Some(&running));
    let got = response::parse_receive_response(&body, id).unwrap();
    assert!(got.command_state.unwrap().is_running());

    for (build, reply) in [
        (envelope::send(&c, "S", None, "pr", b"d"), server::send_response as fn(&str) -> String),
        (envelope::signal(&c, "S", "C", SIGNAL_PS_CTRL_C), server::signal_response),
        (envelope::delete(&c, "S"), server::delete_response),
    ] {
        let (id, req) = parsed(build);
        let header = response::parse_empty_response(&reply(&req.message_id), id).unwrap();
        assert_eq!(header.relates_to.as_deref(), Some(req.message_id.as_str()));
        // The same reply does not answer another request.
        assert!(matches!(
            response::parse_empty_response(&reply(&req.message_id), Uuid::new_v4()),
            Err(WsmanError::RelatesTo { .. })
        ));
    }

    let (id, req) = parsed(envelope::enumerate_shells(&c, 1));
    let body = server::enumerate_response(&req.message_id, Some("uuid:E1"), &[shell("A")], false);
    let en = response::parse_enumerate_response(&body, id).unwrap();
    assert_eq!(
        (en.items.clone(), en.context.as_deref(), en.end_of_sequence),
        (vec![shell("A")], Some("uuid:E1"), false)
    );
    let (id, req) = parsed(envelope::pull_shells(&c, "uuid:E1", 1));
    let body = server::pull_response(&req.message_id, None, &[shell("B")], true);
    let pull = response::parse_pull_response(&body, id).unwrap();
    assert_eq!((pull.items, pull.context, pull.end_of_sequence), (vec![shell("B")], None, true));
    let body = server::enumerate_response(&req.message_id, None, &[], true);
    assert!(response::parse_enumerate_response(&body, id).unwrap().end_of_sequence);
}

#[test]
fn server_faults_parse_on_the_client() {
    let c = ctx();
    let (id, req) = parsed(envelope::create_shell(&c, Uuid::new_v4(), b"x", None));
    let body = server::fault_response(Some(&req.message_id), &WsmanFault::user_shell_quota(Some("EXHMB01")));
    let err = response::parse_create_response(&body, id).unwrap_err();
    assert_eq!(err.class(500), FaultClass::UserShellQuotaExceeded);
    let f = err.fault().unwrap();
    assert_eq!(f.code, Some(2_150_859_173));
    assert_eq!(
        f.message,
        "The WS-Management service cannot process the request. The maximum number of concurrent shells for this user has been exceeded. Close existing shells or raise the quota for this user."
    );

    let (id, req) = parsed(envelope::receive(&c, "S", None));
    let body = server::fault_response(Some(&req.message_id), &WsmanFault::operation_timeout(None));
    let err = response::parse_receive_response(&body, id).unwrap_err();
    assert!(err.fault().unwrap().is_operation_timeout());

    let body = server::fault_response(None, &WsmanFault::shell_not_found("S", None));
    assert_eq!(response::parse_receive_response(&body, id).unwrap_err().class(500), FaultClass::SessionExpired);
}

/// Every parser, on one input: none may panic; the answer is irrelevant.
fn feed_all(input: &str) {
    let id = Uuid::new_v4();
    let _ = server::parse_request(input);
    let _ = WsmanFault::parse(input);
    let _ = response::parse_header(input);
    let _ = response::parse_empty_response(input, id);
    let _ = response::parse_create_response(input, id);
    let _ = response::parse_command_response(input, id);
    let _ = response::parse_receive_response(input, id);
    let _ = response::parse_enumerate_response(input, id);
    let _ = response::parse_pull_response(input, id);
    let _ = parse_duration(input);
    let _ = parse_uuid_urn(input);
}

fn samples() -> Vec<String> {
    let c = ctx();
    let s = shell("S");
    let cs = CommandState { command_id: Some("C".into()), state: COMMAND_STATE_DONE.into(), exit_code: Some(1) };
    let sd = StreamData { name: "stdout".into(), command_id: None, data: b"hello".to_vec(), end: true };
    vec![
        envelope::create_shell(&c, Uuid::nil(), b"caps", Some(Duration::from_secs(60))).1,
        envelope::command(&c, "S", Uuid::nil(), b"args").1,
        envelope::send(&c, "S", Some("C"), "stdin", b"in").1,
        envelope::receive(&c, "S", Some("C")).1,
        envelope::signal(&c, "S", "C", SIGNAL_TERMINATE).1,
        envelope::enumerate_shells(&c, 5).1,
        envelope::pull_shells(&c, "ctx", 5).1,
        server::create_response("uuid:1", "http://h/wsman", &s),
        server::receive_response("uuid:1", &[sd], Some(&cs)),
        server::enumerate_response("uuid:1", Some("ctx"), std::slice::from_ref(&s), false),
        server::pull_response("uuid:1", None, &[s], true),
        WsmanFault::user_shell_quota(Some("m")).to_envelope(Some("uuid:1")),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Delete(usize, usize),
    Insert(usize, String),
    Flip(usize, u8),
}

fn apply(mut s: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let len = s.len().max(1);
    match m {
        Mutation::Truncate(at) => s.truncate(at % len),
        Mutation::Delete(at, n) => {
            let at = at % len;
            let end = (at + n).min(s.len());
            if at < end {
                s.drain(at..end);
            }
        }
        Mutation::Insert(at, text) => {
            let at = (at % len).min(s.len());
            s.splice(at..at, text.bytes());
        }
        Mutation::Flip(at, byte) => {
            if !s.is_empty() {
                let at = at % s.len();
                s[at] = *byte;
            }
        }
    }
    s
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let snippet = prop_oneof![
        Just("<".to_string()),
        Just(">".to_string()),
        Just("</s:Body>".to_string()),
        Just("<s:Fault>".to_string()),
        Just("&amp;".to_string()),
        Just("&#0;".to_string()),
        Just("\"".to_string()),
        Just("xmlns:s=\"urn:x\" ".to_string()),
        Just("<![CDATA[".to_string()),
        Just("é€\u{0}".to_string()),
        "[<>/:a-zA-Z0-9=\" ]{0,12}",
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), snippet).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Flip(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(input in "\\PC{0,200}") {
        feed_all(&input);
    }

    #[test]
    fn xmlish_garbage_never_panics(input in "(<[a-z:]{0,6}( [a-z:]{1,5}=\"[^\"<]{0,5}\")?/?>|</[a-z:]{0,6}>|[a-zA-Z0-9+/= &;#]{0,8}){0,30}") {
        feed_all(&input);
    }

    #[test]
    fn mutated_envelopes_never_panic(which in 0usize..12, muts in proptest::collection::vec(mutation(), 1..4)) {
        let mut bytes = samples()[which].clone().into_bytes();
        for m in &muts {
            bytes = apply(bytes, m);
        }
        feed_all(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn samples_are_well_formed() {
    for s in samples() {
        assert!(xml::parse(&s).is_ok(), "{s}");
    }
}

#[test]
fn shell_name_travels_as_an_attribute_and_parses_in_both_forms() {
    let c = ctx();
    let (_, req) = parsed(envelope::create_named_shell(&c, Uuid::new_v4(), Some("psbroker:<a&b>"), b"x", None));
    let RequestBody::CreateShell { name, .. } = req.body else { panic!("not a create") };
    assert_eq!(name.as_deref(), Some("psbroker:<a&b>"));
    // pypsrp writes the name as an rsp:Name child element.
    let (_, body) = envelope::create_shell(&c, Uuid::new_v4(), b"x", None);
    let body = body.replace("<rsp:InputStreams>", "<rsp:Name> other </rsp:Name><rsp:InputStreams>");
    let RequestBody::CreateShell { name, .. } = server::parse_request(&body).unwrap().body else { panic!() };
    assert_eq!(name.as_deref(), Some("other"));
}
