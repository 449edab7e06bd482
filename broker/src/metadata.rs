//! The broker's topology: exchanges, queues, bindings and queue placement, for vhost `/`.
//!
//! Shard 0 is the only writer (DESIGN.md, "Control plane"). It applies each request to its
//! [`Metadata`], persists the durable part atomically, and publishes the result to every shard as
//! a versioned snapshot. This module is the pure part: the model, the rules a request must pass,
//! and the file format. It does no I/O except [`Metadata::save`] and [`Metadata::load`], which the
//! control task runs off the executors.
//!
//! Invariants kept by every operation:
//! - `version` grows by one with every change that a shard must see;
//! - queue ids are never reused, so a journal record of a deleted queue can never be taken for a
//!   record of a newer one;
//! - every binding names an existing exchange and an existing queue;
//! - the default exchange `""` and the `amq.*` exchanges always exist and cannot be changed.
//!
//! File format (`topology.json`, replaced atomically): a JSON object whose first key is
//! `format_version`, then the durable exchanges, the durable queues, the bindings between durable
//! ends, and the next queue id. Transient entities are not stored: they end with the broker.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data_dir::{DataDirError, write_atomically};
use crate::routing::BindingArgument;
use crate::routing::headers::{MATCH_MODE_KEY, MatchMode};
pub use crate::routing::{ArgumentValue, ExchangeKind, QueueId, ShardId};

/// The version of `topology.json` this broker writes and reads.
pub const TOPOLOGY_FORMAT_VERSION: u32 = 1;

/// The file that holds the durable topology inside the data directory.
pub const TOPOLOGY_FILE_NAME: &str = "topology.json";

/// Names of exchanges and queues, routing keys and binding keys: AMQP's short string limit.
pub const NAME_BYTES_MAX: usize = 255;

/// Queues per broker. Each costs a routing entry on every shard and a state machine on its owner.
pub const QUEUE_COUNT_MAX: usize = 100_000;

/// Exchanges per broker.
pub const EXCHANGE_COUNT_MAX: usize = 10_000;

/// Bindings per broker, across all exchanges. Topic routing stays fast well past this (see the
/// routing benchmark); the cap bounds the snapshot each shard holds.
pub const BINDING_COUNT_MAX: usize = 1_000_000;

/// Arguments on one declare or bind.
pub const ARGUMENT_COUNT_MAX: usize = 64;

/// A topology file larger than this is refused rather than read whole.
const TOPOLOGY_FILE_BYTES_MAX: u64 = 512 << 20;

/// A client connection, unique for the broker's lifetime: the shard it lives on and a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnectionId {
    pub shard: ShardId,
    pub serial: u64,
}

/// Arguments in key order, so that two declares with the same arguments compare equal whatever
/// order the client sent them in.
pub type Arguments = BTreeMap<String, ArgumentValue>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Arguments,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub name: String,
    pub id: QueueId,
    pub owner: ShardId,
    pub durable: bool,
    /// The connection that owns an exclusive queue; the queue is deleted when it closes.
    #[serde(skip)]
    pub exclusive_to: Option<ConnectionId>,
    pub auto_delete: bool,
    /// Set when the first consumer attaches. An auto-delete queue that ever had one is deleted
    /// when its last consumer goes, including when the broker stopped with consumers attached.
    pub had_consumer: bool,
    pub arguments: Arguments,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    pub exchange: String,
    pub queue: String,
    pub key: String,
    pub arguments: Arguments,
}

/// A request that the topology refuses. Each maps to one numbered wire error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyError {
    ExchangeNotFound {
        name: String,
    },
    QueueNotFound {
        name: String,
    },
    /// A redeclare that differs from the existing entity in `field`.
    NotEquivalent {
        entity: &'static str,
        name: String,
        field: &'static str,
    },
    /// The default exchange and `amq.*` names cannot be declared, deleted or bound to by clients.
    Reserved {
        name: String,
    },
    InvalidName {
        name: String,
        reason: &'static str,
    },
    /// An exclusive queue used from a connection that does not own it.
    ExclusiveLocked {
        name: String,
    },
    LimitReached {
        what: &'static str,
        limit: usize,
    },
    InvalidArgument {
        key: String,
        reason: &'static str,
    },
}

impl std::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopologyError::ExchangeNotFound { name } => write!(f, "no exchange {name:?}"),
            TopologyError::QueueNotFound { name } => write!(f, "no queue {name:?}"),
            TopologyError::NotEquivalent {
                entity,
                name,
                field,
            } => {
                write!(f, "{entity} {name:?} exists with a different {field}")
            }
            TopologyError::Reserved { name } => write!(f, "{name:?} is reserved by the broker"),
            TopologyError::InvalidName { name, reason } => {
                write!(f, "invalid name {name:?}: {reason}")
            }
            TopologyError::ExclusiveLocked { name } => {
                write!(f, "queue {name:?} is exclusive to another connection")
            }
            TopologyError::LimitReached { what, limit } => {
                write!(f, "too many {what}: the limit is {limit}")
            }
            TopologyError::InvalidArgument { key, reason } => {
                write!(f, "argument {key:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for TopologyError {}

/// A declare-exchange request.
#[derive(Clone, Debug)]
pub struct ExchangeDeclare {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub passive: bool,
    pub arguments: Arguments,
}

/// A declare-queue request. An empty name asks the broker to choose one.
#[derive(Clone, Debug)]
pub struct QueueDeclare {
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub passive: bool,
    pub arguments: Arguments,
    /// The connection asking; it owns the queue if `exclusive`.
    pub connection: ConnectionId,
}

/// What a change did, for the control task to act on (delete queue state, notify consumers).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    None,
    QueueCreated(Queue),
    QueuesDeleted(Vec<Queue>),
    Other,
}

/// The whole topology of the broker.
#[derive(Clone, Debug)]
pub struct Metadata {
    version: u64,
    shard_count: u16,
    exchanges: BTreeMap<String, Exchange>,
    queues: BTreeMap<String, Queue>,
    /// Bindings in declaration order; one binding is (exchange, queue, key, arguments).
    bindings: Vec<Binding>,
    next_queue_id: u32,
    /// Counts server-named queues; a generated name is never one that exists.
    next_generated_name: u64,
}

/// The stored form of [`Metadata`]: only what survives a restart.
#[derive(Debug, Serialize, Deserialize)]
struct StoredTopology {
    format_version: u32,
    next_queue_id: u32,
    exchanges: Vec<Exchange>,
    queues: Vec<Queue>,
    bindings: Vec<Binding>,
}

const DEFAULT_EXCHANGE: &str = "";
const PREDECLARED: [(&str, ExchangeKind); 5] = [
    (DEFAULT_EXCHANGE, ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
];

impl Metadata {
    /// A fresh topology with only the predeclared exchanges.
    pub fn new(shard_count: u16) -> Metadata {
        assert!(shard_count > 0);
        let mut exchanges = BTreeMap::new();
        for (name, kind) in PREDECLARED {
            let exchange = Exchange {
                name: name.to_string(),
                kind,
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: Arguments::new(),
            };
            exchanges.insert(name.to_string(), exchange);
        }
        Metadata {
            version: 1,
            shard_count,
            exchanges,
            queues: BTreeMap::new(),
            bindings: Vec::new(),
            next_queue_id: 1,
            next_generated_name: 1,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn exchange(&self, name: &str) -> Option<&Exchange> {
        self.exchanges.get(name)
    }

    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.get(name)
    }

    pub fn exchanges(&self) -> impl Iterator<Item = &Exchange> {
        self.exchanges.values()
    }

    pub fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.queues.values()
    }

    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    pub fn declare_exchange(&mut self, request: ExchangeDeclare) -> Result<Change, TopologyError> {
        if let Some(existing) = self.exchanges.get(&request.name) {
            if request.passive {
                return Ok(Change::None);
            }
            if is_reserved(&request.name) {
                return Err(reserved_name(request.name));
            }
            check_declare_arguments(&request.arguments)?;
            let field = if existing.kind != request.kind {
                Some("type")
            } else if existing.durable != request.durable {
                Some("durable flag")
            } else if existing.auto_delete != request.auto_delete {
                Some("auto-delete flag")
            } else if existing.internal != request.internal {
                Some("internal flag")
            } else if existing.arguments != request.arguments {
                Some("arguments")
            } else {
                None
            };
            return match field {
                Some(field) => Err(TopologyError::NotEquivalent {
                    entity: "exchange",
                    name: request.name,
                    field,
                }),
                None => Ok(Change::None),
            };
        }
        if request.passive {
            return Err(TopologyError::ExchangeNotFound { name: request.name });
        }

        check_name(&request.name)?;
        if is_reserved(&request.name) {
            return Err(reserved_name(request.name));
        }
        check_declare_arguments(&request.arguments)?;
        if self.exchanges.len() >= EXCHANGE_COUNT_MAX {
            return Err(TopologyError::LimitReached {
                what: "exchanges",
                limit: EXCHANGE_COUNT_MAX,
            });
        }

        let exchange = Exchange {
            name: request.name.clone(),
            kind: request.kind,
            durable: request.durable,
            auto_delete: request.auto_delete,
            internal: request.internal,
            arguments: request.arguments,
        };
        self.exchanges.insert(request.name, exchange);
        self.version += 1;
        Ok(Change::Other)
    }

    /// Deletes an exchange and every binding from it. `if_unused` refuses while it has bindings.
    pub fn delete_exchange(
        &mut self,
        name: &str,
        if_unused: bool,
    ) -> Result<Change, TopologyError> {
        if is_reserved(name) {
            return Err(TopologyError::Reserved {
                name: name.to_string(),
            });
        }
        if !self.exchanges.contains_key(name) {
            return Err(TopologyError::ExchangeNotFound {
                name: name.to_string(),
            });
        }
        if if_unused && self.bindings.iter().any(|binding| binding.exchange == name) {
            return Err(TopologyError::NotEquivalent {
                entity: "exchange",
                name: name.to_string(),
                field: "binding count (it is in use)",
            });
        }

        self.exchanges.remove(name);
        self.bindings.retain(|binding| binding.exchange != name);
        self.version += 1;
        Ok(Change::Other)
    }

    /// Declares a queue, placing a new one on a shard (see [`Metadata::place`]).
    pub fn declare_queue(
        &mut self,
        request: QueueDeclare,
    ) -> Result<(Queue, Change), TopologyError> {
        if let Some(existing) = self.queues.get(&request.name) {
            if existing
                .exclusive_to
                .is_some_and(|owner| owner != request.connection)
            {
                return Err(TopologyError::ExclusiveLocked { name: request.name });
            }
            if request.passive {
                return Ok((existing.clone(), Change::None));
            }
            check_declare_arguments(&request.arguments)?;
            let field = if existing.durable != request.durable {
                Some("durable flag")
            } else if existing.exclusive_to.is_some() != request.exclusive {
                Some("exclusive flag")
            } else if existing.auto_delete != request.auto_delete {
                Some("auto-delete flag")
            } else if existing.arguments != request.arguments {
                Some("arguments")
            } else {
                None
            };
            return match field {
                Some(field) => Err(TopologyError::NotEquivalent {
                    entity: "queue",
                    name: request.name,
                    field,
                }),
                None => Ok((existing.clone(), Change::None)),
            };
        }
        if request.passive {
            return Err(TopologyError::QueueNotFound { name: request.name });
        }

        let name = if request.name.is_empty() {
            // The counter starts again with every broker while durable server-named queues
            // survive a restart, so a generated name may be taken: skip those (at most one step
            // per existing queue).
            loop {
                let name = format!("amq.gen-{:016x}", self.next_generated_name);
                self.next_generated_name += 1;
                if !self.queues.contains_key(&name) {
                    break name;
                }
            }
        } else {
            check_name(&request.name)?;
            if request.name.starts_with("amq.") {
                return Err(reserved_name(request.name));
            }
            request.name
        };
        check_declare_arguments(&request.arguments)?;
        if self.queues.len() >= QUEUE_COUNT_MAX {
            return Err(TopologyError::LimitReached {
                what: "queues",
                limit: QUEUE_COUNT_MAX,
            });
        }

        let queue = Queue {
            name: name.clone(),
            id: QueueId(self.next_queue_id),
            owner: self.place(request.connection.shard),
            durable: request.durable,
            exclusive_to: request.exclusive.then_some(request.connection),
            auto_delete: request.auto_delete,
            had_consumer: false,
            arguments: request.arguments,
        };
        self.next_queue_id = self
            .next_queue_id
            .checked_add(1)
            .expect("queue ids exhausted");
        self.queues.insert(name, queue.clone());
        self.version += 1;
        Ok((queue.clone(), Change::QueueCreated(queue)))
    }

    /// Placement policy: a new queue goes to the shard that owns the fewest queues, so load
    /// spreads without configuration; among equals, the declaring connection's shard wins, so a
    /// client that declares and then publishes on one connection stays on one shard.
    pub fn place(&self, declaring: ShardId) -> ShardId {
        let mut counts = vec![0usize; self.shard_count as usize];
        for queue in self.queues.values() {
            counts[queue.owner.0 as usize] += 1;
        }
        let fewest = counts.iter().copied().min().unwrap_or(0);
        let declaring_index = declaring.0 as usize;
        if counts.get(declaring_index) == Some(&fewest) {
            return declaring;
        }
        let index = counts
            .iter()
            .position(|&count| count == fewest)
            .unwrap_or(0);
        ShardId(index as u16)
    }

    /// Deletes a queue and its bindings. The caller drains its state on the owning shard.
    pub fn delete_queue(
        &mut self,
        name: &str,
        connection: ConnectionId,
    ) -> Result<Change, TopologyError> {
        let Some(queue) = self.queues.get(name) else {
            return Err(TopologyError::QueueNotFound {
                name: name.to_string(),
            });
        };
        if queue.exclusive_to.is_some_and(|owner| owner != connection) {
            return Err(TopologyError::ExclusiveLocked {
                name: name.to_string(),
            });
        }
        let removed = self.remove_queues(|queue| queue.name == name);
        Ok(Change::QueuesDeleted(removed))
    }

    /// Records that a queue has had a consumer (for auto-delete). Returns whether that changed.
    pub fn note_consumer(&mut self, name: &str) -> Result<bool, TopologyError> {
        let Some(queue) = self.queues.get_mut(name) else {
            return Err(TopologyError::QueueNotFound {
                name: name.to_string(),
            });
        };
        if queue.had_consumer {
            return Ok(false);
        }
        queue.had_consumer = true;
        self.version += 1;
        Ok(true)
    }

    /// Deletes an auto-delete queue whose last consumer went away.
    pub fn last_consumer_gone(&mut self, name: &str) -> Change {
        let removed = self.remove_queues(|queue| queue.name == name && queue.auto_delete);
        if removed.is_empty() {
            Change::None
        } else {
            Change::QueuesDeleted(removed)
        }
    }

    /// Deletes the exclusive queues of a closed connection.
    pub fn connection_closed(&mut self, connection: ConnectionId) -> Change {
        let removed = self.remove_queues(|queue| queue.exclusive_to == Some(connection));
        if removed.is_empty() {
            Change::None
        } else {
            Change::QueuesDeleted(removed)
        }
    }

    pub fn bind(
        &mut self,
        binding: Binding,
        connection: ConnectionId,
    ) -> Result<Change, TopologyError> {
        self.check_binding_ends(&binding, connection)?;
        check_name(&binding.key).or_else(|error| {
            if binding.key.is_empty() {
                Ok(())
            } else {
                Err(error)
            }
        })?;
        check_arguments(&binding.arguments)?;
        self.check_match_mode(&binding)?;
        if self.bindings.contains(&binding) {
            return Ok(Change::None);
        }
        if self.bindings.len() >= BINDING_COUNT_MAX {
            return Err(TopologyError::LimitReached {
                what: "bindings",
                limit: BINDING_COUNT_MAX,
            });
        }

        self.bindings.push(binding);
        self.version += 1;
        Ok(Change::Other)
    }

    /// Removes a binding. Unbinding one that does not exist succeeds, as in AMQP 0-9-1.
    pub fn unbind(
        &mut self,
        binding: &Binding,
        connection: ConnectionId,
    ) -> Result<Change, TopologyError> {
        self.check_binding_ends(binding, connection)?;
        let before = self.bindings.len();
        self.bindings.retain(|existing| existing != binding);
        if self.bindings.len() == before {
            return Ok(Change::None);
        }
        self.drop_unbound_auto_delete_exchanges(std::slice::from_ref(&binding.exchange));
        self.version += 1;
        Ok(Change::Other)
    }

    /// Deletes the auto-delete exchanges among `sources` that have no binding left: an
    /// auto-delete exchange goes with its last binding, as in AMQP 0-9-1 (one that never had a
    /// binding stays). Callers bump the version for the change that unbound them.
    fn drop_unbound_auto_delete_exchanges(&mut self, sources: &[String]) {
        for source in sources {
            let unbound = self
                .exchanges
                .get(source)
                .is_some_and(|exchange| exchange.auto_delete && !is_reserved(&exchange.name))
                && !self
                    .bindings
                    .iter()
                    .any(|binding| &binding.exchange == source);
            if unbound {
                self.exchanges.remove(source);
            }
        }
    }

    /// A headers binding's `x-match` must be one the routing table knows, or the snapshot with
    /// the binding would not build.
    fn check_match_mode(&self, binding: &Binding) -> Result<(), TopologyError> {
        let headers = self
            .exchanges
            .get(&binding.exchange)
            .is_some_and(|exchange| exchange.kind == ExchangeKind::Headers);
        if !headers {
            return Ok(());
        }
        let arguments: Vec<BindingArgument> = binding
            .arguments
            .iter()
            .map(|(key, value)| BindingArgument {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        match MatchMode::from_arguments(&arguments) {
            Some(_) => Ok(()),
            None => Err(TopologyError::InvalidArgument {
                key: MATCH_MODE_KEY.to_string(),
                reason: "must be the string all, any, all-with-x or any-with-x",
            }),
        }
    }

    fn check_binding_ends(
        &self,
        binding: &Binding,
        connection: ConnectionId,
    ) -> Result<(), TopologyError> {
        if binding.exchange == DEFAULT_EXCHANGE {
            return Err(TopologyError::Reserved {
                name: binding.exchange.clone(),
            });
        }
        if !self.exchanges.contains_key(&binding.exchange) {
            return Err(TopologyError::ExchangeNotFound {
                name: binding.exchange.clone(),
            });
        }
        let Some(queue) = self.queues.get(&binding.queue) else {
            return Err(TopologyError::QueueNotFound {
                name: binding.queue.clone(),
            });
        };
        if queue.exclusive_to.is_some_and(|owner| owner != connection) {
            return Err(TopologyError::ExclusiveLocked {
                name: binding.queue.clone(),
            });
        }
        Ok(())
    }

    fn remove_queues(&mut self, mut condition: impl FnMut(&Queue) -> bool) -> Vec<Queue> {
        let names: Vec<String> = self
            .queues
            .values()
            .filter(|queue| condition(queue))
            .map(|q| q.name.clone())
            .collect();
        let removed: Vec<Queue> = names
            .iter()
            .filter_map(|name| self.queues.remove(name))
            .collect();
        if !removed.is_empty() {
            let sources: Vec<String> = self
                .bindings
                .iter()
                .filter(|binding| names.contains(&binding.queue))
                .map(|binding| binding.exchange.clone())
                .collect();
            self.bindings
                .retain(|binding| !names.contains(&binding.queue));
            self.drop_unbound_auto_delete_exchanges(&sources);
            self.version += 1;
        }
        removed
    }

    /// Writes the durable topology to `dir` atomically. Blocking: run it off the executors.
    pub fn save(&self, dir: &Path) -> Result<(), DataDirError> {
        let durable_queue = |name: &str| self.queues.get(name).is_some_and(|q| q.durable);
        let durable_exchange = |name: &str| self.exchanges.get(name).is_some_and(|e| e.durable);
        let stored = StoredTopology {
            format_version: TOPOLOGY_FORMAT_VERSION,
            next_queue_id: self.next_queue_id,
            exchanges: self
                .exchanges
                .values()
                .filter(|e| e.durable && !is_reserved(&e.name))
                .cloned()
                .collect(),
            queues: self
                .queues
                .values()
                .filter(|q| q.durable && q.exclusive_to.is_none())
                .cloned()
                .collect(),
            bindings: self
                .bindings
                .iter()
                .filter(|b| durable_exchange(&b.exchange) && durable_queue(&b.queue))
                .cloned()
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&stored).expect("the topology always serialises");
        write_atomically(dir, TOPOLOGY_FILE_NAME, &bytes)
    }

    /// Reads the durable topology from `dir`, or a fresh one if none was stored. Auto-delete
    /// queues that had consumers are dropped: the broker stopped, so their consumers are gone.
    /// Returns the topology and the queues so dropped, whose journal records are now dead.
    pub fn load(dir: &Path, shard_count: u16) -> Result<(Metadata, Vec<Queue>), DataDirError> {
        let path = dir.join(TOPOLOGY_FILE_NAME);
        let invalid = |message: String| DataDirError::MetaInvalid {
            path: path.clone(),
            message,
        };
        let bytes = match std::fs::metadata(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Metadata::new(shard_count), Vec::new()));
            }
            Err(source) => {
                return Err(DataDirError::Io {
                    operation: "stat",
                    path,
                    source,
                });
            }
            Ok(stat) if stat.len() > TOPOLOGY_FILE_BYTES_MAX => {
                return Err(invalid(format!(
                    "larger than {TOPOLOGY_FILE_BYTES_MAX} bytes"
                )));
            }
            Ok(_) => std::fs::read(&path).map_err(|source| DataDirError::Io {
                operation: "read",
                path: path.clone(),
                source,
            })?,
        };

        let stored: StoredTopology =
            serde_json::from_slice(&bytes).map_err(|error| invalid(error.to_string()))?;
        if stored.format_version != TOPOLOGY_FORMAT_VERSION {
            return Err(DataDirError::MetaVersion {
                path,
                found: stored.format_version,
            });
        }

        let mut metadata = Metadata::new(shard_count);
        for exchange in stored.exchanges {
            metadata.exchanges.insert(exchange.name.clone(), exchange);
        }
        let mut dropped = Vec::new();
        for queue in stored.queues {
            if queue.id.0 >= stored.next_queue_id || queue.owner.0 >= shard_count {
                return Err(invalid(format!(
                    "queue {:?} has id {} or owner {} out of range",
                    queue.name, queue.id.0, queue.owner.0
                )));
            }
            if queue.auto_delete && queue.had_consumer {
                dropped.push(queue);
            } else {
                metadata.queues.insert(queue.name.clone(), queue);
            }
        }
        for binding in stored.bindings {
            if metadata.exchanges.contains_key(&binding.exchange)
                && metadata.queues.contains_key(&binding.queue)
            {
                metadata.bindings.push(binding);
            }
        }
        metadata.next_queue_id = stored.next_queue_id;
        Ok((metadata, dropped))
    }
}

fn is_reserved(name: &str) -> bool {
    name == DEFAULT_EXCHANGE || name.starts_with("amq.")
}

fn check_name(name: &str) -> Result<(), TopologyError> {
    let invalid = |reason| {
        Err(TopologyError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > NAME_BYTES_MAX {
        return invalid("longer than 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return invalid("contains a control character");
    }
    Ok(())
}

/// The refusal of a declare that names the default exchange or uses the reserved `amq.` prefix:
/// 304 invalid-name in wire/PROTOCOL.md's code table.
fn reserved_name(name: String) -> TopologyError {
    let reason = if name.is_empty() {
        "the default exchange is predeclared"
    } else {
        "the amq. prefix is reserved"
    };
    TopologyError::InvalidName { name, reason }
}

/// Declare arguments switch queue and exchange features on (wire/PROTOCOL.md, "Argument
/// tables"). This broker implements none of them yet, so it refuses every key: a client must
/// never believe a feature is on when it is not.
fn check_declare_arguments(arguments: &Arguments) -> Result<(), TopologyError> {
    check_arguments(arguments)?;
    match arguments.keys().next() {
        Some(key) => Err(TopologyError::InvalidArgument {
            key: key.clone(),
            reason: "not implemented by this broker",
        }),
        None => Ok(()),
    }
}

fn check_arguments(arguments: &Arguments) -> Result<(), TopologyError> {
    if arguments.len() > ARGUMENT_COUNT_MAX {
        return Err(TopologyError::LimitReached {
            what: "arguments",
            limit: ARGUMENT_COUNT_MAX,
        });
    }
    for key in arguments.keys() {
        if key.is_empty() || key.len() > NAME_BYTES_MAX {
            let reason = "keys are 1 to 255 bytes";
            return Err(TopologyError::InvalidArgument {
                key: key.clone(),
                reason,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECTION: ConnectionId = ConnectionId {
        shard: ShardId(0),
        serial: 1,
    };
    const OTHER: ConnectionId = ConnectionId {
        shard: ShardId(1),
        serial: 2,
    };

    fn exchange(name: &str, kind: ExchangeKind) -> ExchangeDeclare {
        ExchangeDeclare {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            passive: false,
            arguments: Arguments::new(),
        }
    }

    fn queue(name: &str) -> QueueDeclare {
        QueueDeclare {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            passive: false,
            arguments: Arguments::new(),
            connection: CONNECTION,
        }
    }

    fn binding(exchange: &str, queue: &str, key: &str) -> Binding {
        Binding {
            exchange: exchange.into(),
            queue: queue.into(),
            key: key.into(),
            arguments: Arguments::new(),
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let exe = std::env::current_exe().unwrap();
        let path = exe
            .ancestors()
            .nth(3)
            .unwrap()
            .join("tmp")
            .join("metadata")
            .join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    #[test]
    fn a_redeclare_that_differs_is_refused_and_an_identical_one_is_a_no_op() {
        let mut metadata = Metadata::new(2);
        metadata
            .declare_exchange(exchange("logs", ExchangeKind::Topic))
            .unwrap();
        let version = metadata.version();

        let same = metadata
            .declare_exchange(exchange("logs", ExchangeKind::Topic))
            .unwrap();
        assert_eq!(same, Change::None);
        assert_eq!(metadata.version(), version);

        let error = metadata
            .declare_exchange(exchange("logs", ExchangeKind::Fanout))
            .unwrap_err();
        assert_eq!(
            error,
            TopologyError::NotEquivalent {
                entity: "exchange",
                name: "logs".into(),
                field: "type"
            }
        );

        metadata.declare_queue(queue("jobs")).unwrap();
        let mut transient = queue("jobs");
        transient.durable = false;
        assert!(matches!(
            metadata.declare_queue(transient),
            Err(TopologyError::NotEquivalent {
                field: "durable flag",
                ..
            })
        ));
    }

    #[test]
    fn passive_declares_find_or_report_not_found_without_changing_anything() {
        let mut metadata = Metadata::new(1);
        let mut passive = queue("missing");
        passive.passive = true;
        assert!(matches!(
            metadata.declare_queue(passive),
            Err(TopologyError::QueueNotFound { .. })
        ));
        let mut passive = exchange("missing", ExchangeKind::Direct);
        passive.passive = true;
        assert!(matches!(
            metadata.declare_exchange(passive),
            Err(TopologyError::ExchangeNotFound { .. })
        ));
        assert_eq!(metadata.version(), 1);
    }

    #[test]
    fn reserved_names_cannot_be_declared_deleted_or_bound() {
        let mut metadata = Metadata::new(1);
        metadata.declare_queue(queue("q")).unwrap();
        assert!(matches!(
            metadata.declare_exchange(exchange("amq.custom", ExchangeKind::Direct)),
            Err(TopologyError::InvalidName { .. })
        ));
        assert!(matches!(
            metadata.declare_exchange(exchange("amq.direct", ExchangeKind::Direct)),
            Err(TopologyError::InvalidName { .. })
        ));
        assert!(matches!(
            metadata.declare_exchange(exchange("", ExchangeKind::Direct)),
            Err(TopologyError::InvalidName { .. })
        ));
        assert!(matches!(
            metadata.delete_exchange("", false),
            Err(TopologyError::Reserved { .. })
        ));
        assert!(matches!(
            metadata.bind(binding("", "q", "q"), CONNECTION),
            Err(TopologyError::Reserved { .. })
        ));
        assert!(matches!(
            metadata.declare_queue(queue("amq.q")),
            Err(TopologyError::InvalidName { .. })
        ));
    }

    #[test]
    fn a_headers_binding_needs_a_known_match_mode() {
        let mut metadata = Metadata::new(1);
        metadata
            .declare_exchange(exchange("by-headers", ExchangeKind::Headers))
            .unwrap();
        metadata.declare_queue(queue("q")).unwrap();
        let mut bad = binding("by-headers", "q", "");
        bad.arguments
            .insert("x-match".into(), ArgumentValue::Str("most".into()));
        assert!(matches!(
            metadata.bind(bad, CONNECTION),
            Err(TopologyError::InvalidArgument { .. })
        ));
        let mut good = binding("by-headers", "q", "");
        good.arguments
            .insert("x-match".into(), ArgumentValue::Str("any".into()));
        metadata.bind(good, CONNECTION).unwrap();
        assert!(crate::control::Snapshot::build(&metadata).is_ok());
    }

    #[test]
    fn an_auto_delete_exchange_goes_with_its_last_binding() {
        let mut metadata = Metadata::new(1);
        let mut temporary = exchange("temporary", ExchangeKind::Fanout);
        temporary.auto_delete = true;
        metadata.declare_exchange(temporary.clone()).unwrap();
        let mut never_bound = temporary.clone();
        never_bound.name = "never-bound".into();
        metadata.declare_exchange(never_bound).unwrap();
        metadata.declare_queue(queue("a")).unwrap();
        metadata.declare_queue(queue("b")).unwrap();
        metadata
            .bind(binding("temporary", "a", ""), CONNECTION)
            .unwrap();
        metadata
            .bind(binding("temporary", "b", ""), CONNECTION)
            .unwrap();

        metadata
            .unbind(&binding("temporary", "a", ""), CONNECTION)
            .unwrap();
        assert!(
            metadata.exchange("temporary").is_some(),
            "one binding is left"
        );
        metadata.delete_queue("b", CONNECTION).unwrap();
        assert!(metadata.exchange("temporary").is_none());
        assert!(metadata.exchange("never-bound").is_some());
    }

    #[test]
    fn declare_arguments_are_refused_while_no_feature_is_implemented() {
        let mut metadata = Metadata::new(1);
        let mut request = queue("limited");
        request
            .arguments
            .insert("x-max-length".into(), ArgumentValue::Int(10));
        assert!(matches!(
            metadata.declare_queue(request.clone()),
            Err(TopologyError::InvalidArgument { .. })
        ));
        metadata.declare_queue(queue("limited")).unwrap();
        assert!(
            matches!(
                metadata.declare_queue(request),
                Err(TopologyError::InvalidArgument { .. })
            ),
            "a redeclare with arguments is refused too"
        );
        let mut with_arguments = exchange("alt", ExchangeKind::Direct);
        with_arguments
            .arguments
            .insert("alternate-exchange".into(), ArgumentValue::Str("x".into()));
        assert!(matches!(
            metadata.declare_exchange(with_arguments),
            Err(TopologyError::InvalidArgument { .. })
        ));
        assert_eq!(
            metadata.version(),
            2,
            "only the plain declare changed anything"
        );
    }

    #[test]
    fn a_generated_name_skips_a_durable_server_named_queue_from_before_a_restart() {
        let dir = scratch("generated-names");
        let mut metadata = Metadata::new(1);
        let (kept, _) = metadata.declare_queue(queue("")).unwrap();
        metadata.save(&dir).unwrap();

        let (mut restarted, _) = Metadata::load(&dir, 1).unwrap();
        let (fresh, _) = restarted.declare_queue(queue("")).unwrap();
        assert_ne!(fresh.name, kept.name);
        assert_ne!(fresh.id, kept.id);
    }

    #[test]
    fn server_named_queues_get_unique_names_and_ids_are_never_reused() {
        let mut metadata = Metadata::new(1);
        let (first, _) = metadata.declare_queue(queue("")).unwrap();
        let (second, _) = metadata.declare_queue(queue("")).unwrap();
        assert_ne!(first.name, second.name);
        assert!(first.name.starts_with("amq.gen-"));

        metadata.delete_queue(&second.name, CONNECTION).unwrap();
        let (third, _) = metadata.declare_queue(queue("")).unwrap();
        assert!(third.id > second.id);
    }

    #[test]
    fn placement_spreads_queues_and_prefers_the_declaring_shard_among_equals() {
        let mut metadata = Metadata::new(3);
        let mut request = queue("a");
        request.connection = ConnectionId {
            shard: ShardId(2),
            serial: 9,
        };
        let (a, _) = metadata.declare_queue(request).unwrap();
        assert_eq!(a.owner, ShardId(2));
        let owners: Vec<u16> = ["b", "c", "d", "e", "f"]
            .iter()
            .map(|name| metadata.declare_queue(queue(name)).unwrap().0.owner.0)
            .collect();
        assert_eq!(owners, vec![0, 1, 0, 1, 2]);
    }

    #[test]
    fn an_exclusive_queue_is_locked_to_its_connection_and_deleted_with_it() {
        let mut metadata = Metadata::new(2);
        let mut request = queue("private");
        request.exclusive = true;
        request.durable = false;
        metadata.declare_queue(request).unwrap();
        metadata
            .declare_exchange(exchange("x", ExchangeKind::Direct))
            .unwrap();
        metadata
            .bind(binding("x", "private", "k"), CONNECTION)
            .unwrap();

        let mut other = queue("private");
        other.connection = OTHER;
        assert!(matches!(
            metadata.declare_queue(other),
            Err(TopologyError::ExclusiveLocked { .. })
        ));
        assert!(matches!(
            metadata.delete_queue("private", OTHER),
            Err(TopologyError::ExclusiveLocked { .. })
        ));

        let Change::QueuesDeleted(removed) = metadata.connection_closed(CONNECTION) else {
            panic!("the exclusive queue was not deleted");
        };
        assert_eq!(removed[0].name, "private");
        assert!(metadata.bindings().is_empty());
    }

    #[test]
    fn deleting_a_queue_or_an_exchange_removes_its_bindings() {
        let mut metadata = Metadata::new(1);
        metadata
            .declare_exchange(exchange("x", ExchangeKind::Fanout))
            .unwrap();
        metadata.declare_queue(queue("a")).unwrap();
        metadata.declare_queue(queue("b")).unwrap();
        metadata.bind(binding("x", "a", ""), CONNECTION).unwrap();
        metadata.bind(binding("x", "b", ""), CONNECTION).unwrap();
        assert_eq!(
            metadata.bind(binding("x", "b", ""), CONNECTION).unwrap(),
            Change::None
        );

        metadata.delete_queue("a", CONNECTION).unwrap();
        assert_eq!(metadata.bindings().len(), 1);
        assert!(matches!(
            metadata.delete_exchange("x", true),
            Err(TopologyError::NotEquivalent { .. })
        ));
        metadata.delete_exchange("x", false).unwrap();
        assert!(metadata.bindings().is_empty());
    }

    #[test]
    fn binding_to_missing_ends_is_refused_and_unbinding_a_missing_binding_is_not() {
        let mut metadata = Metadata::new(1);
        metadata.declare_queue(queue("q")).unwrap();
        assert!(matches!(
            metadata.bind(binding("nope", "q", "k"), CONNECTION),
            Err(TopologyError::ExchangeNotFound { .. })
        ));
        assert!(matches!(
            metadata.bind(binding("amq.direct", "nope", "k"), CONNECTION),
            Err(TopologyError::QueueNotFound { .. })
        ));
        let change = metadata
            .unbind(&binding("amq.direct", "q", "k"), CONNECTION)
            .unwrap();
        assert_eq!(change, Change::None);
    }

    #[test]
    fn names_are_checked_for_length_and_control_characters() {
        let mut metadata = Metadata::new(1);
        let long = "q".repeat(NAME_BYTES_MAX + 1);
        assert!(matches!(
            metadata.declare_queue(queue(&long)),
            Err(TopologyError::InvalidName { .. })
        ));
        assert!(matches!(
            metadata.declare_queue(queue("bad\nname")),
            Err(TopologyError::InvalidName { .. })
        ));
        assert!(
            metadata
                .declare_queue(queue(&"q".repeat(NAME_BYTES_MAX)))
                .is_ok()
        );
    }

    #[test]
    fn the_durable_topology_survives_a_save_and_load_and_the_transient_part_does_not() {
        let dir = scratch("roundtrip");
        let mut metadata = Metadata::new(2);
        metadata
            .declare_exchange(exchange("events", ExchangeKind::Topic))
            .unwrap();
        let mut transient_exchange = exchange("scratch", ExchangeKind::Fanout);
        transient_exchange.durable = false;
        metadata.declare_exchange(transient_exchange).unwrap();
        let (orders, _) = metadata.declare_queue(queue("orders")).unwrap();
        let mut transient = queue("temp");
        transient.durable = false;
        metadata.declare_queue(transient).unwrap();
        metadata
            .bind(binding("events", "orders", "order.#"), CONNECTION)
            .unwrap();
        metadata
            .bind(binding("events", "temp", "#"), CONNECTION)
            .unwrap();
        metadata.save(&dir).unwrap();

        let (loaded, dropped) = Metadata::load(&dir, 2).unwrap();
        assert!(dropped.is_empty());
        assert_eq!(loaded.queue("orders"), Some(&orders));
        assert!(loaded.queue("temp").is_none());
        assert!(loaded.exchange("events").is_some());
        assert!(loaded.exchange("scratch").is_none());
        assert!(loaded.exchange("amq.topic").is_some());
        assert_eq!(loaded.bindings(), &[binding("events", "orders", "order.#")]);

        let mut loaded = loaded;
        let (next, _) = loaded.declare_queue(queue("later")).unwrap();
        assert!(next.id.0 > 2, "queue ids continue after the stored ones");
    }

    #[test]
    fn an_auto_delete_queue_that_had_consumers_is_dropped_at_load() {
        let dir = scratch("auto-delete");
        let mut metadata = Metadata::new(1);
        let mut request = queue("fleeting");
        request.auto_delete = true;
        metadata.declare_queue(request).unwrap();
        let mut request = queue("unused");
        request.auto_delete = true;
        metadata.declare_queue(request).unwrap();
        assert!(metadata.note_consumer("fleeting").unwrap());
        assert!(!metadata.note_consumer("fleeting").unwrap());
        metadata.save(&dir).unwrap();

        let (loaded, dropped) = Metadata::load(&dir, 1).unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].name, "fleeting");
        assert!(loaded.queue("unused").is_some());
    }

    #[test]
    fn a_damaged_or_newer_topology_file_is_refused() {
        let dir = scratch("damaged");
        std::fs::write(
            dir.join(TOPOLOGY_FILE_NAME),
            b"{\"format_version\": 1, \"exch",
        )
        .unwrap();
        assert!(matches!(
            Metadata::load(&dir, 1),
            Err(DataDirError::MetaInvalid { .. })
        ));

        let newer =
            r#"{"format_version":7,"next_queue_id":1,"exchanges":[],"queues":[],"bindings":[]}"#;
        std::fs::write(dir.join(TOPOLOGY_FILE_NAME), newer).unwrap();
        assert!(matches!(
            Metadata::load(&dir, 1),
            Err(DataDirError::MetaVersion { found: 7, .. })
        ));

        let bad_owner = r#"{"format_version":1,"next_queue_id":5,"exchanges":[],"bindings":[],
            "queues":[{"name":"q","id":1,"owner":9,"durable":true,"auto_delete":false,
            "had_consumer":false,"arguments":{}}]}"#;
        std::fs::write(dir.join(TOPOLOGY_FILE_NAME), bad_owner).unwrap();
        assert!(matches!(
            Metadata::load(&dir, 2),
            Err(DataDirError::MetaInvalid { .. })
        ));
    }
}
