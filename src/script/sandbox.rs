//! The sandboxed Lua state and the host API every script sees.
//!
//! Only the safe standard library is opened: `string`, `table`, `math`, `utf8`, `coroutine`,
//! and `os` cut down to `time`, `date` and `clock`. `io`, `debug`, `package`, `dofile`,
//! `loadfile`, `string.dump` and `collectgarbage` other than counting are absent, and `load`
//! only accepts text (binary chunks can crash the VM).
//!
//! Globals added: `config` (read-only), `json.encode/decode` (64-bit integers exact),
//! `json.null`, `log.debug/info/warn/error`, and `wal` (see `scripts/wal.lua`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib, Table, Value as LuaValue};

use crate::config::Config;

use super::WAL_LUA;

/// A fresh state with the sandbox and the host API installed; `modules` is the directory
/// `require` may load from (the entry script's), if any.
pub(super) fn new_state(config: &Config, modules: Option<&Path>) -> mlua::Result<Lua> {
    let libs = StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::default())?;
    // Every event leaves a little garbage (its userdata, strings); the generational collector
    // reclaims such young objects cheaply and keeps the heap small.
    lua.gc_set_mode(mlua::state::GcMode::Generational(mlua::state::GcGenParams::default()));
    lua.set_app_data(super::handoff::NameStrings::default());
    let globals = lua.globals();

    // os: only the clock and calendar functions.
    let os: Table = globals.get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "date", "clock"] {
        safe_os.set(name, os.get::<LuaValue>(name)?)?;
    }
    globals.set("os", safe_os)?;
    for name in ["dofile", "loadfile"] {
        globals.set(name, LuaValue::Nil)?;
    }
    let string: Table = globals.get("string")?;
    string.set("dump", LuaValue::Nil)?;
    lua.load(
        r#"
        local raw_load, raw_collect = load, collectgarbage
        load = function(chunk, name, _mode, env) return raw_load(chunk, name, "t", env) end
        collectgarbage = function(opt)
          if opt == "count" then return raw_collect("count") end
          error("collectgarbage is not available to scripts", 2)
        end
        "#,
    )
    .set_name("=sandbox")
    .exec()?;

    globals.set("require", require_function(&lua, modules)?)?;
    globals.set("config", read_only(&lua, lua.to_value(&config_view(config))?)?)?;
    globals.set("json", json_table(&lua)?)?;
    globals.set("log", log_table(&lua)?)?;
    // print writes to stdout, where `publisher.type: stdout` writes the messages: send it to the
    // log instead, rate-limited like log.info.
    lua.load(
        r##"
        local info, select, tostring, concat = log.info, select, tostring, table.concat
        print = function(...)
          local parts = {}
          for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
          info(concat(parts, "\t"))
        end
        "##,
    )
    .set_name("=sandbox")
    .exec()?;
    let wal: Table = lua
        .load(WAL_LUA)
        .set_name("@wal.lua")
        .set_mode(mlua::chunk::ChunkMode::Text)
        .eval()?;
    globals.set("wal", read_only(&lua, LuaValue::Table(wal))?)?;
    Ok(lua)
}

/// The part of the configuration scripts may read (no secrets).
fn config_view(config: &Config) -> serde_json::Value {
    let tables: serde_json::Map<String, serde_json::Value> = config
        .listener
        .filter
        .tables
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    serde_json::json!({
        "listener": {
            "slotName": config.listener.slot_name,
            "publication": config.listener.publication,
            "filter": filter_view(tables, config.listener.filter.messages.as_deref()),
            "topicsMap": config.listener.topics_map,
        },
        "publisher": {
            "type": config.publisher.kind.as_str(),
            "topic": config.publisher.topic,
            "topicPrefix": config.publisher.topic_prefix,
        },
        "scripts": {
            "deadLetterSubject": config.dead_letter_subject(),
        },
    })
}

/// `listener.filter`; `messages` is present only when configured (absent = every message).
fn filter_view(tables: serde_json::Map<String, serde_json::Value>, messages: Option<&[String]>) -> serde_json::Value {
    let mut filter = serde_json::json!({ "tables": tables });
    if let (Some(messages), Some(obj)) = (messages, filter.as_object_mut()) {
        obj.insert("messages".into(), serde_json::json!(messages));
    }
    filter
}

/// Wrap tables (recursively) in proxies whose writes fail.
fn read_only(lua: &Lua, value: LuaValue) -> mlua::Result<LuaValue> {
    let LuaValue::Table(table) = value else {
        return Ok(value);
    };
    let inner = lua.create_table()?;
    for pair in table.pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair?;
        inner.raw_set(k, read_only(lua, v)?)?;
    }
    let proxy = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.set("__index", inner.clone())?;
    meta.set(
        "__newindex",
        lua.create_function(|_, (_t, k, _v): (LuaValue, LuaValue, LuaValue)| -> mlua::Result<()> {
            Err(mlua::Error::RuntimeError(format!(
                "attempt to modify read-only field {}",
                k.to_string()?
            )))
        })?,
    )?;
    // pairs(config.listener.topicsMap) iterates the real contents.
    let pairs_inner = inner.clone();
    meta.set(
        "__pairs",
        lua.create_function(move |lua, _: LuaValue| {
            let next: mlua::Function = lua.globals().get("next")?;
            Ok((next, pairs_inner.clone(), LuaValue::Nil))
        })?,
    )?;
    meta.set("__len", lua.create_function(move |_, _: LuaValue| Ok(inner.raw_len()))?)?;
    meta.set("__metatable", false)?;
    proxy.set_metatable(Some(meta))?;
    Ok(LuaValue::Table(proxy))
}

fn json_table(lua: &Lua) -> mlua::Result<Table> {
    let json = lua.create_table()?;
    json.set(
        "encode",
        lua.create_function(|_, value: LuaValue| {
            serde_json::to_string(&value).map_err(|e| mlua::Error::RuntimeError(format!("json.encode: {e}")))
        })?,
    )?;
    json.set(
        "decode",
        lua.create_function(|lua, text: mlua::LuaString| {
            super::handoff::json_to_lua(lua, serde_json::de::SliceRead::new(&text.as_bytes()), "json.decode")
        })?,
    )?;
    json.set("null", lua.null())?;
    Ok(json)
}

/// `require(name)`: a module `a.b` is `<scripts dir>/a/b.lua`, loaded once as text. Names are
/// dotted identifiers, so no path can leave the directory; symlinks that do are refused too.
fn require_function(lua: &Lua, modules: Option<&Path>) -> mlua::Result<mlua::Function> {
    let dir: Option<PathBuf> = modules.and_then(|d| d.canonicalize().ok());
    let loaded = lua.create_table()?;
    lua.create_function(move |lua, name: String| {
        if let Some(module) = loaded.get::<Option<LuaValue>>(name.as_str())? {
            return Ok(module);
        }
        let Some(dir) = &dir else {
            return Err(mlua::Error::RuntimeError(
                "require is only available to scripts loaded from a file (scripts.path)".into(),
            ));
        };
        let valid = !name.is_empty()
            && name.split('.').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !part.as_bytes()[0].is_ascii_digit()
            });
        if !valid {
            return Err(mlua::Error::RuntimeError(format!(
                "require({name:?}): module names are dotted identifiers (like util.masking) of .lua files inside the scripts directory"
            )));
        }
        let relative = format!("{}.lua", name.replace('.', "/"));
        let path = dir.join(&relative);
        let real = path.canonicalize().map_err(|e| {
            mlua::Error::RuntimeError(format!("require({name:?}): cannot read {}: {e}", path.display()))
        })?;
        if !real.starts_with(dir) {
            return Err(mlua::Error::RuntimeError(format!(
                "require({name:?}): {} leads outside the scripts directory",
                path.display()
            )));
        }
        let source = std::fs::read_to_string(&real)
            .map_err(|e| mlua::Error::RuntimeError(format!("require({name:?}): {e}")))?;
        let module: LuaValue = lua
            .load(source)
            .set_name(format!("@{relative}"))
            .set_mode(mlua::chunk::ChunkMode::Text)
            .call(name.as_str())?;
        let module = if module.is_nil() { LuaValue::Boolean(true) } else { module };
        loaded.set(name.as_str(), module.clone())?;
        Ok(module)
    })
}

/// Script log lines allowed per second; the rest are counted and reported.
const LOG_LINES_PER_SECOND: u32 = 50;

struct LogBudget {
    window: Instant,
    used: u32,
    dropped: u64,
}

impl LogBudget {
    /// Whether a line may be written now; reports dropped lines when a new second starts.
    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.dropped > 0 {
                tracing::warn!(target: "wal_listener::script", dropped = self.dropped, "script log lines dropped (more than {LOG_LINES_PER_SECOND} per second)");
            }
            *self = LogBudget {
                window: Instant::now(),
                used: 0,
                dropped: 0,
            };
        }
        self.used += 1;
        if self.used > LOG_LINES_PER_SECOND {
            self.dropped += 1;
            return false;
        }
        true
    }
}

fn log_table(lua: &Lua) -> mlua::Result<Table> {
    let log = lua.create_table()?;
    let budget = std::sync::Arc::new(Mutex::new(LogBudget {
        window: Instant::now(),
        used: 0,
        dropped: 0,
    }));
    macro_rules! level {
        ($name:literal, $mac:ident) => {
            let budget = budget.clone();
            log.set(
                $name,
                lua.create_function(move |_, message: mlua::LuaString| {
                    if budget.lock().map(|mut b| b.allow()).unwrap_or(true) {
                        tracing::$mac!(target: "wal_listener::script", "{}", message.to_string_lossy());
                    }
                    Ok(())
                })?,
            )?;
        };
    }
    level!("debug", debug);
    level!("info", info);
    level!("warn", warn);
    level!("error", error);
    Ok(log)
}
