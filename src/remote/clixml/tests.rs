use super::*;
use crate::remote::fault::ErrorRecord;
use crate::remote::value::{PsObject, PsValue};
use proptest::prelude::*;

fn rt(v: &PsValue) -> PsValue {
    let xml = to_clixml(v);
    from_clixml(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}: {xml}"))
}

fn s(x: &str) -> PsValue {
    PsValue::String(x.into())
}

#[test]
fn primitives_serialize_to_their_tags() {
    let cases: Vec<(PsValue, &str)> = vec![
        (PsValue::Null, "<Nil />"),
        (PsValue::Bool(true), "<B>true</B>"),
        (PsValue::Int32(-5), "<I32>-5</I32>"),
        (PsValue::Int64(5_000_000_000), "<I64>5000000000</I64>"),
        (PsValue::Double(1.5), "<Db>1.5</Db>"),
        (PsValue::Double(1e300), "<Db>1E300</Db>"),
        (PsValue::Double(f64::NEG_INFINITY), "<Db>-INF</Db>"),
        (PsValue::Single(0.1), "<Sg>0.1</Sg>"),
        (s(""), "<S />"),
        (PsValue::Char(97), "<C>97</C>"),
        (PsValue::Byte(255), "<By>255</By>"),
        (PsValue::SByte(-1), "<SB>-1</SB>"),
        (PsValue::Int16(-2), "<I16>-2</I16>"),
        (PsValue::UInt16(2), "<U16>2</U16>"),
        (PsValue::UInt32(3), "<U32>3</U32>"),
        (PsValue::UInt64(u64::MAX), "<U64>18446744073709551615</U64>"),
        (PsValue::Decimal("1.10".into()), "<D>1.10</D>"),
        (PsValue::TimeSpan("PT9.0269026S".into()), "<TS>PT9.0269026S</TS>"),
        (PsValue::DateTime("2008-04-11T10:42:32.2731993-07:00".into()), "<DT>2008-04-11T10:42:32.2731993-07:00</DT>"),
        (PsValue::Bytes(vec![1, 2, 3]), "<BA>AQID</BA>"),
        (
            PsValue::Guid(uuid::Uuid::parse_str("792e5b37-4505-47ef-b7d2-8711bb7affa8").unwrap()),
            "<G>792e5b37-4505-47ef-b7d2-8711bb7affa8</G>",
        ),
        (PsValue::Uri("http://www.microsoft.com/".into()), "<URI>http://www.microsoft.com/</URI>"),
        (PsValue::Version("6.2.1.3".into()), "<Version>6.2.1.3</Version>"),
        (PsValue::Xml("<a>b</a>".into()), "<XD>&lt;a&gt;b&lt;/a&gt;</XD>"),
        (PsValue::ScriptBlock("get-command -type cmdlet".into()), "<SBK>get-command -type cmdlet</SBK>"),
        (PsValue::SecureString("AQAAANCMnd8BFdERjHoAwE".into()), "<SS>AQAAANCMnd8BFdERjHoAwE</SS>"),
    ];
    for (v, xml) in cases {
        assert_eq!(to_clixml(&v), xml, "{v:?}");
        assert_eq!(from_clixml(xml.as_bytes()).unwrap(), v, "{xml}");
    }
}

#[test]
fn numbers_parse_leniently_but_strictly_typed() {
    assert_eq!(from_clixml(b"<I32> 7 </I32>").unwrap(), PsValue::Int32(7));
    assert_eq!(from_clixml(b"<Db>INF</Db>").unwrap(), PsValue::Double(f64::INFINITY));
    assert_eq!(from_clixml(b"<Db>1E+20</Db>").unwrap(), PsValue::Double(1e20));
    assert_eq!(from_clixml(b"<Sg>-Infinity</Sg>").unwrap(), PsValue::Single(f32::NEG_INFINITY));
    assert!(matches!(from_clixml(b"<Db>NaN</Db>").unwrap(), PsValue::Double(d) if d.is_nan()));
    assert_eq!(from_clixml(b"<B>False</B>").unwrap(), PsValue::Bool(false));
    for bad in [
        "<I32>2147483648</I32>",
        "<By>-1</By>",
        "<I32></I32>",
        "<B>yes</B>",
        "<G>nope</G>",
        "<BA>!!</BA>",
        "<C>70000</C>",
    ] {
        assert!(matches!(from_clixml(bad.as_bytes()), Err(ClixmlError::Invalid(_))), "{bad}");
    }
}

#[test]
fn strings_escape_controls_underscores_and_xml_metacharacters() {
    let cases = [
        ("line1\r\nline2", "<S>line1_x000D__x000A_line2</S>"),
        ("_x000A_", "<S>_x005F_x000A_</S>"),
        ("_x005F_", "<S>_x005F_x005F_</S>"),
        ("a_b", "<S>a_b</S>"),
        ("<tag> & \"q\" 'a'", "<S>&lt;tag&gt; &amp; \"q\" 'a'</S>"),
        ("grüße, 日本語", "<S>grüße, 日本語</S>"),
        ("ok 👍", "<S>ok _xD83D__xDC4D_</S>"),
        ("\u{2028}\u{85}", "<S>\u{2028}_x0085_</S>"),
        ("\u{0}\u{7}\u{1b}", "<S>_x0000__x0007__x001B_</S>"),
        (
            "$(Remove-Item C:\\ -Recurse); `whoami`; ${env:PATH}",
            "<S>$(Remove-Item C:\\ -Recurse); `whoami`; ${env:PATH}</S>",
        ),
    ];
    for (text, xml) in cases {
        assert_eq!(to_clixml(&s(text)), xml);
        assert_eq!(from_clixml(xml.as_bytes()).unwrap(), s(text));
    }
    // Entity and character references decode too.
    assert_eq!(from_clixml(b"<S>&#x41;&#66;&quot;&apos;</S>").unwrap(), s("AB\"'"));
    // Escapes may use lower-case hex; a lone surrogate degrades to U+FFFD instead of failing.
    assert_eq!(from_clixml(b"<S>_xd83d__xdc4d_ _xD800_</S>").unwrap(), s("👍 \u{FFFD}"));
}

#[test]
fn property_names_are_escaped_in_attributes() {
    let obj = PsObject::new(&["T"]).with("a\"b<c>&'d", 1).with("tab\there", 2).with("_x0041_", 3);
    let xml = to_clixml(&PsValue::Object(obj.clone()));
    assert!(xml.contains(r#"N="a&quot;b&lt;c&gt;&amp;&apos;d""#), "{xml}");
    assert!(xml.contains(r#"N="tab_x0009_here""#), "{xml}");
    assert!(xml.contains(r#"N="_x005F_x0041_""#), "{xml}");
    assert_eq!(rt(&PsValue::Object(obj.clone())), PsValue::Object(obj));
}

#[test]
fn lists_dicts_and_objects_have_their_shape() {
    let list = PsValue::List(vec![PsValue::Int32(1), s("a")]);
    assert_eq!(
        to_clixml(&list),
        r#"<Obj RefId="0"><TN RefId="0"><T>System.Object[]</T><T>System.Array</T><T>System.Object</T></TN><LST><I32>1</I32><S>a</S></LST></Obj>"#
    );
    let dict = PsValue::Dict(vec![(s("k"), PsValue::Bool(true)), (PsValue::Int32(2), PsValue::Null)]);
    assert_eq!(
        to_clixml(&dict),
        r#"<Obj RefId="0"><TN RefId="0"><T>System.Collections.Hashtable</T><T>System.Object</T></TN><DCT><En><S N="Key">k</S><B N="Value">true</B></En><En><I32 N="Key">2</I32><Nil N="Value" /></En></DCT></Obj>"#
    );
    let obj =
        PsObject { to_string: Some("x".into()), ..PsObject::new(&["A.B", "System.Object"]) }.with("P", list.clone());
    let xml = to_clixml(&PsValue::Object(obj.clone()));
    assert_eq!(
        xml,
        r#"<Obj RefId="0"><TN RefId="0"><T>A.B</T><T>System.Object</T></TN><ToString>x</ToString><MS><Obj N="P" RefId="1"><TN RefId="1"><T>System.Object[]</T><T>System.Array</T><T>System.Object</T></TN><LST><I32>1</I32><S>a</S></LST></Obj></MS></Obj>"#
    );
    for v in [list, dict, PsValue::Object(obj), PsValue::List(vec![]), PsValue::Dict(vec![])] {
        assert_eq!(rt(&v), v);
    }
}

#[test]
fn type_name_lists_are_written_once_and_referenced() {
    let item = |n: i32| PsValue::Object(PsObject::new(&["Deserialized.Mailbox", "System.Object"]).with("N", n));
    let v = PsValue::List(vec![item(1), item(2), item(3)]);
    let xml = to_clixml(&v);
    assert_eq!(xml.matches("<T>Deserialized.Mailbox</T>").count(), 1, "{xml}");
    assert_eq!(xml.matches(r#"<TNRef RefId="1" />"#).count(), 2, "{xml}");
    assert_eq!(rt(&v), v);
}

#[test]
fn refs_resolve_to_the_earlier_object_and_tnrefs_to_earlier_types() {
    let xml = r#"<Obj RefId="0"><MS>
        <Obj N="A" RefId="1"><TN RefId="0"><T>X.Y</T><T>System.Object</T></TN><ToString>a</ToString><Props><S N="Name">n</S></Props><MS><I32 N="Extra">1</I32></MS></Obj>
        <Ref N="B" RefId="1" />
        <Obj N="C" RefId="2"><TNRef RefId="0" /><MS><I32 N="Q">2</I32></MS></Obj>
    </MS></Obj>"#;
    let PsValue::Object(o) = from_clixml(xml.as_bytes()).unwrap() else { panic!() };
    let a = o.get("A").unwrap().clone();
    assert_eq!(o.get("B"), Some(&a));
    let PsValue::Object(a) = a else { panic!() };
    assert_eq!(a.type_names, vec!["X.Y", "System.Object"]);
    assert_eq!(a.to_string.as_deref(), Some("a"));
    assert_eq!(a.properties, vec![("Name".into(), s("n")), ("Extra".into(), PsValue::Int32(1))]);
    let PsValue::Object(c) = o.get("C").unwrap() else { panic!() };
    assert_eq!(c.type_names, vec!["X.Y", "System.Object"]);

    for bad in [
        r#"<Obj RefId="0"><MS><Ref N="x" RefId="9" /></MS></Obj>"#,
        r#"<Obj RefId="0"><TNRef RefId="3" /></Obj>"#,
        // An object cannot refer to itself (it is registered only once complete).
        r#"<Obj RefId="0"><MS><Ref N="self" RefId="0" /></MS></Obj>"#,
        r#"<Ref />"#,
    ] {
        assert!(matches!(from_clixml(bad.as_bytes()), Err(ClixmlError::Invalid(_))), "{bad}");
    }
}

#[test]
fn ref_expansion_is_bounded() {
    // Each level holds two references to the previous one: 2^40 values if expanded freely.
    let mut xml = String::from(r#"<Obj RefId="0"><MS><Obj N="l0" RefId="l0"><LST><S>x</S><S>y</S></LST></Obj>"#);
    for i in 1..40 {
        xml.push_str(&format!(
            r#"<Obj N="l{i}" RefId="l{i}"><LST><Ref RefId="l{p}" /><Ref RefId="l{p}" /></LST></Obj>"#,
            p = i - 1
        ));
    }
    xml.push_str("</MS></Obj>");
    assert_eq!(from_clixml(xml.as_bytes()), Err(ClixmlError::TooLarge("node count")));
}

#[test]
fn collections_of_every_kind_become_lists() {
    for tag in ["LST", "IE", "QUE", "STK"] {
        let xml = format!(
            r#"<Obj RefId="0"><TN RefId="0"><T>Some.Collection</T></TN><{tag}><I32>1</I32><S>b</S></{tag}></Obj>"#
        );
        assert_eq!(from_clixml(xml.as_bytes()).unwrap(), PsValue::List(vec![PsValue::Int32(1), s("b")]), "{tag}");
    }
    // Entries may come without names, in Key-Value order.
    let xml = r#"<Obj RefId="0"><DCT><En><S>k</S><I32>1</I32></En></DCT></Obj>"#;
    assert_eq!(from_clixml(xml.as_bytes()).unwrap(), PsValue::Dict(vec![(s("k"), PsValue::Int32(1))]));
    assert!(from_clixml(br#"<Obj RefId="0"><DCT><En><S N="Key">k</S></En></DCT></Obj>"#).is_err());
    assert!(from_clixml(br#"<Obj RefId="0"><DCT><S>k</S></DCT></Obj>"#).is_err());
}

#[test]
fn enums_come_out_as_enum_values_named_by_their_tostring() {
    let xml = r#"<Obj N="MergeMyResult" RefId="4"><TN RefId="1"><T>System.Management.Automation.Runspaces.PipelineResultTypes</T><T>System.Enum</T><T>System.ValueType</T><T>System.Object</T></TN><ToString>None</ToString><I32>0</I32></Obj>"#;
    let v = from_clixml(xml.as_bytes()).unwrap();
    let PsValue::Enum { type_names, name, value } = &v else { panic!("{v:?}") };
    assert_eq!(type_names[0], "System.Management.Automation.Runspaces.PipelineResultTypes");
    assert_eq!((name.as_str(), *value), ("None", 0));
    assert_eq!(v.to_json(), serde_json::json!("None"));
    assert_eq!(v.display(), "None");
    assert_eq!(v.as_i64(), Some(0));
    assert_eq!(rt(&v), v);
    // Enum types without the base names get them when written.
    let bare = PsValue::Enum { type_names: vec!["My.Flags".into()], name: "A, B".into(), value: 3 };
    let PsValue::Enum { type_names, .. } = rt(&bare) else { panic!() };
    assert_eq!(type_names, vec!["My.Flags", "System.Enum", "System.ValueType", "System.Object"]);
}

#[test]
fn extended_primitives_unwrap_or_keep_their_properties() {
    let plain = r#"<Obj RefId="0"><TN RefId="0"><T>System.String</T><T>System.Object</T></TN><ToString>hi</ToString><S>hi</S></Obj>"#;
    assert_eq!(from_clixml(plain.as_bytes()).unwrap(), s("hi"));
    let noted = r#"<Obj RefId="0"><S>hi</S><MS><I32 N="Len">2</I32></MS></Obj>"#;
    let PsValue::Object(o) = from_clixml(noted.as_bytes()).unwrap() else { panic!() };
    assert_eq!(o.to_string.as_deref(), Some("hi"));
    assert_eq!(o.get("Len"), Some(&PsValue::Int32(2)));
}

#[test]
fn adapted_then_extended_properties_in_document_order() {
    let xml = r#"<Obj RefId="0"><MS><S N="m1">1</S></MS><Props><S N="p1">2</S><S N="p2">3</S></Props><MS><S N="m2">4</S></MS></Obj>"#;
    let PsValue::Object(o) = from_clixml(xml.as_bytes()).unwrap() else { panic!() };
    let names: Vec<_> = o.properties.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["m1", "p1", "p2", "m2"]);
}

#[test]
fn bom_declaration_comments_and_whitespace_are_accepted() {
    let xml = "\u{FEFF}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- c -->\n<Obj RefId=\"0\">\n  <MS>\n    <S N=\"a\"> x </S>\n  </MS>\n</Obj>\n";
    let PsValue::Object(o) = from_clixml(xml.as_bytes()).unwrap() else { panic!() };
    assert_eq!(o.get("a"), Some(&s(" x ")));
    // Namespaced elements (prefix) are read by local name.
    assert_eq!(
        from_clixml(br#"<ps:S xmlns:ps="http://schemas.microsoft.com/powershell/2004/04">v</ps:S>"#).unwrap(),
        s("v")
    );
}

#[test]
fn malformed_documents_are_errors() {
    let cases: [&[u8]; 16] = [
        b"",
        b"   ",
        b"<S>unterminated",
        b"<S>a</I32>",
        b"<S>a</S><S>b</S>",
        b"text",
        b"<Obj RefId=\"0\"><MS><Unknown N=\"x\" /></MS></Obj>",
        b"<Bogus />",
        b"<S>&bogus;</S>",
        b"<S>a & b</S>",
        b"\xff\xfe<\x00S\x00>\x00",
        b"<S N=\"a>x</S>",
        b"</S>",
        b"<S>x</S>trailing",
        b"<Obj RefId=\"0\"><MS><S N=\"a\">x</S>",
        b"<I64>1.5</I64>",
    ];
    for bad in cases {
        assert!(from_clixml(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn nesting_is_limited_without_overflowing_the_stack() {
    fn nested(levels: usize) -> PsValue {
        (0..levels).fold(PsValue::Int32(1), |inner, _| PsValue::List(vec![inner]))
    }
    assert_eq!(rt(&nested(63)), nested(63));
    let xml = to_clixml(&nested(64));
    assert_eq!(from_clixml(xml.as_bytes()), Err(ClixmlError::TooDeep(64)));
    let strict = DecodeLimits { max_depth: 3, ..DecodeLimits::default() };
    assert!(from_clixml_with(to_clixml(&nested(2)).as_bytes(), &strict).is_ok());
    assert_eq!(from_clixml_with(to_clixml(&nested(3)).as_bytes(), &strict), Err(ClixmlError::TooDeep(3)));
    // Raw element nesting is refused while reading, long before recursion could be deep.
    let deep = "<Obj><MS>".repeat(100_000);
    assert_eq!(from_clixml(deep.as_bytes()), Err(ClixmlError::TooDeep(64)));
}

#[test]
fn size_limits_apply() {
    let limits = DecodeLimits { max_input_bytes: 10, ..DecodeLimits::default() };
    assert_eq!(from_clixml_with(b"<S>0123456789</S>", &limits), Err(ClixmlError::TooLarge("input size")));
    let limits = DecodeLimits { max_nodes: 5, ..DecodeLimits::default() };
    let v = PsValue::List((0..10).map(PsValue::Int32).collect());
    assert_eq!(from_clixml_with(to_clixml(&v).as_bytes(), &limits), Err(ClixmlError::TooLarge("node count")));
}

/// Captured PowerShell output (a `powershell.exe` stderr stream, as in pypsrp's test data),
/// trimmed: progress records, a TNRef, escaped CR/LF.
#[test]
fn decodes_a_captured_clixml_stream() {
    let doc = r#"#< CLIXML
<Objs xmlns="http://schemas.microsoft.com/powershell/2004/04" Version="1.1.0.1">
<Obj S="progress" RefId="0">
    <TN RefId="0">
        <T>System.Management.Automation.PSCustomObject</T>
        <T>System.Object</T>
    </TN>
    <MS>
        <I64 N="SourceId">1</I64>
        <PR N="Record">
            <AV>Preparing modules for first use.</AV>
            <AI>0</AI>
            <Nil/>
            <PI>-1</PI>
            <PC>-1</PC>
            <T>Completed</T>
            <SR>-1</SR>
            <SD>
            </SD>
        </PR>
    </MS>
</Obj>
<Obj S="progress" RefId="1">
    <TNRef RefId="0"/>
    <MS>
        <I64 N="SourceId">1</I64>
        <PR N="Record"><AV>Preparing modules for first use.</AV><AI>0</AI><Nil/><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR>
    </MS>
</Obj>
<S S="Error">fake : The term 'fake' is not recognized as the name of a cmdlet, function, script file, or operable program. Check _x000D__x000A_</S>
<S S="Error">    + CategoryInfo          : ObjectNotFound: (fake:String) [], CommandNotFoundException_x000D__x000A_</S>
</Objs>"#;
    let values = from_clixml_all(doc.as_bytes()).unwrap();
    assert_eq!(values.len(), 4);
    let PsValue::Object(p) = &values[1] else { panic!() };
    assert_eq!(p.type_names, vec!["System.Management.Automation.PSCustomObject", "System.Object"]);
    assert_eq!(p.get("SourceId"), Some(&PsValue::Int64(1)));
    let Some(PsValue::Object(record)) = p.get("Record") else { panic!() };
    assert_eq!(record.get("Activity"), Some(&s("Preparing modules for first use.")));
    assert_eq!(record.get("PercentComplete"), Some(&PsValue::Int32(-1)));
    assert_eq!(record.get("CurrentOperation"), Some(&PsValue::Null));
    assert!(values[2].as_str().unwrap().ends_with("Check \r\n"));
    assert!(values[3].as_str().unwrap().contains("ObjectNotFound: (fake:String)"));
}

/// An ERROR_RECORD body as Windows PowerShell 5.1 sends it for `Write-Error` (captured in
/// pypsrp's test suite), trimmed of some InvocationInfo members.
const CAPTURED_ERROR_RECORD: &str = r#"<Obj RefId="0">
    <TN RefId="0"><T>System.Management.Automation.ErrorRecord</T><T>System.Object</T></TN>
    <ToString>error stream</ToString>
    <MS>
        <B N="writeErrorStream">true</B>
        <Obj N="Exception" RefId="1">
            <TN RefId="1">
                <T>Microsoft.PowerShell.Commands.WriteErrorException</T>
                <T>System.SystemException</T><T>System.Exception</T><T>System.Object</T>
            </TN>
            <ToString>Microsoft.PowerShell.Commands.WriteErrorException: error stream</ToString>
            <Props>
                <S N="Message">error stream</S>
                <Obj N="Data" RefId="2">
                    <TN RefId="2"><T>System.Collections.ListDictionaryInternal</T><T>System.Object</T></TN>
                    <DCT/>
                </Obj>
                <Nil N="InnerException"/>
                <I32 N="HResult">-2146233087</I32>
            </Props>
        </Obj>
        <Nil N="TargetObject"/>
        <S N="FullyQualifiedErrorId">Microsoft.PowerShell.Commands.WriteErrorException</S>
        <Obj N="InvocationInfo" RefId="3">
            <TN RefId="3"><T>System.Management.Automation.InvocationInfo</T><T>System.Object</T></TN>
            <ToString>System.Management.Automation.InvocationInfo</ToString>
            <Props>
                <S N="MyCommand">Write-Error 'error stream'_x000A_</S>
                <Obj N="BoundParameters" RefId="4">
                    <TN RefId="4"><T>System.Collections.Generic.Dictionary`2[[System.String, mscorlib, Version=4.0.0.0, Culture=neutral, PublicKeyToken=b77a5c561934e089],[System.Object, mscorlib, Version=4.0.0.0, Culture=neutral, PublicKeyToken=b77a5c561934e089]]</T><T>System.Object</T></TN>
                    <DCT/>
                </Obj>
                <I64 N="HistoryId">1</I64>
                <S N="CommandOrigin">Internal</S>
            </Props>
        </Obj>
        <I32 N="ErrorCategory_Category">0</I32>
        <S N="ErrorCategory_Activity">Write-Error</S>
        <S N="ErrorCategory_Reason">WriteErrorException</S>
        <S N="ErrorCategory_TargetName"/>
        <S N="ErrorCategory_TargetType"/>
        <S N="ErrorCategory_Message">NotSpecified: (:) [Write-Error], WriteErrorException</S>
        <B N="SerializeExtendedInfo">true</B>
        <Ref N="InvocationInfo_BoundParameters" RefId="4"/>
        <Obj N="InvocationInfo_CommandOrigin" RefId="6">
            <TN RefId="6"><T>System.Management.Automation.CommandOrigin</T><T>System.Enum</T><T>System.ValueType</T><T>System.Object</T></TN>
            <ToString>Internal</ToString>
            <I32>1</I32>
        </Obj>
        <Obj N="InvocationInfo_PipelineIterationInfo" RefId="7">
            <TN RefId="7"><T>System.Int32[]</T><T>System.Array</T><T>System.Object</T></TN>
            <LST><I32>0</I32><I32>0</I32></LST>
        </Obj>
        <S N="ErrorDetails_ScriptStackTrace">at &lt;ScriptBlock&gt;, &lt;No file&gt;: line 5</S>
        <Nil N="PSMessageDetails"/>
    </MS>
</Obj>"#;

#[test]
fn decodes_a_captured_error_record() {
    let v = from_clixml(CAPTURED_ERROR_RECORD.as_bytes()).unwrap();
    let PsValue::Object(o) = &v else { panic!() };
    assert_eq!(o.to_string.as_deref(), Some("error stream"));
    assert_eq!(o.get("InvocationInfo_BoundParameters"), Some(&PsValue::Dict(vec![])));
    assert!(
        matches!(o.get("InvocationInfo_CommandOrigin"), Some(PsValue::Enum { name, value: 1, .. }) if name == "Internal")
    );
    assert_eq!(o.get("ErrorDetails_ScriptStackTrace"), Some(&s("at <ScriptBlock>, <No file>: line 5")));
    let Some(PsValue::Object(inv)) = o.get("InvocationInfo") else { panic!() };
    assert_eq!(inv.get("MyCommand"), Some(&s("Write-Error 'error stream'\n")));
    let record = error_record_from_value(&v).unwrap();
    assert_eq!(
        record,
        ErrorRecord {
            message: "error stream".into(),
            category: "NotSpecified".into(),
            fully_qualified_error_id: "Microsoft.PowerShell.Commands.WriteErrorException".into(),
            target: None,
        }
    );
}

#[test]
fn error_record_fields_are_chosen_by_precedence() {
    let base = PsObject::new(&["System.Management.Automation.ErrorRecord", "System.Object"])
        .with("Exception", PsValue::Object(PsObject::new(&["System.Exception"]).with("Message", "from exception")))
        .with("TargetObject", PsValue::Null)
        .with("FullyQualifiedErrorId", "ManagementObjectNotFoundException,Get-Mailbox")
        .with("ErrorCategory_Category", 13)
        .with("ErrorCategory_TargetName", "bob");
    let r = error_record_from_value(&PsValue::Object(base.clone())).unwrap();
    assert_eq!(r.message, "from exception");
    assert_eq!(r.category, "ObjectNotFound");
    assert_eq!(r.target.as_deref(), Some("bob"));
    let detailed = base.clone().with("ErrorDetails_Message", "from details").with("TargetObject", PsValue::Int32(5));
    let mut detailed = detailed;
    detailed.set("TargetObject", PsValue::Int32(5));
    let r = error_record_from_value(&PsValue::Object(detailed)).unwrap();
    assert_eq!((r.message.as_str(), r.target.as_deref()), ("from details", Some("5")));
    let mut odd = base;
    odd.set("ErrorCategory_Category", PsValue::Int32(99));
    assert_eq!(error_record_from_value(&PsValue::Object(odd)).unwrap().category, "99");
    assert_eq!(error_record_from_value(&PsValue::Null), None);
    assert_eq!(error_record_from_value(&s("plain")).unwrap().message, "plain");
}

#[test]
fn written_error_records_read_back_equal() {
    let records = [
        ErrorRecord {
            message: "The operation couldn't be performed because object 'bob@contoso.com' couldn't be found on 'DC1'.".into(),
            category: "ObjectNotFound".into(),
            fully_qualified_error_id: "[Server=AM0PR01MB1234,RequestId=abc,TimeStamp=1/1/2024] [FailureCategory=Cmdlet-ManagementObjectNotFoundException] 9F3B3B6A,Microsoft.Exchange.Management.RecipientTasks.GetMailbox".into(),
            target: Some("bob@contoso.com".into()),
        },
        ErrorRecord { message: String::new(), category: "NotSpecified".into(), fully_qualified_error_id: String::new(), target: None },
        ErrorRecord {
            message: "line1\r\nline2 <&> _x000A_ 😀".into(),
            category: "PermissionDenied".into(),
            fully_qualified_error_id: "X,Y".into(),
            target: Some(String::new()),
        },
    ];
    for r in records {
        let xml = error_record_to_clixml(&r);
        let v = from_clixml(xml.as_bytes()).unwrap();
        assert_eq!(error_record_from_value(&v).as_ref(), Some(&r), "{xml}");
        let PsValue::Object(o) = v else { panic!() };
        assert_eq!(o.get("SerializeExtendedInfo"), Some(&PsValue::Bool(false)));
        assert!(
            matches!(o.get("Exception"), Some(PsValue::Object(e)) if e.get("Message") == Some(&PsValue::String(r.message.clone())))
        );
    }
}

#[test]
fn new_variants_have_json_and_display() {
    assert_eq!(PsValue::Char(0x41).to_json(), serde_json::json!("A"));
    assert_eq!(PsValue::Char(0xD800).display(), "\u{FFFD}");
    assert_eq!(PsValue::UInt64(u64::MAX).to_json(), serde_json::json!(u64::MAX));
    assert_eq!(PsValue::Single(0.1).to_json(), serde_json::json!(0.1));
    assert_eq!(PsValue::Decimal("1.25".into()).to_json(), serde_json::json!(1.25));
    assert_eq!(PsValue::Bytes(vec![1, 2, 3]).to_json(), serde_json::json!("AQID"));
    assert_eq!(PsValue::Bytes(vec![1, 2, 3]).display(), "1 2 3");
    assert_eq!(PsValue::SecureString("x".into()).to_json(), serde_json::Value::Null);
    assert_eq!(PsValue::Version("2.3".into()).to_json(), serde_json::json!("2.3"));
    assert_eq!(PsValue::UInt32(7).as_i64(), Some(7));
}

// ---- property tests ---------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-zA-Z0-9 _x<>&'\"$`;()\r\n\t]{0,12}",
        1 => Just("_x000A_".to_string()),
        1 => Just("😀_X_x".to_string()),
        1 => Just("\u{2028}\u{85}\r \n".to_string()),
    ]
}

fn leaf() -> impl Strategy<Value = PsValue> {
    prop_oneof![
        Just(PsValue::Null),
        any::<bool>().prop_map(PsValue::Bool),
        any::<i32>().prop_map(PsValue::Int32),
        any::<i64>().prop_map(PsValue::Int64),
        prop::num::f64::NORMAL.prop_map(PsValue::Double),
        prop::num::f64::INFINITE.prop_map(PsValue::Double),
        prop::num::f32::NORMAL.prop_map(PsValue::Single),
        text().prop_map(PsValue::String),
        text().prop_map(PsValue::DateTime),
        any::<u128>().prop_map(|u| PsValue::Guid(uuid::Uuid::from_u128(u))),
        any::<u16>().prop_map(PsValue::Char),
        any::<u8>().prop_map(PsValue::Byte),
        any::<i8>().prop_map(PsValue::SByte),
        any::<i16>().prop_map(PsValue::Int16),
        any::<u16>().prop_map(PsValue::UInt16),
        any::<u32>().prop_map(PsValue::UInt32),
        any::<u64>().prop_map(PsValue::UInt64),
        "-?[0-9]{1,20}(\\.[0-9]{1,8})?".prop_map(PsValue::Decimal),
        text().prop_map(PsValue::TimeSpan),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(PsValue::Bytes),
        text().prop_map(PsValue::Uri),
        "[0-9]{1,3}(\\.[0-9]{1,3}){1,3}".prop_map(PsValue::Version),
        text().prop_map(PsValue::Xml),
        text().prop_map(PsValue::ScriptBlock),
        "[A-Za-z0-9+/=]{0,20}".prop_map(PsValue::SecureString),
        (text(), text(), any::<i64>()).prop_map(|(t, name, value)| PsValue::Enum {
            type_names: vec![t, "System.Enum".into(), "System.ValueType".into(), "System.Object".into()],
            name,
            value
        }),
    ]
}

fn ps_value() -> impl Strategy<Value = PsValue> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(PsValue::List),
            prop::collection::vec((leaf(), inner.clone()), 0..4).prop_map(PsValue::Dict),
            (
                prop::collection::vec(text(), 0..3),
                prop::option::of(text()),
                prop::collection::vec((text(), inner), 0..5)
            )
                .prop_map(|(type_names, to_string, properties)| PsValue::Object(PsObject {
                    type_names,
                    to_string,
                    properties
                })),
        ]
    })
}

const SNIPPETS: [&str; 14] = [
    "<Obj>",
    "</Obj>",
    "<Ref RefId=\"0\" />",
    "<TNRef RefId=\"0\"/>",
    "<LST>",
    "<MS>",
    "&",
    "&#0;",
    "_x",
    "_xD800_",
    "\"",
    "<I32>x</I32>",
    "<En>",
    "\u{FEFF}",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_values_round_trip(v in ps_value()) {
        let xml = to_clixml(&v);
        let back = from_clixml(xml.as_bytes());
        prop_assert_eq!(back, Ok(v), "{}", xml);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = from_clixml(&bytes);
        let _ = from_clixml_all(&bytes);
    }

    #[test]
    fn random_markup_never_panics(parts in prop::collection::vec(prop::sample::select(SNIPPETS.to_vec()), 0..40)) {
        let doc: String = parts.concat();
        let _ = from_clixml(doc.as_bytes());
    }

    #[test]
    fn mutated_documents_never_panic(
        v in ps_value(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, prop::sample::select(SNIPPETS.to_vec()), any::<u8>()), 1..6),
    ) {
        let mut doc = to_clixml(&v).into_bytes();
        for (at, op, snippet, byte) in edits {
            if doc.is_empty() { break; }
            let i = at.index(doc.len());
            match op {
                0 => { doc.truncate(i); }
                1 => { doc.splice(i..i, snippet.bytes()); }
                2 => { doc[i] = byte; }
                _ => { let end = (i + byte as usize % 16).min(doc.len()); doc.drain(i..end); }
            }
        }
        let _ = from_clixml(&doc);
    }

    #[test]
    fn error_records_round_trip(
        message in text(),
        category in prop::sample::select(vec!["NotSpecified", "ObjectNotFound", "InvalidArgument", "NotEnabled", "QuotaExceeded"]),
        fqid in text(),
        target in prop::option::of(text()),
    ) {
        let r = ErrorRecord { message, category: category.into(), fully_qualified_error_id: fqid, target };
        let v = from_clixml(error_record_to_clixml(&r).as_bytes()).unwrap();
        prop_assert_eq!(error_record_from_value(&v), Some(r));
    }
}
