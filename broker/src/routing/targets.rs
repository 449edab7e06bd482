//! The result of a route, and the scratch space a route needs, kept in one reusable value so that
//! the publish path allocates nothing once it has warmed up.
//!
//! The invariant: after a successful route, `grouped` holds every matched queue exactly once,
//! ordered by owning shard, and `shard_starts[s]..shard_starts[s + 1]` is shard `s`'s run of it.

use super::topic::TopicScratch;
use super::{QueueId, QueueSlot, ShardId};

/// The queues a message goes to, grouped by owning shard. Pass the same one to every
/// [`super::RoutingTable::route`] call: its buffers grow to the size of the largest table it has
/// routed against and are then reused. That size is 4 bytes per queue, 4 bytes per node of the
/// largest topic trie and 1 byte per distinct headers condition (10,000 queues and a 30,000-node
/// trie take 160 KB), so keep one per shard rather than one per connection: a route is
/// synchronous, and the publish path must only finish reading the targets before its next
/// `.await`.
#[derive(Debug, Default)]
pub struct RouteTargets {
    pub(super) matched: SlotSet,
    pub(super) topic_scratch: TopicScratch,
    /// Whether each distinct condition of a headers exchange holds for the message being routed.
    pub(super) condition_holds: Vec<bool>,
    /// Matched queue ids, shard 0's first, then shard 1's, and so on.
    grouped: Vec<QueueId>,
    /// `shard_count + 1` offsets into `grouped`, or empty when nothing was routed.
    shard_starts: Vec<u32>,
    /// Per-shard write positions while grouping; kept to avoid an allocation per route.
    shard_cursors: Vec<u32>,
}

impl RouteTargets {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many distinct queues the last route matched.
    pub fn len(&self) -> usize {
        self.grouped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grouped.is_empty()
    }

    /// Every matched queue, ordered by owning shard.
    pub fn queues(&self) -> &[QueueId] {
        &self.grouped
    }

    /// The matched queues that `shard` owns: the publish path appends these directly when `shard`
    /// is its own, and sends them over the ring to `shard` otherwise.
    pub fn for_shard(&self, shard: ShardId) -> &[QueueId] {
        let shard = usize::from(shard.0);
        if shard + 1 >= self.shard_starts.len() {
            return &[];
        }
        let start = self.shard_starts[shard] as usize;
        let end = self.shard_starts[shard + 1] as usize;
        &self.grouped[start..end]
    }

    /// The shards that own at least one matched queue, in ascending order, with their queues.
    pub fn by_shard(&self) -> impl Iterator<Item = (ShardId, &[QueueId])> + '_ {
        self.shard_starts
            .windows(2)
            .enumerate()
            .filter(|(_, bounds)| bounds[0] < bounds[1])
            .map(|(shard, bounds)| {
                let shard =
                    u16::try_from(shard).expect("shard count is bounded by SHARD_COUNT_MAX");
                (
                    ShardId(shard),
                    &self.grouped[bounds[0] as usize..bounds[1] as usize],
                )
            })
    }

    pub(super) fn begin(&mut self, queue_count: usize) {
        self.matched.begin(queue_count);
        self.grouped.clear();
        self.shard_starts.clear();
    }

    /// Orders the matched slots by owning shard with a counting sort: `O(matched + shards)`.
    pub(super) fn group_by_shard(&mut self, queues: &[QueueSlot], shard_count: usize) {
        let slots = &self.matched.slots;
        if slots.is_empty() {
            return;
        }

        self.shard_starts.resize(shard_count + 1, 0);
        for &slot in slots {
            self.shard_starts[usize::from(queues[slot as usize].owner.0) + 1] += 1;
        }
        for shard in 0..shard_count {
            self.shard_starts[shard + 1] += self.shard_starts[shard];
        }

        self.shard_cursors.clear();
        self.shard_cursors
            .extend_from_slice(&self.shard_starts[..shard_count]);
        self.grouped.resize(slots.len(), QueueId(0));
        for &slot in slots {
            let queue = queues[slot as usize];
            let cursor = &mut self.shard_cursors[usize::from(queue.owner.0)];
            self.grouped[*cursor as usize] = queue.id;
            *cursor += 1;
        }
        debug_assert_eq!(self.shard_starts[shard_count] as usize, self.grouped.len());
    }
}

/// The queue slots matched so far, each once. A slot is in the set when its mark equals the
/// current stamp, so clearing the set between routes costs one increment, not a pass over marks.
#[derive(Debug, Default)]
pub(super) struct SlotSet {
    slots: Vec<u32>,
    marks: Vec<u32>,
    stamp: u32,
}

impl SlotSet {
    fn begin(&mut self, queue_count: usize) {
        self.slots.clear();
        if self.marks.len() < queue_count {
            self.marks.resize(queue_count, 0);
        }
        if self.stamp == u32::MAX {
            self.marks.fill(0);
            self.stamp = 0;
        }
        self.stamp += 1;
    }

    pub(super) fn contains(&self, slot: u32) -> bool {
        self.marks[slot as usize] == self.stamp
    }

    pub(super) fn insert(&mut self, slot: u32) {
        let mark = &mut self.marks[slot as usize];
        if *mark != self.stamp {
            *mark = self.stamp;
            self.slots.push(slot);
        }
    }

    pub(super) fn insert_all(&mut self, slots: &[u32]) {
        for &slot in slots {
            self.insert(slot);
        }
    }
}
