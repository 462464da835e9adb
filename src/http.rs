//! The operations endpoint: `GET /healthz`, `GET /ready` ([`crate::health`]) and
//! `GET /metrics` ([`crate::metrics`], Prometheus text format).
//!
//! Served on `listener.serverHost:listener.serverPort` (all interfaces by default, like the Go
//! version's `:port`; port 0 turns it off) and, when set, on `monitoring.promAddr` too (the Go
//! version's Prometheus listener, `:2112` or `host:port`). HTTP/1.1 via hyper; at most
//! [`MAX_CONNECTIONS`] connections at once, each closed after [`CONNECTION_LIFETIME`], so a
//! misbehaving client cannot starve the probes.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::{health, metrics};

/// Connections served at once per listener; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long one (keep-alive) connection may stay open.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind every configured address and serve until `shutdown`. Returns the bound addresses
/// (empty when all are off); an address that cannot be bound is an error naming its key.
pub async fn start(config: &Config, shutdown: CancellationToken) -> Result<Vec<SocketAddr>, String> {
    let mut listeners = Vec::new();
    let port = config.listener.server_port;
    if port != 0 {
        let host = config.listener.server_host.trim();
        let listener = bind(host, port)
            .await
            .map_err(|e| {
                format!(
                    "listener.serverHost/serverPort {host}:{port}: cannot listen: {e}{} (choose another port, or 0 to turn the endpoint off)",
                    privileged_hint(&e, port)
                )
            })?;
        listeners.push(listener);
    }
    if let Some(addr) = config
        .monitoring
        .prom_addr
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let (host, port) = split_host_port(addr)
            .ok_or_else(|| format!("monitoring.promAddr {addr:?} is not host:port (e.g. :2112 or 127.0.0.1:2112)"))?;
        // The same address as the main endpoint (the Go example config uses both): serve once.
        let same = port != 0 && port == config.listener.server_port && host == config.listener.server_host.trim();
        if !same {
            let listener = bind(host, port).await.map_err(|e| {
                format!(
                    "monitoring.promAddr {addr}: cannot listen: {e}{}",
                    privileged_hint(&e, port)
                )
            })?;
            listeners.push(listener);
        }
    }
    let mut addresses = Vec::new();
    for listener in listeners {
        let addr = listener.local_addr().map_err(|e| format!("HTTP listener: {e}"))?;
        tracing::info!(address = %addr, "serving /healthz, /ready and /metrics");
        addresses.push(addr);
        tokio::spawn(serve(listener, shutdown.clone()));
    }
    Ok(addresses)
}

/// Why binding a port below 1024 is refused, e.g. the Go example's `serverPort: 80` in the
/// Docker image, which runs as uid 10001.
fn privileged_hint(e: &std::io::Error, port: u16) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied && port < 1024 {
        "; ports below 1024 need root or CAP_NET_BIND_SERVICE, and the Docker image runs as the unprivileged uid 10001: use a port of 1024 or more, such as 8080"
    } else {
        ""
    }
}

/// `""` binds every interface: IPv6 `[::]` (dual-stack on Linux), else IPv4 `0.0.0.0`.
async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    if host.is_empty() {
        return match TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)).await {
            Ok(l) => Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
            Err(_) => TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await,
        };
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => TcpListener::bind(SocketAddr::new(ip, port)).await,
        Err(_) => TcpListener::bind((host, port)).await,
    }
}

/// `:2112` → ("", 2112); `127.0.0.1:2112`; `[::1]:2112`.
fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // Too many connections: dropping the stream closes it.
        };
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(|req| async move { Ok::<_, Infallible>(respond(&req)) }),
                );
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(permit);
        });
    }
}

fn respond(req: &Request<Incoming>) -> Response<String> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => {
            let report = health::report();
            text(status(report.healthy), report.detail + "\n")
        }
        "/ready" => {
            let report = health::report();
            text(status(report.ready), report.detail + "\n")
        }
        "/metrics" => {
            let mut response = text(
                StatusCode::OK,
                metrics::render(health::report().ready, health::nats_connected()),
            );
            response.headers_mut().insert(
                CONTENT_TYPE,
                // prometheus-client writes the OpenMetrics text format (which Prometheus scrapes).
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /ready or /metrics\n".into(),
        ),
    }
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn text(status: StatusCode, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[test]
    fn a_privileged_port_says_why_it_cannot_be_bound() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(privileged_hint(&denied, 80).contains("uid 10001"));
        assert_eq!(privileged_hint(&denied, 8080), "");
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(privileged_hint(&in_use, 80), "");
    }

    #[test]
    fn prom_addr_forms() {
        assert_eq!(split_host_port(":2112"), Some(("", 2112)));
        assert_eq!(split_host_port("127.0.0.1:9000"), Some(("127.0.0.1", 9000)));
        assert_eq!(split_host_port("[::1]:9000"), Some(("[::1]", 9000)));
        assert_eq!(split_host_port("2112"), None);
        assert_eq!(split_host_port("host:port"), None);
    }

    #[tokio::test]
    async fn serves_the_three_endpoints_and_nothing_else() {
        let mut config = Config::default();
        config.listener.server_host = "127.0.0.1".into();
        config.listener.server_port = 0;
        config.monitoring.prom_addr = Some("127.0.0.1:0".into());
        let shutdown = CancellationToken::new();
        let addrs = start(&config, shutdown.clone()).await.expect("bind");
        assert_eq!(addrs.len(), 1, "serverPort 0 is off; promAddr serves");
        let addr = addrs[0];

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("# TYPE wal_listener_replication_lag_bytes gauge"),
            "{metrics}"
        );
        assert!(
            metrics.contains("problematic_events_total{app=\"wal-listener\",kind=\"script\"}"),
            "{metrics}"
        );
        assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

        // Ready only while streaming; the health module's own test drives the states, so
        // here only the mapping to status codes is checked.
        let ready = get(addr, "/ready").await;
        let expected = if health::report().ready { "200" } else { "503" };
        assert!(ready.starts_with(&format!("HTTP/1.1 {expected}")), "{ready}");

        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");

        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_empty_host_listens_on_every_interface() {
        let listener = bind("", 0).await.expect("bind all interfaces");
        let addr = listener.local_addr().expect("addr");
        assert!(addr.ip().is_unspecified(), "{addr}");
        // Reachable over IPv4 loopback either way (dual-stack [::] or 0.0.0.0).
        tokio::net::TcpStream::connect(("127.0.0.1", addr.port()))
            .await
            .expect("connect over 127.0.0.1");
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_naming_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut config = Config::default();
        config.listener.server_host = "127.0.0.1".into();
        config.listener.server_port = taken.local_addr().expect("addr").port();
        let err = start(&config, CancellationToken::new()).await.expect_err("port taken");
        assert!(err.starts_with("listener.serverHost/serverPort 127.0.0.1:"), "{err}");
    }
}
