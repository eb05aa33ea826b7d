//! Carrying out a settled batch's decisions on the broker, atomically.
//!
//! The consumer channel is in transaction mode (AMQP `tx`): a batch's
//! dead-letter copies, its hand-backs (nack with requeue) and its `multiple`
//! ack are sent, then committed together. RabbitMQ applies a transaction's
//! publishes and acks only on commit ("effect visibility / responsibility
//! transfer: on commit", <https://www.rabbitmq.com/docs/semantics>), so a
//! connection lost before the commit leaves no copy and no ack — the broker
//! redelivers and the copy is made once, later — and one lost after it leaves
//! both. With publisher confirms instead, a copy whose confirm was lost with
//! the connection would be made a second time at redelivery.

use lapin::{
    Channel,
    options::{BasicAckOptions, BasicNackOptions},
};

use super::{
    BatchReport, Settled, metrics,
    process::{Disposition, message_id},
};
use crate::broker::{self, BrokerError, DeadLetter};

impl Settled {
    /// Publishes the copies, hands back and acks the batch, and commits.
    ///
    /// The closing ack is `multiple`: safe only once every earlier batch of the
    /// channel is committed too (the acker's order).
    pub async fn commit(
        self,
        channel: &Channel,
        dead_letter_exchange: &str,
    ) -> Result<BatchReport, BrokerError> {
        for (delivery, disposition) in self.deliveries.iter().zip(&self.dispositions) {
            match disposition {
                Disposition::DeadLetter(rejection) => {
                    tracing::warn!(
                        queue = %self.queue, message_id = message_id(delivery),
                        kind = rejection.kind.as_str(), reason = %rejection.reason,
                        "dead-lettering message"
                    );
                    let letter = DeadLetter {
                        routing_key: delivery.routing_key.as_str(),
                        body: &delivery.data,
                        properties: &delivery.properties,
                        queue: &self.queue,
                        rejection,
                    };
                    broker::publish_dead_letter(channel, dead_letter_exchange, letter).await?;
                }
                Disposition::Requeue => {
                    let requeue = BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    };
                    settled(
                        delivery.acker.nack(requeue).await,
                        "handing a delivery back",
                    )?;
                }
                Disposition::Stored | Disposition::Retry(_) => {}
            }
        }
        self.ack().await?;
        broker::commit(channel).await?;
        for disposition in &self.dispositions {
            if let Disposition::DeadLetter(rejection) = disposition {
                metrics::dead_lettered(&self.queue, rejection.kind);
            }
        }
        metrics::acked(&self.queue, self.report.received - self.report.requeued);
        Ok(self.report)
    }
}

impl Settled {
    /// One `multiple` ack for the batch — unless a delivery of it is handed
    /// back, when a `multiple` ack would cover it too: then each is acked alone.
    async fn ack(&self) -> Result<(), BrokerError> {
        if self.report.requeued == 0 {
            if let Some(last) = self.deliveries.iter().max_by_key(|d| d.delivery_tag) {
                settled(
                    last.acker.ack(BasicAckOptions { multiple: true }).await,
                    "acking a batch",
                )?;
            }
            return Ok(());
        }
        for (delivery, disposition) in self.deliveries.iter().zip(&self.dispositions) {
            if !matches!(disposition, Disposition::Requeue) {
                settled(
                    delivery.acker.ack(BasicAckOptions::default()).await,
                    "acking a delivery",
                )?;
            }
        }
        Ok(())
    }
}

/// lapin answers `Ok(false)` without sending anything when the channel is gone.
fn settled(result: lapin::Result<bool>, doing: &'static str) -> Result<(), BrokerError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(BrokerError::ChannelClosed(doing)),
        Err(source) => Err(BrokerError::Channel { doing, source }),
    }
}
