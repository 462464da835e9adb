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

use std::collections::HashMap;
use std::sync::Arc;

use mlua::{Lua, LuaSerdeExt, UserData, UserDataFields, Value as LuaValue};

use crate::event::{Action, ChangeEvent, Row, Value};

/// The userdata handed to `route`.
pub(crate) struct EventData(pub Arc<ChangeEvent>);

impl UserData for EventData {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, e| Ok(e.0.id().hyphenated().to_string()));
        fields.add_field_method_get("schema", |lua, e| name_string(lua, &e.0.schema));
        fields.add_field_method_get("table", |lua, e| name_string(lua, &e.0.table));
        fields.add_field_method_get("action", |lua, e| action_string(lua, e.0.action));
        fields.add_field_method_get("lsn", |lua, e| lua.create_string(&e.0.text.lsn));
        fields.add_field_method_get("xid", |_, e| Ok(i64::from(e.0.xid)));
        fields.add_field_method_get("backfill", |_, e| Ok(e.0.backfill.as_ref().map(|b| b.id.to_string())));
        fields.add_field_method_get("commitTime", |lua, e| lua.create_string(e.0.commit_time_text()));
        fields.add_field_method_get("data", |lua, e| row_table(lua, &e.0.data));
        fields.add_field_method_get("dataOld", |lua, e| row_table(lua, &e.0.data_old));
        fields.add_field_method_get("unchangedToast", |lua, e| {
            lua.create_sequence_from(e.0.unchanged_toast.iter().map(|n| n.to_string()))
        });
        fields.add_field_method_get("prefix", |_, e| Ok(e.0.message.as_ref().map(|m| m.prefix.clone())));
        fields.add_field_method_get("transactional", |_, e| {
            Ok(e.0.message.as_ref().map(|m| m.transactional))
        });
        fields.add_field_method_get("content", |lua, e| match &e.0.message {
            Some(m) => Ok(LuaValue::String(lua.create_string(&m.content)?)),
            None => Ok(LuaValue::Nil),
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

fn row_table(lua: &Lua, row: &Row) -> mlua::Result<mlua::Table> {
    let table = lua.create_table_with_capacity(0, row.0.len())?;
    for (name, value) in &row.0 {
        table.raw_set(&**name, to_lua(lua, value, false)?)?;
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
