//! A site of boxes (CONTRACT section 7): which boxes own an object, which peers are ready,
//! and the token the site's boxes fill from each other with.
//!
//! Every box gets the same manifest and the same member list, and ranks the boxes for each
//! object path with weighted rendezvous hashing ([`crate::store::placement`], the same
//! ranking that spreads objects over one box's stores): the first `copies` boxes own it.
//! Adding a box moves only the objects it now wins; a weight change moves only what it must.
//!
//! What lives where:
//! - [`token`]: the shared bearer token of the `/v1/site/` admin routes.
//! - this file: [`Site`] (members, ownership, redirect targets, readiness of peers, the
//!   status section) and the readiness checks.

pub mod token;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::config::SiteConfig;
use crate::signal::Shutdown;
use crate::store::placement::{key_of, score};
pub use token::SiteToken;

/// The query parameter a redirect to a peer adds, so the peer never redirects the request
/// again: a request bounces between boxes at most once.
pub const HOP_PARAM: &str = "tidecache-hop";

/// Another box of the site, as this box sees it.
#[derive(Debug)]
pub struct Peer {
    /// Its `site.box`.
    pub name: String,
    /// Its viewer base URL, without a trailing `/`.
    pub url: String,
    /// Its admin base URL, without a trailing `/`.
    pub admin: String,
    weight: f64,
    key: u64,
    ready: AtomicBool,
    /// When its readiness was last checked, Unix milliseconds; 0: never.
    checked_at_ms: AtomicI64,
}

impl Peer {
    fn new(name: &str, url: &str, admin: &str, weight: f64) -> Peer {
        Peer {
            name: name.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
            admin: admin.trim_end_matches('/').to_owned(),
            weight,
            key: key_of(name),
            ready: AtomicBool::new(false),
            checked_at_ms: AtomicI64::new(0),
        }
    }

    /// Whether its last `/readyz` said 200 (false until the first check answers).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether two peers are the same box at the same addresses (so a reload keeps what
    /// the checks learnt of it).
    fn same_as(&self, other: &Peer) -> bool {
        self.name == other.name
            && self.url == other.url
            && self.admin == other.admin
            && self.weight == other.weight
    }
}

/// One box in an object's ranking.
#[derive(Debug, Clone)]
pub enum Member {
    /// This box.
    Me,
    /// A peer.
    Peer(Arc<Peer>),
}

/// The site's members, swapped whole on reload.
#[derive(Debug)]
struct Members {
    weight: f64,
    key: u64,
    copies: u8,
    peers: Vec<Arc<Peer>>,
    check_interval: Duration,
    check_timeout: Duration,
}

/// Objects and bytes of the manifest in force that are this box's share.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Share {
    /// Objects this box owns.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A peer in `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// Whether its last readiness check said ready.
    pub ready: bool,
    /// When that was, RFC 3339 UTC; none before the first check.
    pub checked_at: Option<String>,
}

/// The `site` section of `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct SiteStatus {
    /// This box's name.
    #[serde(rename = "box")]
    pub box_name: String,
    /// The site's default copies per object.
    pub copies: u8,
    /// This box's share of the manifest in force (as of the last fill pass's survey).
    pub share: Share,
    /// The other boxes.
    pub peers: Vec<PeerStatus>,
}

/// This box's site.
pub struct Site {
    name: String,
    members: ArcSwap<Members>,
    token: ArcSwap<SiteToken>,
    share: Mutex<Share>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site").field("name", &self.name).finish()
    }
}

impl Site {
    /// The site `config` describes, guarded by `token`.
    pub fn new(config: &SiteConfig, token: SiteToken) -> Site {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.check_timeout.0));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Site {
            name: config.box_name.clone(),
            members: ArcSwap::from_pointee(members(config, &[])),
            token: ArcSwap::from_pointee(token),
            share: Mutex::new(Share::default()),
            client,
        }
    }

    /// Applies a changed member list, weights, copies or token (SIGHUP). Peers that did
    /// not change keep their readiness. The box's own name needs a restart.
    pub fn reload(&self, config: &SiteConfig, token: SiteToken) {
        let running = self.members.load();
        self.members
            .store(Arc::new(members(config, &running.peers)));
        self.token.store(Arc::new(token));
    }

    /// This box's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The site's token.
    pub fn token(&self) -> Arc<SiteToken> {
        self.token.load_full()
    }

    /// The other boxes, in configuration order.
    pub fn peers(&self) -> Vec<Arc<Peer>> {
        self.members.load().peers.clone()
    }

    /// The peer named `name`.
    pub fn peer(&self, name: &str) -> Option<Arc<Peer>> {
        self.members
            .load()
            .peers
            .iter()
            .find(|peer| peer.name == name)
            .cloned()
    }

    /// How many boxes hold an object whose manifest entry says `copies` (0: the site's
    /// default), at most every box.
    pub fn copies(&self, copies: u8) -> usize {
        let members = self.members.load();
        effective_copies(&members, copies)
    }

    /// Whether this box owns `path` (is among its `copies` best-ranked boxes). No
    /// allocation: a pass asks it of every object of the manifest.
    pub fn is_mine(&self, path: &str, copies: u8) -> bool {
        let members = self.members.load();
        let path_key = key_of(path);
        let mine = score(members.key, members.weight, path_key);
        let beaten_by = members
            .peers
            .iter()
            .filter(|peer| {
                let theirs = score(peer.key, peer.weight, path_key);
                theirs > mine || (theirs == mine && peer.name < self.name)
            })
            .count();
        beaten_by < effective_copies(&members, copies)
    }

    /// Every box ranked for `path`, best first: its owners are the first
    /// [`Site::copies`], and the boxes after them are where a moved object came from.
    pub fn ranking(&self, path: &str) -> Vec<Member> {
        let members = self.members.load();
        let path_key = key_of(path);
        let mut scored: Vec<(f64, &str, Member)> = Vec::with_capacity(members.peers.len() + 1);
        scored.push((
            score(members.key, members.weight, path_key),
            &self.name,
            Member::Me,
        ));
        for peer in &members.peers {
            scored.push((
                score(peer.key, peer.weight, path_key),
                &peer.name,
                Member::Peer(Arc::clone(peer)),
            ));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        scored.into_iter().map(|(_, _, member)| member).collect()
    }

    /// The owners of `path` other than this box, best first.
    pub fn peer_owners(&self, path: &str, copies: u8) -> Vec<Arc<Peer>> {
        let owners = self.copies(copies);
        self.ranking(path)
            .into_iter()
            .take(owners)
            .filter_map(|member| match member {
                Member::Peer(peer) => Some(peer),
                Member::Me => None,
            })
            .collect()
    }

    /// Where a viewer asking this box for `path`, which it does not hold, is sent: the
    /// best-ranked ready peer (its owners first, then the boxes a moved object came from).
    pub fn redirect_target(&self, path: &str) -> Option<Arc<Peer>> {
        self.ranking(path)
            .into_iter()
            .find_map(|member| match member {
                Member::Peer(peer) if peer.is_ready() => Some(peer),
                _ => None,
            })
    }

    /// Records this box's share of the manifest in force (a fill pass surveys it).
    pub fn set_share(&self, share: Share) {
        *self.share.lock().unwrap_or_else(PoisonError::into_inner) = share;
    }

    /// The `site` section of `/v1/status`.
    pub fn status(&self) -> SiteStatus {
        let members = self.members.load();
        SiteStatus {
            box_name: self.name.clone(),
            copies: members.copies,
            share: *self.share.lock().unwrap_or_else(PoisonError::into_inner),
            peers: members
                .peers
                .iter()
                .map(|peer| {
                    let at = peer.checked_at_ms.load(Ordering::Relaxed);
                    PeerStatus {
                        name: peer.name.clone(),
                        ready: peer.is_ready(),
                        checked_at: (at > 0)
                            .then(|| jiff::Timestamp::from_millisecond(at).ok())
                            .flatten()
                            .map(|at| at.to_string()),
                    }
                })
                .collect(),
        }
    }

    /// Asks every peer's `/readyz` every `site.check_interval` until `stop`; a peer is
    /// ready while its last answer was 200 within `site.check_timeout`.
    pub async fn run_checks(self: Arc<Self>, mut stop: Shutdown) {
        loop {
            let members = self.members.load_full();
            let mut checks = tokio::task::JoinSet::new();
            for peer in &members.peers {
                let (site, peer) = (Arc::clone(&self), Arc::clone(peer));
                let timeout = members.check_timeout;
                checks.spawn(async move { site.check(&peer, timeout).await });
            }
            tokio::select! {
                _ = async { while checks.join_next().await.is_some() {} } => {}
                _ = stop.raised() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(members.check_interval) => {}
                _ = stop.raised() => return,
            }
        }
    }

    /// One readiness check of `peer`.
    async fn check(&self, peer: &Peer, timeout: Duration) {
        let ready = match Request::get(format!("{}/readyz", peer.admin)).body(Empty::new()) {
            Ok(request) => matches!(
                tokio::time::timeout(timeout, self.client.request(request)).await,
                Ok(Ok(response)) if response.status() == StatusCode::OK
            ),
            Err(_) => false,
        };
        let was = peer.ready.swap(ready, Ordering::Relaxed);
        peer.checked_at_ms
            .store(jiff::Timestamp::now().as_millisecond(), Ordering::Relaxed);
        if was != ready {
            tracing::info!(peer = %peer.name, ready, "site peer readiness changed");
        }
    }
}

fn effective_copies(members: &Members, copies: u8) -> usize {
    let wanted = if copies == 0 { members.copies } else { copies };
    usize::from(wanted.max(1)).min(members.peers.len() + 1)
}

/// The members of `config`, keeping the peers of `running` that did not change.
fn members(config: &SiteConfig, running: &[Arc<Peer>]) -> Members {
    let peers = config
        .peers
        .iter()
        .map(|peer| {
            let fresh = Peer::new(&peer.name, &peer.url, &peer.admin, peer.weight);
            running
                .iter()
                .find(|known| known.same_as(&fresh))
                .map_or_else(|| Arc::new(fresh), Arc::clone)
        })
        .collect();
    Members {
        weight: config.weight,
        key: key_of(&config.box_name),
        copies: u8::try_from(config.copies).unwrap_or(u8::MAX),
        peers,
        check_interval: config.check_interval.0,
        check_timeout: config.check_timeout.0,
    }
}

/// Whether a viewer request's query says another box of the site already redirected it.
pub fn was_redirected(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(HOP_PARAM))
    })
}

/// The URL a viewer is redirected to on `peer`: its viewer URL, the request's path and
/// query, and [`HOP_PARAM`].
pub fn redirect_location(peer: &Peer, path: &str, query: Option<&str>) -> String {
    match query {
        Some(query) if !query.is_empty() => format!("{}{path}?{query}&{HOP_PARAM}=1", peer.url),
        _ => format!("{}{path}?{HOP_PARAM}=1", peer.url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;

    fn config(name: &str, others: &[&str]) -> SiteConfig {
        SiteConfig {
            box_name: name.to_owned(),
            token_file: None,
            peers: others
                .iter()
                .map(|other| PeerConfig {
                    name: (*other).to_owned(),
                    url: format!("http://{other}:8080/"),
                    admin: format!("http://{other}:8081"),
                    weight: 1.0,
                })
                .collect(),
            ..SiteConfig::default()
        }
    }

    fn site(name: &str, all: &[&str], copies: u32) -> Site {
        let others: Vec<&str> = all
            .iter()
            .copied()
            .filter(|box_name| *box_name != name)
            .collect();
        let mut config = config(name, &others);
        config.copies = copies;
        Site::new(&config, SiteToken::none())
    }

    fn paths() -> Vec<String> {
        (0..6000)
            .map(|i| format!("t{}/seg_{i}.m4s", i % 50))
            .collect()
    }

    #[tokio::test]
    async fn every_box_computes_the_same_owners_and_shares_follow_the_weights() {
        let names = ["box-a", "box-b", "box-c"];
        for copies in [1, 2] {
            let sites: Vec<Site> = names
                .iter()
                .map(|name| site(name, &names, copies))
                .collect();
            let mut held = [0usize; 3];
            for path in paths() {
                let owners: Vec<usize> = (0..3).filter(|&i| sites[i].is_mine(&path, 0)).collect();
                assert_eq!(owners.len(), copies as usize, "{path}");
                for owner in owners {
                    held[owner] += 1;
                }
                // Every box ranks the same way, whoever asks.
                let first = |site: &Site| match &site.ranking(&path)[0] {
                    Member::Me => site.name().to_owned(),
                    Member::Peer(peer) => peer.name.clone(),
                };
                assert_eq!(first(&sites[0]), first(&sites[1]));
                assert_eq!(first(&sites[1]), first(&sites[2]));
            }
            let expected = 6000 * copies as usize / 3;
            for count in held {
                assert!(count.abs_diff(expected) * 100 < expected * 5, "{held:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_joining_box_takes_about_its_share_and_nothing_moves_between_the_others() {
        let three = ["box-a", "box-b", "box-c"];
        let four = ["box-a", "box-b", "box-c", "box-d"];
        let before: Vec<Site> = three.iter().map(|name| site(name, &three, 1)).collect();
        let after: Vec<Site> = four.iter().map(|name| site(name, &four, 1)).collect();
        let mut moved = 0;
        for path in paths() {
            let old = (0..3).find(|&i| before[i].is_mine(&path, 0));
            let new = (0..4).find(|&i| after[i].is_mine(&path, 0));
            if old != new {
                assert_eq!(new, Some(3), "{path} moved between old boxes");
                moved += 1;
            }
        }
        assert!((1350..=1650).contains(&moved), "{moved}");
    }

    #[tokio::test]
    async fn redirects_go_to_a_ready_peer_and_carry_the_hop_mark() {
        let site = site("box-a", &["box-a", "box-b", "box-c"], 1);
        assert!(
            site.redirect_target("x.ts").is_none(),
            "no peer checked yet"
        );
        site.peers()[1].ready.store(true, Ordering::Relaxed);
        let target = site.redirect_target("x.ts").unwrap();
        assert_eq!(target.name, "box-c");
        assert_eq!(
            redirect_location(&target, "/x.ts", Some("exp=1&sig=ab")),
            "http://box-c:8080/x.ts?exp=1&sig=ab&tidecache-hop=1"
        );
        assert!(was_redirected(Some("exp=1&tidecache-hop=1")));
        assert!(!was_redirected(Some("tidecache-hopx=1")));
        assert!(!was_redirected(None));
    }
}
