//! Routing: the exchanges, queues and bindings of the broker, compiled into an immutable
//! [`RoutingTable`] that every shard reads to turn (exchange, routing key, headers) into the set of
//! queues a published message goes to.
//!
//! The invariant: a table is never mutated after [`RoutingTable::build`] returns. The control
//! plane (shard 0) builds a new table from the whole metadata on every change, gives it the next
//! `version`, and each shard swaps its `Rc`/`Arc` pointer; a route in progress keeps the snapshot
//! it started with. A route never allocates once its [`RouteTargets`] has grown to the size of the
//! table (the scratch space lives in `RouteTargets`, which a connection reuses), and a route's
//! result names each target queue exactly once, however many bindings led to it.
//!
//! Semantics follow AMQP 0-9-1 as RabbitMQ implements it:
//!
//! - **default exchange** (the empty name): routes to the queue whose name equals the routing key.
//!   Every queue is bound to it implicitly; binding to it explicitly is a build error.
//! - **direct**: a binding matches when its key equals the routing key, byte for byte.
//! - **fanout**: every binding matches; keys are ignored.
//! - **topic**: keys are split on every `.` into words, and every word is legal, including the
//!   empty one: `a..b` is `a`, ``, `b`; `.a` starts with an empty word; the key `""` is one empty
//!   word. In a binding key, the word `*` matches exactly one word and `#` matches zero or more;
//!   any other word (`a*`, `##`) is literal. In a routing key every word is literal. One empty
//!   word for `""` is what RabbitMQ's Khepri-era topic store does; its older Mnesia trie split
//!   `""` into zero words, so there `*` did not match `""`, and here it does.
//! - **headers**: the binding argument `x-match` is `all` (the default when absent), `any`,
//!   `all-with-x` or `any-with-x`. Under `all` and `any` every argument whose key starts with `x-`
//!   is ignored; under the `-with-x` modes only `x-match` itself is. Each remaining argument is a
//!   condition: a [`ArgumentValue::Void`] value asks only that the header be present, any other
//!   value asks for an equal header value (equality is defined in [`headers`]). `all` with no
//!   condition matches every message and `any` with none matches nothing, as in RabbitMQ. The
//!   routing key is ignored.
//!
//! Out of scope: exchange-to-exchange bindings, alternate exchanges, internal exchanges and
//! virtual hosts (one table is one virtual host's namespace).
//!
//! Route cost, beyond a hash of the exchange name: default and direct, one hash of the routing
//! key; fanout, one step per bound queue; topic, `O(words × live trie nodes)` (the `topic`
//! module's docs explain why it is never exponential, whatever the `#`s); headers, one lookup per
//! distinct header key, one comparison per distinct condition and one flag read per condition of
//! each binding. Then a counting sort groups the targets by shard, `O(targets + shards)`.
//!
//! Build cost: wholesale, `O(exchanges + queues + sum of binding key and argument lengths)` with a
//! hash insert per name, per topic word and per headers condition; 10,000 bindings build in
//! 4–13 ms on the development machine (the benchmark reports the figure). A rebuild per declare
//! makes a burst of N declares cost N rebuilds: the control plane should fold the declares that
//! are waiting into one new version. An incremental builder would remove the rebuild; at
//! control-plane rates it is not yet worth its complexity.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

pub mod headers;
mod targets;
mod topic;

#[cfg(test)]
mod model_tests;

pub use headers::{
    ArgumentValue, BindingArgument, HeaderValue, MatchMode, MessageHeaders, NoHeaders,
};
pub use targets::RouteTargets;

use headers::{HeadersExchange, HeadersExchangeBuilder};
use topic::{TopicTrie, TopicTrieBuilder};

/// The longest exchange or queue name, in bytes: AMQP 0-9-1 carries names as a shortstr, whose
/// length prefix is one byte.
pub const NAME_LENGTH_MAX_BYTES: usize = 255;

/// The longest routing or binding key, in bytes: a shortstr, like names.
pub const KEY_LENGTH_MAX_BYTES: usize = 255;

/// The most shards a table can place queues on. Grouping targets by shard costs one counter per
/// shard per route, so the bound keeps that cost small; 1,024 is far above any core count we run.
pub const SHARD_COUNT_MAX: usize = 1024;

/// The most arguments one binding may carry. A headers exchange checks every argument of every
/// binding on each publish, so this bounds the cost a single binding adds to the data path.
pub const BINDING_ARGUMENT_COUNT_MAX: usize = 64;

/// The most queues one table may name: target slots are `u32` indexes into the queue list.
pub const QUEUE_COUNT_MAX: usize = u32::MAX as usize;

/// A queue's identity, assigned by the control plane and stable across table versions.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct QueueId(pub u32);

/// The shard (core) that owns a queue: its ready list, unacked deliveries and consumers live there.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ShardId(pub u16);

/// The routing rule of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

/// One declared exchange. The empty name is the default exchange, which always exists and cannot
/// be declared.
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
}

/// One declared queue and the shard that owns it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    pub id: QueueId,
    pub owner: ShardId,
}

/// One binding from an exchange to a queue, both named as a client names them in `queue.bind`.
/// `key` matters to direct and topic exchanges, `arguments` to headers exchanges; the other
/// exchange kinds ignore them.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    pub key: String,
    pub arguments: Vec<BindingArgument>,
}

/// Everything the control plane knows that routing depends on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutingMetadata {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
}

/// Why a table could not be built from metadata. The control plane checks declares before it
/// builds, so these mean a control-plane bug or a damaged metadata file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    NameTooLong {
        name_prefix: String,
        length_bytes: usize,
    },
    DefaultExchangeDeclared,
    DuplicateExchange {
        exchange: String,
    },
    EmptyQueueName {
        id: QueueId,
    },
    DuplicateQueueName {
        queue: String,
    },
    DuplicateQueueId {
        id: QueueId,
    },
    ShardOutOfRange {
        queue: String,
        owner: ShardId,
    },
    TooManyQueues {
        count: usize,
    },
    BindingToDefaultExchange {
        queue: String,
    },
    BindingUnknownExchange {
        exchange: String,
    },
    BindingUnknownQueue {
        queue: String,
    },
    BindingKeyTooLong {
        exchange: String,
        length_bytes: usize,
    },
    TooManyArguments {
        exchange: String,
        count: usize,
    },
    InvalidMatchMode {
        exchange: String,
        queue: String,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NameTooLong {
                name_prefix,
                length_bytes,
            } => write!(
                formatter,
                "name starting {name_prefix:?} is {length_bytes} bytes, over the limit of \
                 {NAME_LENGTH_MAX_BYTES}"
            ),
            Self::DefaultExchangeDeclared => {
                write!(
                    formatter,
                    "the default exchange (empty name) cannot be declared"
                )
            }
            Self::DuplicateExchange { exchange } => {
                write!(formatter, "exchange {exchange:?} is declared twice")
            }
            Self::EmptyQueueName { id } => write!(formatter, "queue {} has an empty name", id.0),
            Self::DuplicateQueueName { queue } => {
                write!(formatter, "queue {queue:?} is declared twice")
            }
            Self::DuplicateQueueId { id } => write!(formatter, "queue id {} is used twice", id.0),
            Self::ShardOutOfRange { queue, owner } => write!(
                formatter,
                "queue {queue:?} is owned by shard {}, over the limit of {SHARD_COUNT_MAX} shards",
                owner.0
            ),
            Self::TooManyQueues { count } => {
                write!(
                    formatter,
                    "{count} queues, over the limit of {QUEUE_COUNT_MAX}"
                )
            }
            Self::BindingToDefaultExchange { queue } => write!(
                formatter,
                "queue {queue:?} cannot be bound to the default exchange explicitly"
            ),
            Self::BindingUnknownExchange { exchange } => {
                write!(formatter, "binding names unknown exchange {exchange:?}")
            }
            Self::BindingUnknownQueue { queue } => {
                write!(formatter, "binding names unknown queue {queue:?}")
            }
            Self::BindingKeyTooLong {
                exchange,
                length_bytes,
            } => write!(
                formatter,
                "binding key on exchange {exchange:?} is {length_bytes} bytes, over the limit of \
                 {KEY_LENGTH_MAX_BYTES}"
            ),
            Self::TooManyArguments { exchange, count } => write!(
                formatter,
                "binding on exchange {exchange:?} has {count} arguments, over the limit of \
                 {BINDING_ARGUMENT_COUNT_MAX}"
            ),
            Self::InvalidMatchMode { exchange, queue } => write!(
                formatter,
                "binding of queue {queue:?} to exchange {exchange:?} has an x-match that is not \
                 all, any, all-with-x or any-with-x"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// Why a message could not be routed. The broker maps these to numbered wire errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    UnknownExchange,
    RoutingKeyTooLong { length_bytes: usize },
}

impl fmt::Display for RouteError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownExchange => write!(formatter, "no exchange with that name"),
            Self::RoutingKeyTooLong { length_bytes } => write!(
                formatter,
                "routing key is {length_bytes} bytes, over the limit of {KEY_LENGTH_MAX_BYTES}"
            ),
        }
    }
}

impl std::error::Error for RouteError {}

// Shard 0 builds each table and sends it to every shard, so it must cross threads.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<RoutingTable>();
    shareable::<RouteTargets>();
};

/// One immutable snapshot of the routing rules. Cheap to share behind an `Rc` or `Arc`.
#[derive(Debug)]
pub struct RoutingTable {
    version: u64,
    /// Queues by slot: every compiled binding names its queue by its index here.
    queues: Box<[QueueSlot]>,
    /// One more than the highest owner shard, so a route groups targets with a counter per shard.
    shard_count: usize,
    queue_slot_by_name: NameMap<u32>,
    exchanges: NameMap<Exchange>,
}

/// A queue as routing sees it: the id a route returns and the shard it is grouped under.
#[derive(Clone, Copy, Debug)]
struct QueueSlot {
    id: QueueId,
    owner: ShardId,
}

#[derive(Debug)]
enum Exchange {
    /// Queue slots by binding key, each list free of repeats.
    Direct(NameMap<Box<[u32]>>),
    /// Every bound queue slot, free of repeats.
    Fanout(Box<[u32]>),
    Topic(TopicTrie),
    /// Every binding is checked on every route; shared conditions are evaluated once.
    Headers(HeadersExchange),
}

impl RoutingTable {
    /// Builds the table for `metadata`. `version` is the control plane's counter, carried so that a
    /// shard can tell which declares a route has seen.
    pub fn build(version: u64, metadata: &RoutingMetadata) -> Result<RoutingTable, BuildError> {
        let (queues, queue_slot_by_name) = index_queues(&metadata.queues)?;
        let shard_count = queues
            .iter()
            .map(|queue| usize::from(queue.owner.0) + 1)
            .max();

        let mut builders = NameMap::<ExchangeBuilder>::default();
        for exchange in &metadata.exchanges {
            check_name(&exchange.name)?;
            if exchange.name.is_empty() {
                return Err(BuildError::DefaultExchangeDeclared);
            }
            match builders.entry(exchange.name.as_str().into()) {
                Entry::Occupied(_) => {
                    return Err(BuildError::DuplicateExchange {
                        exchange: exchange.name.clone(),
                    });
                }
                Entry::Vacant(vacant) => {
                    vacant.insert(ExchangeBuilder::new(exchange.kind));
                }
            }
        }

        for binding in &metadata.bindings {
            let queue_slot = resolve_binding(binding, &queue_slot_by_name)?;
            let Some(builder) = builders.get_mut(binding.exchange.as_str()) else {
                return Err(BuildError::BindingUnknownExchange {
                    exchange: binding.exchange.clone(),
                });
            };
            builder.add(binding, queue_slot)?;
        }

        let exchanges = builders
            .into_iter()
            .map(|(name, builder)| (name, builder.finish()))
            .collect();
        Ok(RoutingTable {
            version,
            queues,
            shard_count: shard_count.unwrap_or(0),
            queue_slot_by_name,
            exchanges,
        })
    }

    /// The control plane's version of this snapshot.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// One more than the highest shard that owns a queue in this table.
    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// Fills `out` with the queues that a message published to `exchange` with `routing_key` and
    /// `headers` goes to, each once, grouped by owning shard. `out` is cleared first, also when an
    /// error is returned. Exchanges other than headers never call `headers`; pass [`NoHeaders`]
    /// when the message has none.
    pub fn route<H>(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &H,
        out: &mut RouteTargets,
    ) -> Result<(), RouteError>
    where
        H: MessageHeaders + ?Sized,
    {
        out.begin(self.queues.len());
        if routing_key.len() > KEY_LENGTH_MAX_BYTES {
            return Err(RouteError::RoutingKeyTooLong {
                length_bytes: routing_key.len(),
            });
        }

        if exchange.is_empty() {
            if let Some(&slot) = self.queue_slot_by_name.get(routing_key) {
                out.matched.insert(slot);
            }
        } else {
            match self.exchanges.get(exchange) {
                None => return Err(RouteError::UnknownExchange),
                Some(Exchange::Direct(by_key)) => {
                    if let Some(slots) = by_key.get(routing_key) {
                        out.matched.insert_all(slots);
                    }
                }
                Some(Exchange::Fanout(slots)) => out.matched.insert_all(slots),
                Some(Exchange::Topic(trie)) => {
                    trie.route(routing_key, &mut out.topic_scratch, &mut out.matched)
                }
                Some(Exchange::Headers(exchange)) => {
                    exchange.route(headers, &mut out.condition_holds, &mut out.matched)
                }
            }
        }

        out.group_by_shard(&self.queues, self.shard_count);
        Ok(())
    }
}

/// Assigns each queue a slot, checking names, ids and owners.
fn index_queues(specs: &[QueueSpec]) -> Result<(Box<[QueueSlot]>, NameMap<u32>), BuildError> {
    if specs.len() > QUEUE_COUNT_MAX {
        return Err(BuildError::TooManyQueues { count: specs.len() });
    }

    let mut slot_by_name = NameMap::<u32>::default();
    let mut seen_ids = HashMap::<QueueId, ()>::with_capacity(specs.len());
    let mut queues = Vec::with_capacity(specs.len());
    for spec in specs {
        check_name(&spec.name)?;
        if spec.name.is_empty() {
            return Err(BuildError::EmptyQueueName { id: spec.id });
        }
        if usize::from(spec.owner.0) >= SHARD_COUNT_MAX {
            return Err(BuildError::ShardOutOfRange {
                queue: spec.name.clone(),
                owner: spec.owner,
            });
        }
        if seen_ids.insert(spec.id, ()).is_some() {
            return Err(BuildError::DuplicateQueueId { id: spec.id });
        }
        let slot = u32::try_from(queues.len()).expect("queue count checked against u32 above");
        if slot_by_name
            .insert(spec.name.as_str().into(), slot)
            .is_some()
        {
            return Err(BuildError::DuplicateQueueName {
                queue: spec.name.clone(),
            });
        }
        queues.push(QueueSlot {
            id: spec.id,
            owner: spec.owner,
        });
    }
    Ok((queues.into_boxed_slice(), slot_by_name))
}

/// Checks what every binding needs whatever its exchange kind, and returns its queue's slot.
fn resolve_binding(binding: &BindingSpec, slot_by_name: &NameMap<u32>) -> Result<u32, BuildError> {
    if binding.exchange.is_empty() {
        return Err(BuildError::BindingToDefaultExchange {
            queue: binding.queue.clone(),
        });
    }
    if binding.key.len() > KEY_LENGTH_MAX_BYTES {
        return Err(BuildError::BindingKeyTooLong {
            exchange: binding.exchange.clone(),
            length_bytes: binding.key.len(),
        });
    }
    if binding.arguments.len() > BINDING_ARGUMENT_COUNT_MAX {
        return Err(BuildError::TooManyArguments {
            exchange: binding.exchange.clone(),
            count: binding.arguments.len(),
        });
    }
    slot_by_name
        .get(binding.queue.as_str())
        .copied()
        .ok_or_else(|| BuildError::BindingUnknownQueue {
            queue: binding.queue.clone(),
        })
}

fn check_name(name: &str) -> Result<(), BuildError> {
    if name.len() <= NAME_LENGTH_MAX_BYTES {
        return Ok(());
    }
    let prefix_end = (0..=32)
        .rev()
        .find(|&index| name.is_char_boundary(index))
        .unwrap_or(0);
    Err(BuildError::NameTooLong {
        name_prefix: name[..prefix_end].to_owned(),
        length_bytes: name.len(),
    })
}

/// An exchange while bindings are being added to it.
enum ExchangeBuilder {
    Direct(NameMap<Vec<u32>>),
    Fanout(Vec<u32>),
    Topic(TopicTrieBuilder),
    Headers(HeadersExchangeBuilder),
}

impl ExchangeBuilder {
    fn new(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => Self::Direct(NameMap::default()),
            ExchangeKind::Fanout => Self::Fanout(Vec::new()),
            ExchangeKind::Topic => Self::Topic(TopicTrieBuilder::default()),
            ExchangeKind::Headers => Self::Headers(HeadersExchangeBuilder::default()),
        }
    }

    fn add(&mut self, binding: &BindingSpec, queue_slot: u32) -> Result<(), BuildError> {
        match self {
            Self::Direct(by_key) => {
                by_key
                    .entry(binding.key.as_str().into())
                    .or_default()
                    .push(queue_slot);
            }
            Self::Fanout(slots) => slots.push(queue_slot),
            Self::Topic(trie) => trie.insert(&binding.key, queue_slot),
            Self::Headers(builder) => {
                builder.add(&binding.arguments, queue_slot).ok_or_else(|| {
                    BuildError::InvalidMatchMode {
                        exchange: binding.exchange.clone(),
                        queue: binding.queue.clone(),
                    }
                })?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Exchange {
        match self {
            Self::Direct(by_key) => Exchange::Direct(
                by_key
                    .into_iter()
                    .map(|(key, slots)| (key, without_repeats(slots)))
                    .collect(),
            ),
            Self::Fanout(slots) => Exchange::Fanout(without_repeats(slots)),
            Self::Topic(trie) => Exchange::Topic(trie.finish()),
            Self::Headers(builder) => Exchange::Headers(builder.finish()),
        }
    }
}

/// Sorts and removes repeated slots: binding the same queue twice with the same key is legal and
/// must still deliver one copy.
fn without_repeats(mut slots: Vec<u32>) -> Box<[u32]> {
    slots.sort_unstable();
    slots.dedup();
    slots.into_boxed_slice()
}

/// A hash map keyed by names and words, hashed with FNV-1a.
///
/// SipHash (std's default) costs more than the rest of a direct route for short keys. FNV is not
/// resistant to chosen collisions: only keys present in the table share a bucket, and those come
/// from authenticated declares, so a client who wanted to slow lookups would have to declare the
/// colliding bindings itself. A per-vhost binding limit is the defence, and it does not exist yet.
type NameMap<V> = HashMap<Box<str>, V, FnvBuildHasher>;

#[derive(Clone, Copy, Debug, Default)]
struct FnvBuildHasher;

impl BuildHasher for FnvBuildHasher {
    type Hasher = FnvHasher;

    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(FNV_OFFSET_BASIS)
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, id: u32, owner: u16) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            id: QueueId(id),
            owner: ShardId(owner),
        }
    }

    fn exchange(name: &str, kind: ExchangeKind) -> ExchangeSpec {
        ExchangeSpec {
            name: name.to_owned(),
            kind,
        }
    }

    fn bind(exchange: &str, queue: &str, key: &str) -> BindingSpec {
        BindingSpec {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            key: key.to_owned(),
            arguments: Vec::new(),
        }
    }

    fn bind_headers(queue: &str, arguments: &[(&str, ArgumentValue)]) -> BindingSpec {
        let arguments = arguments
            .iter()
            .map(|(key, value)| BindingArgument {
                key: (*key).to_owned(),
                value: value.clone(),
            })
            .collect();
        BindingSpec {
            arguments,
            ..bind("h", queue, "")
        }
    }

    fn text(value: &str) -> ArgumentValue {
        ArgumentValue::Str(value.to_owned())
    }

    /// Queues q0..q9 with ids 100.., alternating between shards 0 and 1.
    fn table(exchanges: &[ExchangeSpec], bindings: Vec<BindingSpec>) -> RoutingTable {
        let queues =
            (0..10).map(|index| queue(&format!("q{index}"), 100 + index, index as u16 % 2));
        let metadata = RoutingMetadata {
            exchanges: exchanges.to_vec(),
            queues: queues.collect(),
            bindings,
        };
        RoutingTable::build(7, &metadata).expect("valid metadata")
    }

    /// The ids of the queues `key` reaches on `exchange`, sorted.
    fn route_ids(table: &RoutingTable, exchange: &str, key: &str) -> Vec<u32> {
        route_with_headers(table, exchange, key, &NoHeaders)
    }

    fn route_with_headers<H: MessageHeaders + ?Sized>(
        table: &RoutingTable,
        exchange: &str,
        key: &str,
        headers: &H,
    ) -> Vec<u32> {
        let mut out = RouteTargets::new();
        table
            .route(exchange, key, headers, &mut out)
            .expect("routable");
        let mut ids: Vec<u32> = out.queues().iter().map(|id| id.0).collect();
        ids.sort_unstable();
        ids
    }

    /// A topic table with one binding per pattern, pattern `index` bound to queue `q<index>`.
    fn topic_table(patterns: &[&str]) -> RoutingTable {
        let bindings = patterns
            .iter()
            .enumerate()
            .map(|(index, pattern)| bind("t", &format!("q{index}"), pattern))
            .collect();
        table(&[exchange("t", ExchangeKind::Topic)], bindings)
    }

    fn topic_matches(pattern: &str, key: &str) -> bool {
        route_ids(&topic_table(&[pattern]), "t", key) == [100]
    }

    #[test]
    fn default_exchange_routes_to_the_queue_named_by_the_key() {
        let table = table(&[], Vec::new());
        assert_eq!(route_ids(&table, "", "q3"), [103]);
        assert_eq!(route_ids(&table, "", "q10"), Vec::<u32>::new());
        assert_eq!(route_ids(&table, "", ""), Vec::<u32>::new());
    }

    #[test]
    fn binding_to_the_default_exchange_is_refused() {
        let metadata = RoutingMetadata {
            queues: vec![queue("q", 1, 0)],
            bindings: vec![bind("", "q", "q")],
            ..RoutingMetadata::default()
        };
        let error = RoutingTable::build(1, &metadata).unwrap_err();
        assert_eq!(
            error,
            BuildError::BindingToDefaultExchange {
                queue: "q".to_owned()
            }
        );
    }

    #[test]
    fn declaring_the_default_exchange_is_refused() {
        let metadata = RoutingMetadata {
            exchanges: vec![exchange("", ExchangeKind::Direct)],
            ..RoutingMetadata::default()
        };
        let error = RoutingTable::build(1, &metadata).unwrap_err();
        assert_eq!(error, BuildError::DefaultExchangeDeclared);
    }

    #[test]
    fn metadata_errors_name_what_is_wrong() {
        let long_name = "n".repeat(NAME_LENGTH_MAX_BYTES + 1);
        let cases = [
            (
                RoutingMetadata {
                    exchanges: vec![exchange(&long_name, ExchangeKind::Fanout)],
                    ..RoutingMetadata::default()
                },
                BuildError::NameTooLong {
                    name_prefix: "n".repeat(32),
                    length_bytes: 256,
                },
            ),
            (
                RoutingMetadata {
                    queues: vec![queue("a", 1, 0), queue("b", 1, 0)],
                    ..RoutingMetadata::default()
                },
                BuildError::DuplicateQueueId { id: QueueId(1) },
            ),
            (
                RoutingMetadata {
                    queues: vec![queue("a", 1, 0), queue("a", 2, 0)],
                    ..RoutingMetadata::default()
                },
                BuildError::DuplicateQueueName {
                    queue: "a".to_owned(),
                },
            ),
            (
                RoutingMetadata {
                    queues: vec![queue("a", 1, SHARD_COUNT_MAX as u16)],
                    ..RoutingMetadata::default()
                },
                BuildError::ShardOutOfRange {
                    queue: "a".to_owned(),
                    owner: ShardId(SHARD_COUNT_MAX as u16),
                },
            ),
            (
                RoutingMetadata {
                    queues: vec![queue("a", 1, 0)],
                    bindings: vec![bind("missing", "a", "")],
                    ..RoutingMetadata::default()
                },
                BuildError::BindingUnknownExchange {
                    exchange: "missing".to_owned(),
                },
            ),
            (
                RoutingMetadata {
                    exchanges: vec![exchange("d", ExchangeKind::Direct)],
                    bindings: vec![bind("d", "missing", "")],
                    ..RoutingMetadata::default()
                },
                BuildError::BindingUnknownQueue {
                    queue: "missing".to_owned(),
                },
            ),
            (
                RoutingMetadata {
                    exchanges: vec![exchange("d", ExchangeKind::Direct)],
                    queues: vec![queue("a", 1, 0)],
                    bindings: vec![bind("d", "a", &"k".repeat(KEY_LENGTH_MAX_BYTES + 1))],
                },
                BuildError::BindingKeyTooLong {
                    exchange: "d".to_owned(),
                    length_bytes: 256,
                },
            ),
        ];
        for (metadata, expected) in cases {
            assert_eq!(RoutingTable::build(1, &metadata).unwrap_err(), expected);
        }
    }

    #[test]
    fn unknown_exchange_and_long_key_are_errors_that_leave_no_targets() {
        let table = table(
            &[exchange("f", ExchangeKind::Fanout)],
            vec![bind("f", "q1", "")],
        );
        let mut out = RouteTargets::new();
        table.route("f", "", &NoHeaders, &mut out).unwrap();
        assert_eq!(out.len(), 1);

        let result = table.route("missing", "", &NoHeaders, &mut out);
        assert_eq!(result, Err(RouteError::UnknownExchange));
        assert!(out.is_empty());

        let long_key = "k".repeat(KEY_LENGTH_MAX_BYTES + 1);
        let result = table.route("f", &long_key, &NoHeaders, &mut out);
        assert_eq!(
            result,
            Err(RouteError::RoutingKeyTooLong { length_bytes: 256 })
        );
        assert!(out.is_empty());
        assert_eq!(table.version(), 7);
    }

    #[test]
    fn direct_exchange_matches_the_whole_key_exactly() {
        let bindings = vec![
            bind("d", "q0", "a.b"),
            bind("d", "q1", "a"),
            bind("d", "q2", ""),
        ];
        let table = table(&[exchange("d", ExchangeKind::Direct)], bindings);
        assert_eq!(route_ids(&table, "d", "a.b"), [100]);
        assert_eq!(route_ids(&table, "d", "a"), [101]);
        assert_eq!(route_ids(&table, "d", ""), [102]);
        assert_eq!(route_ids(&table, "d", "a.*"), Vec::<u32>::new());
        assert_eq!(route_ids(&table, "d", "A"), Vec::<u32>::new());
    }

    #[test]
    fn fanout_exchange_reaches_every_bound_queue_whatever_the_key() {
        let bindings = vec![
            bind("f", "q0", "x"),
            bind("f", "q3", "y"),
            bind("f", "q0", "z"),
        ];
        let table = table(&[exchange("f", ExchangeKind::Fanout)], bindings);
        assert_eq!(route_ids(&table, "f", "anything"), [100, 103]);
        assert_eq!(route_ids(&table, "f", ""), [100, 103]);
    }

    #[test]
    fn a_queue_reached_by_several_bindings_is_listed_once() {
        let bindings = vec![
            bind("t", "q0", "a.*"),
            bind("t", "q0", "#"),
            bind("t", "q0", "a.b"),
            bind("t", "q0", "a.b"),
            bind("t", "q1", "#.b"),
        ];
        let table = table(&[exchange("t", ExchangeKind::Topic)], bindings);
        assert_eq!(route_ids(&table, "t", "a.b"), [100, 101]);

        let bindings = vec![bind("d", "q0", "k"), bind("d", "q0", "k")];
        let table = super::tests::table(&[exchange("d", ExchangeKind::Direct)], bindings);
        assert_eq!(route_ids(&table, "d", "k"), [100]);
    }

    #[test]
    fn targets_are_grouped_by_owning_shard() {
        let bindings = (0..10)
            .map(|index| bind("f", &format!("q{index}"), ""))
            .collect();
        let table = table(&[exchange("f", ExchangeKind::Fanout)], bindings);
        let mut out = RouteTargets::new();
        table.route("f", "", &NoHeaders, &mut out).unwrap();

        let even: Vec<u32> = out.for_shard(ShardId(0)).iter().map(|id| id.0).collect();
        let odd: Vec<u32> = out.for_shard(ShardId(1)).iter().map(|id| id.0).collect();
        assert_eq!(even, [100, 102, 104, 106, 108]);
        assert_eq!(odd, [101, 103, 105, 107, 109]);
        assert!(out.for_shard(ShardId(2)).is_empty());
        assert_eq!(out.queues().len(), 10);
        let shards: Vec<u16> = out.by_shard().map(|(shard, _)| shard.0).collect();
        assert_eq!(shards, [0, 1]);
        assert_eq!(table.shard_count(), 2);

        table.route("", "q3", &NoHeaders, &mut out).unwrap();
        assert!(out.for_shard(ShardId(0)).is_empty());
        assert_eq!(out.for_shard(ShardId(1)), [QueueId(103)]);
        assert_eq!(out.by_shard().count(), 1);
    }

    #[test]
    fn topic_star_matches_exactly_one_word() {
        assert!(topic_matches("a.*", "a.b"));
        assert!(topic_matches("*.b", "a.b"));
        assert!(!topic_matches("a.*", "a"));
        assert!(!topic_matches("a.*", "a.b.c"));
        assert!(!topic_matches("*", "a.b"));
        assert!(topic_matches("a.*.c", "a.x.c"));
        assert!(!topic_matches("a.*.c", "a.c"));
    }

    #[test]
    fn topic_hash_alone_matches_every_key_including_the_empty_one() {
        for key in ["", "a", "a.b.c", ".", "..", "#", "*"] {
            assert!(topic_matches("#", key), "{key:?}");
        }
    }

    #[test]
    fn topic_hash_between_words_matches_zero_or_more_words() {
        assert!(topic_matches("a.#.b", "a.b"));
        assert!(topic_matches("a.#.b", "a.x.b"));
        assert!(topic_matches("a.#.b", "a.x.y.z.b"));
        assert!(topic_matches("a.#.b", "a.b.b"));
        assert!(!topic_matches("a.#.b", "a.b.c"));
        assert!(!topic_matches("a.#.b", "a"));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(!topic_matches("a.#", "b.a"));
        assert!(topic_matches("#.a", "a"));
        assert!(topic_matches("#.a", "x.y.a"));
        assert!(!topic_matches("#.a", "a.x"));
    }

    #[test]
    fn topic_hash_hash_matches_what_hash_matches() {
        for key in ["", "a", "a.b.c"] {
            assert!(topic_matches("#.#", key), "{key:?}");
            assert!(topic_matches("#.#.#", key), "{key:?}");
        }
        assert!(topic_matches("a.#.#.b", "a.b"));
        assert!(topic_matches("a.#.#.b", "a.x.y.b"));
    }

    #[test]
    fn topic_star_hash_needs_at_least_one_word() {
        assert!(topic_matches("*.#", "a"));
        assert!(topic_matches("*.#", "a.b.c"));
        assert!(topic_matches("#.*", "a"));
        assert!(topic_matches("#.*.#", "a.b"));
        assert!(topic_matches("*.#.*", "a.b"));
        assert!(!topic_matches("*.#.*", "a"));
        // The empty key is one empty word, which `*` matches.
        assert!(topic_matches("*.#", ""));
        assert!(!topic_matches("*.*.#", ""));
    }

    #[test]
    fn topic_empty_words_are_words() {
        assert!(topic_matches("a..b", "a..b"));
        assert!(!topic_matches("a..b", "a.b"));
        assert!(topic_matches("a.*.b", "a..b"));
        assert!(topic_matches("a.#.b", "a..b"));
        assert!(topic_matches("", ""));
        assert!(!topic_matches("", "a"));
        assert!(!topic_matches("a", ""));
        assert!(topic_matches("*", ""));
        assert!(topic_matches(".a", ".a"));
        assert!(topic_matches("*.a", ".a"));
        assert!(!topic_matches(".a", "a"));
        assert!(topic_matches("a.", "a."));
        assert!(topic_matches("a.*", "a."));
        assert!(!topic_matches("a.", "a"));
        assert!(topic_matches("*.*", "."));
        assert!(!topic_matches("*", "."));
    }

    #[test]
    fn topic_wildcards_are_literal_inside_words_and_in_routing_keys() {
        assert!(topic_matches("a*", "a*"));
        assert!(!topic_matches("a*", "ab"));
        assert!(topic_matches("##", "##"));
        assert!(!topic_matches("##", "a"));
        assert!(!topic_matches("a", "*"));
        assert!(!topic_matches("a.b", "a.#"));
    }

    #[test]
    fn topic_patterns_sharing_prefixes_each_match_on_their_own() {
        let table = topic_table(&["a.b", "a.*", "a.#", "#", "a.b.#", "*.b", "b.#", "a"]);
        assert_eq!(
            route_ids(&table, "t", "a.b"),
            [100, 101, 102, 103, 104, 105]
        );
        assert_eq!(route_ids(&table, "t", "a"), [102, 103, 107]);
        assert_eq!(route_ids(&table, "t", "b"), [103, 106]);
        assert_eq!(route_ids(&table, "t", "c.d"), [103]);
    }

    #[test]
    fn topic_nodes_with_many_literal_edges_match_like_nodes_with_few() {
        let patterns: Vec<String> = (0..9).map(|index| format!("k.{index}.#")).collect();
        let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let many = topic_table(&patterns);
        let few = topic_table(&patterns[..2]);
        assert_eq!(route_ids(&many, "t", "k.8"), [108]);
        assert_eq!(route_ids(&many, "t", "k.0.x"), [100]);
        assert_eq!(route_ids(&many, "t", "k.9"), Vec::<u32>::new());
        assert_eq!(route_ids(&few, "t", "k.1"), [101]);
        assert_eq!(route_ids(&few, "t", "k.8"), Vec::<u32>::new());
    }

    #[test]
    fn topic_matching_stays_polynomial_on_a_key_built_against_many_hashes() {
        let pattern = ["#", "a"].repeat(40).join(".") + ".b";
        let key = vec!["a"; 120].join(".");
        let table = topic_table(&[&pattern]);
        assert_eq!(route_ids(&table, "t", &key), Vec::<u32>::new());
        assert_eq!(route_ids(&table, "t", &(key + ".b")), [100]);
    }

    #[test]
    fn headers_all_needs_every_condition_and_ignores_x_arguments() {
        let bindings = vec![bind_headers(
            "q0",
            &[
                ("x-match", text("all")),
                ("format", text("pdf")),
                ("x-tenant", text("a")),
            ],
        )];
        let table = table(&[exchange("h", ExchangeKind::Headers)], bindings);
        let pdf = [("format", HeaderValue::Str("pdf"))];
        let other = [
            ("format", HeaderValue::Str("png")),
            ("x-tenant", HeaderValue::Str("a")),
        ];
        let missing = [("size", HeaderValue::Str("a4"))];
        assert_eq!(route_with_headers(&table, "h", "", &pdf[..]), [100]);
        assert_eq!(
            route_with_headers(&table, "h", "", &other[..]),
            Vec::<u32>::new()
        );
        assert_eq!(
            route_with_headers(&table, "h", "", &missing[..]),
            Vec::<u32>::new()
        );
        assert_eq!(
            route_with_headers(&table, "h", "", &NoHeaders),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn headers_any_needs_one_condition_and_ignores_x_arguments() {
        let bindings = vec![bind_headers(
            "q0",
            &[
                ("x-match", text("any")),
                ("a", ArgumentValue::Int(1)),
                ("x-b", text("2")),
            ],
        )];
        let table = table(&[exchange("h", ExchangeKind::Headers)], bindings);
        let hit = [("z", HeaderValue::Bool(true)), ("a", HeaderValue::Int(1))];
        let only_x = [("x-b", HeaderValue::Str("2"))];
        let wrong = [("a", HeaderValue::Int(2))];
        assert_eq!(route_with_headers(&table, "h", "", &hit[..]), [100]);
        assert_eq!(
            route_with_headers(&table, "h", "", &only_x[..]),
            Vec::<u32>::new()
        );
        assert_eq!(
            route_with_headers(&table, "h", "", &wrong[..]),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn headers_with_x_modes_compare_x_arguments_but_not_x_match() {
        let bindings = vec![
            bind_headers(
                "q0",
                &[("x-match", text("all-with-x")), ("x-tenant", text("a"))],
            ),
            bind_headers(
                "q1",
                &[("x-match", text("any-with-x")), ("x-tenant", text("a"))],
            ),
            bind_headers("q2", &[("x-match", text("any")), ("x-tenant", text("a"))]),
        ];
        let table = table(&[exchange("h", ExchangeKind::Headers)], bindings);
        let tenant = [("x-tenant", HeaderValue::Str("a"))];
        assert_eq!(route_with_headers(&table, "h", "", &tenant[..]), [100, 101]);
        assert_eq!(
            route_with_headers(&table, "h", "", &NoHeaders),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn headers_without_conditions_match_all_but_never_any() {
        let bindings = vec![
            bind_headers("q0", &[]),
            bind_headers("q1", &[("x-match", text("all")), ("x-only", text("1"))]),
            bind_headers("q2", &[("x-match", text("any"))]),
        ];
        let table = table(&[exchange("h", ExchangeKind::Headers)], bindings);
        assert_eq!(route_with_headers(&table, "h", "", &NoHeaders), [100, 101]);
    }

    #[test]
    fn headers_void_argument_asks_only_for_presence() {
        let bindings = vec![bind_headers("q0", &[("trace", ArgumentValue::Void)])];
        let table = table(&[exchange("h", ExchangeKind::Headers)], bindings);
        let present = [("trace", HeaderValue::Bool(false))];
        assert_eq!(route_with_headers(&table, "h", "", &present[..]), [100]);
        assert_eq!(
            route_with_headers(&table, "h", "", &NoHeaders),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn headers_equality_is_exact_but_strings_equal_bytes() {
        let cases = [
            (ArgumentValue::Int(1), HeaderValue::Int(1), true),
            (ArgumentValue::Int(1), HeaderValue::Float(1.0), false),
            (ArgumentValue::Float(1.0), HeaderValue::Float(1.0), true),
            (ArgumentValue::Float(0.0), HeaderValue::Float(-0.0), false),
            (text("1"), HeaderValue::Bytes(b"1"), true),
            (
                ArgumentValue::Bytes(b"1".to_vec()),
                HeaderValue::Str("1"),
                true,
            ),
            (text("1"), HeaderValue::Int(1), false),
            (ArgumentValue::Bool(true), HeaderValue::Bool(true), true),
            (ArgumentValue::Bool(true), HeaderValue::Int(1), false),
        ];
        for (argument, header, expected) in cases {
            let table = table(
                &[exchange("h", ExchangeKind::Headers)],
                vec![bind_headers("q0", &[("k", argument.clone())])],
            );
            let headers = [("k", header)];
            let routed = route_with_headers(&table, "h", "", &headers[..]) == [100];
            assert_eq!(routed, expected, "{argument:?} against {header:?}");
        }
    }

    #[test]
    fn headers_match_mode_other_than_the_four_names_is_refused() {
        let metadata = RoutingMetadata {
            exchanges: vec![exchange("h", ExchangeKind::Headers)],
            queues: vec![queue("q", 1, 0)],
            bindings: vec![BindingSpec {
                queue: "q".to_owned(),
                ..bind_headers("q", &[("x-match", text("some"))])
            }],
        };
        let error = RoutingTable::build(1, &metadata).unwrap_err();
        let expected = BuildError::InvalidMatchMode {
            exchange: "h".to_owned(),
            queue: "q".to_owned(),
        };
        assert_eq!(error, expected);
        assert!(error.to_string().contains("x-match"));
    }

    #[test]
    fn headers_first_match_mode_wins_and_may_be_given_as_bytes() {
        let arguments = |values: &[ArgumentValue]| -> Vec<BindingArgument> {
            let to_argument = |value: &ArgumentValue| BindingArgument {
                key: "x-match".to_owned(),
                value: value.clone(),
            };
            values.iter().map(to_argument).collect()
        };
        let any_then_all = arguments(&[text("any"), text("all")]);
        assert_eq!(
            MatchMode::from_arguments(&any_then_all),
            Some(MatchMode::Any)
        );
        let bytes = arguments(&[ArgumentValue::Bytes(b"any-with-x".to_vec())]);
        assert_eq!(MatchMode::from_arguments(&bytes), Some(MatchMode::AnyWithX));
        assert_eq!(MatchMode::from_arguments(&[]), Some(MatchMode::All));
        assert_eq!(
            MatchMode::from_arguments(&arguments(&[ArgumentValue::Int(1)])),
            None
        );
    }

    #[test]
    fn a_routing_key_at_the_length_limit_routes_and_one_byte_more_does_not() {
        let table = topic_table(&["#", "#.*", "*"]);
        let empty_words = ".".repeat(KEY_LENGTH_MAX_BYTES);
        assert_eq!(route_ids(&table, "t", &empty_words), [100, 101]);
        let longest = "a".repeat(KEY_LENGTH_MAX_BYTES);
        assert_eq!(route_ids(&table, "t", &longest), [100, 101, 102]);

        let mut out = RouteTargets::new();
        let result = table.route("t", &(longest + "a"), &NoHeaders, &mut out);
        assert_eq!(
            result,
            Err(RouteError::RoutingKeyTooLong { length_bytes: 256 })
        );
    }

    #[test]
    fn route_targets_reused_across_tables_of_different_sizes_stay_correct() {
        let small = topic_table(&["#"]);
        let large = table(
            &[exchange("t", ExchangeKind::Topic)],
            (0..10)
                .map(|index| bind("t", &format!("q{index}"), "a.#"))
                .collect(),
        );
        let mut out = RouteTargets::new();
        for _ in 0..3 {
            large.route("t", "a.b", &NoHeaders, &mut out).unwrap();
            assert_eq!(out.len(), 10);
            small.route("t", "a.b", &NoHeaders, &mut out).unwrap();
            assert_eq!(out.queues(), [QueueId(100)]);
        }
    }
}
