//! A work queue: one publisher, two workers sharing the durable queue `tasks` with prefetch 1, so
//! a busy worker gets no new task until it acknowledges the last one. Each task's dots are seconds
//! of (pretend) work, divided by ten.
//!
//! ```text
//! cargo run -p ruuster-client --example work_queue -- [address]
//! ```
//! The address defaults to `$RUUSTER_ADDRESS`, then `127.0.0.1:5690`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ruuster_client::{
    Client, ClientError, ConnectOptions, Connection, ConsumeOptions, PublishOptions, QueueOptions,
};

const TASKS: [&str; 6] = ["one.", "two..", "three...", "four.", "five..", "six."];

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let connection = Client::connect(&ConnectOptions::new(address())).await?;
    let durable = QueueOptions {
        durable: true,
        ..QueueOptions::default()
    };
    connection.queue_declare("tasks", &durable).await?;

    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = ["worker-1", "worker-2"]
        .into_iter()
        .map(|name| tokio::spawn(work(connection.clone(), name, done.clone())))
        .collect();

    // Fsynced (the default): a confirmed task survives a power loss of the broker.
    let messages: Vec<(&str, _)> = TASKS
        .iter()
        .map(|task| ("tasks", ruuster_client::body(task.as_bytes())))
        .collect();
    let confirmation = connection
        .publish_batch("", &messages, &PublishOptions::default())
        .await?
        .await?;
    println!(
        "{} tasks stored at {:?}",
        TASKS.len(),
        confirmation.stored()
    );

    for worker in workers {
        worker.await.expect("worker panicked")?;
    }
    connection.close().await
}

/// Takes tasks until all of them are done.
async fn work(
    connection: Connection,
    name: &str,
    done: Arc<AtomicUsize>,
) -> Result<(), ClientError> {
    let mut consumer = connection
        .consume("tasks", name, 1, &ConsumeOptions::default())
        .await?;
    while done.load(Ordering::SeqCst) < TASKS.len() {
        let delivery = tokio::select! {
            delivery = consumer.recv() => delivery,
            // Another worker may take the last task; look at the count again now and then.
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let Ok(delivery) = delivery else { break };
        let task = String::from_utf8_lossy(&delivery.body.payload()).into_owned();
        let dots = task.matches('.').count() as u64;
        tokio::time::sleep(Duration::from_millis(100 * dots)).await;
        delivery.ack()?;
        done.fetch_add(1, Ordering::SeqCst);
        println!("{name} did {task}");
    }
    consumer.cancel().await
}

fn address() -> String {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("RUUSTER_ADDRESS").ok())
        .unwrap_or_else(|| ruuster_client::DEFAULT_ADDRESS.to_owned())
}
