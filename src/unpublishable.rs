//! Events that cannot be published as routed — the script failed on them, or a message is
//! larger than the server accepts — and what `scripts.onError` makes of them.
//!
//! `deadLetter` publishes the original event to the dead-letter subject with the error in a
//! `Wal-Error` header (its payload left out when even that is too large); `skip` drops it;
//! `halt` stops the pipeline before the change, so it is retried and nothing after it is
//! confirmed. Each error is logged once per script version and table, and counted.

use std::collections::HashSet;
use std::fmt::Display;

use bytes::Bytes;

use crate::config::{Config, OnError};
use crate::event::ChangeEvent;
use crate::metrics;
use crate::publish::{self, OutMessage};

/// Which script version routed an event (for logging once per version).
#[derive(Debug, Clone)]
pub struct ScriptVersion {
    pub name: std::sync::Arc<str>,
    pub number: u64,
}

/// The `scripts.onError` policy with its log-once memory.
pub struct Unpublishable {
    policy: OnError,
    dead_letter_subject: String,
    max_payload: Option<usize>,
    logged: HashSet<(u64, String)>,
}

impl Unpublishable {
    pub fn new(config: &Config, max_payload: Option<usize>) -> Self {
        Unpublishable {
            policy: config.scripts.on_error,
            dead_letter_subject: config.dead_letter_subject(),
            max_payload,
            logged: HashSet::new(),
        }
    }

    /// Decide about `event`: `Ok(Some(letter))` to publish a dead letter, `Ok(None)` to skip,
    /// `Err(reason)` to halt.
    pub fn handle(
        &mut self,
        event: &ChangeEvent,
        error: &dyn Display,
        script: &ScriptVersion,
    ) -> Result<Option<OutMessage>, String> {
        let table = format!("{}.{}", event.schema, event.table);
        metrics::script_error(&table);
        let first = self.logged.insert((script.number, table.clone()));
        match self.policy {
            OnError::DeadLetter => {
                if first {
                    tracing::warn!(script = %script.name, version = script.number, %table, lsn = %event.commit_lsn, error = %error, subject = %self.dead_letter_subject, "event not publishable; sent to the dead-letter subject (logged once per script version and table)");
                }
                let mut letter = publish::dead_letter(event, &self.dead_letter_subject, &error.to_string());
                if let Some(limit) = self.max_payload
                    && letter.wire_size() > limit
                {
                    // The event itself is too large to carry: the dead letter says where it is.
                    letter.payload = Bytes::new();
                    letter
                        .headers
                        .insert("Wal-Error", format!("{error} (payload omitted: too large)").as_str());
                }
                Ok(Some(letter))
            }
            OnError::Skip => {
                if first {
                    tracing::warn!(script = %script.name, version = script.number, %table, lsn = %event.commit_lsn, error = %error, "event not publishable; skipped (logged once per script version and table)");
                }
                Ok(None)
            }
            OnError::Halt => Err(format!(
                "cannot publish the change at {table} (commit {}, change {}): {error}; publishing halted until it can be (scripts.onError: halt)",
                event.commit_lsn, event.ordinal
            )),
        }
    }

    /// The messages for a routed event, or what the policy makes of an oversize one. All or
    /// none of an event's messages go out, so a fan-out is never half-published.
    pub fn envelopes(
        &mut self,
        event: &ChangeEvent,
        routed: Vec<crate::script::Routed>,
        script: &ScriptVersion,
        out: &mut Vec<OutMessage>,
    ) -> Result<(), String> {
        let start = out.len();
        let mut default_payload: Option<Bytes> = None;
        for (index, routed) in routed.into_iter().enumerate() {
            let message = publish::envelope(event, routed, index, &mut default_payload);
            if let Some(limit) = self.max_payload
                && message.wire_size() > limit
            {
                let error = format!(
                    "message for {} is {} bytes, more than the NATS server's max_payload of {limit}",
                    message.subject,
                    message.wire_size()
                );
                out.truncate(start);
                out.extend(self.handle(event, &error, script)?);
                return Ok(());
            }
            out.push(message);
        }
        Ok(())
    }
}
