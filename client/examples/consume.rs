//! Consumes from the queue `hello`, printing and acknowledging each message, until ten messages
//! arrived or Ctrl-C.
//!
//! ```text
//! cargo run -p ruuster-client --example consume -- [address]
//! ```
//! The address defaults to `$RUUSTER_ADDRESS`, then `127.0.0.1:5690`.

use ruuster_client::{Client, ClientError, ConnectOptions, ConsumeOptions, QueueOptions};

/// Messages to take before exiting, so that the example ends on its own.
const MESSAGES_MAX: usize = 10;

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    // Landing on the queue's owner shard saves the broker a cross-shard hop per delivery.
    let options = ConnectOptions::new(address());
    let connection = match Client::connect_to_queue_owner(&options, "hello").await {
        Ok(connection) => connection,
        Err(_) => Client::connect(&options).await?,
    };
    let durable = QueueOptions {
        durable: true,
        ..QueueOptions::default()
    };
    connection.queue_declare("hello", &durable).await?;
    let mut consumer = connection
        .consume("hello", "", 10, &ConsumeOptions::default())
        .await?;
    println!(
        "consuming as {} on shard {}",
        consumer.tag(),
        connection.shard_index()
    );

    for _ in 0..MESSAGES_MAX {
        let delivery = tokio::select! {
            delivery = consumer.recv() => delivery,
            _ = tokio::signal::ctrl_c() => break,
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(end) => {
                println!("consumer ended: {end:?}");
                break;
            }
        };
        let payload = delivery.body.payload();
        println!(
            "#{} {:?}: {}",
            delivery.delivery_tag,
            delivery.body.message_id().map(|id| id.as_str()),
            String::from_utf8_lossy(&payload)
        );
        delivery.ack()?;
    }
    consumer.cancel().await?;
    connection.close().await
}

fn address() -> String {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("RUUSTER_ADDRESS").ok())
        .unwrap_or_else(|| ruuster_client::DEFAULT_ADDRESS.to_owned())
}
