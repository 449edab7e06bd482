//! The AMQP 0-9-1 driver (RabbitMQ), through lapin on the tokio runtime, TLS off.
//!
//! Publishing: lapin resolves each `basic_publish` once its frames are queued and hands back a
//! future for the confirm. Awaiting publishes one at a time costs a cross-thread wake-up per
//! message (about 28k msg/s on this VM, shared/research/anchors-performance.md), so a batch is
//! published as concurrent futures, and the confirm futures go to a per-producer task that
//! reports them to the core in order, coalescing the ones already resolved into ranges.
//!
//! Durability: AMQP has no `written` level. `memory` and `written` use transient queues and
//! messages (delivery mode 1), which RabbitMQ confirms once the queue process has them;
//! `fsynced` uses durable queues and persistent messages (delivery mode 2), which it confirms
//! after its fsync. Quorum and stream queues are always durable.

use futures_lite::StreamExt;
use futures_util::FutureExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use lapin::{PublisherConfirm, message};
use tokio::sync::mpsc;

use super::reorder::TagOrder;
use super::{
    BrokerCounter, ConfirmOutcome, ConfirmRange, ConfirmSink, ConnectionPlacement, ConnectionSpec,
    Consumer, ConsumerSpec, Delivery, Driver, DriverError, Durability, ExchangeKind, Producer,
    ProducerSpec, PublishBatch, Topology,
};
use crate::config::{AmqpConfig, AmqpQueueType};

/// AMQP delivery modes (0-9-1 spec, basic properties).
const DELIVERY_MODE_TRANSIENT: u8 = 1;
const DELIVERY_MODE_PERSISTENT: u8 = 2;
/// Deliveries buffered between per-queue subscriptions and a consumer that reads several queues;
/// the broker's prefetch already bounds what is in flight, this only stops a burst from growing
/// the buffer past it.
const MERGED_DELIVERY_BUFFER_MAX: usize = 65_536;

fn protocol(operation: &'static str) -> impl FnOnce(lapin::Error) -> DriverError {
    move |error| DriverError::Protocol {
        operation,
        detail: error.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct AmqpDriver {
    config: AmqpConfig,
}

impl AmqpDriver {
    pub fn new(config: AmqpConfig) -> Self {
        AmqpDriver { config }
    }

    fn durable(&self, topology: &Topology) -> bool {
        topology.durable || self.config.queue_type != AmqpQueueType::Classic
    }

    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        let queue_type = match self.config.queue_type {
            AmqpQueueType::Classic => "classic",
            AmqpQueueType::Quorum => "quorum",
            AmqpQueueType::Stream => "stream",
        };
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(queue_type)),
        );
        arguments
    }

    /// The address part of the URI, for the report; credentials are never recorded.
    fn address(&self) -> String {
        let without_scheme = self
            .config
            .uri
            .split("://")
            .nth(1)
            .unwrap_or(&self.config.uri);
        let host_part = without_scheme.rsplit('@').next().unwrap_or(without_scheme);
        host_part.split('/').next().unwrap_or(host_part).to_owned()
    }
}

#[derive(Debug)]
pub struct AmqpConnection {
    connection: Connection,
}

impl Driver for AmqpDriver {
    type Connection = AmqpConnection;
    type Producer = AmqpProducer;
    type Consumer = AmqpConsumer;

    fn name(&self) -> &'static str {
        "amqp"
    }

    async fn connect(&self, _spec: &ConnectionSpec) -> Result<AmqpConnection, DriverError> {
        let connection = Connection::connect(&self.config.uri, ConnectionProperties::default())
            .await
            .map_err(|error| DriverError::Connect {
                address: self.address(),
                detail: error.to_string(),
            })?;
        Ok(AmqpConnection { connection })
    }

    fn describe_connection(
        &self,
        spec: &ConnectionSpec,
        _connection: &AmqpConnection,
    ) -> ConnectionPlacement {
        ConnectionPlacement {
            role: spec.role,
            index: spec.index,
            address: self.address(),
            shard: None,
        }
    }

    async fn declare(
        &self,
        connection: &AmqpConnection,
        topology: &Topology,
    ) -> Result<(), DriverError> {
        let channel = connection
            .connection
            .create_channel()
            .await
            .map_err(protocol("channel.open"))?;
        let durable = self.durable(topology);
        let exchange: ShortString = topology.exchange_name.clone().into();

        // A queue left by an earlier run may hold messages or have another type; RabbitMQ answers
        // queue.delete of a missing queue with delete-ok, so this is safe on a fresh broker.
        for queue in &topology.queues {
            channel
                .queue_delete(queue.name.clone().into(), QueueDeleteOptions::default())
                .await
                .map_err(protocol("queue.delete"))?;
        }
        channel
            .exchange_delete(exchange.clone(), ExchangeDeleteOptions::default())
            .await
            .map_err(protocol("exchange.delete"))?;

        let kind = match topology.exchange_kind {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        };
        let exchange_options = ExchangeDeclareOptions {
            durable,
            ..Default::default()
        };
        channel
            .exchange_declare(
                exchange.clone(),
                kind,
                exchange_options,
                FieldTable::default(),
            )
            .await
            .map_err(protocol("exchange.declare"))?;

        let queue_options = QueueDeclareOptions {
            durable,
            ..Default::default()
        };
        for queue in &topology.queues {
            channel
                .queue_declare(
                    queue.name.clone().into(),
                    queue_options,
                    self.queue_arguments(),
                )
                .await
                .map_err(protocol("queue.declare"))?;
            channel
                .queue_bind(
                    queue.name.clone().into(),
                    exchange.clone(),
                    queue.binding_key.clone().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(protocol("queue.bind"))?;
        }
        channel
            .close(200, "declared".into())
            .await
            .map_err(protocol("channel.close"))?;
        Ok(())
    }

    async fn open_producer(
        &self,
        connection: &AmqpConnection,
        spec: &ProducerSpec,
        confirms: ConfirmSink,
    ) -> Result<AmqpProducer, DriverError> {
        let channel = connection
            .connection
            .create_channel()
            .await
            .map_err(protocol("channel.open"))?;
        let pending = if spec.confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(protocol("confirm.select"))?;
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(report_confirms(receiver, confirms));
            Some(sender)
        } else {
            None
        };
        let delivery_mode = match spec.durability {
            Durability::Memory | Durability::Written => DELIVERY_MODE_TRANSIENT,
            Durability::Fsynced => DELIVERY_MODE_PERSISTENT,
        };
        Ok(AmqpProducer {
            channel,
            exchange: spec.exchange_name.clone().into(),
            properties: BasicProperties::default().with_delivery_mode(delivery_mode),
            pending,
        })
    }

    async fn open_consumer(
        &self,
        connection: &AmqpConnection,
        spec: &ConsumerSpec,
    ) -> Result<AmqpConsumer, DriverError> {
        let channel = connection
            .connection
            .create_channel()
            .await
            .map_err(protocol("channel.open"))?;
        channel
            .basic_qos(spec.prefetch, BasicQosOptions::default())
            .await
            .map_err(protocol("basic.qos"))?;
        let options = BasicConsumeOptions {
            no_ack: spec.auto_ack,
            ..Default::default()
        };
        let mut subscriptions = Vec::with_capacity(spec.queues.len());
        for (position, queue) in spec.queues.iter().enumerate() {
            let tag = format!("loadgen-consumer-{}-{position}", spec.index);
            let subscription = channel
                .basic_consume(
                    queue.clone().into(),
                    tag.into(),
                    options,
                    FieldTable::default(),
                )
                .await
                .map_err(protocol("basic.consume"))?;
            subscriptions.push(subscription);
        }

        let source = if subscriptions.len() == 1 {
            DeliverySource::Single(subscriptions.pop().expect("one subscription"))
        } else {
            // Several queues: one forwarding task per subscription, and the merged deliveries put
            // back in tag order so that the core's cumulative acks cover only what it received
            // (see `reorder`). The channel is this consumer's alone, so its tags are all ours.
            let unacked_max = usize::from(spec.prefetch).saturating_mul(subscriptions.len());
            let capacity = unacked_max.clamp(1, MERGED_DELIVERY_BUFFER_MAX);
            let (sender, receiver) = mpsc::channel(capacity);
            for mut subscription in subscriptions {
                let sender = sender.clone();
                tokio::spawn(async move {
                    while let Some(delivery) = subscription.next().await {
                        if sender.send(delivery).await.is_err() {
                            break;
                        }
                    }
                });
            }
            DeliverySource::Merged {
                receiver,
                order: TagOrder::new(unacked_max),
            }
        };
        Ok(AmqpConsumer { channel, source })
    }

    async fn counters(
        &self,
        connection: &AmqpConnection,
        topology: &Topology,
    ) -> Result<Vec<BrokerCounter>, DriverError> {
        let channel = connection
            .connection
            .create_channel()
            .await
            .map_err(protocol("channel.open"))?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut ready_count = 0u64;
        for queue in &topology.queues {
            let declared = channel
                .queue_declare(queue.name.clone().into(), options, FieldTable::default())
                .await
                .map_err(protocol("queue.declare passive"))?;
            ready_count += u64::from(declared.message_count());
        }
        channel
            .close(200, "counted".into())
            .await
            .map_err(protocol("channel.close"))?;
        Ok(vec![BrokerCounter {
            name: "queue_messages_ready_at_end_count".into(),
            value: ready_count as f64,
        }])
    }

    async fn delete(
        &self,
        connection: &AmqpConnection,
        topology: &Topology,
    ) -> Result<(), DriverError> {
        let channel = connection
            .connection
            .create_channel()
            .await
            .map_err(protocol("channel.open"))?;
        for queue in &topology.queues {
            channel
                .queue_delete(queue.name.clone().into(), QueueDeleteOptions::default())
                .await
                .map_err(protocol("queue.delete"))?;
        }
        channel
            .exchange_delete(
                topology.exchange_name.clone().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(protocol("exchange.delete"))?;
        channel
            .close(200, "deleted".into())
            .await
            .map_err(protocol("channel.close"))?;
        Ok(())
    }
}

type PendingBatch = (u64, Vec<PublisherConfirm>);

#[derive(Debug)]
pub struct AmqpProducer {
    channel: Channel,
    exchange: ShortString,
    properties: BasicProperties,
    /// Confirm futures on their way to [`report_confirms`]; `None` without confirms. Unbounded
    /// because the core's window already bounds unconfirmed messages.
    pending: Option<mpsc::UnboundedSender<PendingBatch>>,
}

impl Producer for AmqpProducer {
    async fn publish(&mut self, batch: PublishBatch<'_>) -> Result<(), DriverError> {
        let publishes = batch.messages.iter().map(|message| {
            self.channel.basic_publish(
                self.exchange.clone(),
                message.routing_key.into(),
                BasicPublishOptions::default(),
                message.payload,
                self.properties.clone(),
            )
        });
        let results = join_all(publishes).await;
        let confirms = results
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(protocol("basic.publish"))?;
        if let Some(pending) = &self.pending {
            pending
                .send((batch.first_sequence, confirms))
                .map_err(|_| DriverError::Closed {
                    operation: "confirm reporting",
                })?;
        }
        Ok(())
    }
}

fn outcome_of(result: Result<Confirmation, lapin::Error>) -> ConfirmOutcome {
    match result {
        Ok(Confirmation::Ack(None)) => ConfirmOutcome::Ack { durability: None },
        Ok(Confirmation::Ack(Some(_))) => ConfirmOutcome::Nack {
            reason: "returned as unroutable".into(),
        },
        Ok(Confirmation::Nack(_)) => ConfirmOutcome::Nack {
            reason: "basic.nack".into(),
        },
        Ok(Confirmation::NotRequested) => ConfirmOutcome::Nack {
            reason: "confirm not requested on a confirm channel".into(),
        },
        Err(error) => ConfirmOutcome::Nack {
            reason: error.to_string(),
        },
    }
}

/// Awaits confirms in publish order and reports them, merging each resolved confirm with the
/// following ones that are already resolved with the same outcome. A confirm is timed when it is
/// seen here, so merging never delays the report of the first one in a range.
async fn report_confirms(mut batches: mpsc::UnboundedReceiver<PendingBatch>, sink: ConfirmSink) {
    while let Some((first_sequence, confirms)) = batches.recv().await {
        let mut confirms = confirms.into_iter().peekable();
        let mut sequence = first_sequence;
        while let Some(confirm) = confirms.next() {
            let outcome = outcome_of(confirm.await);
            let mut count = 1u64;
            while let Some(next) = confirms.peek_mut() {
                let Some(result) = next.now_or_never() else {
                    break;
                };
                let next_outcome = outcome_of(result);
                confirms.next();
                if next_outcome == outcome {
                    count += 1;
                    continue;
                }
                sink.confirm(ConfirmRange {
                    first_sequence: sequence,
                    count,
                    outcome: outcome.clone(),
                });
                sequence += count;
                sink.confirm(ConfirmRange {
                    first_sequence: sequence,
                    count: 1,
                    outcome: next_outcome,
                });
                sequence += 1;
                count = 0;
                break;
            }
            if count > 0 {
                sink.confirm(ConfirmRange {
                    first_sequence: sequence,
                    count,
                    outcome,
                });
                sequence += count;
            }
        }
    }
}

#[derive(Debug)]
enum DeliverySource {
    Single(lapin::Consumer),
    Merged {
        receiver: mpsc::Receiver<Result<message::Delivery, lapin::Error>>,
        order: TagOrder<message::Delivery>,
    },
}

#[derive(Debug)]
pub struct AmqpConsumer {
    channel: Channel,
    source: DeliverySource,
}

impl Consumer for AmqpConsumer {
    async fn next_delivery(&mut self) -> Result<Option<Delivery>, DriverError> {
        let next = match &mut self.source {
            DeliverySource::Single(subscription) => subscription.next().await,
            DeliverySource::Merged { receiver, order } => loop {
                if let Some(delivery) = order.pop() {
                    break Some(Ok(delivery));
                }
                match receiver.recv().await {
                    Some(Ok(delivery)) => {
                        order
                            .push(delivery.delivery_tag, delivery)
                            .map_err(|detail| DriverError::Protocol {
                                operation: "basic.deliver",
                                detail,
                            })?
                    }
                    other => break other,
                }
            },
        };
        match next {
            None => Ok(None),
            Some(Err(error)) => Err(protocol("basic.deliver")(error)),
            Some(Ok(delivery)) => Ok(Some(Delivery {
                payload: delivery.data,
                tag: delivery.delivery_tag,
                redelivered: delivery.redelivered,
            })),
        }
    }

    async fn ack(&mut self, tag: u64, multiple: bool) -> Result<(), DriverError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple })
            .await
            .map_err(protocol("basic.ack"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_address_drops_scheme_credentials_and_vhost() {
        let driver = AmqpDriver::new(AmqpConfig {
            uri: "amqp://user:secret@127.0.0.1:5699/%2f".into(),
            queue_type: AmqpQueueType::Classic,
        });
        assert_eq!(driver.address(), "127.0.0.1:5699");
    }

    #[test]
    fn quorum_queues_are_declared_durable_even_for_transient_runs() {
        let topology = Topology {
            exchange_name: "x".into(),
            exchange_kind: ExchangeKind::Direct,
            queues: vec![],
            durable: false,
        };
        let classic = AmqpDriver::new(AmqpConfig {
            uri: String::new(),
            queue_type: AmqpQueueType::Classic,
        });
        let quorum = AmqpDriver::new(AmqpConfig {
            uri: String::new(),
            queue_type: AmqpQueueType::Quorum,
        });
        assert!(!classic.durable(&topology));
        assert!(quorum.durable(&topology));
    }

    #[test]
    fn a_returned_or_refused_publish_counts_as_a_nack() {
        assert_eq!(
            outcome_of(Ok(Confirmation::Ack(None))),
            ConfirmOutcome::Ack { durability: None }
        );
        assert!(matches!(
            outcome_of(Ok(Confirmation::Nack(None))),
            ConfirmOutcome::Nack { .. }
        ));
        assert!(matches!(
            outcome_of(Ok(Confirmation::NotRequested)),
            ConfirmOutcome::Nack { .. }
        ));
    }
}
