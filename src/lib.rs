//! tidecache: a push-filled video segment cache for ISP-embedded appliances.
//!
//! The library holds everything; `src/main.rs` only parses the command line and calls
//! [`cli::main`]. Each module owns one concern:
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`store`]: content stores on disk, placement and the persisted index.
//! - [`serve`]: the viewer data plane (HTTP/1.1, HTTP/2, HTTPS).
//! - [`admin`]: the operator's listener (health, readiness, metrics, status).
//! - [`metrics`]: the Prometheus registry and the metric names of the contract.
//! - [`schedule`]: the mode (serving, draining, filling) and fill windows.
//! - [`clock`]: the CLOCK-evicted map behind the RAM and open-file caches.
//! - [`http`]: the viewer transport: listeners, the sendfile fast path, TLS, worker threads.
//! - [`daemon`]: wires the pieces together for `tidecache serve`.
//! - [`doctor`]: `tidecache doctor`, the host against the appliance spec.
//! - [`demo`]: `tidecache demo`, a whole fill-then-serve cycle on loopback.
//! - [`fill`]: manifests and the nightly fill engine.
//! - [`durable`]: small files written crash-safely (state, index snapshots).
//! - [`signal`]: the typed stop, cut and cancel signals tasks wind down on.
//! - [`cli`]: the command line.

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
pub mod store;
