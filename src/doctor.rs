//! `tidecache doctor`: this host against the appliance spec (`appliance-spec/spec.toml`).
//!
//! Facts are gathered from `/proc`, `/sys` and a few system calls ([`Facts::gather`]); the
//! verdicts are plain functions of facts and spec ([`evaluate`]), so they are unit-tested
//! with made-up hosts.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ByteSize;

/// The spec shipped in the repository, used without `--spec`.
pub const BUILT_IN_SPEC: &str = include_str!("../appliance-spec/spec.toml");

/// The thresholds of `spec.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    cpu: CpuSpec,
    memory: MemorySpec,
    nvme: NvmeSpec,
    network: NetworkSpec,
    storage: StorageSpec,
    limits: LimitsSpec,
    clock: ClockSpec,
    io_uring: IoUringSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CpuSpec {
    warn_below: u64,
    fail_below: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemorySpec {
    warn_below_gib: u64,
    fail_below_gib: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NvmeSpec {
    warn_below_devices: u64,
    fail_below_devices: u64,
    min_device_size: ByteSize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSpec {
    warn_below_mbps: u64,
    fail_below_mbps: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSpec {
    good_file_systems: Vec<String>,
    acceptable_file_systems: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    warn_below_open_files: u64,
    fail_below_open_files: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockSpec {
    require_synchronised: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IoUringSpec {
    warn_when_unavailable: bool,
}

impl Spec {
    /// Parses a spec file's text.
    pub fn parse(text: &str) -> Result<Spec, String> {
        toml::from_str(text).map_err(|err| err.message().to_owned())
    }
}

/// What was found on the host.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Logical cores.
    pub cores: u64,
    /// RAM in bytes.
    pub memory_bytes: Option<u64>,
    /// NVMe namespaces and their sizes in bytes.
    pub nvme_devices: Vec<(String, u64)>,
    /// Physical NICs and their link speeds in Mbit/s (None when the link is down or unknown).
    pub nics: Vec<(String, Option<u64>)>,
    /// Each store path and what its file system is.
    pub stores: Vec<StoreFacts>,
    /// RLIMIT_NOFILE (soft).
    pub open_files: Option<u64>,
    /// Whether the clock is synchronised (None when it cannot be told).
    pub clock_synchronised: Option<bool>,
    /// Whether an io_uring instance could be created, and why not.
    pub io_uring: Result<(), String>,
    /// The transparent huge page mode (`always`, `madvise` or `never`), when it can be read.
    pub transparent_hugepages: Option<String>,
    /// The running kernel's (major, minor) version, when it can be read: whether a file
    /// system caches files in large folios depends on it.
    pub kernel: Option<(u32, u32)>,
    /// TCP's congestion control and the default queueing discipline new interfaces get
    /// (`net.ipv4.tcp_congestion_control`, `net.core.default_qdisc`), when they can be read.
    pub tcp_pacing: Option<(String, String)>,
}

/// What doctor learns of one store's file system.
#[derive(Debug, Clone)]
pub struct StoreFacts {
    /// The store's path, as configured.
    pub path: PathBuf,
    /// The file system's name (`xfs`, `ext4`...); None when the path cannot be inspected.
    pub file_system: Option<String>,
    /// For ext4, whether it has a journal (None when that cannot be told, or not ext4): a
    /// journal is optional there, and a store without one pays for it (see `check_stores`).
    pub journal: Option<bool>,
}

impl StoreFacts {
    /// A store on a file system of `name`, with the journal an ext4 has by default.
    pub fn on(path: impl Into<PathBuf>, name: &str) -> StoreFacts {
        StoreFacts {
            path: path.into(),
            file_system: Some(name.to_owned()),
            journal: (name == "ext4").then_some(true),
        }
    }
}

/// The first Linux whose ext4 caches regular files in large folios (XFS has since 5.18).
const EXT4_LARGE_FOLIOS: (u32, u32) = (6, 16);

/// One line of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Meets the reference design.
    Pass,
    /// Works, with less headroom than the reference.
    Warn,
    /// Cannot do its job.
    Fail,
}

impl Verdict {
    /// `pass`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// A check's verdict and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Pass, warn or fail.
    pub verdict: Verdict,
    /// What was checked.
    pub name: &'static str,
    /// What was found, against what was wanted.
    pub detail: String,
}

fn threshold(value: u64, warn_below: u64, fail_below: u64) -> Verdict {
    if value < fail_below {
        Verdict::Fail
    } else if value < warn_below {
        Verdict::Warn
    } else {
        Verdict::Pass
    }
}

impl Check {
    fn new(verdict: Verdict, name: &'static str, detail: String) -> Check {
        Check {
            verdict,
            name,
            detail,
        }
    }
}

/// Judges the facts against the spec, one check per line.
pub fn evaluate(facts: &Facts, spec: &Spec) -> Vec<Check> {
    let mut checks = vec![
        check_cpu(facts, spec),
        check_memory(facts, spec),
        check_nvme(facts, spec),
        check_network(facts, spec),
    ];
    checks.extend(check_stores(facts, spec));
    checks.push(check_open_files(facts, spec));
    checks.push(check_clock(facts, spec));
    checks.push(check_io_uring(facts, spec));
    checks.push(check_huge_pages(facts));
    checks.push(check_tcp_pacing(facts));
    checks
}

/// Logical cores against the reference.
fn check_cpu(facts: &Facts, spec: &Spec) -> Check {
    Check::new(
        threshold(facts.cores, spec.cpu.warn_below, spec.cpu.fail_below),
        "cpu",
        format!(
            "{} logical cores (reference {})",
            facts.cores, spec.cpu.warn_below
        ),
    )
}

/// RAM against the reference (the page cache and the index live there).
fn check_memory(facts: &Facts, spec: &Spec) -> Check {
    let Some(bytes) = facts.memory_bytes else {
        return Check::new(
            Verdict::Warn,
            "memory",
            "cannot read /proc/meminfo".to_owned(),
        );
    };
    let gib = bytes / (1 << 30);
    Check::new(
        threshold(gib, spec.memory.warn_below_gib, spec.memory.fail_below_gib),
        "memory",
        format!("{gib} GiB (reference {} GiB)", spec.memory.warn_below_gib),
    )
}

/// NVMe devices of at least the reference size.
fn check_nvme(facts: &Facts, spec: &Spec) -> Check {
    let big_enough = facts
        .nvme_devices
        .iter()
        .filter(|(_, size)| *size >= spec.nvme.min_device_size.0)
        .count() as u64;
    let listed: Vec<String> = facts
        .nvme_devices
        .iter()
        .map(|(name, size)| format!("{name} {:.2} TB", *size as f64 / 1e12))
        .collect();
    Check::new(
        threshold(
            big_enough,
            spec.nvme.warn_below_devices,
            spec.nvme.fail_below_devices,
        ),
        "nvme",
        format!(
            "{big_enough} NVMe devices of at least {:.2} TB (reference {}){}",
            spec.nvme.min_device_size.0 as f64 / 1e12,
            spec.nvme.warn_below_devices,
            if listed.is_empty() {
                "; none found".to_owned()
            } else {
                format!(": {}", listed.join(", "))
            }
        ),
    )
}

/// The fastest NIC's link speed against the reference.
fn check_network(facts: &Facts, spec: &Spec) -> Check {
    let fastest = facts.nics.iter().filter_map(|(_, speed)| *speed).max();
    if let Some(speed) = fastest {
        return Check::new(
            threshold(
                speed,
                spec.network.warn_below_mbps,
                spec.network.fail_below_mbps,
            ),
            "network",
            format!(
                "fastest link {speed} Mbit/s (reference {} Mbit/s)",
                spec.network.warn_below_mbps
            ),
        );
    }
    let nics = if facts.nics.is_empty() {
        "any NIC".to_owned()
    } else {
        facts
            .nics
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Check::new(
        Verdict::Warn,
        "network",
        format!(
            "no link speed reported for {nics} (virtual NICs report none; reference {} Mbit/s)",
            spec.network.warn_below_mbps
        ),
    )
}

/// Each store's file system: a tested one, one that works, or one to move off.
fn check_stores(facts: &Facts, spec: &Spec) -> Vec<Check> {
    let storage = &spec.storage;
    let good = storage.good_file_systems.join(" or ");
    facts
        .stores
        .iter()
        .map(|store| {
            let path = store.path.display();
            let (verdict, detail) = match store.file_system.as_deref() {
                // Measured on a VM whose root is such an ext4: creating a file there took
                // 110-300 us of kernel time (7-9 us with a journal, or on XFS).
                Some("ext4") if store.journal == Some(false) => (
                    Verdict::Warn,
                    format!(
                        "{path} on ext4 without a journal: after a power loss it needs fsck \
                         before the store opens, and each file the fill creates scans the \
                         inodes deleted in the last minutes (100-300 us of CPU that viewers \
                         wait behind); add one with `tune2fs -O has_journal`"
                    ),
                ),
                Some("ext4")
                    if storage.good_file_systems.iter().any(|ok| ok == "ext4")
                        && facts
                            .kernel
                            .is_some_and(|kernel| kernel < EXT4_LARGE_FOLIOS) =>
                {
                    let (major, minor) = facts.kernel.unwrap_or_default();
                    (
                        Verdict::Warn,
                        format!(
                            "{path} on ext4, which Linux {major}.{minor} caches in 4 KiB folios: \
                             sendfile costs more CPU per GB served (ext4 has large folios \
                             from Linux {}.{}; XFS has them on any 6.x)",
                            EXT4_LARGE_FOLIOS.0, EXT4_LARGE_FOLIOS.1
                        ),
                    )
                }
                Some(fs) if storage.good_file_systems.iter().any(|ok| ok == fs) => {
                    (Verdict::Pass, format!("{path} on {fs}"))
                }
                Some(fs) if storage.acceptable_file_systems.iter().any(|ok| ok == fs) => (
                    Verdict::Warn,
                    format!("{path} on {fs} (works; {good} are the tested choices)"),
                ),
                Some(fs) => (
                    Verdict::Fail,
                    format!("{path} on {fs}: use a local {good} file system per NVMe device"),
                ),
                None => (
                    Verdict::Warn,
                    format!("{path}: does not exist yet or cannot be inspected"),
                ),
            };
            Check::new(verdict, "store", detail)
        })
        .collect()
}

/// The open-file limit (every viewer connection and cached file holds one).
fn check_open_files(facts: &Facts, spec: &Spec) -> Check {
    let Some(limit) = facts.open_files else {
        return Check::new(
            Verdict::Warn,
            "open files",
            "cannot read the limit".to_owned(),
        );
    };
    Check::new(
        threshold(
            limit,
            spec.limits.warn_below_open_files,
            spec.limits.fail_below_open_files,
        ),
        "open files",
        format!(
            "limit {limit} (reference {}; LimitNOFILE= in the unit)",
            spec.limits.warn_below_open_files
        ),
    )
}

/// Clock synchronisation: fill windows are local wall-clock times.
fn check_clock(facts: &Facts, spec: &Spec) -> Check {
    match facts.clock_synchronised {
        Some(true) => Check::new(Verdict::Pass, "clock", "synchronised".to_owned()),
        Some(false) => Check::new(
            if spec.clock.require_synchronised {
                Verdict::Fail
            } else {
                Verdict::Warn
            },
            "clock",
            "not synchronised: fill windows would start at the wrong time (enable NTP)".to_owned(),
        ),
        None => Check::new(
            Verdict::Warn,
            "clock",
            "cannot tell whether the clock is synchronised (timedatectl missing, or timedated not running)".to_owned(),
        ),
    }
}

/// Whether io_uring is there for a later version; tidecache reads with ordinary system calls
/// today and does not need it.
fn check_io_uring(facts: &Facts, spec: &Spec) -> Check {
    match &facts.io_uring {
        Ok(()) => Check::new(Verdict::Pass, "io_uring", "available".to_owned()),
        Err(reason) => Check::new(
            if spec.io_uring.warn_when_unavailable {
                Verdict::Warn
            } else {
                Verdict::Pass
            },
            "io_uring",
            format!(
                "unavailable ({reason}); this version does not need it (it reads with ordinary system calls)"
            ),
        ),
    }
}

/// Whether the page cache can hold served objects in large folios: tidecache asks for them
/// with `MADV_HUGEPAGE` when it first reads an object to serve it, which the `never` mode
/// refuses; objects are then cached in 4 KiB folios and each `sendfile` costs more CPU per GB
/// (README "Performance").
fn check_huge_pages(facts: &Facts) -> Check {
    match facts.transparent_hugepages.as_deref() {
        Some(mode @ ("always" | "madvise")) => Check::new(
            Verdict::Pass,
            "huge pages",
            format!("transparent huge pages: {mode}"),
        ),
        Some(mode) => Check::new(
            Verdict::Warn,
            "huge pages",
            format!(
                "transparent huge pages: {mode}; served objects are cached in 4 KiB folios, which costs more CPU per GB (set madvise)"
            ),
        ),
        None => Check::new(
            Verdict::Warn,
            "huge pages",
            "transparent huge pages: unknown (no /sys/kernel/mm/transparent_hugepage/enabled)"
                .to_owned(),
        ),
    }
}

/// BBR paces every socket; without the `fq` queueing discipline the kernel does it with a
/// timer per socket, and on this project's test VM (BBR, no fq) single answers waited 40 ms
/// for that timer under load, 13-35 times per 3,300 (README, Performance). `default_qdisc`
/// is what interfaces get when their root qdisc is made: read as the likely one, since the
/// NICs' own would take netlink to ask.
fn check_tcp_pacing(facts: &Facts) -> Check {
    match facts.tcp_pacing.as_ref() {
        Some((congestion, qdisc)) if congestion == "bbr" && qdisc != "fq" => Check::new(
            Verdict::Warn,
            "tcp pacing",
            format!(
                "congestion control bbr with default qdisc {qdisc}: the kernel paces each socket with a timer of its own, which stalled answers by 40 ms under load; set net.core.default_qdisc = fq and re-create the NICs' root qdisc (tc qdisc replace dev NIC root fq), or use cubic"
            ),
        ),
        Some((congestion, qdisc)) => Check::new(
            Verdict::Pass,
            "tcp pacing",
            format!("congestion control {congestion}, default qdisc {qdisc}"),
        ),
        None => Check::new(
            Verdict::Warn,
            "tcp pacing",
            "congestion control or default qdisc unknown (no /proc/sys/net)".to_owned(),
        ),
    }
}

/// The selected mode in `/sys/kernel/mm/transparent_hugepage/enabled` (`always [madvise]
/// never`: the one in brackets).
fn transparent_hugepages(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_owned())
}

impl Facts {
    /// Reads the host.
    pub fn gather(store_paths: &[PathBuf]) -> Facts {
        Facts {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory_bytes: memory_bytes(),
            nvme_devices: nvme_devices(Path::new("/sys/block")),
            nics: nics(Path::new("/sys/class/net")),
            stores: store_paths
                .iter()
                .map(|path| {
                    let file_system = file_system(path);
                    let journal = match file_system.as_deref() {
                        Some("ext4") => ext4_has_journal(path),
                        _ => None,
                    };
                    StoreFacts {
                        path: path.clone(),
                        file_system,
                        journal,
                    }
                })
                .collect(),
            open_files: rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
            clock_synchronised: clock_synchronised(),
            io_uring: io_uring::IoUring::new(2)
                .map(drop)
                .map_err(|err| err.to_string()),
            transparent_hugepages: std::fs::read_to_string(
                "/sys/kernel/mm/transparent_hugepage/enabled",
            )
            .ok()
            .and_then(|text| transparent_hugepages(&text)),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .and_then(|text| kernel_version(&text)),
            tcp_pacing: std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
                .ok()
                .zip(std::fs::read_to_string("/proc/sys/net/core/default_qdisc").ok())
                .map(|(congestion, qdisc)| (congestion.trim().to_owned(), qdisc.trim().to_owned())),
        }
    }
}

/// The (major, minor) of a kernel release string (`6.18.44-fc-v657`).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
}

fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn nvme_devices(sys_block: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut devices: Vec<(String, u64)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            if !name.starts_with("nvme") {
                return None;
            }
            let sectors: u64 = std::fs::read_to_string(entry.path().join("size"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((name, sectors * 512))
        })
        .collect();
    devices.sort();
    devices
}

fn nics(sys_net: &Path) -> Vec<(String, Option<u64>)> {
    let Ok(entries) = std::fs::read_dir(sys_net) else {
        return Vec::new();
    };
    let mut nics: Vec<(String, Option<u64>)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            // Physical NICs have a `device` link; lo, bridges and tunnels do not.
            if !entry.path().join("device").exists() {
                return None;
            }
            let speed = std::fs::read_to_string(entry.path().join("speed"))
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .and_then(|speed| u64::try_from(speed).ok())
                .filter(|speed| *speed > 0);
            Some((name, speed))
        })
        .collect();
    nics.sort();
    nics
}

fn file_system(path: &Path) -> Option<String> {
    let stats = rustix::fs::statfs(path).ok()?;
    let name = match stats.f_type as u64 {
        0x5846_5342 => "xfs",
        0xEF53 => "ext4",
        0x9123_683E => "btrfs",
        0x2FC1_2FC1 => "zfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        other => return Some(format!("unknown (magic {other:#x})")),
    };
    Some(name.to_owned())
}

/// Whether the ext4 file system holding `path` has a journal, from its block device's
/// entries: /sys/fs/ext4/DEV/journal_task names the journal's thread or says `<none>`
/// (Linux 6.x). Before it, /proc/fs/jbd2 has an entry DEV-N for an internal journal; none
/// is not proof (an external journal is listed under its own device), so that says
/// nothing rather than warn wrongly.
fn ext4_has_journal(path: &Path) -> Option<bool> {
    let stats = rustix::fs::stat(path).ok()?;
    let (major, minor) = (
        rustix::fs::major(stats.st_dev),
        rustix::fs::minor(stats.st_dev),
    );
    let device = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let name = device.file_name()?.to_str()?.to_owned();
    if let Ok(task) = std::fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")) {
        return Some(task.trim() != "<none>");
    }
    let journals = std::fs::read_dir("/proc/fs/jbd2").ok()?;
    journals
        .flatten()
        .any(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|journal| journal.rsplit_once('-'))
                .is_some_and(|(device, _)| device == name)
        })
        .then_some(true)
}

fn clock_synchronised() -> Option<bool> {
    let output = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
        .ok()?;
    match String::from_utf8_lossy(&output.stdout).trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec::parse(BUILT_IN_SPEC).expect("the shipped spec parses")
    }

    fn reference_box() -> Facts {
        Facts {
            cores: 32,
            memory_bytes: Some(256 << 30),
            nvme_devices: (0..12)
                .map(|n| (format!("nvme{n}n1"), 7_680_000_000_000))
                .collect(),
            nics: vec![
                ("enp65s0f0".into(), Some(100_000)),
                ("enp65s0f1".into(), Some(100_000)),
            ],
            stores: vec![StoreFacts::on("/srv/nvme0/tidecache", "xfs")],
            open_files: Some(1 << 20),
            clock_synchronised: Some(true),
            io_uring: Ok(()),
            transparent_hugepages: Some("madvise".into()),
            kernel: Some((6, 12)),
            tcp_pacing: Some(("bbr".into(), "fq".into())),
        }
    }

    #[test]
    fn the_reference_box_passes_everything() {
        let checks = evaluate(&reference_box(), &spec());
        assert!(
            checks.iter().all(|check| check.verdict == Verdict::Pass),
            "{checks:#?}"
        );
    }

    #[test]
    fn a_small_vm_warns_and_fails_where_it_should() {
        let facts = Facts {
            cores: 2,
            memory_bytes: Some(24 << 30),
            nvme_devices: vec![],
            nics: vec![("eth0".into(), None)],
            stores: vec![StoreFacts::on("/tmp/store", "tmpfs")],
            open_files: Some(20_000),
            clock_synchronised: Some(false),
            io_uring: Err("Operation not permitted".into()),
            transparent_hugepages: Some("never".into()),
            kernel: Some((6, 1)),
            tcp_pacing: Some(("bbr".into(), "fq_codel".into())),
        };
        let checks = evaluate(&facts, &spec());
        let verdict = |name: &str| {
            checks
                .iter()
                .find(|check| check.name == name)
                .unwrap()
                .verdict
        };
        assert_eq!(verdict("cpu"), Verdict::Warn);
        assert_eq!(verdict("memory"), Verdict::Warn);
        assert_eq!(verdict("nvme"), Verdict::Warn);
        assert_eq!(verdict("network"), Verdict::Warn);
        assert_eq!(verdict("store"), Verdict::Fail);
        assert_eq!(verdict("open files"), Verdict::Fail);
        assert_eq!(verdict("clock"), Verdict::Fail);
        assert_eq!(verdict("io_uring"), Verdict::Warn);
        assert_eq!(verdict("huge pages"), Verdict::Warn);
        assert_eq!(verdict("tcp pacing"), Verdict::Warn);
    }

    #[test]
    fn bbr_without_fq_warns_and_cubic_or_fq_pass() {
        let pacing = |congestion: &str, qdisc: &str| {
            let facts = Facts {
                tcp_pacing: Some((congestion.into(), qdisc.into())),
                ..reference_box()
            };
            check_tcp_pacing(&facts)
        };
        let warned = pacing("bbr", "fq_codel");
        assert_eq!(warned.verdict, Verdict::Warn);
        assert!(
            warned.detail.contains("net.core.default_qdisc = fq"),
            "{warned:?}"
        );
        assert_eq!(pacing("bbr", "fq").verdict, Verdict::Pass);
        assert_eq!(pacing("cubic", "pfifo_fast").verdict, Verdict::Pass);
    }

    #[test]
    fn ext4_warns_before_the_kernel_that_gave_it_large_folios() {
        let store_verdict = |file_system: &str, kernel: Option<(u32, u32)>| {
            let facts = Facts {
                stores: vec![StoreFacts::on("/srv/nvme0", file_system)],
                kernel,
                ..reference_box()
            };
            let checks = evaluate(&facts, &spec());
            let store = checks.iter().find(|check| check.name == "store").unwrap();
            (store.verdict, store.detail.clone())
        };
        let (verdict, detail) = store_verdict("ext4", Some((6, 12)));
        assert_eq!(verdict, Verdict::Warn);
        assert!(
            detail.contains("4 KiB folios") && detail.contains("6.16"),
            "{detail}"
        );
        assert_eq!(store_verdict("ext4", Some((6, 16))).0, Verdict::Pass);
        assert_eq!(store_verdict("ext4", Some((7, 0))).0, Verdict::Pass);
        assert_eq!(store_verdict("ext4", None).0, Verdict::Pass);
        assert_eq!(store_verdict("xfs", Some((6, 1))).0, Verdict::Pass);
    }

    #[test]
    fn ext4_without_a_journal_warns_and_says_how_to_add_one() {
        let facts = Facts {
            stores: vec![StoreFacts {
                journal: Some(false),
                ..StoreFacts::on("/srv/nvme0", "ext4")
            }],
            kernel: Some((6, 18)),
            ..reference_box()
        };
        let checks = evaluate(&facts, &spec());
        let store = checks.iter().find(|check| check.name == "store").unwrap();
        assert_eq!(store.verdict, Verdict::Warn);
        assert!(
            store.detail.contains("without a journal") && store.detail.contains("has_journal"),
            "{}",
            store.detail
        );
        let unknown = Facts {
            stores: vec![StoreFacts {
                journal: None,
                ..StoreFacts::on("/srv/nvme0", "ext4")
            }],
            kernel: Some((6, 18)),
            ..reference_box()
        };
        let checks = evaluate(&unknown, &spec());
        assert!(checks.iter().all(|check| check.verdict == Verdict::Pass));
    }

    #[test]
    fn the_kernel_version_is_its_first_two_numbers() {
        assert_eq!(kernel_version("6.18.44-fc-v657\n"), Some((6, 18)));
        assert_eq!(kernel_version("6.1.0-27-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("7.0"), Some((7, 0)));
        assert_eq!(kernel_version("garbage"), None);
        assert_eq!(kernel_version(""), None);
    }

    #[test]
    fn the_huge_page_mode_is_the_bracketed_word() {
        assert_eq!(
            transparent_hugepages("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(
            transparent_hugepages("[always] madvise never").as_deref(),
            Some("always")
        );
        assert_eq!(transparent_hugepages("always madvise never"), None);
        assert_eq!(transparent_hugepages("[never"), None);
    }

    #[test]
    fn this_host_can_be_inspected_without_panicking() {
        let facts = Facts::gather(&[std::env::temp_dir()]);
        assert!(facts.cores >= 1);
        assert_eq!(
            evaluate(&facts, &spec()).len(),
            10,
            "nine checks and one per store"
        );
    }
}
