//! A workaround for parked shards that miss their wake-up.
//!
//! glommio parks an idle executor in `io_uring_enter` on its main ring, and relies on a poll of
//! its latency ring's descriptor to wake it for what completes there: timers, foreign wakes (the
//! executor's eventfd is read on the latency ring) and latency-class I/O. On the development VM
//! (Linux 6.18, 2 vCPUs, glommio 0.9.0) that wake-up is sometimes lost, and a shard stays parked
//! although what it waits for is done. It shows at start-up, where shards park most: a broker
//! killed and restarted in a loop stalled at the 7th, 19th, 23rd, 38th, 56th and 83rd start of
//! such runs, with one shard in journal recovery, in replay, connecting its rings to a peer that
//! had already connected, or parked by glommio before it first polled the shard's future (gdb:
//! `LocalExecutor::run` -> `Parker::park` -> `link_rings_and_sleep`, two context switches in the
//! thread's life). The thread sat in `io_cqring_wait` with the io-wq workers idle, and attaching
//! `strace` to it (which interrupts the system call) let it carry on at once. glommio issues #494
//! and #547 describe the same symptom on other kernels. Whether glommio's ring linking or the
//! kernel loses the wake-up is not known.
//!
//! A signal ends a parked `io_uring_enter`, and glommio then reads every ring again. So one thread
//! per broker sends each shard's executor thread `SIGURG` every [`NUDGE_INTERVAL`], handled by a
//! handler that does nothing (installed with `SA_RESTART`, so that any other system call the
//! thread was in resumes): a lost wake-up then costs at most that long instead of forever. A
//! shard's thread registers before glommio builds its executor (see `shard::spawn`): when it
//! registered only once its future ran, the loop still stalled once in 517 starts, parked before
//! that first poll. As it is now, the loop started 700 times without a stall (400 on a data
//! directory with journals, 300 on an empty one while a release build loaded both CPUs). The
//! cost is 100 signals a second per shard, each a system call and at most one pass of an idle
//! reactor.
//!
//! The broker owns `SIGURG` in its process (its default action, ignore, is replaced).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How often each shard's thread is nudged: the longest a lost wake-up can hold a shard.
pub const NUDGE_INTERVAL: Duration = Duration::from_millis(10);

/// The signal sent; see the module docs.
const NUDGE_SIGNAL: libc::c_int = libc::SIGURG;

#[derive(Debug, Default)]
struct Shared {
    /// Kernel thread ids of the registered executor threads.
    threads: Mutex<Vec<libc::pid_t>>,
    stopped: AtomicBool,
}

/// The nudging thread of one broker. Dropping it stops the thread.
#[derive(Debug)]
pub struct Nudger {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a shard uses to register its executor thread.
#[derive(Clone, Debug)]
pub struct NudgeHandle(Arc<Shared>);

/// Registered while alive; the thread is unregistered on drop.
#[derive(Debug)]
pub struct Registration {
    shared: Arc<Shared>,
    thread: libc::pid_t,
}

extern "C" fn ignore_nudge(_signal: libc::c_int) {}

/// Installs the do-nothing handler once per process.
fn install_handler() -> std::io::Result<()> {
    static STATUS: OnceLock<libc::c_int> = OnceLock::new();
    let status = *STATUS.get_or_init(|| {
        let handler: extern "C" fn(libc::c_int) = ignore_nudge;
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags) that is then
        // filled in; the handler is an `extern "C"` function that touches nothing, so it is
        // async-signal-safe; the pointers passed are to a live local and null.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(NUDGE_SIGNAL, &action, std::ptr::null_mut())
        }
    });
    match status {
        0 => Ok(()),
        _ => Err(std::io::Error::other(
            "installing the SIGURG handler failed",
        )),
    }
}

impl Nudger {
    /// Installs the handler (once per process) and starts the nudging thread.
    pub fn start() -> std::io::Result<Nudger> {
        install_handler()?;
        let shared = Arc::new(Shared::default());
        let nudged = shared.clone();
        let thread = std::thread::Builder::new()
            .name("shard-nudger".into())
            .spawn(move || nudge_loop(&nudged))?;
        Ok(Nudger {
            shared,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> NudgeHandle {
        NudgeHandle(self.shared.clone())
    }
}

impl Drop for Nudger {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl NudgeHandle {
    /// Registers the calling thread (a shard's executor thread) until the returned value drops.
    pub fn register_current_thread(&self) -> Registration {
        // SAFETY: gettid has no preconditions.
        let thread = unsafe { libc::gettid() };
        self.0.threads.lock().expect("not poisoned").push(thread);
        Registration {
            shared: self.0.clone(),
            thread,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut threads = self.shared.threads.lock().expect("not poisoned");
        threads.retain(|&thread| thread != self.thread);
    }
}

fn nudge_loop(shared: &Shared) {
    // SAFETY: getpid has no preconditions.
    let process = unsafe { libc::getpid() };
    while !shared.stopped.load(Ordering::Relaxed) {
        std::thread::sleep(NUDGE_INTERVAL);
        let threads = shared.threads.lock().expect("not poisoned").clone();
        for thread in threads {
            // SAFETY: tgkill has no memory preconditions. It targets only threads of this
            // process; a thread that is gone fails with ESRCH, which is fine, and a reused id can
            // only name another thread of this process, for which the signal does nothing.
            unsafe { libc::syscall(libc::SYS_tgkill, process, thread, NUDGE_SIGNAL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nudge must not hurt the thread it reaches: a sleeping thread that is nudged many
    /// times wakes on time (the handler runs and `SA_RESTART`/`nanosleep` resume it), and the
    /// process survives (the default action of an unhandled SIGURG is harmless, but a wrongly
    /// installed handler would crash it).
    #[test]
    fn a_nudged_thread_keeps_running_and_unregisters_on_drop() {
        let nudger = Nudger::start().unwrap();
        let handle = nudger.handle();
        let sleeper = std::thread::spawn(move || {
            let registration = handle.register_current_thread();
            let started = std::time::Instant::now();
            std::thread::sleep(NUDGE_INTERVAL * 10);
            assert!(started.elapsed() >= NUDGE_INTERVAL * 10);
            drop(registration);
        });
        sleeper.join().unwrap();
        assert!(nudger.shared.threads.lock().unwrap().is_empty());
    }
}
