//! The NATS connection: authentication, TLS, and connection events.
//!
//! Authentication, one of: `user` + `password` (or `passwordFile`), `token` (or `tokenFile`),
//! `nkeySeedFile` (an NKey seed, `SU…`), `credsFile` (a JWT + seed `.creds` file). TLS is used
//! when the address is `tls://…`, when `enableTLS` is true, or when `tlsCaFile` is set (that CA
//! then verifies the server); `tlsCertFile` + `tlsKeyFile` add a client certificate. Secrets
//! are handed to the client and never logged.
//!
//! The client reconnects by itself after a connection loss; its events are logged (one line
//! each) and reported to [`crate::health`], so `/ready` turns false while NATS is away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{ConnectOptions, Event};

use crate::config::Config;
use crate::health;

use super::PublishError;

/// Connect to the configured servers.
pub async fn client(config: &Config) -> Result<async_nats::Client, PublishError> {
    let p = &config.publisher;
    // async-nats builds its TLS config with the process-default provider; ring is the one
    // pgwire-replication installs too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = ConnectOptions::new()
        .name("wal-listener")
        .connection_timeout(Duration::from_secs(10))
        .max_reconnects(None);
    if let Some(path) = &p.creds_file {
        options = options
            .credentials_file(config.resolve(path))
            .await
            .map_err(|e| PublishError::Fatal(format!("publisher.credsFile {}: {e}", path.display())))?;
    }
    if let Some(path) = &p.nkey_seed_file {
        let seed = std::fs::read_to_string(config.resolve(path))
            .map_err(|e| PublishError::Fatal(format!("publisher.nkeySeedFile {}: {e}", path.display())))?;
        let seed = seed.trim();
        if !seed.starts_with('S') {
            return Err(PublishError::Fatal(format!(
                "publisher.nkeySeedFile {} does not hold an NKey seed (a line starting with 'S', e.g. SUA…)",
                path.display()
            )));
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
    // The first Connected event is the initial connection, logged below with the server's
    // version; later ones are reconnections.
    let reconnect = Arc::new(AtomicBool::new(false));
    options = options.event_callback(move |event| {
        let reconnect = Arc::clone(&reconnect);
        async move { on_event(nats, &reconnect, event) }
    });

    let addresses: Vec<async_nats::ServerAddr> = p
        .address
        .split(',')
        .map(|a| a.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| PublishError::Fatal(format!("publisher.address {:?}: {e}", display_address(&p.address))))?;
    let client = options.connect(addresses).await.map_err(|e| {
        let text = e.to_string();
        match e.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation | async_nats::ConnectErrorKind::Authentication => {
                PublishError::Fatal(format!(
                    "NATS refused the credentials: {text} (check publisher.user/password, token, nkeySeedFile or credsFile)"
                ))
            }
            async_nats::ConnectErrorKind::Tls => PublishError::Fatal(format!(
                "TLS to NATS failed: {text} (check publisher.tlsCaFile, tlsCertFile/tlsKeyFile and that the server has TLS on)"
            )),
            _ => PublishError::Transient(format!("cannot connect to NATS at {}: {text}", display_address(&p.address))),
        }
    })?;
    nats.connected(true);
    let info = client.server_info();
    tracing::info!(
        server = %info.server_name,
        version = %info.version,
        jetstream = info.jetstream,
        tls = info.tls_required,
        "connected to NATS"
    );
    Ok(client)
}

/// One line per connection event, and the connection state for `/ready`.
fn on_event(nats: health::NatsHandle, reconnect: &AtomicBool, event: Event) {
    match event {
        Event::Connected => {
            nats.connected(true);
            if reconnect.swap(true, Ordering::Relaxed) {
                tracing::info!("NATS connection re-established");
            }
        }
        Event::Disconnected => {
            nats.connected(false);
            reconnect.store(true, Ordering::Relaxed);
            tracing::warn!("NATS connection lost; reconnecting (publishing waits, nothing is confirmed meanwhile)");
        }
        Event::LameDuckMode => tracing::info!("NATS server entered lame duck mode; the client will move to another"),
        Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
        Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
        Event::Draining | Event::Closed | Event::SlowConsumer(_) => {}
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
