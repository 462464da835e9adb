use super::*;
use crate::config::Config;
use std::path::PathBuf;

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, &[], PathBuf::new()).expect("valid config").0
}

fn event(schema: &str, table: &str, action: &str) -> Arc<ChangeEvent> {
    let json = serde_json::json!({"schema": schema, "table": table, "action": action, "data": {"id": 9007199254740993i64, "region": "eu", "tags": ["a", null]}});
    Arc::new(crate::event::from_json(&json, 0).expect("event"))
}

fn subjects(router: &Router, e: &Arc<ChangeEvent>) -> Vec<String> {
    router
        .route(e)
        .expect("route succeeds")
        .into_iter()
        .map(|r| r.subject)
        .collect()
}

#[test]
fn default_script_without_filter_publishes_every_table() {
    let router = Router::from_config(&config("")).expect("default compiles");
    assert_eq!(
        subjects(&router, &event("public", "users", "INSERT")),
        ["wal_listener.public_users"]
    );
    let routed = router.route(&event("public", "users", "INSERT")).expect("route");
    assert_eq!(routed[0].payload, Payload::Event);
}

#[test]
fn default_script_applies_the_go_filter_and_topics_map() {
    let cfg = config(
        "listener:\n  filter:\n    tables:\n      users: [insert, Update]\n      billing.invoices: [delete]\n  topicsMap:\n    public_users: notifier\npublisher:\n  topic: cdc\n  topicPrefix: pre_\n",
    );
    let router = Router::from_config(&cfg).expect("compiles");
    assert_eq!(
        subjects(&router, &event("public", "users", "INSERT")),
        ["cdc.pre_notifier"]
    );
    assert_eq!(
        subjects(&router, &event("other", "users", "UPDATE")),
        ["cdc.pre_other_users"],
        "bare name matches any schema"
    );
    assert!(subjects(&router, &event("public", "users", "DELETE")).is_empty());
    assert!(subjects(&router, &event("public", "orders", "INSERT")).is_empty());
    assert_eq!(
        subjects(&router, &event("billing", "invoices", "DELETE")),
        ["cdc.pre_billing_invoices"]
    );
    assert!(
        subjects(&router, &event("public", "invoices", "DELETE")).is_empty(),
        "qualified name matches that schema only"
    );
}

#[test]
fn subject_tokens_are_sanitized() {
    let router = Router::from_config(&config("")).expect("compiles");
    assert_eq!(
        subjects(&router, &event("my schema", "a.b*c>d", "INSERT")),
        ["wal_listener.my_schema_a_b_c_d"]
    );
}

fn custom(source: &str) -> Router {
    Router::new(
        &config("scripts:\n  instructionLimit: 100000\n  memoryLimit: 8388608\n"),
        "test.lua",
        source,
    )
    .expect("script compiles")
}

#[test]
fn scripts_see_exact_integers_and_can_build_payloads_and_headers() {
    let router = custom(
        r#"function route(e)
             assert(math.type(e.data.id) == "integer" and e.data.id == 9007199254740993)
             assert(e.data.tags[2] == json.null)
             return "cdc." .. e.data.region, { id = e.data.id, big = e.data.id }, { Tenant = "t1" }
           end"#,
    );
    let routed = router.route(&event("public", "users", "INSERT")).expect("route");
    assert_eq!(routed[0].subject, "cdc.eu");
    assert_eq!(routed[0].headers, [("Tenant".to_string(), "t1".to_string())]);
    let Payload::Json(bytes) = &routed[0].payload else {
        panic!("expected JSON")
    };
    let v: serde_json::Value = serde_json::from_slice(bytes).expect("json");
    assert_eq!(v["id"].as_i64(), Some(9007199254740993));
}

#[test]
fn header_names_nats_cannot_carry_are_script_errors() {
    for name in ["Tenänt", "Two words", "a:b", "tab\\t", ""] {
        let router = custom(&format!(
            "function route(e) return 'cdc.x', e, {{ ['{name}'] = 'v' }} end"
        ));
        match router.route(&event("public", "users", "INSERT")) {
            Err(e) => assert!(e.to_string().contains("invalid header name"), "{name}: {e}"),
            Ok(r) => panic!("{name:?} accepted: {:?}", r[0].headers),
        }
    }
}

#[test]
fn fan_out_and_raw_payloads() {
    let router = custom(
        r#"function route(e) return { { subject = "a.one" }, { subject = "a.two", payload = "raw bytes" } } end"#,
    );
    let routed = router.route(&event("s", "t", "INSERT")).expect("route");
    assert_eq!(routed.len(), 2);
    assert_eq!(routed[0].payload, Payload::Event);
    assert_eq!(routed[1].payload, Payload::Raw(b"raw bytes".to_vec()));
}

#[test]
fn extending_the_default_script() {
    let router = custom(r#"function route(e) local s = wal.default_route(e); if s then return s .. ".v2" end end"#);
    assert_eq!(
        subjects(&router, &event("public", "users", "INSERT")),
        ["wal_listener.public_users.v2"]
    );
}

#[test]
fn invalid_returns_and_runtime_errors_are_explained() {
    let bad = |src: &str| {
        custom(src)
            .route(&event("s", "t", "INSERT"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(bad("function route(e) return 42 end").contains("route returned the number 42"));
    assert!(bad("function route(e) return 'a..b' end").contains("empty token"));
    assert!(bad("function route(e) return 'a.*' end").contains("wildcards"));
    assert!(bad("function route(e) return 'a', 'p', { ['Nats-Msg-Id'] = 'x' } end").contains("set by wal-listener"));
    assert!(bad("function route(e) error('boom') end").contains("test.lua:1: boom"));
}

#[test]
fn infinite_loops_and_memory_bombs_are_stopped() {
    let r = custom("function route(e) while true do end end");
    assert_eq!(
        r.route(&event("s", "t", "INSERT")),
        Err(RouteError::InstructionLimit(100_000, "test.lua:1".into()))
    );
    // The next call gets a fresh budget.
    let r = custom("n = 0 function route(e) n = n + 1 if n == 1 then while true do end end return 'ok' end");
    assert!(r.route(&event("s", "t", "INSERT")).is_err());
    assert_eq!(subjects(&r, &event("s", "t", "INSERT")), ["ok"]);
    let r = custom("function route(e) local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1024) .. i end end");
    assert_eq!(r.route(&event("s", "t", "INSERT")), Err(RouteError::Memory));
}

#[test]
fn the_sandbox_has_no_way_out() {
    for src in [
        "return io.open('/etc/passwd')",
        "return os.execute('true')",
        "return os.getenv('HOME')",
        "return require('os')",
        "return dofile('/etc/passwd')",
        "return loadfile('/etc/passwd')",
        "return load(string.dump(function() end))",
        "return debug.getinfo(1)",
        "config.publisher.topic = 'x'",
    ] {
        let script = format!("function route(e) {src} end");
        let result = custom(&script).route(&event("s", "t", "INSERT"));
        assert!(matches!(result, Err(RouteError::Runtime(_))), "{src} gave {result:?}");
    }
    let r = custom("function route(e) return load('return \"ok\"')() end");
    assert_eq!(subjects(&r, &event("s", "t", "INSERT")), ["ok"]);
}

#[test]
fn compile_errors_name_the_script() {
    let cfg = config("");
    match Router::new(&cfg, "broken.lua", "function route(e") {
        Err(ScriptError::Compile { name, message }) => {
            assert_eq!(name, "broken.lua");
            assert!(message.contains("broken.lua"), "{message}");
        }
        other => panic!(
            "expected a compile error, got {:?}",
            other.map(|r| r.name().to_string())
        ),
    }
    assert!(matches!(
        Router::new(&cfg, "x.lua", "x = 1"),
        Err(ScriptError::NoRoute { .. })
    ));
}

#[test]
fn the_default_scripts_cases_pass() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cases/default.json");
    let report = super::cases::run(&config(""), &[file]);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.passed, 6);
}

#[test]
fn require_stays_inside_the_scripts_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("lib")).expect("mkdir");
    std::fs::write(dir.path().join("lib/names.lua"), "return { prefix = 'cdc' }").expect("write");
    std::fs::write(
        dir.path().join("route.lua"),
        "local n = require('lib.names') function route(e) return n.prefix .. '.x' end",
    )
    .expect("write");
    let outside = tempfile::tempdir().expect("temp dir");
    std::fs::write(outside.path().join("evil.lua"), "return {}").expect("write");
    std::os::unix::fs::symlink(outside.path().join("evil.lua"), dir.path().join("link.lua")).expect("symlink");
    let cfg = Config::from_yaml("scripts:\n  path: route.lua\n", &[], dir.path().to_path_buf())
        .expect("config")
        .0;
    let router = Router::from_config(&cfg).expect("compiles with a module");
    assert_eq!(subjects(&router, &event("s", "t", "INSERT")), ["cdc.x"]);
    for (name, why) in [
        ("../x", "dotted identifiers"),
        ("/etc/passwd", "dotted identifiers"),
        ("link", "outside the scripts directory"),
        ("missing", "cannot read"),
    ] {
        let script = format!("function route(e) return require('{name}') end");
        std::fs::write(dir.path().join("route.lua"), script).expect("write");
        let router = Router::from_config(&cfg).expect("compiles");
        let err = router
            .route(&event("s", "t", "INSERT"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(why), "require({name}): {err}");
    }
}

#[test]
fn the_top_level_of_a_script_is_limited_too() {
    let cfg = config("scripts:\n  instructionLimit: 100000\n  memoryLimit: 8388608\n");
    let looped = Router::new(&cfg, "loop.lua", "while true do end function route(e) end");
    assert!(matches!(&looped, Err(ScriptError::Compile { message, .. }) if message.contains("instruction limit")));
    let bomb = Router::new(
        &cfg,
        "bomb.lua",
        "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1024) .. i end",
    );
    assert!(bomb.is_err());
}

#[test]
fn the_event_after_a_memory_error_is_routed_normally() {
    let r = custom(
        "function route(e) if e.table == 'big' then local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1024) .. i end end return 'ok' end",
    );
    assert_eq!(r.route(&event("s", "big", "INSERT")), Err(RouteError::Memory));
    assert_eq!(subjects(&r, &event("s", "small", "INSERT")), ["ok"]);
    assert_eq!(subjects(&r, &event("s", "small", "INSERT")), ["ok"]);
}

/// The built-in default script is asked once per relation and action; what it answered then
/// is what Lua answers every time (compared with a router that always calls Lua).
#[test]
fn the_default_scripts_answers_are_kept_per_relation_and_action_and_match_lua() {
    use crate::event::Action;
    let cfg = config(
        "listener:\n  filter:\n    tables:\n      users: [insert]\n      billing.invoices: [insert, delete]\n  topicsMap:\n    public_users: people\n",
    );
    let kept = Router::from_config(&cfg).expect("compiles");
    let always = Router::new(&cfg, "default.lua", DEFAULT_LUA).expect("compiles");
    assert!(always.memo.is_none());
    let mut events = Vec::new();
    for (schema, table) in [
        ("public", "users"),
        ("other", "users"),
        ("billing", "invoices"),
        ("public", "invoices"),
    ] {
        // Changes of one relation share its names, as they do coming from the relation cache.
        let base = event(schema, table, "INSERT");
        for action in [Action::Insert, Action::Update, Action::Delete, Action::Truncate] {
            let mut e = (*base).clone();
            e.action = action;
            events.push(Arc::new(e));
        }
    }
    for _round in 0..3 {
        for e in &events {
            assert_eq!(
                kept.route(e),
                always.route(e),
                "{}.{} {:?}",
                e.schema,
                e.table,
                e.action
            );
        }
    }
    assert_eq!(kept.memo.as_ref().map(|m| m.len()), Some(16));
    // Another relation with the same names (a new Arc, as after a schema change) is asked anew.
    assert_eq!(
        kept.route(&event("public", "users", "INSERT")),
        always.route(&event("public", "users", "INSERT"))
    );
    assert_eq!(kept.memo.as_ref().map(|m| m.len()), Some(17));
}

#[test]
fn messages_and_custom_scripts_are_routed_by_lua_every_time() {
    let kept = Router::from_config(&config("")).expect("compiles");
    let message = Arc::new(
        crate::event::from_json(
            &serde_json::json!({"action": "MESSAGE", "prefix": "audit", "content": "x", "transactional": true}),
            0,
        )
        .expect("message"),
    );
    assert_eq!(subjects(&kept, &message), ["wal_listener.message_audit"]);
    assert_eq!(kept.memo.as_ref().map(|m| m.len()), Some(0));
    assert!(custom("function route(e) return 'a.b' end").memo.is_none());
}

/// The event is valid during its call only: a script that kept it gets an error on access, and
/// returning it later is not "the event" (it would publish another event's payload).
#[test]
fn a_kept_event_is_not_usable_after_its_call() {
    let r = custom(
        "local kept function route(e) if kept == nil then kept = e return 'first' end local ok, err = pcall(function() return kept.table end) if ok then return 'read' end return 'later', kept end",
    );
    assert_eq!(subjects(&r, &event("s", "t", "INSERT")), ["first"]);
    let err = r
        .route(&event("s", "t", "INSERT"))
        .expect_err("the kept event is no payload");
    assert!(matches!(err, RouteError::InvalidReturn { .. }), "{err:?}");
}

/// Fields are built with the memory cap lifted and the cap is back when the script runs on.
#[test]
fn the_memory_cap_is_back_after_each_field() {
    let r = custom(
        "function route(e) local d = e.data local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1024) .. i end end",
    );
    assert_eq!(r.route(&event("s", "t", "INSERT")), Err(RouteError::Memory));
    let r = custom("function route(e) local d = e.data local o = e.dataOld return 'x.' .. e.table .. '.' .. d.id end");
    assert_eq!(subjects(&r, &event("s", "t", "INSERT")), ["x.t.9007199254740993"]);
}

/// Column names come from strings kept per state (by the address of the relation's shared
/// name): the second event of a relation, whose rows share those names, gets the same keys and
/// values as the first, a script changing its `data` table changes nothing for the next event,
/// and a column of the same name at another address (a relation seen anew) reads the same.
#[test]
fn rows_of_one_relation_read_the_same_with_kept_column_names() {
    let r = custom(
        "function route(e) local d = e.data local seen = d.id .. ':' .. d.region .. ':' .. #d.tags d.region = 'changed' d.extra = 1 return 'x.' .. seen .. (d.missing == nil and '.none' or '.some') end",
    );
    let first = event("s", "t", "INSERT");
    let mut again = (*first).clone();
    again.data = first.data.clone();
    assert!(
        Arc::ptr_eq(&first.data.0[0].0, &again.data.0[0].0),
        "the rows share their column names"
    );
    let again = Arc::new(again);
    for e in [&first, &again, &first, &event("s", "t", "INSERT")] {
        assert_eq!(subjects(&r, e), ["x.9007199254740993:eu:2.none"]);
    }
}

/// `json.decode` builds what a json column builds (integers exact, floats, `json.null`, arrays
/// with a length); a parse error names `json.decode`; decoding past `scripts.memoryLimit` is the
/// memory error, not a hang or a crash.
#[test]
fn json_decode_converts_like_json_columns_and_stays_under_the_memory_cap() {
    let r = custom(
        r#"function route(e) local v = json.decode('{"a": [1, 2.5, null], "b": 9007199254740993}') return 'x.' .. math.type(v.a[1]) .. '.' .. math.type(v.a[2]) .. '.' .. tostring(v.a[3] == json.null) .. '.' .. #v.a .. '.' .. v.b end"#,
    );
    assert_eq!(
        subjects(&r, &event("s", "t", "INSERT")),
        ["x.integer.float.true.3.9007199254740993"]
    );
    let r = custom(
        r#"function route(e) local ok, err = pcall(json.decode, '{"a": ') return 'x.' .. tostring(ok) .. (string.find(tostring(err), 'json.decode: EOF while parsing', 1, true) and '.named' or '.other') end"#,
    );
    assert_eq!(subjects(&r, &event("s", "t", "INSERT")), ["x.false.named"]);
    let r = custom(
        r#"function route(e) local s = '[' .. string.rep('{"k": [1, 2]},', 100000) .. '1]' return 'x.' .. #json.decode(s) end"#,
    );
    assert_eq!(r.route(&event("s", "t", "INSERT")), Err(RouteError::Memory));
}
