//! Publishes ten messages to the queue `hello` and waits for each batch's confirm.
//!
//! ```text
//! cargo run -p ruuster-client --example publish -- [address]
//! ```
//! The address defaults to `$RUUSTER_ADDRESS`, then `127.0.0.1:5690`.

use std::time::{SystemTime, UNIX_EPOCH};

use ruuster_client::{Client, ClientError, ConnectOptions, Properties, PublishOptions};
use ruuster_client::{QueueOptions, ShortStr};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let connection = Client::connect(&ConnectOptions::new(address())).await?;
    let durable = QueueOptions {
        durable: true,
        ..QueueOptions::default()
    };
    connection.queue_declare("hello", &durable).await?;

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut confirms = Vec::new();
    for index in 0..10 {
        let properties = Properties {
            content_type: Some(ShortStr::from_static("text/plain")),
            message_id: Some(ShortStr::try_from(format!("hello-{index}")).unwrap()),
            timestamp_ms: Some(now_ms),
            ..Properties::default()
        };
        let body = properties
            .to_body(format!("hello number {index}").as_bytes())
            .unwrap();
        // The default exchange routes by queue name; the publish returns once it is queued.
        let options = PublishOptions::default();
        confirms.push(connection.publish("", "hello", body, &options).await?);
    }
    for confirm in confirms {
        let sequence = confirm.first();
        let confirmation = confirm.await?;
        println!("message {sequence}: {:?}", confirmation.ranges()[0].status);
    }
    connection.close().await
}

fn address() -> String {
    std::env::args()
        .nth(1)
        .or_else(|| std::env::var("RUUSTER_ADDRESS").ok())
        .unwrap_or_else(|| ruuster_client::DEFAULT_ADDRESS.to_owned())
}
