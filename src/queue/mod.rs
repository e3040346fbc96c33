//! Everything that speaks AMQP: the topology, the confirmed publisher, the
//! consume sessions of `run` (reconnects, pause hand-back, `--until-idle`),
//! the consumer's delivery handling, and the operator commands that move
//! messages (`enqueue`, `status`, `requeue-dead`).
//!
//! This module knows queue names and headers; it does not decide outcomes
//! (that is `processor`) and runs no SQL.

pub(crate) mod admin;
pub(crate) mod consumer;
pub(crate) mod dead;
pub mod enqueue;
pub mod publisher;
pub(crate) mod session;
pub(crate) mod status;
pub mod topology;

use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};
use secrecy::ExposeSecret;

use crate::config::{AmqpSettings, QueueType};

pub use publisher::Publisher;
pub use topology::Topology;

/// The attempt this delivery represents (1 = first call). Our own counter:
/// quorum queues' `x-delivery-count` changed meaning in RabbitMQ 4.
pub const ATTEMPT_HEADER: &str = "x-zhima-attempt";
/// How many of the attempts so far were throttled (40005): they do not count
/// against `retry.max_attempts`.
pub(crate) const THROTTLED_HEADER: &str = "x-zhima-throttled";
/// Why a message was dead-lettered, for humans and `requeue-dead`.
pub const ERROR_HEADER: &str = "x-zhima-error";
/// When the worker dead-lettered a message (RFC 3339, UTC): `purge` removes
/// dead messages older than `retention.dead_letter_days` by it.
pub const DEAD_AT_HEADER: &str = "x-zhima-dead-lettered-at";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("could not connect to the broker at amqp.url")]
    Connect(#[source] lapin::Error),
    /// The TLS handshake of an `amqps://` URL failed (a certificate that
    /// does not verify, a port without TLS): retrying cannot help.
    #[error(
        "TLS to the broker (amqp.url) failed: {reason}; trusted: the system's roots and \
         amqp.tls_ca_path"
    )]
    Tls {
        reason: String,
        #[source]
        source: lapin::Error,
    },
    /// `amqp.tls_ca_path` changed since start-up checked it.
    #[error("amqp.tls_ca_path: {0}")]
    CaFile(#[source] crate::tls::CaFileError),
    /// The broker answered but will not have us: retrying cannot help.
    #[error("the broker refused the connection: {reason}")]
    Refused {
        reason: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("broker operation {operation} failed")]
    Broker {
        operation: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker refused the message published to {target:?} (nack or unroutable)")]
    NotConfirmed { target: String },
    #[error("the broker cancelled our consumer (queue deleted or node going down)")]
    ConsumerCancelled,
    #[error("invalid queue name {0:?}")]
    InvalidName(String),
    /// Only for settings edited after [`crate::config::load`], which checks them.
    #[error("the settings do not describe a valid topology")]
    Settings(#[from] crate::config::ConfigError),
}

impl QueueError {
    pub(crate) fn broker(operation: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Broker { operation, source }
    }

    /// Our credentials or vhost are wrong: fatal at start-up (a worker that
    /// has been connected keeps reconnecting, as for any other loss).
    pub(crate) fn is_refused(&self) -> bool {
        matches!(
            self,
            Self::Refused { .. } | Self::Tls { .. } | Self::CaFile(_)
        )
    }
}

/// AMQP reply codes of a broker that will not have us.
const ACCESS_REFUSED: u16 = 403;
const NOT_ALLOWED: u16 = 530;

/// Why the broker refused a connection, when it did (as opposed to being
/// unreachable or failing): wrong user or password, no permission on the
/// vhost, or a vhost that does not exist.
fn refusal(error: &lapin::Error) -> Option<&'static str> {
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    match amqp.get_id() {
        ACCESS_REFUSED => Some(
            "ACCESS_REFUSED: check the user and password in amqp.url \
             and the user's permissions on its vhost",
        ),
        NOT_ALLOWED => {
            Some("NOT_ALLOWED: the vhost in amqp.url does not exist or is not open to this user")
        }
        _ => None,
    }
}

/// The names of everything the worker declares, derived from settings.
#[derive(Debug, Clone)]
pub struct QueueNames {
    pub exchange: String,
    pub queue: String,
    pub dead_queue: String,
    pub(crate) queue_type: QueueType,
    pub(crate) delivery_limit: u32,
}

impl QueueNames {
    pub(crate) fn from_settings(settings: &AmqpSettings) -> Self {
        Self {
            exchange: settings.exchange.clone(),
            queue: settings.queue.clone(),
            dead_queue: settings.dead_queue.clone(),
            queue_type: settings.queue_type,
            delivery_limit: settings.delivery_limit,
        }
    }

    /// The main queue's routing key on `exchange` is its own name.
    pub(crate) fn routing_key(&self) -> &str {
        &self.queue
    }

    /// One delay queue per retry tier, named by its TTL.
    pub fn delay_queue(&self, delay: Duration) -> String {
        format!("{}.delay.{}", self.queue, delay.as_millis())
    }
}

/// Opens a connection named after this process, so operators can tell
/// replicas apart in `rabbitmqctl list_connections`. An `amqps://` URL
/// connects over TLS (rustls), trusting the system's roots and the
/// certificates of `amqp.tls_ca_path`.
pub async fn connect(settings: &AmqpSettings, role: &str) -> Result<Connection, QueueError> {
    let name = format!("zhima-worker {role} pid {}", std::process::id());
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let mut tls = OwnedTLSConfig::default();
    if let Some(path) = settings.tls_ca_path() {
        let bundle = crate::tls::read_ca_file(path).map_err(QueueError::CaFile)?;
        tls.cert_chain = Some(bundle.pem);
    }
    DefaultConnectionBuilder::new()
        .map_err(QueueError::Connect)?
        .with_uri_str(settings.url.expose_secret().to_owned())
        .with_properties(properties)
        .with_tls_config(tls)
        .connect()
        .await
        .map_err(|source| {
            if let Some(reason) = refusal(&source) {
                QueueError::Refused { reason, source }
            } else if let Some(reason) = crate::tls::handshake_failure(&source) {
                QueueError::Tls { reason, source }
            } else {
                QueueError::Connect(source)
            }
        })
}

pub(crate) fn short(name: &str) -> Result<ShortString, QueueError> {
    ShortString::try_new(name).map_err(|_| QueueError::InvalidName(name.to_owned()))
}

/// Reads a non-negative integer header, whatever integer type the producer used.
pub fn header_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = headers?.inner().get(name)?;
    let number: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::LongString(v) => std::str::from_utf8(v.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(v) => v.as_str().trim().parse().ok()?,
        _ => return None,
    };
    u32::try_from(number).ok()
}
