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
const HOLDS_TIMEOUT: Duration = Duration::from_secs(5);
/// Deletes per journal fsync when giving objects up.
const DELETE_BATCH: usize = 256;

/// Where the objects of a pass are fetched from before the origin.
#[derive(Debug, Default)]
pub struct PeerPlan {
    /// For objects some peers hold (with the manifest's sha256): those peers,
    /// best-ranked first.
    pub holders: HashMap<usize, Vec<Arc<Peer>>>,
    /// Objects this box is a later owner of that no peer holds yet: the first owner to wait
    /// for (it fetches them from the origin, and this box from it, so they cross the
    /// transit once).
    pub waits: HashMap<usize, Arc<Peer>>,
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
    #[serde(default)]
    members: String,
    held: Vec<bool>,
    #[serde(default)]
    coming: Vec<bool>,
    #[serde(default)]
    manifest_id: Option<String>,
}

/// What a peer said of a list of objects.
#[derive(Debug, Default)]
pub struct Holds {
    /// It holds its content, has settled into the members (for at least the time asked)
    /// and agrees with this box on them: an object it owns and holds can be given up.
    pub takes_over: bool,
    /// It sees the same members as this box.
    pub agrees: bool,
    /// The positions it holds.
    pub held: Vec<usize>,
    /// The positions it does not hold but its pass under way may still store.
    pub coming: Vec<usize>,
    /// The id of the manifest in force there.
    pub manifest_id: Option<String>,
}

/// Asks `peer` which of `objects` (manifest positions) it holds; `Err` with why when it
/// cannot be asked or answers something else than a holds answer for them.
pub async fn ask_holds(
    fetcher: &Fetcher,
    site: &Site,
    peer: &Peer,
    manifest: &Manifest,
    objects: &[usize],
    settled_for: Duration,
) -> Result<Holds, String> {
    let token = site.token();
    let bearer = token
        .bearer()
        .ok_or_else(|| "no site token to ask with".to_owned())?;
    let members = site.fingerprint();
    let url = format!("{}/v1/site/holds", peer.admin);
    let mut holds = Holds {
        takes_over: true,
        agrees: true,
        ..Holds::default()
    };
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
        let body =
            serde_json::to_vec(&HoldsQuery { objects: &asked }).map_err(|err| err.to_string())?;
        let bytes = fetcher
            .post_peer(&url, &bearer, body, HOLDS_ANSWER_LIMIT, HOLDS_TIMEOUT)
            .await
            .map_err(|err| err.to_string())?;
        let answer: HoldsAnswer =
            serde_json::from_slice(&bytes).map_err(|err| format!("not a holds answer: {err}"))?;
        if answer.held.len() != batch.len()
            || (!answer.coming.is_empty() && answer.coming.len() != batch.len())
        {
            return Err("a holds answer that does not match the question".to_owned());
        }
        holds.takes_over &= answer.stocked
            && answer.settled
            && Duration::from_millis(answer.settled_for_ms) >= settled_for
            && answer.members == members;
        holds.agrees &= answer.members == members;
        holds.manifest_id = answer.manifest_id;
        for (position, &index) in batch.iter().enumerate() {
            if answer.held[position] {
                holds.held.push(index);
            } else if answer.coming.get(position).copied().unwrap_or(false) {
                holds.coming.push(index);
            }
        }
    }
    Ok(holds)
}

/// The peers to try for each of `fetches` before the origin, and the first owners to wait
/// for. The reachable peers are asked at once, each within [`HOLDS_TIMEOUT`]; one that does
/// not answer, or sees other members, is passed over (not waited for).
pub async fn plan_sources(
    fetcher: &Fetcher,
    site: &Arc<Site>,
    manifest: &Arc<Manifest>,
    fetches: &[usize],
) -> PeerPlan {
    if fetches.is_empty() || site.token().bearer().is_none() {
        return PeerPlan::default();
    }
    let fetches: Arc<Vec<usize>> = Arc::new(fetches.to_vec());
    let mut asks = tokio::task::JoinSet::new();
    // A peer is asked unless several readiness checks in a row got no answer (a box busy
    // filling may miss one check's timeout and still answer this); a silent one that was
    // not yet found out costs HOLDS_TIMEOUT once.
    for peer in site.peers().into_iter().filter(|peer| peer.is_reachable()) {
        let (fetcher, site) = (fetcher.clone(), Arc::clone(site));
        let (manifest, fetches) = (Arc::clone(manifest), Arc::clone(&fetches));
        asks.spawn(async move {
            let asked = ask_holds(&fetcher, &site, &peer, &manifest, &fetches, Duration::ZERO).await;
            if let Err(err) = &asked {
                tracing::warn!(peer = %peer.name, error = %err, "cannot ask a site peer what it holds; taken as holding nothing");
            }
            (peer.name.clone(), asked)
        });
    }
    let mut held_by: HashMap<usize, HashSet<String>> = HashMap::new();
    // Peers that answered and agree on the members, as of now (their readiness checks may
    // lag a reload): a later owner waits only for such a first owner.
    let mut agreeing: HashSet<String> = HashSet::new();
    while let Some(joined) = asks.join_next().await {
        let Ok((name, Ok(holds))) = joined else {
            continue;
        };
        if holds.agrees {
            agreeing.insert(name.clone());
        }
        for index in holds.held {
            held_by.entry(index).or_default().insert(name.clone());
        }
    }
    let mut plan = PeerPlan::default();
    for &index in fetches.iter() {
        let object = manifest.get(index);
        let ranking = site.ranking(object.path);
        if let Some(names) = held_by.get(&index) {
            let holders: Vec<Arc<Peer>> = ranking
                .iter()
                .filter_map(|member| match member {
                    Member::Peer(peer) if names.contains(&peer.name) => Some(Arc::clone(peer)),
                    _ => None,
                })
                .collect();
            plan.holders.insert(index, holders);
            continue;
        }
        // A later owner waits for the first owner, when that box answered and agrees on
        // who owns what; otherwise it goes to the origin itself.
        if let Some(Member::Peer(first)) = ranking.first() {
            if agreeing.contains(&first.name) {
                plan.waits.insert(index, Arc::clone(first));
            }
        }
    }
    tracing::info!(
        fetches = fetches.len(),
        from_peers = plan.holders.len(),
        waiting_for_first_owners = plan.waits.len(),
        "peers asked what they hold"
    );
    plan
}

/// Deletes the objects of `handoff` (manifest positions of stored objects that are now
/// other boxes' share) that an owner holds, once that owner holds its content, has been
/// settled into the members for [`Site::hand_off_delay`] and agrees with this box on them
/// (viewers are sent to it for its share only then), and only once the site's last change
/// is over on every box, or while this box is short of room for its share
/// ([`Site::may_give_up`]); returns how many went. Deletes stop as soon as `filling` says
/// the window ended: a serving box writes nothing. The rest stay for a later pass: an
/// object leaves this box only once the site has it elsewhere.
pub async fn hand_off(
    fetcher: &Fetcher,
    site: &Arc<Site>,
    stores: &Arc<Stores>,
    manifest: &Arc<Manifest>,
    handoff: &[usize],
    filling: &(dyn Fn() -> bool + Sync),
) -> u64 {
    if handoff.is_empty() || site.token().bearer().is_none() {
        return 0;
    }
    if !site.may_give_up(&manifest.id) {
        tracing::info!(
            kept = handoff.len(),
            "objects now other boxes' share stay until every box of the site has settled into its members and forgotten the earlier ones"
        );
        return 0;
    }
    let mut by_owner: HashMap<String, (Arc<Peer>, Vec<usize>)> = HashMap::new();
    for &index in handoff {
        let object = manifest.get(index);
        // The list was made when the pass began; a reload since may have made the object
        // this box's own again (found by review: given up, then redirected here).
        if site.is_mine(object.path, object.copies) {
            continue;
        }
        for owner in site.peer_owners(object.path, object.copies) {
            if !owner.is_reachable() {
                continue;
            }
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
        let (fetcher, site, manifest) = (fetcher.clone(), Arc::clone(site), Arc::clone(manifest));
        asks.spawn(async move {
            match ask_holds(&fetcher, &site, &owner, &manifest, &objects, delay).await {
                Ok(holds) if holds.takes_over => holds.held,
                Ok(_) => Vec::new(),
                Err(err) => {
                    tracing::warn!(peer = %owner.name, error = %err, "cannot ask a site peer what it holds; nothing is given up to it");
                    Vec::new()
                }
            }
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
        .map(|&index| manifest.get(index))
        .filter(|object| !site.is_mine(object.path, object.copies))
        .map(|object| object.path.to_owned())
        .collect();
    let mut deleted = 0;
    for batch in paths.chunks(DELETE_BATCH) {
        if !filling() {
            tracing::info!("the fill window ended: giving up moved objects waits for the next");
            break;
        }
        if !site.may_give_up(&manifest.id) {
            tracing::info!(
                "the site's members changed, or a box has not settled into them: giving up moved objects waits"
            );
            break;
        }
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
