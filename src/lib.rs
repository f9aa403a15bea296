//! tidecache: a push-filled video segment cache for ISP-embedded appliances.
//!
//! The library holds everything; `src/main.rs` only parses the command line and calls
//! [`cli::main`]. Each module is a room that owns one concern. Rooms stand in layers, top
//! first, and import only rooms below them (`tests/architecture.rs` checks it):
//!
//! - [`cli`]: the command line.
//! - [`demo`]: `tidecache demo`, a whole fill-then-serve cycle on loopback.
//! - [`daemon`]: wires the rooms together for `tidecache serve`; [`doctor`]: `tidecache
//!   doctor`, the host against the appliance spec.
//! - [`admin`]: the operator's listener (health, readiness, metrics, status, manifests, mode).
//! - [`http`]: the viewer transport: listeners, the sendfile fast path, TLS, worker threads.
//! - [`fill`]: manifests and the nightly fill engine; [`serve`]: what a viewer request gets.
//! - [`metrics`]: the Prometheus registry and the metric names of the contract; it reads
//!   the store, site and mode status types at scrape, and nothing below it imports it.
//! - [`site`]: a site of boxes: who owns an object, which peers are ready.
//! - [`store`]: content stores on disk, placement and the persisted index.
//! - [`config`]: the TOML configuration, parsed once into typed values.
//! - [`schedule`]: the mode (serving, draining, filling), fill windows, the scheduler.
//! - [`clock`]: the CLOCK-evicted map behind the RAM and open-file caches; [`durable`]:
//!   small files written crash-safely; [`object_path`]: object path rules; [`signal`]: the
//!   typed stop, cut and cancel signals tasks wind down on.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod durable;
pub mod fill;
pub mod http;
pub mod metrics;
pub mod object_path;
pub mod schedule;
pub mod serve;
pub mod signal;
pub mod site;
pub mod store;
