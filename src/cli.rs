//! The command line: parses arguments, runs a command, and turns every error into one line on
//! stderr with the contract's exit codes (0 success, 1 runtime failure, 2 usage or config).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// tidecache: a push-filled video segment cache for ISP-embedded appliances.
#[derive(Debug, Parser)]
#[command(name = "tidecache", version, about)]
pub struct Cli {
    /// Log line format: `text` for terminals, `json` for journald and log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        /// Configuration file; default /etc/tidecache/tidecache.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

/// Exit code for usage and configuration errors.
const EXIT_USAGE: u8 = 2;
/// Exit code for runtime failures.
const EXIT_FAILURE: u8 = 1;

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(err) => fail(EXIT_USAGE, &format!("{}: {err}", file.display())),
        },
        Command::Serve { config } => {
            let loaded = match &config {
                Some(file) => {
                    Config::load(file).map_err(|err| format!("{}: {err}", file.display()))
                }
                None => Config::load_default()
                    .map_err(|err| format!("{}: {err}", crate::config::DEFAULT_CONFIG_PATH)),
            };
            let config = match loaded {
                Ok(config) => config,
                Err(message) => return fail(EXIT_USAGE, &message),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    return fail(
                        EXIT_FAILURE,
                        &format!("cannot start the async runtime: {err}"),
                    );
                }
            };
            match runtime.block_on(crate::daemon::run(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err @ crate::daemon::StartError::Unsupported(_)) => {
                    fail(EXIT_USAGE, &err.to_string())
                }
                Err(err) => fail(EXIT_FAILURE, &err.to_string()),
            }
        }
    }
}

/// Prints one readable error line and returns the exit code.
fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("tidecache: error: {message}");
    ExitCode::from(code)
}

/// Sets up tracing to stderr; `RUST_LOG` overrides the default `info` level.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(err) = result {
        eprintln!("tidecache: warning: logging not initialised: {err}");
    }
}
