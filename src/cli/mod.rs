//! The command line: parses arguments, runs a command, and turns every error into one line on
//! stderr with the contract's exit codes (0 success, 1 runtime failure, 2 usage or config).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::key_file::{MIN_HMAC_KEY_LEN, MIN_SIGNING_KEY_LEN, read_key};

mod status;

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
    /// A first run with no set-up: fill a small real HLS title from an in-process origin
    /// through the real fill path, then serve it on loopback until Ctrl-C.
    Demo,
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Origin side: build a manifest from a directory, or push one to a box.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Scrub: re-hash every stored object against its recorded sha256, quarantine the damaged
    /// ones (not served; the next fill fetches them again) and list them. Exit 1 when any
    /// was found. Run it with the daemon stopped: it takes the stores' locks.
    Verify {
        /// Configuration file; default /etc/tidecache/tidecache.toml if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check this host against the appliance spec: cores, RAM, NVMe, NIC speed, each store's
    /// file system, open-file limit, clock, io_uring. One pass/warn/fail line each; exit 1
    /// when anything fails.
    Doctor {
        /// The spec; default: appliance-spec/spec.toml as built into the binary.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Configuration whose stores to check; default as for `serve`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Origin side: sign a viewer URL path for boxes with http.url_signing_key_file.
    SignUrl {
        /// The object path as the manifest names it, not percent-encoded, e.g.
        /// "title123/seg 1.ts"; the URL printed carries it encoded, as players send it.
        path: String,
        /// How long the URL stays valid, e.g. 6h, 30m.
        #[arg(long, default_value = "6h")]
        expires: String,
        /// The key file (the box's http.url_signing_key_file).
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Summarise a running box: mode, next switch, fill progress, last fill, stores. With
    /// the admin token, failed objects also say what their sources held.
    Status {
        /// The daemon's admin listener and, optionally, its token.
        #[command(flatten)]
        admin: AdminArgs,
        /// Print `/v1/status` as JSON, for scripts.
        #[arg(long)]
        json: bool,
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
    /// For packagers: write the man pages (tidecache.1, one per command) or the bash, zsh and
    /// fish completions, generated from these very definitions, into DIR.
    Generate {
        /// `man` or `completions`.
        #[arg(value_enum)]
        what: GenerateArg,
        /// The directory to write into (created when missing).
        dir: PathBuf,
    },
}

/// What `tidecache generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenerateArg {
    /// Man pages, section 1.
    Man,
    /// Shell completions: `tidecache.bash`, `_tidecache` (zsh), `tidecache.fish`.
    Completions,
}

/// `tidecache manifest ...`.
#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Hash every file under DIR (on all cores) and write the manifest that makes a box hold
    /// exactly that tree, each object fetched from BASE_URL + its path.
    Build {
        /// The content tree.
        dir: PathBuf,
        /// Where boxes fetch the files from: `https://origin.example/content/` or
        /// `file:///srv/seed/`.
        #[arg(long)]
        base_url: String,
        /// Output file; standard output when absent.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// `json` (one document) or `ndjson` (a header line, then one object per line: for
        /// millions of objects).
        #[arg(long, value_enum, default_value_t = LayoutArg::Json)]
        format: LayoutArg,
        /// Write an NDJSON delta against this earlier manifest (any format, gzip or not):
        /// only objects new or changed, and removals. A box applies it only while that
        /// manifest is in force (else 409).
        #[arg(long, value_name = "MANIFEST")]
        base: Option<PathBuf>,
        /// With --base: also write the whole manifest (same id, --format) here, to be
        /// tomorrow's --base, so nightly deltas chain.
        #[arg(long, value_name = "FILE", requires = "base")]
        full: Option<PathBuf>,
        /// The manifest's id; default: the build's time (UTC, to the second).
        #[arg(long)]
        id: Option<String>,
        /// A popularity report (`GET /v1/popularity` of a box, saved), repeatable: each
        /// object's priority becomes the requests the reports counted for it (hits and
        /// misses), so boxes fetch what viewers watch most first.
        #[arg(long, value_name = "REPORT")]
        popularity: Vec<PathBuf>,
    },
    /// Send a manifest to a box (`PUT /v1/manifest`), gzip-compressed.
    Push {
        /// The manifest file.
        file: PathBuf,
        /// The box's admin listener.
        #[command(flatten)]
        admin: AdminArgs,
        /// Sign the manifest with this key (the box's admin.hmac_key_file).
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
        /// Send the file as it is instead of gzip-compressing it.
        #[arg(long)]
        no_gzip: bool,
    },
}

/// The forms `manifest build` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// One JSON document.
    Json,
    /// A header line, then one object per line.
    Ndjson,
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
    /// The admin client these arguments describe, or the exit code after a one-line error.
    fn client(&self) -> Result<crate::admin::client::AdminClient, ExitCode> {
        let token = self.token().map_err(|message| fail(EXIT_USAGE, &message))?;
        crate::admin::client::AdminClient::new(&self.admin, token)
            .map_err(|err| fail(EXIT_USAGE, &err.to_string()))
    }

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
    let default_level = match cli.command {
        Command::Demo => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(err) => fail(EXIT_USAGE, &format!("{}: {err}", file.display())),
        },
        Command::Demo => run_demo(),
        Command::Generate { what, dir } => generate(what, &dir),
        Command::SignUrl {
            path,
            expires,
            key_file,
        } => sign_url(&path, &expires, &key_file),
        Command::Doctor { spec, config } => doctor(spec.as_deref(), config.as_deref()),
        Command::Verify { config } => verify(config.as_deref()),
        Command::Mode { mode, admin } => set_mode(mode, &admin),
        Command::Status { admin, json } => show_status(&admin, json),
        Command::Manifest(ManifestCommand::Build {
            dir,
            base_url,
            output,
            format,
            base,
            full,
            id,
            popularity,
        }) => build_manifest(
            &dir,
            &base_url,
            output.as_deref(),
            format,
            (base.as_deref(), full.as_deref()),
            id,
            &popularity,
        ),
        Command::Manifest(ManifestCommand::Push {
            file,
            admin,
            hmac_key_file,
            no_gzip,
        }) => push_manifest(&file, &admin, hmac_key_file.as_deref(), !no_gzip),
        Command::Serve { config } => {
            let config_path = config.clone();
            let config = match load_config(config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let runtime = match multi_thread_runtime() {
                Ok(runtime) => runtime,
                Err(code) => return code,
            };
            let result = runtime.block_on(crate::daemon::run(&config, config_path.as_deref()));
            // The daemon has drained and saved what it had to; a blocking thread stuck in
            // the kernel (a hung network seed disk) must not keep the stopped process alive.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) if err.is_config() => fail(EXIT_USAGE, &err.to_string()),
                Err(err) => fail(EXIT_FAILURE, &err.to_string()),
            }
        }
    }
}

/// The largest popularity report `manifest build --popularity` reads (4096 hits and misses
/// of 1 KiB paths are under 10 MiB).
const MAX_POPULARITY_REPORT: u64 = 256 << 20;

/// `tidecache manifest build`.
fn build_manifest(
    dir: &std::path::Path,
    base_url: &str,
    output: Option<&std::path::Path>,
    format: LayoutArg,
    (base, full): (Option<&std::path::Path>, Option<&std::path::Path>),
    id: Option<String>,
    popularity: &[PathBuf],
) -> ExitCode {
    use crate::fill::build::Layout;
    if !(base_url.starts_with("http://")
        || base_url.starts_with("https://")
        || base_url.starts_with("file://"))
    {
        return fail(
            EXIT_USAGE,
            &format!("--base-url {base_url:?}: must be an http, https or file URL"),
        );
    }
    let earlier = match base {
        Some(path) => match std::fs::File::open(path)
            .map_err(|err| err.to_string())
            .and_then(|file| {
                crate::fill::manifest::read(file, None, u64::MAX).map_err(|err| err.to_string())
            }) {
            Ok(manifest) => Some(manifest),
            Err(err) => return fail(EXIT_USAGE, &format!("--base {}: {err}", path.display())),
        },
        None => None,
    };
    let mut reports = Vec::new();
    for path in popularity {
        // A regular file of a sane size: a FIFO would block the build, a device never end.
        let read = std::fs::metadata(path).and_then(|meta| {
            if !meta.is_file() {
                Err(std::io::Error::other("not a regular file"))
            } else if meta.len() > MAX_POPULARITY_REPORT {
                Err(std::io::Error::other(format!(
                    "larger than {} MiB",
                    MAX_POPULARITY_REPORT >> 20
                )))
            } else {
                std::fs::read(path)
            }
        });
        match read {
            Ok(report) => reports.push(report),
            Err(err) => {
                return fail(
                    EXIT_USAGE,
                    &format!("--popularity {}: {err}", path.display()),
                );
            }
        }
    }
    let requests = {
        let reports: Vec<&[u8]> = reports.iter().map(Vec::as_slice).collect();
        match crate::fill::build::read_popularity(&reports) {
            Ok(requests) => requests,
            Err(err) => return fail(EXIT_USAGE, &format!("--popularity: {err}")),
        }
    };
    let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut built = match crate::fill::build::build(dir, base_url, show_progress) {
        Ok(built) => built,
        Err(err) => return fail(EXIT_FAILURE, &err.to_string()),
    };
    if let Some(id) = id {
        built.set_id(id);
    }
    if !popularity.is_empty() {
        let absent = built.set_priorities(&requests);
        eprintln!(
            "tidecache: priorities from {} popularity report(s): {} paths counted, {absent} of them not under {}",
            popularity.len(),
            requests.len(),
            dir.display()
        );
    }
    if earlier
        .as_ref()
        .is_some_and(|earlier| earlier.id == built.id())
    {
        return fail(
            EXIT_USAGE,
            &format!(
                "the delta's id {:?} is its base's: give it another with --id",
                built.id()
            ),
        );
    }
    let layout = match format {
        LayoutArg::Json => Layout::Json,
        LayoutArg::Ndjson => Layout::Ndjson,
    };
    let write = |out: &mut dyn std::io::Write| -> std::io::Result<()> {
        let mut out = out;
        match &earlier {
            Some(earlier) => {
                let (changed, removed) = built.write_delta(earlier, &mut out)?;
                eprintln!(
                    "tidecache: delta against {}: {changed} new or changed, {removed} removed",
                    earlier.id
                );
                Ok(())
            }
            None => built.write(layout, &mut out),
        }
    };
    if let Some(full) = full {
        let written = crate::durable::write_atomically_with(full, |file| built.write(layout, file));
        match written {
            Ok(()) => eprintln!("tidecache: wrote {} (the whole manifest)", full.display()),
            Err(err) => return fail(EXIT_FAILURE, &format!("{}: {err}", full.display())),
        }
    }
    let written = match output {
        Some(path) => crate::durable::write_atomically_with(path, |file| write(file))
            .map(|()| eprintln!("tidecache: wrote {}", path.display())),
        None => {
            let stdout = std::io::stdout();
            let mut locked = std::io::BufWriter::new(stdout.lock());
            write(&mut locked).and_then(|()| std::io::Write::flush(&mut locked))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(
            EXIT_FAILURE,
            &format!(
                "{}: {err}",
                output.map_or("standard output".into(), |path| path.display().to_string())
            ),
        ),
    }
}

/// `tidecache manifest push`: the file gzip-compressed (unless it already is, or
/// `--no-gzip`), signed as sent.
fn push_manifest(
    file: &std::path::Path,
    admin: &AdminArgs,
    hmac_key_file: Option<&std::path::Path>,
    gzip: bool,
) -> ExitCode {
    let raw = match std::fs::read(file) {
        Ok(raw) => raw,
        Err(err) => return fail(EXIT_USAGE, &format!("{}: {err}", file.display())),
    };
    let already_gzip = raw.starts_with(&[0x1f, 0x8b]);
    let body = if gzip && !already_gzip {
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(raw.len() / 4),
            flate2::Compression::fast(),
        );
        match std::io::Write::write_all(&mut encoder, &raw).and_then(|()| encoder.finish()) {
            Ok(compressed) => compressed,
            Err(err) => return fail(EXIT_FAILURE, &format!("gzip: {err}")),
        }
    } else {
        raw
    };
    let mut headers = Vec::new();
    if gzip || already_gzip {
        headers.push(("content-encoding", "gzip".to_owned()));
    }
    if let Some(key_file) = hmac_key_file {
        match read_key(key_file, MIN_HMAC_KEY_LEN) {
            Ok(key) => headers.push(("x-tidecache-signature", crate::fill::sign(&key, &body))),
            Err(err) => {
                return fail(EXIT_USAGE, &format!("--hmac-key-file {err}"));
            }
        }
    }
    let client = match admin.client() {
        Ok(client) => client,
        Err(code) => return code,
    };
    match run_call(client.put_json("/v1/manifest", body.into(), &headers)) {
        Ok(answer) => {
            let summary: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            println!(
                "accepted manifest {} ({} objects, {} bytes)",
                summary["id"].as_str().unwrap_or("?"),
                summary["objects"],
                summary["bytes"]
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Runs one admin call on a small runtime, turning errors into the exit code after one
/// line on stderr.
fn run_call<T>(
    call: impl std::future::Future<Output = Result<T, crate::admin::client::ClientError>>,
) -> Result<T, ExitCode> {
    use crate::admin::client::ClientError;
    let runtime = runtime(tokio::runtime::Builder::new_current_thread())?;
    runtime.block_on(call).map_err(|err| match err {
        ClientError::BadUrl { .. } => fail(EXIT_USAGE, &err.to_string()),
        err => fail(EXIT_FAILURE, &err.to_string()),
    })
}

/// Loads `--config FILE`, or the default configuration, or exits 2 with one line.
fn load_config(file: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    match file {
        Some(file) => Config::load(file).map_err(|err| format!("{}: {err}", file.display())),
        None => Config::load_default()
            .map_err(|err| format!("{}: {err}", crate::config::DEFAULT_CONFIG_PATH)),
    }
    .map_err(|message| fail(EXIT_USAGE, &message))
}

/// `tidecache sign-url`.
fn sign_url(path: &str, expires: &str, key_file: &std::path::Path) -> ExitCode {
    let lifetime = match crate::config::parse_duration(expires) {
        Ok(lifetime) => lifetime.0,
        Err(err) => return fail(EXIT_USAGE, &format!("--expires: {err}")),
    };
    let key = match read_key(key_file, MIN_SIGNING_KEY_LEN) {
        Ok(key) => key,
        Err(err) => return fail(EXIT_USAGE, &format!("--key-file {err}")),
    };
    // The object path as the manifest names it; the URL carries it percent-encoded, and
    // that encoded form is what a player sends and what is signed.
    let object = path.trim_start_matches('/');
    if let Err(err) = crate::object_path::validate(object) {
        return fail(EXIT_USAGE, &format!("{path:?}: {err}"));
    }
    let url_path = format!("/{}", crate::object_path::to_url_path(object));
    let expires_at = jiff::Timestamp::now().as_second()
        + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    println!(
        "{url_path}?{}",
        crate::serve::signed::sign(&key, &url_path, expires_at)
    );
    ExitCode::SUCCESS
}

/// `tidecache doctor`.
fn doctor(spec: Option<&std::path::Path>, config: Option<&std::path::Path>) -> ExitCode {
    use crate::doctor::{Facts, Spec, Verdict, evaluate};
    let spec_text = match spec {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => return fail(EXIT_USAGE, &format!("{}: {err}", path.display())),
        },
        None => crate::doctor::BUILT_IN_SPEC.to_owned(),
    };
    let spec = match Spec::parse(&spec_text) {
        Ok(spec) => spec,
        Err(err) => return fail(EXIT_USAGE, &format!("spec: {err}")),
    };
    let config = match load_config(config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let stores: Vec<PathBuf> = config
        .stores
        .iter()
        .map(|store| store.path.clone())
        .collect();
    let checks = evaluate(&Facts::gather(&stores), &spec);
    for check in &checks {
        println!(
            "{}  {:<11} {}",
            check.verdict.as_str(),
            check.name,
            check.detail
        );
    }
    if checks.iter().any(|check| check.verdict == Verdict::Fail) {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

/// `tidecache verify`.
fn verify(config: Option<&std::path::Path>) -> ExitCode {
    let config = match load_config(config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let stores = crate::store::Stores::load(&config.stores);
    for store in stores.status() {
        if let Some(error) = &store.error {
            return fail(
                EXIT_FAILURE,
                &format!(
                    "store {}: {error}; stop the daemon (systemctl stop tidecache) and verify again",
                    store.path.display()
                ),
            );
        }
    }
    let total: u64 = stores.status().iter().map(|store| store.bytes_used).sum();
    let bar = crate::fill::build::byte_progress_bar(
        total,
        "verifying",
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let started = std::time::Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let report = crate::store::scrub::scrub(&stores, threads, &|bytes| bar.inc(bytes));
    bar.finish_and_clear();
    let mut quarantine_failed = false;
    for damage in &report.damaged {
        println!(
            "damaged: {} (store {}): {}",
            damage.path,
            damage.store.display(),
            damage.problem
        );
        if let Err(err) = crate::store::scrub::quarantine(&stores, &damage.path) {
            quarantine_failed = true;
            eprintln!("tidecache: error: cannot quarantine {}: {err}", damage.path);
        }
    }
    println!(
        "verified {} objects ({} bytes) in {:.1}s: {} damaged{}",
        report.objects,
        report.bytes,
        started.elapsed().as_secs_f64(),
        report.damaged.len(),
        if report.damaged.is_empty() {
            String::new()
        } else {
            " and quarantined (the next fill fetches them again)".to_owned()
        }
    );
    if report.damaged.is_empty() && !quarantine_failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// `tidecache demo`.
fn run_demo() -> ExitCode {
    let runtime = match multi_thread_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(crate::demo::run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, &err.to_string()),
    }
}

/// `tidecache status`.
fn show_status(admin_args: &AdminArgs, json: bool) -> ExitCode {
    let admin = &admin_args.admin;
    let client = match admin_args.client() {
        Ok(client) => client,
        Err(code) => return code,
    };
    let answer = match run_call(client.get("/v1/status")) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    if json {
        println!("{}", String::from_utf8_lossy(&answer).trim_end());
        return ExitCode::SUCCESS;
    }
    match serde_json::from_slice(&answer) {
        Ok(status) => {
            print!("{}", status::render(&status, jiff::Timestamp::now()));
            ExitCode::SUCCESS
        }
        Err(err) => fail(
            EXIT_FAILURE,
            &format!("{admin}/v1/status: not status JSON: {err}"),
        ),
    }
}

/// `tidecache mode`: posts the override and prints the mode that results.
fn set_mode(mode: ModeArg, admin: &AdminArgs) -> ExitCode {
    let client = match admin.client() {
        Ok(client) => client,
        Err(code) => return code,
    };
    let body = serde_json::json!({ "mode": mode.as_str() }).to_string();
    match run_call(client.post_json("/v1/mode", body.into())) {
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
        Err(code) => code,
    }
}

/// How much less CPU priority (nice) the daemon's background runtime has than its viewer
/// workers: the fill (downloads, hashing, writes), the admin API and the scheduler yield the
/// CPU to viewers when both want it, as a fill that runs while serving must. The fill's
/// writes and hashing go further, on threads under `SCHED_IDLE` (`fill::idle`).
pub const BACKGROUND_NICE: i32 = 10;

/// The runtime of the long-running commands, or the exit code after a one-line error. Its
/// threads (async workers and blocking pool) run [`BACKGROUND_NICE`] below the process's
/// priority; the viewer workers have runtimes of their own at the process's priority.
fn multi_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    // Taken once, here on the main thread: a thread inherits the nice of the thread that
    // creates it, and tokio creates blocking threads from its (already lowered) workers, so
    // lowering each thread from its own value would compound.
    let background =
        (rustix::process::getpriority_process(None).unwrap_or(0) + BACKGROUND_NICE).min(19);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.on_thread_start(move || {
        // On Linux the priority of PRIO_PROCESS 0 is the calling thread's. Where it cannot
        // be set, everything runs at one priority, as before.
        let _ = rustix::process::setpriority_process(None, background);
    });
    runtime(builder)
}

/// Builds a runtime with I/O and time, or the exit code after a one-line error.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|err| {
        fail(
            EXIT_FAILURE,
            &format!("cannot start the async runtime: {err}"),
        )
    })
}

/// Prints one readable error line and returns the exit code.
/// Writes the man pages or completions into `dir`.
fn generate(what: GenerateArg, dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let written = std::fs::create_dir_all(dir).and_then(|()| match what {
        GenerateArg::Man => clap_mangen::generate_to(Cli::command(), dir),
        GenerateArg::Completions => [Shell::Bash, Shell::Zsh, Shell::Fish]
            .into_iter()
            .try_for_each(|shell| {
                clap_complete::generate_to(shell, &mut Cli::command(), "tidecache", dir).map(drop)
            }),
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(EXIT_FAILURE, &format!("{}: {err}", dir.display())),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("tidecache: error: {message}");
    ExitCode::from(code)
}

/// Sets up tracing to stderr; `RUST_LOG` overrides the default level (`info`; `warn` for the
/// demo, whose own lines tell the story).
fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal: a file or journald would keep them as
    // escape sequences in every line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(err) = result {
        eprintln!("tidecache: warning: logging not initialised: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> i32 {
        rustix::process::getpriority_process(None).unwrap_or(-100)
    }

    #[test]
    fn every_background_thread_is_lowered_once_whoever_starts_it() {
        let expected = (nice() + BACKGROUND_NICE).min(19);
        let runtime = multi_thread_runtime().unwrap_or_else(|_| panic!("runtime"));
        let seen = runtime.block_on(async {
            let mut seen = vec![tokio::spawn(async { nice() }).await.unwrap()];
            // Blocking threads are created by whichever thread asks: here the (lowered)
            // async workers, several at once so the pool grows.
            let asked = tokio::spawn(async {
                let blocking: Vec<_> = (0..4)
                    .map(|_| {
                        tokio::task::spawn_blocking(|| {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            nice()
                        })
                    })
                    .collect();
                let mut nices = Vec::new();
                for handle in blocking {
                    nices.push(handle.await.unwrap());
                }
                nices
            });
            seen.extend(asked.await.unwrap());
            seen
        });
        assert!(
            seen.iter().all(|&seen| seen == expected),
            "{seen:?}, expected {expected}"
        );
    }
}
