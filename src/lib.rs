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
//! - [`fast_http1`]: the sendfile fast path for plain GET/HEAD beside hyper.
//! - [`listener`]: the accept loop shared by every listener (limits, TLS, graceful shutdown).
//! - [`workers`]: the viewer event-loop threads, one runtime each.
//! - [`daemon`]: wires the pieces together for `tidecache serve`.
//! - [`doctor`]: `tidecache doctor`, the host against the appliance spec.
//! - [`demo`]: `tidecache demo`, a whole fill-then-serve cycle on loopback.
//! - [`fill`]: manifests and the nightly fill engine.
//! - [`durable`]: small files written crash-safely (state, index snapshots).
//! - [`cli`]: the command line.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod durable;
pub mod fast_http1;
pub mod fill;
pub mod listener;
pub mod metrics;
pub mod object_path;
pub mod schedule;
pub mod serve;
pub mod store;
pub mod workers;
