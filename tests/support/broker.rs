//! Throwaway topologies on the real RabbitMQ: removing a test's or a bench's
//! queues and exchange when it is done. Declaring them is the worker's own
//! code (`Topology::declare`), never repeated here.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions, QueuePurgeOptions};
use zhima_worker::queue::Topology;

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
