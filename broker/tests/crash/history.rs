//! The crash test's history and the checker that reads it.
//!
//! Every task of the workload appends what it did or saw to one [`History`], in the order it did
//! or saw it. Only one consumer reads a queue at a time (one per queue per broker run, and a run's
//! consumers end before the next run starts), so the events of one queue are in the order its
//! consumers received them; that is the order the checker calls "delivery order".
//!
//! The checker's definitions, per queue `q`:
//!
//! - **confirmed**: the producer received a positive confirm (`Stored`) at `written` or
//!   `fsynced`, both of which survive `kill -9`. The test publishes at `fsynced`.
//! - **lost**: a confirmed message routed to `q` (by the workload's routing model) with no
//!   delivery from `q` anywhere in the history, the final drain included. Must be 0.
//! - **duplicate**: a delivery from `q` of a message already delivered from `q`. Legal only when
//!   marked `redelivered`: a delivery that was not acked, or whose ack was not yet journaled when
//!   the broker died, comes back, and it must say so. A duplicate without the flag is counted as
//!   **unmarked**. Must be 0.
//! - **acked then delivered**: a delivery of a message whose ack this consumer sent earlier in the
//!   same broker run. Within one run an ack that was sent is processed (the connection stays up
//!   until the kill), so the message must never come back in that run; across a kill it may,
//!   since acks are journaled at `written` after the broker reads them. Must be 0.
//! - **reordered**: take, per queue and producer, the first delivery of each message (later
//!   deliveries are redeliveries: requeued or returned after a restart, which go back to their
//!   original place and so may legitimately come after newer messages). A producer publishes on
//!   one connection at a time, its messages reach the owner shard in publish order, and a
//!   restart's new connection publishes only after everything the old one sent was stored or
//!   lost; so first deliveries must come in increasing publish sequence. One whose sequence is
//!   below an earlier first delivery's counts as reordered. Must be 0. This covers every
//!   delivered message, confirmed or not: an unconfirmed message that was stored anyway must keep
//!   its place too.
//! - **flag mismatch**: a delivery not marked `redelivered` whose delivery count is not 1. Must
//!   be 0.
//! - **misrouted** / **invalid**: a delivery from a queue the routing model does not send the
//!   message to, or a payload that is not exactly what the producer built. Must be 0.
//!
//! What the checker cannot see: whether an ack that was sent before a kill reached the journal
//! (both outcomes are legal), a message stored but never delivered without being confirmed
//! (legal: its publish was in flight), and anything the workload does not do (TTL, dead letters,
//! several consumers on one queue, transient queues).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::Mutex;

use ruuster_client::Durability;

/// A message's identity, carried in its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub producer: u32,
    pub sequence: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client accepted the publish (its frame is queued), in the producer's order.
    Published { id: MessageId, cycle: u32 },
    /// A positive confirm at `level`.
    Confirmed { id: MessageId, level: Durability },
    /// A confirm that refused the message (unroutable or rejected).
    Refused { id: MessageId },
    Delivered {
        queue: usize,
        id: MessageId,
        redelivered: bool,
        delivery_count: u32,
        cycle: u32,
    },
    /// The consumer sent an ack covering this delivery.
    Acked {
        queue: usize,
        id: MessageId,
        cycle: u32,
    },
    /// The consumer sent a nack with requeue for this delivery.
    Requeued {
        queue: usize,
        id: MessageId,
        cycle: u32,
    },
    /// A delivery whose payload is not one the workload built.
    Invalid { queue: usize, cycle: u32 },
    /// The broker was killed; `in_flight` publishes had no confirm yet.
    Killed { cycle: u32, in_flight: u64 },
}

/// The shared, append-only record of a run.
#[derive(Debug, Default)]
pub struct History {
    events: Mutex<Vec<Event>>,
}

impl History {
    pub fn record(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }

    pub fn record_all(&self, events: impl IntoIterator<Item = Event>) {
        self.events.lock().unwrap().extend(events);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

/// What the checker found in one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueFigures {
    /// Confirmed messages routed to this queue.
    pub expected: u64,
    pub deliveries: u64,
    /// Deliveries marked redelivered.
    pub redelivered: u64,
    /// Deliveries of a message already delivered from this queue (legal or not).
    pub duplicates: u64,
    pub duplicates_unmarked: u64,
    pub acked_then_delivered: u64,
    pub reordered: u64,
    pub lost: u64,
    pub flag_mismatches: u64,
    pub misrouted: u64,
    pub invalid: u64,
    /// Distinct messages delivered that were never confirmed (legal: in flight at a kill).
    pub unconfirmed_delivered: u64,
}

impl QueueFigures {
    fn add(&mut self, other: &QueueFigures) {
        self.expected += other.expected;
        self.deliveries += other.deliveries;
        self.redelivered += other.redelivered;
        self.duplicates += other.duplicates;
        self.duplicates_unmarked += other.duplicates_unmarked;
        self.acked_then_delivered += other.acked_then_delivered;
        self.reordered += other.reordered;
        self.lost += other.lost;
        self.flag_mismatches += other.flag_mismatches;
        self.misrouted += other.misrouted;
        self.invalid += other.invalid;
        self.unconfirmed_delivered += other.unconfirmed_delivered;
    }

    /// Everything that must be 0.
    pub fn violations(&self) -> u64 {
        self.lost
            + self.duplicates_unmarked
            + self.acked_then_delivered
            + self.reordered
            + self.flag_mismatches
            + self.misrouted
            + self.invalid
    }
}

/// The checker's result over a whole history.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub kills: u64,
    /// The fewest publishes without a confirm at any kill.
    pub in_flight_at_kill_min: u64,
    pub published: u64,
    pub confirmed: u64,
    /// Confirmed at `written` only (the test asks for `fsynced`; fsync always gives it).
    pub confirmed_below_fsynced: u64,
    pub refused: u64,
    pub queues: Vec<QueueFigures>,
    /// Messages still in the queues after the drain, a clean stop and a restart (filled in by
    /// the test, not from the history). See the test's docs for why it must be 0.
    pub left_after_clean_restart: u64,
    /// The first few violations, described.
    pub examples: Vec<String>,
}

impl Report {
    pub fn total(&self) -> QueueFigures {
        let mut total = QueueFigures::default();
        for queue in &self.queues {
            total.add(queue);
        }
        total
    }

    /// One line of figures, for the test's output and the soak report.
    pub fn summary(&self, label: &str) -> String {
        let total = self.total();
        format!(
            "{label}: cycles={} published={} confirmed={} confirmed_below_fsynced={} refused={} \
             in_flight_at_kill_min={} delivered={} redelivered={} duplicates={} \
             duplicates_unmarked={} acked_then_delivered={} reordered={} lost={} \
             flag_mismatches={} misrouted={} invalid={} unconfirmed_delivered={} \
             left_after_clean_restart={}",
            self.kills,
            self.published,
            self.confirmed,
            self.confirmed_below_fsynced,
            self.refused,
            self.in_flight_at_kill_min,
            total.deliveries,
            total.redelivered,
            total.duplicates,
            total.duplicates_unmarked,
            total.acked_then_delivered,
            total.reordered,
            total.lost,
            total.flag_mismatches,
            total.misrouted,
            total.invalid,
            total.unconfirmed_delivered,
            self.left_after_clean_restart,
        )
    }

    /// One line per queue.
    pub fn per_queue(&self, names: &[&str]) -> String {
        let mut text = String::new();
        for (queue, figures) in self.queues.iter().enumerate() {
            let _ = writeln!(
                text,
                "  queue {}: expected={} delivered={} redelivered={} duplicates={} \
                 duplicates_unmarked={} acked_then_delivered={} reordered={} lost={}",
                names.get(queue).copied().unwrap_or("?"),
                figures.expected,
                figures.deliveries,
                figures.redelivered,
                figures.duplicates,
                figures.duplicates_unmarked,
                figures.acked_then_delivered,
                figures.reordered,
                figures.lost,
            );
        }
        text
    }
}

/// How many violations are described in [`Report::examples`].
const EXAMPLES_MAX: usize = 12;

/// Per queue and message: what the checker has seen so far.
#[derive(Default)]
struct Seen {
    deliveries: u64,
    acked_in_cycle: Option<u32>,
}

/// Checks `events` against the definitions in the module docs. `targets` is the routing model:
/// the queues a message is routed to.
pub fn check(
    events: &[Event],
    queue_count: usize,
    targets: impl Fn(MessageId) -> Vec<usize>,
) -> Report {
    let mut report = Report {
        queues: vec![QueueFigures::default(); queue_count],
        in_flight_at_kill_min: u64::MAX,
        ..Report::default()
    };
    let mut confirmed: HashMap<MessageId, Durability> = HashMap::new();
    let mut published_in: HashMap<MessageId, u32> = HashMap::new();
    let mut seen: Vec<HashMap<MessageId, Seen>> =
        (0..queue_count).map(|_| HashMap::new()).collect();
    // Per (queue, producer): the highest sequence among first deliveries so far.
    let mut first_delivery_max: HashMap<(usize, u32), u64> = HashMap::new();
    let example = |report: &mut Report, text: String| {
        if report.examples.len() < EXAMPLES_MAX {
            report.examples.push(text);
        }
    };

    for event in events {
        match *event {
            Event::Published { id, cycle } => {
                report.published += 1;
                published_in.insert(id, cycle);
            }
            Event::Confirmed { id, level } => {
                if level >= Durability::Written {
                    confirmed.insert(id, level);
                }
            }
            Event::Refused { .. } => report.refused += 1,
            Event::Killed { in_flight, .. } => {
                report.kills += 1;
                report.in_flight_at_kill_min = report.in_flight_at_kill_min.min(in_flight);
            }
            Event::Invalid { queue, cycle } => {
                report.queues[queue].invalid += 1;
                example(
                    &mut report,
                    format!("invalid payload from queue {queue} in cycle {cycle}"),
                );
            }
            Event::Acked { queue, id, cycle } => {
                seen[queue].entry(id).or_default().acked_in_cycle = Some(cycle);
            }
            Event::Requeued { .. } => {}
            Event::Delivered {
                queue,
                id,
                redelivered,
                delivery_count,
                cycle,
            } => {
                let figures = &mut report.queues[queue];
                figures.deliveries += 1;
                if redelivered {
                    figures.redelivered += 1;
                }
                let mut problems = Vec::new();
                if !targets(id).contains(&queue) {
                    figures.misrouted += 1;
                    problems.push("misrouted");
                }
                if !redelivered && delivery_count != 1 {
                    figures.flag_mismatches += 1;
                    problems.push("not marked redelivered but delivery count is not 1");
                }
                let entry = seen[queue].entry(id).or_default();
                if entry.deliveries > 0 {
                    figures.duplicates += 1;
                    if !redelivered {
                        figures.duplicates_unmarked += 1;
                        problems.push("duplicate not marked redelivered");
                    }
                    if entry.acked_in_cycle == Some(cycle) {
                        figures.acked_then_delivered += 1;
                        problems.push("delivered again after its ack in the same run");
                    }
                } else {
                    let key = (queue, id.producer);
                    if first_delivery_max
                        .get(&key)
                        .is_some_and(|&highest| id.sequence < highest)
                    {
                        figures.reordered += 1;
                        problems.push("first delivered after a later message of its producer");
                    }
                    let highest = first_delivery_max.entry(key).or_insert(id.sequence);
                    *highest = (*highest).max(id.sequence);
                }
                entry.deliveries += 1;
                for problem in problems {
                    example(
                        &mut report,
                        format!(
                            "{problem}: queue {queue} producer {} sequence {} cycle {cycle} \
                             redelivered={redelivered} delivery_count={delivery_count}",
                            id.producer, id.sequence
                        ),
                    );
                }
            }
        }
    }

    for (&id, &level) in &confirmed {
        if level < Durability::Fsynced {
            report.confirmed_below_fsynced += 1;
        }
        for queue in targets(id) {
            let figures = &mut report.queues[queue];
            figures.expected += 1;
            if !seen[queue].contains_key(&id) {
                figures.lost += 1;
                let cycle = published_in.get(&id).copied().unwrap_or(u32::MAX);
                example(
                    &mut report,
                    format!(
                        "lost: queue {queue} producer {} sequence {} published in cycle {cycle}, \
                         confirmed {level:?}, never delivered",
                        id.producer, id.sequence
                    ),
                );
            }
        }
    }
    report.confirmed = confirmed.len() as u64;
    for (queue, delivered) in seen.iter().enumerate() {
        let unconfirmed: HashSet<&MessageId> = delivered
            .keys()
            .filter(|id| !confirmed.contains_key(id))
            .collect();
        report.queues[queue].unconfirmed_delivered = unconfirmed.len() as u64;
    }
    if report.kills == 0 {
        report.in_flight_at_kill_min = 0;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: usize = 2;

    fn id(sequence: u64) -> MessageId {
        MessageId {
            producer: 1,
            sequence,
        }
    }

    fn targets(_: MessageId) -> Vec<usize> {
        vec![0]
    }

    fn confirmed(sequence: u64) -> [Event; 2] {
        [
            Event::Published {
                id: id(sequence),
                cycle: 0,
            },
            Event::Confirmed {
                id: id(sequence),
                level: Durability::Fsynced,
            },
        ]
    }

    fn delivered(sequence: u64, redelivered: bool, cycle: u32) -> Event {
        Event::Delivered {
            queue: 0,
            id: id(sequence),
            redelivered,
            delivery_count: if redelivered { 2 } else { 1 },
            cycle,
        }
    }

    fn acked(sequence: u64, cycle: u32) -> Event {
        Event::Acked {
            queue: 0,
            id: id(sequence),
            cycle,
        }
    }

    fn run(events: Vec<Event>) -> QueueFigures {
        check(&events, Q, targets).total()
    }

    #[test]
    fn a_clean_history_has_no_violations() {
        let mut events: Vec<Event> = (0..3).flat_map(confirmed).collect();
        events.extend([delivered(0, false, 0), acked(0, 0), delivered(1, false, 0)]);
        events.push(Event::Killed {
            cycle: 0,
            in_flight: 1,
        });
        // 1 was not acked before the kill and 0's ack may not have been journaled: both return.
        events.extend([
            delivered(0, true, 1),
            delivered(1, true, 1),
            delivered(2, false, 1),
        ]);
        let figures = run(events);
        assert_eq!(figures.violations(), 0, "{figures:?}");
        assert_eq!((figures.duplicates, figures.redelivered), (2, 2));
    }

    #[test]
    fn a_confirmed_message_never_delivered_is_lost() {
        let mut events: Vec<Event> = (0..2).flat_map(confirmed).collect();
        events.push(delivered(1, false, 0));
        let figures = run(events);
        assert_eq!(figures.lost, 1);
        // Message 1 came first and 0 never did: not a reorder, since 0 had no delivery at all.
        assert_eq!(figures.reordered, 0);
    }

    #[test]
    fn an_unconfirmed_message_never_delivered_is_not_lost() {
        let events = vec![Event::Published {
            id: id(0),
            cycle: 0,
        }];
        assert_eq!(run(events).lost, 0);
    }

    #[test]
    fn a_second_delivery_without_the_redelivered_flag_is_an_unmarked_duplicate() {
        let mut events: Vec<Event> = confirmed(0).into();
        events.extend([delivered(0, false, 0), delivered(0, false, 1)]);
        let figures = run(events);
        assert_eq!(figures.duplicates_unmarked, 1);
    }

    #[test]
    fn a_delivery_after_an_ack_in_the_same_run_is_caught_but_not_after_a_kill() {
        let mut events: Vec<Event> = confirmed(0).into();
        events.extend([delivered(0, false, 0), acked(0, 0), delivered(0, true, 0)]);
        assert_eq!(run(events).acked_then_delivered, 1);

        let mut events: Vec<Event> = confirmed(0).into();
        events.extend([delivered(0, false, 0), acked(0, 0), delivered(0, true, 1)]);
        assert_eq!(run(events).acked_then_delivered, 0);
    }

    #[test]
    fn first_deliveries_out_of_publish_order_are_reordered_but_redeliveries_are_not() {
        let mut events: Vec<Event> = (0..3).flat_map(confirmed).collect();
        events.extend([
            delivered(0, false, 0),
            delivered(2, false, 0),
            delivered(1, false, 0),
        ]);
        assert_eq!(run(events).reordered, 1);

        let mut events: Vec<Event> = (0..3).flat_map(confirmed).collect();
        events.extend([
            delivered(0, false, 0),
            delivered(1, false, 0),
            delivered(2, false, 0),
            delivered(0, true, 0),
        ]);
        assert_eq!(run(events).reordered, 0);
    }

    #[test]
    fn sequence_zero_after_a_later_message_is_reordered() {
        let mut events: Vec<Event> = (0..2).flat_map(confirmed).collect();
        events.extend([delivered(1, false, 0), delivered(0, false, 0)]);
        assert_eq!(run(events).reordered, 1);
    }

    #[test]
    fn a_delivery_to_a_queue_the_message_was_not_routed_to_is_misrouted() {
        let mut events: Vec<Event> = confirmed(0).into();
        events.push(Event::Delivered {
            queue: 1,
            id: id(0),
            redelivered: false,
            delivery_count: 1,
            cycle: 0,
        });
        let report = check(&events, Q, targets);
        assert_eq!(report.total().misrouted, 1);
        assert_eq!(report.total().lost, 1);
    }

    #[test]
    fn a_first_delivery_with_a_count_above_one_and_no_flag_is_a_mismatch() {
        let mut events: Vec<Event> = confirmed(0).into();
        events.push(Event::Delivered {
            queue: 0,
            id: id(0),
            redelivered: false,
            delivery_count: 3,
            cycle: 0,
        });
        assert_eq!(run(events).flag_mismatches, 1);
    }
}
