//! Every PostgreSQL type, compared exactly with what PostgreSQL itself says the value is.
//!
//! The expectation for each column is computed by the same server with its own functions —
//! `to_json` where SPEC §3 agrees with it (booleans, integers, floats with their NaN/Infinity
//! strings, json, arrays of those, enums, domains), `::text` where the SPEC says "PostgreSQL's
//! text", and `extract`/`to_char` for RFC 3339 timestamps — never by our own mapping code.

use serde_json::Value;

use super::expect::{DEADLINE, assert_same, blocking, on_subject, without_nulls};
use crate::support::service::{Service, Setup, wait_streaming};
use crate::support::{NatsServer, PgCluster};

/// (column, type, expectation expression over that column).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("b", "bool", "to_json(b)"),
    ("i2", "int2", "to_json(i2)"),
    ("i4", "int4", "to_json(i4)"),
    ("i8", "int8", "to_json(i8)"),
    ("o", "oid", "to_json(o::int8)"),
    ("f4", "float4", "to_json(f4)"),
    ("f8", "float8", "to_json(f8)"),
    ("n", "numeric", "to_json(n::text)"),
    ("n2", "numeric(30,10)", "to_json(n2::text)"),
    ("tx", "text", "to_json(tx)"),
    ("vc", "varchar(20)", "to_json(vc)"),
    ("bp", "char(5)", "to_json(bp)"),
    ("nm", "name", "to_json(nm)"),
    ("ci", "citext", "to_json(ci)"),
    ("mo", "mood", "to_json(mo)"),
    ("j", "json", "to_json(j)"),
    ("jb", "jsonb", "to_json(jb)"),
    ("u", "uuid", "to_json(u)"),
    ("tz", "timestamptz", "to_json(isotz(tz))"),
    ("ts", "timestamp", "to_json(iso(ts))"),
    ("d", "date", "to_json(d::text)"),
    ("tm", "time", "to_json(tm::text)"),
    ("ttz", "timetz", "to_json(ttz::text)"),
    ("iv", "interval", "to_json(iv::text)"),
    ("by", "bytea", "to_json(by::text)"),
    // inet::text is a function that always shows the netmask; format() uses the output function.
    (
        "ip",
        "inet",
        "to_json(CASE WHEN ip IS NOT NULL THEN format('%s', ip) END)",
    ),
    ("rng", "int4range", "to_json(rng::text)"),
    ("pt", "point", "to_json(pt::text)"),
    ("mn", "money", "to_json(mn::text)"),
    ("vb", "bit varying", "to_json(vb::text)"),
    ("pr", "pair", "to_json(pr::text)"),
    ("a_i4", "int4[]", "to_json(a_i4)"),
    ("a_i8", "int8[]", "to_json(a_i8)"),
    ("a_tx", "text[]", "to_json(a_tx)"),
    ("a_vc", "varchar[]", "to_json(a_vc)"),
    ("a_f4", "float4[]", "to_json(a_f4)"),
    ("a_f8", "float8[]", "to_json(a_f8)"),
    ("a_n", "numeric[]", "to_json(a_n::text[])"),
    ("a_j", "jsonb[]", "to_json(a_j)"),
    ("a_js", "json[]", "to_json(a_js)"),
    (
        "a_tz",
        "timestamptz[]",
        "to_json(CASE WHEN a_tz IS NOT NULL THEN ARRAY(SELECT isotz(x) FROM unnest(a_tz) x) END)",
    ),
    ("a_b", "bool[]", "to_json(a_b)"),
    ("a_by", "bytea[]", "to_json(a_by::text[])"),
    ("a_bx", "box[]", "to_json(a_bx::text[])"),
    ("a_u", "uuid[]", "to_json(a_u)"),
    ("a_d", "date[]", "to_json(a_d::text[])"),
    ("a_iv", "interval[]", "to_json(a_iv::text[])"),
    ("a_mo", "mood[]", "to_json(a_mo)"),
    ("a_pair", "pair[]", "to_json(a_pair::text[])"),
    ("a_ci", "citext[]", "to_json(a_ci::text[])"),
    ("a_rng", "int4range[]", "to_json(a_rng::text[])"),
    ("dbig", "big", "to_json(dbig)"),
    ("dbig2", "big2", "to_json(dbig2)"),
    ("dbigs", "bigs", "to_json(dbigs)"),
    ("a_dbig", "big[]", "to_json(a_dbig)"),
    ("dtext", "short_text", "to_json(dtext)"),
    ("dnum", "amount", "to_json(dnum::text)"),
    ("dts", "stamp", "to_json(isotz(dts))"),
    ("dj", "doc", "to_json(dj)"),
];

const SCHEMA: &str = r#"
CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int4, b text);
CREATE DOMAIN big AS int8;
CREATE DOMAIN big2 AS big;
CREATE DOMAIN bigs AS int8[];
CREATE DOMAIN short_text AS varchar(10);
CREATE DOMAIN amount AS numeric(12,2);
CREATE DOMAIN stamp AS timestamptz;
CREATE DOMAIN doc AS jsonb;
-- RFC 3339 from PostgreSQL's own date parts: astronomical year (1 BC = 0000), six digits.
CREATE FUNCTION iso(t timestamp) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN NOT isfinite(t) THEN t::text ELSE
    (SELECT CASE WHEN a < 0 THEN '-' ELSE '' END || lpad(abs(a)::text, greatest(4, length(abs(a)::text)), '0')
       FROM (SELECT CASE WHEN y < 0 THEN y + 1 ELSE y END AS a
               FROM (SELECT extract(year FROM t)::int AS y) s) s2)
    || to_char(t, '-MM-DD"T"HH24:MI:SS.US') END $$;
CREATE FUNCTION isotz(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN isfinite(t) THEN iso(t AT TIME ZONE 'UTC') || 'Z' ELSE t::text END $$;
"#;

/// Row 1: maxima, unicode, control characters, quoting in arrays, nesting.
const ROW_1: &[(&str, &str)] = &[
    ("b", "true"),
    ("i2", "32767"),
    ("i4", "2147483647"),
    ("i8", "9223372036854775807"),
    ("o", "4294967295"),
    ("f4", "'3.4028235e38'"),
    ("f8", "'1.7976931348623157e308'"),
    ("n", "'12345678901234567890.000001'"),
    ("n2", "'12345678901234567890.1234567890'"),
    ("tx", r#"E'héllo wörld 🎉 \u2028 ctl:\x01\x1f\t\n\r "q" \\ back'"#),
    ("vc", "'ascii'"),
    ("bp", "'ab'"),
    ("nm", "'name'"),
    ("ci", "'MiXeD'"),
    ("mo", "'happy'"),
    (
        "j",
        r#"'{"a": [1, 2.50, 123456789012345678901234567890], "s": "\u00e9", "n": null}'"#,
    ),
    (
        "jb",
        r#"'{"k": {"nested": [true, false, null]}, "big": 9007199254740993}'"#,
    ),
    ("u", "'7d0c0c2e-1111-4000-8000-000000000001'"),
    ("tz", "'2026-11-26 10:20:30.123456+05:30'"),
    ("ts", "'2026-11-26 10:20:30.5'"),
    ("d", "'2026-11-26'"),
    ("tm", "'23:59:59.999999'"),
    ("ttz", "'10:20:30+05:30'"),
    ("iv", "'1 year 2 mons 3 days 04:05:06.789'"),
    ("by", r"'\x00ff10'"),
    ("ip", "'192.168.0.1/24'"),
    ("rng", "'[1,10)'"),
    ("pt", "'(1.5,-2)'"),
    ("mn", "'12.34'"),
    ("vb", "B'10101'"),
    ("pr", "ROW(1, 'x y')"),
    ("a_i4", "'[0:1]={5,6}'"),
    (
        "a_i8",
        "'{-9223372036854775808,9223372036854775807,9007199254740993,NULL}'",
    ),
    (
        "a_tx",
        r#"ARRAY['a,b', 'q"u', 'back\slash', ' sp ', '{br}', 'NULL', '', NULL, 'é🎉', E'line\nbreak', E'tab\tin']"#,
    ),
    ("a_vc", "'{}'"),
    ("a_f4", "'{1.1,NaN,-Infinity}'"),
    ("a_f8", "'{NaN,Infinity,-Infinity,1.5,NULL,-0,5e-324}'"),
    ("a_n", "'{NaN,1.10,-12345678901234567890.000001}'"),
    ("a_j", r#"ARRAY['{"a": 1}', '[1, "x,y"]', 'null', '"s"']::jsonb[]"#),
    ("a_js", r#"ARRAY['{"a" : 1}', '[ ]']::json[]"#),
    (
        "a_tz",
        "ARRAY['2026-11-26 10:20:30+05:30', 'infinity', '-infinity', NULL, '0044-03-15 12:00:00+00 BC']::timestamptz[]",
    ),
    ("a_b", "'{t,f,NULL}'"),
    ("a_by", r"ARRAY['\x00ff'::bytea, '\x'::bytea, NULL]"),
    ("a_bx", "ARRAY[box '((0,0),(1,1))', box '((2,2),(3,3))']"),
    ("a_u", "ARRAY['7d0c0c2e-1111-4000-8000-000000000002'::uuid]"),
    ("a_d", "ARRAY['2026-11-26', '0044-03-15 BC']::date[]"),
    ("a_iv", "ARRAY['1 day', '-00:00:01']::interval[]"),
    ("a_mo", "'{sad,happy}'"),
    ("a_pair", r#"ARRAY[ROW(1, 'a,b')::pair, ROW(NULL, 'q"u')::pair, NULL]"#),
    ("a_ci", "ARRAY['A', 'b']::citext[]"),
    ("a_rng", "ARRAY['[1,2)'::int4range, 'empty']"),
    ("dbig", "9007199254740993"),
    ("dbig2", "-9223372036854775808"),
    ("dbigs", "'{1,NULL,9007199254740993}'"),
    ("a_dbig", "'{{1,2},{3,4}}'"),
    ("dtext", "'dom'"),
    ("dnum", "'12.30'"),
    ("dts", "'infinity'"),
    ("dj", r#"'[1, {"a": null}]'"#),
];

/// Row 2: minima, empties, BC dates, negative intervals.
const ROW_2: &[(&str, &str)] = &[
    ("b", "false"),
    ("i2", "-32768"),
    ("i4", "-2147483648"),
    ("i8", "-9223372036854775808"),
    ("o", "0"),
    ("f4", "'-Infinity'"),
    ("f8", "'NaN'"),
    ("n", "'NaN'"),
    ("n2", "'-0.0000000001'"),
    ("tx", "''"),
    ("vc", "''"),
    ("bp", "''"),
    ("ci", "''"),
    ("mo", "'sad'"),
    ("j", "'null'"),
    ("jb", "'[]'"),
    ("u", "'00000000-0000-0000-0000-000000000000'"),
    ("tz", "'0044-03-15 12:00:00+00 BC'"),
    ("ts", "'-infinity'"),
    ("d", "'0044-03-15 BC'"),
    ("tm", "'00:00:00'"),
    ("ttz", "'00:00:00-03:30'"),
    ("iv", "'-1 days +02:03:04'"),
    ("by", r"'\x'"),
    ("ip", "'::1'"),
    ("rng", "'empty'"),
    ("mn", "'-0.01'"),
    ("vb", "B''"),
    ("pr", "ROW(NULL, NULL)"),
    ("a_i4", "'{{1,2},{3,4}}'"),
    ("a_i8", "'{}'"),
    ("a_tx", r#"'{{"a","b"},{NULL,"c d"}}'"#),
    ("a_vc", "'{NULL}'"),
    ("a_f8", "'{}'"),
    ("a_n", "'{}'"),
    ("a_j", "'{}'"),
    ("a_tz", "'{}'"),
    ("a_mo", "'{}'"),
    ("a_pair", "'{}'"),
    ("dbig", "-1"),
    ("dbig2", "0"),
    ("dbigs", "'{}'"),
    ("a_dbig", "'{}'"),
    ("dtext", "''"),
    ("dnum", "'-0.50'"),
    ("dts", "'-infinity'"),
    ("dj", "'null'"),
];

/// Row 4: the remaining special values (row 3 is NULL in every column).
const ROW_4: &[(&str, &str)] = &[
    ("f4", "'Infinity'"),
    ("f8", "'-0'"),
    ("n", "'Infinity'"),
    ("tz", "'infinity'"),
    ("ts", "'294276-12-31 23:59:59.999999'"),
    ("i8", "9007199254740993"),
    ("a_f8", "'{{1.5,2},{NaN,-1e-300}}'"),
    ("a_n", "'{-Infinity,1e100}'"),
    ("tx", r"repeat('x', 100) || E'\u00a0\u0085'"),
];

fn insert(id: i32, values: &[(&str, &str)]) -> String {
    let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
    let literals: Vec<&str> = values.iter().map(|(_, v)| *v).collect();
    format!(
        "INSERT INTO t (id, {}) VALUES ({id}, {})",
        names.join(", "),
        literals.join(", ")
    )
}

fn expectation_sql() -> String {
    let pairs: Vec<String> = COLUMNS
        .iter()
        .map(|(name, _, expr)| format!("'{name}', {expr}"))
        .collect();
    let parts: Vec<String> = pairs
        .chunks(40)
        .map(|chunk| format!("json_build_object('id', id, {})", chunk.join(", ")))
        .collect();
    format!(
        "SELECT json_build_array({})::text FROM t WHERE id = $1",
        parts.join(", ")
    )
}

/// What PostgreSQL says row `id` of `t` is, as one JSON object.
async fn expected_row(client: &tokio_postgres::Client, id: i32) -> Value {
    let row = client
        .query_one(&expectation_sql(), &[&id])
        .await
        .unwrap_or_else(|e| panic!("expectation query for row {id}: {e}"));
    let text: String = row.get(0);
    let parts: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("expectation is JSON: {e}: {text}"));
    let mut merged = serde_json::Map::new();
    for part in parts.as_array().into_iter().flatten() {
        for (k, v) in part.as_object().into_iter().flatten() {
            merged.insert(k.clone(), v.clone());
        }
    }
    Value::Object(merged)
}

/// Publishes every event twice: the default payload on the default subject, and what the
/// script sees (its `data`/`dataOld` tables, JSON-encoded by Lua) on `<topic>.lua`.
const LUA_VIEW: &str = r#"
function route(event)
  local d = event.data
  local view = { data = d, dataOld = event.dataOld,
                 kinds = { i8 = math.type(d.i8), dbig = math.type(d.dbig), f8 = math.type(d.f8) } }
  return { { subject = wal.subject(event) },
           { subject = config.publisher.topic .. ".lua", payload = view } }
end
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_is_published_exactly_as_postgresql_has_it() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let columns: Vec<String> = COLUMNS.iter().map(|(name, ty, _)| format!("{name} {ty}")).collect();
    pg.psql(&format!(
        "{SCHEMA}; CREATE TABLE t (id int4 PRIMARY KEY, {}); ALTER TABLE t REPLICA IDENTITY FULL;",
        columns.join(", ")
    ));
    let scripts = tempfile::tempdir().expect("script dir");
    let script = scripts.path().join("view.lua");
    std::fs::write(&script, LUA_VIEW).expect("write script");
    let mut setup = Setup::new("types");
    setup.extra = format!("scripts:\n  path: {}\n", script.display());
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));

    let client = pg.client().await;
    // The expectations use the text forms the replication session pins.
    client
        .batch_execute("SET DateStyle = ISO; SET IntervalStyle = postgres; SET TimeZone = UTC; SET extra_float_digits = 3; SET bytea_output = hex")
        .await
        .expect("session settings");
    pg.psql(&insert(1, ROW_1));
    pg.psql(&insert(2, ROW_2));
    pg.psql("INSERT INTO t (id) VALUES (3)");
    pg.psql(&insert(4, ROW_4));
    let mut before = Vec::new();
    for id in 1..=4 {
        before.push(expected_row(&client, id).await);
    }
    pg.psql(
        "UPDATE t SET tx = 'changed', i8 = -1, a_i4 = NULL, dbigs = '{{7}}' WHERE id = 1; DELETE FROM t WHERE id = 2;",
    );
    let after_update = expected_row(&client, 1).await;

    // Types created while the service runs are looked up when their table first appears.
    pg.psql(
        "CREATE TYPE late_mood AS ENUM ('x', 'y'); CREATE DOMAIN late_big AS int8; CREATE DOMAIN late_big2 AS late_big;
         CREATE TABLE late (id int4 PRIMARY KEY, lb late_big2, lbs late_big[], lm late_mood[], lmo late_mood);
         INSERT INTO late VALUES (1, 9007199254740993, '{1,NULL}', '{x,y}', 'y');",
    );

    let all = nats.wait_for_messages(&setup.topic, 14, DEADLINE).await;
    let rows = on_subject(&all, &format!("{}.public_t", setup.topic));
    let views = on_subject(&all, &format!("{}.lua", setup.topic));
    assert_eq!((rows.len(), views.len()), (6, 7), "log:\n{}", service.log());

    let empty = Value::Object(serde_json::Map::new());
    let expected: Vec<(&str, &Value, &Value)> = vec![
        ("INSERT 1", &before[0], &empty),
        ("INSERT 2", &before[1], &empty),
        ("INSERT 3", &before[2], &empty),
        ("INSERT 4", &before[3], &empty),
        ("UPDATE 1", &after_update, &before[0]),
        ("DELETE 2", &empty, &before[1]),
    ];
    for ((what, data, data_old), (m, view)) in expected.into_iter().zip(rows.iter().zip(&views)) {
        let payload = m.json();
        assert_eq!(payload["action"], what.split(' ').next().unwrap_or_default(), "{what}");
        assert_same(&format!("{what} data"), &payload["data"], data);
        assert_same(&format!("{what} dataOld"), &payload["dataOld"], data_old);
        // Scripts see the same values (SQL NULL as nil, so absent keys).
        let view = view.json();
        assert_same(
            &format!("{what} data as Lua sees it"),
            &without_nulls(&view["data"]),
            &without_nulls(data),
        );
        assert_same(
            &format!("{what} dataOld as Lua sees it"),
            &without_nulls(&view["dataOld"]),
            &without_nulls(data_old),
        );
    }
    // Exact integers: in the payload text and as Lua integers.
    let first = rows[0].payload_str();
    assert!(
        first.contains("\"i8\":9223372036854775807,") && first.contains("\"dbig\":9007199254740993,"),
        "{first}"
    );
    assert_eq!(
        views[0].json()["kinds"],
        serde_json::json!({"i8": "integer", "dbig": "integer", "f8": "float"})
    );

    let late = on_subject(&all, &format!("{}.public_late", setup.topic));
    assert_eq!(late.len(), 1);
    assert_eq!(
        late[0].json()["data"],
        serde_json::json!({"id": 1, "lb": 9007199254740993u64, "lbs": [1, null], "lm": ["x", "y"], "lmo": "y"}),
        "log:\n{}",
        service.log()
    );
    assert!(
        !service.log().contains("does not parse as its type"),
        "no value fell back to text:\n{}",
        service.log()
    );
    blocking(|| service.terminate());
}
