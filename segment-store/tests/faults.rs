//! Injected faults through the simulated disk's seam.
//!
//! Can catch: a confirmation after a failed fdatasync or write (the "retry the fsync and confirm"
//! bug), a log that keeps accepting appends after a fault, a disk-full roll that poisons or loses
//! the log, a reopen that cannot recover a poisoned log. Cannot catch: how the real kernel
//! reports such errors (errseq, page state); that is the seam's promise, not tested here.

mod common;

use std::path::PathBuf;
use std::rc::Rc;

use common::{payload, run};
use ruuster_segment_store::io::sim::{SimFaults, SimStorage};
use ruuster_segment_store::{Level, Log, Options, ReadLimits, Record, StoreError, Watermark};

fn options() -> Options {
    Options {
        segment_bytes: 32 * 1024,
        max_payload_bytes: 4096,
        background_period: None,
        ..Options::default()
    }
}

fn record(body: &[u8]) -> Record<'_> {
    Record {
        payload: body,
        timestamp_ms: 1,
        flags: 0,
    }
}

/// After the fdatasync fails, no pending append is confirmed, the durable watermark stays where
/// it was, new appends fail as poisoned, and a reopen recovers every earlier confirmed record.
#[test]
fn after_an_injected_fsync_error_nothing_more_is_reported_durable() {
    run(async {
        let storage = SimStorage::new(7);
        let dir = PathBuf::from("/sim/faults");
        let (log, _) = Log::open_with(storage.session(), &dir, options())
            .await
            .unwrap();
        let body = payload(1, 200);
        for _ in 0..5 {
            log.append_wait(&[record(&body)], Level::Fsynced)
                .await
                .unwrap();
        }
        let durable_before = log.durable_offset();
        assert_eq!(durable_before, 5);

        storage.set_faults(SimFaults {
            fail_sync_after: Some(0),
            ..SimFaults::default()
        });
        let log = Rc::new(log);
        let mut tasks = Vec::new();
        for index in 0..8u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let body = payload(100 + index, 300);
                log.append_wait(&[record(&body)], Level::Fsynced)
                    .await
                    .map(|(_, level)| level)
            }));
        }
        for task in tasks {
            let result = task.await;
            assert!(
                matches!(result, Err(StoreError::Poisoned { .. })),
                "got {result:?}"
            );
        }
        assert_eq!(log.durable_offset(), durable_before);
        assert!(log.poisoned().is_some());
        let later = log.append(&[record(&body)]).await;
        assert!(
            matches!(later, Err(StoreError::Poisoned { .. })),
            "got {later:?}"
        );
        let waited = log.wait_for(durable_before, Watermark::Durable).await;
        assert!(waited.is_err(), "watermark waiters learn of the poison");
        drop(log);

        storage.set_faults(SimFaults::default());
        storage.crash();
        let (log, report) = Log::open_with(storage.session(), &dir, options())
            .await
            .unwrap();
        assert!(report.next_offset >= durable_before);
        let limits = ReadLimits {
            records_max: 100,
            bytes_max: usize::MAX,
        };
        let records = log.read(0, limits, Watermark::Durable).await.unwrap();
        assert!(records.iter().take(5).all(|stored| stored.payload == body));
        log.append_wait(&[record(&body)], Level::Fsynced)
            .await
            .unwrap();
    });
}

/// A failed write poisons too: its appenders get an error, never a confirmation.
#[test]
fn an_injected_write_error_fails_its_appenders_and_poisons_the_log() {
    run(async {
        let storage = SimStorage::new(8);
        let (log, _) = Log::open_with(storage.session(), "/sim/write-fault", options())
            .await
            .unwrap();
        storage.set_faults(SimFaults {
            fail_write_after: Some(0),
            ..SimFaults::default()
        });
        let body = payload(3, 100);
        let result = log.append_wait(&[record(&body)], Level::Written).await;
        assert!(
            matches!(result, Err(StoreError::Poisoned { .. })),
            "got {result:?}"
        );
        assert_eq!(log.written_offset(), 0);
    });
}

/// Disk full at segment preallocation is a clean error: no poison, nothing lost, and appends go
/// on once space is back.
#[test]
fn no_space_at_preallocation_is_a_clean_error_that_does_not_poison() {
    run(async {
        let storage = SimStorage::new(9);
        let (log, _) = Log::open_with(storage.session(), "/sim/no-space", options())
            .await
            .unwrap();
        let body = payload(4, 3000);
        let mut appended = 0u64;
        storage.set_faults(SimFaults {
            no_space: true,
            ..SimFaults::default()
        });
        let error = loop {
            match log.append_wait(&[record(&body)], Level::Fsynced).await {
                Ok(_) => appended += 1,
                Err(error) => break error,
            }
            assert!(appended < 100, "the segment never filled");
        };
        assert!(error.is_no_space(), "got {error}");
        assert!(log.poisoned().is_none());
        assert_eq!(log.durable_offset(), appended);
        // The spare segment prepared at open (if it was ready before the disk filled) took one
        // roll; the roll that needed a new file is the one that failed.
        let rolled_before = log.stats().segments_rolled_count;

        storage.set_faults(SimFaults::default());
        log.append_wait(&[record(&body)], Level::Fsynced)
            .await
            .unwrap();
        assert_eq!(log.durable_offset(), appended + 1);
        assert_eq!(log.stats().segments_rolled_count, rolled_before + 1);
    });
}
