//! Flow control: the bounds that keep a broker's memory finite under any load, and the alarms
//! that block publishers when memory or disk runs short.
//!
//! Every buffer that a fast publisher or a slow consumer could grow has a named bound. Reaching a
//! bound never drops data and never fails a request: the connection that feeds the buffer stops
//! reading its socket, so the excess waits in the kernel's socket buffers and then in the client.
//!
//! What grows, its bound, and what happens at the bound:
//!
//! - a connection's receive buffer: the negotiated frame size; the frame is refused with 101;
//! - messages published and not yet confirmed, per connection: `unconfirmed_max` messages (the
//!   client must wait; past it, 401) and `unconfirmed_bytes_max` bytes (the reader holds);
//! - frames queued for a client that does not read (replies, returns, confirms):
//!   [`OUTBOUND_HOLD_BYTES`]; the reader holds until the writer drains;
//! - topology and stats requests in progress, per connection: [`REQUESTS_IN_FLIGHT_MAX`]; the
//!   reader holds;
//! - publish envelopes one shard has sent to one owner shard and not had answered (the outbox,
//!   the ring, the owner's append queue, the journal tail): [`PUBLISH_BYTES_IN_FLIGHT_MAX`] per
//!   pair; the publishing connection waits, so its reader holds;
//! - messages in a data outbox: `mesh::DATA_OUTBOX_MESSAGES_MAX`; the sender waits;
//! - the journal's unsynced tail: the store's `unsynced_bytes_max` (16 MiB); the appender waits
//!   for an fdatasync;
//! - messages held by a shard's queues, ready and unacked: `queue_memory_max_bytes` per shard;
//!   every publishing connection is blocked with 602;
//! - deliveries a connection holds unacked (each is also a frame in its send buffer until
//!   written): the prefetch per consumer and `unacked_per_connection_max` per connection; the
//!   consume is refused with 502 or 603;
//! - connections: `connections_per_shard_max`; the connection is refused with 600;
//! - disk: `disk_free_limit_bytes` free; every publishing connection is blocked with 601.
//!
//! A blocked connection is told so with `Blocked` (the code and a reason) the first time it
//! publishes while blocked, or at once if it has published before, and with `Unblocked` when the
//! condition clears. While blocked its reader stops at the next `Publish` frame; the frames before
//! it (acks, consumes, requests) are handled, the ones after it wait with it. Connections that do
//! not publish are never held, so consumers keep draining queues, which is what clears a memory
//! alarm. The alarms are broker-wide: every shard blocks its publishers while any shard's queue
//! memory is high (the publishers of one shard may feed queues anywhere) or the disk is low.
//!
//! Known shortcoming: queues keep every message body in memory until it is acked, so a durable
//! queue's backlog is bounded by `queue_memory_max_bytes`, not by the disk. Dropping bodies of
//! ready messages and reading them back from the journal would let the backlog grow on disk
//! instead; it is not built.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use ruuster_wire::ErrorCode;
use tracing::{info, warn};

use crate::runtime::{Core, ShardMessage};

/// Frames a connection may have queued for its client before its reader stops: four of the
/// default largest frames. Everything the reader's own frames produce (replies, returns,
/// confirms) is then bounded by this plus one frame's worth.
pub const OUTBOUND_HOLD_BYTES: usize = 4 << 20;

/// Topology and stats requests one connection may have in progress. Each is a task waiting for
/// shard 0 or for every shard; the client's own limit is the same order.
pub const REQUESTS_IN_FLIGHT_MAX: u32 = 256;

/// Envelope bytes one shard may have in flight to one owner shard (sent, not yet answered with
/// the outcome). Twice the journal's default unsynced window, so publishers can fill the owner's
/// tail while the previous group's fdatasync runs. Bounds, per pair, the outbox, the ring, the
/// owner's append queue and the publishes waiting for their level.
pub const PUBLISH_BYTES_IN_FLIGHT_MAX: u64 = 32 << 20;

/// How often a shard re-measures its queue memory while nothing is appended, so that acks clear
/// a memory alarm without waiting for the next publish (there is none while blocked).
pub const MEMORY_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// A memory alarm clears below `queue_memory_max_bytes - queue_memory_max_bytes / this` (7/8 of
/// the limit), so that one ack does not unblock publishers only for the next publish to block them.
pub const MEMORY_CLEAR_DIVISOR: u64 = 8;

/// Where the free-space monitor learns the free bytes of a directory's filesystem. The default is
/// `statvfs`; tests pass their own to block and unblock without filling a disk.
pub type FreeSpaceSource = Arc<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// The free bytes available to unprivileged users on `path`'s filesystem (`f_bavail`), which is
/// what the broker's files may still take.
pub fn statvfs_free_bytes(path: &Path) -> std::io::Result<u64> {
    let text = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    // SAFETY: an all-zero statvfs is a valid value for the kernel to overwrite.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `text` is a NUL-terminated path that outlives the call, and `stats` is writable.
    let result = unsafe { libc::statvfs(text.as_ptr(), &mut stats) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

/// Tasks waiting for a condition on one executor; [`Waiters::wake_all`] lets each re-check it.
#[derive(Debug, Default)]
pub struct Waiters {
    wakers: RefCell<Vec<Waker>>,
}

impl Waiters {
    /// Resolves once `ready` returns true. `ready` is checked at once and after every wake-up.
    pub async fn until(&self, mut ready: impl FnMut() -> bool) {
        futures_lite::future::poll_fn(|context| {
            if ready() {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|waker| waker.will_wake(context.waker())) {
                wakers.push(context.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    pub fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }
}

/// The limits flow control enforces on a shard, from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLimits {
    pub queue_memory_max_bytes: u64,
    pub disk_free_limit_bytes: u64,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            queue_memory_max_bytes: u64::MAX,
            disk_free_limit_bytes: 0,
        }
    }
}

/// Why publishers are blocked, as announced in `Blocked`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocking {
    pub code: ErrorCode,
    pub reason: String,
}

/// One shard's flow-control state. Touched only by its executor.
#[derive(Debug, Default)]
pub struct Flow {
    limits: Cell<FlowLimits>,
    /// Envelope bytes sent to each shard (this one included) and not yet answered.
    in_flight_bytes: RefCell<Vec<u64>>,
    room: Waiters,
    disk_free_bytes: Cell<Option<u64>>,
    disk_low: Cell<bool>,
    /// Which shards report their queue memory above the limit.
    memory_high: RefCell<Vec<bool>>,
    queue_memory_bytes: Cell<u64>,
    blocking: RefCell<Option<Blocking>>,
    /// Times a connection's reader stopped for a bound or an alarm, or a publish waited for
    /// room towards its owner shard.
    pub holds_count: Cell<u64>,
    /// Times this shard's publishers became blocked.
    pub blocked_count: Cell<u64>,
}

impl Flow {
    pub fn configure(&self, shard_count: usize, limits: FlowLimits) {
        self.limits.set(limits);
        *self.in_flight_bytes.borrow_mut() = vec![0; shard_count];
        *self.memory_high.borrow_mut() = vec![false; shard_count];
    }

    /// Why publishers are blocked now, if they are.
    pub fn blocking(&self) -> Option<Blocking> {
        self.blocking.borrow().clone()
    }

    pub fn queue_memory_bytes(&self) -> u64 {
        self.queue_memory_bytes.get()
    }

    pub fn count_hold(&self) {
        self.holds_count.set(self.holds_count.get() + 1);
    }

    fn compute_blocking(&self) -> Option<Blocking> {
        let limits = self.limits.get();
        if self.disk_low.get() {
            let free = self.disk_free_bytes.get().unwrap_or(0);
            return Some(Blocking {
                code: ErrorCode::DISK_LOW,
                reason: format!(
                    "free disk {free} bytes below the limit of {} bytes",
                    limits.disk_free_limit_bytes
                ),
            });
        }
        let high = self.memory_high.borrow();
        if let Some(shard) = high.iter().position(|&raised| raised) {
            return Some(Blocking {
                code: ErrorCode::MEMORY_LOW,
                reason: format!(
                    "queue memory on shard {shard} above the limit of {} bytes",
                    limits.queue_memory_max_bytes
                ),
            });
        }
        None
    }
}

/// Whether a shard's memory alarm is raised after measuring `bytes`: raised at the limit, cleared
/// below 7/8 of it.
pub fn memory_alarm_after(raised: bool, bytes: u64, max_bytes: u64) -> bool {
    if raised {
        bytes >= max_bytes - max_bytes / MEMORY_CLEAR_DIVISOR
    } else {
        bytes >= max_bytes
    }
}

impl Core {
    /// Waits until this shard may send `size_bytes` more envelope bytes to `shard`, then counts
    /// them. The reader of the publishing connection waits with it.
    pub async fn reserve_publish(&self, shard: usize, size_bytes: u64) {
        let flow = &self.flow;
        let room = || flow.in_flight_bytes.borrow()[shard] < PUBLISH_BYTES_IN_FLIGHT_MAX;
        if !room() {
            flow.count_hold();
            flow.room.until(room).await;
        }
        flow.in_flight_bytes.borrow_mut()[shard] += size_bytes;
    }

    /// `shard` answered publishes of `size_bytes` envelope bytes.
    pub fn publish_answered(&self, shard: usize, size_bytes: u64) {
        let flow = &self.flow;
        {
            let mut in_flight = flow.in_flight_bytes.borrow_mut();
            assert!(
                in_flight[shard] >= size_bytes,
                "more bytes answered than sent"
            );
            in_flight[shard] -= size_bytes;
        }
        flow.room.wake_all();
    }

    /// The free-space monitor measured `free_bytes` on the data directory's filesystem.
    pub fn set_disk_free(self: &Rc<Self>, free_bytes: u64) {
        let limit = self.flow.limits.get().disk_free_limit_bytes;
        let low = free_bytes < limit;
        self.flow.disk_free_bytes.set(Some(free_bytes));
        if low != self.flow.disk_low.replace(low) {
            if low {
                warn!(
                    shard = self.index,
                    free_bytes, limit, "free disk below the limit; publishers blocked"
                );
            } else {
                info!(
                    shard = self.index,
                    free_bytes, limit, "free disk above the limit again"
                );
            }
            self.refresh_blocking();
        }
    }

    /// The appender enqueued about `bytes` more (charged as the queues charge them). Adds them
    /// to the last measured figure and measures exactly only when that crosses the limit, so an
    /// append costs no walk over the shard's queues; the ticker measures exactly meanwhile.
    pub fn note_enqueued(self: &Rc<Self>, bytes: u64) {
        let estimate = self.flow.queue_memory_bytes.get() + bytes;
        self.flow.queue_memory_bytes.set(estimate);
        let raised = self.flow.memory_high.borrow()[self.index];
        if !raised && estimate >= self.flow.limits.get().queue_memory_max_bytes {
            self.check_memory();
        }
    }

    /// Measures this shard's queue memory and raises or clears its alarm on every shard.
    pub fn check_memory(self: &Rc<Self>) {
        let bytes = self.owned_queue_memory_bytes();
        self.flow.queue_memory_bytes.set(bytes);
        let max_bytes = self.flow.limits.get().queue_memory_max_bytes;
        let raised = self.flow.memory_high.borrow()[self.index];
        let now_raised = memory_alarm_after(raised, bytes, max_bytes);
        if now_raised == raised {
            return;
        }
        if now_raised {
            warn!(
                shard = self.index,
                bytes, max_bytes, "queue memory above the limit; publishers blocked"
            );
        } else {
            info!(
                shard = self.index,
                bytes, "queue memory below the limit again"
            );
        }
        for shard in (0..self.shard_count).filter(|&shard| shard != self.index) {
            let message = ShardMessage::MemoryAlarm { raised: now_raised };
            self.send_control_now(shard, message);
        }
        self.set_memory_alarm(self.index, now_raised);
    }

    /// `shard` raised or cleared its memory alarm.
    pub fn set_memory_alarm(&self, shard: usize, raised: bool) {
        self.flow.memory_high.borrow_mut()[shard] = raised;
        self.refresh_blocking();
    }

    fn refresh_blocking(&self) {
        let next = self.flow.compute_blocking();
        let changed = {
            let mut blocking = self.flow.blocking.borrow_mut();
            let changed = blocking.as_ref().map(|b| b.code) != next.as_ref().map(|b| b.code);
            if blocking.is_none() && next.is_some() {
                self.flow
                    .blocked_count
                    .set(self.flow.blocked_count.get() + 1);
            }
            *blocking = next;
            changed
        };
        if changed {
            for sink in self.sinks() {
                sink.flow_changed();
            }
        }
    }
}

/// Re-measures the shard's queue memory every [`MEMORY_CHECK_INTERVAL`].
pub async fn memory_ticker(core: Rc<Core>) {
    loop {
        glommio::timer::sleep(MEMORY_CHECK_INTERVAL).await;
        core.check_memory();
    }
}

/// Measures the free space of `dir`'s filesystem every `interval` on a thread of its own (a
/// `statvfs` is a blocking system call, so it stays off the shards' executors) and sends each
/// figure to every shard. The thread ends when `stop` is dropped or every shard has stopped
/// listening.
pub fn spawn_disk_monitor(
    dir: PathBuf,
    interval: Duration,
    source: FreeSpaceSource,
    shards: Vec<flume::Sender<u64>>,
    stop: flume::Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("disk-monitor".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                match source(&dir) {
                    Ok(free_bytes) => {
                        failing = false;
                        // A shard that has not taken the last figure gets the next one.
                        let delivered = shards
                            .iter()
                            .filter(|shard| {
                                !matches!(
                                    shard.try_send(free_bytes),
                                    Err(flume::TrySendError::Disconnected(_))
                                )
                            })
                            .count();
                        if delivered == 0 {
                            return;
                        }
                    }
                    Err(error) => {
                        if !failing {
                            warn!(dir = %dir.display(), %error, "free space not measured");
                        }
                        failing = true;
                        if shards.iter().all(|shard| shard.is_disconnected()) {
                            return;
                        }
                    }
                }
                if !matches!(
                    stop.recv_timeout(interval),
                    Err(flume::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_alarm_rises_at_the_limit_and_clears_below_seven_eighths() {
        assert!(!memory_alarm_after(false, 799, 800));
        assert!(memory_alarm_after(false, 800, 800));
        assert!(memory_alarm_after(true, 700, 800));
        assert!(!memory_alarm_after(true, 699, 800));
        assert!(!memory_alarm_after(false, 0, u64::MAX));
    }

    #[test]
    fn statvfs_reports_free_bytes_of_an_existing_directory_and_fails_for_a_missing_one() {
        let free = statvfs_free_bytes(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(free > 0);
        assert!(statvfs_free_bytes(Path::new("/no/such/directory/here")).is_err());
    }
}
