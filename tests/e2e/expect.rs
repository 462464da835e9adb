//! Helpers for comparing published JSON with expectations PostgreSQL computes itself.

use std::time::Duration;

use serde_json::Value;

use crate::support::StoredMessage;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub use crate::support::blocking;

/// JSON numbers compared by value: a float with an integral value below 2^53 becomes that
/// integer (PostgreSQL's `to_json` prints `1` where we print `1.0`; both are the number one).
/// Integers are never touched, so an int8 that went through a float still shows up.
pub fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                // In range and integral, so the conversion is exact.
                #[allow(clippy::cast_possible_truncation)]
                Value::from(f as i64)
            }
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

/// An object without its `null` members (Lua has no nil-valued keys).
pub fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Assert two JSON objects are equal, naming the first differing member.
pub fn assert_same(what: &str, got: &Value, want: &Value) {
    let (got, want) = (normalize(got.clone()), normalize(want.clone()));
    if got == want {
        return;
    }
    if let (Some(g), Some(w)) = (got.as_object(), want.as_object()) {
        for (k, wv) in w {
            match g.get(k) {
                Some(gv) if gv == wv => {}
                Some(gv) => panic!("{what}: column {k:?} published as {gv} but PostgreSQL says {wv}"),
                None => panic!("{what}: column {k:?} missing; PostgreSQL says {wv}"),
            }
        }
        if let Some(k) = g.keys().find(|k| !w.contains_key(*k)) {
            panic!("{what}: unexpected column {k:?} = {}", g[k]);
        }
    }
    panic!("{what}:\n got  {got}\n want {want}");
}

/// Messages on one subject.
pub fn on_subject<'a>(messages: &'a [StoredMessage], subject: &str) -> Vec<&'a StoredMessage> {
    messages.iter().filter(|m| m.subject == subject).collect()
}
