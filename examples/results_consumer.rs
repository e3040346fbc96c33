//! A minimal consumer of zhima-worker's result events: binds a queue of its
//! own to the results exchange and prints each result as it arrives.
//!
//! ```text
//! cargo run --example results_consumer                  # queue zhima.results.example
//! cargo run --example results_consumer -- my.queue      # another queue name
//! AMQP_URL=amqp://user:pass@host:5672/%2f RESULTS_EXCHANGE=zhima.results \
//!     cargo run --example results_consumer
//! ```
//!
//! Delivery is at least once: the same event may arrive twice (a relay that
//! crashed after the broker confirmed, before it marked the row sent), so a
//! consumer dedupes by `message_id` (the transaction_id, or the batch id for
//! `batch.completed`). This example keeps the ids seen in memory; a real
//! consumer records them with the result it stores, in one transaction.

use std::collections::HashSet;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let exchange = std::env::var("RESULTS_EXCHANGE").unwrap_or_else(|_| "zhima.results".to_owned());
    let queue = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "zhima.results.example".to_owned());

    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .context("connecting to the broker (AMQP_URL)")?;
    let channel = connection.create_channel().await?;
    // The same declaration as the worker's (durable topic): whoever comes
    // first creates it, and declaring it again changes nothing.
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .context("declaring the results exchange")?;
    // A durable queue keeps events while this consumer is down; bind it
    // before the first job becomes final, or those events are dropped.
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), queue_options, FieldTable::default())
        .await?;
    for routing_key in ["relation.succeeded", "relation.failed", "batch.completed"] {
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "results-example".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!("waiting for results on {queue} (bound to {exchange}); Ctrl-C to stop");

    let mut seen = HashSet::new();
    loop {
        let delivery = tokio::select! {
            next = consumer.next() => match next {
                Some(delivery) => delivery?,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        let routing_key = delivery.routing_key.as_str().to_owned();
        if seen.insert((routing_key.clone(), message_id.clone())) {
            match serde_json::from_slice::<serde_json::Value>(&delivery.data) {
                Ok(event) => print_event(&routing_key, &event),
                Err(error) => eprintln!("{message_id}: not JSON ({error}); skipped"),
            }
        } else {
            eprintln!("{message_id}: duplicate delivery, already handled");
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    connection.close(200, "bye".into()).await?;
    Ok(())
}

fn print_event(routing_key: &str, event: &serde_json::Value) {
    let text = |key: &str| event[key].as_str().unwrap_or("-").to_owned();
    if routing_key == "batch.completed" {
        println!(
            "batch {} completed: {} jobs, {} succeeded, {} failed",
            text("batch_id"),
            event["size"],
            event["succeeded"],
            event["failed"]
        );
        return;
    }
    match event["status"].as_str() {
        Some("succeeded") => println!(
            "{} ({}): rank {}, recency {}, score {}, biz_no {}",
            text("transaction_id"),
            text("external_ref"),
            text("relation_rank"),
            text("recency"),
            event["relation_score"],
            text("biz_no"),
        ),
        _ => println!(
            "{} ({}): failed {}: {}",
            text("transaction_id"),
            text("external_ref"),
            text("error_code"),
            text("error_message"),
        ),
    }
}
