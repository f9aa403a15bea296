//! The `tidecache` binary as a child process: start it from a config file, read the
//! addresses it bound from its JSON start-up line, signal it, wait for it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;

/// The binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_tidecache");

/// A daemon process started from a config file, and the addresses it logged.
pub struct Running {
    pub child: Child,
    pub viewer: SocketAddr,
    pub admin: SocketAddr,
    /// Every log line after the start-up line, as it is written.
    pub log: Receiver<String>,
}

impl Drop for Running {
    /// A test that fails midway must not leave the daemon running on its ports.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    /// Waits (bounded) for a log line containing `needle`, and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?} within {IO_TIMEOUT:?}"),
            }
        }
    }
}

/// Starts `tidecache serve` and reads its JSON start-up line for the bound addresses.
pub fn spawn_serve(config_file: &std::path::Path) -> Running {
    let mut child = Command::new(BINARY)
        .args(["--log-format", "json", "serve", "--config"])
        .arg(config_file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tidecache serve");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + IO_TIMEOUT;
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = log
            .recv_timeout(left)
            .expect("start-up line within the timeout");
        if line.contains("tidecache started") {
            break line;
        }
    };
    let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    let fields = &event["fields"];
    let viewer = fields["viewers"]
        .as_str()
        .expect("viewers field")
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .expect("viewer address");
    let admin = fields["admin"]
        .as_str()
        .expect("admin field")
        .parse()
        .expect("admin address");
    Running {
        child,
        viewer,
        admin,
        log,
    }
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

pub fn wait_with_timeout(child: &mut Child) -> Option<i32> {
    let started = Instant::now();
    while started.elapsed() < IO_TIMEOUT {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("tidecache did not exit within {IO_TIMEOUT:?}");
}
