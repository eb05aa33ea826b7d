//! Exchange and queue names of this test alone, deleted when the guard drops.

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::BasicGetMessage,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
    uri::AMQPUri,
};
use wfm_worker::{
    broker::{CHECKIN_ROUTING_KEY, VERSION_ROUTING_KEY, declare_topology},
    config::{BrokerSettings, Topology},
};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub struct TestBroker {
    pub url: String,
    pub topology: Topology,
    pub connection: Connection,
    pub channel: Channel,
}

/// A message as a publisher would send it.
#[derive(Default, Clone)]
pub struct Outgoing {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub timestamp_secs: Option<u64>,
    pub timestamp_ms: Option<i64>,
    /// Any other headers, of any type.
    pub headers: Vec<(String, AMQPValue)>,
}

impl Outgoing {
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Outgoing {
            body: body.into(),
            ..Outgoing::default()
        }
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    pub fn at_secs(mut self, secs: u64) -> Self {
        self.timestamp_secs = Some(secs);
        self
    }

    pub fn header(mut self, name: &str, value: AMQPValue) -> Self {
        self.headers.push((name.to_owned(), value));
        self
    }

    fn properties(&self) -> BasicProperties {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = &self.message_id {
            properties = properties.with_message_id(id.as_str().into());
        }
        if let Some(secs) = self.timestamp_secs {
            properties = properties.with_timestamp(secs);
        }
        let mut headers = FieldTable::default();
        if let Some(ms) = self.timestamp_ms {
            headers.insert("timestamp_in_ms".into(), AMQPValue::LongLongInt(ms));
        }
        for (name, value) in &self.headers {
            headers.insert(name.as_str().into(), value.clone());
        }
        if !headers.inner().is_empty() {
            properties = properties.with_headers(headers);
        }
        properties
    }
}

impl TestBroker {
    /// Declares this test's topology (the worker's own code) so that messages
    /// published before the worker starts are routed, not dropped.
    pub async fn create() -> TestBroker {
        Self::create_at(AMQP_URL).await
    }

    /// The same, on another broker (a private node).
    pub async fn create_at(url: &str) -> TestBroker {
        Self::build(url, false).await
    }

    /// With the dead-letter exchange declared first as an earlier version of
    /// the worker did, without an alternate exchange.
    pub async fn create_with_legacy_dead_letter_exchange() -> TestBroker {
        Self::build(AMQP_URL, true).await
    }

    async fn build(url: &str, legacy_dead_letter_exchange: bool) -> TestBroker {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..12];
        let topology = Topology {
            exchange: format!("wfm-test-{tag}"),
            checkin_queue: format!("wfm-test-{tag}.checkins"),
            version_queue: format!("wfm-test-{tag}.versions"),
            dead_letter_exchange: format!("wfm-test-{tag}.dlx"),
            dead_letter_queue: format!("wfm-test-{tag}.dead"),
        };
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to local RabbitMQ");
        let channel = connection.create_channel().await.unwrap();
        if legacy_dead_letter_exchange {
            let options = lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let name = topology.dead_letter_exchange.as_str();
            channel
                .exchange_declare(
                    name.into(),
                    lapin::ExchangeKind::Topic,
                    options,
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        declare_topology(&connection, &topology)
            .await
            .expect("declare test topology");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        TestBroker {
            url: url.to_owned(),
            topology,
            connection,
            channel,
        }
    }

    /// Moves this handle to another node of the broker (its node was stopped).
    pub async fn reconnect(&mut self, url: &str) {
        self.connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to a live node");
        self.channel = self.connection.create_channel().await.unwrap();
        self.channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        self.url = url.to_owned();
    }

    pub fn settings(&self) -> BrokerSettings {
        BrokerSettings {
            nodes: vec![self.url.parse::<AMQPUri>().unwrap()],
            ca_file: None,
            connection_name: format!("{}-worker", self.topology.exchange),
            topology: self.topology.clone(),
        }
    }

    pub async fn publish_checkins(&self, messages: &[Outgoing]) {
        self.publish(CHECKIN_ROUTING_KEY, messages).await;
    }

    pub async fn publish_versions(&self, messages: &[Outgoing]) {
        self.publish(VERSION_ROUTING_KEY, messages).await;
    }

    /// Publishes with confirms and waits until the broker has every message.
    pub async fn publish(&self, routing_key: &str, messages: &[Outgoing]) {
        self.publish_to(&self.topology.exchange, routing_key, messages)
            .await;
    }

    /// The same, to another exchange.
    pub async fn publish_to(&self, exchange: &str, routing_key: &str, messages: &[Outgoing]) {
        for chunk in messages.chunks(1000) {
            for message in chunk {
                self.channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &message.body,
                        message.properties(),
                    )
                    .await
                    .unwrap();
            }
            let returned = self.channel.wait_for_confirms().await.unwrap();
            assert!(returned.is_empty());
        }
    }

    /// Consumers of `queue`.
    pub async fn consumers(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let channel = self.connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap();
        let _ = channel.close(200, "".into()).await;
        queue.consumer_count()
    }

    /// Waits until the worker consumes both work queues.
    pub async fn wait_for_consumers(&self) {
        for queue in [&self.topology.checkin_queue, &self.topology.version_queue] {
            super::wait_until(
                &format!("a consumer on {queue}"),
                std::time::Duration::from_secs(30),
                || async { self.consumers(queue).await > 0 },
            )
            .await;
        }
    }

    /// Messages ready in `queue` (not counting unacknowledged ones); 0 for a
    /// queue that does not exist (yet).
    pub async fn ready(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let channel = self.connection.create_channel().await.unwrap();
        let Ok(queue) = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
        else {
            return 0;
        };
        let _ = channel.close(200, "".into()).await;
        queue.message_count()
    }

    /// Waits until `queue` holds exactly `expected` ready messages.
    pub async fn wait_for_ready(&self, queue: &str, expected: u32, what: &str) {
        super::wait_until(what, std::time::Duration::from_secs(10), || async {
            self.ready(queue).await == expected
        })
        .await;
    }

    /// Takes one message from the checkin queue (acking it), if there is one.
    #[cfg(feature = "otlp")]
    pub async fn get_checkin(&self) -> Option<BasicGetMessage> {
        self.channel
            .basic_get(
                self.topology.checkin_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
    }

    /// Takes every message now in the dead-letter queue (acking them).
    pub async fn take_dead_letters(&self) -> Vec<BasicGetMessage> {
        let mut taken = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            taken.push(message);
        }
        taken
    }
}

/// Server-side ids (pids) of the broker connections with this client-given name.
pub async fn connection_pids(name: &str) -> Vec<String> {
    let listed = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|line| line.contains(&format!("\"connection_name\",\"{name}\"")))
        .filter_map(|line| line.split('\t').next())
        .map(str::to_owned)
        .collect()
}

/// Closes, as an operator would, the broker connection with this client-given name.
pub async fn close_connection_named(name: &str) {
    let pids = connection_pids(name).await;
    assert!(!pids.is_empty(), "no broker connection named {name}");
    for pid in pids {
        let closed = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", &pid, "closed by a fault test"])
            .output()
            .await
            .unwrap();
        assert!(closed.status.success());
    }
}

/// Messages of `queue` delivered and not yet acknowledged, as the broker
/// counts them (quorum queue counters lag by seconds: poll).
pub async fn unacknowledged(queue: &str) -> Option<u64> {
    let listed = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
}

/// The `message_id` of a message taken from a queue.
pub fn message_id(message: &BasicGetMessage) -> String {
    message
        .delivery
        .properties
        .message_id()
        .as_ref()
        .expect("a message id")
        .to_string()
}

/// A header of a message as text, if present.
pub fn header(message: &BasicGetMessage, name: &str) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let url = self.url.clone();
        super::clean_up(async move {
            let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await
            else {
                return;
            };
            let channel = connection.create_channel().await.unwrap();
            for queue in [
                &topology.checkin_queue,
                &topology.version_queue,
                &topology.dead_letter_queue,
                &topology.unrouted_queue(),
            ] {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in [
                &topology.exchange,
                &topology.dead_letter_exchange,
                &topology.unrouted_exchange(),
            ] {
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "".into()).await;
        });
    }
}
