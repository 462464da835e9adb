//! The NATS connection: authentication, TLS, and connection events.
//!
//! Authentication, one of: `user` + `password` (or `passwordFile`), `token` (or `tokenFile`),
//! `nkeySeedFile` (an NKey seed, `SU…`), `credsFile` (a JWT + seed `.creds` file). TLS is used
//! when the address is `tls://…`, when `enableTLS` is true, or when `tlsCaFile` is set (that CA
//! then verifies the server); `tlsCertFile` + `tlsKeyFile` add a client certificate. Secrets
//! are handed to the client and never logged.
//!
//! A connection never reconnects by itself (see [`client`]); its loss is logged once and
//! reported to [`crate::health`], so `/ready` turns false while NATS is away.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event};

use crate::config::Config;
use crate::health;

use crate::error::{Error, Kind, Result};

/// Becomes `true` when the connection drops.
pub type Lost = tokio::sync::watch::Receiver<bool>;

/// Connect to the first configured server that answers.
///
/// The connection never reconnects by itself: if it drops, messages the client still buffers
/// must not reach a server after one that was lost with the old connection, or the stream's
/// order would break (a fault test found exactly that). The session ends instead (see
/// [`Lost`]) and replays from the last confirmed LSN; JetStream drops what it already has.
pub async fn client(config: &Config) -> Result<(async_nats::Client, Lost)> {
    let p = &config.publisher;
    // async-nats builds its TLS config with the process-default provider; ring is the one
    // pgwire-replication installs too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addresses: Vec<async_nats::ServerAddr> = p
        .address
        .split(',')
        .map(|a| a.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Error::new(
                Kind::NatsConfig,
                format!("publisher.address {:?}: {e}", display_address(&p.address)),
            )
        })?;
    let (lost_tx, lost) = tokio::sync::watch::channel(false);
    let lost_tx = Arc::new(lost_tx);
    let mut last_error = None;
    for address in addresses {
        let options = options(config, lost_tx.clone()).await?;
        match options.connect(address).await {
            Ok(client) => {
                health::nats_client().connected(true);
                let info = client.server_info();
                tracing::info!(
                    server = %info.server_name,
                    version = %info.version,
                    jetstream = info.jetstream,
                    tls = info.tls_required,
                    "connected to NATS"
                );
                return Ok((client, lost));
            }
            Err(e) => {
                let text = e.to_string();
                match e.kind() {
                    async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication => {
                        return Err(Error::caused_by(
                            Kind::NatsRefused,
                            format!(
                                "NATS refused the credentials: {text} (check publisher.user/password, token, nkeySeedFile or credsFile)"
                            ),
                            e,
                        ));
                    }
                    async_nats::ConnectErrorKind::Tls => {
                        return Err(Error::caused_by(
                            Kind::NatsTls,
                            format!(
                                "TLS to NATS failed: {text} (check publisher.tlsCaFile, tlsCertFile/tlsKeyFile and that the server has TLS on)"
                            ),
                            e,
                        ));
                    }
                    async_nats::ConnectErrorKind::Dns => {
                        last_error = Some(format!("cannot resolve the host name: {text}"));
                    }
                    _ => last_error = Some(text),
                }
            }
        }
    }
    Err(Error::new(
        Kind::NatsUnavailable,
        format!(
            "cannot connect to NATS at {}: {} (is nats-server running there? check publisher.address); retrying",
            display_address(&p.address),
            last_error.unwrap_or_default()
        ),
    ))
}

/// Options for one connection attempt: authentication, TLS, no reconnects, and the events.
async fn options(config: &Config, lost: Arc<tokio::sync::watch::Sender<bool>>) -> Result<ConnectOptions> {
    let p = &config.publisher;
    let mut options = ConnectOptions::new()
        .name("wal-listener")
        .connection_timeout(Duration::from_secs(10))
        // 1 = the initial connection only (0 would mean "unlimited").
        .max_reconnects(1);
    if let Some(path) = &p.creds_file {
        options = options
            .credentials_file(config.resolve(path))
            .await
            .map_err(|e| Error::new(Kind::NatsConfig, format!("publisher.credsFile {}: {e}", path.display())))?;
    }
    if let Some(path) = &p.nkey_seed_file {
        let seed = std::fs::read_to_string(config.resolve(path)).map_err(|e| {
            Error::new(
                Kind::NatsConfig,
                format!("publisher.nkeySeedFile {}: {e}", path.display()),
            )
        })?;
        let seed = seed.trim();
        if !seed.starts_with('S') {
            return Err(Error::new(
                Kind::NatsConfig,
                format!(
                    "publisher.nkeySeedFile {} does not hold an NKey seed (a line starting with 'S', e.g. SUA…)",
                    path.display()
                ),
            ));
        }
        options = options.nkey(seed.to_string());
    }
    if let (Some(user), Some(password)) = (&p.user, &p.password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(token) = &p.token {
        options = options.token(token.expose().to_string());
    }
    if p.enable_tls || p.tls_ca_file.is_some() {
        options = options.require_tls(true);
    }
    if let Some(ca) = &p.tls_ca_file {
        options = options.add_root_certificates(config.resolve(ca));
    }
    if let (Some(cert), Some(key)) = (&p.tls_cert_file, &p.tls_key_file) {
        options = options.add_client_certificate(config.resolve(cert), config.resolve(key));
    }
    let nats = health::nats_client();
    Ok(options.event_callback(move |event| {
        let lost = lost.clone();
        async move { on_event(nats, &lost, event) }
    }))
}

/// One line per connection event, and the connection state for `/ready`.
fn on_event(nats: health::NatsHandle, lost: &tokio::sync::watch::Sender<bool>, event: Event) {
    match event {
        Event::Disconnected => {
            nats.connected(false);
            if !lost.send_replace(true) {
                tracing::warn!("NATS connection lost; reconnecting and replaying from the last confirmed position");
            }
        }
        // Our own close (a session ending): nothing to report.
        Event::Closed => {
            lost.send_replace(true);
        }
        Event::LameDuckMode => tracing::info!("NATS server entered lame duck mode"),
        Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
        Event::ClientError(e) => tracing::debug!(error = %e, "NATS client error"),
        Event::Connected | Event::Draining | Event::SlowConsumer(_) => {}
    }
}

/// `publisher.address` fit for logs and `check`: credentials in URLs (`nats://user:pass@host`)
/// are replaced with `***`.
pub fn display_address(address: &str) -> String {
    address
        .split(',')
        .map(|url| {
            let url = url.trim();
            let scheme_end = url.find("://").map_or(0, |i| i + 3);
            match url[scheme_end..].rfind('@') {
                Some(at) => format!("{}***@{}", &url[..scheme_end], &url[scheme_end + at + 1..]),
                None => url.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::display_address;

    #[test]
    fn credentials_in_urls_are_hidden() {
        assert_eq!(display_address("nats://localhost:4222"), "nats://localhost:4222");
        assert_eq!(
            display_address("nats://u:s3cret@a:4222, tls://tok@b:4222"),
            "nats://***@a:4222,tls://***@b:4222"
        );
        assert_eq!(display_address("u:p@host:4222"), "***@host:4222");
    }
}
