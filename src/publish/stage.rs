//! The publish stage: messages out, acknowledgements in, flushed LSNs released in order.
//!
//! It takes the transform's [`Outbound`] items in commit order, builds each routed event's
//! messages (headers and JSON payload, off the transform's thread), applies
//! `scripts.onError` to what cannot be published as routed (a script failure, a message too
//! large, or refused by the broker for another reason — [`Sink::refusal`]), and hands messages
//! to the [`Sink`] without waiting for each acknowledgement. Acks arrive on [`AckReplies`] (one
//! inbox subscription for JetStream, confirm futures for RabbitMQ) and are matched in the [`AckWindow`],
//! which releases a checkpoint's LSN only once every message before it is acknowledged; that
//! LSN goes to the session loop on a watch channel, which confirms it to PostgreSQL.
//!
//! At most `publisher.maxInFlight` messages are unacknowledged at any time, also inside one
//! transaction. A lost connection, a message the broker did not store, or no ack for
//! [`ACK_TIMEOUT`] while messages wait ends the stage with an error; what was acknowledged
//! until then has been released.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::ack::AckWindow;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::ChangeEvent;
use crate::lsn::Lsn;
use crate::metrics;
use crate::script::on_error::{OnErrorPolicy, Verdict};
use crate::script::{Routed, ScriptVersion};
use crate::transform::Outbound;

use super::{ACK_TIMEOUT, Ack, AckReplies, Envelopes, OutMessage, Outcome, Sent, Sink, dead_letter};

/// The sending end of a session.
pub(crate) struct PublishStage {
    sink: Sink,
    replies: AckReplies,
    /// A message's delivery, or `None` for an [`Outbound::Durable`] record.
    window: AckWindow<Option<metrics::Delivery>>,
    /// Records being stored, by their place in the window.
    durable: FuturesUnordered<BoxFuture<'static, (u64, Result<()>)>>,
    /// Callbacks waiting for everything before their place in the window.
    settled: VecDeque<(u64, Box<dyn FnOnce() + Send>)>,
    counters: metrics::PublishedCounters,
    flushed: watch::Sender<Lsn>,
    on_error: OnErrorPolicy,
    /// The largest message the server takes (`None`: no limit, stdout).
    max_payload: Option<usize>,
    /// The script version that routed the events now arriving.
    script: Option<ScriptVersion>,
    /// When the window last moved (or started to wait): no ack for [`ACK_TIMEOUT`] while
    /// messages are in flight means the connection is not working.
    progress: Instant,
    stall_check: tokio::time::Interval,
    messages: Vec<OutMessage>,
    envelopes: Envelopes,
}

impl PublishStage {
    pub fn new(config: &Config, sink: Sink, replies: AckReplies, flushed: watch::Sender<Lsn>) -> Self {
        PublishStage {
            max_payload: sink.max_payload(),
            sink,
            replies,
            window: AckWindow::new(config.publisher.max_in_flight),
            durable: FuturesUnordered::new(),
            settled: VecDeque::new(),
            counters: metrics::PublishedCounters::default(),
            flushed,
            on_error: OnErrorPolicy::new(config),
            script: None,
            progress: Instant::now(),
            stall_check: tokio::time::interval(Duration::from_secs(1)),
            messages: Vec::new(),
            envelopes: Envelopes::default(),
        }
    }

    /// Publish what the transform sends until it closes the channel and everything sent is
    /// acknowledged, or until a failure (a `halt` first waits for what came before it).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Vec<Outbound>>) -> Result<()> {
        let mut open = true;
        while open || !self.window.is_empty() {
            tokio::select! {
                biased;
                waited = self.wait() => waited?,
                batch = rx.recv(), if open && !self.window.is_full() => match batch {
                    Some(batch) => {
                        if let Err(e) = self.take(batch).await {
                            // What came before the failed change still counts: let its acks
                            // in, so the session can confirm it.
                            if e.kind() == crate::error::Kind::Halted {
                                self.drain().await?;
                            }
                            return Err(e);
                        }
                    }
                    None => open = false,
                },
            }
        }
        self.sink.flush().await?;
        self.sink.close().await;
        Ok(())
    }

    async fn take(&mut self, batch: Vec<Outbound>) -> Result<()> {
        for item in batch {
            match item {
                Outbound::Route { event, routed } => self.route(&event, routed).await?,
                Outbound::Failed { event, error } => self.unpublishable(&event, &error).await?,
                Outbound::Checkpoint(lsn) => self.window.push_checkpoint(lsn),
                Outbound::Script(version) => self.script = Some(version),
                Outbound::Durable(record) => {
                    while self.window.is_full() {
                        self.wait().await?;
                    }
                    if self.window.is_empty() {
                        self.progress = Instant::now();
                    }
                    let seq = self.window.push_message(None);
                    self.durable.push(Box::pin(async move { (seq, record.await) }));
                }
                Outbound::Settled(callback) => self.settled.push_back((self.window.next_seq(), callback)),
            }
        }
        self.release();
        Ok(())
    }

    /// Wait until everything in flight is acknowledged, releasing as acks arrive.
    async fn drain(&mut self) -> Result<()> {
        while !self.window.is_empty() {
            self.wait().await?;
        }
        Ok(())
    }

    /// The messages of a routed event — all or none: a fan-out is never half-published.
    async fn route(&mut self, event: &Arc<ChangeEvent>, routed: Vec<Routed>) -> Result<()> {
        let mut messages = std::mem::take(&mut self.messages);
        let mut default_payload: Option<Bytes> = None;
        for (index, routed) in routed.into_iter().enumerate() {
            let message = self.envelopes.envelope(event, routed, index, &mut default_payload);
            if let Some(error) = self.sink.refusal(&message) {
                messages.clear();
                self.messages = messages;
                return self.unpublishable(event, &error).await;
            }
            messages.push(message);
        }
        for message in messages.drain(..) {
            self.send(message, &event.table).await?;
        }
        self.messages = messages;
        Ok(())
    }

    /// An event that cannot be published as routed: what `scripts.onError` says.
    async fn unpublishable(&mut self, event: &ChangeEvent, error: &str) -> Result<()> {
        let script = self.script.clone().unwrap_or_else(|| ScriptVersion {
            name: Arc::from("?"),
            number: 0,
        });
        let subject = match self.on_error.decide(event, &error, &script)? {
            Verdict::Skip => return Ok(()),
            Verdict::DeadLetter(subject) => subject.to_string(),
        };
        let mut letter = dead_letter(event, &subject, error);
        if let Some(limit) = self.max_payload
            && letter.wire_size() > limit
        {
            // The event itself is too large to carry: the dead letter says where it is.
            letter.payload = Bytes::new();
            letter
                .headers
                .insert("Wal-Error", format!("{error} (payload omitted: too large)").as_str());
        }
        self.send(letter, &event.table).await
    }

    /// Send one message, first waiting for acknowledgements while the window is full, so that
    /// at most `maxInFlight` messages are ever unacknowledged — also inside a batch.
    async fn send(&mut self, message: OutMessage, table: &str) -> Result<()> {
        while self.window.is_full() {
            self.wait().await?;
        }
        if self.window.is_empty() {
            self.progress = Instant::now();
        }
        let delivery = self.counters.start(&message.subject, table, message.commit_time);
        let seq = self.window.push_message(Some(delivery));
        match self.sink.send(message, seq).await? {
            Sent::Pending => {}
            Sent::Awaiting(ack) => self.replies.adopt(ack),
            Sent::Done => {
                self.window.ack(seq);
                self.release();
            }
        }
        Ok(())
    }

    /// Wait for acknowledgements (taking every one that has arrived) or a failure: a lost
    /// connection, a message not stored, or no ack for [`ACK_TIMEOUT`] while messages wait.
    async fn wait(&mut self) -> Result<()> {
        tokio::select! {
            biased;
            _ = self.sink.lost() => return Err(super::connection_lost(&self.sink)),
            Some((seq, stored)) = self.durable.next(), if !self.durable.is_empty() => {
                stored?;
                self.window.ack(seq);
                self.progress = Instant::now();
                self.release();
            }
            ack = self.replies.next() => {
                self.ack(ack?)?;
                while let Some(ack) = self.replies.try_next() {
                    self.ack(ack?)?;
                }
                self.progress = Instant::now();
                self.release();
            }
            _ = self.stall_check.tick() => {
                if !self.window.is_empty() && self.progress.elapsed() > ACK_TIMEOUT {
                    return Err(Error::new(
                        self.sink.unavailable(),
                        format!(
                            "{} acknowledged nothing for {ACK_TIMEOUT:?} with {} messages in flight; replaying from the last confirmed position",
                            self.sink.broker(),
                            self.window.in_flight()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn ack(&mut self, ack: Ack) -> Result<()> {
        match ack.outcome {
            Outcome::Stored => {
                self.window.ack(ack.seq);
                Ok(())
            }
            // A reply for a message no longer in flight is stray: it changes nothing.
            Outcome::NoResponders => match self.window.get(ack.seq) {
                Some(Some(delivery)) => {
                    metrics::problem("publish");
                    metrics::jetstream_unavailable();
                    Err(Error::no_responders(delivery.subject()))
                }
                Some(None) | None => Ok(()),
            },
            Outcome::NotStored(e) => {
                metrics::problem("publish");
                Err(e)
            }
        }
    }

    /// Count what is acknowledged in order and move the flushed LSN forward.
    fn release(&mut self) {
        let lsn = self.window.release(|delivery| {
            if let Some(delivery) = delivery {
                delivery.acknowledged();
            }
        });
        while self
            .settled
            .front()
            .is_some_and(|(seq, _)| *seq <= self.window.settled())
        {
            if let Some((_, callback)) = self.settled.pop_front() {
                callback();
            }
        }
        let Some(lsn) = lsn else {
            return;
        };
        self.flushed.send_if_modified(|current| {
            let advanced = lsn > *current;
            if advanced {
                *current = lsn;
            }
            advanced
        });
    }
}
