//! A site of boxes for the site tests: each box a real daemon with `[site]`, peered with the
//! others by reloads (as SIGHUP does), filled together and read by a following client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tidecache::config::{Config, PeerConfig};
use tidecache::daemon::Daemon;
use tidecache::schedule::Override;

use super::*;

/// The site token every box of a test site shares.
pub const SITE_TOKEN: &str = "site-token-0123456789abcdef";

/// A manifest of `objects` (path, bytes, copies; copies 0 means none given).
pub fn manifest(id: &str, base_url: &str, objects: &[(String, Vec<u8>, u8)]) -> String {
    let listed: Vec<serde_json::Value> = objects
        .iter()
        .map(|(path, data, copies)| {
            let mut entry = serde_json::json!({
                "path": path, "size": data.len(), "sha256": sha256_hex(data),
            });
            if *copies > 0 {
                entry["copies"] = (*copies).into();
            }
            entry
        })
        .collect();
    serde_json::json!({"version": 1, "id": id, "base_url": base_url, "objects": listed}).to_string()
}

/// One box of the site: its directory, configuration and daemon.
pub struct SiteBox {
    pub name: &'static str,
    /// Its directory, removed when the box is dropped.
    pub test_box: TestBox,
    pub config: Config,
    pub daemon: Option<Daemon>,
}

impl SiteBox {
    /// Starts box `name` with checks every 200 ms; `extra` adds `[fill]` keys.
    pub async fn start(name: &'static str, extra: &str) -> SiteBox {
        let test_box = TestBox::new();
        let token = test_box.write_file("site.token", SITE_TOKEN.as_bytes());
        let config = test_box.config(
            1,
            &format!(
                "[schedule]\nduring_fill = \"serve\"\ndrain = \"0s\"\n[fill]\nretry_delay = \"10ms\"\n{extra}[site]\nbox = {name:?}\ntoken_file = {token:?}\ncheck_interval = \"200ms\"\ncheck_timeout = \"500ms\"\n"
            ),
        );
        let daemon = start(&config).await;
        SiteBox {
            name,
            test_box,
            config,
            daemon: Some(daemon),
        }
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    pub fn viewer(&self) -> SocketAddr {
        self.daemon().viewer_addrs[0]
    }

    /// Peers and weights as `site` says (name, viewer, admin, weight), this box's own weight
    /// from it too, and `copies`; a reload as SIGHUP does.
    pub fn peer_with(&mut self, site: &[(&'static str, SocketAddr, SocketAddr, f64)], copies: u32) {
        let name = self.name;
        let config = self.config.site.as_mut().expect("[site]");
        config.copies = copies;
        config.peers = site
            .iter()
            .filter(|(other, _, _, _)| *other != name)
            .map(|(other, viewer, admin, weight)| PeerConfig {
                name: (*other).to_owned(),
                url: format!("http://{viewer}"),
                admin: format!("http://{admin}"),
                weight: *weight,
            })
            .collect();
        config.weight = site
            .iter()
            .find(|(other, _, _, _)| *other == name)
            .map(|(_, _, _, weight)| *weight)
            .expect("this box is in the site");
        self.daemon()
            .reload(&self.config)
            .expect("the site reloads");
    }

    pub fn holds(&self, path: &str) -> bool {
        self.daemon().stores.lookup(path).is_some()
    }

    pub async fn restart(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown().await;
        }
        self.daemon = Some(start(&self.config).await);
    }
}

/// Each box's name, viewer and admin address, with its weight.
pub fn addresses(
    boxes: &[SiteBox],
    weights: &[f64],
) -> Vec<(&'static str, SocketAddr, SocketAddr, f64)> {
    assert_eq!(boxes.len(), weights.len(), "a weight per box");
    boxes
        .iter()
        .zip(weights)
        .map(|(site_box, weight)| {
            (
                site_box.name,
                site_box.viewer(),
                site_box.daemon().admin_addr,
                *weight,
            )
        })
        .collect()
}

/// Peers every box of `boxes` with the others at `weights` and `copies` (a reload on each,
/// as SIGHUP does), then waits until every box sees its peers ready and agreeing.
pub async fn peer_all(boxes: &mut [SiteBox], weights: &[f64], copies: u32) {
    let site = addresses(boxes, weights);
    for site_box in boxes.iter_mut() {
        site_box.peer_with(&site, copies);
    }
    all_ready(boxes).await;
}

/// Fills every box at once (later owners wait for first owners, so they must fill
/// together) until each has finished a pass toward manifest `id`.
pub async fn fill_all(boxes: &[&SiteBox], id: &str) {
    let mut last_pass = Vec::new();
    for site_box in boxes {
        let status = admin_status(site_box.daemon().admin_addr).await;
        last_pass.push(status["fill"]["last_fill"]["started_at"].clone());
    }
    for site_box in boxes {
        set_override(site_box, Override::Fill).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (site_box, before) in boxes.iter().zip(&last_pass) {
        loop {
            let status = admin_status(site_box.daemon().admin_addr).await;
            if status["mode"] == "filling"
                && status["fill"]["state"] == "done"
                && status["fill"]["manifest_id"] == id
                && status["fill"]["last_fill"]["started_at"] != *before
            {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {status:#}", site_box.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Back to the schedule (which serves: the tests' boxes have no fill window).
pub async fn serve_all(boxes: &[SiteBox]) {
    for site_box in boxes {
        set_override(site_box, Override::Auto).await;
    }
}

async fn set_override(site_box: &SiteBox, mode: Override) {
    site_box
        .daemon()
        .set_override(mode)
        .await
        .unwrap_or_else(|err| panic!("{}: override {mode:?}: {err}", site_box.name));
}

/// Every box sees every peer ready and agreeing, then two more checks pass so settled
/// flags are current.
pub async fn all_ready(boxes: &[SiteBox]) {
    for site_box in boxes {
        let admin = site_box.daemon().admin_addr;
        eventually(
            &format!("{} sees its peers ready", site_box.name),
            || async move {
                let status = admin_status(admin).await;
                status["site"]["peers"].as_array().is_some_and(|peers| {
                    peers
                        .iter()
                        .all(|peer| peer["ready"] == true && peer["agrees"] == true)
                })
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
}

/// The boxes holding `path`.
pub fn holders(boxes: &[SiteBox], path: &str) -> Vec<&'static str> {
    boxes
        .iter()
        .filter(|site_box| site_box.holds(path))
        .map(|site_box| site_box.name)
        .collect()
}

/// A viewer's client: follows redirects, at most a few.
pub fn following() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::limited(3))
        .timeout(IO_TIMEOUT)
        .build()
        .expect("client")
}
