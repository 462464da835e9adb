//! The built-in default script's answers, kept by relation and action.
//!
//! `wal.default_route` (scripts/wal.lua) reads nothing of a row change but its schema, table and
//! action, and its answer — nil, or the default subject — depends on nothing else: the filter
//! and the topic map are fixed for the life of the state. So when the built-in default script
//! routes (no `scripts.path`), the router asks Lua once per relation and action and reuses that
//! answer for the relation's next changes. Lua still decides every route; it is just not asked
//! the same question a hundred thousand times. On the drain benchmark the Lua call was a
//! quarter of wal-listener's CPU. Custom scripts may read anything, so they are called for
//! every event; logical messages (routed by prefix) are not kept either.
//!
//! Keys are the addresses of the relation's shared schema and table names: every change of one
//! relation carries the same `Arc`s (from the relation cache), and the `Arc`s kept here stop
//! those addresses from being reused for other names.

use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::event::{Action, ChangeEvent};

use super::Routed;

/// Relations and actions kept; past this the memo starts over.
const KEPT: usize = 4096;

type Key = (usize, usize, Action);

/// The relation's names (kept alive) and what the script answered.
type Answer = (Arc<str>, Arc<str>, Vec<Routed>);

#[derive(Default)]
pub(super) struct Memo {
    /// Behind a mutex only so that the router stays `Sync`; one thread routes.
    entries: Mutex<FxHashMap<Key, Answer>>,
}

fn key(event: &ChangeEvent) -> Option<Key> {
    (event.action != Action::Message).then(|| {
        (
            Arc::as_ptr(&event.schema).cast::<u8>() as usize,
            Arc::as_ptr(&event.table).cast::<u8>() as usize,
            event.action,
        )
    })
}

impl Memo {
    /// The answer kept for this event's relation and action, if any.
    pub(super) fn get(&self, event: &ChangeEvent) -> Option<Vec<Routed>> {
        let key = key(event)?;
        let entries = self.entries.lock().ok()?;
        let (schema, table, routed) = entries.get(&key)?;
        (Arc::ptr_eq(schema, &event.schema) && Arc::ptr_eq(table, &event.table)).then(|| routed.clone())
    }

    /// Keep the answer Lua gave for this event.
    pub(super) fn put(&self, event: &ChangeEvent, routed: &[Routed]) {
        let (Some(key), Ok(mut entries)) = (key(event), self.entries.lock()) else {
            return;
        };
        if entries.len() >= KEPT {
            entries.clear();
        }
        entries.insert(key, (event.schema.clone(), event.table.clone(), routed.to_vec()));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}
