//! The fuzz smoke run for CI: replays the committed cargo-fuzz corpus (`wire/fuzz/corpus`) and
//! then mutates it with a seeded generator for a bounded number of iterations, through the same
//! interpreters the fuzz targets use (`tests/harness`). A failure prints the seed and the input;
//! rerun with `RUUSTER_FUZZ_SEED=<seed>` to reproduce. `RUUSTER_FUZZ_ITERATIONS` raises the count.

mod harness;

use std::path::Path;

use bytes::BytesMut;
use ruuster_wire::limits::FRAME_SIZE_MAX;

/// Mutations per target per run: about a second of work in a debug build.
const ITERATIONS_DEFAULT: u64 = 100_000;

/// Mutated inputs stay small so that each iteration is cheap; the decoder's size checks are
/// covered by the unit tests and the cargo-fuzz target.
const INPUT_SIZE_MAX: usize = 4096;

/// SplitMix64: small, seedable and good enough to pick mutations.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

fn mutate(random: &mut Random, input: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: [u8; 6] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];
    for _ in 0..=random.below(4) {
        let position = random.below(input.len() + 1);
        match random.below(6) {
            0 if !input.is_empty() => {
                let index = position.min(input.len() - 1);
                input[index] ^= 1 << random.below(8);
            }
            1 if !input.is_empty() => {
                let index = position.min(input.len() - 1);
                input[index] = INTERESTING[random.below(INTERESTING.len())];
            }
            2 => input.insert(position, random.next() as u8),
            3 if position < input.len() => {
                let end = (position + random.below(8) + 1).min(input.len());
                input.drain(position..end);
            }
            4 if !other.is_empty() => {
                let start = random.below(other.len());
                let end = (start + random.below(64) + 1).min(other.len());
                input.splice(position..position, other[start..end].iter().copied());
            }
            _ => input.truncate(position),
        }
    }
    input.truncate(INPUT_SIZE_MAX);
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("corpus {} unreadable: {error}", directory.display()));
    let mut inputs: Vec<Vec<u8>> = entries
        .map(|entry| std::fs::read(entry.expect("corpus entry").path()).expect("read"))
        .collect();
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "corpus {} is empty",
        directory.display()
    );
    inputs
}

fn environment_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|value| value.parse().expect("a number"))
}

fn seed() -> u64 {
    environment_number("RUUSTER_FUZZ_SEED").unwrap_or_else(|| {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        time.map_or(1, |elapsed| elapsed.as_nanos() as u64)
    })
}

fn run<T>(target: &str, seeds: Vec<Vec<u8>>, interpret: fn(&[u8]) -> T) {
    for input in &seeds {
        let _ = interpret(input);
    }

    let seed = seed();
    let iterations = environment_number("RUUSTER_FUZZ_ITERATIONS").unwrap_or(ITERATIONS_DEFAULT);
    println!(
        "fuzz smoke {target}: seed {seed}, {iterations} iterations, {} seeds",
        seeds.len()
    );
    let mut random = Random(seed);
    for iteration in 0..iterations {
        let mut input = seeds[random.below(seeds.len())].clone();
        let other = &seeds[random.below(seeds.len())];
        mutate(&mut random, &mut input, other);
        let outcome = std::panic::catch_unwind(|| {
            let _ = interpret(&input);
        });
        if outcome.is_err() {
            panic!("{target}: seed {seed} iteration {iteration} failed on input {input:02x?}");
        }
    }
}

#[test]
fn the_decoder_survives_the_corpus_and_seeded_mutations() {
    let mut seeds = corpus("decode");
    for frame in harness::sample_frames() {
        let mut encoded = BytesMut::new();
        frame
            .encode(&mut encoded, FRAME_SIZE_MAX)
            .expect("sample encodes");
        // Selector 0xff: the large limit and whole 128-byte chunks.
        seeds.push([&[0xff][..], &encoded[..]].concat());
    }
    run("decode", seeds, harness::decode_input);
}

#[test]
fn the_state_machines_survive_the_corpus_and_seeded_mutations() {
    let mut seeds = corpus("connection");
    seeds.push(harness::sample_script());
    run("connection", seeds, harness::drive_connection);
}

#[test]
fn the_sample_script_opens_publishes_and_closes() {
    // Guards the seed's value: if the templates change so that it no longer opens a connection,
    // the mutation loop would explore only the handshake.
    use ruuster_wire::State;

    let summary = harness::drive_connection(&harness::sample_script());
    assert!(summary.opened, "{summary:?}");
    assert_eq!(summary.published, 3);
    assert_eq!(summary.frames, 10);
    assert_eq!(summary.final_states, Some((State::Closed, State::Closed)));
}
