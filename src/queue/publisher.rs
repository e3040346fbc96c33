//! Publishing with publisher confirms: a message counts as handed over only
//! when the broker has confirmed it, so the caller may then ack the delivery
//! it came from. Messages are persistent and `mandatory`: an unroutable
//! message (a queue deleted behind our back) is an error, not a silent drop;
//! only result events are not mandatory (nobody bound is fine).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};

use super::{QueueError, QueueNames, short};

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// A confirm-mode channel. Clones share the channel; lapin serialises frames.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    /// Shown by the broker's tools; we use the transaction_id (never PII).
    pub(crate) message_id: Option<&'a str>,
    pub(crate) headers: FieldTable,
    /// An unroutable message is an error (true), or dropped by the broker
    /// (false: result events nobody has bound a queue for).
    pub(crate) mandatory: bool,
}

impl<'a> Outgoing<'a> {
    /// A job for the main queue.
    pub fn job(names: &'a QueueNames, body: &'a [u8], transaction_id: Option<&'a str>) -> Self {
        Self {
            exchange: &names.exchange,
            routing_key: names.routing_key(),
            body,
            message_id: transaction_id,
            headers: FieldTable::default(),
            mandatory: true,
        }
    }

    /// Straight into a queue through the default exchange.
    pub(crate) fn to_queue(
        queue: &'a str,
        body: &'a [u8],
        transaction_id: Option<&'a str>,
    ) -> Self {
        Self {
            exchange: "",
            routing_key: queue,
            body,
            message_id: transaction_id,
            headers: FieldTable::default(),
            mandatory: true,
        }
    }

    /// A result event for the results exchange: not mandatory, since having
    /// nobody bound to the exchange is fine (the broker drops it).
    pub(crate) fn result_event(
        exchange: &'a str,
        routing_key: &'a str,
        body: &'a [u8],
        message_id: &'a str,
    ) -> Self {
        Self {
            exchange,
            routing_key,
            body,
            message_id: Some(message_id),
            headers: FieldTable::default(),
            mandatory: false,
        }
    }

    pub(crate) fn with_header(mut self, name: &str, value: AMQPValue) -> Self {
        self.headers.insert(name.into(), value);
        self
    }

    pub(crate) fn with_text_header(self, name: &str, value: &str) -> Self {
        self.with_header(name, AMQPValue::LongString(LongString::from(value)))
    }

    pub(crate) fn with_number_header(self, name: &str, value: u32) -> Self {
        self.with_header(name, AMQPValue::LongLongInt(value.into()))
    }
}

impl Publisher {
    pub async fn open(connection: &Connection) -> Result<Self, QueueError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(QueueError::broker("channel.open"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(QueueError::broker("confirm.select"))?;
        Ok(Self { channel })
    }

    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<(), QueueError> {
        let target = describe(&message);
        let confirm = self.send(message).await?;
        Self::confirmed(confirm, target).await
    }

    /// Publishes without waiting: pair with [`Publisher::confirmed`] to
    /// pipeline many messages (used by `enqueue`).
    pub async fn send(&self, message: Outgoing<'_>) -> Result<PublisherConfirm, QueueError> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_headers(message.headers);
        if let Some(id) = message.message_id {
            properties = properties.with_message_id(short(id)?);
        }
        self.channel
            .basic_publish(
                short(message.exchange)?,
                short(message.routing_key)?,
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..BasicPublishOptions::default()
                },
                message.body,
                properties,
            )
            .await
            .map_err(QueueError::broker("basic.publish"))
    }

    /// Waits for one confirm; a nack or a returned (unroutable) message fails.
    pub async fn confirmed(confirm: PublisherConfirm, target: String) -> Result<(), QueueError> {
        let confirmation = confirm
            .await
            .map_err(QueueError::broker("publisher confirm"))?;
        if confirmation.is_ack() && confirmation.take_message().is_none() {
            Ok(())
        } else {
            Err(QueueError::NotConfirmed { target })
        }
    }
}

pub(crate) fn describe(message: &Outgoing<'_>) -> String {
    if message.exchange.is_empty() {
        format!("queue {}", message.routing_key)
    } else {
        format!("exchange {} key {}", message.exchange, message.routing_key)
    }
}
