//! Hands on the deliveries of one channel in delivery-tag order after they were merged from
//! several subscriptions.
//!
//! A consumer that reads several queues has one subscription per queue, and a task per
//! subscription forwards its deliveries into one buffer, so deliveries reach the consumer out of
//! tag order. The core acknowledges cumulatively ("this tag and every earlier one"), which is only
//! right if every earlier tag has reached it: otherwise the ack settles deliveries still in the
//! buffer, and their own ack later names a settled tag, which both RabbitMQ (406
//! PRECONDITION_FAILED, unknown delivery tag) and Ruuster (500 unknown-delivery-tag) answer by
//! closing the channel or connection. When every tag of the channel belongs to this consumer, tags
//! are 1, 2, 3, ... (AMQP 0-9-1 numbers them per channel, Ruuster per connection), so a missing
//! tag is one that another forwarder still holds, and waiting for it restores the order.

use std::collections::BTreeMap;

/// Deliveries held until the ones before them arrive.
#[derive(Debug)]
pub struct TagOrder<T> {
    next_tag: u64,
    held: BTreeMap<u64, T>,
    /// More held deliveries than this means a tag will never come (the channel is shared, or tags
    /// are not contiguous): the caller's prefetch times its subscriptions.
    held_max: usize,
}

impl<T> TagOrder<T> {
    /// Expects tags from 1, the first a channel or connection gives.
    pub fn new(held_max: usize) -> Self {
        TagOrder {
            next_tag: 1,
            held: BTreeMap::new(),
            held_max,
        }
    }

    /// Takes a delivery; refuses a tag already handed on or held, and a buffer past its bound.
    pub fn push(&mut self, tag: u64, delivery: T) -> Result<(), String> {
        if tag < self.next_tag || self.held.contains_key(&tag) {
            return Err(format!("delivery tag {tag} arrived twice"));
        }
        if self.held.len() >= self.held_max {
            return Err(format!(
                "{} deliveries wait for tag {}, which has not arrived; tags are not contiguous",
                self.held.len(),
                self.next_tag
            ));
        }
        self.held.insert(tag, delivery);
        Ok(())
    }

    /// The delivery with the next tag, if it has arrived.
    pub fn pop(&mut self) -> Option<T> {
        let delivery = self.held.remove(&self.next_tag)?;
        self.next_tag += 1;
        Some(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a delivery handed on before an earlier tag, or lost while held.
    #[test]
    fn deliveries_come_out_in_tag_order_whatever_order_they_arrive_in() {
        let mut order = TagOrder::new(8);
        let mut out = Vec::new();
        for tag in [2, 3, 1, 5, 4, 6] {
            order.push(tag, tag * 10).unwrap();
            while let Some(delivery) = order.pop() {
                out.push(delivery);
            }
        }
        assert_eq!(out, vec![10, 20, 30, 40, 50, 60]);
    }

    /// Catches a hang or unbounded growth when tags are not what a channel of one's own gives.
    #[test]
    fn a_repeated_tag_and_a_gap_that_never_fills_are_errors() {
        let mut order = TagOrder::new(2);
        order.push(1, ()).unwrap();
        assert!(order.pop().is_some());
        assert!(order.push(1, ()).is_err());
        order.push(3, ()).unwrap();
        assert!(order.push(3, ()).is_err());
        order.push(4, ()).unwrap();
        let error = order.push(5, ()).unwrap_err();
        assert!(error.contains("tag 2"), "{error}");
    }
}
