//! One consumer's side of a queue: its prefetch window and the deliveries it holds unacked.
//!
//! The held list is kept in ascending sequence so that an ack finds its delivery by binary search
//! and so that a cancelled consumer's messages go back to the ready list in order. Acks usually
//! arrive oldest first, which pops the front; an ack out of order leaves a settled slot behind
//! instead of shifting the list, and settled slots are swept once they outnumber the live ones,
//! so every ack costs amortised O(log n) and the list never holds more than about twice the
//! prefetch window.

use std::collections::VecDeque;

use super::{ConsumerId, Message};

/// Settled slots tolerated before a sweep, on top of one per live delivery. A few dozen keep a
/// consumer that acks slightly out of order from sweeping on every ack.
const SETTLED_SLOTS_SLACK: usize = 32;

/// A delivery slot: still held by the consumer, or settled and waiting to be swept.
enum Slot {
    Held(Message),
    Settled { sequence: u64 },
}

impl Slot {
    fn sequence(&self) -> u64 {
        match self {
            Slot::Held(message) => message.sequence,
            Slot::Settled { sequence } => *sequence,
        }
    }
}

pub(super) struct Consumer {
    pub(super) id: ConsumerId,
    /// The most deliveries this consumer may hold unacked; never zero (zero on the wire means
    /// "unlimited" and is mapped to the named maximum before it gets here).
    pub(super) prefetch_count: u32,
    /// Cancelled by its client: it gets no more deliveries but keeps what it holds until those
    /// are settled or its connection closes.
    pub(super) stopped: bool,
    slots: VecDeque<Slot>,
    held_count: u32,
}

impl Consumer {
    pub(super) fn new(id: ConsumerId, prefetch_count: u32) -> Consumer {
        assert!(prefetch_count > 0);
        Consumer {
            id,
            prefetch_count,
            stopped: false,
            slots: VecDeque::new(),
            held_count: 0,
        }
    }

    /// The messages this consumer holds unacked.
    pub(super) fn held_mut(&mut self) -> impl Iterator<Item = &mut Message> {
        self.slots.iter_mut().filter_map(|slot| match slot {
            Slot::Held(message) => Some(message),
            Slot::Settled { .. } => None,
        })
    }

    pub(super) fn has_credit(&self) -> bool {
        !self.stopped && self.held_count < self.prefetch_count
    }

    pub(super) fn held_count(&self) -> u32 {
        self.held_count
    }

    /// Takes a delivery. Fresh messages arrive in ascending sequence and append; a requeued one
    /// delivered again may belong earlier and is inserted in its place.
    pub(super) fn hold(&mut self, message: Message) {
        assert!(self.has_credit());

        let sequence = message.sequence;
        if self
            .slots
            .back()
            .is_none_or(|last| last.sequence() < sequence)
        {
            self.slots.push_back(Slot::Held(message));
        } else {
            let index = self
                .slots
                .partition_point(|slot| slot.sequence() < sequence);
            match self.slots[index] {
                // The consumer requeued this message earlier and gets it back: the slot it left
                // is still there, unswept, because live deliveries surround it.
                Slot::Settled { sequence: settled } if settled == sequence => {
                    self.slots[index] = Slot::Held(message);
                }
                ref slot => {
                    assert!(slot.sequence() != sequence, "sequence held twice");
                    self.slots.insert(index, Slot::Held(message));
                }
            }
        }
        self.held_count += 1;
    }

    /// Gives back the held delivery with this sequence, or `None` if this consumer does not hold
    /// it (never delivered to it, or already settled).
    pub(super) fn release(&mut self, sequence: u64) -> Option<Message> {
        // Most acks settle the oldest delivery, and a nack of many requeues newest first; skip
        // the search for both.
        let index = if self.slots.front().is_some_and(|s| s.sequence() == sequence) {
            0
        } else if self.slots.back().is_some_and(|s| s.sequence() == sequence) {
            self.slots.len() - 1
        } else {
            self.slots.partition_point(|s| s.sequence() < sequence)
        };
        let slot = self.slots.get_mut(index)?;
        if slot.sequence() != sequence || matches!(slot, Slot::Settled { .. }) {
            return None;
        }

        let Slot::Held(message) = std::mem::replace(slot, Slot::Settled { sequence }) else {
            unreachable!("checked to be held above");
        };
        self.held_count -= 1;
        self.sweep();
        Some(message)
    }

    /// Drops settled slots at both ends, and everywhere once they outnumber the live ones.
    fn sweep(&mut self) {
        while matches!(self.slots.front(), Some(Slot::Settled { .. })) {
            self.slots.pop_front();
        }
        while matches!(self.slots.back(), Some(Slot::Settled { .. })) {
            self.slots.pop_back();
        }

        let held_count = self.held_count as usize;
        let settled_count = self.slots.len() - held_count;
        if settled_count > held_count + SETTLED_SLOTS_SLACK {
            self.slots.retain(|slot| matches!(slot, Slot::Held(_)));
        }
        assert!(self.slots.len() >= held_count);
    }

    /// The held sequences, ascending.
    pub(super) fn held_sequences(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots.iter().filter_map(|slot| match slot {
            Slot::Held(message) => Some(message.sequence),
            Slot::Settled { .. } => None,
        })
    }

    /// Ends the consumer, giving back every message it held, ascending by sequence.
    pub(super) fn into_held(self) -> impl DoubleEndedIterator<Item = Message> {
        self.slots.into_iter().filter_map(|slot| match slot {
            Slot::Held(message) => Some(message),
            Slot::Settled { .. } => None,
        })
    }

    /// Every check that costs a walk of the held list; for tests.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        let held: Vec<u64> = self.held_sequences().collect();
        assert_eq!(held.len(), self.held_count as usize);
        assert!(self.held_count <= self.prefetch_count);
        assert!(
            self.slots
                .iter()
                .zip(self.slots.iter().skip(1))
                .all(|(a, b)| { a.sequence() < b.sequence() })
        );
        let settled_count = self.slots.len() - held.len();
        assert!(settled_count <= held.len() + SETTLED_SLOTS_SLACK);
    }
}
