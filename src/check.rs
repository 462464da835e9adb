//! `wal-listener check --connect`: reach PostgreSQL and the broker (NATS or RabbitMQ) and report, line by line, what
//! the service will find there — each problem with the config key it concerns and the fix.
//!
//! Read-only: nothing is created (the service creates a missing publication, slot and stream
//! itself; the check says whether it will be able to). Lines start with `ok:`, `warning:` or
//! `error:`; the command exits 0 only without errors. Secrets are never printed.

use std::fmt::Display;

use async_nats::jetstream;

use crate::config::{Config, PublisherKind, Unroutable};
use crate::publish::rabbit::{self, ExchangeState};
use crate::publish::stream::{self, StreamProblem, StreamState};
use crate::publish::{self, subject_covers};
use crate::source::inspect::{self, SlotProblem};
use crate::source::sql::{self, quote_ident};
use crate::source::tls::effective_mode;

/// WAL held by the slot above which the check warns.
const LAG_WARNING_BYTES: i64 = 1 << 30;

/// Collects the report's lines and whether any was an error.
#[derive(Default)]
pub struct Report {
    lines: Vec<String>,
    errors: usize,
}

impl Report {
    fn ok(&mut self, text: impl Display) {
        self.lines.push(format!("ok: {text}"));
    }
    fn warn(&mut self, text: impl Display) {
        self.lines.push(format!("warning: {text}"));
    }
    fn error(&mut self, text: impl Display) {
        self.errors += 1;
        self.lines.push(format!("error: {text}"));
    }

    /// The report's lines, in order.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Whether nothing was an error.
    pub fn passed(&self) -> bool {
        self.errors == 0
    }
}

/// Check both ends.
pub async fn connections(config: &Config) -> Report {
    let mut report = Report::default();
    database(config, &mut report).await;
    publisher(config, &mut report).await;
    report
}

async fn database(config: &Config, r: &mut Report) {
    let servers = match config.database.servers() {
        Ok(servers) => servers,
        Err(e) => {
            r.error(e);
            return;
        }
    };
    if servers.len() == 1 {
        return server(config, r).await;
    }
    // Each server of the list: the primary is checked in full, a standby for what a failover
    // needs there.
    for (host, port) in servers {
        let mut pinned = config.clone();
        pinned.database.host = host;
        pinned.database.port = port;
        server(&pinned, r).await;
    }
}

async fn server(config: &Config, r: &mut Report) {
    let db = &config.database;
    let client = match sql::connect(config).await {
        Ok(client) => client,
        Err(e) => {
            r.error(format!(
                "database: cannot connect to {}:{} as {}: {e}",
                db.host, db.port, db.user
            ));
            return;
        }
    };
    let server = match inspect::server(&client).await {
        Ok(server) => server,
        Err(e) => {
            r.error(format!("database: {e}"));
            return;
        }
    };
    r.ok(format!(
        "database: PostgreSQL {} at {}:{}, database {}, user {}, TLS {} (database.sslMode {})",
        server.version,
        db.host,
        db.port,
        db.name,
        db.user,
        if server.tls { "on" } else { "off" },
        effective_mode(db).as_str()
    ));
    if server.logical() {
        r.ok("database: wal_level=logical");
    } else {
        r.error(format!(
            "database: wal_level={}; logical decoding needs wal_level=logical: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
            server.wal_level
        ));
    }
    if server.in_recovery {
        if config.listener.failover_slot {
            // A standby that is to take over: what it needs to keep a usable copy of the slot.
            r.ok(format!(
                "database: {}:{} is a standby in recovery; wal-listener streams from it once it is promoted",
                db.host, db.port
            ));
            standby_failover(config, &client, r).await;
        } else {
            r.error(format!(
                "database: {}:{} is a standby in recovery; connect database.host to the primary (or list the primary first, and set listener.failoverSlot for a failover)",
                db.host, db.port
            ));
        }
        return;
    }
    if server.replication || server.superuser {
        r.ok(format!("database: user {} may replicate (REPLICATION)", db.user));
    } else {
        r.error(format!(
            "database.user: {0} lacks the REPLICATION attribute: ALTER ROLE {0} WITH REPLICATION; (and allow it in pg_hba.conf)",
            quote_ident(&db.user)
        ));
    }

    slot(config, &client, r).await;
    if config.listener.failover_slot {
        primary_failover(config, &client, &server, r).await;
    }
    publication(config, &client, server.superuser, r).await;
}

/// On the primary: failover slots exist here, and logical replication waits for the standbys.
async fn primary_failover(config: &Config, client: &tokio_postgres::Client, server: &inspect::Server, r: &mut Report) {
    if server.version_num < 170_000 {
        r.error(format!(
            "listener.failoverSlot: PostgreSQL {} has no failover slots (PostgreSQL 17 or later): set listener.failoverSlot: false or upgrade",
            server.version
        ));
        return;
    }
    let name = &config.listener.slot_name;
    match inspect::slot(client, name).await {
        Ok(Some(slot)) if slot.failover == Some(true) => {
            r.ok(format!("listener.failoverSlot: slot {name} is a failover slot"))
        }
        Ok(Some(_)) => r.ok(format!(
            "listener.failoverSlot: slot {name} is not a failover slot yet; wal-listener switches it (ALTER_REPLICATION_SLOT {name} (FAILOVER true)) when it starts"
        )),
        Ok(None) => r.ok(format!(
            "listener.failoverSlot: wal-listener creates slot {name} as a failover slot"
        )),
        Err(e) => r.warn(format!("listener.failoverSlot: reading slot {name}: {e}")),
    }
    match inspect::failover_settings(client).await {
        Ok(s) if s.synchronized_standby_slots.as_deref().is_some_and(|v| !v.trim().is_empty()) => r.ok(format!(
            "listener.failoverSlot: synchronized_standby_slots = '{}' on the primary: changes reach wal-listener only after those standbys have them",
            s.synchronized_standby_slots.unwrap_or_default()
        )),
        Ok(_) => r.warn(
            "listener.failoverSlot: synchronized_standby_slots is empty on the primary: the slot may confirm changes the standby does not have yet, and after a failover the standby's copy of the slot can lie ahead of its WAL — those changes are lost, or the copy unusable. Set synchronized_standby_slots to the standbys' physical slot names (primary_slot_name on each)",
        ),
        Err(e) => r.warn(format!("listener.failoverSlot: reading the primary's settings: {e}")),
    }
}

/// On a standby: what keeps a synchronised, usable copy of the failover slot.
async fn standby_failover(config: &Config, client: &tokio_postgres::Client, r: &mut Report) {
    let at = format!("{}:{}", config.database.host, config.database.port);
    let s = match inspect::failover_settings(client).await {
        Ok(s) => s,
        Err(e) => {
            r.warn(format!(
                "listener.failoverSlot: reading the settings of standby {at}: {e}"
            ));
            return;
        }
    };
    if s.sync_replication_slots.is_none() {
        r.error(format!(
            "listener.failoverSlot: standby {at} has no slot synchronisation (PostgreSQL 17 or later): the slot is missing after a failover to it"
        ));
        return;
    }
    let mut missing = Vec::new();
    if s.sync_replication_slots.as_deref() != Some("on") {
        missing.push("sync_replication_slots = on".to_string());
    }
    if s.hot_standby_feedback.as_deref() != Some("on") {
        missing.push("hot_standby_feedback = on".to_string());
    }
    if s.primary_slot_name.as_deref().is_none_or(|v| v.trim().is_empty()) {
        missing.push(
            "primary_slot_name (a physical slot on the primary, listed in its synchronized_standby_slots)".to_string(),
        );
    }
    if !s.primary_conninfo.as_deref().is_some_and(|c| c.contains("dbname=")) {
        missing.push("a dbname in primary_conninfo".to_string());
    }
    if missing.is_empty() {
        r.ok(format!(
            "listener.failoverSlot: standby {at} synchronises failover slots (sync_replication_slots, hot_standby_feedback, primary_slot_name, dbname in primary_conninfo)"
        ));
    } else {
        r.error(format!(
            "listener.failoverSlot: standby {at} does not keep a usable copy of the slot; set {} there",
            missing.join(", ")
        ));
    }
    let name = &config.listener.slot_name;
    match inspect::slot(client, name).await {
        Ok(Some(slot)) if slot.synced == Some(true) => r.ok(format!(
            "listener.failoverSlot: standby {at} has a synchronised copy of slot {name} (confirmed {})",
            slot.confirmed_flush.map_or_else(|| "-".into(), |lsn| lsn.to_string())
        )),
        Ok(_) => r.warn(format!(
            "listener.failoverSlot: standby {at} has no synchronised copy of slot {name} yet (it appears once the primary's slot is a failover slot and the standby caught up)"
        )),
        Err(e) => r.warn(format!("listener.failoverSlot: reading slot {name} on standby {at}: {e}")),
    }
}

async fn slot(config: &Config, client: &tokio_postgres::Client, r: &mut Report) {
    let name = &config.listener.slot_name;
    let limits = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int8, (SELECT count(*) FROM pg_replication_slots),
                    current_setting('max_wal_senders')::int8, (SELECT count(*) FROM pg_stat_replication)",
            &[],
        )
        .await;
    let slot = inspect::slot(client, name).await;
    let exists = matches!(slot, Ok(Some(_)));
    match limits {
        Ok(l) => {
            let (max_slots, used_slots, max_senders, used_senders): (i64, i64, i64, i64) =
                (l.get(0), l.get(1), l.get(2), l.get(3));
            if !exists && used_slots >= max_slots {
                r.error(format!(
                    "database: all {max_slots} replication slots are in use (max_replication_slots); raise it and restart PostgreSQL, or drop an unused slot"
                ));
            } else {
                r.ok(format!(
                    "database: max_replication_slots={max_slots} ({used_slots} in use)"
                ));
            }
            if used_senders >= max_senders {
                r.error(format!(
                    "database: all {max_senders} WAL senders are busy (max_wal_senders); raise it and restart PostgreSQL"
                ));
            }
        }
        Err(e) => r.warn(format!("database: cannot read replication limits: {e}")),
    }
    let slot = match slot {
        Ok(Some(slot)) => slot,
        Ok(None) => {
            r.ok(format!(
                "listener.slotName: slot {name} does not exist yet; wal-listener creates it (pgoutput) and streams from then on"
            ));
            return;
        }
        Err(e) => {
            r.error(format!("listener.slotName: reading slot {name}: {e}"));
            return;
        }
    };
    if let Some(problem) = slot.problem(config) {
        r.error(format!("listener.slotName: {}", problem.describe(name, config)));
        if !matches!(problem, SlotProblem::Invalidated(_)) {
            return;
        }
    }
    let retained = slot.retained_bytes.map(human_bytes).unwrap_or_else(|| "unknown".into());
    let holder = match (slot.active, slot.active_pid) {
        (true, Some(pid)) => {
            format!("in use by PID {pid} (another wal-listener streams; this one would wait as standby)")
        }
        (true, None) => "in use".into(),
        (false, _) => "idle".into(),
    };
    r.ok(format!(
        "listener.slotName: slot {name} (pgoutput) {holder}, confirmed {}, holding {retained} of WAL",
        slot.confirmed_flush.map_or_else(|| "-".into(), |lsn| lsn.to_string())
    ));
    if let Some(safe) = slot.safe_wal_size {
        let text = format!(
            "listener.slotName: slot {name} may fall {} further behind before max_slot_wal_keep_size invalidates it (safe_wal_size; wal_status {})",
            human_bytes(safe),
            slot.wal_status.as_deref().unwrap_or("-")
        );
        if safe < LAG_WARNING_BYTES {
            r.warn(text);
        } else {
            r.ok(text);
        }
    }
    if let Some(bytes) = slot.retained_bytes.filter(|b| *b > LAG_WARNING_BYTES) {
        r.warn(format!(
            "listener.slotName: slot {name} holds {} of WAL; PostgreSQL keeps it until wal-listener confirms it (is it running? alert on wal_listener_replication_lag_bytes)",
            human_bytes(bytes)
        ));
    }
}

async fn publication(config: &Config, client: &tokio_postgres::Client, superuser: bool, r: &mut Report) {
    let name = &config.listener.publication;
    let publication = match inspect::publication(client, name).await {
        Ok(Some(publication)) => publication,
        Ok(None) if superuser => {
            r.ok(format!(
                "listener.publication: {name} does not exist; wal-listener creates it FOR ALL TABLES"
            ));
            return;
        }
        Ok(None) => {
            r.error(format!(
                "listener.publication: {name} does not exist and {} cannot create it FOR ALL TABLES (that needs a superuser): as a superuser run CREATE PUBLICATION {} FOR ALL TABLES; (or FOR TABLE …)",
                config.database.user,
                quote_ident(name)
            ));
            return;
        }
        Err(e) => {
            r.error(format!("listener.publication: reading {name}: {e}"));
            return;
        }
    };
    let scope = if publication.all_tables {
        "FOR ALL TABLES".to_string()
    } else {
        format!("{} table(s)", publication.tables)
    };
    r.ok(format!("listener.publication: {name} exists, {scope}"));
    if publication.tables == 0 {
        r.warn(format!(
            "listener.publication: {name} contains no tables: no change will be published (ALTER PUBLICATION {} ADD TABLE …)",
            quote_ident(name)
        ));
    }
    if !publication.unpublished.is_empty() {
        r.warn(format!(
            "listener.publication: {name} does not publish {}: those changes never reach wal-listener",
            publication.unpublished.join(", ")
        ));
    }
    let no_identity = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)
             FROM pg_publication_tables t
             JOIN pg_namespace n ON n.nspname = t.schemaname
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
             WHERE t.pubname = $1 AND c.relreplident = 'd'
               AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
             ORDER BY 1 LIMIT 5",
            &[name],
        )
        .await;
    if let Ok(rows) = no_identity
        && !rows.is_empty()
    {
        let names: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        r.warn(format!(
            "listener.publication: tables without a primary key or replica identity ({}): PostgreSQL rejects their UPDATEs and DELETEs while they are published; add a primary key or ALTER TABLE … REPLICA IDENTITY FULL",
            names.join(", ")
        ));
    }
    backfill(config, client, r).await;
}

/// Whether the tables a snapshot would read (the filter's, or every published one) can be
/// backfilled: each needs a key to page by.
async fn backfill(config: &Config, client: &tokio_postgres::Client, r: &mut Report) {
    let tables = match crate::backfill::table::selected(config, client).await {
        Ok(tables) => tables,
        Err(e) => {
            r.warn(format!("backfill: cannot list the published tables: {e}"));
            return;
        }
    };
    let mut refused = Vec::new();
    for table in tables.iter().take(500) {
        if let Err(reason) = crate::backfill::table::plan(client, &config.listener.publication, table).await {
            refused.push(reason);
        }
    }
    let snapshot = match config.listener.snapshot {
        crate::config::Snapshot::Initial => "listener.snapshot: initial reads them when the slot is created",
        crate::config::Snapshot::Never => "wal-listener backfill --table … reads them on request",
    };
    r.ok(format!(
        "backfill: {} of {} selected table(s) can be backfilled ({snapshot})",
        tables.len().min(500) - refused.len(),
        tables.len()
    ));
    for reason in refused.iter().take(10) {
        r.warn(format!("backfill: {reason}"));
    }
}

async fn publisher(config: &Config, r: &mut Report) {
    let p = &config.publisher;
    let shown = publish::display_address(&p.address);
    if p.kind == PublisherKind::Stdout {
        r.ok("publisher: type stdout, nothing to reach");
        return;
    }
    if p.kind == PublisherKind::Rabbitmq {
        rabbitmq(config, r).await;
        return;
    }
    let client = match publish::client(config).await.map(|(client, _lost)| client) {
        Ok(client) => client,
        Err(e) => {
            r.error(format!("publisher: {e}"));
            return;
        }
    };
    let info = client.server_info();
    r.ok(format!(
        "publisher: NATS {} reachable at {shown} (server {}, TLS {}, JetStream {})",
        info.version,
        info.server_name,
        if info.tls_required { "on" } else { "off" },
        if info.jetstream { "on" } else { "off" },
    ));
    if p.kind == PublisherKind::NatsCore {
        return;
    }
    if !info.jetstream {
        r.error("publisher: JetStream is not enabled on the server: start nats-server with -js (or jetstream {} in its config), or use publisher.type: nats-core");
        return;
    }
    let js = jetstream::new(client);
    let name = &p.topic;
    let wanted = format!("{name}.>");
    match stream::inspect(&js, name).await {
        Ok(StreamState::Found(info)) => {
            let c = &info.config;
            match stream::problem(name, c) {
                Some(StreamProblem::Subjects(subjects)) => r.error(format!(
                    "publisher.topic: stream {name} captures {subjects:?}, not {wanted}: events would not be stored; nats stream edit {name} --subjects '{wanted}', or choose another publisher.topic"
                )),
                Some(StreamProblem::NoAck) => r.error(format!(
                    "publisher.topic: stream {name} has no_ack set: wal-listener needs acknowledgements to confirm changes; recreate it without --no-ack"
                )),
                None => r.ok(format!(
                    "publisher.topic: stream {name} captures {wanted} ({:?} storage, duplicate window {:?}, {} messages)",
                    c.storage, c.duplicate_window, info.state.messages
                )),
            }
            r.ok(format!("publisher.topic: stream {name} {}", placement(&info)));
            if c.num_replicas == 1 && info.cluster.as_ref().is_some_and(|cl| cl.name.is_some()) {
                r.warn(format!(
                    "publisher.replicas: stream {name} has a single replica in a JetStream cluster: while its server is down nothing can be published; use 3 replicas (nats stream edit {name} --replicas 3, or publisher.replicas: 3 for a stream wal-listener creates)"
                ));
            }
            if c.num_replicas < p.replicas {
                r.warn(format!(
                    "publisher.replicas: stream {name} exists with {} replica(s), fewer than publisher.replicas {}: wal-listener does not change an existing stream (nats stream edit {name} --replicas {})",
                    c.num_replicas, p.replicas, p.replicas
                ));
            }
            if stream::window_too_short(c.duplicate_window) {
                r.warn(format!(
                    "publisher.topic: stream {name} has a duplicate window of {:?}, shorter than the {:?} in which wal-listener may replay a message after a failure: replays may store duplicates (2m or more recommended)",
                    c.duplicate_window,
                    crate::publish::RETRY_HORIZON
                ));
            }
        }
        Ok(StreamState::Missing) => {
            r.ok(format!(
                "publisher.topic: stream {name} does not exist; wal-listener creates it (subjects {wanted}, file storage, duplicate window {:?}, {} replica(s), publisher.replicas)",
                p.duplicate_window, p.replicas
            ));
            if stream::window_too_short(p.duplicate_window) {
                r.warn(format!(
                    "publisher.duplicateWindow {:?} is shorter than the {:?} in which wal-listener may replay a message after a failure: replays may store duplicates (2m or more recommended)",
                    p.duplicate_window,
                    crate::publish::RETRY_HORIZON
                ));
            }
        }
        Err(e) => r.error(format!("publisher.topic: {e}")),
    }
    let dead_letter = config.dead_letter_subject();
    if !subject_covers(&wanted, &dead_letter) {
        use jetstream::context::GetStreamByNameErrorKind as K;
        match js.stream_by_subject(dead_letter.clone()).await {
            Ok(stream) => r.ok(format!("scripts.deadLetterSubject: {dead_letter} is captured by stream {stream}")),
            Err(e) if matches!(e.kind(), K::NotFound | K::InvalidSubject) => r.error(format!(
                "scripts.deadLetterSubject: no stream captures {dead_letter}: failed events would be lost; add it to a stream's subjects or use a subject under {wanted}"
            )),
            Err(e) => r.error(format!(
                "scripts.deadLetterSubject: asking JetStream which stream captures {dead_letter}: {}",
                jetstream_failure(&e)
            )),
        }
    }
}

/// Where the stream lives: replicas, cluster, leader and each replica's state.
fn placement(info: &jetstream::stream::Info) -> String {
    let c = &info.config;
    let mut text = format!("has {} replica(s)", c.num_replicas);
    if let Some(placement) = &c.placement {
        if let Some(cluster) = &placement.cluster {
            text.push_str(&format!(", placed in cluster {cluster}"));
        }
        if !placement.tags.is_empty() {
            text.push_str(&format!(", placement tags {:?}", placement.tags));
        }
    }
    if let Some(cluster) = &info.cluster {
        if let Some(name) = &cluster.name {
            text.push_str(&format!(", cluster {name}"));
        }
        text.push_str(&format!(
            ", leader {}",
            cluster.leader.as_deref().unwrap_or("none (electing)")
        ));
        for peer in &cluster.replicas {
            let state = if peer.offline {
                "offline"
            } else if peer.current {
                "current"
            } else {
                "catching up"
            };
            text.push_str(&format!(", replica {} {state}", peer.name));
        }
    }
    text
}

/// RabbitMQ: the connection (address, credentials, virtual host) and the exchange's kind.
async fn rabbitmq(config: &Config, r: &mut Report) {
    let p = &config.publisher;
    let shown = publish::display_address(&p.address);
    let connection = match rabbit::connect(config).await {
        Ok(connection) => connection,
        Err(e) => {
            r.error(format!("publisher.address: {e}"));
            return;
        }
    };
    r.ok(format!(
        "publisher: RabbitMQ reachable at {shown}, virtual host {:?}, user {}",
        connection.status().vhost().as_str(),
        connection.status().username()
    ));
    let name = &p.topic;
    let kind = rabbit::exchange_kind(config).as_str();
    match rabbit::inspect_exchange(&connection, name, rabbit::exchange_kind(config)).await {
        Ok(ExchangeState::Missing) => r.ok(format!(
            "publisher.topic: exchange {name} does not exist; wal-listener declares it ({kind}, durable)"
        )),
        Ok(ExchangeState::Matches { durable: true }) => {
            r.ok(format!("publisher.topic: exchange {name} exists, {kind} (publisher.exchangeKind), durable"))
        }
        Ok(ExchangeState::Matches { durable: false }) => r.warn(format!(
            "publisher.topic: exchange {name} is {kind} but not durable: RabbitMQ forgets it and its bindings on restart, and messages published then are unroutable; declare it durable"
        )),
        Err(e) => r.error(format!("publisher.exchangeKind: {e}")),
    }
    r.ok(match p.unroutable {
        Unroutable::Fail => format!(
            "publisher.unroutable: fail — a message that exchange {name} routes to no queue stops the service with that change unconfirmed: bind queues for every subject you publish (or set publisher.unroutable: drop)"
        ),
        Unroutable::Drop => format!(
            "publisher.unroutable: drop — messages that exchange {name} routes to no queue are counted (wal_listener_unroutable_dropped_total) and dropped"
        ),
    });
    let _ = connection.close(200, "check done".into()).await;
}

/// A failed JetStream request in words: "no responders" means JetStream did not answer, which
/// async-nats words as "requested JetStream resource does not exist".
fn jetstream_failure(e: &(dyn std::error::Error + 'static)) -> String {
    if publish::jetstream_unavailable(e) {
        "JetStream does not answer (no responders): the server is stopping or starting, a cluster is electing a leader, or JetStream is not enabled (nats-server -js); the service retries until it answers".into()
    } else {
        e.to_string()
    }
}

fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_like_an_operator_writes_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
