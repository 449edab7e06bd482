//! The shard mesh: bounded single-producer single-consumer rings between every ordered pair of
//! shards, in two lanes, each drained by one outbox task per ring.
//!
//! Why two lanes: acks, confirms, credit, cancel and close must never wait behind publishes
//! (DESIGN.md, "Cross-shard traffic"). If they shared a ring with publishes, a shard whose data
//! ring to a peer is full would hold back the acks that let that peer free room: a cycle. The
//! control lane has its own ring, and control messages are bounded by the protocol instead of by
//! the ring (confirms by the unconfirmed-publish cap, acks and credit by prefetch), so sending one
//! never waits.
//!
//! Why outboxes: a ring hand-off wakes the peer shard through an eventfd when it is parked, which
//! costs 35-40 µs on this kind of host (research/anchors-performance.md). One outbox task per ring
//! collects everything queued while the previous slot was in flight and sends it as one batch, so
//! the cost is paid per batch, not per message.
//!
//! Deadlock rules this module gives the rest of the broker:
//! - [`Mesh::send_control`] never waits;
//! - [`Mesh::send_data`] waits only for room in the local outbox, which its outbox task frees
//!   whenever the peer drains its ring;
//! - inbound handlers are synchronous closures, so a task that drains an inbound ring cannot
//!   await an outbound send.
//!
//! This is one of the modules that know glommio (DESIGN.md, "Runtime boundary").

use std::cell::Cell;
use std::rc::Rc;

use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender};
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use tracing::warn;

/// Slots in each ring. A slot carries one batch, so this bounds batches in flight per pair.
pub const RING_SLOTS: usize = 64;

/// Messages one outbox puts in one ring slot. Larger batches amortise the wake-up better but hold
/// the slot's memory longer; 256 matches the default unconfirmed window of one publisher.
pub const BATCH_MESSAGES_MAX: usize = 256;

/// Data messages queued per outbox before [`Mesh::send_data`] waits: the backpressure point that
/// reaches the publisher's socket.
pub const DATA_OUTBOX_MESSAGES_MAX: usize = 4096;

/// Control messages are bounded by protocol caps, not here; this only catches a bug that would
/// otherwise grow memory without end.
pub const CONTROL_OUTBOX_MESSAGES_MAX: usize = 1 << 22;

/// Which ring of a pair a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Data,
    Control,
}

type Batch<T> = Vec<T>;

/// The ring ends one shard owns before its executor starts. `Send`, so it can be handed over.
#[derive(Debug)]
pub struct ShardLinks<T: Send + 'static> {
    shard: usize,
    /// Indexed by peer shard; `None` at this shard's own index.
    data_out: Vec<Option<SharedSender<Batch<T>>>>,
    control_out: Vec<Option<SharedSender<Batch<T>>>>,
    data_in: Vec<Option<SharedReceiver<Batch<T>>>>,
    control_in: Vec<Option<SharedReceiver<Batch<T>>>>,
}

/// Builds the rings of `shard_count` shards: two per ordered pair.
pub fn build<T: Send + 'static>(shard_count: usize) -> Vec<ShardLinks<T>> {
    let mut links: Vec<ShardLinks<T>> = (0..shard_count)
        .map(|shard| ShardLinks {
            shard,
            data_out: (0..shard_count).map(|_| None).collect(),
            control_out: (0..shard_count).map(|_| None).collect(),
            data_in: (0..shard_count).map(|_| None).collect(),
            control_in: (0..shard_count).map(|_| None).collect(),
        })
        .collect();
    for source in 0..shard_count {
        for target in (0..shard_count).filter(|&target| target != source) {
            let (sender, receiver) = shared_channel::new_bounded(RING_SLOTS);
            links[source].data_out[target] = Some(sender);
            links[target].data_in[source] = Some(receiver);
            let (sender, receiver) = shared_channel::new_bounded(RING_SLOTS);
            links[source].control_out[target] = Some(sender);
            links[target].control_in[source] = Some(receiver);
        }
    }
    links
}

/// One shard's side of the mesh, after connecting. Lives on that shard's executor.
pub struct Mesh<T: Send + 'static> {
    shard: usize,
    data: Vec<Option<flume::Sender<T>>>,
    control: Vec<Option<flume::Sender<T>>>,
    /// Ring batches sent, for the stats: the ratio to messages gives the batching factor.
    batches_sent: Rc<Cell<u64>>,
}

impl<T: Send + 'static> std::fmt::Debug for Mesh<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> ShardLinks<T> {
    /// Connects every ring end and starts the outbox and inbound tasks. `handle` receives every
    /// inbound message with the shard it came from and its lane; it must not block.
    ///
    /// All shards must call this concurrently: connecting a ring end waits for its peer.
    pub async fn connect(self, handle: impl Fn(usize, Lane, T) + 'static) -> Mesh<T> {
        let shard = self.shard;
        let shard_count = self.data_out.len();
        let handle = Rc::new(handle);
        let batches_sent = Rc::new(Cell::new(0));

        let mut connecting = Vec::new();
        for (peer, sender) in self.data_out.into_iter().enumerate() {
            if let Some(sender) = sender {
                connecting.push(glommio::spawn_local(async move {
                    (peer, Lane::Data, Some(sender.connect().await), None)
                }));
            }
        }
        for (peer, sender) in self.control_out.into_iter().enumerate() {
            if let Some(sender) = sender {
                connecting.push(glommio::spawn_local(async move {
                    (peer, Lane::Control, Some(sender.connect().await), None)
                }));
            }
        }
        for (peer, receiver) in self.data_in.into_iter().enumerate() {
            if let Some(receiver) = receiver {
                connecting.push(glommio::spawn_local(async move {
                    (peer, Lane::Data, None, Some(receiver.connect().await))
                }));
            }
        }
        for (peer, receiver) in self.control_in.into_iter().enumerate() {
            if let Some(receiver) = receiver {
                connecting.push(glommio::spawn_local(async move {
                    (peer, Lane::Control, None, Some(receiver.connect().await))
                }));
            }
        }

        let mut data: Vec<Option<flume::Sender<T>>> = (0..shard_count).map(|_| None).collect();
        let mut control: Vec<Option<flume::Sender<T>>> = (0..shard_count).map(|_| None).collect();
        for task in connecting {
            let (peer, lane, sender, receiver) = task.await;
            if let Some(ring) = sender {
                let (outbox, inbox) = match lane {
                    Lane::Data => flume::bounded(DATA_OUTBOX_MESSAGES_MAX),
                    Lane::Control => flume::unbounded(),
                };
                let slots = match lane {
                    Lane::Data => &mut data,
                    Lane::Control => &mut control,
                };
                slots[peer] = Some(outbox);
                glommio::spawn_local(drain_outbox(inbox, ring, batches_sent.clone())).detach();
            }
            if let Some(ring) = receiver {
                glommio::spawn_local(drain_inbound(peer, lane, ring, handle.clone())).detach();
            }
        }
        Mesh {
            shard,
            data,
            control,
            batches_sent,
        }
    }
}

impl<T: Send + 'static> Mesh<T> {
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Queues a data message (publish, delivery) for `peer`, waiting while its outbox is full.
    /// Returns the message if the peer is gone.
    pub async fn send_data(&self, peer: usize, message: T) -> Result<(), T> {
        let outbox = self.outbox(Lane::Data, peer);
        outbox
            .send_async(message)
            .await
            .map_err(|error| error.into_inner())
    }

    /// Queues a control message (ack, confirm, credit, cancel, close) for `peer`. Never waits.
    pub fn send_control(&self, peer: usize, message: T) -> Result<(), T> {
        let outbox = self.outbox(Lane::Control, peer);
        assert!(
            outbox.len() < CONTROL_OUTBOX_MESSAGES_MAX,
            "control outbox grew without bound"
        );
        outbox.try_send(message).map_err(|error| error.into_inner())
    }

    /// Ring slots sent so far by this shard's outboxes.
    pub fn batches_sent(&self) -> u64 {
        self.batches_sent.get()
    }

    fn outbox(&self, lane: Lane, peer: usize) -> &flume::Sender<T> {
        assert_ne!(
            peer, self.shard,
            "a shard never sends to itself over the mesh"
        );
        let slots = match lane {
            Lane::Data => &self.data,
            Lane::Control => &self.control,
        };
        slots[peer].as_ref().expect("a ring to every other shard")
    }
}

async fn drain_outbox<T: Send + 'static>(
    inbox: flume::Receiver<T>,
    ring: ConnectedSender<Batch<T>>,
    batches_sent: Rc<Cell<u64>>,
) {
    while let Ok(first) = inbox.recv_async().await {
        let mut batch = Vec::with_capacity(BATCH_MESSAGES_MAX.min(inbox.len() + 1));
        batch.push(first);
        while batch.len() < BATCH_MESSAGES_MAX {
            match inbox.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        if ring.send(batch).await.is_err() {
            warn!("peer shard closed its ring; outbox stops");
            return;
        }
        batches_sent.set(batches_sent.get() + 1);
    }
}

async fn drain_inbound<T: Send + 'static>(
    peer: usize,
    lane: Lane,
    ring: ConnectedReceiver<Batch<T>>,
    handle: Rc<impl Fn(usize, Lane, T) + 'static>,
) {
    while let Some(batch) = ring.recv().await {
        for message in batch {
            handle(peer, lane, message);
        }
        glommio::yield_if_needed().await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    /// Messages each shard sends to each peer in the stress test: enough to fill every ring and
    /// outbox many times over.
    const MESSAGES_PER_PAIR: u64 = 50_000;

    #[derive(Debug)]
    struct Message {
        source: usize,
        sequence: u64,
        lane: Lane,
    }

    /// Every shard floods every other with data while sending control messages on the side.
    /// Catches: lost, duplicated or reordered messages per lane, and a deadlock of shards that
    /// send into each other's full rings (the test would hang and the harness time it out; the
    /// inner deadline fails it first). Cannot catch: starvation short of a deadlock.
    #[test]
    fn three_shards_flooding_each_other_deliver_everything_in_order_per_lane() {
        let shard_count = 3;
        let links = build::<Message>(shard_count);
        let handles: Vec<_> = links
            .into_iter()
            .map(|links| {
                LocalExecutorBuilder::new(Placement::Unbound)
                    .io_memory(512 << 10)
                    .spawn(move || async move { run_flood(links, shard_count).await })
                    .unwrap()
            })
            .collect();
        for handle in handles {
            let (received_data, received_control) = handle.join().unwrap();
            assert_eq!(received_data, MESSAGES_PER_PAIR * (shard_count as u64 - 1));
            assert_eq!(
                received_control,
                MESSAGES_PER_PAIR * (shard_count as u64 - 1)
            );
        }
    }

    async fn run_flood(links: ShardLinks<Message>, shard_count: usize) -> (u64, u64) {
        let me = links.shard;
        let next_expected = Rc::new(RefCell::new(vec![[0u64; 2]; shard_count]));
        let seen = next_expected.clone();
        let mesh = Rc::new(
            links
                .connect(move |peer, lane, message: Message| {
                    assert_eq!(message.source, peer);
                    assert_eq!(message.lane, lane);
                    let index = if lane == Lane::Data { 0 } else { 1 };
                    let mut seen = seen.borrow_mut();
                    assert_eq!(message.sequence, seen[peer][index], "reordered or lost");
                    seen[peer][index] += 1;
                })
                .await,
        );

        let mut senders = Vec::new();
        for peer in (0..shard_count).filter(|&peer| peer != me) {
            let mesh = mesh.clone();
            senders.push(glommio::spawn_local(async move {
                for sequence in 0..MESSAGES_PER_PAIR {
                    let control = Message {
                        source: me,
                        sequence,
                        lane: Lane::Control,
                    };
                    mesh.send_control(peer, control).unwrap();
                    let data = Message {
                        source: me,
                        sequence,
                        lane: Lane::Data,
                    };
                    mesh.send_data(peer, data).await.unwrap();
                }
            }));
        }
        for sender in senders {
            sender.await;
        }

        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let total: [u64; 2] = next_expected.borrow().iter().fold([0, 0], |sum, counts| {
                [sum[0] + counts[0], sum[1] + counts[1]]
            });
            if total == [MESSAGES_PER_PAIR * (shard_count as u64 - 1); 2] {
                assert!(mesh.batches_sent() > 0);
                // Linger so peers can drain what this shard still has in its outboxes.
                glommio::timer::sleep(Duration::from_millis(200)).await;
                return (total[0], total[1]);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mesh stalled: {total:?}"
            );
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
}
