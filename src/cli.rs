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
    /// Override the fill windows: fill now, serve now, or follow the windows again (auto).
    Mode {
        /// `fill`, `serve` or `auto`.
        #[arg(value_enum)]
        mode: ModeArg,
        /// The daemon's admin listener.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach and authenticate to a daemon's admin listener.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Admin listener URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub admin: String,
    /// Bearer token (prefer --token-file or TIDECACHE_TOKEN: arguments show in `ps`).
    #[arg(
        long,
        env = "TIDECACHE_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bearer token, e.g. the daemon's admin.token_file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// The token from `--token`, `TIDECACHE_TOKEN` or `--token-file`.
    fn token(&self) -> Result<Option<String>, String> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_owned()));
        }
        match &self.token_file {
            Some(file) => std::fs::read_to_string(file)
                .map(|text| Some(text.trim().to_owned()))
                .map_err(|err| format!("--token-file {}: {err}", file.display())),
            None => Ok(None),
        }
    }
}

/// The override values `tidecache mode` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Fill now, until told otherwise.
    Fill,
    /// Serve now, until told otherwise.
    Serve,
    /// Follow the fill windows.
    Auto,
}

impl ModeArg {
    fn as_str(self) -> &'static str {
        match self {
            ModeArg::Fill => "fill",
            ModeArg::Serve => "serve",
            ModeArg::Auto => "auto",
        }
    }
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
        Command::Mode { mode, admin } => set_mode(mode, &admin),
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
                Err(err @ crate::daemon::StartError::Config(_)) => {
                    fail(EXIT_USAGE, &err.to_string())
                }
                Err(err) => fail(EXIT_FAILURE, &err.to_string()),
            }
        }
    }
}

/// `tidecache mode`: posts the override and prints the mode that results.
fn set_mode(mode: ModeArg, admin: &AdminArgs) -> ExitCode {
    use crate::admin::client::{AdminClient, ClientError};
    let token = match admin.token() {
        Ok(token) => token,
        Err(message) => return fail(EXIT_USAGE, &message),
    };
    let client = match AdminClient::new(&admin.admin, token) {
        Ok(client) => client,
        Err(err) => return fail(EXIT_USAGE, &err.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
    let body = serde_json::json!({ "mode": mode.as_str() }).to_string();
    match runtime.block_on(client.post_json("/v1/mode", body.into())) {
        Ok(answer) => {
            let status: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            let field = |name: &str| status[name].as_str().unwrap_or("none").to_owned();
            println!(
                "mode: {} (override: {}, next switch: {})",
                field("mode"),
                field("override"),
                field("next_switch")
            );
            ExitCode::SUCCESS
        }
        Err(err @ ClientError::BadUrl { .. }) => fail(EXIT_USAGE, &err.to_string()),
        Err(err) => fail(EXIT_FAILURE, &err.to_string()),
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
