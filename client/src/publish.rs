//! Publishing with confirms: [`Connection::publish`], [`Connection::publish_batch`], the future
//! each returns ([`PendingConfirm`]) and what it resolves to ([`Confirmation`]).
//!
//! A publish waits while the server has blocked publishing, then for room in the connection's
//! window of unconfirmed messages (one semaphore permit per message, returned by confirms), then
//! queues its `Publish` frames and returns without waiting for the confirm. Pending batches sit in
//! a `VecDeque` ordered by first sequence number; because confirms cover contiguous ranges in
//! order, each `Confirm` frame only ever touches the front of the queue, so mapping a confirm to
//! its waiters costs O(batches it completes), with no per-message bookkeeping.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use ruuster_wire::frame::{Confirm, Publish, PublishMessage};
use ruuster_wire::limits::{FRAME_HEADER_SIZE, PUBLISH_BATCH_COUNT_MAX};
use ruuster_wire::text::ShortStrError;
use ruuster_wire::{ConfirmStatus, Durability, ErrorCode, Frame, ShortStr};
use tokio::sync::oneshot;

use crate::connection::{Connection, Shared, short};
use crate::error::ClientError;
use crate::options::PublishOptions;

/// Bytes of a `Publish` payload before its messages, besides the exchange name: its length
/// byte, flags, durability and the `u16` count.
const PUBLISH_FIXED_SIZE: usize = 1 + 1 + 1 + 2;

/// Bytes each message adds to a `Publish` besides its key and body: the key's length byte and the
/// body's `u32` length.
const PUBLISH_MESSAGE_OVERHEAD: usize = 1 + 4;

/// Something usable as a routing key. A [`ShortStr`] is reused without copying (a loop that
/// publishes to one key can build it once); `&str` and `String` are checked and copied.
pub trait RoutingKey {
    /// The key as a short string, or why it cannot be one (too long).
    fn to_short_str(&self) -> Result<ShortStr, ShortStrError>;
}

impl RoutingKey for ShortStr {
    fn to_short_str(&self) -> Result<ShortStr, ShortStrError> {
        Ok(self.clone())
    }
}

impl RoutingKey for &str {
    fn to_short_str(&self) -> Result<ShortStr, ShortStrError> {
        ShortStr::try_from(*self)
    }
}

impl RoutingKey for String {
    fn to_short_str(&self) -> Result<ShortStr, ShortStrError> {
        ShortStr::try_from(self.as_str())
    }
}

/// The outcome of one contiguous range of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfirmRange {
    /// First sequence number of the range.
    pub first: u64,
    /// Last sequence number of the range, inclusive.
    pub last: u64,
    /// What the server says about every message in it.
    pub status: ConfirmStatus,
}

/// A mandatory message that matched no queue, as the server sent it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnedMessage {
    /// Its publish sequence number.
    pub sequence: u64,
    /// Why it came back (400 unroutable).
    pub code: ErrorCode,
    /// The exchange it was published to.
    pub exchange: ShortStr,
    /// Its routing key.
    pub routing_key: ShortStr,
    /// Its encoded body, as published (parse with [`ruuster_wire::Body::parse`]).
    pub body: Bytes,
}

/// Every confirm of one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmation {
    first: u64,
    last: u64,
    ranges: Vec<ConfirmRange>,
    returned: Vec<ReturnedMessage>,
}

impl Confirmation {
    /// The batch's first sequence number.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The batch's last sequence number, inclusive.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The outcomes, in order, covering `first..=last` without gaps; adjacent messages with the
    /// same outcome share a range.
    pub fn ranges(&self) -> &[ConfirmRange] {
        &self.ranges
    }

    /// The outcome of one message of the batch.
    pub fn status_of(&self, sequence: u64) -> Option<ConfirmStatus> {
        self.ranges
            .iter()
            .find(|range| (range.first..=range.last).contains(&sequence))
            .map(|range| range.status)
    }

    /// The lowest durability reached if every message was stored, `None` if any was unroutable
    /// or rejected.
    pub fn stored(&self) -> Option<Durability> {
        self.ranges
            .iter()
            .map(|range| match range.status {
                ConfirmStatus::Stored(level) => Some(level),
                _ => None,
            })
            .try_fold(Durability::Fsynced, |lowest, level| {
                level.map(|level| lowest.min(level))
            })
    }

    /// The batch's mandatory messages that matched no queue.
    pub fn returned(&self) -> &[ReturnedMessage] {
        &self.returned
    }
}

/// The confirm of one published batch: a future resolving to its [`Confirmation`], or to the
/// error that ended the connection before every message was confirmed (the messages may or may
/// not have been stored).
#[derive(Debug)]
pub struct PendingConfirm {
    first: u64,
    last: u64,
    receiver: oneshot::Receiver<Result<Confirmation, ClientError>>,
    shared: Arc<Shared>,
}

impl PendingConfirm {
    /// The batch's first sequence number.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The batch's last sequence number, inclusive.
    pub fn last(&self) -> u64 {
        self.last
    }
}

impl Future for PendingConfirm {
    type Output = Result<Confirmation, ClientError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        Pin::new(&mut this.receiver)
            .poll(context)
            .map(|result| result.unwrap_or_else(|_| Err(this.shared.ended_reason())))
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("peer", &self.info.peer)
            .finish_non_exhaustive()
    }
}

/// A batch waiting for confirms.
#[derive(Debug)]
struct PendingBatch {
    first: u64,
    last: u64,
    ranges: Vec<ConfirmRange>,
    returned: Vec<ReturnedMessage>,
    sender: oneshot::Sender<Result<Confirmation, ClientError>>,
}

/// Pending batches in sequence order.
#[derive(Debug, Default)]
pub(crate) struct ConfirmQueue {
    pending: VecDeque<PendingBatch>,
}

impl ConfirmQueue {
    fn push(
        &mut self,
        first: u64,
        last: u64,
        sender: oneshot::Sender<Result<Confirmation, ClientError>>,
    ) {
        debug_assert!(
            self.pending
                .back()
                .is_none_or(|batch| batch.last + 1 == first)
        );
        self.pending.push_back(PendingBatch {
            first,
            last,
            ranges: Vec::new(),
            returned: Vec::new(),
            sender,
        });
    }

    /// Applies one confirm range and returns how many messages it covers. The state machine has
    /// already checked that the range starts right after the last one and ends within what was
    /// published, so the range is covered by the front batches.
    pub(crate) fn confirm(&mut self, confirm: &Confirm) -> u64 {
        let mut sequence = confirm.first;
        while sequence <= confirm.last {
            let Some(batch) = self.pending.front_mut() else {
                debug_assert!(false, "confirm {confirm:?} past every pending batch");
                break;
            };
            assert!(batch.first <= sequence && sequence <= batch.last);
            let last = batch.last.min(confirm.last);
            match batch.ranges.last_mut() {
                Some(range) if range.status == confirm.status && range.last + 1 == sequence => {
                    range.last = last;
                }
                _ => batch.ranges.push(ConfirmRange {
                    first: sequence,
                    last,
                    status: confirm.status,
                }),
            }
            sequence = last + 1;
            if last == batch.last {
                let batch = self.pending.pop_front().expect("front batch exists");
                let confirmation = Confirmation {
                    first: batch.first,
                    last: batch.last,
                    ranges: batch.ranges,
                    returned: batch.returned,
                };
                // The caller may have dropped its future; the confirm still counted.
                let _ = batch.sender.send(Ok(confirmation));
            }
        }
        confirm.last - confirm.first + 1
    }

    /// Files a returned message with its batch. False if no pending batch holds its sequence
    /// (the state machine already checked it is published and unconfirmed, so this is a bug).
    pub(crate) fn attach_return(&mut self, returned: ReturnedMessage) -> bool {
        let index = self
            .pending
            .partition_point(|batch| batch.last < returned.sequence);
        match self.pending.get_mut(index) {
            Some(batch) if batch.first <= returned.sequence => {
                batch.returned.push(returned);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn fail_all(&mut self, error: &ClientError) {
        for batch in self.pending.drain(..) {
            let _ = batch.sender.send(Err(error.clone()));
        }
    }
}

impl Connection {
    /// Publishes one message; see [`Connection::publish_batch`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        options: &PublishOptions,
    ) -> Result<PendingConfirm, ClientError> {
        self.publish_batch(exchange, &[(routing_key, body)], options)
            .await
    }

    /// Publishes a batch of `(routing key, encoded body)` messages to one exchange (empty: the
    /// default exchange, which routes by queue name). Bodies are built with
    /// [`ruuster_wire::Properties::to_body`] (or [`crate::body`] for a bare payload).
    ///
    /// Waits while the server has blocked publishing and while the window of unconfirmed
    /// messages ([`Connection::publish_window`]) lacks room for the whole batch; then queues the
    /// batch (split into as many `Publish` frames as the frame size requires, with consecutive
    /// sequence numbers) and returns its [`PendingConfirm`] without waiting for the server.
    /// A batch larger than the window is refused, as it could never fit.
    ///
    /// Cancel-safe: dropping the future before it returns publishes nothing. Dropping the
    /// returned [`PendingConfirm`] only gives up the outcome; the window still counts the batch
    /// until the server confirms it.
    pub async fn publish_batch<K: RoutingKey>(
        &self,
        exchange: &str,
        messages: &[(K, Bytes)],
        options: &PublishOptions,
    ) -> Result<PendingConfirm, ClientError> {
        let shared = self.shared();
        let count = messages.len();
        let window = shared.info.publish_window as usize;
        if count == 0 || count > window {
            let reason = format!("{count} messages; a batch holds 1 to {window} (the window)");
            return Err(ClientError::invalid("batch", reason));
        }
        let exchange = short("exchange", exchange)?;
        let frames = publish_frames(
            &exchange,
            messages,
            options,
            shared.info.negotiated.frame_size_max as usize,
        )?;

        shared.wait_unblocked().await;
        // Fair: a large batch is not starved by a stream of small ones.
        let permits = shared
            .window
            .acquire_many(count as u32)
            .await
            .map_err(|_| shared.ended_reason())?;
        permits.forget();

        let (sender, receiver) = oneshot::channel();
        let first = {
            let mut core = shared.lock();
            let first = core.machine.next_sequence();
            if let Err(error) = queue_frames(&mut core, &frames) {
                if let ClientError::Protocol(_) = error {
                    // See `queue_frames`: the sequence numbers can no longer be trusted.
                    shared.end(&mut core, error.clone());
                }
                drop(core);
                shared.window.add_permits(count);
                return Err(error);
            }
            core.confirms.push(first, first + count as u64 - 1, sender);
            first
        };
        shared.wake_writer();
        Ok(PendingConfirm {
            first,
            last: first + count as u64 - 1,
            receiver,
            shared: shared.clone(),
        })
    }
}

/// Encodes every frame of a batch, then records them in the state machine: encoding can fail
/// (and is undone by truncating), recording cannot be undone, so no frame is recorded unless all
/// encoded.
fn queue_frames(core: &mut crate::connection::Core, frames: &[Frame]) -> Result<(), ClientError> {
    core.check_open()?;
    let start = core.outbound.len();
    let frame_size_max = core.machine.frame_size_max();
    for frame in frames {
        if let Err(error) = frame.encode(&mut core.outbound, frame_size_max) {
            core.outbound.truncate(start);
            return Err(ClientError::Encode(error));
        }
    }
    let now = std::time::Instant::now();
    for frame in frames {
        // The window is at most the negotiated maximum and the state was checked open, so the
        // machine accepts every frame; an error here is a bug, and once part of a batch has been
        // counted the sequence numbers can no longer be trusted, so the caller ends the
        // connection.
        if let Err(error) = core.machine.on_send(frame, now) {
            core.outbound.truncate(start);
            return Err(ClientError::Protocol(error));
        }
    }
    Ok(())
}

/// Splits a batch into `Publish` frames that each fit in `frame_size_max` and the protocol's
/// per-frame message count.
fn publish_frames<K: RoutingKey>(
    exchange: &ShortStr,
    messages: &[(K, Bytes)],
    options: &PublishOptions,
    frame_size_max: usize,
) -> Result<Vec<Frame>, ClientError> {
    let frame_fixed = FRAME_HEADER_SIZE + PUBLISH_FIXED_SIZE + exchange.len();
    let mut frames = Vec::with_capacity(1);
    let mut current: Vec<PublishMessage> = Vec::with_capacity(messages.len());
    let mut size = frame_fixed;
    for (routing_key, body) in messages {
        let routing_key = routing_key
            .to_short_str()
            .map_err(|error| ClientError::invalid("routing key", error.to_string()))?;
        let message_size = PUBLISH_MESSAGE_OVERHEAD + routing_key.len() + body.len();
        if frame_fixed + message_size > frame_size_max {
            let reason = format!(
                "a message of {message_size} bytes does not fit in a frame of {frame_size_max}"
            );
            return Err(ClientError::invalid("body", reason));
        }
        if size + message_size > frame_size_max || current.len() == PUBLISH_BATCH_COUNT_MAX {
            let full = std::mem::take(&mut current);
            frames.push(publish_frame(exchange, options, full));
            size = frame_fixed;
        }
        size += message_size;
        current.push(PublishMessage {
            routing_key,
            body: body.clone(),
        });
    }
    frames.push(publish_frame(exchange, options, current));
    Ok(frames)
}

fn publish_frame(
    exchange: &ShortStr,
    options: &PublishOptions,
    messages: Vec<PublishMessage>,
) -> Frame {
    Frame::Publish(Publish {
        exchange: exchange.clone(),
        mandatory: options.mandatory,
        durability: options.durability,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirm(first: u64, last: u64, status: ConfirmStatus) -> Confirm {
        Confirm {
            first,
            last,
            status,
        }
    }

    /// A confirm range covering two batches and part of a third resolves exactly the two; a
    /// later range with another outcome completes the third with two ranges.
    #[test]
    fn one_confirm_spanning_three_batches_completes_all_three() {
        let mut queue = ConfirmQueue::default();
        let mut receivers = Vec::new();
        for (first, last) in [(1, 2), (3, 3), (4, 6)] {
            let (sender, receiver) = oneshot::channel();
            queue.push(first, last, sender);
            receivers.push(receiver);
        }
        let stored = ConfirmStatus::Stored(Durability::Written);
        assert_eq!(queue.confirm(&confirm(1, 5, stored)), 5);
        for mut receiver in receivers.drain(..2) {
            let confirmation = receiver.try_recv().unwrap().unwrap();
            assert_eq!(confirmation.stored(), Some(Durability::Written));
        }
        let mut last = receivers.pop().unwrap();
        assert!(
            last.try_recv().is_err(),
            "batch 4..=6 is only partly confirmed"
        );
        queue.confirm(&confirm(6, 6, ConfirmStatus::Unroutable));
        let confirmation = last.try_recv().unwrap().unwrap();
        assert_eq!(confirmation.ranges().len(), 2);
        assert_eq!(confirmation.status_of(5), Some(stored));
        assert_eq!(confirmation.status_of(6), Some(ConfirmStatus::Unroutable));
        assert_eq!(confirmation.stored(), None);
    }

    /// Splitting by frame size keeps every message and packs each frame as full as it fits.
    #[test]
    fn a_batch_too_large_for_one_frame_is_split_and_keeps_every_message() {
        let exchange = ShortStr::from_static("x");
        let body = Bytes::from(vec![0u8; 1000]);
        let messages: Vec<(&str, Bytes)> = (0..10).map(|_| ("key", body.clone())).collect();
        let frames =
            publish_frames(&exchange, &messages, &PublishOptions::default(), 4096).unwrap();
        let mut total = 0;
        for frame in &frames {
            let mut buffer = bytes::BytesMut::new();
            frame.encode(&mut buffer, 4096).unwrap();
            let Frame::Publish(publish) = frame else {
                panic!("not a publish")
            };
            total += publish.messages.len();
        }
        assert_eq!(total, 10);
        assert_eq!(
            frames.len(),
            3,
            "four messages of 1008 bytes and 14 fixed fit in 4096"
        );
    }

    /// A message that cannot fit in any frame is refused as invalid input.
    #[test]
    fn a_message_larger_than_a_frame_is_refused_before_anything_is_sent() {
        let exchange = ShortStr::from_static("x");
        let messages = [("key", Bytes::from(vec![0u8; 5000]))];
        let error =
            publish_frames(&exchange, &messages, &PublishOptions::default(), 4096).unwrap_err();
        assert!(matches!(
            error,
            ClientError::InvalidInput { field: "body", .. }
        ));
    }
}
