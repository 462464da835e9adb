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

use std::collections::HashMap;
use std::sync::Arc;

use mlua::{Either, Lua, LuaSerdeExt, UserData, UserDataFields, Value as LuaValue};

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

/// Lua strings for relation names and actions, made once per state. Under the memory cap,
/// creating a string is a protected call; `schema`, `table` and `action` are read for nearly
/// every event (the default script reads all three), so they come from here.
#[derive(Default)]
pub(crate) struct NameStrings {
    /// By the address of the relation's shared name (the `Arc` kept here keeps the address
    /// from being reused for another name).
    names: HashMap<usize, (Arc<str>, mlua::LuaString)>,
    actions: [Option<mlua::LuaString>; 6],
}

/// Relations whose names are kept; past this the cache starts over.
const NAMES_KEPT: usize = 4096;

fn name_string(lua: &Lua, name: &Arc<str>) -> mlua::Result<mlua::LuaString> {
    let key = Arc::as_ptr(name).cast::<u8>() as usize;
    if let Some(cache) = lua.app_data_ref::<NameStrings>()
        && let Some((kept, string)) = cache.names.get(&key)
        && Arc::ptr_eq(kept, name)
    {
        return Ok(string.clone());
    }
    let string = lua.create_string(&**name)?;
    if let Some(mut cache) = lua.app_data_mut::<NameStrings>() {
        if cache.names.len() >= NAMES_KEPT {
            cache.names.clear();
        }
        cache.names.insert(key, (name.clone(), string.clone()));
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
    lua.create_table_from(row.0.iter().map(|(name, value)| {
        let value = match value {
            Value::Text(t) => Either::Left(t.as_str()),
            Value::Null => Either::Right(LuaValue::Nil),
            Value::Bool(b) => Either::Right(LuaValue::Boolean(*b)),
            Value::Int(i) => Either::Right(LuaValue::Integer(*i)),
            Value::Float(f) => Either::Right(LuaValue::Number(*f)),
            Value::Json(_) | Value::Array(_) => Either::Right(nested.next().unwrap_or(LuaValue::Nil)),
        };
        (&**name, value)
    }))
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
        Value::Json(raw) => {
            let parsed: serde_json::Value =
                serde_json::from_str(raw.get()).map_err(|e| mlua::Error::RuntimeError(format!("json value: {e}")))?;
            lua.to_value(&parsed)?
        }
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
