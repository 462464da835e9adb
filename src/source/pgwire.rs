//! [`Replication`] over the `pgwire-replication` crate.
//!
//! Its quirks, measured on pgwire-replication 0.5.0: publication names are not identifier-quoted, so we quote
//! them (mixed-case names work); the slot name is interpolated unquoted, so config validation
//! allows only `[a-z0-9_]`; it does not reconnect, which the app's session loop does.

use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};

use crate::config::{self, Config, SslMode};
use crate::decode::{self, Begin, Commit, LogicalMessage, Message};
use crate::lsn::Lsn;

use super::{Frame, Replication, SESSION_OPTIONS};
use crate::error::{Error, Kind, Result};

/// A started logical replication stream.
pub struct PgwireReplication {
    client: ReplicationClient,
    /// The configured slot and publication, named when the server says one is missing.
    names: Names,
}

/// The slot and publication a stream reads.
struct Names {
    slot: String,
    publication: String,
}

impl Names {
    fn of(config: &Config) -> Names {
        Names {
            slot: config.listener.slot_name.clone(),
            publication: config.listener.publication.clone(),
        }
    }
}

impl PgwireReplication {
    /// Connect, authenticate and `START_REPLICATION` from `start` (the slot's confirmed LSN).
    /// Returns once the server accepted the start, so the slot is held by this session.
    /// `make_failover`: first switch the slot to a failover slot on the same session
    /// (`ALTER_REPLICATION_SLOT`, a replication command).
    pub async fn start(config: &Config, start: Lsn, make_failover: bool) -> Result<Self> {
        let db = &config.database;
        let names = Names::of(config);
        let password = db.password.as_ref().map(config::Secret::expose).unwrap_or_default();
        // The crate interpolates the name unquoted: quote it, so any name works.
        let publication = super::sql::quote_ident(&config.listener.publication);
        let mut cfg = ReplicationConfig::new(
            db.host.clone(),
            db.user.clone(),
            password,
            db.name.clone(),
            config.listener.slot_name.clone(),
            publication,
        )
        .with_port(db.port)
        .with_start_lsn(pgwire_replication::Lsn(start.0))
        // Progress is reported within a second of being acknowledged; an idle stream still
        // sends a status update every heartbeatInterval.
        .with_status_interval(config.listener.heartbeat_interval.min(Duration::from_secs(1)))
        .with_wakeup_interval(config.listener.heartbeat_interval)
        // Without an observer the client does not track which confirmations are still unsent,
        // and shutdown could not wait for the last one.
        .with_feedback_observer(pgwire_replication::FeedbackObserver::new(|_| {}))
        .with_buffer_size(4096)
        .with_options(SESSION_OPTIONS)
        .with_application_name("wal-listener");
        if !cfg.is_unix_socket() {
            cfg = cfg.with_tls(tls_config(config)?);
        }
        let mut client = if make_failover {
            let mut client = ReplicationClient::connect_gated(cfg)
                .await
                .map_err(|e| classify(e, &names))?;
            let slot = &config.listener.slot_name;
            client
                .simple_query(&format!("ALTER_REPLICATION_SLOT {slot} ( FAILOVER true )"))
                .await
                .map_err(|e| {
                    Error::new(
                        Kind::PgSetup,
                        format!(
                            "listener.failoverSlot: switching slot {slot} to a failover slot failed: {e} (run ALTER_REPLICATION_SLOT {slot} ( FAILOVER true ) on a replication connection yourself, or set listener.failoverSlot: false)"
                        ),
                    )
                })?;
            tracing::info!(slot = %slot, "switched the replication slot to a failover slot");
            client.start().await.map_err(|e| classify(e, &names))?;
            client
        } else {
            ReplicationClient::connect(cfg).await.map_err(|e| classify(e, &names))?
        };
        match tokio::time::timeout(Duration::from_secs(60), client.wait_started()).await {
            Ok(Ok(())) => Ok(PgwireReplication { client, names }),
            Ok(Err(e)) => Err(classify(e, &names)),
            Err(_) => Err(Error::new(
                Kind::PgUnavailable,
                "START_REPLICATION was not answered within 60s; retrying",
            )),
        }
    }
}

/// The same policy as the SQL connection's ([`super::tls`]): libpq's sslmode semantics,
/// `require` with a root certificate verifies like `verify-ca`.
fn tls_config(config: &Config) -> Result<TlsConfig> {
    let db = &config.database;
    let root = db.ssl_root_cert.as_deref().map(|p| config.resolve(p));
    let mut tls = match super::tls::effective_mode(db) {
        SslMode::Disable => return Ok(TlsConfig::disabled()),
        SslMode::Prefer => TlsConfig {
            mode: pgwire_replication::config::SslMode::Prefer,
            ..TlsConfig::disabled()
        },
        SslMode::Require => TlsConfig::require(),
        SslMode::VerifyCa => TlsConfig::verify_ca(root),
        SslMode::VerifyFull => TlsConfig::verify_full(root),
    };
    if let (Some(cert), Some(key)) = (&db.ssl_cert, &db.ssl_key) {
        tls = tls.with_client_cert(config.resolve(cert), config.resolve(key));
    }
    Ok(tls)
}

/// Name what the crate's error means; [`crate::error`] decides what to do about it. A missing
/// slot or publication is this stream's (`names`) — dropped between the setup's look and
/// `START_REPLICATION`, or while streaming (PostgreSQL 15–17 end the stream when the
/// publication goes) — and gets the same message as when the setup or the slot watch finds it
/// missing (`inspect::slot_lost`, `inspect::publication_lost`).
fn classify(e: pgwire_replication::PgWireError, names: &Names) -> Error {
    use pgwire_replication::PgWireError as E;
    let text = e.to_string();
    let (kind, message) = match e {
        E::Auth(_) => (
            Kind::PgRefused,
            format!(
                "PostgreSQL refused the replication login: {text} (check database.user/database.password and pg_hba.conf: the user needs the REPLICATION attribute and a 'replication' line)"
            ),
        ),
        E::Tls(_) => (
            Kind::PgTls,
            format!("TLS to PostgreSQL failed: {text} (check database.sslMode and database.sslRootCert)"),
        ),
        E::Server(ref msg) if msg.contains("55006") || msg.contains("is active for PID") => (Kind::SlotBusy, text),
        E::Server(ref msg) if is_fatal_server_error(msg) => match missing(msg) {
            Some(Missing::Slot) => return super::inspect::slot_lost(&names.slot).with_source(e),
            Some(Missing::Publication) => return super::inspect::publication_lost(&names.publication).with_source(e),
            None => (Kind::PgRefused, format!("PostgreSQL refused replication: {text}")),
        },
        E::MessageTooLarge { .. } => (
            Kind::Protocol,
            format!("replication connection: {text}; please report this with the PostgreSQL version"),
        ),
        _ => (Kind::PgUnavailable, format!("replication connection: {text}; retrying")),
    };
    Error::caused_by(kind, message, e)
}

/// What a server error says is missing.
enum Missing {
    Slot,
    Publication,
}

fn missing(msg: &str) -> Option<Missing> {
    let lower = msg.to_ascii_lowercase();
    if !lower.contains("does not exist") {
        None
    } else if lower.contains("publication") {
        Some(Missing::Publication)
    } else if lower.contains("replication slot") {
        Some(Missing::Slot)
    } else {
        None
    }
}

/// Server errors no retry can fix: a missing slot or publication (dropped by someone while we
/// ran), a wrong plugin, a missing privilege.
fn is_fatal_server_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    missing(msg).is_some()
        || m.contains("permission denied")
        || m.contains("must be superuser or replication role")
        || m.contains("42704")
}

impl Replication for PgwireReplication {
    async fn recv(&mut self) -> Result<Option<Frame>> {
        let event = match self.client.recv().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(None),
            Err(e) => return Err(classify(e, &self.names)),
        };
        Ok(Some(match event {
            ReplicationEvent::XLogData { data, wal_end, .. } => Frame::Data {
                bytes: data,
                wal_end: Lsn(wal_end.0),
            },
            ReplicationEvent::KeepAlive { wal_end, .. } => Frame::KeepAlive(Lsn(wal_end.0)),
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => Frame::Decoded(Message::Begin(Begin {
                final_lsn: final_lsn.0,
                commit_time: commit_time_micros,
                xid,
            })),
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => Frame::Decoded(Message::Commit(Commit {
                flags: 0,
                commit_lsn: lsn.0,
                end_lsn: end_lsn.0,
                commit_time: commit_time_micros,
            })),
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => Frame::Decoded(decode::Message::Message(LogicalMessage {
                transactional,
                lsn: lsn.0,
                prefix,
                content,
            })),
            ReplicationEvent::StoppedAt { .. } => return Ok(None),
        }))
    }

    fn confirm(&self, lsn: Lsn) {
        self.client.update_applied_lsn(pgwire_replication::Lsn(lsn.0));
    }

    async fn flush_confirmation(&self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        while self.client.feedback_pending_since().is_some() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PgwireReplication {
    fn drop(&mut self) {
        self.client.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire_replication::PgWireError;

    fn names() -> Names {
        let yaml = "listener:\n  slotName: orders_slot\n  publication: orders_pub\n";
        let config = Config::from_yaml(yaml, &[], std::path::PathBuf::new())
            .expect("config")
            .0;
        Names::of(&config)
    }

    /// A slot or publication the server says is missing (at START_REPLICATION, or mid-stream)
    /// gets the message the setup and the slot watch give, naming what to do; other refusals
    /// keep theirs.
    #[test]
    fn a_missing_slot_or_publication_is_named_as_elsewhere() {
        let config = names();
        let missing = [
            (
                r#"replication slot "orders_slot" does not exist (SQLSTATE 42704)"#,
                super::super::inspect::slot_lost("orders_slot"),
            ),
            (
                r#"publication "orders_pub" does not exist (SQLSTATE 42704)"#,
                super::super::inspect::publication_lost("orders_pub"),
            ),
        ];
        for (server, expected) in missing {
            let got = classify(PgWireError::Server(server.into()), &config);
            assert_eq!(got.kind(), Kind::SlotLost, "{server}");
            assert_eq!(got.to_string(), expected.to_string());
            assert!(
                got.to_string().contains("disappeared while wal-listener was running"),
                "{got}"
            );
        }
        let refused = classify(
            PgWireError::Server("permission denied to start WAL sender (SQLSTATE 42501)".into()),
            &config,
        );
        assert_eq!(refused.kind(), Kind::PgRefused);
        assert!(
            refused.to_string().starts_with("PostgreSQL refused replication"),
            "{refused}"
        );
    }
}
