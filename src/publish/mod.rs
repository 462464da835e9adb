//! NATS: connection, stream check/creation, and two-phase publishing.
//!
//! [`Sink::send`] hands a message to the client and returns at once with an [`AckFuture`];
//! the ack stage (`crate::ack`) awaits those in publish order. JetStream deduplicates on the
//! `Nats-Msg-Id` header within the stream's duplicate window, which is what makes replays
//! after a crash invisible to consumers.
//!
//! Message envelopes — subject, headers and payload built from an event and a script's
//! [`Routed`] output — are made by [`envelope`] and [`dead_letter`].

mod connect;
mod envelope;
mod stream;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::config::{Config, PublisherKind};
use crate::metrics;

pub use connect::{client, display_address};
pub use envelope::{OutMessage, dead_letter, envelope};
pub use stream::subject_covers;

/// How long JetStream may take to acknowledge one message before we give up on the connection.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves when the server has stored the message (or, for non-persistent modes, at once).
pub type AckFuture = BoxFuture<'static, Result<(), PublishError>>;

/// A publishing failure, by what the pipeline must do about it.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Reconnect and replay from the last confirmed LSN.
    #[error("{0}")]
    Transient(String),
    /// This one message cannot be published (too large): `scripts.onError` decides.
    #[error("{0}")]
    Rejected(String),
    /// An operator must act.
    #[error("{0}")]
    Fatal(String),
}

/// Where messages go.
pub enum Sink {
    JetStream {
        client: async_nats::Client,
        js: Box<async_nats::jetstream::Context>,
        lost: Lost,
    },
    Core {
        client: async_nats::Client,
        lost: Lost,
    },
    Stdout,
}

use connect::Lost;

impl Sink {
    /// Connect (and for JetStream, check or create the stream).
    pub async fn connect(config: &Config) -> Result<Sink, PublishError> {
        let p = &config.publisher;
        if p.kind == PublisherKind::Stdout {
            crate::health::nats_client().connected(true);
            return Ok(Sink::Stdout);
        }
        let (client, lost) = connect::client(config).await?;
        if p.kind == PublisherKind::NatsCore {
            return Ok(Sink::Core { client, lost });
        }
        let js = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .max_ack_inflight(65_536)
            .backpressure_on_inflight(true)
            .build(client.clone());
        stream::ensure(&js, config).await?;
        Ok(Sink::JetStream {
            client,
            js: Box::new(js),
            lost,
        })
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

    /// Hand one message to the server; the returned future resolves when it is stored.
    /// Counted in the metrics (in flight, published, commit → ack latency).
    pub async fn send(&self, msg: OutMessage) -> Result<AckFuture, PublishError> {
        let table = msg.headers.get("Wal-Table").map(|v| v.as_str()).unwrap_or_default();
        let tracked = metrics::Publishing::start(&msg.subject, table, msg.commit_time);
        let ack = self.send_untracked(msg).await?;
        Ok(Box::pin(tracked.track(ack)))
    }

    async fn send_untracked(&self, msg: OutMessage) -> Result<AckFuture, PublishError> {
        match self {
            Sink::JetStream { js, .. } => {
                let publish = async_nats::jetstream::message::PublishMessage::build()
                    .payload(msg.payload)
                    .headers(msg.headers);
                let ack = js.send_publish(msg.subject, publish).await.map_err(publish_error)?;
                Ok(Box::pin(async move { ack.await.map(|_| ()).map_err(publish_error) }))
            }
            Sink::Core { client, .. } => {
                client
                    .publish_with_headers(msg.subject, msg.headers, msg.payload)
                    .await
                    .map_err(|e| PublishError::Transient(format!("NATS publish: {e}")))?;
                Ok(Box::pin(async { Ok(()) }))
            }
            Sink::Stdout => {
                let line = stdout_line(&msg);
                Ok(Box::pin(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut out = tokio::io::stdout();
                    out.write_all(&line)
                        .await
                        .map_err(|e| PublishError::Fatal(format!("stdout: {e}")))
                }))
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
    pub async fn flush(&self) -> Result<(), PublishError> {
        match self {
            Sink::JetStream { client, .. } | Sink::Core { client, .. } => client
                .flush()
                .await
                .map_err(|e| PublishError::Transient(format!("NATS flush: {e}"))),
            Sink::Stdout => Ok(()),
        }
    }
}

fn publish_error(e: async_nats::jetstream::context::PublishError) -> PublishError {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let text = e.to_string();
    match e.kind() {
        K::MaxPayloadExceeded => PublishError::Rejected(format!("message too large for NATS: {text}")),
        K::StreamNotFound => PublishError::Fatal(format!(
            "no JetStream stream captures the subject ({text}): a routing script returned a subject outside the stream's subjects (e.g. not under publisher.topic), or the stream was deleted or changed while running; route to subjects under <topic>. or add the subject to a stream"
        )),
        _ => PublishError::Transient(format!("JetStream publish: {text}")),
    }
}

/// `{"subject":…,"headers":{…},"payload":…}` — the payload embedded when it is JSON.
fn stdout_line(msg: &OutMessage) -> Vec<u8> {
    let headers: serde_json::Map<String, serde_json::Value> = msg
        .headers
        .iter()
        .flat_map(|(k, values)| {
            values
                .iter()
                .map(move |v| (k.to_string(), serde_json::Value::String(v.as_str().to_string())))
        })
        .collect();
    let payload = match serde_json::from_slice::<&serde_json::value::RawValue>(&msg.payload) {
        Ok(raw) => serde_json::to_value(raw).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(&msg.payload).into_owned()),
    };
    let mut line =
        serde_json::to_vec(&serde_json::json!({"subject": msg.subject, "headers": headers, "payload": payload}))
            .unwrap_or_default();
    line.push(b'\n');
    line
}
