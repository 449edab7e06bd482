//! `ruuster-loadgen`: a latency and throughput benchmark for message brokers.
//!
//! The measurement core knows no broker. It paces publishes, stamps each payload with its send and
//! intended times, bounds unconfirmed messages, records every latency series in an HDR histogram,
//! prints progress and writes the report. A [`driver::Driver`] turns that into one broker's
//! protocol: [`driver::ruuster`] measures Ruuster through `ruuster-client`, and [`driver::amqp`]
//! measures RabbitMQ over AMQP 0-9-1.
//!
//! Module map:
//! - [`config`]: the resolved run parameters and the W1–W6 workload presets.
//! - [`driver`]: the broker abstraction, [`driver::ruuster`] and [`driver::amqp`], and
//!   [`driver::reorder`], which puts merged deliveries back in tag order.
//! - [`run`]: the orchestrator (connections, producers, consumers, progress, drain).
//! - [`window`]: the bound on unconfirmed messages and publish-to-confirm timing.
//! - [`pacer`]: the fixed-rate schedule and the thread that releases sends on time.
//! - [`payload`]: the timestamp stamp at the front of every payload.
//! - [`size`]: message size distributions.
//! - [`latency`]: HDR histogram series and their percentile text.
//! - [`system`]: CPU time from schedstat, CPU affinity and machine facts from `/proc`.
//! - [`report`]: `report.json`, the `.hgrm` files and the SVG percentile plot.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod driver;
pub mod latency;
pub mod metrics;
pub mod pacer;
pub mod payload;
pub mod plot;
pub mod report;
pub mod run;
pub mod size;
pub mod system;
pub mod window;
