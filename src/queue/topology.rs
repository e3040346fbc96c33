//! Declares the exchange, the main queue, one delay queue per retry tier,
//! the dead queue and (when result events are on) the results exchange,
//! idempotently (declaring again with the same arguments is a
//! no-op for the broker).
//!
//! Retries are delayed without a plugin: each delay queue has a fixed
//! `x-message-ttl` and dead-letters back to the exchange with the main queue's
//! routing key. Quorum queues use at-least-once dead-lettering (which needs
//! `x-overflow=reject-publish`), so a job in transit between queues is not lost.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::{QueueError, QueueNames, short};
use crate::config::{AmqpSettings, QueueType, Settings};
use crate::retry::RetryPolicy;

/// The declared names plus the delay tiers they were declared for.
#[derive(Debug, Clone)]
pub struct Topology {
    pub names: QueueNames,
    pub(crate) delays: Vec<Duration>,
    /// The durable topic exchange of result events; None when they are off.
    pub(crate) results_exchange: Option<String>,
}

impl Topology {
    pub(crate) fn new(names: QueueNames, delays: &[Duration]) -> Self {
        Self {
            names,
            delays: delays.to_vec(),
            results_exchange: None,
        }
    }

    /// Also declares the results exchange `name` (empty = none).
    pub(crate) fn with_results_exchange(mut self, name: &str) -> Self {
        self.results_exchange = (!name.is_empty()).then(|| name.to_owned());
        self
    }

    /// The topology `run` and `enqueue` declare for these settings: one delay
    /// queue per retry tier.
    pub fn from_settings(settings: &Settings) -> Result<Self, QueueError> {
        Ok(Self::for_policy(&settings.amqp, &settings.retry_policy()?)
            .with_results_exchange(&settings.results.exchange))
    }

    /// The topology for the policy the caller already built (`run` shares
    /// the same policy with the processor).
    pub(crate) fn for_policy(settings: &AmqpSettings, policy: &RetryPolicy) -> Self {
        Self::new(QueueNames::from_settings(settings), policy.tiers())
    }

    /// Each delay queue's name with its delay.
    pub(crate) fn delay_tiers(&self) -> impl Iterator<Item = (String, Duration)> + '_ {
        self.delays
            .iter()
            .map(|delay| (self.names.delay_queue(*delay), *delay))
    }

    pub fn delay_queues(&self) -> Vec<String> {
        self.delays
            .iter()
            .map(|delay| self.names.delay_queue(*delay))
            .collect()
    }

    /// Declares everything. A queue that already exists with other arguments
    /// makes the broker close the channel with PRECONDITION_FAILED: change the
    /// names in config (or delete the old queue) rather than the arguments.
    pub async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        let names = &self.names;
        channel
            .exchange_declare(
                short(&names.exchange)?,
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(QueueError::broker("exchange.declare"))?;
        declare_queue(channel, &names.dead_queue, self.base_arguments()).await?;
        let mut main = self.base_arguments();
        main.insert(
            short("x-dead-letter-exchange")?,
            AMQPValue::LongString(LongString::from("")),
        );
        main.insert(
            short("x-dead-letter-routing-key")?,
            AMQPValue::LongString(LongString::from(names.dead_queue.as_str())),
        );
        if names.queue_type == QueueType::Quorum {
            main.insert(
                short("x-delivery-limit")?,
                AMQPValue::LongLongInt(names.delivery_limit.into()),
            );
        }
        declare_queue(channel, &names.queue, main).await?;
        channel
            .queue_bind(
                short(&names.queue)?,
                short(&names.exchange)?,
                short(names.routing_key())?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(QueueError::broker("queue.bind"))?;
        for delay in &self.delays {
            self.declare_delay_queue(channel, *delay).await?;
        }
        if let Some(results) = &self.results_exchange {
            declare_results_exchange(channel, results).await?;
        }
        Ok(())
    }

    async fn declare_delay_queue(
        &self,
        channel: &Channel,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let names = &self.names;
        let mut arguments = self.base_arguments();
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        arguments.insert(short("x-message-ttl")?, AMQPValue::LongLongInt(ttl));
        arguments.insert(
            short("x-dead-letter-exchange")?,
            AMQPValue::LongString(LongString::from(names.exchange.as_str())),
        );
        arguments.insert(
            short("x-dead-letter-routing-key")?,
            AMQPValue::LongString(LongString::from(names.routing_key())),
        );
        declare_queue(channel, &names.delay_queue(delay), arguments).await
    }

    fn base_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.names.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
            arguments.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString(LongString::from("at-least-once")),
            );
            arguments.insert(
                "x-overflow".into(),
                AMQPValue::LongString(LongString::from("reject-publish")),
            );
        }
        arguments
    }
}

/// The durable topic exchange result events are published to; consumers
/// bind their own queues to it (`relation.*`, `batch.completed`, `#`).
pub(crate) async fn declare_results_exchange(
    channel: &Channel,
    name: &str,
) -> Result<(), QueueError> {
    channel
        .exchange_declare(
            short(name)?,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(QueueError::broker("exchange.declare"))?;
    Ok(())
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), QueueError> {
    channel
        .queue_declare(
            short(name)?,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(QueueError::broker("queue.declare"))?;
    Ok(())
}

/// Ready messages in a queue (passive declare: fails if it does not exist).
pub async fn ready_messages(channel: &Channel, name: &str) -> Result<u32, QueueError> {
    let queue = channel
        .queue_declare(
            short(name)?,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(QueueError::broker("queue.declare passive"))?;
    Ok(queue.message_count())
}
