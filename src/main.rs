//! The `tidecache` binary: everything lives in the library; see `tidecache::cli`.

fn main() -> std::process::ExitCode {
    tidecache::cli::main()
}
