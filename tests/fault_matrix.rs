//! The store's durable paths under a fault at every single system call.
//!
//! For each scenario (first fill, refill with new bytes, delete, compaction, resume, resume
//! of a whole partial), `examples/store_op` runs the store operations single-threaded under
//! `strace -e inject=SYSCALL:...:when=N`, for every call N of every write, fsync, fdatasync,
//! rename, unlink, ftruncate, mkdir and fcntl (a direct write's tail) the clean run makes, once failing it with EIO and once
//! killing the process there with SIGKILL. After each run the store is opened again and
//! must be usable; every object it indexes must hash to the sha256 its ETag is made from
//! (or the object is a miss); and running the operations again without faults must complete
//! and leave exactly the scenario's final state. A small state file replaced through
//! `durable::write_atomically` goes through the same faults and must hold its old content or
//! its new one, whole. The matrix is printed.
//!
//! Needs `strace` (`.ci/run` installs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{PoisonError, RwLock};

use sha2::{Digest, Sha256};
use tidecache::config::{ByteSize, StoreConfig};
use tidecache::store::{StoreState, Stores};

/// The system calls of the durable paths (what the write path, the journal and compaction
/// make), each faulted at every occurrence.
const SYSCALLS: [&str; 8] = [
    "write",
    "fsync",
    "fdatasync",
    "rename",
    "unlink",
    "ftruncate",
    "mkdir",
    "fcntl",
];

/// One scenario: operations that set the store up (run without faults), the operations
/// faulted, and what the store must hold after they complete.
struct Scenario {
    name: &'static str,
    setup: &'static [&'static str],
    ops: &'static [&'static str],
    /// Path -> content file name (`None`: must be absent).
    expected: &'static [(&'static str, Option<&'static str>)],
    /// State files in the store's directory: (name, content before the operations, content
    /// after them). After a fault each holds one or the other, whole.
    state_files: &'static [(&'static str, &'static str, &'static str)],
    /// Also fault two calls in one run: EIO at each fdatasync (a journal append), then
    /// SIGKILL at each later fsync or rename (what a failed append must not poison), or EIO
    /// at the ftruncate that cuts the failed append back.
    pairs: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "first fill",
        setup: &[],
        ops: &["put:t/x.ts:v1", "put:t/y.ts:w"],
        expected: &[("t/x.ts", Some("v1")), ("t/y.ts", Some("w"))],
        state_files: &[],
        pairs: false,
    },
    Scenario {
        name: "refill, new bytes",
        setup: &["put:t/x.ts:v1"],
        ops: &["put:t/x.ts:v2"],
        expected: &[("t/x.ts", Some("v2"))],
        state_files: &[],
        pairs: false,
    },
    Scenario {
        name: "delete",
        setup: &["put:t/x.ts:v1", "put:t/y.ts:w"],
        ops: &["remove:t/x.ts"],
        expected: &[("t/x.ts", None), ("t/y.ts", Some("w"))],
        state_files: &[],
        pairs: false,
    },
    Scenario {
        name: "batch delete",
        setup: &["put:t/x.ts:v1", "put:t/y.ts:w", "put:t/z.ts:v2"],
        ops: &["remove_many:t/x.ts,t/z.ts"],
        expected: &[("t/x.ts", None), ("t/y.ts", Some("w")), ("t/z.ts", None)],
        state_files: &[],
        pairs: false,
    },
    Scenario {
        name: "compaction",
        setup: &[
            "put:t/x.ts:v1",
            "put:t/y.ts:w",
            "remove:t/y.ts",
            "put:t/z.ts:w",
        ],
        ops: &["compact", "put:t/q.ts:v2"],
        expected: &[
            ("t/x.ts", Some("v1")),
            ("t/y.ts", None),
            ("t/z.ts", Some("w")),
            ("t/q.ts", Some("v2")),
        ],
        state_files: &[],
        pairs: false,
    },
    Scenario {
        name: "resume",
        setup: &["checkpoint:t/x.ts:v2:100000"],
        ops: &["put:t/x.ts:v2"],
        expected: &[("t/x.ts", Some("v2"))],
        state_files: &[],
        pairs: false,
    },
    Scenario {
        name: "resume, whole partial",
        setup: &["put:t/x.ts:v1", "checkpoint:t/x.ts:v2:300000"],
        ops: &["put:t/x.ts:v2"],
        expected: &[("t/x.ts", Some("v2"))],
        state_files: &[],
        pairs: false,
    },
    Scenario {
        name: "two refills, two faults",
        setup: &["put:t/x.ts:v1"],
        ops: &["put:t/x.ts:v2", "put:t/x.ts:v3"],
        expected: &[("t/x.ts", Some("v3"))],
        state_files: &[],
        pairs: true,
    },
    Scenario {
        name: "state file replaced",
        setup: &["state:site-settled:v1"],
        ops: &["state:site-settled:v2"],
        expected: &[],
        state_files: &[("site-settled", "v1", "v2")],
        pairs: false,
    },
];

/// How one faulted run left the store, for the printed matrix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Every expected object already in its final state.
    New,
    /// Some expected change not made yet (the object is still old, or a miss): the next
    /// fill makes it.
    Pending,
    /// A broken promise: the store did not open, served bytes that are not its ETag's, or
    /// the next run did not complete.
    Violation(String),
}

#[test]
fn every_fault_on_a_durable_path_leaves_a_usable_store_with_matching_bytes() {
    let strace = Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|output| output.status.success()),
        "strace is needed (apt-get install strace; .ci/run installs it)"
    );
    let work = tempfile::tempdir().unwrap();
    let contents = write_contents(work.path());
    // Scenarios run side by side (each faulted run is one single-threaded process).
    let results: Vec<Vec<(String, Outcome)>> = std::thread::scope(|scope| {
        let running: Vec<_> = SCENARIOS
            .iter()
            .enumerate()
            .map(|(number, scenario)| {
                let dir = work.path().join(format!("scenario-{number}"));
                let contents = &contents;
                scope.spawn(move || run_scenario(scenario, contents, &dir))
            })
            .collect();
        running
            .into_iter()
            .map(|thread| thread.join().expect("a scenario thread panicked"))
            .collect()
    });
    let mut matrix: BTreeMap<(&str, String), Outcome> = BTreeMap::new();
    let mut runs = 0;
    for (scenario, outcomes) in SCENARIOS.iter().zip(results) {
        for (fault, outcome) in outcomes {
            matrix.insert((scenario.name, fault), outcome);
            runs += 1;
        }
    }
    print_matrix(&matrix, runs);
    assert!(runs > 100, "the matrix is too small to mean much: {runs}");
    let violations: Vec<String> = matrix
        .iter()
        .filter_map(|((scenario, fault), outcome)| match outcome {
            Outcome::Violation(what) => Some(format!("{scenario}, {fault}: {what}")),
            _ => None,
        })
        .collect();
    assert!(
        violations.is_empty(),
        "{} of {runs} faulted runs broke a promise:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// Every faulted run of one scenario, in `dir`: the fault and what it left.
fn run_scenario(
    scenario: &Scenario,
    contents: &BTreeMap<&str, PathBuf>,
    dir: &Path,
) -> Vec<(String, Outcome)> {
    std::fs::create_dir_all(dir).unwrap();
    let template = dir.join("template");
    run_ops(&template, scenario.setup, contents, &[]);
    let counts = syscall_counts(&template, scenario, contents, dir);
    let count = |syscall: &str| counts.get(syscall).copied().unwrap_or(0);
    let mut faults: Vec<Vec<String>> = Vec::new();
    for syscall in SYSCALLS {
        for nth in 1..=count(syscall) {
            for fault in ["error=EIO", "signal=SIGKILL"] {
                faults.push(vec![format!("{syscall}:{fault}:when={nth}")]);
            }
        }
    }
    if scenario.pairs {
        for append in 1..=count("fdatasync") {
            // The append fails and so does cutting it back: the store must stop taking
            // writes in this process, and open cleanly in the next.
            faults.push(vec![
                format!("fdatasync:error=EIO:when={append}"),
                "ftruncate:error=EIO:when=1".to_owned(),
            ]);
            for kill in ["fsync", "rename"] {
                for nth in 1..=count(kill) {
                    faults.push(vec![
                        format!("fdatasync:error=EIO:when={append}"),
                        format!("{kill}:signal=SIGKILL:when={nth}"),
                    ]);
                }
            }
        }
    }
    let mut outcomes = Vec::new();
    // Runs in which the fault visibly took effect: an operation reported an error, or the
    // process died before reporting them all. Some faults are absorbed on purpose (a failed
    // unlink of an old copy is only logged), but if none ever shows, strace's injection did
    // not happen and the matrix would be green for nothing.
    let mut took_effect = 0;
    for injects in faults {
        let store = dir.join(format!("run-{}", outcomes.len()));
        copy_dir(&template, &store);
        let stdout = run_ops(&store, scenario.ops, contents, &injects);
        let reported_ok = stdout
            .lines()
            .filter(|line| line.starts_with("ok "))
            .count();
        if stdout.contains("error") || reported_ok < scenario.ops.len() {
            took_effect += 1;
        }
        let outcome =
            check_after_fault(&store, scenario, contents).unwrap_or_else(Outcome::Violation);
        let described = injects
            .iter()
            .map(|inject| inject.replacen(':', " ", 1).replace(":when=", " #"))
            .collect::<Vec<_>>()
            .join(" + ");
        outcomes.push((described, outcome));
        let _ = std::fs::remove_dir_all(&store);
    }
    assert!(
        took_effect * 2 >= outcomes.len(),
        "{}: only {took_effect} of {} faulted runs showed the fault (is strace injecting?)",
        scenario.name,
        outcomes.len()
    );
    outcomes
}

/// Content files: `v1`, `v2` and `v3` (versions of one size), `w` (another object).
fn write_contents(dir: &Path) -> BTreeMap<&'static str, PathBuf> {
    let mut contents = BTreeMap::new();
    for (name, seed) in [("v1", 1u8), ("v2", 2), ("v3", 4), ("w", 3)] {
        let bytes: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        contents.insert(name, path);
    }
    contents
}

/// Turns `put:PATH:NAME` into `put:PATH:/abs/NAME` for the example.
fn resolve(op: &str, contents: &BTreeMap<&str, PathBuf>) -> String {
    op.split(':')
        .map(|part| {
            contents
                .get(part)
                .map_or(part.to_owned(), |path| path.display().to_string())
        })
        .collect::<Vec<_>>()
        .join(":")
}

fn store_op_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).unwrap();
    let binary = debug.join("examples").join("store_op");
    assert!(
        binary.exists(),
        "{} missing: `cargo test` builds the examples (or `cargo build --example store_op`)",
        binary.display()
    );
    binary
}

/// Runs the example on `store`, under strace with `injects` (none: a clean run); returns
/// its stdout.
fn run_ops(
    store: &Path,
    ops: &[&str],
    contents: &BTreeMap<&str, PathBuf>,
    injects: &[String],
) -> String {
    let ops: Vec<String> = ops.iter().map(|op| resolve(op, contents)).collect();
    let mut command = if injects.is_empty() {
        Command::new(store_op_binary())
    } else {
        let mut command = Command::new("strace");
        command.args(["-f", "-qq", "-o", "/dev/null"]);
        for inject in injects {
            command.arg("-e").arg(format!("inject={inject}"));
        }
        command.arg(store_op_binary());
        command
    };
    let output = run_child(command.arg(store).args(&ops));
    if injects.is_empty() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !stdout.contains("error"),
            "a clean run failed on {}: {stdout}",
            store.display()
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// How many of each syscall a clean run of the scenario's operations makes.
fn syscall_counts(
    template: &Path,
    scenario: &Scenario,
    contents: &BTreeMap<&str, PathBuf>,
    work: &Path,
) -> BTreeMap<String, usize> {
    let store = work.join("count");
    copy_dir(template, &store);
    let log = work.join("count.log");
    let ops: Vec<String> = scenario
        .ops
        .iter()
        .map(|op| resolve(op, contents))
        .collect();
    let output = run_child(
        Command::new("strace")
            .args(["-f", "-qq", "-o"])
            .arg(&log)
            .arg("-e")
            .arg(format!("trace={}", SYSCALLS.join(",")))
            .arg(store_op_binary())
            .arg(&store)
            .args(&ops),
    );
    assert!(output.status.success());
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let call = line
            .split_whitespace()
            .find(|token| token.contains('('))
            .and_then(|token| token.split('(').next())
            .unwrap_or_default();
        if SYSCALLS.contains(&call) {
            *counts.entry(call.to_owned()).or_insert(0) += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&store);
    assert!(
        counts.get("fsync").copied().unwrap_or(0) > 0
            || scenario.ops.iter().all(|op| op.starts_with("remove")),
        "{}: strace saw no fsync: {counts:?}",
        scenario.name
    );
    counts
}

/// Opens the store after a faulted run and checks it; then reruns the operations cleanly
/// and checks the final state. `Err` names the first broken promise.
fn check_after_fault(
    store: &Path,
    scenario: &Scenario,
    contents: &BTreeMap<&str, PathBuf>,
) -> Result<Outcome, String> {
    let outcome = {
        let _no_fork = FORKS.read().unwrap_or_else(PoisonError::into_inner);
        let stores = open(store)?;
        let mut outcome = Outcome::New;
        for (path, expected) in scenario.expected {
            let now = served_sha(&stores, path)?;
            if now != expected.map(|name| sha_of(&contents[name])) {
                outcome = Outcome::Pending;
            }
        }
        for (name, before, after) in scenario.state_files {
            let now = std::fs::read(store.join(name))
                .map_err(|err| format!("state file {name} unreadable: {err}"))?;
            if now == std::fs::read(&contents[before]).unwrap() {
                outcome = Outcome::Pending;
            } else if now != std::fs::read(&contents[after]).unwrap() {
                return Err(format!(
                    "state file {name} holds neither version whole ({} bytes)",
                    now.len()
                ));
            }
        }
        outcome
    };
    let again = run_ops(store, scenario.ops, contents, &[]);
    if again.contains("error") {
        return Err(format!("the next run did not complete: {again}"));
    }
    let _no_fork = FORKS.read().unwrap_or_else(PoisonError::into_inner);
    let stores = open(store)?;
    for (path, expected) in scenario.expected {
        let now = served_sha(&stores, path)?;
        if now != expected.map(|name| sha_of(&contents[name])) {
            return Err(format!(
                "{path} is not in its final state after the next run"
            ));
        }
    }
    for (name, _, after) in scenario.state_files {
        if std::fs::read(store.join(name)).ok() != std::fs::read(&contents[after]).ok() {
            return Err(format!(
                "state file {name} is not in its final state after the next run"
            ));
        }
    }
    Ok(outcome)
}

/// Opens the store, which must be usable.
fn open(store: &Path) -> Result<Stores, String> {
    let stores = Stores::load(&[StoreConfig {
        path: store.to_owned(),
        capacity: Some(ByteSize(1 << 30)),
    }]);
    let status = &stores.status()[0];
    if status.state != StoreState::Ok {
        return Err(format!("the store does not open: {:?}", status.error));
    }
    Ok(stores)
}

/// What a viewer would get for `path`: `None` for a miss; otherwise the bytes' sha256, which
/// must be the indexed one (the ETag's).
fn served_sha(stores: &Stores, path: &str) -> Result<Option<[u8; 32]>, String> {
    let Some(meta) = stores.lookup(path) else {
        return Ok(None);
    };
    let Ok(object) = stores.open(path, meta) else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &*object.file, &mut bytes).map_err(|err| err.to_string())?;
    let actual: [u8; 32] = Sha256::digest(&bytes).into();
    if actual != meta.sha256 {
        return Err(format!(
            "{path} would be served with bytes that are not its ETag's"
        ));
    }
    Ok(Some(actual))
}

/// Held for reading while this process has a store open (and so its `flock`), and for
/// writing while a child is spawned: a child forked at that moment would share the lock's
/// open file until its exec, and a store_op started then would find its store locked.
static FORKS: RwLock<()> = RwLock::new(());

/// Spawns `command` (never while a store is open here) and waits for its output.
fn run_child(command: &mut Command) -> std::process::Output {
    let child = {
        let _spawning = FORKS.write().unwrap_or_else(PoisonError::into_inner);
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    child.wait_with_output().unwrap()
}

fn sha_of(file: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(file).unwrap()).into()
}

fn copy_dir(from: &Path, to: &Path) {
    let output = run_child(Command::new("cp").arg("-a").arg(from).arg(to));
    assert!(output.status.success());
}

fn print_matrix(matrix: &BTreeMap<(&str, String), Outcome>, runs: usize) {
    println!("fault matrix: {runs} faulted runs, every one reopened, checked and rerun");
    println!("{:<24} {:<32} outcome", "scenario", "fault");
    for ((scenario, fault), outcome) in matrix {
        let described = match outcome {
            Outcome::New => "new state".to_owned(),
            Outcome::Pending => "old state or miss; the next run completes".to_owned(),
            Outcome::Violation(what) => format!("VIOLATION: {what}"),
        };
        println!("{scenario:<24} {fault:<32} {described}");
    }
}
