//! One error vocabulary for the running service: what failed (a [`Kind`]), the operator's
//! message (what happened and which setting to change), and the underlying cause; and, in one
//! place ([`Kind::disposition`]), what the session loop does about it.
//!
//! | disposition | what the session loop does |
//! |---|---|
//! | [`Disposition::Transient`] | ends the session, backs off (0.25 s doubling to 30 s), resumes from the slot's confirmed LSN |
//! | [`Disposition::Standby`] | waits, checks the slot every second, takes over when it is free |
//! | [`Disposition::Fatal`] | stops the process (exit 1) with the message |
//!
//! The rule (Materialize's transient-vs-definite split, supabase/etl's error policy): a
//! failure is transient when waiting can fix it — a server down, restarting, failing over, or
//! answering "no responders", RabbitMQ nacking a message — and fatal when only an operator can —
//! credentials, TLS, privileges, a dropped slot, a stream or exchange that would lose events. Errors are made where the
//! cause is known (the module that called the library), classified here.

use std::fmt;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PostgreSQL is unreachable, restarting, or the connection broke.
    PgUnavailable,
    /// PostgreSQL is in recovery (a standby, or a failover not yet promoted).
    PgInRecovery,
    /// PostgreSQL refused the login or an action: credentials, no password configured, an
    /// authentication method we cannot use, privileges, a missing database.
    PgRefused,
    /// TLS to PostgreSQL: negotiation or certificates.
    PgTls,
    /// The server or its objects cannot be used as configured: `wal_level`, a slot of another
    /// plugin or database, a publication or slot that cannot be created.
    PgSetup,
    /// Another connection streams from the slot.
    SlotBusy,
    /// The slot or the publication disappeared while the service ran.
    SlotLost,
    /// PostgreSQL invalidated the slot (`wal_status = lost`, an `invalidation_reason`): the
    /// changes it held are gone; never recreated silently.
    SlotInvalidated,
    /// The replication stream broke the protocol (an undecodable or out-of-order message).
    Protocol,
    /// NATS is unreachable, or the connection was lost or stopped answering.
    NatsUnavailable,
    /// NATS refused the credentials.
    NatsRefused,
    /// TLS to NATS.
    NatsTls,
    /// A publisher setting that cannot work (an address that does not parse, a bad NKey seed).
    NatsConfig,
    /// JetStream does not answer: stopping, starting, electing a leader, or not enabled.
    JetStreamUnavailable,
    /// JetStream answered "no responders" to a publish (to [`Error::subject`]): an outage, or a
    /// subject no stream captures — the next session asks JetStream which.
    NoResponders,
    /// JetStream says that no stream captures a published subject.
    SubjectUncaptured,
    /// The stream exists but would lose events (subjects, `no_ack`).
    StreamUnusable,
    /// The NATS client refused one message (checked before sending, so this is a bug).
    MessageRefused,
    /// RabbitMQ is unreachable, the connection or channel was lost, or it nacked a message.
    BrokerUnavailable,
    /// RabbitMQ refused the login: credentials, or a virtual host that is missing or not ours.
    BrokerRefused,
    /// A RabbitMQ setting that cannot work (an address that does not parse, a CA file).
    BrokerConfig,
    /// The exchange cannot be used as configured: another kind, or no right to declare it.
    ExchangeUnusable,
    /// RabbitMQ routed a message to no queue (`publisher.unroutable: fail`).
    Unroutable,
    /// `scripts.onError: halt` stopped at a change it cannot publish.
    Halted,
    /// The routing script cannot be loaded at start.
    Script,
    /// Standard output (the `stdout` publisher) cannot be written.
    Output,
    /// The HTTP endpoint cannot listen.
    Http,
}

/// What the session loop does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// End the session and resume from the confirmed LSN after a backoff.
    Transient,
    /// Wait for the slot, as a standby.
    Standby,
    /// Stop the process.
    Fatal,
}

impl Kind {
    /// The one classification.
    pub fn disposition(self) -> Disposition {
        use Kind::*;
        match self {
            // Waiting helps: a server comes back, a standby is promoted, a leader is elected,
            // a fixed script is loaded (a halt is retried at once when one is).
            PgUnavailable | PgInRecovery | NatsUnavailable | JetStreamUnavailable | NoResponders
            | BrokerUnavailable | Halted => Disposition::Transient,
            SlotBusy => Disposition::Standby,
            // Only an operator can help; the message names the setting.
            Protocol | PgRefused | PgTls | PgSetup | SlotLost | SlotInvalidated | NatsRefused | NatsTls
            | NatsConfig | SubjectUncaptured | StreamUnusable | MessageRefused | BrokerRefused | BrokerConfig
            | ExchangeUnusable | Unroutable | Script | Output | Http => Disposition::Fatal,
        }
    }
}

/// A failure: its kind, the operator's message, and the cause.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    /// The subject concerned ([`Kind::NoResponders`]).
    subject: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A failure described by `message` (which says what to do about it).
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            subject: None,
            source: None,
        }
    }

    /// The same, keeping the library error it came from.
    pub fn caused_by(
        kind: Kind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error {
            source: Some(Box::new(source)),
            ..Error::new(kind, message)
        }
    }

    /// This failure, keeping the library error it came from.
    pub fn with_source(self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error {
            source: Some(Box::new(source)),
            ..self
        }
    }

    /// JetStream answered "no responders" to a publish to `subject`.
    pub fn no_responders(subject: &str) -> Error {
        Error {
            subject: Some(subject.to_string()),
            ..Error::new(
                Kind::NoResponders,
                format!(
                    "JetStream answered \"no responders\" to a publish to {subject:?}: it is stopping, starting or electing a leader, or no stream captures the subject; replaying from the last confirmed position once JetStream answers"
                ),
            )
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn disposition(&self) -> Disposition {
        self.kind.disposition()
    }

    /// The subject a publish was answered "no responders" for.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_helps_only_with_outages() {
        for kind in [
            Kind::PgUnavailable,
            Kind::PgInRecovery,
            Kind::NatsUnavailable,
            Kind::JetStreamUnavailable,
            Kind::NoResponders,
            Kind::BrokerUnavailable,
            Kind::Halted,
        ] {
            assert_eq!(kind.disposition(), Disposition::Transient, "{kind:?}");
        }
        assert_eq!(Kind::SlotBusy.disposition(), Disposition::Standby);
        for kind in [
            Kind::PgRefused,
            Kind::PgTls,
            Kind::SlotLost,
            Kind::SlotInvalidated,
            Kind::Protocol,
            Kind::NatsRefused,
            Kind::SubjectUncaptured,
            Kind::StreamUnusable,
            Kind::BrokerRefused,
            Kind::ExchangeUnusable,
            Kind::Unroutable,
        ] {
            assert_eq!(kind.disposition(), Disposition::Fatal, "{kind:?}");
        }
    }

    #[test]
    fn the_cause_is_kept_and_the_message_shown() {
        let io = std::io::Error::other("connection reset");
        let e = Error::caused_by(Kind::PgUnavailable, "PostgreSQL: connection reset; retrying", io);
        assert_eq!(e.to_string(), "PostgreSQL: connection reset; retrying");
        assert_eq!(
            std::error::Error::source(&e).map(|s| s.to_string()).as_deref(),
            Some("connection reset")
        );
        assert_eq!(Error::no_responders("a.b").subject(), Some("a.b"));
    }
}
