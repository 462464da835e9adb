//! `scripts.onError`: what happens to an event that cannot be published as routed — the
//! script failed on it, or one of its messages is larger than the server accepts.
//!
//! `deadLetter` publishes the original event to the dead-letter subject with the error in a
//! `Wal-Error` header; `skip` drops it; `halt` stops the pipeline before the change, so it is
//! retried (at once when a new script version loads) and nothing after it is confirmed. Each
//! error is logged once per script version and table, and counted. One instance per session,
//! in the publish stage, which sees both kinds of failure in commit order; building the dead
//! letter is the publish stage's too.

use std::collections::HashSet;
use std::fmt::Display;
use std::sync::Arc;

use crate::config::{Config, OnError};
use crate::error::{Error, Kind, Result};
use crate::event::ChangeEvent;
use crate::metrics;

/// Which script version routed an event (for logging once per version).
#[derive(Debug, Clone)]
pub struct ScriptVersion {
    pub name: Arc<str>,
    pub number: u64,
}

/// What to do with an event that cannot be published as routed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict<'a> {
    /// Publish the original event to this subject, with the error.
    DeadLetter(&'a str),
    Skip,
}

/// The `scripts.onError` policy with its log-once memory.
pub(crate) struct OnErrorPolicy {
    policy: OnError,
    dead_letter_subject: String,
    logged: HashSet<(u64, String)>,
}

impl OnErrorPolicy {
    pub fn new(config: &Config) -> Self {
        OnErrorPolicy {
            policy: config.scripts.on_error,
            dead_letter_subject: config.dead_letter_subject(),
            logged: HashSet::new(),
        }
    }

    /// Decide about `event`, which `script` could not get published because of `error`;
    /// `Err` ([`Kind::Halted`]) to halt.
    pub fn decide(&mut self, event: &ChangeEvent, error: &dyn Display, script: &ScriptVersion) -> Result<Verdict<'_>> {
        let table = format!("{}.{}", event.schema, event.table);
        metrics::script_error(&table);
        let first = self.logged.insert((script.number, table.clone()));
        match self.policy {
            OnError::DeadLetter => {
                if first {
                    tracing::warn!(script = %script.name, version = script.number, %table, lsn = %event.commit_lsn, error = %error, subject = %self.dead_letter_subject, "event not publishable; sent to the dead-letter subject (logged once per script version and table)");
                }
                Ok(Verdict::DeadLetter(&self.dead_letter_subject))
            }
            OnError::Skip => {
                if first {
                    tracing::warn!(script = %script.name, version = script.number, %table, lsn = %event.commit_lsn, error = %error, "event not publishable; skipped (logged once per script version and table)");
                }
                Ok(Verdict::Skip)
            }
            OnError::Halt => Err(Error::new(
                Kind::Halted,
                format!(
                    "cannot publish the change at {table} (commit {}, change {}): {error}; publishing halted until it can be (scripts.onError: halt)",
                    event.commit_lsn, event.ordinal
                ),
            )),
        }
    }
}
