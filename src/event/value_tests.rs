use super::*;

fn json(v: &Value) -> String {
    serde_json::to_string(&crate::event::json::ValueJson(v)).unwrap_or_default()
}

fn ok(oid: u32, text: &str) -> String {
    match convert(type_map(oid), text) {
        Ok(v) => json(&v),
        Err(v) => panic!("{text:?} as oid {oid} failed, kept {v:?}"),
    }
}

#[test]
fn scalars_map_per_spec() {
    assert_eq!(ok(16, "t"), "true");
    assert_eq!(ok(16, "f"), "false");
    assert_eq!(ok(20, "9223372036854775807"), "9223372036854775807");
    assert_eq!(ok(20, "-9223372036854775808"), "-9223372036854775808");
    assert_eq!(ok(20, "9007199254740993"), "9007199254740993");
    assert_eq!(ok(21, "-32768"), "-32768");
    assert_eq!(ok(26, "4294967295"), "4294967295");
    assert_eq!(ok(701, "1.5"), "1.5");
    assert_eq!(ok(701, "NaN"), "\"NaN\"");
    assert_eq!(ok(701, "-Infinity"), "\"-Infinity\"");
    assert_eq!(ok(700, "1.10000002"), "1.10000002");
    assert_eq!(
        ok(1700, "12345678901234567890.000001"),
        "\"12345678901234567890.000001\""
    );
    assert_eq!(ok(1700, "NaN"), "\"NaN\"");
    assert_eq!(
        ok(3802, r#"{"a": [1, 2.50, 123456789012345678901234567890]}"#),
        r#"{"a": [1, 2.50, 123456789012345678901234567890]}"#
    );
    assert_eq!(ok(114, "null"), "null");
    assert_eq!(
        ok(2950, "7d0c0c2e-0000-4000-8000-000000000000"),
        "\"7d0c0c2e-0000-4000-8000-000000000000\""
    );
    assert_eq!(
        ok(25, "line\nbreak \"quoted\" \u{1}"),
        "\"line\\nbreak \\\"quoted\\\" \\u0001\""
    );
    assert_eq!(ok(17, "\\x0102"), "\"\\\\x0102\"");
}

#[test]
fn timestamps_become_rfc3339() {
    assert_eq!(
        ok(1184, "2026-11-26 10:20:30.123456+00"),
        "\"2026-11-26T10:20:30.123456Z\""
    );
    assert_eq!(ok(1184, "2026-11-26 10:20:30+00"), "\"2026-11-26T10:20:30.000000Z\"");
    assert_eq!(ok(1184, "2026-11-26 10:20:30.1+00"), "\"2026-11-26T10:20:30.100000Z\"");
    assert_eq!(ok(1184, "10000-01-01 00:00:00+00"), "\"10000-01-01T00:00:00.000000Z\"");
    assert_eq!(ok(1114, "2026-11-26 10:20:30"), "\"2026-11-26T10:20:30.000000\"");
    assert_eq!(ok(1114, "0001-01-01 00:00:00 BC"), "\"0000-01-01T00:00:00.000000\"");
    assert_eq!(ok(1184, "infinity"), "\"infinity\"");
    assert_eq!(ok(1184, "-infinity"), "\"-infinity\"");
    assert_eq!(
        ok(1184, "0044-03-15 12:00:00+00 BC"),
        "\"-0043-03-15T12:00:00.000000Z\""
    );
    assert_eq!(ok(1184, "0001-01-01 00:00:00+00 BC"), "\"0000-01-01T00:00:00.000000Z\"");
    assert_eq!(ok(1114, "2026-11-26 10:20:30.123456"), "\"2026-11-26T10:20:30.123456\"");
    assert_eq!(ok(1082, "2026-11-26"), "\"2026-11-26\"");
}

#[test]
fn arrays_become_json_arrays() {
    assert_eq!(ok(1007, "{1,2,NULL}"), "[1,2,null]");
    assert_eq!(ok(1007, "{}"), "[]");
    assert_eq!(ok(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
    assert_eq!(ok(1007, "[0:1]={5,6}"), "[5,6]");
    assert_eq!(
        ok(1009, r#"{plain,"a,b","q\"uote","back\\slash","NULL",NULL}"#),
        r#"["plain","a,b","q\"uote","back\\slash","NULL",null]"#
    );
    assert_eq!(ok(1231, "{1.5,NaN}"), r#"["1.5","NaN"]"#);
    assert_eq!(ok(3807, r#"{"{\"a\": 1}","[2]"}"#), r#"[{"a": 1},[2]]"#);
    assert_eq!(
        ok(1185, r#"{"2026-11-26 10:20:30+00",infinity}"#),
        r#"["2026-11-26T10:20:30.000000Z","infinity"]"#
    );
    assert_eq!(ok(1000, "{t,f}"), "[true,false]");
    assert_eq!(
        ok(1020, "{(1,1),(0,0);(2,2),(1,1)}"),
        r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
    );
}

#[test]
fn bad_text_is_kept_not_zeroed() {
    for (oid, text) in [
        (20, "12x"),
        (16, "maybe"),
        (701, "fast"),
        (3802, "{bad"),
        (1184, "yesterday"),
        (1184, "2026-11-26 10:20:30+05:30"),
        (1184, "2026-11-26 10:20:30.1234567+00"),
        (1184, "2026-1-26 10:20:30+00"),
        (1114, "2026-11-26T10:20:30"),
        (1114, "2026-11-26 10:20"),
        (1007, "{1,2"),
        (1007, "{1,x}"),
        (1700, "1;2"),
    ] {
        match convert(type_map(oid), text) {
            Ok(v) => panic!("{text:?} as {oid} accepted as {v:?}"),
            Err(Value::Text(t)) => assert_eq!(t, text),
            Err(Value::Array(_)) => {}
            Err(other) => panic!("{text:?} kept as {other:?}"),
        }
    }
}

#[test]
fn array_parser_never_panics_on_garbage() {
    for text in [
        "{",
        "}",
        "{\"",
        "{\\",
        "{a,{b}}x",
        "[1:2]",
        "[1:2]=",
        "{{{{{{{{{{{{{{{{{{{{}}}}}}}}}}}}}}}}}}}}",
        "{\"é\\",
        "{é,ü}",
    ] {
        let _ = convert(type_map(1009), text);
    }
}
