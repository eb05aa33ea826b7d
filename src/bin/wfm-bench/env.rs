//! A private database and topology per phase, and the helpers phases share.

use std::{sync::OnceLock, time::Duration};

use lapin::{
    Channel, Connection, ConnectionProperties, Consumer,
    options::{
        BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use tokio_postgres::{Client, NoTls};
use wfm_worker::{
    broker::declare_topology,
    config::{DatabaseSettings, Topology},
};

use crate::payload;

/// The locale every database of this run is created in (`--db-locale`); unset,
/// the server's default. Set once, before the first phase.
static DB_LOCALE: OnceLock<String> = OnceLock::new();

/// Creates the run's databases in `locale` (collation and character type),
/// from `template0`: production databases need not share this server's
/// default (RDS creates them in `en_US.UTF-8`), and what the database's text
/// comparisons cost depends on it.
pub fn set_db_locale(locale: String) -> anyhow::Result<()> {
    // Spliced into CREATE DATABASE, which takes no parameters: names only.
    anyhow::ensure!(
        !locale.is_empty()
            && locale
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)),
        "--db-locale {locale:?}: not a locale name"
    );
    DB_LOCALE
        .set(locale)
        .map_err(|_| anyhow::anyhow!("the database locale is already set"))
}

/// The locale set by [`set_db_locale`], if any.
pub fn db_locale() -> Option<&'static str> {
    DB_LOCALE.get().map(String::as_str)
}

fn create_database(name: &str) -> String {
    match DB_LOCALE.get() {
        Some(locale) => format!(
            "CREATE DATABASE {name} TEMPLATE template0 LC_COLLATE '{locale}' LC_CTYPE '{locale}'"
        ),
        None => format!("CREATE DATABASE {name}"),
    }
}

pub struct BenchEnv {
    pub admin_url: String,
    pub amqp_url: String,
    pub db_name: String,
    pub topology: Topology,
    pub connection: Connection,
}

impl BenchEnv {
    pub async fn new(admin_url: &str, amqp_url: &str) -> anyhow::Result<BenchEnv> {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let db_name = format!("wfm_bench_{tag}");
        connect(admin_url)
            .await?
            .batch_execute(&create_database(&db_name))
            .await?;
        let topology = Topology {
            exchange: format!("wfm-bench-{tag}"),
            checkin_queue: format!("wfm-bench-{tag}.checkins"),
            version_queue: format!("wfm-bench-{tag}.versions"),
            dead_letter_exchange: format!("wfm-bench-{tag}.dlx"),
            dead_letter_queue: format!("wfm-bench-{tag}.dead"),
        };
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        declare_topology(&connection, &topology).await?;
        Ok(BenchEnv {
            admin_url: admin_url.to_owned(),
            amqp_url: amqp_url.to_owned(),
            db_name,
            topology,
            connection,
        })
    }

    pub fn db_url(&self) -> String {
        let (base, _) = self
            .admin_url
            .rsplit_once('/')
            .expect("admin URL names a database");
        format!("{base}/{}", self.db_name)
    }

    pub fn database(&self, pool_size: u32) -> DatabaseSettings {
        DatabaseSettings::plain(self.db_url().parse().expect("valid URL"), pool_size)
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.db_url()).await
    }

    /// Fills `routing_key`'s queue with `count` messages made by `body`, with
    /// publisher confirms (a window of 1,000 in flight).
    pub async fn prefill(
        &self,
        routing_key: &str,
        count: usize,
        body: fn(usize) -> String,
    ) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        for start in (0..count).step_by(1000) {
            for i in start..(start + 1000).min(count) {
                self.publish(&channel, routing_key, &format!("m-{i}"), body(i).as_bytes())
                    .await?;
            }
            anyhow::ensure!(
                channel.wait_for_confirms().await?.is_empty(),
                "unroutable bench message"
            );
        }
        let _ = channel.close(200, "".into()).await;
        Ok(())
    }

    pub async fn publish(
        &self,
        channel: &Channel,
        routing_key: &str,
        id: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        channel
            .basic_publish(
                self.topology.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                payload::properties(id, payload::now_ms()),
            )
            .await?;
        Ok(())
    }

    /// A consumer of `queue` on a channel of its own, with `prefetch`.
    pub async fn consume(&self, queue: &str, prefetch: u16) -> anyhow::Result<Consumer> {
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        Ok(channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?)
    }

    /// Ready messages in `queue` (unacknowledged ones not counted).
    pub async fn ready(&self, queue: &str) -> anyhow::Result<u32> {
        let channel = self.connection.create_channel().await?;
        let ready = ready_on(&channel, queue).await;
        let _ = channel.close(200, "".into()).await;
        Ok(ready?)
    }

    pub async fn drop_all(self) {
        // A channel of its own for each delete: a refused one closes its
        // channel, and must not leave the rest behind (twice on the
        // thirty-first machine, three queues and every exchange stayed).
        let t = &self.topology;
        for queue in [
            &t.checkin_queue,
            &t.version_queue,
            &t.dead_letter_queue,
            &t.unrouted_queue(),
        ] {
            let deleted = async {
                let channel = self.connection.create_channel().await?;
                let options = QueueDeleteOptions::default();
                channel.queue_delete(queue.as_str().into(), options).await
            };
            if let Err(error) = deleted.await {
                eprintln!("wfm-bench: could not delete queue {queue}: {error}");
            }
        }
        for exchange in [&t.exchange, &t.dead_letter_exchange, &t.unrouted_exchange()] {
            let deleted = async {
                let channel = self.connection.create_channel().await?;
                let options = ExchangeDeleteOptions::default();
                channel
                    .exchange_delete(exchange.as_str().into(), options)
                    .await
            };
            if let Err(error) = deleted.await {
                eprintln!("wfm-bench: could not delete exchange {exchange}: {error}");
            }
        }
        let _ = self.connection.close(200, "".into()).await;
        if let Ok(admin) = connect(&self.admin_url).await {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.db_name
                ))
                .await;
        }
    }
}

pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Polls `sql` (one bigint) every `every` until it reaches `at_least`. A
/// query that fails (a table being swapped by a conversion) counts as not yet.
pub async fn wait_for_count(
    client: &Client,
    what: &str,
    sql: &str,
    at_least: i64,
    every: Duration,
) -> anyhow::Result<()> {
    poll_until(what, every, Duration::from_secs(600), || async {
        let row = client.query_one(sql, &[]).await;
        Ok(row.is_ok_and(|row| row.get::<_, i64>(0) >= at_least))
    })
    .await
}

/// Polls `probe` every `every` until it returns true or `limit` passes.
pub async fn poll_until<F, Fut>(
    what: &str,
    every: Duration,
    limit: Duration,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !probe().await? {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// Ready messages in `queue`, by a passive declare on `channel` (which the
/// broker answers from the queue's own count).
pub async fn ready_on(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(declared.message_count())
}
