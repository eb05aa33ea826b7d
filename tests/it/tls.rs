//! TLS: to PostgreSQL in each sslmode (against the local server, given a
//! certificate these tests make), and amqps. (IAM tokens over TLS: `rds`.)

use std::{path::Path, time::Duration};

use tokio_postgres::Client;
use wfm_worker::{
    config::{DatabaseSettings, SslMode},
    store,
};

use crate::support::{
    CLUSTER, Outgoing, RunningWorker, TestDb, TestEnv,
    certs::TestPki,
    checkin_body,
    db::{ADMIN_URL, connect},
    tls_proxy, wait_until,
};

/// Installs `pki`'s server certificate on the local PostgreSQL and reloads it.
/// The server writes the files itself (`lo_export`, as the server's user), so
/// no file system access is needed here. Returns the admin client to
/// restore the previous settings with.
async fn serve_certificate(pki: &TestPki) -> Client {
    let admin = connect(ADMIN_URL).await;
    let dir: String = admin
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    for (file, pem) in [
        ("wfm-test-server.crt", &pki.server_cert_pem),
        ("wfm-test-server.key", &pki.server_key_pem),
    ] {
        let oid: u32 = admin
            .query_one("SELECT lo_from_bytea(0, $1)", &[&pem.as_bytes()])
            .await
            .unwrap()
            .get(0);
        admin
            .execute(
                "SELECT lo_export($1, $2)",
                &[&oid, &format!("{dir}/{file}")],
            )
            .await
            .unwrap();
        admin
            .execute("SELECT lo_unlink($1)", &[&oid])
            .await
            .unwrap();
    }
    // lo_export leaves the file readable by all; the server insists on 0600
    // for a key it owns, and only the server's own user may change that.
    admin
        .batch_execute(&format!(
            "COPY (SELECT 1) TO PROGRAM 'chmod 0600 {dir}/wfm-test-server.key'"
        ))
        .await
        .unwrap();
    // One at a time: ALTER SYSTEM refuses to run in a (multi-statement) transaction.
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{dir}/wfm-test-server.crt'"),
        format!("ALTER SYSTEM SET ssl_key_file = '{dir}/wfm-test-server.key'"),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    admin
}

/// Back to the server's own certificate settings (TLS stays on, as found).
async fn restore(admin: Client) {
    for statement in [
        "ALTER SYSTEM RESET ssl_cert_file",
        "ALTER SYSTEM RESET ssl_key_file",
        "ALTER SYSTEM RESET ssl",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
}

/// Connects once with `mode`; Ok(whether the session is encrypted) or the error.
async fn try_connect(
    db: &TestDb,
    host: &str,
    mode: SslMode,
    ca: Option<&Path>,
) -> Result<bool, String> {
    let mut settings = DatabaseSettings::plain(
        format!("postgres://postgres@{host}:5432/{}", db.name)
            .parse()
            .unwrap(),
        1,
    );
    settings.ssl_mode = mode;
    settings.ca_file = ca.map(Path::to_path_buf);
    let pool = store::connect_pool(&settings)
        .await
        .map_err(|e| e.to_string())?;
    // A dedicated connection reports the real error at once (bb8's get would retry until its time-out).
    let client = pool
        .dedicated_connection()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

#[tokio::test]
async fn postgres_tls_modes_connect_or_refuse_as_libpq_does() {
    let pki = TestPki::new("wfm test CA");
    let stranger = TestPki::new("some other CA");
    let (ca, wrong_ca) = (pki.ca_file(), stranger.ca_file());
    let db = TestDb::create().await;
    let admin = serve_certificate(&pki).await;
    // The reload is asynchronous: wait until the server presents the new certificate.
    wait_until(
        "the server to present the test certificate",
        Duration::from_secs(20),
        || async {
            try_connect(&db, "localhost", SslMode::VerifyFull, Some(ca.as_path()))
                .await
                .is_ok()
        },
    )
    .await;

    assert_eq!(
        try_connect(&db, "localhost", SslMode::Require, None).await,
        Ok(true)
    );
    assert_eq!(
        try_connect(&db, "localhost", SslMode::VerifyFull, Some(ca.as_path())).await,
        Ok(true)
    );
    let wrong_issuer = try_connect(
        &db,
        "localhost",
        SslMode::VerifyFull,
        Some(wrong_ca.as_path()),
    )
    .await
    .unwrap_err();
    assert!(wrong_issuer.contains("UnknownIssuer"), "{wrong_issuer}");
    let wrong_name = try_connect(&db, "127.0.0.1", SslMode::VerifyFull, Some(ca.as_path()))
        .await
        .unwrap_err();
    assert!(wrong_name.contains("NotValidForName"), "{wrong_name}");
    assert_eq!(
        try_connect(&db, "127.0.0.1", SslMode::VerifyCa, Some(ca.as_path())).await,
        Ok(true),
        "verify-ca ignores the name"
    );
    assert!(
        try_connect(
            &db,
            "127.0.0.1",
            SslMode::VerifyCa,
            Some(wrong_ca.as_path())
        )
        .await
        .is_err(),
        "but not the chain"
    );
    assert_eq!(
        try_connect(&db, "127.0.0.1", SslMode::Disable, None).await,
        Ok(false),
        "plain still works"
    );
    let missing = try_connect(&db, "localhost", SslMode::VerifyFull, None)
        .await
        .unwrap_err();
    assert!(missing.contains("WFM_DATABASE_CA_FILE"), "{missing}");
    restore(admin).await;
}

#[tokio::test]
async fn the_worker_consumes_over_amqps_trusting_the_configured_ca_only() {
    let env = TestEnv::new().await;
    let pki = TestPki::new("wfm broker CA");
    let proxy = tls_proxy::start(&pki, "127.0.0.1:5672".parse().unwrap()).await;
    let mut settings = env.settings();
    settings.broker.nodes = vec![
        format!("amqps://guest:guest@localhost:{}/%2f", proxy.port())
            .parse()
            .unwrap(),
    ];
    let ca = pki.ca_file();
    settings.broker.ca_file = Some(ca.as_path().to_owned());
    let worker = RunningWorker::start(settings.clone());
    env.broker
        .publish_checkins(&[Outgoing::new(checkin_body(CLUSTER, "tls")).id("over-tls")])
        .await;
    env.wait_for_rows(
        "SELECT count(*) FROM clusters_checkins WHERE message_id = 'over-tls'",
        1,
    )
    .await;
    worker.stop().await.unwrap();

    let stranger = TestPki::new("a stranger").ca_file();
    settings.broker.ca_file = Some(stranger.as_path().to_owned());
    settings.reconnect_max = 1;
    let error = RunningWorker::start(settings)
        .wait()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
}
