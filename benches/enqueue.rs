//! Throughput of `enqueue`: validation plus confirmed, persistent publishing.
//!
//! `cargo bench --bench enqueue` generates 50 000 valid jobs as JSON Lines and
//! sends them through the library path the `enqueue` command uses
//! (`zhima_worker::queue::enqueue::enqueue`) into a uniquely named exchange
//! and queues in vhost `/` of the local RabbitMQ (127.0.0.1:5672, guest/guest,
//! or `AMQP_URL`), prints `enqueue: N jobs/s`, and deletes what it declared.
//! `BENCH_JOBS` changes the number of jobs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Cursor;
use std::time::Instant;

use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use zhima_worker::config::Settings;
use zhima_worker::queue::Topology;
use zhima_worker::queue::enqueue::{self, EnqueueOptions, InputFormat};

const DEFAULT_JOBS: usize = 50_000;

/// An 18-digit ID with a correct check character, different per index.
fn cert_no(index: usize) -> String {
    support::with_check_character(&format!(
        "1101051980{:02}{:02}{:03}",
        index % 12 + 1,
        index % 28 + 1,
        index % 1000
    ))
}

fn jobs(count: usize) -> Vec<u8> {
    let mut text = String::with_capacity(count * 260);
    for i in 0..count {
        text.push_str(&format!(
            r#"{{"transaction_id":"bench_{i:08}","cert_no":"{}","name":"张三","relation_phone":"158{:08}","relation_name":"李四","relation":"family","external_ref":"loan-{}/contact-{}"}}"#,
            cert_no(i),
            i % 100_000_000,
            i / 3,
            i % 3 + 1
        ));
        text.push('\n');
    }
    text.into_bytes()
}

fn settings(tag: &str) -> Settings {
    let mut settings = zhima_worker::config::load(None).unwrap();
    settings.amqp.exchange = format!("bench_{tag}.jobs");
    settings.amqp.queue = format!("bench_{tag}.verify");
    settings.amqp.dead_queue = format!("bench_{tag}.verify.dead");
    settings
}

async fn delete_topology(settings: &Settings) {
    let topology = Topology::from_settings(settings).unwrap();
    let url = settings.amqp.url.expose_secret();
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    support::broker::delete_topology(&channel, &topology).await;
    let _ = connection.close(200, "bench done".into()).await;
}

fn main() {
    let count = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_JOBS);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = settings(&format!("{}_{}", std::process::id(), rand::random::<u32>()));
    let input = Box::new(Cursor::new(jobs(count)));
    let started = Instant::now();
    let outcome = runtime.block_on(enqueue::enqueue(
        input,
        InputFormat::Jsonl,
        &settings,
        &EnqueueOptions::default(),
        &mut |_| {},
    ));
    let elapsed = started.elapsed();
    runtime.block_on(delete_topology(&settings));
    let report = outcome.unwrap();
    assert_eq!(report.published, count as u64, "{report:?}");
    assert_eq!(report.invalid, 0, "{report:?}");
    let rate = count as f64 / elapsed.as_secs_f64();
    println!(
        "enqueue: {rate:.0} jobs/s ({count} jobs in {:.2} s, window {}, queue type {:?})",
        elapsed.as_secs_f64(),
        enqueue::DEFAULT_WINDOW,
        settings.amqp.queue_type
    );
}
