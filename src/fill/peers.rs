//! The fill's side of a site (CONTRACT section 7): before a pass fetches, which peers
//! already hold each object (they are asked in batches, `POST /v1/site/holds`) and which
//! first owner a later owner waits for; after it, which objects that moved to another box
//! can be given up because a box that owns them now holds them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::fetch::Fetcher;
use super::manifest::Manifest;
use crate::site::{Member, Peer, Site};
use crate::store::Stores;

/// Objects asked about per `POST /v1/site/holds` (the admin route's limit).
const HOLDS_BATCH: usize = 16_384;
/// Largest answer to one holds request.
const HOLDS_ANSWER_LIMIT: usize = 1 << 20;
/// How long one holds request may take.
const HOLDS_TIMEOUT: Duration = Duration::from_secs(30);
/// Deletes per journal fsync when giving objects up.
const DELETE_BATCH: usize = 256;

/// Where one object is fetched from before the origin.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Peers that hold it (with the manifest's sha256), best-ranked first.
    pub holders: Vec<Arc<Peer>>,
    /// Its first owner, when this box is a later one and no peer holds it yet: the first
    /// owner fetches it from the origin and this box from it, so it crosses the transit
    /// once.
    pub wait_for: Option<Arc<Peer>>,
}

/// One object in a holds request, as the admin route reads it.
#[derive(Debug, Serialize)]
struct Asked<'a> {
    path: &'a str,
    sha256: String,
}

/// The body of a holds request.
#[derive(Debug, Serialize)]
struct HoldsQuery<'a> {
    objects: &'a [Asked<'a>],
}

/// A holds answer.
#[derive(Debug, Deserialize)]
struct HoldsAnswer {
    stocked: bool,
    settled: bool,
    #[serde(default)]
    settled_for_ms: u64,
    held: Vec<bool>,
}

/// Asks `peer` which of `objects` (manifest positions) it holds. Returns whether it holds
/// its content and has settled into the site's current members (both), and the positions
/// it holds; a peer that cannot be asked holds nothing.
async fn ask_holds(
    fetcher: &Fetcher,
    bearer: &str,
    peer: &Peer,
    manifest: &Manifest,
    objects: &[usize],
    settled_for: Duration,
) -> (bool, Vec<usize>) {
    let url = format!("{}/v1/site/holds", peer.admin);
    let mut stocked = false;
    let mut held = Vec::new();
    for batch in objects.chunks(HOLDS_BATCH) {
        let asked: Vec<Asked<'_>> = batch
            .iter()
            .map(|&index| {
                let object = manifest.get(index);
                Asked {
                    path: object.path,
                    sha256: crate::store::hex(&object.sha256),
                }
            })
            .collect();
        let Ok(body) = serde_json::to_vec(&HoldsQuery { objects: &asked }) else {
            return (false, Vec::new());
        };
        let answer = fetcher
            .post_peer(&url, bearer, body, HOLDS_ANSWER_LIMIT, HOLDS_TIMEOUT)
            .await
            .map_err(|err| err.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<HoldsAnswer>(&bytes).map_err(|err| err.to_string())
            });
        match answer {
            Ok(answer) if answer.held.len() == batch.len() => {
                stocked = answer.stocked
                    && answer.settled
                    && Duration::from_millis(answer.settled_for_ms) >= settled_for;
                held.extend(
                    batch
                        .iter()
                        .zip(answer.held)
                        .filter(|(_, held)| *held)
                        .map(|(&index, _)| index),
                );
            }
            Ok(_) => {
                tracing::warn!(peer = %peer.name, "a site peer's holds answer does not match the question; taken as holding nothing");
                return (false, Vec::new());
            }
            Err(err) => {
                tracing::warn!(peer = %peer.name, error = %err, "cannot ask a site peer what it holds; taken as holding nothing");
                return (false, Vec::new());
            }
        }
    }
    (stocked, held)
}

/// The peers to try for each of `fetches` before the origin (objects with none are left
/// out): peers that hold it, and otherwise the first owner to wait for.
pub async fn plan_sources(
    fetcher: &Fetcher,
    site: &Arc<Site>,
    manifest: &Arc<Manifest>,
    fetches: &[usize],
) -> HashMap<usize, Sources> {
    let token = site.token();
    let Some(bearer) = token.bearer() else {
        return HashMap::new();
    };
    let peers = site.peers();
    let fetches: Arc<Vec<usize>> = Arc::new(fetches.to_vec());
    let mut asks = tokio::task::JoinSet::new();
    for peer in peers {
        let (fetcher, bearer) = (fetcher.clone(), bearer.clone());
        let (manifest, fetches) = (Arc::clone(manifest), Arc::clone(&fetches));
        asks.spawn(async move {
            let (_, held) = ask_holds(
                &fetcher,
                &bearer,
                &peer,
                &manifest,
                &fetches,
                Duration::ZERO,
            )
            .await;
            (peer.name.clone(), held)
        });
    }
    let mut held_by: HashMap<usize, HashSet<String>> = HashMap::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok((name, held)) = joined {
            for index in held {
                held_by.entry(index).or_default().insert(name.clone());
            }
        }
    }
    let mut sources = HashMap::new();
    for &index in fetches.iter() {
        let object = manifest.get(index);
        let ranking = site.ranking(object.path);
        let holders: Vec<Arc<Peer>> = match held_by.get(&index) {
            Some(names) => ranking
                .iter()
                .filter_map(|member| match member {
                    Member::Peer(peer) if names.contains(&peer.name) => Some(Arc::clone(peer)),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let wait_for = match ranking.first() {
            Some(Member::Peer(first)) if holders.is_empty() => Some(Arc::clone(first)),
            _ => None,
        };
        if !holders.is_empty() || wait_for.is_some() {
            sources.insert(index, Sources { holders, wait_for });
        }
    }
    sources
}

/// Deletes the objects of `handoff` (manifest positions of stored objects that are now
/// other boxes' share) that an owner already holds, once that owner holds its content and
/// has settled into the site's current members (viewers are sent to it for its share only
/// then); returns how many went. The rest stay for a later pass: an object leaves this box only once the site has
/// it elsewhere.
pub async fn hand_off(
    fetcher: &Fetcher,
    site: &Arc<Site>,
    stores: &Arc<Stores>,
    manifest: &Arc<Manifest>,
    handoff: &[usize],
) -> u64 {
    let token = site.token();
    let Some(bearer) = token.bearer() else {
        return 0;
    };
    if handoff.is_empty() {
        return 0;
    }
    let mut by_owner: HashMap<String, (Arc<Peer>, Vec<usize>)> = HashMap::new();
    for &index in handoff {
        let object = manifest.get(index);
        for owner in site.peer_owners(object.path, object.copies) {
            by_owner
                .entry(owner.name.clone())
                .or_insert_with(|| (Arc::clone(&owner), Vec::new()))
                .1
                .push(index);
        }
    }
    let mut asks = tokio::task::JoinSet::new();
    let delay = site.hand_off_delay();
    for (_, (owner, objects)) in by_owner {
        let (fetcher, bearer, manifest) = (fetcher.clone(), bearer.clone(), Arc::clone(manifest));
        asks.spawn(async move {
            let (stocked, held) =
                ask_holds(&fetcher, &bearer, &owner, &manifest, &objects, delay).await;
            if stocked { held } else { Vec::new() }
        });
    }
    let mut given_up: HashSet<usize> = HashSet::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok(held) = joined {
            given_up.extend(held);
        }
    }
    let paths: Vec<String> = given_up
        .iter()
        .map(|&index| manifest.get(index).path.to_owned())
        .collect();
    let mut deleted = 0;
    for batch in paths.chunks(DELETE_BATCH) {
        let (stores, batch) = (Arc::clone(stores), batch.to_vec());
        let (removed, error) = tokio::task::spawn_blocking(move || stores.remove_many(&batch))
            .await
            .unwrap_or((0, None));
        deleted += removed;
        if let Some(err) = error {
            tracing::warn!(error = %err, "giving up moved objects failed on a store; they stay");
        }
    }
    tracing::info!(
        given_up = deleted,
        kept = handoff.len() as u64 - deleted,
        "objects now other boxes' share: given up where an owner holds them"
    );
    deleted
}

/// The URL of `path` on `peer`'s site object route.
pub fn object_url(peer: &Peer, path: &str) -> String {
    format!(
        "{}/v1/site/objects/{}",
        peer.admin,
        crate::object_path::to_url_path(path)
    )
}
