//! The control plane: shard 0's single writer of the topology, and the snapshots it publishes.
//!
//! A topology request (declare, bind, delete...) travels on a flume channel to the control task on
//! shard 0. The task applies every request waiting at that moment to its [`Metadata`], persists
//! the result once for the whole group (one atomic file replacement, like a group commit), builds
//! one [`Snapshot`] and sends it to every shard. It answers the requests only when every shard has
//! installed that snapshot, so a client that declares and then publishes, on any connection,
//! always finds what it declared (DESIGN.md: "answered only once the new snapshot is installed on
//! the connection's shard and on the owner's"; waiting for all shards is simpler and costs one
//! more hop at declare rates).
//!
//! If persisting fails, the group's changes are undone in memory and every request in the group
//! gets an internal error: the topology a client sees never runs ahead of the one on disk.
//!
//! Data-plane shards never wait on shard 0 to route: they read their installed snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{debug, error};

use crate::metadata::{
    Binding, Change, ConnectionId, ExchangeDeclare, Metadata, Queue, QueueDeclare, TopologyError,
};
use crate::routing::{
    BindingArgument, BindingSpec, ExchangeSpec, QueueSpec, RoutingMetadata, RoutingTable,
};

/// Requests applied as one group, sharing one persist and one snapshot. Bounds how long the first
/// request of a burst waits for the others.
pub const REQUESTS_PER_GROUP_MAX: usize = 1024;

/// What every shard reads: the routing table and the queue directory, at one version.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub routing: RoutingTable,
    pub queues: HashMap<String, Queue>,
}

impl Snapshot {
    /// Builds the snapshot of `metadata`. The control task validated every declare, so a build
    /// failure means a bug or a damaged topology file.
    pub fn build(metadata: &Metadata) -> Result<Snapshot, String> {
        let routing_metadata = RoutingMetadata {
            exchanges: metadata
                .exchanges()
                .filter(|exchange| !exchange.name.is_empty())
                .map(|exchange| ExchangeSpec {
                    name: exchange.name.clone(),
                    kind: exchange.kind,
                })
                .collect(),
            queues: metadata
                .queues()
                .map(|queue| QueueSpec {
                    name: queue.name.clone(),
                    id: queue.id,
                    owner: queue.owner,
                })
                .collect(),
            bindings: metadata
                .bindings()
                .iter()
                .map(|binding| BindingSpec {
                    exchange: binding.exchange.clone(),
                    queue: binding.queue.clone(),
                    key: binding.key.clone(),
                    arguments: binding
                        .arguments
                        .iter()
                        .map(|(key, value)| BindingArgument {
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        let routing = RoutingTable::build(metadata.version(), &routing_metadata)
            .map_err(|error| format!("routing table: {error}"))?;
        let queues = metadata
            .queues()
            .map(|queue| (queue.name.clone(), queue.clone()))
            .collect();
        Ok(Snapshot {
            version: metadata.version(),
            routing,
            queues,
        })
    }
}

/// A topology request.
#[derive(Debug)]
pub enum ControlOp {
    DeclareExchange(ExchangeDeclare),
    DeleteExchange {
        name: String,
        if_unused: bool,
    },
    DeclareQueue(QueueDeclare),
    DeleteQueue {
        name: String,
        connection: ConnectionId,
    },
    Bind {
        binding: Binding,
        connection: ConnectionId,
    },
    Unbind {
        binding: Binding,
        connection: ConnectionId,
    },
    /// A queue got a consumer; an auto-delete queue is then deleted when its last one goes.
    ConsumerAttached {
        queue: String,
    },
    /// A queue's last consumer went away.
    LastConsumerGone {
        queue: String,
    },
    /// A connection closed; its exclusive queues go with it.
    ConnectionClosed(ConnectionId),
}

/// The answer to a request, sent once the resulting snapshot is installed on every shard.
#[derive(Debug)]
pub enum ControlReply {
    /// Applied. `queue` is the declared queue, for a queue declare.
    Done {
        version: u64,
        queue: Option<Queue>,
        deleted: Vec<Queue>,
    },
    Refused(TopologyError),
    /// The topology could not be persisted; nothing of the request took effect.
    Failed(String),
}

/// What applying one request produced: the declared queue, and the queues it deleted.
type Applied = Result<(Option<Queue>, Vec<Queue>), TopologyError>;

#[derive(Debug)]
pub struct ControlRequest {
    pub op: ControlOp,
    pub reply: flume::Sender<ControlReply>,
}

/// Where the control task sends snapshots and learns that they are installed.
#[derive(Debug)]
pub struct Installers {
    /// One per shard, in shard order.
    pub snapshots: Vec<flume::Sender<Arc<Snapshot>>>,
    /// `(shard, version)` each time a shard has installed a snapshot.
    pub installed: flume::Receiver<(usize, u64)>,
}

/// Runs shard 0's control task until every request sender is gone.
pub async fn run(
    mut metadata: Metadata,
    data_dir: PathBuf,
    requests: flume::Receiver<ControlRequest>,
    installers: Installers,
) {
    let shard_count = installers.snapshots.len();
    let mut installed_versions = vec![metadata.version(); shard_count];

    while let Ok(first) = requests.recv_async().await {
        let mut group = vec![first];
        while group.len() < REQUESTS_PER_GROUP_MAX {
            match requests.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }

        let before = metadata.clone();
        let outcomes: Vec<Applied> = group
            .iter()
            .map(|request| apply(&mut metadata, &request.op))
            .collect();
        let changed = metadata.version() != before.version();

        // The snapshot is built before anything is persisted. The metadata checks every request
        // so that its snapshot builds; if one slips through (a bug), the group is refused rather
        // than the broker stopped by a client's request.
        let snapshot = if changed {
            match Snapshot::build(&metadata) {
                Ok(snapshot) => Some(Arc::new(snapshot)),
                Err(message) => {
                    error!(
                        %message,
                        version = metadata.version(),
                        "topology does not build; the group's changes are undone"
                    );
                    metadata = before;
                    let message = format!("the topology would not build: {message}");
                    for request in group {
                        let _ = request.reply.send(ControlReply::Failed(message.clone()));
                    }
                    continue;
                }
            }
        } else {
            None
        };

        let persisted = if changed {
            persist(&metadata, &data_dir).await
        } else {
            Ok(())
        };
        if let Err(message) = persisted {
            error!(%message, "topology not persisted; the group's changes are undone");
            metadata = before;
            for request in group {
                let _ = request.reply.send(ControlReply::Failed(message.clone()));
            }
            continue;
        }

        if let Some(snapshot) = snapshot {
            publish(snapshot, &installers, &mut installed_versions).await;
        }
        for (request, outcome) in group.into_iter().zip(outcomes) {
            let reply = match outcome {
                Ok((queue, deleted)) => ControlReply::Done {
                    version: metadata.version(),
                    queue,
                    deleted,
                },
                Err(refusal) => ControlReply::Refused(refusal),
            };
            // A requester that went away (its connection closed) needs no answer.
            let _ = request.reply.send(reply);
        }
    }
}

fn apply(metadata: &mut Metadata, op: &ControlOp) -> Applied {
    let change = match op {
        ControlOp::DeclareExchange(request) => metadata.declare_exchange(request.clone())?,
        ControlOp::DeleteExchange { name, if_unused } => {
            metadata.delete_exchange(name, *if_unused)?
        }
        ControlOp::DeclareQueue(request) => {
            let (queue, _) = metadata.declare_queue(request.clone())?;
            return Ok((Some(queue), Vec::new()));
        }
        ControlOp::DeleteQueue { name, connection } => metadata.delete_queue(name, *connection)?,
        ControlOp::Bind {
            binding,
            connection,
        } => metadata.bind(binding.clone(), *connection)?,
        ControlOp::Unbind {
            binding,
            connection,
        } => metadata.unbind(binding, *connection)?,
        ControlOp::ConsumerAttached { queue } => {
            metadata.note_consumer(queue)?;
            Change::Other
        }
        ControlOp::LastConsumerGone { queue } => metadata.last_consumer_gone(queue),
        ControlOp::ConnectionClosed(connection) => metadata.connection_closed(*connection),
    };
    match change {
        Change::QueuesDeleted(deleted) => Ok((None, deleted)),
        Change::QueueCreated(queue) => Ok((Some(queue), Vec::new())),
        Change::None | Change::Other => Ok((None, Vec::new())),
    }
}

/// Writes the topology off the executor: the file replacement fsyncs twice.
async fn persist(metadata: &Metadata, data_dir: &std::path::Path) -> Result<(), String> {
    let metadata = metadata.clone();
    let data_dir = data_dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || metadata.save(&data_dir).map_err(|error| error.to_string()))
        .await
}

async fn publish(snapshot: Arc<Snapshot>, installers: &Installers, installed: &mut [u64]) {
    let version = snapshot.version;
    for sender in &installers.snapshots {
        // Installer channels are unbounded: a shard installs snapshots as fast as shard 0 builds
        // them, and shard 0 waits for each to be installed before building the next.
        let _ = sender.send(snapshot.clone());
    }
    while installed
        .iter()
        .any(|&shard_version| shard_version < version)
    {
        match installers.installed.recv_async().await {
            Ok((shard, shard_version)) => {
                installed[shard] = installed[shard].max(shard_version);
            }
            Err(_) => return,
        }
    }
    debug!(version, "snapshot installed on every shard");
}

#[cfg(test)]
mod tests {
    use glommio::LocalExecutorBuilder;

    use super::*;
    use crate::metadata::Arguments;
    use crate::routing::{ExchangeKind, NoHeaders, RouteTargets, ShardId};

    const CONNECTION: ConnectionId = ConnectionId {
        shard: ShardId(0),
        serial: 1,
    };

    fn scratch(name: &str) -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let path = exe
            .ancestors()
            .nth(3)
            .unwrap()
            .join("tmp")
            .join("control")
            .join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// Runs the control task with `shard_count` simulated installers on one executor, sends
    /// `ops` one group at a time, and returns the replies and the last snapshot each shard saw.
    fn drive(shard_count: usize, dir: PathBuf, ops: Vec<ControlOp>) -> Vec<ControlReply> {
        LocalExecutorBuilder::default()
            .io_memory(512 << 10)
            .spawn(move || async move {
                let (request_sender, requests) = flume::unbounded();
                let (installed_sender, installed) = flume::unbounded();
                let mut snapshots = Vec::new();
                for shard in 0..shard_count {
                    let (sender, receiver) = flume::unbounded::<Arc<Snapshot>>();
                    snapshots.push(sender);
                    let installed_sender = installed_sender.clone();
                    glommio::spawn_local(async move {
                        while let Ok(snapshot) = receiver.recv_async().await {
                            let _ = installed_sender.send((shard, snapshot.version));
                        }
                    })
                    .detach();
                }
                let metadata = Metadata::new(shard_count as u16);
                let control = glommio::spawn_local(run(
                    metadata,
                    dir,
                    requests,
                    Installers {
                        snapshots,
                        installed,
                    },
                ));

                let mut replies = Vec::new();
                for op in ops {
                    let (reply, answer) = flume::bounded(1);
                    request_sender.send(ControlRequest { op, reply }).unwrap();
                    replies.push(answer.recv_async().await.unwrap());
                }
                drop(request_sender);
                control.await;
                replies
            })
            .unwrap()
            .join()
            .unwrap()
    }

    fn declare_queue(name: &str) -> ControlOp {
        ControlOp::DeclareQueue(QueueDeclare {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            passive: false,
            arguments: Arguments::new(),
            connection: CONNECTION,
        })
    }

    #[test]
    fn a_declare_is_answered_with_the_version_that_contains_it_and_persisted() {
        let dir = scratch("declare");
        let replies = drive(
            2,
            dir.clone(),
            vec![
                ControlOp::DeclareExchange(ExchangeDeclare {
                    name: "events".into(),
                    kind: ExchangeKind::Topic,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    passive: false,
                    arguments: Arguments::new(),
                }),
                declare_queue("audit"),
                ControlOp::Bind {
                    binding: Binding {
                        exchange: "events".into(),
                        queue: "audit".into(),
                        key: "#".into(),
                        arguments: Arguments::new(),
                    },
                    connection: CONNECTION,
                },
                ControlOp::DeclareExchange(ExchangeDeclare {
                    name: "events".into(),
                    kind: ExchangeKind::Fanout,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    passive: false,
                    arguments: Arguments::new(),
                }),
            ],
        );
        let versions: Vec<u64> = replies
            .iter()
            .filter_map(|reply| match reply {
                ControlReply::Done { version, .. } => Some(*version),
                _ => None,
            })
            .collect();
        assert_eq!(versions, vec![2, 3, 4]);
        let ControlReply::Done {
            queue: Some(queue), ..
        } = &replies[1]
        else {
            panic!("queue declare answered {:?}", replies[1]);
        };
        assert_eq!(queue.name, "audit");
        assert!(matches!(
            replies[3],
            ControlReply::Refused(TopologyError::NotEquivalent { .. })
        ));

        let (stored, _) = Metadata::load(&dir, 2).unwrap();
        assert_eq!(stored.bindings().len(), 1);
        let snapshot = Snapshot::build(&stored).unwrap();
        let mut targets = RouteTargets::new();
        snapshot
            .routing
            .route("events", "a.b", &NoHeaders, &mut targets)
            .unwrap();
        assert_eq!(targets.queues(), &[queue.id]);
    }

    #[test]
    fn a_failed_persist_undoes_the_group_and_reports_it() {
        let dir = scratch("unwritable");
        // A regular file where the directory should be makes every save fail.
        let file = dir.join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let replies = drive(1, file, vec![declare_queue("lost"), declare_queue("lost")]);
        assert!(matches!(replies[0], ControlReply::Failed(_)));
        assert!(matches!(replies[1], ControlReply::Failed(_)));
    }
}
