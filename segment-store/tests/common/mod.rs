//! Helpers shared by the integration tests: an executor to run on and scratch directories under
//! `target/` (never tmpfs: the store refuses it).

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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

/// Copies the files of `source` into `target`, which it creates.
pub fn copy_dir(source: &Path, target: &Path) {
    fs::create_dir_all(target).unwrap();
    for entry in fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
    }
}

/// Overwrites `bytes` at `position` of the file at `path` and syncs it.
pub fn poke(path: &Path, position: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, position).unwrap();
    file.sync_all().unwrap();
}

/// Options for byte-surgery tests: 64 KiB segments, no background task, and no checkpoint but
/// those of opens, rolls and closes, so the durable point is where the test closed the log.
pub fn surgery_options() -> ruuster_segment_store::Options {
    ruuster_segment_store::Options {
        segment_bytes: 64 * 1024,
        max_payload_bytes: 4096,
        checkpoint_every_bytes: 1 << 30,
        background_period: None,
        ..ruuster_segment_store::Options::default()
    }
}

/// The first segment file of the log in `dir`.
pub fn first_segment_path(dir: &Path) -> PathBuf {
    dir.join("00000000000000000000.seg")
}

/// Opens the log in `dir` with [`surgery_options`], reads every durable record and checks that
/// each holds `payload(offset, payload_bytes)` at its own offset; returns the report and the count.
pub fn open_and_check(
    dir: &Path,
    payload_bytes: usize,
) -> Result<(ruuster_segment_store::RecoveryReport, u64), ruuster_segment_store::StoreError> {
    use ruuster_segment_store::{Log, ReadLimits, Watermark};
    let dir = dir.to_path_buf();
    run(async move {
        let (log, report) = Log::open(&dir, surgery_options()).await?;
        let limits = ReadLimits {
            records_max: usize::MAX,
            bytes_max: usize::MAX,
        };
        let records = log.read(0, limits, Watermark::Durable).await?;
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.offset, index as u64);
            assert_eq!(
                record.payload,
                payload(record.offset, payload_bytes),
                "invented content"
            );
        }
        Ok((report, records.len() as u64))
    })
}
