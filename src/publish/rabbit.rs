//! RabbitMQ (AMQP 0-9-1, through lapin): the exchange, and publishing with publisher confirms.
//!
//! One connection and one channel in confirm mode per session. Every message goes to the
//! exchange `publisher.topic` with the script's subject as routing key, `mandatory` set,
//! delivery mode 2 (persistent), the event id as `message_id`, `content_type` for JSON
//! payloads, and the other envelope headers (`Wal-*`, the script's) as AMQP headers.
//!
//! [`Rabbit::send`] polls lapin's `basic_publish` once — that queues the frames for lapin's
//! I/O loop, in call order — and hands the rest (the write, then the confirm) to the publish
//! stage's [`super::AckReplies`] as one future tagged with the message's number. What a
//! confirm can say:
//!
//! | RabbitMQ answers | outcome |
//! |---|---|
//! | `basic.ack` | stored: in every queue the exchange routed it to (persisted, for durable queues) |
//! | `basic.return` + `basic.ack` (unroutable, as `mandatory` asks) | `publisher.unroutable: fail` → fatal, the change stays unconfirmed; `drop` → counted and done |
//! | `basic.nack` (an internal error in a queue) | transient: replay from the confirmed position |
//! | the channel or connection closes | transient: replay from the confirmed position |
//!
//! The connection never recovers by itself (lapin's auto-recovery is off): as with NATS, a
//! lost connection ends the session, and the next one replays from the slot's confirmed LSN.
//! RabbitMQ has no deduplication: a replay delivers again what was confirmed after the slot's
//! position — same `message_id`, which consumers deduplicate on.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use crate::config::{Config, ExchangeKind, Unroutable};
use crate::error::{Error, Kind, Result};
use crate::health;

use super::{Ack, OutMessage, Outcome, display_address};

/// The largest message we send (payload plus headers): RabbitMQ 4's default
/// `max_message_size` (3.x allowed 128 MiB). A larger one is refused by closing the channel,
/// which would replay it forever; `scripts.onError` handles it instead.
pub const MAX_MESSAGE: usize = 16 << 20;

/// AMQP short strings (routing key, message id, header names) hold at most this many bytes.
const SHORT_STRING: usize = 255;

/// µs between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch, used by commit times).
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

/// A RabbitMQ session: connection, confirm-mode channel, the exchange.
pub struct Rabbit {
    /// Kept so the connection lives as long as the session; closed on drop.
    connection: Connection,
    channel: lapin::Channel,
    exchange: ShortString,
    unroutable: Unroutable,
    lost: watch::Receiver<bool>,
    _events: AbortOnDropHandle<()>,
}

impl Rabbit {
    /// Connect, declare (or check) the exchange, open a channel in confirm mode.
    pub async fn connect(config: &Config) -> Result<Rabbit> {
        let p = &config.publisher;
        let nats = health::nats_client();
        let connection = connect(config).await?;
        let (lost_tx, lost) = watch::channel(false);
        let events = connection.events_listener();
        let events = AbortOnDropHandle::new(tokio::spawn(watch_events(events, lost_tx, nats)));
        let kind = exchange_kind(config);
        if !ensure_exchange(&connection, &p.topic, kind).await? {
            tracing::warn!(
                exchange = %p.topic,
                "the exchange is not durable: RabbitMQ forgets it (and its bindings) on restart, and messages published then are unroutable; declare it durable"
            );
        }
        let channel = open_channel(&connection).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("enabling publisher confirms", &e))?;
        nats.connected(true);
        tracing::info!(
            address = %display_address(&p.address),
            vhost = %connection.status().vhost(),
            exchange = %p.topic,
            kind = kind.as_str(),
            "connected to RabbitMQ"
        );
        let exchange = ShortString::try_new(p.topic.clone()).map_err(|_| {
            Error::new(
                Kind::BrokerConfig,
                "publisher.topic is longer than 255 bytes, too long for a RabbitMQ exchange name",
            )
        })?;
        Ok(Rabbit {
            connection,
            channel,
            exchange,
            unroutable: p.unroutable,
            lost,
            _events: events,
        })
    }

    /// Publish message number `seq`; the returned future resolves to its confirm.
    ///
    /// lapin's `basic_publish` queues the frames for its I/O loop on its first poll and then
    /// waits until they are written. Awaiting that for each message cost a hand-off to the I/O
    /// loop and back per message (about 2,400 messages/s); so the future is polled once here —
    /// which queues the frames, in call order — and the wait for the write is left to the ack
    /// future, with the confirm. A broker that stops reading shows as no confirm for
    /// [`super::ACK_TIMEOUT`] while messages wait (the publish stage's stall check).
    pub async fn send(&self, msg: OutMessage, seq: u64) -> Result<BoxFuture<'static, Ack>> {
        let routing_key = ShortString::try_new(msg.subject.as_str()).map_err(|_| too_long("routing key"))?;
        let properties = properties(&msg)?;
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let (channel, exchange, payload) = (self.channel.clone(), self.exchange.clone(), msg.payload);
        let mut publish: BoxFuture<'static, lapin::Result<lapin::PublisherConfirm>> = Box::pin(async move {
            channel
                .basic_publish(exchange, routing_key, options, &payload, properties)
                .await
        });
        let waker = futures::task::noop_waker();
        let first = publish.as_mut().poll(&mut std::task::Context::from_waker(&waker));
        if let std::task::Poll::Ready(Err(e)) = &first {
            return Err(unavailable("publishing", e));
        }
        let unroutable = self.unroutable;
        Ok(Box::pin(async move {
            let confirm = match first {
                std::task::Poll::Ready(Ok(confirm)) => confirm,
                _ => match publish.await {
                    Ok(confirm) => confirm,
                    Err(e) => {
                        return Ack {
                            seq,
                            outcome: Outcome::NotStored(unavailable("publishing", &e)),
                        };
                    }
                },
            };
            Ack {
                seq,
                outcome: outcome(confirm.await, unroutable),
            }
        }))
    }

    /// Why RabbitMQ would refuse `msg`, if it would: too large, or a routing key, message id
    /// or header name longer than an AMQP short string.
    pub fn refusal(&self, msg: &OutMessage) -> Option<String> {
        if msg.wire_size() > MAX_MESSAGE {
            return Some(format!(
                "message for {} is {} bytes, more than the {MAX_MESSAGE} bytes wal-listener sends to RabbitMQ",
                msg.subject,
                msg.wire_size()
            ));
        }
        if msg.subject.len() > SHORT_STRING {
            return Some(format!(
                "subject {:?}… is {} bytes: RabbitMQ routing keys hold at most {SHORT_STRING}",
                msg.subject.chars().take(40).collect::<String>(),
                msg.subject.len()
            ));
        }
        msg.headers
            .iter()
            .find(|(name, values)| {
                let name: &str = name.as_ref();
                name.len() > SHORT_STRING
                    || (name.eq_ignore_ascii_case("Nats-Msg-Id")
                        && values.iter().any(|v| v.as_str().len() > SHORT_STRING))
            })
            .map(|(name, _)| {
                let name: &str = name.as_ref();
                format!("header {name:?} (or its value as message_id) is longer than {SHORT_STRING} bytes, too long for RabbitMQ")
            })
    }

    /// Resolves when the connection is lost.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        if lost.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Close the connection politely (after a drain, every confirm is in).
    pub async fn close(&self) {
        let closing = self.connection.close(200, ShortString::from("wal-listener stopping"));
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), closing).await {
            tracing::debug!(error = %e, "closing the RabbitMQ connection");
        }
    }
}

/// What the broker said about the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExchangeState {
    /// No exchange of that name in the virtual host.
    Missing,
    /// It exists with the configured kind.
    Matches { durable: bool },
}

/// `publisher.exchangeKind` (validated as required with `type: rabbitmq`).
pub(crate) fn exchange_kind(config: &Config) -> ExchangeKind {
    config.publisher.exchange_kind.unwrap_or(ExchangeKind::Topic)
}

/// Connect to `publisher.address` (with `publisher.user`/`password` over the URI's
/// credentials, and `publisher.tlsCaFile` for `amqps://`).
pub(crate) async fn connect(config: &Config) -> Result<Connection> {
    let p = &config.publisher;
    let shown = display_address(&p.address);
    // lapin's rustls is built on ring, the provider pgwire-replication installs too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut uri: lapin::uri::AMQPUri = p.address.trim().parse().map_err(|e: String| {
        Error::new(
            Kind::BrokerConfig,
            format!("publisher.address {shown:?} is not an AMQP URI: {e} (amqp://user:password@host:5672/vhost)"),
        )
    })?;
    if let (Some(user), Some(password)) = (&p.user, &p.password) {
        uri.authority.userinfo.username = user.clone();
        uri.authority.userinfo.password = password.expose().to_string();
    }
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from("wal-listener"))
        .with_locale(ShortString::from("en_US"));
    let tls = tls_config(config)?;
    let runtime = lapin::runtime::default_runtime().map_err(|e| {
        Error::caused_by(
            Kind::BrokerConfig,
            format!("no runtime for the RabbitMQ client: {e}"),
            e,
        )
    })?;
    let vhost = uri.vhost.clone();
    let connecting = Connection::connect_uri_with_config(uri, properties, tls, runtime);
    let connection = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(connected) => connected.map_err(|e| connect_error(&shown, &vhost, &e))?,
        Err(_) => {
            return Err(Error::new(
                Kind::BrokerUnavailable,
                format!("connecting to RabbitMQ at {shown} took more than 10s (check publisher.address); retrying"),
            ));
        }
    };
    Ok(connection)
}

fn tls_config(config: &Config) -> Result<lapin::tcp::OwnedTLSConfig> {
    let mut tls = lapin::tcp::OwnedTLSConfig::default();
    if let Some(ca) = &config.publisher.tls_ca_file {
        let pem = std::fs::read_to_string(config.resolve(ca)).map_err(|e| {
            Error::caused_by(
                Kind::BrokerConfig,
                format!("publisher.tlsCaFile {}: {e}", ca.display()),
                e,
            )
        })?;
        tls.cert_chain = Some(pem);
    }
    Ok(tls)
}

/// A failed connection attempt, by what an operator must do about it.
fn connect_error(shown: &str, vhost: &str, e: &lapin::Error) -> Error {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    if is_tls_failure(e) {
        // A certificate that does not verify stays so: an operator must act.
        return Error::new(
            Kind::BrokerConfig,
            format!(
                "TLS to RabbitMQ failed at {shown}: {e} (check publisher.tlsCaFile — the CA that signed the server's certificate — and that the certificate names the host in publisher.address)"
            ),
        );
    }
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        let text = amqp.get_message().as_str();
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if !text.contains("vhost") => {
                return Error::new(
                    Kind::BrokerRefused,
                    format!(
                        "RabbitMQ at {shown} refused the login: {text} (check the user and password in publisher.address, or publisher.user and publisher.password)"
                    ),
                );
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => {
                return Error::new(
                    Kind::BrokerRefused,
                    format!(
                        "RabbitMQ at {shown} refused the virtual host {vhost:?}: {text} (the vhost is the path of publisher.address, %2f for \"/\"; create it with rabbitmqctl add_vhost, or grant the user access with rabbitmqctl set_permissions)"
                    ),
                );
            }
            _ => {}
        }
    }
    Error::new(
        Kind::BrokerUnavailable,
        format!(
            "cannot connect to RabbitMQ at {shown}: {e} (is rabbitmq-server running there? check publisher.address); retrying"
        ),
    )
}

/// Whether a connection failed in the TLS handshake (rustls refused the server).
fn is_tls_failure(e: &lapin::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        next = err.source();
    }
    // Some layers keep only the text.
    let text = e.to_string();
    text.contains("invalid peer certificate") || text.contains("InvalidCertificate")
}

/// A new channel on `connection`.
async fn open_channel(connection: &Connection) -> Result<lapin::Channel> {
    connection
        .create_channel()
        .await
        .map_err(|e| unavailable("opening a channel", &e))
}

/// Declare the exchange durable when it is missing; when it exists, check its kind. Whether
/// it is durable.
/// (A declaration of an existing exchange with equal arguments changes nothing; with another
/// kind RabbitMQ refuses it, and says which kind the exchange has.)
async fn ensure_exchange(connection: &Connection, name: &str, kind: ExchangeKind) -> Result<bool> {
    match inspect_exchange(connection, name, kind).await? {
        ExchangeState::Missing => {
            let channel = open_channel(connection).await?;
            let options = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(short(name)?, lapin_kind(kind), options, FieldTable::default())
                .await
                .map_err(|e| exchange_error(name, kind, &e))?;
            tracing::info!(exchange = %name, kind = kind.as_str(), "declared the RabbitMQ exchange (durable)");
            let _ = channel.close(200, ShortString::from("declared")).await;
            Ok(true)
        }
        ExchangeState::Matches { durable } => Ok(durable),
    }
}

/// Whether the exchange exists and has `kind` — declaring nothing new: a passive declaration
/// first, then (when it exists) a declaration with the same kind, which RabbitMQ accepts as
/// a no-op or refuses naming the kind the exchange has. One source for the service and
/// `check --connect`.
pub(crate) async fn inspect_exchange(connection: &Connection, name: &str, kind: ExchangeKind) -> Result<ExchangeState> {
    let name_short = short(name)?;
    let channel = open_channel(connection).await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    if let Err(e) = channel
        .exchange_declare(name_short.clone(), lapin_kind(kind), passive, FieldTable::default())
        .await
    {
        if is_soft(&e, lapin::protocol::AMQPSoftError::NOTFOUND) {
            return Ok(ExchangeState::Missing);
        }
        return Err(exchange_error(name, kind, &e));
    }
    let _ = channel.close(200, ShortString::from("checked")).await;
    for durable in [true, false] {
        let channel = open_channel(connection).await?;
        let options = ExchangeDeclareOptions {
            durable,
            ..ExchangeDeclareOptions::default()
        };
        match channel
            .exchange_declare(name_short.clone(), lapin_kind(kind), options, FieldTable::default())
            .await
        {
            Ok(()) => {
                let _ = channel.close(200, ShortString::from("checked")).await;
                return Ok(ExchangeState::Matches { durable });
            }
            // Same kind, other durability: try the other one.
            Err(e) if durable && inequivalent(&e) == Some("durable") => continue,
            Err(e) => return Err(exchange_error(name, kind, &e)),
        }
    }
    Err(Error::new(
        Kind::ExchangeUnusable,
        format!("RabbitMQ refused every declaration of the exchange {name:?} (publisher.topic)"),
    ))
}

/// The argument a PRECONDITION_FAILED declaration names (`inequivalent arg 'type' …`).
fn inequivalent(e: &lapin::Error) -> Option<&str> {
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        return None;
    };
    let text = amqp.get_message().as_str();
    let rest = text.split("inequivalent arg '").nth(1)?;
    rest.split('\'').next()
}

/// A refused exchange declaration, worded by cause.
fn exchange_error(name: &str, kind: ExchangeKind, e: &lapin::Error) -> Error {
    use lapin::protocol::AMQPSoftError;
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        return unavailable(&format!("declaring the exchange {name:?}"), e);
    };
    let text = amqp.get_message().as_str();
    if inequivalent(e) == Some("type") {
        let current = text
            .split("current is '")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap_or("another kind");
        return Error::new(
            Kind::ExchangeUnusable,
            format!(
                "the RabbitMQ exchange {name:?} (publisher.topic) exists as a {current} exchange, but publisher.exchangeKind is {}: set publisher.exchangeKind: {current}, or choose another publisher.topic (RabbitMQ: {text})",
                kind.as_str()
            ),
        );
    }
    if is_soft(e, AMQPSoftError::ACCESSREFUSED) {
        return Error::new(
            Kind::ExchangeUnusable,
            format!(
                "RabbitMQ does not let the user declare or use the exchange {name:?} (publisher.topic): {text}; grant configure and write permissions on it (rabbitmqctl set_permissions)"
            ),
        );
    }
    if is_soft(e, AMQPSoftError::PRECONDITIONFAILED) {
        return Error::new(
            Kind::ExchangeUnusable,
            format!("the RabbitMQ exchange {name:?} (publisher.topic) cannot be used as declared: {text}"),
        );
    }
    unavailable(&format!("declaring the exchange {name:?}"), e)
}

fn is_soft(e: &lapin::Error, which: lapin::protocol::AMQPSoftError) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if *amqp.kind() == lapin::protocol::AMQPErrorKind::Soft(which))
}

fn lapin_kind(kind: ExchangeKind) -> lapin::ExchangeKind {
    match kind {
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        ExchangeKind::Headers => lapin::ExchangeKind::Headers,
    }
}

fn short(name: &str) -> Result<ShortString> {
    ShortString::try_new(name).map_err(|_| {
        Error::new(
            Kind::BrokerConfig,
            "publisher.topic is longer than 255 bytes, too long for a RabbitMQ exchange name",
        )
    })
}

/// A message field too long for AMQP (checked before sending by [`Rabbit::refusal`]).
fn too_long(what: &str) -> Error {
    Error::new(
        Kind::MessageRefused,
        format!("a RabbitMQ {what} longer than {SHORT_STRING} bytes reached the client; please report this"),
    )
}

/// The connection, the channel or the broker failed during `what`: replay.
fn unavailable(what: &str, e: &lapin::Error) -> Error {
    Error::caused_by(
        Kind::BrokerUnavailable,
        format!("RabbitMQ, {what}: {e}; replaying from the last confirmed position"),
        e.clone(),
    )
}

/// The envelope's headers as AMQP properties: `Nats-Msg-Id` → `message_id`, `Content-Type`
/// → `content_type`, the rest → `headers`; persistent; the commit time as `timestamp`.
fn properties(msg: &OutMessage) -> Result<BasicProperties> {
    let mut table = FieldTable::default();
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_app_id(ShortString::from("wal-listener"));
    for (name, values) in msg.headers.iter() {
        let name: &str = name.as_ref();
        let Some(value) = values.last() else { continue };
        let value = value.as_str();
        if name.eq_ignore_ascii_case("Nats-Msg-Id") {
            properties = properties.with_message_id(ShortString::try_new(value).map_err(|_| too_long("message id"))?);
        } else if name.eq_ignore_ascii_case("Content-Type") {
            properties =
                properties.with_content_type(ShortString::try_new(value).map_err(|_| too_long("content type"))?);
        } else {
            table.insert(
                ShortString::try_new(name).map_err(|_| too_long("header name"))?,
                AMQPValue::LongString(LongString::from(value)),
            );
        }
    }
    let seconds = msg.commit_time.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECONDS;
    if let Ok(seconds) = u64::try_from(seconds) {
        properties = properties.with_timestamp(seconds);
    }
    Ok(properties.with_headers(table))
}

/// What a confirm says about one message.
fn outcome(confirm: lapin::Result<Confirmation>, unroutable: Unroutable) -> Outcome {
    match confirm {
        Ok(Confirmation::Ack(None)) => Outcome::Stored,
        Ok(Confirmation::Ack(Some(returned))) => match unroutable {
            Unroutable::Drop => {
                crate::metrics::unroutable_dropped();
                Outcome::Stored
            }
            Unroutable::Fail => Outcome::NotStored(Error::new(
                Kind::Unroutable,
                format!(
                    "RabbitMQ routed a message to no queue: exchange {:?} has no binding for routing key (subject) {:?} ({} {}); the change is not confirmed. Bind a queue for it, route it elsewhere in the script, or set publisher.unroutable: drop to count and drop such messages",
                    returned.delivery.exchange.as_str(),
                    returned.delivery.routing_key.as_str(),
                    returned.reply_code,
                    returned.reply_text.as_str()
                ),
            )),
        },
        Ok(Confirmation::Nack(_)) => Outcome::NotStored(Error::new(
            Kind::BrokerUnavailable,
            "RabbitMQ nacked a message (a queue could not take it); replaying from the last confirmed position",
        )),
        Ok(Confirmation::NotRequested) => Outcome::NotStored(Error::new(
            Kind::BrokerUnavailable,
            "RabbitMQ confirms were not enabled on the channel; reconnecting",
        )),
        Err(e) => Outcome::NotStored(unavailable("awaiting a publisher confirm", &e)),
    }
}

/// Connection events: a lost connection ends the session (`lost`), and `/healthz` and the
/// connected gauge follow it; resource alarms are logged.
async fn watch_events(
    mut events: impl futures::Stream<Item = lapin::Event> + Unpin,
    lost: watch::Sender<bool>,
    nats: health::NatsHandle,
) {
    let lost = Arc::new(lost);
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::Error(e) => {
                nats.connected(false);
                if !lost.send_replace(true) {
                    tracing::warn!(error = %e, "RabbitMQ connection lost; reconnecting and replaying from the last confirmed position");
                }
            }
            lapin::Event::ConnectionBlocked(reason) => tracing::warn!(
                %reason,
                "RabbitMQ blocked publishing (a memory or disk alarm); confirms wait until it clears"
            ),
            lapin::Event::ConnectionUnblocked => tracing::info!("RabbitMQ unblocked publishing"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::HeaderMap;

    fn message(headers: &[(&str, &str)]) -> OutMessage {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        OutMessage {
            subject: "wal.public_users".into(),
            headers: map,
            payload: bytes::Bytes::from_static(b"{}"),
            commit_time: 0,
        }
    }

    #[test]
    fn headers_become_amqp_properties() {
        let msg = message(&[
            ("Nats-Msg-Id", "7d0c"),
            ("Content-Type", "application/json"),
            ("Wal-Table", "users"),
        ]);
        let p = properties(&msg).expect("properties");
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("7d0c"));
        assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.timestamp(), Some(946_684_800));
        let headers = p.headers().as_ref().expect("headers");
        assert!(headers.inner().contains_key("Wal-Table"));
        assert!(!headers.inner().contains_key("Nats-Msg-Id"));
        assert!(!headers.inner().contains_key("Content-Type"));
    }

    #[test]
    fn a_long_header_name_is_an_error_not_a_panic() {
        let long = "X".repeat(300);
        let msg = message(&[(long.as_str(), "v")]);
        assert!(properties(&msg).is_err());
    }
}
