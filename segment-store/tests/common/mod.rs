//! Helpers shared by the integration tests: an executor to run on and scratch directories under
//! `target/` (never tmpfs: the store refuses it).

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Runs `future` on a fresh glommio executor on this thread. glommio needs locked memory for its
/// rings: run tests as root or after `ulimit -l unlimited`.
pub fn run<T: 'static>(future: impl Future<Output = T> + 'static) -> T {
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("glommio executor starts (is `ulimit -l` high enough?)");
    executor.run(future)
}

/// A fresh directory under the cargo target directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("segment-store")
        .join(format!("{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A payload whose bytes depend on its tag, so that a swapped or stale record is noticed.
pub fn payload(tag: u64, len: usize) -> Vec<u8> {
    let mut state = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The seed from `SEED` or the clock; printed so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("{test}: SEED={seed}");
    seed
}
