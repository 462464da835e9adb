//! The event as Lua sees it: userdata whose fields are built on first read.
//!
//! | field | Lua type |
//! |---|---|
//! | `id`, `schema`, `table`, `action`, `lsn`, `commitTime` | string |
//! | `xid` | integer |
//! | `data`, `dataOld` | table: column → value (SQL NULL is `nil`) |
//! | `unchangedToast` | list of column names |
//! | `prefix`, `content`, `transactional` | messages only (`content` is the raw string) |
//!
//! Column values: integers are Lua integers (exact to 64 bits), floats numbers, numerics
//! strings, json/jsonb decoded tables, arrays sequences (a NULL element is `json.null`).
//!
//! ## Cost
//!
//! Under a memory cap mlua runs every API call that may allocate as a protected call (a
//! `lua_pcall` of a C function around it), which made building `data` — a string key, a value
//! and a `rawset` per column, each protected — most of a custom script's cost in the drain
//! profile. What the host builds here is bounded by the event, which is already in memory, not
//! by anything the script controls, so the getters lift the cap while they build ([`Uncapped`])
//! and put it back before the script runs on; the script's own allocations stay capped. A row
//! becomes a table in one `create_table_from` call, with keys and scalar values pushed straight
//! onto the Lua stack (no registry reference per value).

use std::sync::Arc;

use mlua::{Either, Lua, LuaSerdeExt, UserData, UserDataFields, Value as LuaValue};
use rustc_hash::FxHashMap;

use crate::event::{Action, ChangeEvent, Row, Value};

/// The userdata handed to `route`: the event while the call lasts (the router takes it out
/// afterwards, so a script that kept the userdata gets an error on access, and the event's
/// memory is released at once), and the memory cap to restore after building a field.
pub(crate) struct EventData {
    pub(crate) event: Option<Arc<ChangeEvent>>,
    pub(crate) memory_limit: usize,
}

impl EventData {
    fn event(&self) -> mlua::Result<&ChangeEvent> {
        self.event.as_deref().ok_or_else(|| {
            mlua::Error::RuntimeError("the event is only valid during the route call that received it".into())
        })
    }
}

/// Lifts the state's memory cap while the host builds a value, and restores it when dropped.
pub(crate) struct Uncapped<'a> {
    lua: &'a Lua,
    limit: usize,
}

impl<'a> Uncapped<'a> {
    /// `limit`: the cap in force (0: none, nothing to lift).
    pub(crate) fn new(lua: &'a Lua, limit: usize) -> Self {
        if limit != 0 {
            let _ = lua.set_memory_limit(0);
        }
        Uncapped { lua, limit }
    }
}

impl Drop for Uncapped<'_> {
    fn drop(&mut self) {
        if self.limit != 0 {
            let _ = self.lua.set_memory_limit(self.limit);
        }
    }
}

/// A field getter: `build` runs with the memory cap lifted.
fn getter<R>(lua: &Lua, e: &EventData, build: impl FnOnce(&Lua, &ChangeEvent) -> mlua::Result<R>) -> mlua::Result<R> {
    let event = e.event()?;
    let _uncapped = Uncapped::new(lua, e.memory_limit);
    build(lua, event)
}

impl UserData for EventData {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, e| Ok(e.event()?.id().hyphenated().to_string()));
        fields.add_field_method_get("schema", |lua, e| getter(lua, e, |lua, e| name_string(lua, &e.schema)));
        fields.add_field_method_get("table", |lua, e| getter(lua, e, |lua, e| name_string(lua, &e.table)));
        fields.add_field_method_get("action", |lua, e| getter(lua, e, |lua, e| action_string(lua, e.action)));
        fields.add_field_method_get("lsn", |lua, e| getter(lua, e, |lua, e| lua.create_string(&e.text.lsn)));
        fields.add_field_method_get("xid", |_, e| Ok(i64::from(e.event()?.xid)));
        fields.add_field_method_get("backfill", |_, e| {
            Ok(e.event()?.backfill.as_ref().map(|b| b.id.to_string()))
        });
        fields.add_field_method_get("commitTime", |lua, e| {
            getter(lua, e, |lua, e| lua.create_string(e.commit_time_text()))
        });
        fields.add_field_method_get("data", |lua, e| getter(lua, e, |lua, e| row_table(lua, &e.data)));
        fields.add_field_method_get("dataOld", |lua, e| getter(lua, e, |lua, e| row_table(lua, &e.data_old)));
        fields.add_field_method_get("unchangedToast", |lua, e| {
            getter(lua, e, |lua, e| {
                lua.create_sequence_from(e.unchanged_toast.iter().map(|n| &**n))
            })
        });
        fields.add_field_method_get("prefix", |_, e| {
            Ok(e.event()?.message.as_ref().map(|m| m.prefix.clone()))
        });
        fields.add_field_method_get("transactional", |_, e| {
            Ok(e.event()?.message.as_ref().map(|m| m.transactional))
        });
        fields.add_field_method_get("content", |lua, e| {
            getter(lua, e, |lua, e| match &e.message {
                Some(m) => Ok(LuaValue::String(lua.create_string(&m.content)?)),
                None => Ok(LuaValue::Nil),
            })
        });
    }
}

/// Lua strings for relation and column names and actions, made once per state. Under the
/// memory cap, creating a string is a protected call; `schema`, `table` and `action` are read
/// for nearly every event (the default script reads all three), so they come from here. Column
/// names are the keys of every `data`/`dataOld` table: pushing a kept string is a copy of a
/// reference, where `lua_pushlstring` hashes the name and looks it up in Lua's string table
/// (about 90 instructions saved a column, callgrind over the drain's 30-column `wide` rows).
#[derive(Default)]
pub(crate) struct NameStrings {
    /// By the address of the shared name (the `Arc` kept here keeps the address from being
    /// reused for another name): relation names from the relation cache, column names from
    /// the relation's columns.
    names: FxHashMap<usize, (Arc<str>, mlua::LuaString)>,
    actions: [Option<mlua::LuaString>; 6],
}

impl NameStrings {
    /// The string kept for this very name (same allocation), if any.
    fn get(&self, name: &Arc<str>) -> Option<&mlua::LuaString> {
        let (kept, string) = self.names.get(&address(name))?;
        Arc::ptr_eq(kept, name).then_some(string)
    }
}

fn address(name: &Arc<str>) -> usize {
    Arc::as_ptr(name).cast::<u8>() as usize
}

/// Names kept (relations' and their columns'); past this the cache starts over.
const NAMES_KEPT: usize = 16384;

fn name_string(lua: &Lua, name: &Arc<str>) -> mlua::Result<mlua::LuaString> {
    if let Some(cache) = lua.app_data_ref::<NameStrings>()
        && let Some(string) = cache.get(name)
    {
        return Ok(string.clone());
    }
    let string = lua.create_string(&**name)?;
    if let Some(mut cache) = lua.app_data_mut::<NameStrings>() {
        if cache.names.len() >= NAMES_KEPT {
            cache.names.clear();
        }
        cache.names.insert(address(name), (name.clone(), string.clone()));
    }
    Ok(string)
}

fn action_string(lua: &Lua, action: Action) -> mlua::Result<mlua::LuaString> {
    let index = action as usize;
    if let Some(cache) = lua.app_data_ref::<NameStrings>()
        && let Some(Some(string)) = cache.actions.get(index)
    {
        return Ok(string.clone());
    }
    let string = lua.create_string(action.as_str())?;
    if let Some(mut cache) = lua.app_data_mut::<NameStrings>()
        && let Some(slot) = cache.actions.get_mut(index)
    {
        *slot = Some(string.clone());
    }
    Ok(string)
}

/// The row as a fresh table (a script may modify it). Scalars and strings are pushed as the
/// table is filled; json and array values, which are tables themselves, are built first.
fn row_table(lua: &Lua, row: &Row) -> mlua::Result<mlua::Table> {
    let mut nested = Vec::new();
    for (_, value) in &row.0 {
        if matches!(value, Value::Json(_) | Value::Array(_)) {
            nested.push(to_lua(lua, value, false)?);
        }
    }
    let mut nested = nested.into_iter();
    // Column names come from the kept strings; a name not kept yet is pushed as text and kept
    // afterwards (the cache is borrowed while the table is built).
    let mut missed = false;
    let table = {
        let cache = lua.app_data_ref::<NameStrings>();
        lua.create_table_from(row.0.iter().map(|(name, value)| {
            let key = match cache.as_ref().and_then(|c| c.get(name)) {
                Some(kept) => Either::Left(kept),
                None => {
                    missed = true;
                    Either::Right(&**name)
                }
            };
            let value = match value {
                Value::Text(t) => Either::Left(t.as_str()),
                Value::Null => Either::Right(LuaValue::Nil),
                Value::Bool(b) => Either::Right(LuaValue::Boolean(*b)),
                Value::Int(i) => Either::Right(LuaValue::Integer(*i)),
                Value::Float(f) => Either::Right(LuaValue::Number(*f)),
                Value::Json(_) | Value::Array(_) => Either::Right(nested.next().unwrap_or(LuaValue::Nil)),
            };
            (key, value)
        }))?
    };
    if missed {
        for (name, _) in &row.0 {
            name_string(lua, name)?;
        }
    }
    Ok(table)
}

/// A column value as a Lua value; `in_array` turns NULL into `json.null` so sequences keep
/// their length.
pub(crate) fn to_lua(lua: &Lua, value: &Value, in_array: bool) -> mlua::Result<LuaValue> {
    Ok(match value {
        Value::Null if in_array => lua.null(),
        Value::Null => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Int(i) => LuaValue::Integer(*i),
        Value::Float(f) => LuaValue::Number(*f),
        Value::Text(t) => LuaValue::String(lua.create_string(t)?),
        Value::Json(raw) => json_to_lua(lua, serde_json::de::StrRead::new(raw.get()), "json value")?,
        Value::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            // Marked as an array, so that json.encode and returned payloads keep an empty
            // array `[]` rather than turning it into `{}`.
            table.set_metatable(Some(lua.array_metatable()))?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item, true)?)?;
            }
            LuaValue::Table(table)
        }
    })
}

/// A JSON document as Lua, built while it is parsed: json/jsonb column values and `json.decode`
/// (`what` names the caller in a parse error, e.g. `json value: EOF while parsing…`).
///
/// The result is what `lua.to_value(&serde_json::Value)` made before: objects are tables,
/// arrays are tables with the array metatable, `null` is `json.null`, integers that fit 64 bits
/// are integers, other numbers floats; each table is made with the same size and filled in the
/// same order, so `pairs` visits keys as it did (a document that repeats a key may differ in
/// that order; its last value wins as before). A Lua error while building (out of memory under
/// `scripts.memoryLimit`, for `json.decode`) is returned as Lua raised it. Without the
/// `serde_json::Value` in between (a tree of allocations and an ordered map hashing every key)
/// the conversion takes 8 % fewer instructions — measured with callgrind on the drain's `wide`
/// workload, where the two 1 kB jsonb columns are 40 % of all the work with a user script; the
/// rest is Lua's own cost (interning each key, one `rawset` per field).
pub(crate) fn json_to_lua<'de, R: serde_json::de::Read<'de>>(lua: &Lua, text: R, what: &str) -> mlua::Result<LuaValue> {
    use serde::de::DeserializeSeed;
    let failed = std::cell::Cell::new(None);
    let mut parser = serde_json::Deserializer::new(text);
    let parsed = LuaSeed { lua, failed: &failed }
        .deserialize(&mut parser)
        .and_then(|value| parser.end().map(|()| value));
    match (parsed, failed.take()) {
        (_, Some(lua_error)) => Err(lua_error),
        (Ok(value), None) => Ok(value),
        (Err(e), None) => Err(mlua::Error::RuntimeError(format!("{what}: {e}"))),
    }
}

/// Builds one JSON value as Lua while serde_json parses it; a Lua error is kept in `failed`
/// (serde gets a stand-in), so that it reaches the caller unchanged.
#[derive(Clone, Copy)]
struct LuaSeed<'a> {
    lua: &'a Lua,
    failed: &'a std::cell::Cell<Option<mlua::Error>>,
}

impl LuaSeed<'_> {
    fn fail<E: serde::de::Error>(self, e: mlua::Error) -> E {
        self.failed.set(Some(e));
        E::custom("Lua error")
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for LuaSeed<'_> {
    type Value = LuaValue;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<LuaValue, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for LuaSeed<'_> {
    type Value = LuaValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<LuaValue, E> {
        Ok(LuaValue::Boolean(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<LuaValue, E> {
        Ok(LuaValue::Integer(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<LuaValue, E> {
        // As mlua converts a u64: an integer when it fits, else a float.
        Ok(i64::try_from(v).map_or(LuaValue::Number(v as f64), LuaValue::Integer))
    }

    fn visit_f64<E>(self, v: f64) -> Result<LuaValue, E> {
        Ok(LuaValue::Number(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LuaValue, E> {
        self.lua
            .create_string(v)
            .map(LuaValue::String)
            .map_err(|e| self.fail(e))
    }

    fn visit_unit<E>(self) -> Result<LuaValue, E> {
        Ok(self.lua.null())
    }

    fn visit_none<E>(self) -> Result<LuaValue, E> {
        Ok(self.lua.null())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<LuaValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        let build = || {
            let table = self.lua.create_table_with_capacity(items.len(), 0)?;
            table.set_metatable(Some(self.lua.array_metatable()))?;
            for (i, item) in items.into_iter().enumerate() {
                table.raw_set(i + 1, item)?;
            }
            Ok(LuaValue::Table(table))
        };
        build().map_err(|e| self.fail(e))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<LuaValue, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key_seed(self)? {
            let value = map.next_value_seed(self)?;
            pairs.push((key, value));
        }
        let build = || {
            let table = self.lua.create_table_with_capacity(0, pairs.len())?;
            for (key, value) in pairs {
                table.raw_set(key, value)?;
            }
            Ok(LuaValue::Table(table))
        };
        build().map_err(|e| self.fail(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same types (integer or float), same strings, `json.null` where it was, the array
    /// metatable where it was, and `pairs` in the same order.
    fn same(a: &LuaValue, b: &LuaValue, at: &str) {
        match (a, b) {
            (LuaValue::Table(x), LuaValue::Table(y)) => {
                assert_eq!(x.metatable().is_some(), y.metatable().is_some(), "metatable at {at}");
                let xs: Vec<(LuaValue, LuaValue)> = x.pairs().map(|p| p.expect("pair")).collect();
                let ys: Vec<(LuaValue, LuaValue)> = y.pairs().map(|p| p.expect("pair")).collect();
                assert_eq!(xs.len(), ys.len(), "size at {at}");
                for ((xk, xv), (yk, yv)) in xs.iter().zip(&ys) {
                    let key = format!("{at}.{}", xk.to_string().unwrap_or_default());
                    same(xk, yk, &key);
                    same(xv, yv, &key);
                }
            }
            (LuaValue::Integer(x), LuaValue::Integer(y)) => assert_eq!(x, y, "at {at}"),
            (LuaValue::Number(x), LuaValue::Number(y)) => {
                assert_eq!(x.to_bits(), y.to_bits(), "at {at}");
            }
            (LuaValue::String(x), LuaValue::String(y)) => assert_eq!(x.as_bytes(), y.as_bytes(), "at {at}"),
            (LuaValue::LightUserData(x), LuaValue::LightUserData(y)) => assert_eq!(x, y, "at {at}"),
            (LuaValue::Boolean(x), LuaValue::Boolean(y)) => assert_eq!(x, y, "at {at}"),
            (x, y) => panic!("at {at}: {x:?} and {y:?}"),
        }
    }

    #[test]
    fn json_becomes_the_same_lua_as_through_serde_json_values() {
        let lua = Lua::new();
        let docs = [
            r#"{"a": 1, "b": [1, 2.5, "x", null, true, false], "c": {"d": {"e": []}, "f": {}}}"#,
            r#"[9223372036854775807, 9223372036854775808, -9223372036854775808, -0, 0, 1e3, 1.5e-7, 18446744073709551615]"#,
            r#""a string with \"escapes\" \u00e9 \ud83d\ude00 and \n""#,
            "null",
            "true",
            "12",
            "[]",
            "{}",
            "[[[[[]]]], {\"k\": [null, null]}, [null]]",
            r#"{"id": 7, "name": "wal", "tags": ["a", "b"], "nested": {"x": [1, {"y": null}]}, "n": 1.25, "big": 12345678901234567890}"#,
        ];
        for doc in docs {
            let parsed: serde_json::Value = serde_json::from_str(doc).expect("json");
            let before = lua.to_value(&parsed).expect("to_value");
            let now = json_to_lua(&lua, serde_json::de::StrRead::new(doc), "json value").expect("json_to_lua");
            same(&before, &now, doc);
        }
        // A wide object: the hash part's layout decides the order `pairs` visits keys in.
        let wide: String = format!(
            "{{{}}}",
            (0..200)
                .map(|i| format!("\"key{i}\": {i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let parsed: serde_json::Value = serde_json::from_str(&wide).expect("json");
        same(
            &lua.to_value(&parsed).expect("to_value"),
            &json_to_lua(&lua, serde_json::de::StrRead::new(&wide), "json value").expect("json"),
            "wide",
        );
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        let lua = Lua::new();
        for doc in ["", "{", "[1,", "{\"a\" 1}", "1 2", "nul"] {
            let e = json_to_lua(&lua, serde_json::de::StrRead::new(doc), "json value").expect_err(doc);
            assert!(e.to_string().contains("json value:"), "{e}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            json_to_lua(&lua, serde_json::de::StrRead::new(&deep), "json value").is_err(),
            "nesting deeper than serde_json's limit"
        );
    }
}
