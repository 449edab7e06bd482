//! Topic routing: a topic exchange `logs` with two queues, one bound to `*.error` and one to
//! `kernel.#`. Publishes a few keys as mandatory, reports the ones that matched no queue, then
//! shows what each queue received.
//!
//! ```text
//! cargo run -p ruuster-client --example topic_routing -- [address]
//! ```
//! The address defaults to `$RUUSTER_ADDRESS`, then `127.0.0.1:5690`.

use std::time::Duration;

use ruuster_client::{
    Client, ClientError, ConfirmStatus, ConnectOptions, ConsumeOptions, ExchangeKind,
    ExchangeOptions, PublishOptions, QueueOptions, Table,
};

/// How long to wait for more deliveries before deciding a queue is drained.
const QUIET: Duration = Duration::from_millis(500);

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let connection = Client::connect(&ConnectOptions::new(address())).await?;
    connection
        .exchange_declare("logs", ExchangeKind::Topic, &ExchangeOptions::default())
        .await?;
    let bindings = [("errors", "*.error"), ("kernel", "kernel.#")];
    for (queue, pattern) in bindings {
        connection
            .queue_declare(queue, &QueueOptions::default())
            .await?;
        connection
            .queue_bind(queue, "logs", pattern, &Table::new())
            .await?;
    }

    let keys = [
        "kernel.error",
        "app.error",
        "kernel.disk.warning",
        "app.info",
    ];
    let messages: Vec<(&str, _)> = keys
        .iter()
        .map(|key| {
            (
                *key,
                ruuster_client::body(format!("a {key} line").as_bytes()),
            )
        })
        .collect();
    let mandatory = PublishOptions {
        mandatory: true,
        ..PublishOptions::default()
    };
    let confirmation = connection
        .publish_batch("logs", &messages, &mandatory)
        .await?
        .await?;
    for returned in confirmation.returned() {
        println!("no queue for {}", returned.routing_key);
    }
    for range in confirmation.ranges() {
        if let ConfirmStatus::Rejected(code) = range.status {
            println!("messages {}..={} rejected: {code}", range.first, range.last);
        }
    }

    for (queue, pattern) in bindings {
        let mut consumer = connection
            .consume(queue, "", 10, &ConsumeOptions::default())
            .await?;
        while let Ok(Ok(delivery)) = tokio::time::timeout(QUIET, consumer.recv()).await {
            println!("{queue} ({pattern}) got {}", delivery.routing_key);
            delivery.ack()?;
        }
        consumer.cancel().await?;
    }
    connection.close().await
}

fn address() -> String {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("RUUSTER_ADDRESS").ok())
        .unwrap_or_else(|| ruuster_client::DEFAULT_ADDRESS.to_owned())
}
