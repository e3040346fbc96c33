//! Throwaway topologies on the real RabbitMQ: unique names for a test's
//! exchange and queues, and removing them when it is done. Declaring them is the worker's own
//! code (`Topology::declare`), never repeated here.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions, QueuePurgeOptions};
use zhima_worker::queue::Topology;

/// A test's own exchange and queues (`t_<random>.jobs`, `.verify`,
/// `.verify.dead`), with the topology the worker builds from those names.
pub struct UniqueQueues {
    pub exchange: String,
    pub queue: String,
    pub dead_queue: String,
    pub topology: Topology,
}

pub fn unique_queues() -> UniqueQueues {
    use rand::Rng;
    let tag: String = rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(12)
        .map(char::from)
        .collect();
    let (exchange, queue) = (format!("t_{tag}.jobs"), format!("t_{tag}.verify"));
    let dead_queue = format!("{queue}.dead");
    let mut settings = zhima_worker::config::load(None).expect("default settings");
    settings.amqp.exchange.clone_from(&exchange);
    settings.amqp.queue.clone_from(&queue);
    settings.amqp.dead_queue.clone_from(&dead_queue);
    let topology = Topology::from_settings(&settings).expect("topology");
    UniqueQueues {
        exchange,
        queue,
        dead_queue,
        topology,
    }
}

/// Purges and deletes the main, dead and delay queues and the exchange, best
/// effort: a run that already has its result should not fail on clean-up.
pub async fn delete_topology(channel: &lapin::Channel, topology: &Topology) {
    let mut names = vec![
        topology.names.queue.clone(),
        topology.names.dead_queue.clone(),
    ];
    names.extend(topology.delay_queues());
    for name in names {
        let _ = channel
            .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
            .await;
        let _ = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            topology.names.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
}
