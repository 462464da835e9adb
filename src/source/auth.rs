//! Which password method a server asks for, to name it when no password is configured.
//!
//! tokio-postgres fails a connection that needs a password it was not given with a bare
//! "invalid configuration" ("password missing" in its source), the same for every method. To
//! tell the operator that the server asked for SCRAM-SHA-256, md5 or a plain password, we open
//! one more connection — TLS negotiated by the same `database.sslMode` policy — send a
//! StartupMessage, read the server's authentication request, and hang up. No secret is sent;
//! anything unexpected means "not known".
//!
//! Protocol: <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{Config, SslMode};

use super::tls;

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// Protocol version 3.0.
const PROTOCOL_3_0: i32 = 196_608;
/// `AuthenticationRequest` codes that ask for a password.
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
/// The longest authentication request we read (a SASL mechanism list is a few dozen bytes).
const MAX_REQUEST: usize = 1024;

/// The password method the server asks `database.user` for (`"SCRAM-SHA-256"`, `"md5"`,
/// `"password"`), or `None` when that cannot be found out within a few seconds.
pub(crate) async fn password_method(config: &Config) -> Option<&'static str> {
    tokio::time::timeout(Duration::from_secs(5), probe(config))
        .await
        .ok()
        .flatten()
}

async fn probe(config: &Config) -> Option<&'static str> {
    let db = &config.database;
    if db.host.starts_with('/') {
        let path = format!("{}/.s.PGSQL.{}", db.host.trim_end_matches('/'), db.port);
        let mut stream = tokio::net::UnixStream::connect(path).await.ok()?;
        return ask(&mut stream, config).await;
    }
    let mut stream = tokio::net::TcpStream::connect((db.host.as_str(), db.port)).await.ok()?;
    let mode = tls::effective_mode(db);
    let connector = tls::connector(config).ok()?;
    let Some(connector) = connector.filter(|_| mode != SslMode::Disable) else {
        return ask(&mut stream, config).await;
    };
    stream.write_all(&SSL_REQUEST).await.ok()?;
    match stream.read_u8().await.ok()? {
        b'S' => {
            let name = rustls::pki_types::ServerName::try_from(db.host.clone()).ok()?;
            let mut tls = tokio_rustls::TlsConnector::from(connector.client_config())
                .connect(name, stream)
                .await
                .ok()?;
            ask(&mut tls, config).await
        }
        b'N' if mode == SslMode::Prefer => ask(&mut stream, config).await,
        _ => None,
    }
}

/// Send the StartupMessage and read what the server asks for.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, config: &Config) -> Option<&'static str> {
    stream
        .write_all(&startup_message(&config.database.user, &config.database.name))
        .await
        .ok()?;
    stream.flush().await.ok()?;
    let tag = stream.read_u8().await.ok()?;
    let len = usize::try_from(stream.read_i32().await.ok()?).ok()?;
    if tag != b'R' || !(8..=MAX_REQUEST).contains(&len) {
        return None;
    }
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body).await.ok()?;
    method(&body)
}

fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (key, value) in [
        ("user", user),
        ("database", database),
        ("application_name", "wal-listener"),
    ] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
    let mut message = len.to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    message
}

/// The method named by an `AuthenticationRequest` body (its code, then for SASL the
/// mechanisms, each NUL-terminated).
fn method(body: &[u8]) -> Option<&'static str> {
    let code = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    match code {
        AUTH_CLEARTEXT => Some("password"),
        AUTH_MD5 => Some("md5"),
        AUTH_SASL => {
            let scram = body[4..]
                .split(|b| *b == 0)
                .any(|mechanism| mechanism.starts_with(b"SCRAM-SHA-256"));
            Some(if scram { "SCRAM-SHA-256" } else { "SASL" })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_requests_name_their_method() {
        assert_eq!(method(&[0, 0, 0, 3]), Some("password"));
        assert_eq!(method(&[0, 0, 0, 5, 1, 2, 3, 4]), Some("md5"));
        assert_eq!(
            method(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            Some("SCRAM-SHA-256")
        );
        assert_eq!(method(b"\0\0\0\x0aOTHER\0\0"), Some("SASL"));
        assert_eq!(method(&[0, 0, 0, 0]), None);
        assert_eq!(method(&[0, 0]), None);
    }

    #[test]
    fn the_startup_message_is_framed() {
        let m = startup_message("u", "d");
        assert_eq!(
            usize::try_from(i32::from_be_bytes([m[0], m[1], m[2], m[3]])).ok(),
            Some(m.len())
        );
        assert_eq!(&m[4..8], &PROTOCOL_3_0.to_be_bytes());
        assert!(m.ends_with(b"wal-listener\0\0"));
    }
}
