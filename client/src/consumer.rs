//! Consuming: [`Connection::consume`] returns a [`Consumer`], a stream of [`Delivery`] values
//! that ends with a [`ConsumerEnd`] saying why.
//!
//! Deliveries go from the reader task into a bounded channel per consumer, sized by the prefetch
//! plus one slot for the end notice. The broker never has more than `prefetch` deliveries
//! unacknowledged for a consumer, and a delivery still in the channel cannot have been
//! acknowledged, so the channel never fills; a delivery that would take the last slot is a
//! protocol violation by the server and ends the connection rather than blocking the reader.

use std::sync::Arc;

use ruuster_wire::frame::{Cancel, Consume, Deliver, Reject, opcode};
use ruuster_wire::{Body, ErrorCode, Frame, ShortStr};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::connection::{Connection, Core, Shared, short, unexpected_reply};
use crate::error::{ClientError, ServerError};
use crate::options::ConsumeOptions;

/// Why a consumer's stream ended.
#[derive(Clone, Debug)]
pub enum ConsumerEnd {
    /// This client cancelled it ([`Consumer::cancel`]) and the server confirmed.
    Cancelled,
    /// The server ended it with `CancelNotice` (for example 503 queue-deleted).
    CancelledByServer(ServerError),
    /// The connection ended, or the consume itself was refused.
    ConnectionClosed(ClientError),
}

/// One message delivered to a consumer.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Connection-scoped tag naming this delivery in acks: 1, 2, 3, ... in delivery order.
    pub delivery_tag: u64,
    /// The message was delivered before (requeued, or its consumer's connection died).
    pub redelivered: bool,
    /// Deliveries of this message so far, this one included.
    pub delivery_count: u32,
    /// The exchange it was published to.
    pub exchange: ShortStr,
    /// Its routing key.
    pub routing_key: ShortStr,
    /// The consumer it was delivered to.
    pub consumer_tag: ShortStr,
    /// The body, validated; properties and payload are views of the received bytes.
    pub body: Body,
    shared: Arc<Shared>,
}

impl Delivery {
    /// Acknowledges this delivery.
    pub fn ack(&self) -> Result<(), ClientError> {
        self.settle(Frame::Ack(ruuster_wire::frame::Ack {
            delivery_tag: self.delivery_tag,
            multiple: false,
        }))
    }

    /// Acknowledges this delivery and every outstanding one before it on the connection.
    pub fn ack_multiple(&self) -> Result<(), ClientError> {
        self.settle(Frame::Ack(ruuster_wire::frame::Ack {
            delivery_tag: self.delivery_tag,
            multiple: true,
        }))
    }

    /// Refuses this delivery; `requeue` puts it back in its original place.
    pub fn nack(&self, requeue: bool) -> Result<(), ClientError> {
        self.settle(Frame::Nack(ruuster_wire::frame::Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue,
        }))
    }

    /// Refuses this delivery with `Reject`; `requeue` puts it back in its original place.
    pub fn reject(&self, requeue: bool) -> Result<(), ClientError> {
        self.settle(Frame::Reject(Reject {
            delivery_tag: self.delivery_tag,
            requeue,
        }))
    }

    fn settle(&self, frame: Frame) -> Result<(), ClientError> {
        self.shared.send_now(&frame)
    }
}

/// What the reader pushes into a consumer's channel.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "every message is a delivery and the end comes once; boxing the delivery would \
              allocate per message to shrink a variant sent once per consumer"
)]
pub(crate) enum ConsumerEvent {
    Delivery(Delivery),
    End(ConsumerEnd),
}

/// The reader's end of a consumer.
#[derive(Debug)]
pub(crate) struct ConsumerSlot {
    pub(crate) sender: mpsc::Sender<ConsumerEvent>,
    pub(crate) tag: ShortStr,
}

impl ConsumerSlot {
    /// Sends the end notice. The channel keeps one slot for it, so this only fails if the
    /// consumer was dropped, when nobody is left to tell.
    pub(crate) fn end(self, reason: ConsumerEnd) {
        let _ = self.sender.try_send(ConsumerEvent::End(reason));
    }
}

impl Shared {
    /// Hands a delivery to its consumer's channel.
    pub(crate) fn deliver(self: &Arc<Self>, core: &mut Core, deliver: Deliver) {
        let Some(slot) = core.consumers.get(&deliver.consumer_id) else {
            let detail = format!("delivery for unknown consumer {}", deliver.consumer_id);
            return self.end(core, ClientError::Violation(detail));
        };
        let delivery_tag = deliver.delivery_tag;
        // The broker validated the body when it was published; one it delivers invalid is a
        // broker bug, and handing it on would push the failure into every application.
        let body = match Body::parse(deliver.body) {
            Ok(body) => body,
            Err(error) => {
                let detail = format!("delivery {delivery_tag} has an invalid body: {error}");
                return self.end(core, ClientError::Violation(detail));
            }
        };
        if slot.sender.capacity() <= 1 && !slot.sender.is_closed() {
            let detail = format!(
                "consumer {} received more deliveries than its prefetch",
                slot.tag
            );
            return self.end(core, ClientError::Violation(detail));
        }
        let delivery = Delivery {
            delivery_tag,
            redelivered: deliver.redelivered,
            delivery_count: deliver.delivery_count,
            exchange: deliver.exchange,
            routing_key: deliver.routing_key,
            consumer_tag: slot.tag.clone(),
            body,
            shared: self.clone(),
        };
        match slot.sender.try_send(ConsumerEvent::Delivery(delivery)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => unreachable!("capacity checked above"),
            Err(TrySendError::Closed(_)) => {
                // The consumer was dropped and its cancel is in flight: give the message back
                // at once instead of leaving it unacknowledged until the connection closes.
                let requeue = Frame::Reject(Reject {
                    delivery_tag,
                    requeue: true,
                });
                if let Err(error) = core.send(&requeue) {
                    self.end(core, error);
                }
            }
        }
    }
}

/// A subscription to one queue. Receive with [`Consumer::recv`]; dropping it cancels the
/// subscription (without waiting) and requeues deliveries that arrive before the cancel lands.
#[derive(Debug)]
pub struct Consumer {
    connection: Connection,
    consumer_id: u32,
    tag: ShortStr,
    prefetch: u32,
    receiver: mpsc::Receiver<ConsumerEvent>,
    end: Option<ConsumerEnd>,
}

impl Consumer {
    /// The consumer tag (the server's if the consume left it empty).
    pub fn tag(&self) -> &str {
        self.tag.as_str()
    }

    /// The prefetch in force: the requested one, or the server's maximum if `0` was asked.
    pub fn prefetch(&self) -> u32 {
        self.prefetch
    }

    /// The next delivery, or why the stream ended. Deliveries received before the end are all
    /// returned first; after the end every call returns the same reason.
    pub async fn recv(&mut self) -> Result<Delivery, ConsumerEnd> {
        if let Some(end) = &self.end {
            return Err(end.clone());
        }
        let end = match self.receiver.recv().await {
            Some(ConsumerEvent::Delivery(delivery)) => return Ok(delivery),
            Some(ConsumerEvent::End(end)) => end,
            None => ConsumerEnd::ConnectionClosed(self.connection.shared().ended_reason()),
        };
        self.end = Some(end.clone());
        Err(end)
    }

    /// Cancels the subscription and waits for the server's `CancelOk`. Deliveries that arrived
    /// before it can still be received (then [`ConsumerEnd::Cancelled`]) and settled.
    pub async fn cancel(&mut self) -> Result<(), ClientError> {
        let consumer_id = self.consumer_id;
        if !self
            .connection
            .shared()
            .lock()
            .consumers
            .contains_key(&consumer_id)
        {
            return Ok(());
        }
        let frame_for = |request_id| {
            Frame::Cancel(Cancel {
                request_id,
                consumer_id,
            })
        };
        let shared = self.connection.shared();
        match shared.request(frame_for, opcode::CANCEL_OK, None).await {
            Ok(_) => Ok(()),
            // The server ended the consumer first (its notice crossed our cancel).
            Err(ClientError::Server(error)) if error.code == ErrorCode::UNKNOWN_CONSUMER => Ok(()),
            Err(error) => Err(error),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.connection
            .shared()
            .lock()
            .send_detached_cancel(self.consumer_id);
        self.connection.shared().wake_writer();
    }
}

impl Connection {
    /// Subscribes to `queue` with a consumer tag (empty: the server generates one) and a
    /// prefetch (`0`: the server's maximum). Deliveries start after the server's `ConsumeOk`.
    pub async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u32,
        options: &ConsumeOptions,
    ) -> Result<Consumer, ClientError> {
        let queue = short("queue", queue)?;
        let consumer_tag = short("consumer tag", consumer_tag)?;
        let effective = if prefetch == 0 {
            self.prefetch_max()
        } else {
            prefetch
        };
        // One slot beyond the prefetch for the end notice; tokio's channel allocates its slots
        // lazily, in blocks, so a large prefetch costs nothing until deliveries arrive. Capped at
        // what tokio accepts (a server allowing more unacked deliveries than that is not real).
        let capacity = (effective as usize).saturating_add(1).min(usize::MAX >> 4);
        let (sender, receiver) = mpsc::channel(capacity);
        let slot = ConsumerSlot {
            sender,
            tag: consumer_tag.clone(),
        };
        let frame_for = |request_id| {
            Frame::Consume(Consume {
                request_id,
                queue,
                consumer_tag,
                prefetch,
                exclusive: options.exclusive,
                arguments: options.arguments.clone(),
            })
        };
        let shared = self.shared();
        match shared
            .request(frame_for, opcode::CONSUME_OK, Some(slot))
            .await?
        {
            Frame::ConsumeOk(ok) => Ok(Consumer {
                connection: self.clone(),
                consumer_id: ok.consumer_id,
                tag: ok.consumer_tag,
                prefetch: effective,
                receiver,
                end: None,
            }),
            other => Err(unexpected_reply(&other)),
        }
    }
}
