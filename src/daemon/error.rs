//! Why the daemon could not start, or a reload was refused: one line for the operator, and
//! whether it is the configuration's fault (exit 2) or the host's (exit 1).

use crate::http::BindError;

/// Why the daemon could not start, or a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting names a file or value that cannot be used: the operator must change it
    /// (exit 2). `key` is the configuration key, as in `check-config`'s errors.
    #[error("{key}: {source}")]
    Config {
        /// The configuration key to change, e.g. `https.cert`.
        key: &'static str,
        /// What is wrong with its value.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A listening address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The state directory cannot be created.
    #[error("state_dir {path}: {source}")]
    StateDir {
        /// The configured directory.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The viewer worker threads could not be started (out of threads or memory).
    #[error("cannot start the viewer workers: {0}")]
    Workers(std::io::Error),
    /// The metrics registry refused a metric (a programming error, reported not panicked).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl StartError {
    /// A configuration error naming `key`.
    pub fn config(
        key: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StartError {
        StartError::Config {
            key,
            source: source.into(),
        }
    }

    /// Whether the operator must change the configuration (the CLI exits 2, not 1).
    pub fn is_config(&self) -> bool {
        matches!(self, StartError::Config { .. })
    }
}
