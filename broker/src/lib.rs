//! The Ruuster broker library: the shard-side modules that the `ruuster` binary assembles.

pub mod routing;
