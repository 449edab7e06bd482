//! The few runtime services the log needs besides file I/O: cooperative yielding in long loops,
//! timers and detached background tasks. They are glommio's today; a move to another io_uring
//! runtime changes this file and `io/uring.rs` only.

use std::future::Future;
use std::time::Duration;

/// Gives other tasks a turn when the scheduler asks for it (glommio's preempt timer).
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await;
}

pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Runs `future` in the background on the current executor.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}
