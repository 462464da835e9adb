//! The brokers: NATS (JetStream, core), RabbitMQ, stdout — behind one boundary, [`Sink`] and
//! [`AckReplies`], that the publish stage ([`stage`]) drives without knowing which it is.
//!
//! # What a publisher provides
//!
//! A new broker (Kafka, Google Pub/Sub) is a new [`Sink`] variant and, if its acknowledgements
//! are futures, nothing else; the pipeline, the ack window and the session loop stay as they
//! are. It must provide:
//!
//! | piece | contract |
//! |---|---|
//! | `connect(config)` | connect, check or create the destination (stream, exchange, topic) and return the sink and its [`AckReplies`]; errors carry a [`Kind`] whose disposition says retry, standby or stop |
//! | [`Sink::send`]`(msg, seq)` | hand message number `seq` over without waiting for its acknowledgement, in call order, and say how it will be known to be stored: [`Sent::Pending`] (its ack arrives on the [`AckReplies`] stream by number — JetStream's inbox), [`Sent::Awaiting`] (a future per message that the ack stream adopts — RabbitMQ's confirms, and what Kafka's delivery reports or Pub/Sub's publish results would be), or [`Sent::Done`] (nothing will be known: core NATS, stdout). May wait while the client's buffer is full, but not forever |
//! | the ack stream ([`AckReplies::next`]) | one [`Ack`] per pending message, in any order: [`Outcome::Stored`] only when the broker has it durably; anything else is an error whose kind decides (a refusal to replay, a routing failure to stop on) |
//! | [`Sink::lost`] | resolves when the connection is gone, so the stage stops waiting for acks that cannot come |
//! | [`Sink::refusal`] / [`Sink::max_payload`] | which messages the broker would refuse (size, name lengths), checked before sending so that `scripts.onError` handles them instead of an endless replay |
//! | [`Sink::flush`] / [`Sink::close`] | after the last ack of a drain: push out what the client buffers, close politely |
//!
//! No publisher retries a message by itself: a failure ends the session, and the next one
//! replays from the slot's confirmed LSN — so ordering per subject holds across failures, and
//! a replay carries the same message ids (deduplicated by JetStream; by consumers on RabbitMQ).
//!
//! # NATS
//!
//! [`Sink::send`] hands a message to the client and returns at once; for JetStream the
//! message carries a reply subject `<inbox>.<seq>`, and the server's PubAck arrives on the one
//! inbox subscription ([`AckReplies`]), where the publish loop matches it by number against
//! its window (`crate::ack`). That is what async-nats' `send_publish` does per message with a
//! oneshot channel, a timer and a boxed future; doing it once per connection cut the
//! publisher's CPU by about a quarter. JetStream deduplicates on the `Nats-Msg-Id` header
//! within the stream's duplicate window, which is what makes replays after a crash invisible
//! to consumers.
//!
//! # RabbitMQ
//!
//! See [`rabbit`]: publisher confirms, `mandatory`, persistent messages, the event id as
//! `message_id`.
//!
//! Message envelopes — subject, headers and payload built from an event and a script's
//! [`Routed`] output — are made by [`Envelopes`] (which keeps the headers shared by a
//! transaction's changes of one relation) and [`dead_letter`].

mod connect;
mod envelope;
mod pub_ack;
pub(crate) mod rabbit;
pub(crate) mod stage;
pub(crate) mod stream;

use std::time::Duration;

use async_nats::StatusCode;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;

use crate::config::{Config, PublisherKind};
use crate::error::{Error, Kind, Result};

pub use connect::{client, display_address};
pub use envelope::{Envelopes, OutMessage, dead_letter, envelope};
pub use stream::{RETRY_HORIZON, jetstream_unavailable, subject_covers};

/// How long JetStream may go without acknowledging anything while messages are in flight
/// before we give up on the connection.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where messages go.
pub enum Sink {
    JetStream {
        client: async_nats::Client,
        /// `<inbox>.`: a message's reply subject is this plus its sequence number.
        reply_prefix: String,
        /// The server's `max_payload`, read once at connect: a sink lives for one connection
        /// (a lost one ends the session), and `Client::server_info` clones the whole INFO —
        /// it showed in the drain profile when it was read for every message.
        max_payload: usize,
        lost: Lost,
    },
    Core {
        client: async_nats::Client,
        /// As for `JetStream`.
        max_payload: usize,
        lost: Lost,
    },
    Rabbit(Box<rabbit::Rabbit>),
    Stdout,
}

/// Whether a sent message still waits for its acknowledgement.
pub enum Sent {
    /// Its ack will arrive on [`AckReplies`] (JetStream's PubAck on the inbox).
    Pending,
    /// Its ack is this future, for [`AckReplies::adopt`] (RabbitMQ's publisher confirm).
    Awaiting(BoxFuture<'static, Ack>),
    /// Nothing more will be known about it (core NATS, stdout): done.
    Done,
}

use connect::Lost;

impl Sink {
    /// Connect (and for JetStream, check or create the stream and subscribe to the acks).
    pub async fn connect(config: &Config) -> Result<(Sink, AckReplies)> {
        let p = &config.publisher;
        if p.kind == PublisherKind::Stdout {
            crate::health::nats_client().connected(true);
            return Ok((Sink::Stdout, AckReplies::None));
        }
        if p.kind == PublisherKind::Rabbitmq {
            let rabbit = rabbit::Rabbit::connect(config).await?;
            return Ok((
                Sink::Rabbit(Box::new(rabbit)),
                AckReplies::Futures(FuturesUnordered::new()),
            ));
        }
        let (client, lost) = connect::client(config).await?;
        if p.kind == PublisherKind::NatsCore {
            let max_payload = client.server_info().max_payload;
            return Ok((
                Sink::Core {
                    client,
                    max_payload,
                    lost,
                },
                AckReplies::None,
            ));
        }
        if !client.server_info().jetstream {
            crate::metrics::jetstream_unavailable();
            return Err(Error::new(
                Kind::JetStreamUnavailable,
                format!(
                    "the NATS server at {} does not have JetStream enabled: start nats-server with -js (or a jetstream {{}} block in its config), or set publisher.type: nats-core; retrying",
                    display_address(&p.address)
                ),
            ));
        }
        let js = context(&client);
        stream::ensure(&js, config).await?;
        let inbox = client.new_inbox();
        let sub = client.subscribe(format!("{inbox}.*")).await.map_err(|e| {
            Error::caused_by(
                Kind::NatsUnavailable,
                format!("NATS subscribe to the ack inbox: {e}"),
                e,
            )
        })?;
        let reply_prefix = format!("{inbox}.");
        let replies = AckReplies::Inbox {
            sub,
            prefix_len: reply_prefix.len(),
        };
        Ok((
            Sink::JetStream {
                max_payload: client.server_info().max_payload,
                client,
                reply_prefix,
                lost,
            },
            replies,
        ))
    }

    /// Whether a stream captures `subject`, asked of JetStream. After a publish to `subject`
    /// was answered "no responders", this tells an outage (JetStream does not answer: retry)
    /// from a subject no stream captures (JetStream answers that none does: fatal).
    pub async fn captures(&self, subject: &str, topic: &str) -> Result<()> {
        let Sink::JetStream { client, .. } = self else {
            return Ok(());
        };
        stream::captured(&context(client), subject, topic).await
    }

    /// Resolves when the connection to the broker is lost (never for stdout).
    pub async fn lost(&self) {
        match self {
            Sink::Rabbit(rabbit) => rabbit.lost().await,
            Sink::JetStream { lost, .. } | Sink::Core { lost, .. } => {
                let mut lost = lost.clone();
                if lost.wait_for(|l| *l).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Sink::Stdout => std::future::pending().await,
        }
    }

    /// Hand message number `seq` to the server.
    pub async fn send(&self, msg: OutMessage, seq: u64) -> Result<Sent> {
        match self {
            Sink::JetStream {
                client, reply_prefix, ..
            } => {
                let mut reply = String::with_capacity(reply_prefix.len() + 20);
                reply.push_str(reply_prefix);
                reply.push_str(itoa::Buffer::new().format(seq));
                let publish = client.publish_with_reply_and_headers(msg.subject, reply, msg.headers, msg.payload);
                handed_over(publish, ACK_TIMEOUT).await?;
                Ok(Sent::Pending)
            }
            Sink::Core { client, .. } => {
                handed_over(
                    client.publish_with_headers(msg.subject, msg.headers, msg.payload),
                    ACK_TIMEOUT,
                )
                .await?;
                Ok(Sent::Done)
            }
            Sink::Stdout => {
                use tokio::io::AsyncWriteExt;
                tokio::io::stdout()
                    .write_all(format!("{}\n", msg.to_json()).as_bytes())
                    .await
                    .map_err(|e| Error::caused_by(Kind::Output, format!("cannot write to standard output: {e}"), e))?;
                Ok(Sent::Done)
            }
            Sink::Rabbit(rabbit) => Ok(Sent::Awaiting(rabbit.send(msg, seq).await?)),
        }
    }

    /// The NATS client of a JetStream sink (backfills keep their progress in its KV store).
    pub fn jetstream_client(&self) -> Option<&async_nats::Client> {
        match self {
            Sink::JetStream { client, .. } => Some(client),
            _ => None,
        }
    }

    /// The largest message (payload plus headers) the server accepts; `None` for stdout.
    pub fn max_payload(&self) -> Option<usize> {
        match self {
            Sink::JetStream { max_payload, .. } | Sink::Core { max_payload, .. } => Some(*max_payload),
            Sink::Rabbit(_) => Some(rabbit::MAX_MESSAGE),
            Sink::Stdout => None,
        }
    }

    /// Why the broker would refuse `msg`, if it would (checked before sending, so that
    /// `scripts.onError` handles it).
    pub fn refusal(&self, msg: &OutMessage) -> Option<String> {
        match self {
            Sink::Rabbit(rabbit) => rabbit.refusal(msg),
            _ => {
                let limit = self.max_payload()?;
                (msg.wire_size() > limit).then(|| {
                    format!(
                        "message for {} is {} bytes, more than the NATS server's max_payload of {limit}",
                        msg.subject,
                        msg.wire_size()
                    )
                })
            }
        }
    }

    /// Wait until everything sent so far has left the client (core NATS).
    pub async fn flush(&self) -> Result<()> {
        match self {
            Sink::JetStream { client, .. } | Sink::Core { client, .. } => client
                .flush()
                .await
                .map_err(|e| Error::caused_by(Kind::NatsUnavailable, format!("NATS flush: {e}"), e)),
            Sink::Rabbit(_) | Sink::Stdout => Ok(()),
        }
    }

    /// Close the connection after a drain (RabbitMQ; NATS clients close on drop).
    pub async fn close(&self) {
        if let Sink::Rabbit(rabbit) = self {
            rabbit.close().await;
        }
    }

    /// The kind of error for this broker being unavailable.
    pub fn unavailable(&self) -> Kind {
        match self {
            Sink::Rabbit(_) => Kind::BrokerUnavailable,
            _ => Kind::NatsUnavailable,
        }
    }

    /// The broker's name, for messages.
    pub fn broker(&self) -> &'static str {
        match self {
            Sink::JetStream { .. } => "JetStream",
            Sink::Core { .. } => "NATS",
            Sink::Rabbit(_) => "RabbitMQ",
            Sink::Stdout => "stdout",
        }
    }
}

/// Hand a message to the client. That is immediate unless the client's command queue is full —
/// which it stays when the server stopped reading (hung, or a partition): give up on the
/// connection after `timeout` ([`ACK_TIMEOUT`]) then. The timer is only set up when the first
/// poll waits, so the usual message costs none.
async fn handed_over(
    publish: impl std::future::Future<Output = Result<(), async_nats::client::PublishError>>,
    timeout: Duration,
) -> Result<()> {
    let mut publish = std::pin::pin!(publish);
    let done = match futures::FutureExt::now_or_never(publish.as_mut()) {
        Some(done) => done,
        None => tokio::time::timeout(timeout, publish).await.map_err(|_| {
            Error::new(Kind::NatsUnavailable, format!(
                "NATS took no message for {timeout:?} (the server stopped reading); replaying from the last confirmed position"
            ))
        })?,
    };
    done.map_err(client_error)
}

fn client_error(e: async_nats::client::PublishError) -> Error {
    use async_nats::client::PublishErrorKind as K;
    match e.kind() {
        // Size and subjects are checked before a message is sent (`script::on_error`,
        // `script::output`): the client refusing one is a bug, not something to retry.
        K::MaxPayloadExceeded | K::InvalidSubject => Error::caused_by(
            Kind::MessageRefused,
            format!("the NATS client refused a message: {e}; please report this"),
            e,
        ),
        K::Send => Error::caused_by(Kind::NatsUnavailable, format!("NATS publish: {e}"), e),
    }
}

fn connection_lost(sink: &Sink) -> Error {
    // The connection is to a server: NATS for JetStream too (what an operator restarts).
    let server = match sink {
        Sink::JetStream { .. } | Sink::Core { .. } => "NATS",
        other => other.broker(),
    };
    Error::new(
        sink.unavailable(),
        format!("the {server} connection was lost; replaying from the last confirmed position"),
    )
}

/// A JetStream context whose API requests wait at most [`ACK_TIMEOUT`].
fn context(client: &async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::context::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client.clone())
}

/// The acknowledgements of one connection, as they arrive.
pub enum AckReplies {
    /// Nothing is acknowledged (core NATS, stdout).
    None,
    /// JetStream's PubAcks on the inbox `<inbox>.*`.
    Inbox {
        sub: async_nats::Subscriber,
        /// Length of `<inbox>.` in a reply's subject.
        prefix_len: usize,
    },
    /// One future per message ([`Sent::Awaiting`]): RabbitMQ's publisher confirms.
    Futures(FuturesUnordered<BoxFuture<'static, Ack>>),
}

/// One acknowledgement: the message's sequence number and what JetStream did with it.
#[derive(Debug)]
pub struct Ack {
    pub seq: u64,
    pub outcome: Outcome,
}

/// What JetStream answered to one publish.
#[derive(Debug)]
pub enum Outcome {
    /// Stored (maybe as a duplicate within the window).
    Stored,
    /// 503 "no responders": JetStream stopping, starting or electing a leader — or no stream
    /// captures the subject. Which one is asked of JetStream after reconnecting
    /// ([`Sink::captures`]).
    NoResponders,
    /// Not stored, for the reason given (a stream limit, say): replay.
    NotStored(Error),
}

impl AckReplies {
    /// Wait for `ack` too ([`Sent::Awaiting`]).
    pub fn adopt(&mut self, ack: BoxFuture<'static, Ack>) {
        match self {
            AckReplies::Futures(pending) => pending.push(ack),
            // A sink that returns futures has `Futures` replies (`Sink::connect`); none mixes.
            AckReplies::None | AckReplies::Inbox { .. } => {
                let only = FuturesUnordered::new();
                only.push(ack);
                *self = AckReplies::Futures(only);
            }
        }
    }

    /// The next acknowledgement; pending forever when there are none to wait for. An error
    /// when the subscription ended (the connection is gone).
    pub async fn next(&mut self) -> Result<Ack> {
        let (sub, prefix_len) = match self {
            AckReplies::None => return std::future::pending().await,
            AckReplies::Futures(pending) => {
                return match pending.next().await {
                    Some(ack) => Ok(ack),
                    None => std::future::pending().await,
                };
            }
            AckReplies::Inbox { sub, prefix_len } => (sub, *prefix_len),
        };
        loop {
            let Some(msg) = sub.next().await else {
                return Err(Error::new(
                    Kind::NatsUnavailable,
                    "the NATS connection closed while acknowledgements were awaited; replaying from the last confirmed position",
                ));
            };
            // A subject that is not `<inbox>.<number>` cannot be ours: ignore it.
            if let Some(seq) = msg.subject.get(prefix_len..).and_then(|n| n.parse().ok()) {
                return Ok(Ack {
                    seq,
                    outcome: outcome(&msg),
                });
            }
        }
    }

    /// The next acknowledgement if one has already arrived.
    pub fn try_next(&mut self) -> Option<Result<Ack>> {
        futures::FutureExt::now_or_never(self.next())
    }
}

/// What a PubAck says: `{"stream":…,"seq":…}` (stored, maybe as a duplicate) or
/// `{"error":{…}}`; a "no responders" status when JetStream did not answer.
fn outcome(msg: &async_nats::Message) -> Outcome {
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        error: Option<ApiError<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct ApiError<'a> {
        #[serde(default)]
        code: u16,
        #[serde(default)]
        err_code: u64,
        #[serde(borrow, default)]
        description: std::borrow::Cow<'a, str>,
    }
    let not_stored = |message: String| Outcome::NotStored(Error::new(Kind::NatsUnavailable, message));
    match msg.status {
        None | Some(StatusCode::OK) => {}
        Some(StatusCode::NO_RESPONDERS) => return Outcome::NoResponders,
        Some(status) => {
            return not_stored(format!(
                "JetStream answered a publish with status {status}{}",
                msg.description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ));
        }
    }
    if pub_ack::plain_pub_ack(&msg.payload) {
        return Outcome::Stored;
    }
    match serde_json::from_slice::<Reply>(&msg.payload) {
        Ok(Reply { error: None }) => Outcome::Stored,
        Ok(Reply { error: Some(e) }) => not_stored(format!(
            "JetStream did not store a message: {} (code {}, err_code {})",
            e.description, e.code, e.err_code
        )),
        Err(e) => not_stored(format!(
            "unreadable JetStream acknowledgement ({e}): {}",
            String::from_utf8_lossy(&msg.payload)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(payload: &str, status: Option<StatusCode>) -> async_nats::Message {
        async_nats::Message {
            subject: "_INBOX.x.7".into(),
            reply: None,
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn stored_and_duplicate_acks_are_success() {
        assert!(matches!(
            outcome(&reply(r#"{"stream":"s","seq":5}"#, None)),
            Outcome::Stored
        ));
        assert!(matches!(
            outcome(&reply(r#"{"stream":"s","seq":5,"duplicate":true}"#, None)),
            Outcome::Stored
        ));
    }

    #[test]
    fn a_refusal_is_transient_and_says_why() {
        let refused = r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
        match outcome(&reply(refused, None)) {
            Outcome::NotStored(e) => {
                let m = e.to_string();
                assert!(m.contains("maximum messages exceeded") && m.contains("10077"), "{m}");
                assert_eq!(e.disposition(), crate::error::Disposition::Transient);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outcome(&reply("not json", None)),
            Outcome::NotStored(e) if e.to_string().contains("not json")
        ));
    }

    #[tokio::test]
    async fn a_client_that_takes_no_message_is_given_up_on() {
        let stuck = std::future::pending::<Result<(), async_nats::client::PublishError>>();
        match handed_over(stuck, Duration::from_millis(50)).await {
            Err(e) => assert!(e.to_string().contains("NATS took no message for 50ms"), "{e}"),
            other => panic!("{other:?}"),
        }
        let slow = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        };
        assert!(handed_over(slow, Duration::from_secs(5)).await.is_ok());
        assert!(handed_over(std::future::ready(Ok(())), Duration::ZERO).await.is_ok());
    }

    #[test]
    fn an_election_is_transient() {
        // What a JetStream cluster answers while it elects a stream leader or lacks quorum.
        for refused in [
            r#"{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}"#,
            r#"{"error":{"code":503,"err_code":10039,"description":"jetstream not enabled for account"}}"#,
            r#"{"error":{"code":500,"err_code":10076,"description":"stream leader not ready"}}"#,
        ] {
            match outcome(&reply(refused, None)) {
                Outcome::NotStored(e) => assert_eq!(e.disposition(), crate::error::Disposition::Transient, "{e}"),
                other => panic!("{other:?}"),
            }
        }
        match outcome(&reply("", Some(StatusCode::TIMEOUT))) {
            Outcome::NotStored(e) => assert_eq!(e.disposition(), crate::error::Disposition::Transient, "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_responders_is_not_yet_a_verdict() {
        // JetStream stopping, starting or electing a leader answers the same as a subject no
        // stream captures: which one it was is asked of JetStream after reconnecting.
        assert!(matches!(
            outcome(&reply("", Some(StatusCode::NO_RESPONDERS))),
            Outcome::NoResponders
        ));
    }
}
