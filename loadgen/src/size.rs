//! Message size distributions and a seeded sampler.
//!
//! Sizes are whole payloads including the stamp, so the smallest allowed size is
//! [`STAMP_BYTES`]. Sampling is deterministic for a given seed so that two drivers given the same
//! seed send the same sequence of sizes.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::payload::STAMP_BYTES;

/// Largest payload the loadgen builds. RabbitMQ's default frame limit and Ruuster's message limit
/// are both well below this; a larger size is almost certainly a typo.
pub const MESSAGE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SizeDistribution {
    Fixed {
        size_bytes: usize,
    },
    /// Uniform over `min_bytes..=max_bytes`.
    Uniform {
        min_bytes: usize,
        max_bytes: usize,
    },
    /// Each listed size with equal probability.
    Choice {
        sizes_bytes: Vec<usize>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeParseError(String);

impl fmt::Display for SizeParseError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for SizeParseError {}

fn parse_bytes(text: &str) -> Result<usize, SizeParseError> {
    let size_bytes: usize = text
        .trim()
        .parse()
        .map_err(|_| SizeParseError(format!("'{text}' is not a byte count")))?;
    if !(STAMP_BYTES..=MESSAGE_SIZE_MAX_BYTES).contains(&size_bytes) {
        return Err(SizeParseError(format!(
            "size {size_bytes} is outside {STAMP_BYTES}..={MESSAGE_SIZE_MAX_BYTES} bytes"
        )));
    }
    Ok(size_bytes)
}

impl FromStr for SizeDistribution {
    type Err = SizeParseError;

    /// Accepts `1024`, `uniform:100-2000` or `choice:100,1024,4096` (bytes).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(range) = text.strip_prefix("uniform:") {
            let (min, max) = range
                .split_once('-')
                .ok_or_else(|| SizeParseError(format!("'{text}' needs uniform:MIN-MAX")))?;
            let (min_bytes, max_bytes) = (parse_bytes(min)?, parse_bytes(max)?);
            if min_bytes > max_bytes {
                return Err(SizeParseError(format!("'{text}': MIN is above MAX")));
            }
            return Ok(SizeDistribution::Uniform {
                min_bytes,
                max_bytes,
            });
        }
        if let Some(list) = text.strip_prefix("choice:") {
            let sizes_bytes = list
                .split(',')
                .map(parse_bytes)
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(SizeDistribution::Choice { sizes_bytes });
        }
        Ok(SizeDistribution::Fixed {
            size_bytes: parse_bytes(text)?,
        })
    }
}

impl fmt::Display for SizeDistribution {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeDistribution::Fixed { size_bytes } => write!(formatter, "{size_bytes}"),
            SizeDistribution::Uniform {
                min_bytes,
                max_bytes,
            } => {
                write!(formatter, "uniform:{min_bytes}-{max_bytes}")
            }
            SizeDistribution::Choice { sizes_bytes } => {
                let list: Vec<String> = sizes_bytes.iter().map(usize::to_string).collect();
                write!(formatter, "choice:{}", list.join(","))
            }
        }
    }
}

impl SizeDistribution {
    pub fn max_bytes(&self) -> usize {
        match self {
            SizeDistribution::Fixed { size_bytes } => *size_bytes,
            SizeDistribution::Uniform { max_bytes, .. } => *max_bytes,
            SizeDistribution::Choice { sizes_bytes } => {
                sizes_bytes.iter().copied().max().unwrap_or(0)
            }
        }
    }
}

/// SplitMix64: small, fast and good enough to pick sizes; not for anything secret.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in `0..bound` by rejection, so no value is favoured by the modulo.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let value = self.next_u64();
            if value < zone {
                return value % bound;
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct SizeSampler {
    distribution: SizeDistribution,
    random: SplitMix64,
}

impl SizeSampler {
    pub fn new(distribution: SizeDistribution, seed: u64) -> Self {
        SizeSampler {
            distribution,
            random: SplitMix64::new(seed),
        }
    }

    pub fn next_size_bytes(&mut self) -> usize {
        match &self.distribution {
            SizeDistribution::Fixed { size_bytes } => *size_bytes,
            SizeDistribution::Uniform {
                min_bytes,
                max_bytes,
            } => {
                let span = (*max_bytes - *min_bytes) as u64 + 1;
                *min_bytes + self.random.below(span) as usize
            }
            SizeDistribution::Choice { sizes_bytes } => {
                sizes_bytes[self.random.below(sizes_bytes.len() as u64) as usize]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_written_form_parses_and_prints_back() {
        for text in ["1024", "uniform:100-2000", "choice:100,1024,4096"] {
            let distribution: SizeDistribution = text.parse().unwrap();
            assert_eq!(distribution.to_string(), text);
        }
    }

    #[test]
    fn sizes_below_the_stamp_or_inverted_ranges_are_refused() {
        assert!("23".parse::<SizeDistribution>().is_err());
        assert!("uniform:500-100".parse::<SizeDistribution>().is_err());
        assert!("choice:100,x".parse::<SizeDistribution>().is_err());
        assert!("uniform:100".parse::<SizeDistribution>().is_err());
    }

    #[test]
    fn uniform_sizes_stay_in_range_and_reach_both_ends() {
        let mut sampler = SizeSampler::new("uniform:100-103".parse().unwrap(), 42);
        let mut seen = [false; 4];
        for _ in 0..1_000 {
            let size_bytes = sampler.next_size_bytes();
            assert!((100..=103).contains(&size_bytes));
            seen[size_bytes - 100] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn choice_sizes_come_only_from_the_list_in_roughly_equal_shares() {
        let mut sampler = SizeSampler::new("choice:100,1024".parse().unwrap(), 7);
        let draws = 10_000;
        let small = (0..draws)
            .filter(|_| sampler.next_size_bytes() == 100)
            .count();
        assert!(
            (4_500..5_500).contains(&small),
            "{small} of {draws} were 100 bytes"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_sizes() {
        let distribution: SizeDistribution = "uniform:24-65536".parse().unwrap();
        let mut first = SizeSampler::new(distribution.clone(), 9);
        let mut second = SizeSampler::new(distribution, 9);
        for _ in 0..100 {
            assert_eq!(first.next_size_bytes(), second.next_size_bytes());
        }
    }
}
