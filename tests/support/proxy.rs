//! A TCP forwarder a test switches at run time, to cut a worker off from a
//! dependency (its database, its gateway) and restore or redirect it. Only
//! for tests; it forwards bytes and looks at none of them.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::worker::TestWorker;

/// The PostgreSQL server the tests use.
pub fn postgres_addr() -> SocketAddr {
    "127.0.0.1:5432".parse().expect("address")
}

/// A TCP forwarder on a free local port whose target the test switches:
/// `None` cuts (open connections dropped, new ones closed at once),
/// `Some(addr)` sends new connections there, and any change drops the open
/// ones, so a client's kept-alive connection cannot keep reaching the old
/// target. Returns the port and the switch.
pub async fn switchable_proxy(
    target: Option<SocketAddr>,
) -> (u16, watch::Sender<Option<SocketAddr>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (switch, _) = watch::channel(target);
    let targets = switch.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let mut changes = targets.subscribe();
            let Some(target) = *changes.borrow_and_update() else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {},
                    _ = changes.changed() => {},
                }
            });
        }
    });
    (port, switch)
}

/// Points the worker's `DATABASE_URL` at a [`switchable_proxy`] to
/// PostgreSQL; the switch cuts the database (`None`) and restores it
/// (`Some(postgres_addr())`).
pub async fn database_through_switch(worker: &mut TestWorker) -> watch::Sender<Option<SocketAddr>> {
    let (port, switch) = switchable_proxy(Some(postgres_addr())).await;
    let via_proxy = worker
        .database_url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    worker.env.insert("DATABASE_URL".into(), via_proxy);
    switch
}
