//! The Debian package, used the way an operator would: `systemd/debian/build-deb` builds it
//! (cargo-deb, which `.ci/run` installs), then it is installed with dpkg, checked, upgraded
//! over an edited configuration, and purged, inside a throw-away copy of this machine (an
//! overlay over `/` in a private mount namespace, entered with chroot), so the host's own
//! system is never touched. Purge must leave nothing behind but dpkg's own records.
//!
//! Needs root (dpkg, mounts); as another user the test says so and passes without running,
//! since `cargo test` must work for anyone; CI runs as root.

use std::path::Path;
use std::process::Command;

/// The scenario, run by `sh` in the new mount namespace: $1 the scratch directory, $2 and $3
/// the two packages (0.1.0-1, then 0.1.1-1 with the same configuration file).
const SCENARIO: &str = r#"
set -eu
scratch=$1
mount -t tmpfs tmpfs "$scratch"
mkdir "$scratch/up" "$scratch/work" "$scratch/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/up,workdir=$scratch/work" "$scratch/root"
for fs in proc dev sys; do mount --rbind "/$fs" "$scratch/root/$fs"; done
mkdir -p "$scratch/root/tmp/debs"
cp "$2" "$scratch/root/tmp/debs/old.deb"
cp "$3" "$scratch/root/tmp/debs/new.deb"
chroot "$scratch/root" /bin/sh -eu <<'INNER'
echo "== dpkg -i old.deb"
dpkg -i /tmp/debs/old.deb
echo "== dpkg -L tidecache"
dpkg -L tidecache
echo "== checks"
tidecache --version
tidecache check-config /etc/tidecache/tidecache.toml > /dev/null && echo "check-config: ok"
getent passwd tidecache > /dev/null && echo "user: tidecache"
stat -c 'owner: %U:%G %a %n' /var/lib/tidecache /var/log/tidecache /etc/tidecache
echo "enabled: $(systemctl is-enabled tidecache.service 2>/dev/null || true)"
if command -v systemd-analyze > /dev/null; then
    systemd-analyze verify /usr/lib/systemd/system/tidecache.service && echo "systemd-analyze verify: ok"
else
    echo "systemd-analyze: not present"
fi
man -P cat tidecache 2> /dev/null | grep -q "Push-filled video segment cache" && echo "man tidecache: renders"
man -P cat tidecache-serve 2> /dev/null | grep -q "tidecache-serve" && echo "man tidecache-serve: renders"
test -s /usr/share/bash-completion/completions/tidecache && echo "bash completion: present"
echo "== upgrade over an edited configuration"
echo '# edited by the operator' >> /etc/tidecache/tidecache.toml
dpkg -i --force-confdef --force-confold /tmp/debs/new.deb
echo "installed: $(dpkg-query -W -f '${Version}' tidecache)"
grep -q '^# edited by the operator$' /etc/tidecache/tidecache.toml && echo "edited configuration: kept"
echo "== systemctl enable (offline, as an image build would), then dpkg --purge tidecache"
systemctl enable tidecache.service 2>&1
rm -rf /tmp/debs
dpkg --purge tidecache
getent passwd tidecache > /dev/null && echo "user: kept" || echo "user: removed"
INNER
echo "== left after purge (besides dpkg's records)"
cd "$scratch/up"
# Directories the package made (those the host does not have), then files.
find . -mindepth 1 -type d | sort | while read -r dir; do
    [ -e "/$dir" ] || echo "$dir/"
done | grep -v -E '^\./(run|tmp)/' || true
find . ! -type d | sort | grep -v -E '^\./(run/|var/lib/dpkg/|var/log/dpkg\.log$|var/log/apt/|var/cache/(man|debconf|ldconfig)/|etc/(passwd|group|shadow|gshadow|subuid|subgid)-?$|etc/\.pwd\.lock$|tmp/)' || true
# The tidecache user and group stay (see systemd/debian/postrm); nothing else in the
# account files may change.
for file in passwd group shadow gshadow; do
    grep -v '^tidecache:' "$scratch/root/etc/$file" | cmp -s "/etc/$file" - || echo "changed: /etc/$file"
done
echo "== end"
"#;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn require(tool: &str, args: &[&str], hint: &str) {
    let found = Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(found, "{tool} is needed for this test: {hint}");
}

fn build_deb(out: &Path, extra: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/debian/build-deb");
    let output = Command::new(script)
        .env("TIDECACHE_DEB_PROFILE", "dev")
        .args(["--fast", "--quiet", "--output"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run systemd/debian/build-deb");
    assert!(
        output.status.success(),
        "build-deb failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_debian_package_installs_upgrades_keeping_edits_and_purges_clean() {
    if !is_root() {
        eprintln!("the Debian package test needs root (dpkg, mounts): not run");
        return;
    }
    require(
        "cargo",
        &["deb", "--version"],
        "`cargo install cargo-deb --locked` (.ci/run does)",
    );
    require("dpkg", &["--version"], "a Debian system");
    require("unshare", &["--version"], "util-linux");
    require(
        "man",
        &["--version"],
        "`apt-get install man-db` (.ci/run does)",
    );

    let work = tempfile::tempdir().expect("scratch");
    let old = work.path().join("tidecache_0.1.0-1.deb");
    let new = work.path().join("tidecache_0.1.1-1.deb");
    build_deb(&old, &[]);
    build_deb(&new, &["--deb-version", "0.1.1-1"]);
    let scratch = work.path().join("overlay");
    std::fs::create_dir(&scratch).unwrap();

    let output = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCENARIO,
            "sh",
        ])
        .arg(&scratch)
        .arg(&old)
        .arg(&new)
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the scenario failed:\n{stdout}\n{stderr}"
    );
    for line in [
        "check-config: ok",
        "user: tidecache",
        "owner: tidecache:tidecache 750 /var/lib/tidecache",
        "owner: root:tidecache 750 /etc/tidecache",
        "enabled: disabled",
        "man tidecache: renders",
        "man tidecache-serve: renders",
        "bash completion: present",
        "installed: 0.1.1-1",
        "edited configuration: kept",
        "user: kept",
    ] {
        assert!(
            stdout.contains(line),
            "missing {line:?} in:\n{stdout}\n{stderr}"
        );
    }
    if stdout.contains("systemd-analyze verify") || !stdout.contains("systemd-analyze: not present")
    {
        assert!(
            stdout.contains("systemd-analyze verify: ok"),
            "systemd-analyze verify failed:\n{stdout}\n{stderr}"
        );
    }
    for path in [
        "/usr/bin/tidecache",
        "/etc/tidecache/tidecache.toml",
        "/usr/lib/systemd/system/tidecache.service",
        "/usr/lib/sysusers.d/tidecache.conf",
        "/usr/share/man/man1/tidecache.1.gz",
    ] {
        assert!(
            stdout.contains(path),
            "{path} not in the package's file list"
        );
    }
    let left = stdout
        .split("== left after purge (besides dpkg's records)\n")
        .nth(1)
        .and_then(|rest| rest.split("== end").next())
        .unwrap_or("?");
    assert!(left.trim().is_empty(), "purge left these behind:\n{left}");
}
