use super::messages::*;
use super::*;
use crate::remote::clixml;
use crate::remote::fault::ErrorRecord;
use crate::remote::value::{PsObject, PsValue};
use proptest::prelude::*;
use uuid::Uuid;

fn rpid() -> Uuid {
    Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap()
}
fn pid() -> Uuid {
    Uuid::parse_str("0f0e0d0c-0b0a-0908-0706-050403020100").unwrap()
}

/// The client path end to end: message → fragments → bytes → defragmenter → message → parse.
fn through_the_wire(msg: &Message, max_fragment: usize) -> Message {
    let mut f = Fragmenter::new(max_fragment).unwrap();
    let bytes: Vec<u8> = f.fragment(&msg.encode()).iter().flat_map(Fragment::encode).collect();
    let mut d = Defragmenter::new();
    let mut out = d.push(&bytes).unwrap();
    assert_eq!(out.len(), 1);
    assert!(d.is_idle());
    Message::decode(&out.remove(0)).unwrap()
}

#[test]
fn fragment_header_is_big_endian() {
    let f = Fragment { object_id: 1, fragment_id: 2, start: true, end: true, data: b"ab".to_vec() };
    let bytes = f.encode();
    assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 3, 0, 0, 0, 2, b'a', b'b']);
    assert_eq!(Fragment::decode(&bytes, 100).unwrap(), Some((f, 23)));
    assert_eq!(Fragment::decode(&bytes[..22], 100).unwrap(), None);
    assert_eq!(Fragment::decode(&bytes[..3], 100).unwrap(), None);
    assert!(matches!(Fragment::decode(&bytes, 1), Err(PsrpError::TooLarge(_))));
}

#[test]
fn fragmenter_respects_the_size_and_numbers_fragments() {
    let mut f = Fragmenter::new(64).unwrap();
    let message: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let frags = f.fragment(&message);
    assert_eq!(frags.len(), 1000usize.div_ceil(64 - HEADER_LEN));
    for (i, fr) in frags.iter().enumerate() {
        assert!(fr.encode().len() <= 64);
        assert_eq!((fr.object_id, fr.fragment_id), (1, i as u64));
        assert_eq!(fr.start, i == 0);
        assert_eq!(fr.end, i + 1 == frags.len());
    }
    assert_eq!(frags.iter().flat_map(|f| f.data.clone()).collect::<Vec<_>>(), message);
    assert_eq!(f.fragment(b"x")[0].object_id, 2);
    let empty = f.fragment(b"");
    assert_eq!(empty.len(), 1);
    assert!(empty[0].start && empty[0].end && empty[0].data.is_empty());
    assert!(Fragmenter::new(HEADER_LEN).is_err());
    assert!(Fragmenter::new(HEADER_LEN + 1).is_ok());
}

#[test]
fn defragmenter_reassembles_interleaved_objects_from_any_slicing() {
    let mut f = Fragmenter::new(30).unwrap();
    let a: Vec<u8> = b"first message, long enough to need several fragments".to_vec();
    let b: Vec<u8> = b"second message, also spanning fragments".to_vec();
    let fa = f.fragment(&a);
    let fb = f.fragment(&b);
    // Interleave: a0 b0 a1 b1 ...
    let mut order = Vec::new();
    for i in 0..fa.len().max(fb.len()) {
        order.extend(fa.get(i).cloned());
        order.extend(fb.get(i).cloned());
    }
    let stream: Vec<u8> = order.iter().flat_map(Fragment::encode).collect();
    for chunk in [1, 2, 7, 21, 22, 1000] {
        let mut d = Defragmenter::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            got.extend(d.push(piece).unwrap());
        }
        let mut expected = vec![a.clone(), b.clone()];
        if fa.len() > fb.len() {
            expected.reverse();
        }
        assert_eq!(got, expected, "chunk {chunk}");
        assert!(d.is_idle());
        assert_eq!(d.buffered_bytes(), 0);
    }
}

#[test]
fn defragmenter_refuses_bad_streams() {
    let frag = |object_id, fragment_id, start, end, len: usize| Fragment {
        object_id,
        fragment_id,
        start,
        end,
        data: vec![7; len],
    };
    let fail = |frags: Vec<Fragment>| {
        let mut d = Defragmenter::with_limits(100, 250, 300);
        let bytes: Vec<u8> = frags.iter().flat_map(Fragment::encode).collect();
        d.push(&bytes).err()
    };
    assert!(matches!(fail(vec![frag(1, 1, false, true, 3)]), Some(PsrpError::Fragment(_))), "no start");
    assert!(matches!(fail(vec![frag(1, 1, true, false, 3)]), Some(PsrpError::Fragment(_))), "start id not 0");
    assert!(matches!(fail(vec![frag(1, 0, true, false, 3), frag(1, 0, true, false, 3)]), Some(PsrpError::Fragment(_))));
    assert!(matches!(fail(vec![frag(1, 0, true, false, 3), frag(1, 2, false, true, 3)]), Some(PsrpError::Fragment(_))));
    assert!(matches!(
        fail(vec![frag(1, 0, true, false, 3), frag(1, 1, false, false, 3), frag(1, 1, false, true, 3)]),
        Some(PsrpError::Fragment(_))
    ));
    assert!(matches!(fail(vec![frag(1, 0, true, true, 101)]), Some(PsrpError::TooLarge(_))), "blob");
    let big: Vec<Fragment> = (0..3).map(|i| frag(1, i, i == 0, i == 2, 100)).collect();
    assert!(matches!(fail(big), Some(PsrpError::TooLarge(_))), "message");
    let many: Vec<Fragment> = (1..=4).map(|o| frag(o, 0, true, false, 90)).collect();
    assert!(matches!(fail(many), Some(PsrpError::TooLarge(_))), "buffered");
    // Unknown flag bits.
    let mut bytes = frag(1, 0, true, true, 1).encode();
    bytes[16] = 0x4;
    assert!(Defragmenter::new().push(&bytes).is_err());
    // An oversized blob is refused from its header, before its bytes arrive.
    let header = frag(1, 0, true, true, 0).encode();
    let mut huge = header.clone();
    huge[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(Defragmenter::new().push(&huge), Err(PsrpError::TooLarge(_))));
}

#[test]
fn message_header_is_little_endian_with_dotnet_guids() {
    let msg = Message::new(Destination::Server, MessageType::SessionCapability, rpid(), Uuid::nil(), b"<S />".to_vec());
    let bytes = msg.encode();
    assert_eq!(&bytes[0..4], &[2, 0, 0, 0]);
    assert_eq!(&bytes[4..8], &[0x02, 0x00, 0x01, 0x00]);
    // .NET GUID layout: first three groups little-endian.
    assert_eq!(
        &bytes[8..24],
        &[0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
    );
    assert_eq!(&bytes[24..40], &[0; 16]);
    assert_eq!(Message::decode(&bytes).unwrap(), msg);

    let mut with_bom = bytes[..40].to_vec();
    with_bom.extend_from_slice(b"\xEF\xBB\xBF<S>x</S>");
    assert_eq!(Message::decode(&with_bom).unwrap().value().unwrap(), PsValue::String("x".into()));

    let mut unknown = bytes.clone();
    unknown[4..8].copy_from_slice(&0x0009_9999u32.to_le_bytes());
    let m = Message::decode(&unknown).unwrap();
    assert_eq!(m.message_type, MessageType::Unknown(0x0009_9999));
    assert_eq!(Message::decode(&m.encode()).unwrap(), m);

    assert!(Message::decode(&bytes[..39]).is_err());
    let mut bad_dest = bytes;
    bad_dest[0] = 3;
    assert!(Message::decode(&bad_dest).is_err());
}

#[test]
fn message_types_map_both_ways() {
    for v in [0x0001_0002, 0x0002_100B, 0x0004_1004, 0x0004_1011, 0x0004_1101, 0x0002_1101] {
        let t = MessageType::from_u32(v);
        assert!(!matches!(t, MessageType::Unknown(_)), "{v:#x}");
        assert_eq!(t.as_u32(), v);
    }
    assert_eq!(MessageType::from_u32(0x0004_1005), MessageType::ErrorRecord);
    assert_eq!(MessageType::from_u32(0x0002_1005), MessageType::RunspacePoolState);
}

fn parse_client(m: &Message) -> ClientMessage {
    ClientMessage::parse(&through_the_wire(m, 64)).unwrap()
}
fn parse_server(m: &Message) -> ServerMessage {
    ServerMessage::parse(&through_the_wire(m, 64)).unwrap()
}

#[test]
fn create_pipeline_parses_back_to_the_same_command_and_parameters() {
    let parameters: Vec<(String, PsValue)> = vec![
        ("Identity".into(), PsValue::String("bob@contoso.com; Remove-Mailbox -Confirm:$false".into())),
        ("Filter".into(), PsValue::String("Name -like '$(whoami)*' -and `\"x`\" _x000A_\r\n".into())),
        ("ResultSize".into(), PsValue::Int32(10)),
        ("Big".into(), PsValue::Int64(5_000_000_000)),
        ("Force".into(), PsValue::Bool(true)),
        ("Nothing".into(), PsValue::Null),
        ("Members".into(), PsValue::List(vec!["a".into(), "b".into()])),
        ("Changes".into(), PsValue::Dict(vec![("Add".into(), PsValue::List(vec!["x@y".into()]))])),
        ("Id".into(), PsValue::Guid(pid())),
        ("Ünïcødé 😀".into(), "värde".into()),
    ];
    let msg = create_pipeline(rpid(), pid(), "Get-Mailbox", &parameters);
    assert_eq!(
        (msg.destination, msg.message_type, msg.rpid, msg.pid),
        (Destination::Server, MessageType::CreatePipeline, rpid(), pid())
    );
    let ClientMessage::CreatePipeline(cp) = parse_client(&msg) else { panic!() };
    assert_eq!(cp, CreatePipeline { command: "Get-Mailbox".into(), is_script: false, parameters, no_input: true });
}

#[test]
fn create_pipeline_has_the_shape_powershell_expects() {
    let msg = create_pipeline(rpid(), pid(), "Get-User", &[("Identity".into(), "x".into())]);
    let xml = String::from_utf8(msg.data.clone()).unwrap();
    for needle in [
        r#"<Obj N="PowerShell" RefId="1"><MS><Obj N="Cmds" RefId="2"><TN RefId="0"><T>System.Collections.Generic.List`1[[System.Management.Automation.PSObject, System.Management.Automation, Version=1.0.0.0, Culture=neutral, PublicKeyToken=31bf3856ad364e35]]</T><T>System.Object</T></TN><LST>"#,
        r#"<S N="Cmd">Get-User</S><B N="IsScript">false</B><Nil N="UseLocalScope" />"#,
        r#"<Obj N="MergeMyResult" RefId="4"><TN RefId="1"><T>System.Management.Automation.Runspaces.PipelineResultTypes</T><T>System.Enum</T><T>System.ValueType</T><T>System.Object</T></TN><ToString>None</ToString><I32>0</I32></Obj>"#,
        r#"<Obj N="MergeToResult" RefId="5"><TNRef RefId="1" /><ToString>None</ToString><I32>0</I32></Obj>"#,
        r#"<Obj N="Args" RefId="7"><TNRef RefId="0" /><LST><Obj RefId="8"><MS><S N="N">Identity</S><S N="V">x</S></MS></Obj></LST></Obj>"#,
        r#"<Obj N="MergeInformation""#,
        r#"<B N="IsNested">false</B><Nil N="History" /><B N="RedirectShellErrorOutputPipe">true</B></MS></Obj><B N="NoInput">true</B>"#,
        r#"<Obj N="ApartmentState""#,
        r#"<ToString>Unknown</ToString><I32>2</I32>"#,
        r#"<T>System.Management.Automation.RemoteStreamOptions</T>"#,
        r#"<B N="AddToHistory">false</B><Obj N="HostInfo""#,
        r#"<B N="_isHostNull">true</B><B N="_isHostUINull">true</B><B N="_isHostRawUINull">true</B><B N="_useRunspaceHost">true</B>"#,
    ] {
        assert!(xml.contains(needle), "missing {needle}\nin {xml}");
    }
}

#[test]
fn create_pipeline_parser_handles_extra_cmds_and_refuses_pipelines() {
    let cmd = |name: &str| {
        PsValue::Object(PsObject::default().with("Cmd", name).with("IsScript", false).with(
            "Args",
            PsValue::List(vec![PsValue::Object(PsObject::default().with("N", PsValue::Null).with("V", 1))]),
        ))
    };
    let body = |ps: PsObject| PsValue::Object(PsObject::default().with("PowerShell", PsValue::Object(ps)));
    let one = body(PsObject::default().with("Cmds", PsValue::List(vec![cmd("A")])).with(
        "ExtraCmds",
        PsValue::List(vec![PsValue::Object(PsObject::default().with("Cmds", PsValue::List(vec![cmd("B")])))]),
    ));
    let cp = CreatePipeline::from_value(&one).unwrap();
    assert_eq!(cp.command, "B");
    assert_eq!(cp.parameters, vec![(String::new(), PsValue::Int32(1))]);
    let two = body(PsObject::default().with("Cmds", PsValue::List(vec![cmd("A"), cmd("B")])));
    assert!(matches!(CreatePipeline::from_value(&two), Err(PsrpError::Content(_))));
    assert!(CreatePipeline::from_value(&PsValue::Int32(1)).is_err());
    assert!(CreatePipeline::from_value(&body(PsObject::default())).is_err());
}

#[test]
fn pool_opening_messages_round_trip() {
    let ClientMessage::SessionCapability(c) = parse_client(&client_session_capability(rpid())) else { panic!() };
    assert_eq!(c, SessionCapability::default());
    assert_eq!(
        (c.protocol_version.as_str(), c.ps_version.as_str(), c.serialization_version.as_str()),
        ("2.3", "2.0", "1.1.0.1")
    );
    let init = init_runspace_pool(rpid());
    let xml = String::from_utf8(init.data.clone()).unwrap();
    assert!(xml.contains("<ToString>Default</ToString><I32>0</I32>"), "{xml}");
    assert!(xml.contains(r#"<Nil N="ApplicationArguments" />"#), "{xml}");
    assert_eq!(
        parse_client(&init),
        ClientMessage::InitRunspacePool(InitRunspacePool { min_runspaces: 1, max_runspaces: 1 })
    );

    assert_eq!(
        parse_server(&server_session_capability(rpid())),
        ServerMessage::SessionCapability(SessionCapability::default())
    );
    let data =
        vec![("PSVersionTable".into(), PsValue::Dict(vec![("PSVersion".into(), PsValue::Version("5.1".into()))]))];
    assert_eq!(
        parse_server(&application_private_data(rpid(), &data)),
        ServerMessage::ApplicationPrivateData(PsValue::Dict(data))
    );
    assert_eq!(parse_server(&runspace_pool_init_data(rpid(), 1, 1)), ServerMessage::RunspacePoolInitData);
    assert_eq!(
        parse_server(&runspace_pool_state(rpid(), RunspacePoolState::Opened, None)),
        ServerMessage::RunspacePoolState { state: RunspacePoolState::Opened, error: None }
    );
    assert_eq!(
        parse_server(&runspace_availability(rpid(), 7, &PsValue::Bool(true))),
        ServerMessage::RunspaceAvailability { call_id: 7, response: PsValue::Bool(true) }
    );
    let ClientMessage::Other { message_type, .. } =
        ClientMessage::parse(&pipeline_output(rpid(), pid(), &PsValue::Null)).unwrap()
    else {
        panic!()
    };
    assert_eq!(message_type, MessageType::PipelineOutput);
}

#[test]
fn pipeline_messages_round_trip() {
    let record = ErrorRecord {
        message: "Couldn't find object \"bob\". Please make sure that it was spelled correctly.".into(),
        category: "ObjectNotFound".into(),
        fully_qualified_error_id: "[Server=X] 8A1B2C3D,Microsoft.Exchange.Management.RecipientTasks.GetMailbox".into(),
        target: Some("bob".into()),
    };
    let mailbox = PsValue::Object(
        PsObject::new(&[
            "Deserialized.Microsoft.Exchange.Data.Directory.Management.Mailbox",
            "Deserialized.System.Object",
        ])
        .with("Name", "bob")
        .with("ProhibitSendQuota", "50 GB (53,687,091,200 bytes)")
        .with("EmailAddresses", PsValue::List(vec!["SMTP:bob@contoso.com".into()])),
    );
    assert_eq!(parse_server(&pipeline_output(rpid(), pid(), &mailbox)), ServerMessage::PipelineOutput(mailbox));
    assert_eq!(parse_server(&error_record(rpid(), pid(), &record)), ServerMessage::ErrorRecord(record.clone()));
    assert_eq!(
        parse_server(&warning_record(rpid(), pid(), "careful <now> _x000A_")),
        ServerMessage::Warning("careful <now> _x000A_".into())
    );
    assert_eq!(
        parse_server(&informational_record(rpid(), pid(), InformationalStream::Verbose, "v")),
        ServerMessage::Verbose("v".into())
    );
    assert_eq!(
        parse_server(&informational_record(rpid(), pid(), InformationalStream::Debug, "d")),
        ServerMessage::Debug("d".into())
    );
    assert_eq!(parse_server(&information_record(rpid(), pid(), "info")), ServerMessage::Information("info".into()));
    assert_eq!(
        parse_server(&pipeline_state(rpid(), pid(), PipelineState::Completed, None)),
        ServerMessage::PipelineState { state: PipelineState::Completed, error: None }
    );
    assert_eq!(
        parse_server(&pipeline_state(rpid(), pid(), PipelineState::Failed, Some(&record))),
        ServerMessage::PipelineState { state: PipelineState::Failed, error: Some(record.clone()) }
    );
    assert_eq!(
        parse_server(&runspace_pool_state(rpid(), RunspacePoolState::Broken, Some(&record))),
        ServerMessage::RunspacePoolState { state: RunspacePoolState::Broken, error: Some(record) }
    );
}

#[test]
fn server_message_parsing_tolerates_other_shapes() {
    let msg = |t, body: &str| Message::new(Destination::Client, t, rpid(), pid(), body.as_bytes().to_vec());
    assert_eq!(
        ServerMessage::parse(&msg(MessageType::Warning, "<S>plain</S>")).unwrap(),
        ServerMessage::Warning("plain".into())
    );
    let host_info = r#"<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.InformationRecord</T></TN><ToString>hi</ToString><MS><Obj N="MessageData" RefId="1"><TN RefId="1"><T>System.Management.Automation.HostInformationMessage</T></TN><ToString>hi</ToString><Props><S N="Message">hello</S><B N="NoNewLine">false</B></Props></Obj></MS></Obj>"#;
    assert_eq!(
        ServerMessage::parse(&msg(MessageType::Information, host_info)).unwrap(),
        ServerMessage::Information("hello".into())
    );
    assert_eq!(
        ServerMessage::parse(&msg(
            MessageType::PipelineState,
            r#"<Obj RefId="0"><MS><I32 N="PipelineState">42</I32></MS></Obj>"#
        ))
        .unwrap(),
        ServerMessage::PipelineState { state: PipelineState::Unknown(42), error: None }
    );
    assert!(matches!(
        ServerMessage::parse(&msg(MessageType::Progress, "garbage")).unwrap(),
        ServerMessage::Other { .. }
    ));
    assert!(matches!(ServerMessage::parse(&msg(MessageType::PipelineState, "<S>x</S>")), Err(PsrpError::Content(_))));
    assert!(matches!(ServerMessage::parse(&msg(MessageType::PipelineOutput, "<S>x")), Err(PsrpError::Clixml(_))));
    assert!(matches!(
        ServerMessage::parse(&msg(MessageType::SessionCapability, r#"<Obj RefId="0"><MS /></Obj>"#)),
        Err(PsrpError::Content(_))
    ));
}

#[test]
fn states_map_both_ways() {
    for i in -1..12 {
        assert_eq!(RunspacePoolState::from_i32(i).as_i32(), i);
        assert_eq!(PipelineState::from_i32(i).as_i32(), i);
    }
    assert_eq!(RunspacePoolState::from_i32(2), RunspacePoolState::Opened);
    assert_eq!(PipelineState::from_i32(5), PipelineState::Failed);
    assert!(PipelineState::Stopped.is_terminal() && !PipelineState::Running.is_terminal());
}

/// 10,000 mailbox-like objects through the full receive path: fragments packed into
/// Receive-sized chunks, reassembled, decoded one message at a time.
#[test]
fn ten_thousand_objects_stream_in_linear_time() {
    const N: usize = 10_000;
    let mut fragmenter = Fragmenter::new(16 * 1024).unwrap();
    let mut stream = Vec::new();
    for i in 0..N {
        let mailbox = PsValue::Object(
            PsObject::new(&[
                "Deserialized.Microsoft.Exchange.Data.Directory.Management.Mailbox",
                "Deserialized.System.Object",
            ])
            .with("Name", format!("user{i}"))
            .with("PrimarySmtpAddress", format!("user{i}@contoso.com"))
            .with("Guid", PsValue::Guid(Uuid::from_u128(i as u128)))
            .with("IssueWarningQuota", "49 GB (52,613,349,376 bytes)")
            .with("EmailAddresses", PsValue::List(vec![format!("SMTP:user{i}@contoso.com").into(), "X500:/o=x".into()]))
            .with(
                "RecipientTypeDetails",
                PsValue::Enum { type_names: vec!["RecipientTypeDetails".into()], name: "UserMailbox".into(), value: 1 },
            ),
        );
        for frag in fragmenter.fragment(&pipeline_output(rpid(), pid(), &mailbox).encode()) {
            frag.encode_into(&mut stream);
        }
        if i % 100 == 0 {
            for frag in fragmenter.fragment(&warning_record(rpid(), pid(), "w").encode()) {
                frag.encode_into(&mut stream);
            }
        }
    }
    let started = std::time::Instant::now();
    let mut defrag = Defragmenter::new();
    let (mut outputs, mut warnings) = (0, 0);
    for chunk in stream.chunks(150 * 1024) {
        for bytes in defrag.push(chunk).unwrap() {
            match ServerMessage::parse(&Message::decode(&bytes).unwrap()).unwrap() {
                ServerMessage::PipelineOutput(PsValue::Object(o)) => {
                    assert_eq!(o.get("Name"), Some(&PsValue::String(format!("user{outputs}"))));
                    outputs += 1;
                }
                ServerMessage::Warning(_) => warnings += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!((outputs, warnings), (N, N / 100));
    assert!(defrag.is_idle());
    // Generous: linear work here takes well under a second even unoptimized.
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), chunk in 1usize..64) {
        let mut d = Defragmenter::with_limits(256, 1024, 2048);
        for piece in bytes.chunks(chunk) {
            if d.push(piece).is_err() { break; }
        }
        if let Ok(m) = Message::decode(&bytes) {
            let _ = ServerMessage::parse(&m);
            let _ = ClientMessage::parse(&m);
        }
    }

    #[test]
    fn any_messages_survive_any_fragment_size_and_slicing(
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6),
        max_fragment in (HEADER_LEN + 1)..120,
        chunk in 1usize..200,
    ) {
        let mut f = Fragmenter::new(max_fragment).unwrap();
        let stream: Vec<u8> = messages.iter().flat_map(|m| f.fragment(m)).flat_map(|fr| fr.encode()).collect();
        let mut d = Defragmenter::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            got.extend(d.push(piece).unwrap());
        }
        prop_assert_eq!(got, messages);
        prop_assert!(d.is_idle());
    }

    #[test]
    fn mutated_fragment_streams_never_panic(
        message in prop::collection::vec(any::<u8>(), 0..300),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut f = Fragmenter::new(40).unwrap();
        let mut stream: Vec<u8> = f.fragment(&message).iter().flat_map(Fragment::encode).collect();
        for (at, byte) in flips {
            let i = at.index(stream.len());
            stream[i] = byte;
        }
        let _ = Defragmenter::with_limits(1024, 4096, 8192).push(&stream);
    }

    #[test]
    fn create_pipeline_round_trips_any_string_parameters(
        command in "[A-Za-z]{1,10}-[A-Za-z]{1,12}",
        params in prop::collection::vec((any::<String>(), any::<String>()), 0..5),
    ) {
        let parameters: Vec<(String, PsValue)> = params.into_iter().map(|(n, v)| (n, PsValue::String(v))).collect();
        let msg = create_pipeline(rpid(), pid(), &command, &parameters);
        let back = ClientMessage::parse(&Message::decode(&msg.encode()).unwrap()).unwrap();
        prop_assert_eq!(back, ClientMessage::CreatePipeline(CreatePipeline { command, is_script: false, parameters, no_input: true }));
    }
}

#[test]
fn error_record_body_is_a_full_powershell_error_record() {
    let record = ErrorRecord {
        message: "m".into(),
        category: "InvalidArgument".into(),
        fully_qualified_error_id: "Bad,Set-Mailbox".into(),
        target: Some("t".into()),
    };
    let msg = error_record(rpid(), pid(), &record);
    let PsValue::Object(o) = msg.value().unwrap() else { panic!() };
    assert_eq!(o.type_names, vec!["System.Management.Automation.ErrorRecord", "System.Object"]);
    assert_eq!(o.to_string.as_deref(), Some("m"));
    assert_eq!(o.get("ErrorCategory_Category"), Some(&PsValue::Int32(5)));
    assert_eq!(o.get("ErrorCategory_Activity"), Some(&PsValue::String("Set-Mailbox".into())));
    assert_eq!(
        o.get("ErrorCategory_Message"),
        Some(&PsValue::String("InvalidArgument (t:String) [Set-Mailbox], RuntimeException".into()))
    );
    assert_eq!(o.get("InvocationInfo"), Some(&PsValue::Null));
    let Some(PsValue::Object(e)) = o.get("Exception") else { panic!() };
    assert_eq!(e.get("Message"), Some(&PsValue::String("m".into())));
    assert_eq!(e.get("HResult"), Some(&PsValue::Int32(-2146233087)));
    assert_eq!(clixml::error_record_from_value(&PsValue::Object(o)), Some(record));
}
