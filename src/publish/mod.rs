//! NATS: connection, stream check/creation, and two-phase publishing.
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
//! Message envelopes — subject, headers and payload built from an event and a script's
//! [`Routed`] output — are made by [`envelope`] and [`dead_letter`].

mod connect;
mod envelope;
pub(crate) mod stage;
pub(crate) mod stream;

use std::time::Duration;

use async_nats::StatusCode;
use futures::StreamExt;

use crate::config::{Config, PublisherKind};
use crate::error::{Error, Kind, Result};

pub use connect::{client, display_address};
pub use envelope::{OutMessage, dead_letter, envelope};
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
        lost: Lost,
    },
    Core {
        client: async_nats::Client,
        lost: Lost,
    },
    Stdout,
}

/// Whether a sent message still waits for its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Its PubAck will arrive on [`AckReplies`].
    Pending,
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
            return Ok((
                Sink::Stdout,
                AckReplies {
                    sub: None,
                    prefix_len: 0,
                },
            ));
        }
        let (client, lost) = connect::client(config).await?;
        if p.kind == PublisherKind::NatsCore {
            return Ok((
                Sink::Core { client, lost },
                AckReplies {
                    sub: None,
                    prefix_len: 0,
                },
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
        let replies = AckReplies {
            sub: Some(sub),
            prefix_len: reply_prefix.len(),
        };
        Ok((
            Sink::JetStream {
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

    /// Resolves when the connection to NATS is lost (never for stdout).
    pub async fn lost(&self) {
        match self {
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
        }
    }

    /// The largest message (payload plus headers) the server accepts; `None` for stdout.
    pub fn max_payload(&self) -> Option<usize> {
        match self {
            Sink::JetStream { client, .. } | Sink::Core { client, .. } => Some(client.server_info().max_payload),
            Sink::Stdout => None,
        }
    }

    /// Wait until everything sent so far has left the client (core NATS).
    pub async fn flush(&self) -> Result<()> {
        match self {
            Sink::JetStream { client, .. } | Sink::Core { client, .. } => client
                .flush()
                .await
                .map_err(|e| Error::caused_by(Kind::NatsUnavailable, format!("NATS flush: {e}"), e)),
            Sink::Stdout => Ok(()),
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

fn connection_lost() -> Error {
    Error::new(
        Kind::NatsUnavailable,
        "the NATS connection was lost; replaying from the last confirmed position",
    )
}

/// A JetStream context whose API requests wait at most [`ACK_TIMEOUT`].
fn context(client: &async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::context::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client.clone())
}

/// The JetStream acknowledgements of one connection, as they arrive.
pub struct AckReplies {
    /// `None` when nothing is acknowledged (core NATS, stdout).
    sub: Option<async_nats::Subscriber>,
    /// Length of `<inbox>.` in a reply's subject.
    prefix_len: usize,
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
    /// The next acknowledgement; pending forever when there are none to wait for. An error
    /// when the subscription ended (the connection is gone).
    pub async fn next(&mut self) -> Result<Ack> {
        let Some(sub) = &mut self.sub else {
            return std::future::pending().await;
        };
        loop {
            let Some(msg) = sub.next().await else {
                return Err(Error::new(
                    Kind::NatsUnavailable,
                    "the NATS connection closed while acknowledgements were awaited; replaying from the last confirmed position",
                ));
            };
            // A subject that is not `<inbox>.<number>` cannot be ours: ignore it.
            if let Some(seq) = msg.subject.get(self.prefix_len..).and_then(|n| n.parse().ok()) {
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
