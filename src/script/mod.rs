//! Lua routing: the only module that touches mlua.
//!
//! A [`Router`] owns one sandboxed Lua 5.4 state with the entry script compiled into it. For
//! every event it calls the script's `route(event)` and turns what it returns into [`Routed`]
//! messages (SPEC §5). The event is handed over as userdata whose fields are built only when
//! the script reads them — measured at under 1 µs per event, two to three times cheaper than
//! building a table (~3.2 µs) or going through serde (~4.6 µs) once a memory limit is set
//! (mlua 0.12, measured on our 2-core machines).
//!
//! Limits: an instruction budget per call, enforced by a count hook, and a memory cap on the
//! state. Exceeding either is a [`RouteError`], never a hang or a crash. The cap applies to the
//! script's own allocations: what the host builds for it (the event's fields, the userdata) and
//! the reading of its answer run with the cap lifted, because under a cap mlua makes every
//! allocating API call a protected call (see `handoff.rs`).
//!
//! The built-in default script (`scripts/default.lua`) and the `wal` library
//! (`scripts/wal.lua`) are compiled into the binary: YAML-only mode *is* the default script.

pub mod cases;
mod handoff;
mod memo;
pub(crate) mod on_error;
mod output;
pub mod reload;
mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use mlua::{Function, Lua, MultiValue};

use crate::config::Config;
use crate::event::ChangeEvent;

pub use on_error::ScriptVersion;
pub use output::{Payload, Routed};

/// Source of the `wal` library.
pub const WAL_LUA: &str = include_str!("../../scripts/wal.lua");
/// Source of the built-in default script.
pub const DEFAULT_LUA: &str = include_str!("../../scripts/default.lua");

/// Instructions between two count-hook calls: the budget's granularity. Checking every 10k
/// instructions cost 1–9% of a route call (measured with `cargo bench --bench route`).
const HOOK_EVERY: u32 = 10_000;

/// A script that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read script {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("script {name} does not compile: {message}")]
    Compile { name: String, message: String },
    #[error("script {name} does not define a function route(event)")]
    NoRoute { name: String },
    #[error("cannot set up the Lua state: {0}")]
    Setup(String),
}

/// A `route` call that failed; handled by `scripts.onError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    Runtime(String),
    #[error(
        "route returned {got}; expected nil, a subject string, subject + payload (+ headers), or a list of {{subject=, payload=, headers=}} tables"
    )]
    InvalidReturn { got: String },
    #[error("route ran more than {0} Lua instructions (scripts.instructionLimit), stopped at {1}")]
    InstructionLimit(u64, String),
    #[error("script ran out of memory (scripts.memoryLimit)")]
    Memory,
}

/// Which limits a [`Router`] enforces.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub instructions: bool,
    pub memory: bool,
}

/// The compiled routing script.
pub struct Router {
    lua: Lua,
    route: Function,
    name: String,
    ticks_left: Arc<AtomicU32>,
    ticks_per_call: u32,
    instruction_limit: u64,
    /// The state's memory cap (0: none), lifted while the host builds values (`handoff.rs`).
    memory_limit: usize,
    /// Set for the built-in default script, whose answers depend on the relation and action
    /// only (see `memo.rs`).
    memo: Option<memo::Memo>,
}

impl Router {
    /// Compile the configured entry script (or the built-in default) with the given settings.
    pub fn from_config(config: &Config) -> Result<Router, ScriptError> {
        match config.script_path() {
            Some(path) => {
                let source = std::fs::read_to_string(&path).map_err(|source| ScriptError::Read {
                    path: path.clone(),
                    source,
                })?;
                Router::new(config, &script_name(&path), &source)
            }
            None => {
                let mut router = Router::new(config, "default.lua", DEFAULT_LUA)?;
                router.memo = Some(memo::Memo::default());
                Ok(router)
            }
        }
    }

    /// Compile `source` (named `name` in error messages) as the entry script.
    pub fn new(config: &Config, name: &str, source: &str) -> Result<Router, ScriptError> {
        Router::with_limits(
            config,
            name,
            source,
            Limits {
                instructions: true,
                memory: true,
            },
        )
    }

    /// [`Router::new`] with limits switched off, for measuring what they cost
    /// (`cargo bench --bench route`); the service always runs with both.
    #[doc(hidden)]
    pub fn with_limits(config: &Config, name: &str, source: &str, limits: Limits) -> Result<Router, ScriptError> {
        let modules = config.script_path().and_then(|p| p.parent().map(Path::to_path_buf));
        let lua = sandbox::new_state(config, modules.as_deref()).map_err(|e| ScriptError::Setup(e.to_string()))?;
        let ticks_per_call = u32::try_from(config.scripts.instruction_limit.div_ceil(u64::from(HOOK_EVERY)))
            .unwrap_or(u32::MAX)
            .max(1);
        let ticks_left = Arc::new(AtomicU32::new(ticks_per_call));
        let hook_ticks = ticks_left.clone();
        let hook = if limits.instructions {
            mlua::HookTriggers::new().every_nth_instruction(HOOK_EVERY)
        } else {
            mlua::HookTriggers::new()
        };
        lua.set_hook(hook, move |_, debug| {
            if hook_ticks.fetch_sub(1, Ordering::Relaxed) <= 1 {
                let source = debug.source();
                let file = source.short_src.as_deref().unwrap_or("?").to_string();
                let line = debug
                    .current_line()
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "?".into());
                return Err(mlua::Error::RuntimeError(format!(
                    "{INSTRUCTION_LIMIT_MARK} at {file}:{line}"
                )));
            }
            Ok(mlua::VmState::Continue)
        })
        .map_err(|e| ScriptError::Setup(e.to_string()))?;
        let memory_limit = if limits.memory {
            usize::try_from(config.scripts.memory_limit).unwrap_or(usize::MAX)
        } else {
            0
        };
        if memory_limit != 0 {
            lua.set_memory_limit(memory_limit)
                .map_err(|e| ScriptError::Setup(e.to_string()))?;
        }
        // The limits are in place before the script's top level runs: a loop or a memory bomb
        // there must not hang start-up or a reload either.
        lua.load(source)
            .set_name(format!("@{name}"))
            .set_mode(mlua::chunk::ChunkMode::Text)
            .exec()
            .map_err(|e| ScriptError::Compile {
                name: name.to_string(),
                message: e.to_string(),
            })?;
        let route: Function = match lua.globals().get("route") {
            Ok(Some(f)) => f,
            _ => return Err(ScriptError::NoRoute { name: name.to_string() }),
        };
        Ok(Router {
            lua,
            route,
            name: name.to_string(),
            ticks_left,
            ticks_per_call,
            instruction_limit: config.scripts.instruction_limit,
            memory_limit,
            memo: None,
        })
    }

    /// The entry script's name (file name, or `default.lua`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `route(event)` and interpret what it returns (for the built-in default script, the
    /// answer kept for the event's relation and action when there is one).
    pub fn route(&self, event: &Arc<ChangeEvent>) -> Result<Vec<Routed>, RouteError> {
        let Some(memo) = &self.memo else {
            return self.call(event);
        };
        if let Some(routed) = memo.get(event) {
            return Ok(routed);
        }
        let routed = self.call(event)?;
        memo.put(event, &routed);
        Ok(routed)
    }

    fn call(&self, event: &Arc<ChangeEvent>) -> Result<Vec<Routed>, RouteError> {
        self.ticks_left.store(self.ticks_per_call, Ordering::Relaxed);
        let data = handoff::EventData {
            event: Some(event.clone()),
            memory_limit: self.memory_limit,
        };
        let ud = {
            let _uncapped = handoff::Uncapped::new(&self.lua, self.memory_limit);
            self.lua.create_userdata(data).map_err(|e| self.classify(e))?
        };
        let result = self.route.call::<MultiValue>(&ud).map_err(|e| self.classify(e));
        let _uncapped = handoff::Uncapped::new(&self.lua, self.memory_limit);
        let routed = result.and_then(|returned| output::interpret(&self.lua, returned));
        // The event is valid during the call only. Release it now: Lua sees a few bytes of
        // userdata and would collect it late, while the event behind it can be kilobytes — a
        // million-row transaction grew the process by the size of every event (found by the
        // benchmark's peak-RSS check). A script that kept the event gets an error on access.
        // (Taking the event out is cheaper than `destroy`, which is a protected call.)
        if let Ok(mut data) = ud.borrow_mut::<handoff::EventData>() {
            data.event = None;
        }
        routed
    }

    fn classify(&self, error: mlua::Error) -> RouteError {
        let text = error.to_string();
        if let Some(at) = text.split(INSTRUCTION_LIMIT_MARK).nth(1) {
            let location = at.trim_start_matches(" at ").lines().next().unwrap_or("?").to_string();
            RouteError::InstructionLimit(self.instruction_limit, location)
        } else if matches!(error, mlua::Error::MemoryError(_)) || text.contains("not enough memory") {
            // Free what the failed call built now, or the next events would fail too.
            let _ = self.lua.gc_collect();
            RouteError::Memory
        } else {
            RouteError::Runtime(text)
        }
    }
}

const INSTRUCTION_LIMIT_MARK: &str = "instruction limit exceeded";

fn script_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
