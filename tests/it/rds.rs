//! RDS discovery, offline: a local AWS-compatible server (moto, installed and
//! pinned by `scripts/test.sh`) answers DescribeDBInstances, and the real
//! binary is pointed at it with the standard `AWS_ENDPOINT_URL_RDS`.
//!
//! moto reports an instance's endpoint as
//! `<id>.aaaaaaaaaa.<region>.rds.amazonaws.com:5432`; `scripts/test.sh` maps
//! that name (for the instance id used here) to 127.0.0.1 in `/etc/hosts`, so
//! the worker really connects where RDS says — the local PostgreSQL.
//!
//! And IAM database auth: a fresh token per pooled connection, over TLS.
//! (All of it needs the cargo feature `rds`, on by default.)

use std::{path::PathBuf, process::Stdio, time::Duration};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_rds::config::{Credentials, SharedCredentialsProvider};
use tokio::process::{Child, Command};
use wfm_worker::{
    config::{DatabaseSettings, SslMode},
    store::{self, rds::IamAuth, tls},
};

use crate::support::{
    TestDb, TestEnv,
    process::{free_port, worker_command},
    wait_until,
};

const REGION: &str = "us-east-1";
/// The instance the happy path connects to; its endpoint name is in /etc/hosts.
const INSTANCE: &str = "wfm-rds-test";

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn moto_server() -> PathBuf {
    let path = std::env::var_os("WFM_TEST_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/wfm-venv/bin/moto_server")
        });
    assert!(
        path.exists(),
        "moto_server not found at {}: scripts/test.sh installs it (pinned) into ~/.cache/wfm-venv",
        path.display()
    );
    path
}

async fn start_moto() -> Moto {
    let port = free_port().port();
    let child = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("moto to listen", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

fn client(moto: &Moto) -> aws_sdk_rds::Client {
    let config = SdkConfig::builder()
        .endpoint_url(&moto.endpoint)
        .region(Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing", "testing", None, None, "test",
        )))
        .behavior_version(BehaviorVersion::latest())
        .http_client(wfm_worker::store::rds::https_client())
        .build();
    aws_sdk_rds::Client::new(&config)
}

async fn create_instance(moto: &Moto, id: &str, engine: &str, dbname: &str) {
    client(moto)
        .create_db_instance()
        .db_instance_identifier(id)
        .engine(engine)
        .db_instance_class("db.t3.micro")
        .allocated_storage(20)
        .db_name(dbname)
        .master_username("postgres")
        .master_user_password("unused-password")
        .send()
        .await
        .unwrap();
}

/// `wfm-worker bootstrap` against the RDS instance `id`, as an operator would
/// configure it; the URL names no reachable host, only the user.
async fn bootstrap_via_rds(
    env: &TestEnv,
    moto: &Moto,
    id: &str,
    credentials: bool,
) -> (bool, String) {
    let mut command = worker_command(env);
    command
        .env(
            "WFM_DATABASE_URL",
            "postgres://postgres@not-used.invalid/not-used",
        )
        .env("WFM_RDS_INSTANCE_ID", id)
        .env("WFM_RDS_REGION", REGION)
        .env("AWS_ENDPOINT_URL_RDS", &moto.endpoint)
        // Keep the machine's own AWS settings out of it.
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    if credentials {
        command
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing");
    }
    let output = command.arg("bootstrap").output().await.unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn discovery_takes_host_port_and_database_from_rds_and_connects_there() {
    let host = format!("{INSTANCE}.aaaaaaaaaa.{REGION}.rds.amazonaws.com");
    let resolved: Vec<_> = tokio::net::lookup_host((host.as_str(), 5432))
        .await
        .map(|a| a.collect())
        .unwrap_or_default();
    assert!(
        resolved
            .iter()
            .any(|a: &std::net::SocketAddr| a.ip().is_loopback()),
        "{host} must resolve to 127.0.0.1 (scripts/test.sh adds it to /etc/hosts)"
    );
    let env = TestEnv::new().await;
    let moto = start_moto().await;
    create_instance(&moto, INSTANCE, "postgres", &env.db.name).await;

    let (ok, stderr) = bootstrap_via_rds(&env, &moto, INSTANCE, true).await;
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("discovered RDS instance") && stderr.contains(&host),
        "{stderr}"
    );
    assert!(
        stderr.contains(&env.db.name),
        "the instance's database name is used: {stderr}"
    );
    assert!(
        !stderr.contains("unused-password") && !stderr.contains("testing"),
        "no secret logged: {stderr}"
    );
    let applied = env.db.count("SELECT count(*) FROM schema_migrations").await;
    assert_eq!(
        applied,
        wfm_worker::store::MIGRATIONS.len() as i64,
        "the schema landed in the discovered database"
    );
}

#[tokio::test]
async fn discovery_refuses_unusable_instances_with_the_reason() {
    let env = TestEnv::new().await;
    let moto = start_moto().await;
    create_instance(&moto, "wfm-mysql", "mysql", "wfm").await;
    create_instance(&moto, "wfm-stopped", "postgres", "wfm").await;
    client(&moto)
        .stop_db_instance()
        .db_instance_identifier("wfm-stopped")
        .send()
        .await
        .unwrap();

    let cases = [
        (
            "wfm-missing",
            true,
            "RDS instance wfm-missing (WFM_RDS_INSTANCE_ID) was not found",
        ),
        ("wfm-mysql", true, "runs mysql, not PostgreSQL"),
        (
            "wfm-stopped",
            true,
            "is stopped, which cannot serve connections",
        ),
        ("wfm-mysql", false, "no AWS credentials"),
    ];
    for (id, credentials, reason) in cases {
        let (ok, stderr) = bootstrap_via_rds(&env, &moto, id, credentials).await;
        assert!(!ok, "{id}: start-up must fail");
        assert!(stderr.contains(reason), "{id}: {stderr}");
    }
}

/// A DescribeDBInstances endpoint of the test's own, for the statuses moto
/// cannot produce: answers each call with the next status of `statuses` (the
/// last one repeated), the instance at the local PostgreSQL.
async fn rds_stub(
    statuses: &'static [&'static str],
    dbname: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let call = counted.fetch_add(1, Ordering::SeqCst);
            let status = statuses[call.min(statuses.len() - 1)];
            let dbname = dbname.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Headers, then the form body of its Content-Length.
                loop {
                    let Ok(n) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                }
                let xml = format!(
                    r#"<DescribeDBInstancesResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><DescribeDBInstancesResult><DBInstances><DBInstance><DBInstanceIdentifier>stub</DBInstanceIdentifier><Engine>postgres</Engine><DBInstanceStatus>{status}</DBInstanceStatus><DBName>{dbname}</DBName><Endpoint><Address>127.0.0.1</Address><Port>5432</Port></Endpoint></DBInstance></DBInstances></DescribeDBInstancesResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></DescribeDBInstancesResponse>"#
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xml}",
                    xml.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (endpoint, calls)
}

#[tokio::test]
async fn an_instance_still_rebooting_is_waited_for_and_one_backing_up_is_used() {
    let env = TestEnv::new().await;
    let (endpoint, calls) = rds_stub(
        &["rebooting", "starting", "backing-up"],
        env.db.name.clone(),
    )
    .await;
    let output = worker_command(&env)
        .env(
            "WFM_DATABASE_URL",
            "postgres://postgres@not-used.invalid/not-used",
        )
        .env("WFM_RDS_INSTANCE_ID", "stub")
        .env("WFM_RDS_REGION", REGION)
        .env("AWS_ENDPOINT_URL_RDS", &endpoint)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("WFM_RECONNECT_MAX", "5")
        .stderr(Stdio::null())
        // `run` retries discovery; stop it once the schema is in.
        .arg("run")
        .spawn()
        .unwrap();
    let mut child = output;
    wait_until(
        "the schema in the discovered database",
        Duration::from_secs(60),
        || async {
            env.db
                .try_count("SELECT count(*) FROM schema_migrations")
                .await
                .is_some_and(|n| n == wfm_worker::store::MIGRATIONS.len() as i64)
        },
    )
    .await;
    assert!(
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "waited through rebooting and starting"
    );
    crate::support::process::signal(&child, "-TERM").await;
    assert!(child.wait().await.unwrap().success());
}

fn static_aws() -> SdkConfig {
    SdkConfig::builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDTEST", "secret", None, None, "test",
        )))
        .region(Region::new("us-east-1"))
        .time_source(aws_smithy_async::time::SystemTimeSource::new())
        .behavior_version(BehaviorVersion::latest())
        .build()
}

#[tokio::test]
async fn iam_auth_mints_a_fresh_token_for_every_new_pooled_connection() {
    let db = TestDb::create().await;
    let mut settings = DatabaseSettings::plain(db.url().parse().unwrap(), 3);
    settings.ssl_mode = SslMode::Require;
    let iam = IamAuth::new(static_aws());
    let connector = tls::connector(SslMode::Require, None).unwrap();
    let pool = store::pool_with(
        &settings,
        settings.config.clone(),
        connector,
        Some(iam.clone()),
    );

    let (a, b, c) = tokio::join!(pool.get(), pool.get(), pool.get());
    let held = [a.unwrap(), b.unwrap(), c.unwrap()];
    for conn in &held {
        let encrypted: bool = conn
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(encrypted, "IAM tokens only travel over TLS");
    }
    assert_eq!(iam.minted(), 3, "one token per connection");
    drop(held);
    drop(pool.get().await.unwrap());
    assert_eq!(iam.minted(), 3, "a reused connection needs no new token");
    pool.get().await.unwrap().mark_broken();
    let (a, b, c) = tokio::join!(pool.get(), pool.get(), pool.get());
    drop((a.unwrap(), b.unwrap(), c.unwrap()));
    assert_eq!(
        iam.minted(),
        4,
        "the replacement of a broken connection gets its own token"
    );
}
