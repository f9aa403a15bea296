//! BGP anycast from readiness, with the real ExaBGP (PyPI `exabgp`, which `.ci/run` installs):
//! the shipped `config/exabgp/` files announce the box's service address while `/readyz` says
//! ready, withdraw it within seconds of `tidecache mode fill`, and announce it again after
//! `tidecache mode serve`. A second ExaBGP plays the ISP's router and logs every update it
//! receives; the box side runs the shipped files with only addresses and ports replaced.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// The service address the shipped healthcheck configuration announces.
const SERVICE_PREFIX: &str = "198.51.100.80/32";
/// How long an announce or withdraw may take after its cause (the shipped timing decides in
/// about 3 s; the bound leaves room for a loaded machine).
const STEER_BOUND: Duration = Duration::from_secs(15);

/// An ExaBGP process, stopped with everything it runs when dropped (it starts its
/// processes in sessions of their own, and the healthcheck outlives a SIGTERM to ExaBGP).
struct ExaBgp(Child);

impl Drop for ExaBgp {
    fn drop(&mut self) {
        let mut pids = descendants(self.0.id());
        pids.push(self.0.id());
        for pid in &pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.0.wait();
    }
}

/// Every process below `root`, read from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The parent is the second field after the parenthesised command name.
            let parent = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, parent))
        })
        .collect();
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(
            parents
                .iter()
                .filter(|(_, of)| *of == parent)
                .map(|(pid, _)| *pid),
        );
        index += 1;
    }
    found.remove(0);
    found
}

fn exabgp(config: &Path, env: &[(&str, String)], log: &Path) -> ExaBgp {
    let log = std::fs::File::create(log).expect("exabgp log");
    let mut command = Command::new("exabgp");
    command
        .arg(config)
        .env("exabgp_daemon_drop", "false")
        .env("exabgp_api_cli", "false")
        .env("exabgp_log_destination", "stdout")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (key, value) in env {
        command.env(key, value);
    }
    ExaBgp(command.spawn().unwrap_or_else(|err| {
        panic!("cannot run exabgp ({err}): `pip install exabgp` (.ci/run installs it)")
    }))
}

/// The router's log of updates: (unix seconds, "announce" | "withdraw") for the service prefix.
fn updates(log: &Path) -> Vec<(f64, &'static str)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (at, json) = line.split_once(' ')?;
            let at: f64 = at.parse().ok()?;
            let update: serde_json::Value = serde_json::from_str(json).ok()?;
            let message = &update["neighbor"]["message"]["update"];
            let has_prefix = |value: &serde_json::Value| value.to_string().contains(SERVICE_PREFIX);
            if has_prefix(&message["announce"]) {
                Some((at, "announce"))
            } else if has_prefix(&message["withdraw"]) {
                Some((at, "withdraw"))
            } else {
                None
            }
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Waits until the router's log holds `count` updates, the last being `kind`; returns its time.
fn wait_for_update(log: &Path, count: usize, kind: &str, since: f64) -> f64 {
    let deadline = Instant::now() + STEER_BOUND + Duration::from_secs(15);
    loop {
        let seen = updates(log);
        if seen.len() >= count {
            let (at, seen_kind) = seen[count - 1];
            assert_eq!(seen_kind, kind, "updates so far: {seen:?}");
            assert!(
                at - since <= STEER_BOUND.as_secs_f64(),
                "{kind} took {:.1} s",
                at - since
            );
            return at;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} within {STEER_BOUND:?}; updates so far: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the shipped file no longer has {from:?}"
    );
    text.replace(from, to)
}

#[test]
fn the_shipped_exabgp_configuration_steers_by_readiness() {
    let test_box = TestBox::new();
    let (token_file, _) = test_box.token_file();
    let config_file = test_box.write_file(
        "tidecache.toml",
        format!(
            "state_dir = {:?}\n[http]\nlisten = [\"127.0.0.1:0\"]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {token_file:?}\n\
             [[store]]\npath = {:?}\ncapacity = \"1GiB\"\n\
             [schedule]\ndrain = \"0s\"\nfill_windows = []\n",
            test_box.dir.path().join("state"),
            test_box.store_path(0)
        )
        .as_bytes(),
    );
    // A box that holds its content (seeding stands for a completed fill).
    let config = tidecache::config::Config::load(&config_file).expect("config");
    seed(&config, &[("a.ts", b"segment")]);
    let mut daemon = common::process::spawn_serve(&config_file);
    let admin = daemon.admin;

    let dir = test_box.dir.path();
    let shipped = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/config/exabgp/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("shipped exabgp file")
    };
    let healthcheck = replaced(
        &shipped("tidecache-healthcheck.conf"),
        "http://127.0.0.1:8081/readyz",
        &format!("http://{admin}/readyz"),
    ) + "no-syslog\n";
    std::fs::write(dir.join("healthcheck.conf"), healthcheck).unwrap();
    let mut box_side = shipped("exabgp.conf");
    for (from, to) in [
        (
            "/etc/exabgp/tidecache-healthcheck.conf",
            dir.join("healthcheck.conf").display().to_string(),
        ),
        ("neighbor 192.0.2.1", "neighbor 127.0.0.2".to_owned()),
        ("192.0.2.10", "127.0.0.1".to_owned()),
    ] {
        box_side = replaced(&box_side, from, &to);
    }
    std::fs::write(dir.join("box.conf"), box_side).unwrap();
    let router_log = dir.join("updates.log");
    let logger = dir.join("log-updates.sh");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\nwhile read -r line; do printf '%s %s\\n' \"$(date +%s.%N)\" \"$line\" >> {router_log:?}; done\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("router.conf"),
        format!(
            "process log {{\n    run {};\n    encoder json;\n}}\n\
             neighbor 127.0.0.1 {{\n    router-id 127.0.0.2;\n    local-address 127.0.0.2;\n\
             local-as 64512;\n    peer-as 64512;\n    passive;\n    family {{ ipv4 unicast; }}\n\
             api {{\n        processes [ log ];\n        receive {{ parsed; update; }}\n    }}\n}}\n",
            logger.display()
        ),
    )
    .unwrap();
    let bgp_port = TcpListener::bind("127.0.0.2:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port on 127.0.0.2")
        .port()
        .to_string();

    let started = unix_now();
    let _router = exabgp(
        &dir.join("router.conf"),
        &[
            ("exabgp_tcp_bind", "127.0.0.2".to_owned()),
            ("exabgp_tcp_port", bgp_port.clone()),
        ],
        &dir.join("router.out"),
    );
    let _box_side = exabgp(
        &dir.join("box.conf"),
        &[("exabgp_tcp_port", bgp_port)],
        &dir.join("box.out"),
    );

    let announced = wait_for_update(&router_log, 1, "announce", started);
    println!(
        "announce  at +{:.1} s (ExaBGP started)",
        announced - started
    );

    let mode = |mode: &str| {
        let status = Command::new(env!("CARGO_BIN_EXE_tidecache"))
            .args(["mode", mode, "--admin"])
            .arg(format!("http://{admin}"))
            .arg("--token-file")
            .arg(&token_file)
            .stdout(Stdio::null())
            .status()
            .expect("tidecache mode");
        assert!(status.success(), "tidecache mode {mode}");
        unix_now()
    };
    let fill_at = mode("fill");
    let withdrawn = wait_for_update(&router_log, 2, "withdraw", fill_at);
    println!(
        "withdraw  {:.1} s after `tidecache mode fill`",
        withdrawn - fill_at
    );
    let serve_at = mode("serve");
    let announced_again = wait_for_update(&router_log, 3, "announce", serve_at);
    println!(
        "announce  {:.1} s after `tidecache mode serve`",
        announced_again - serve_at
    );
    common::process::signal(&daemon.child, "TERM");
    common::process::wait_with_timeout(&mut daemon.child);
}
