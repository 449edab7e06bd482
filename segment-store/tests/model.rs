//! The model test: random appends, reads, clean reopens, crashes and injected faults against an
//! in-memory model, on the simulated disk (`io::sim`), which completes writes out of order and
//! crashes by dropping any subset of the 4 KiB blocks not covered by an fdatasync.
//!
//! Can catch: a confirmed-`Fsynced` record lost by a crash (a sync issued before the writes it
//! covers completed, a watermark that is not a contiguous prefix, a missing sync at roll), a record
//! that reappears with other content or out of nowhere after recovery (padding, stale bytes,
//! preallocated space), a recovery that refuses a log a crash can produce, anything reported
//! durable after an injected fault. Cannot catch: behaviour of the real kernel and device that
//! the sim does not model (see `io::sim`), or bugs in the glommio seam.

mod common;

use std::collections::BTreeMap;
use std::future::{Future, poll_fn};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Poll;

use common::{payload, run};
use ruuster_segment_store::io::sim::{SimFaults, SimRng, SimStorage};
use ruuster_segment_store::{
    Level, Log, Options, ReadLimits, Record, StoreError, SyncPolicy, Watermark,
};

/// Operations per run; runs per test. Both bound the test's time.
const STEPS_PER_RUN: usize = 400;
const RUNS_COUNT: u64 = 24;
const TICKS_MAX_PER_STEP: u64 = 6;

type Waiting<'a> = Vec<(
    Pin<Box<dyn Future<Output = Result<Level, StoreError>> + 'a>>,
    u64,
    Level,
)>;

#[derive(Default)]
struct Model {
    /// Payload of every record the log may hold, by offset.
    records: BTreeMap<u64, Vec<u8>>,
    /// Every offset below this was confirmed `Fsynced`.
    confirmed_durable: u64,
    /// Offsets the caller marked dead; their segments may be deleted.
    dead: std::collections::BTreeSet<u64>,
    segments_deleted_count: u64,
    pad_skips_count: u64,
    confirmed_count: u64,
    crashes_count: u64,
    faults_count: u64,
}

fn options(rng: &mut SimRng, negative_control: bool) -> Options {
    Options {
        segment_bytes: [32 * 1024, 64 * 1024][rng.below(2) as usize],
        max_payload_bytes: 4096,
        sync_policy: SyncPolicy::Always,
        unsynced_bytes_max: 48 * 1024,
        write_bytes_max: [4096, 8192, 16384][rng.below(3) as usize],
        writes_in_flight_max: 1 + rng.below(4) as usize,
        checkpoint_every_bytes: 8 * 1024,
        background_period: None,
        verify_sealed_on_open: rng.chance(1, 2),
        confirm_before_durable_for_tests: negative_control,
        zero_fill_segments: rng.chance(1, 2),
        ..Options::default()
    }
}

/// Polls every waiting future once; collects the finished ones.
async fn tick<'a>(waiting: &mut Waiting<'a>) -> Vec<(u64, Level, Result<Level, StoreError>)> {
    let finished = poll_fn(|context| {
        let mut finished = Vec::new();
        let mut index = 0;
        while index < waiting.len() {
            if let Poll::Ready(result) = waiting[index].0.as_mut().poll(context) {
                let (_, end, level) = waiting.swap_remove(index);
                finished.push((end, level, result));
            } else {
                index += 1;
            }
        }
        Poll::Ready(finished)
    })
    .await;
    futures_lite::future::yield_now().await;
    finished
}

fn settle(
    model: &mut Model,
    end: u64,
    requested: Level,
    result: Result<Level, StoreError>,
) -> Result<(), String> {
    match result {
        Ok(reached) => {
            if reached > requested {
                return Err(format!(
                    "reached {reached:?} above the requested {requested:?}"
                ));
            }
            if reached == Level::Fsynced {
                model.confirmed_count += 1;
                // Durable confirmations cover a prefix: every earlier record is durable too.
                model.confirmed_durable = model.confirmed_durable.max(end);
            }
            Ok(())
        }
        Err(StoreError::Poisoned { .. }) => Ok(()),
        Err(error) => Err(format!("wait failed: {error}")),
    }
}

/// Everything the log holds after recovery must match the model, and every confirmed record
/// must be there.
async fn verify(log: &Log<SimStorage>, model: &mut Model) -> Result<(), String> {
    let next = log.next_offset();
    if next < model.confirmed_durable {
        return Err(format!(
            "log ends at {next} but offsets below {} were confirmed durable",
            model.confirmed_durable
        ));
    }
    let limits = ReadLimits {
        records_max: usize::MAX,
        bytes_max: usize::MAX,
    };
    let records = log
        .read(0, limits, Watermark::Durable)
        .await
        .map_err(|e| e.to_string())?;
    let mut present = std::collections::BTreeSet::new();
    for record in &records {
        if record.offset >= next || !present.insert(record.offset) {
            return Err(format!(
                "offset {} read twice or beyond {next}",
                record.offset
            ));
        }
    }
    // Deleted segments leave gaps; every other offset below the end must be there.
    for offset in 0..next {
        if !present.contains(&offset) && !model.dead.contains(&offset) {
            return Err(format!("live offset {offset} missing below {next}"));
        }
    }
    for record in &records {
        match model.records.get(&record.offset) {
            Some(expected) if *expected == record.payload => {}
            Some(_) => return Err(format!("offset {} has other content", record.offset)),
            None => return Err(format!("offset {} was never appended", record.offset)),
        }
    }
    // Lost unconfirmed records leave the model; their offsets will be reused.
    model.records.retain(|&offset, _| offset < next);
    model.dead.retain(|&offset| offset < next);
    // Live counts are in memory only: re-mark the dead, as the broker does during its replay.
    for &offset in &model.dead {
        log.mark_dead(offset)
            .await
            .map_err(|error| format!("re-mark failed: {error}"))?;
    }
    model.confirmed_durable = model.confirmed_durable.min(next);
    Ok(())
}

/// The files of the simulated disk with their headers, for failure messages.
fn describe(storage: &SimStorage) -> String {
    let mut out = String::new();
    for path in ruuster_segment_store::io::sim::sim_paths(storage) {
        let bytes = storage.contents(&path).unwrap_or_default();
        let header = ruuster_segment_store::format::decode_segment_header(&bytes);
        out += &format!(
            "\n  {} len={} header={header:?}",
            path.display(),
            bytes.len()
        );
    }
    out
}

async fn run_model(seed: u64, negative_control: bool) -> Result<Model, String> {
    let mut rng = SimRng::new(seed);
    let storage = SimStorage::new(seed ^ 0x5EED);
    let dir = PathBuf::from("/sim/log");
    let options = options(&mut rng, negative_control);
    let mut model = Model::default();
    let mut steps = 0usize;
    while steps < STEPS_PER_RUN {
        let (log, _) = Log::open_with(storage.session(), &dir, options.clone())
            .await
            .map_err(|error| format!("reopen refused: {error}; files: {}", describe(&storage)))?;
        verify(&log, &mut model).await?;
        let mut waiting: Waiting<'_> = Vec::new();
        let mut armed_fault = false;
        let ending = loop {
            steps += 1;
            if steps >= STEPS_PER_RUN {
                break "crash";
            }
            match rng.below(100) {
                0..=54 => {
                    let count = 1 + rng.below(4);
                    let bodies: Vec<Vec<u8>> = (0..count)
                        .map(|_| payload(rng.next_u64(), rng.below(3000) as usize))
                        .collect();
                    let batch: Vec<Record<'_>> = bodies
                        .iter()
                        .map(|body| Record {
                            payload: body,
                            timestamp_ms: steps as u64,
                            flags: 0,
                        })
                        .collect();
                    let appended = match log.append(&batch).await {
                        Ok(appended) => appended,
                        Err(StoreError::Poisoned { .. }) => continue,
                        Err(error) => return Err(format!("append failed: {error}")),
                    };
                    for (offset, body) in appended.offsets.clone().zip(bodies) {
                        model.records.insert(offset, body);
                    }
                    let level = [
                        Level::Memory,
                        Level::Written,
                        Level::Fsynced,
                        Level::Fsynced,
                    ][rng.below(4) as usize];
                    let end = appended.offsets.end;
                    let log = &log;
                    let future = async move { log.wait(&appended, level).await };
                    waiting.push((Box::pin(future), end, level));
                }
                55..=79 => {
                    for _ in 0..1 + rng.below(TICKS_MAX_PER_STEP) {
                        for (end, level, result) in tick(&mut waiting).await {
                            settle(&mut model, end, level, result)?;
                        }
                    }
                }
                80..=85 => {
                    let from = rng.below(log.next_offset() + 1);
                    let limits = ReadLimits {
                        records_max: 1 + rng.below(20) as usize,
                        bytes_max: 8192,
                    };
                    let records = log
                        .read(from, limits, Watermark::Written)
                        .await
                        .map_err(|error| format!("read failed: {error}"))?;
                    for record in records {
                        if model.records.get(&record.offset) != Some(&record.payload) {
                            return Err(format!(
                                "live read of {} differs from the model",
                                record.offset
                            ));
                        }
                    }
                }
                86..=87 => {
                    // Kill every record of one sealed segment so that it gets deleted.
                    let sealed = log.sealed_segments();
                    if !sealed.is_empty() {
                        let (base, _) = sealed[rng.below(sealed.len() as u64) as usize];
                        let mut offset = base;
                        while log.live_count(base).is_some() && offset < log.written_offset() {
                            match log.mark_dead(offset).await {
                                Ok(deleted) => model.segments_deleted_count += u64::from(deleted),
                                Err(error) if error.is_poisoned() => break,
                                Err(error) => return Err(format!("mark_dead failed: {error}")),
                            }
                            model.dead.insert(offset);
                            offset += 1;
                        }
                    }
                }
                88..=89 if !armed_fault => {
                    armed_fault = true;
                    model.faults_count += 1;
                    let faults = if rng.chance(1, 2) {
                        SimFaults {
                            fail_sync_after: Some(rng.below(3)),
                            ..SimFaults::default()
                        }
                    } else {
                        SimFaults {
                            fail_write_after: Some(rng.below(5)),
                            ..SimFaults::default()
                        }
                    };
                    storage.set_faults(faults);
                }
                90..=93 => break "close",
                94..=99 => break "crash",
                _ => {}
            }
            if log.poisoned().is_some() {
                // After a fault nothing more may be confirmed durable: drain and check.
                let durable_before = model.confirmed_durable;
                for _ in 0..64 {
                    for (end, level, result) in tick(&mut waiting).await {
                        if let Ok(Level::Fsynced) = result
                            && end > durable_before
                        {
                            return Err(format!("offset {end} confirmed durable after poisoning"));
                        }
                        settle(&mut model, end, level, result)?;
                    }
                }
                let body = [1u8];
                let record = Record {
                    payload: &body,
                    timestamp_ms: 0,
                    flags: 0,
                };
                if !matches!(
                    log.append(&[record]).await,
                    Err(StoreError::Poisoned { .. })
                ) {
                    return Err("append after poisoning did not fail as poisoned".into());
                }
                break "crash";
            }
        };
        model.pad_skips_count += log.stats().pad_skips_count;
        if ending == "close" {
            for _ in 0..256 {
                if waiting.is_empty() {
                    break;
                }
                for (end, level, result) in tick(&mut waiting).await {
                    settle(&mut model, end, level, result)?;
                }
            }
            drop(waiting);
            if log.sync().await.is_ok() {
                model.confirmed_durable = model.confirmed_durable.max(log.next_offset());
            }
            drop(log);
        } else {
            drop(waiting);
            drop(log);
        }
        storage.set_faults(SimFaults::default());
        storage.crash();
        model.crashes_count += 1;
    }
    let (log, _) = Log::open_with(storage.session(), &dir, options)
        .await
        .map_err(|error| format!("final reopen refused: {error}"))?;
    verify(&log, &mut model).await?;
    Ok(model)
}

/// Catches: any confirmed-durable record lost or altered across crashes that drop any subset of
/// unsynced blocks, invented records, refused recoveries, confirmations after faults. Prints the
/// base seed; rerun one with `SEED=<n>`.
#[test]
fn confirmed_records_survive_random_crashes_and_nothing_is_invented() {
    let base = common::seed("model");
    run(async move {
        let mut confirmed = 0u64;
        let mut crashes = 0u64;
        let mut faults = 0u64;
        let mut deleted = 0u64;
        let mut pad_skips = 0u64;
        for run_index in 0..RUNS_COUNT {
            let seed = base.wrapping_add(run_index);
            match run_model(seed, false).await {
                Ok(model) => {
                    confirmed += model.confirmed_count;
                    crashes += model.crashes_count;
                    faults += model.faults_count;
                    deleted += model.segments_deleted_count;
                    pad_skips += model.pad_skips_count;
                }
                Err(failure) => panic!("model run failed with SEED={seed}: {failure}"),
            }
        }
        println!(
            "model: runs={RUNS_COUNT} crashes={crashes} faults={faults} confirmed={confirmed} \
             segments_deleted={deleted} pad_skips={pad_skips}"
        );
        assert!(deleted > 0, "no segment deletion exercised");
        assert!(pad_skips > 0, "no write skipped a pad");
        assert!(
            crashes >= RUNS_COUNT * 3,
            "too few crashes exercised: {crashes}"
        );
        assert!(
            confirmed > 100,
            "too few confirmations exercised: {confirmed}"
        );
    });
}

/// The negative control: with the switch that confirms before anything is durable, the same
/// checker must report a loss. Catches: a checker too weak to see lost confirmed records.
#[test]
fn the_model_checker_detects_early_confirmation() {
    let base = common::seed("model-negative");
    let detected = run(async move {
        for run_index in 0..RUNS_COUNT {
            let seed = base.wrapping_add(run_index);
            if let Err(failure) = run_model(seed, true).await {
                println!("negative control detected with SEED={seed}: {failure}");
                return true;
            }
        }
        false
    });
    assert!(
        detected,
        "the checker missed early confirmations in {RUNS_COUNT} runs"
    );
}
