//! TLS and authentication against real servers: PostgreSQL with TLS (a CA made in the test),
//! SCRAM and client certificates; NATS with TLS + client certificates, user/password, token
//! and NKey. Secrets must never show up in logs or `check` output.

use std::path::Path;
use std::time::Duration;

use crate::support::blocking;
use crate::support::certs::TestCa;
use crate::support::service::{Service, check_connect, wait_streaming};
use crate::support::{NatsServer, PgCluster, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

/// A config streaming every table of `pg` into `topic` on `nats_url`; `database` and
/// `publisher` hold extra indented lines for those sections.
fn yaml(pg: &PgCluster, name: &str, database: &str, nats_url: &str, publisher: &str) -> String {
    format!(
        "listener:\n  slotName: slot_{name}\n  publication: tlspub\n  heartbeatInterval: 1s\n  serverPort: 0\n\
         database:\n  port: {}\n  name: postgres\n{database}\
         publisher:\n  address: {nats_url}\n  topic: cdc_{name}\n{publisher}\
         logger:\n  level: debug\n  fmt: text\n",
        pg.port()
    )
}

/// Start the service, write a row, wait until it is in the stream (read with `client`).
async fn streams_one_change(
    pg: &PgCluster,
    name: &str,
    yaml: &str,
    env: &[(&str, &str)],
    client: &async_nats::Client,
) -> Service {
    let mut service = Service::start_with_env(yaml, env);
    blocking(|| wait_streaming(pg, &format!("slot_{name}"), &mut service));
    pg.psql(&format!("INSERT INTO t VALUES ('{name}')"));
    let js = async_nats::jetstream::new(client.clone());
    let stream = format!("cdc_{name}");
    wait_for(&format!("the change in stream {stream}"), DEADLINE, || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            let mut s = js.get_stream(&stream).await.ok()?;
            (s.info().await.ok()?.state.messages == 1).then_some(())
        }
    })
    .await;
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_scram_and_client_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("wal-listener test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let (cert_file, key_file) = ca.client("cert_user").write(dir.path(), "cert_user");
    let server = ca.server();
    let (mut pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.configure_ssl(&server.cert, &server.key, &ca.pem());
    pg.set_hba(
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         hostssl all tls_user 127.0.0.1/32 scram-sha-256\n\
         hostssl all cert_user 127.0.0.1/32 cert\n\
         hostnossl all scram_user 127.0.0.1/32 scram-sha-256\n",
    );
    blocking(|| pg.restart_fast());
    pg.psql(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE tls_user LOGIN REPLICATION PASSWORD 's3cret-tls';
         CREATE ROLE cert_user LOGIN REPLICATION;
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 's3cret-scram';
         CREATE TABLE t (v text); CREATE PUBLICATION tlspub FOR ALL TABLES;",
    );
    let client = nats.client().await;
    let password_file = dir.path().join("pg-password");
    std::fs::write(&password_file, "s3cret-tls\n").expect("write password file");

    // verify-full against the test CA, password from a file; the user may only connect over
    // TLS (hostssl), so streaming at all proves both connections use it.
    let db = format!(
        "  host: localhost\n  user: tls_user\n  passwordFile: {}\n  sslMode: verify-full\n  sslRootCert: {}\n",
        password_file.display(),
        ca_file.display()
    );
    let mut service = streams_one_change(&pg, "tls", &yaml(&pg, "tls", &db, &nats.url(), ""), &[], &client).await;
    let ssl = pg.psql(
        "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'tls_user'",
    );
    assert!(
        ssl.split('/').next() == ssl.split('/').nth(1) && ssl != "0/0",
        "TLS connections/all: {ssl}"
    );
    assert!(blocking(|| service.terminate()).success(), "{}", service.log());
    assert!(!service.log().contains("s3cret"), "{}", service.log());

    // prefer (the default) takes TLS when the server offers it, on both connections (this
    // user may not connect without); require insists on it without verifying.
    let db = "  host: 127.0.0.1\n  user: tls_user\n  password: s3cret-tls\n";
    let mut service = streams_one_change(&pg, "prefer", &yaml(&pg, "prefer", db, &nats.url(), ""), &[], &client).await;
    assert!(blocking(|| service.terminate()).success(), "{}", service.log());
    let require = format!("{db}  sslMode: require\n");
    let (code, out) = blocking(|| check_connect(&yaml(&pg, "require", &require, &nats.url(), ""), &[]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("user tls_user, TLS on (database.sslMode require)"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");

    // Certificate authentication, chain verified (verify-ca accepts the IP address).
    let db = format!(
        "  host: 127.0.0.1\n  user: cert_user\n  sslMode: verify-ca\n  sslRootCert: {}\n  sslCert: {}\n  sslKey: {}\n",
        ca_file.display(),
        cert_file.display(),
        key_file.display()
    );
    let mut service = streams_one_change(&pg, "cert", &yaml(&pg, "cert", &db, &nats.url(), ""), &[], &client).await;
    assert!(blocking(|| service.terminate()).success(), "{}", service.log());

    // SCRAM without TLS, the password from the environment; a wrong one is fatal.
    let db = "  host: 127.0.0.1\n  user: scram_user\n  sslMode: disable\n";
    let config = yaml(&pg, "scram", db, &nats.url(), "");
    let mut wrong = Service::start_with_env(&config, &[("WAL_DATABASE_PASSWORD", "s3cret-wrong")]);
    let last = blocking(|| wrong.fatal_line(DEADLINE));
    assert!(
        last.starts_with("wal-listener: PostgreSQL refused the connection"),
        "{last}"
    );
    assert!(!wrong.log().contains("s3cret"), "{}", wrong.log());
    let mut service = streams_one_change(
        &pg,
        "scram",
        &config,
        &[("WAL_DATABASE_PASSWORD", "s3cret-scram")],
        &client,
    )
    .await;
    assert!(blocking(|| service.terminate()).success(), "{}", service.log());

    // A server certificate from another CA is refused, with a hint.
    let other_ca = TestCa::new("someone else").write(dir.path(), "other-ca.crt");
    let db = format!(
        "  host: localhost\n  user: tls_user\n  password: s3cret-tls\n  sslMode: verify-full\n  sslRootCert: {}\n",
        other_ca.display()
    );
    let mut refused = Service::start(&yaml(&pg, "untrusted", &db, &nats.url(), ""));
    let last = blocking(|| refused.fatal_line(DEADLINE));
    assert!(
        last.starts_with("wal-listener: TLS to PostgreSQL failed") && last.contains("sslRootCert"),
        "{last}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_tls_client_certificates_and_each_auth_method() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("nats test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let (server_cert, server_key) = ca.server().write(dir.path(), "server");
    let (client_cert, client_key) = ca.client("wal-listener").write(dir.path(), "client");
    let pg = blocking(PgCluster::start);
    pg.psql("CREATE TABLE t (v text); CREATE PUBLICATION tlspub FOR ALL TABLES;");
    let trust_db = "  host: 127.0.0.1\n  user: postgres\n";

    // TLS with a client certificate the server verifies.
    let conf = write(
        dir.path(),
        "tls.conf",
        &format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            server_cert.display(),
            server_key.display(),
            ca_file.display()
        ),
    );
    let nats = blocking(|| NatsServer::start_with(&["-c", &conf]));
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca_file.clone())
        .add_client_certificate(client_cert.clone(), client_key.clone())
        .connect(nats.url())
        .await
        .expect("test client over TLS");
    let publisher = format!(
        "  tlsCaFile: {}\n  tlsCertFile: {}\n  tlsKeyFile: {}\n",
        ca_file.display(),
        client_cert.display(),
        client_key.display()
    );
    let mut service = streams_one_change(
        &pg,
        "natstls",
        &yaml(&pg, "natstls", trust_db, &nats.url(), &publisher),
        &[],
        &client,
    )
    .await;
    assert!(blocking(|| service.terminate()).success(), "{}", service.log());
    // Without a client certificate the server refuses the TLS handshake.
    let no_cert = format!("  tlsCaFile: {}\n", ca_file.display());
    let (code, out) = blocking(|| check_connect(&yaml(&pg, "nocert", trust_db, &nats.url(), &no_cert), &[]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: publisher: "), "{out}");

    // User and password (from a file); a wrong password is fatal and never printed.
    let nats = blocking(|| NatsServer::start_with(&["--user", "wal", "--pass", "s3cret-nats"]));
    let client = async_nats::ConnectOptions::with_user_and_password("wal".into(), "s3cret-nats".into())
        .connect(nats.url())
        .await
        .expect("test client with user/password");
    let password_file = write(dir.path(), "nats-password", "s3cret-nats\n");
    let publisher = format!("  user: wal\n  passwordFile: {password_file}\n");
    let mut service = streams_one_change(
        &pg,
        "natsuser",
        &yaml(&pg, "natsuser", trust_db, &nats.url(), &publisher),
        &[],
        &client,
    )
    .await;
    assert!(blocking(|| service.terminate()).success(), "{}", service.log());
    assert!(!service.log().contains("s3cret"), "{}", service.log());
    let wrong = "  user: wal\n  password: s3cret-wrong\n";
    let mut refused = Service::start(&yaml(&pg, "natswrong", trust_db, &nats.url(), wrong));
    let last = blocking(|| refused.fatal_line(DEADLINE));
    assert!(last.starts_with("wal-listener: NATS refused the credentials"), "{last}");
    assert!(!refused.log().contains("s3cret"), "{}", refused.log());

    // A token from the environment.
    let nats = blocking(|| NatsServer::start_with(&["--auth", "s3cret-token"]));
    let (code, out) = blocking(|| {
        check_connect(
            &yaml(&pg, "natstoken", trust_db, &nats.url(), ""),
            &[("WAL_PUBLISHER_TOKEN", "s3cret-token")],
        )
    });
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: publisher: NATS "), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    let (code, out) = blocking(|| check_connect(&yaml(&pg, "natstoken", trust_db, &nats.url(), ""), &[]));
    assert_eq!(code, 1, "without the token: {out}");

    // An NKey seed file.
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().expect("seed");
    let conf = write(
        dir.path(),
        "nkey.conf",
        &format!(
            "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
            key.public_key()
        ),
    );
    let nats = blocking(|| NatsServer::start_with(&["-c", &conf]));
    let seed_file = write(dir.path(), "wal.nk", &format!("{seed}\n"));
    let publisher = format!("  nkeySeedFile: {seed_file}\n");
    let (code, out) = blocking(|| check_connect(&yaml(&pg, "natsnkey", trust_db, &nats.url(), &publisher), &[]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: publisher.topic: stream cdc_natsnkey does not exist"),
        "{out}"
    );
    assert!(!out.contains(&seed), "{out}");
}

/// A signed NATS JWT (`ed25519-nkey`) with `claims` (without `iss`/`sub`/`iat`/`jti`).
fn jwt(signer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{subject}-{name}"),
        "iat": 1_700_000_000,
        "iss": signer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = b64.encode(claims.to_string());
    let signature = signer.sign(format!("{header}.{body}").as_bytes()).expect("sign");
    format!("{header}.{body}.{}", b64.encode(signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_a_credentials_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Decentralised auth: an operator trusts an account (with JetStream), which signs a user.
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account(); // JetStream needs a system account
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "acc",
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "wal",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let conf = write(
        dir.path(),
        "operator.conf",
        &format!(
            "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n  {}: {system_jwt}\n}}\n",
            system.public_key(),
            account.public_key(),
            system.public_key()
        ),
    );
    let seed = user.seed().expect("seed");
    let creds = write(
        dir.path(),
        "wal.creds",
        &format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    );
    let pg = blocking(PgCluster::start);
    pg.psql("CREATE TABLE t (v text); CREATE PUBLICATION tlspub FOR ALL TABLES;");
    let nats = blocking(|| NatsServer::start_with(&["-c", &conf]));
    let client = async_nats::ConnectOptions::with_credentials_file(dir.path().join("wal.creds"))
        .await
        .expect("read creds")
        .connect(nats.url())
        .await
        .expect("test client with a credentials file");
    let publisher = format!("  credsFile: {creds}\n");
    let trust_db = "  host: 127.0.0.1\n  user: postgres\n";
    let mut service = streams_one_change(
        &pg,
        "natscreds",
        &yaml(&pg, "natscreds", trust_db, &nats.url(), &publisher),
        &[],
        &client,
    )
    .await;
    assert!(blocking(|| service.terminate()).success(), "{}", service.log());
    assert!(!service.log().contains(&seed), "{}", service.log());
    // Without the credentials the server refuses.
    let (code, out) = blocking(|| check_connect(&yaml(&pg, "nocreds", trust_db, &nats.url(), ""), &[]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: publisher: NATS refused the credentials"), "{out}");
}
