//! Hostile peers and mistaken configurations against a site (CONTRACT section 7), found
//! by a hostile review and kept as the tests that show each is handled: peers that lie
//! about what they hold or send wrong bytes, redirects that would carry the site token
//! elsewhere, boxes that disagree on the members, a peer that never answers, a window that
//! ends during a hand-off, and the site routes' authorization.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::origin::Origin;
use common::site::SITE_TOKEN;
use common::*;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tidecache::config::{Config, PeerConfig};
use tidecache::daemon::Daemon;
use tidecache::fill::Received;
use tidecache::schedule::Override;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The members fingerprint a fake peer claims (the box under test's, once it started), so
/// the box takes the fake for a peer that agrees with it.
static MEMBERS: Mutex<String> = Mutex::new(String::new());

fn claim_members_of(daemon: &Daemon) {
    *MEMBERS.lock().unwrap() = daemon.fill().site().unwrap().fingerprint();
}

// ---------------------------------------------------------------- a fake peer

pub struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx)
    }
}

#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the fake answers: status, headers, body chunks, and whether to cut after them.
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub content_length: Option<usize>,
    pub cut: bool,
    pub delay: Duration,
}

impl Answer {
    fn new(status: u16, body: Vec<u8>) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Vec::new(),
            content_length: Some(body.len()),
            body,
            cut: false,
            delay: Duration::ZERO,
        }
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

type Handler = Arc<dyn Fn(Req) -> Option<Answer> + Send + Sync>;

/// A small HTTP server standing for a peer's admin listener. `None` from the handler:
/// never answer.
async fn fake(handler: Handler) -> (SocketAddr, Arc<Mutex<Vec<Req>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (handler, log) = (Arc::clone(&handler), Arc::clone(&log));
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let req = Req {
                                method: parts.method,
                                path: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            log.lock().unwrap().push(req.clone());
                            let Some(answer) = handler(req) else {
                                std::future::pending::<()>().await;
                                unreachable!()
                            };
                            if !answer.delay.is_zero() {
                                tokio::time::sleep(answer.delay).await;
                            }
                            let (sender, receiver) = mpsc::channel(4);
                            let (data, cut) = (Bytes::from(answer.body), answer.cut);
                            tokio::spawn(async move {
                                let _ = sender.send(Ok(Frame::data(data))).await;
                                if cut {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    let _ = sender.send(Err(std::io::Error::other("cut"))).await;
                                }
                            });
                            let mut response = Response::new(ChannelBody(receiver));
                            *response.status_mut() = answer.status;
                            if let Some(length) = answer.content_length {
                                response
                                    .headers_mut()
                                    .insert("content-length", length.into());
                            }
                            for (name, value) in answer.headers {
                                response.headers_mut().insert(name, value.parse().unwrap());
                            }
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A holds answer saying "held" for every object asked about.
fn holds_all(req: &Req) -> Answer {
    let asked: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    let n = asked["objects"].as_array().unwrap().len();
    let body = serde_json::json!({
        "stocked": true, "settled": true, "settled_for_ms": 1u64 << 40,
        "members": MEMBERS.lock().unwrap().clone(), "held": vec![true; n],
    });
    Answer::new(200, body.to_string().into_bytes())
}

/// What a peer that holds everything answers to readiness checks and holds questions;
/// `None` for object requests, which each fake answers its own way.
fn willing_peer(req: &Req) -> Option<Answer> {
    match req.path.as_str() {
        "/readyz" => Some(readyz()),
        "/v1/site/holds" => Some(holds_all(req)),
        _ => None,
    }
}

fn readyz() -> Answer {
    Answer::new(200, b"ready\n".to_vec())
        .header("tidecache-site", "settled")
        .header("tidecache-site-earlier", "none")
        .header("tidecache-site-members", MEMBERS.lock().unwrap().clone())
}

// ---------------------------------------------------------------- boxes

fn objects(n: usize, prefix: &str) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut data = pattern(3000 + i * 11);
            data[0] = i as u8;
            (format!("{prefix}/seg_{i:04}.ts"), data)
        })
        .collect()
}

fn site_config(
    test_box: &TestBox,
    name: &str,
    peers: &[(&str, SocketAddr, SocketAddr)],
    extra: &str,
) -> Config {
    let token = test_box.write_file("site.token", SITE_TOKEN.as_bytes());
    let mut config = test_box.config(
        1,
        &format!(
            "[schedule]\nduring_fill = \"serve\"\ndrain = \"0s\"\n[fill]\nconcurrency = 4\nretry_delay = \"10ms\"\n{extra}[site]\nbox = {name:?}\ntoken_file = {token:?}\ncheck_interval = \"200ms\"\ncheck_timeout = \"500ms\"\n"
        ),
    );
    config.site.as_mut().unwrap().peers = peers
        .iter()
        .map(|(name, viewer, admin)| PeerConfig {
            name: (*name).to_owned(),
            url: format!("http://{viewer}"),
            admin: format!("http://{admin}"),
            weight: 1.0,
        })
        .collect();
    config
}

async fn accept(daemon: &Daemon, manifest: String) {
    daemon
        .fill()
        .accept(Received::Bytes(Bytes::from(manifest)), 1 << 30)
        .await
        .expect("manifest accepted");
}

/// Starts a pass (override fill) and waits for it to be done.
async fn one_pass(daemon: &Daemon, id: &str) -> serde_json::Value {
    let before = admin_status(daemon.admin_addr).await["fill"]["last_fill"]["started_at"].clone();
    daemon.set_override(Override::Fill).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let status = admin_status(daemon.admin_addr).await;
        if status["fill"]["state"] == "done"
            && status["fill"]["manifest_id"] == id
            && status["fill"]["last_fill"]["started_at"] != before
        {
            daemon.set_override(Override::Serve).await.unwrap();
            return status;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// box-a, holding every one of `objects`, with `peer` as its only peer (box-b), the members
/// claimed for the fake peer, the peer seen ready, and manifest "m1" of `objects` accepted
/// (their origin holds them too). The origin and the box's directory live as long as the
/// values returned.
async fn seeded_box_beside(
    peer: SocketAddr,
    objects: &[(String, Vec<u8>)],
) -> (Origin, TestBox, Daemon) {
    let origin = Origin::start().await;
    origin.put_all(objects);
    let test_box = TestBox::new();
    let config = site_config(&test_box, "box-a", &[("box-b", peer, peer)], "");
    seed_all(&config, objects);
    let daemon = start(&config).await;
    claim_members_of(&daemon);
    peers_ready(&daemon).await;
    accept(&daemon, manifest_json("m1", &origin.base_url(), objects)).await;
    (origin, test_box, daemon)
}

async fn peers_ready(daemon: &Daemon) {
    let admin = daemon.admin_addr;
    eventually("peers ready", || async move {
        admin_status(admin).await["site"]["peers"]
            .as_array()
            .is_some_and(|peers| peers.iter().all(|peer| peer["ready"] == true))
    })
    .await;
}

// ---------------------------------------------------------------- the site token

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_fill_never_follows_a_redirect_with_the_site_token() {
    let (elsewhere, elsewhere_seen) = fake(Arc::new(|_| Some(Answer::new(404, Vec::new())))).await;
    let (peer, _) = fake(Arc::new(move |req: Req| {
        willing_peer(&req).or_else(|| {
            // An admin URL that is really a proxy, a viewer port with a fallback, ...
            Some(
                Answer::new(302, Vec::new())
                    .header("location", format!("http://{elsewhere}/collect")),
            )
        })
    }))
    .await;
    let origin = Origin::start().await;
    let objects = objects(12, "leak");
    origin.put_all(&objects);
    let test_box = TestBox::new();
    let config = site_config(&test_box, "box-a", &[("box-b", peer, peer)], "");
    let daemon = start(&config).await;
    accept(&daemon, manifest_json("m1", &origin.base_url(), &objects)).await;
    one_pass(&daemon, "m1").await;
    let leaked: Vec<String> = elsewhere_seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|req| {
            req.headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    println!(
        "requests to the other host carrying Authorization: {}",
        leaked.len()
    );
    assert!(
        leaked.is_empty(),
        "the site token went to another host: {:?}",
        leaked.first()
    );
    daemon.shutdown().await;
}

// ---------------------------------------------------------------- integrity

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lying_peers_never_get_wrong_bytes_stored() {
    let objects = Arc::new(objects(40, "lie"));
    let by_path = {
        let objects = Arc::clone(&objects);
        move |path: &str| {
            objects
                .iter()
                .position(|(p, _)| path.ends_with(p.as_str()))
                .map(|i| (i, objects[i].1.clone()))
        }
    };
    let range_of = |req: &Req| {
        req.headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.strip_suffix('-'))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let lookup_b = by_path.clone();
    // First holder: every answer is wrong one way or another.
    let (peer_b, _) = fake(Arc::new(move |req: Req| {
        if let Some(answer) = willing_peer(&req) {
            return Some(answer);
        }
        let (i, data) = lookup_b(&req.path)?;
        let half = data.len() / 2;
        Some(match i % 5 {
            // Wrong bytes, right length.
            0 => Answer::new(200, data.iter().map(|b| b ^ 0xff).collect()),
            // A wrong first half, then cut.
            1 => {
                let mut answer = Answer::new(200, data[..half].iter().map(|b| b ^ 0x55).collect());
                answer.content_length = Some(data.len());
                answer.cut = true;
                answer
            }
            // A right first half, then cut.
            2 | 3 => {
                let mut answer = Answer::new(200, data[..half].to_vec());
                answer.content_length = Some(data.len());
                answer.cut = true;
                answer
            }
            // Far more than the object, garbage.
            _ => Answer::new(200, vec![7u8; data.len() * 10]),
        })
    }))
    .await;
    let lookup_c = by_path.clone();
    // Second holder: answers resumes wrongly.
    let (peer_c, _) = fake(Arc::new(move |req: Req| {
        if let Some(answer) = willing_peer(&req) {
            return Some(answer);
        }
        let (i, data) = lookup_c(&req.path)?;
        let from = range_of(&req);
        Some(match (i % 5, from) {
            // 206 with the right Content-Range and the right tail (prefix on disk is wrong).
            (1, Some(from)) => Answer::new(206, data[from..].to_vec()).header(
                "content-range",
                format!("bytes {from}-{}/{}", data.len() - 1, data.len()),
            ),
            // 206 claiming the asked offset but sending the object from 0.
            (2, Some(from)) => Answer::new(206, data.clone()).header(
                "content-range",
                format!("bytes {from}-{}/{}", data.len() - 1, data.len()),
            ),
            // 200 (whole) with wrong bytes when a range was asked.
            (3, Some(_)) => Answer::new(200, data.iter().map(|b| b ^ 1).collect()),
            _ => Answer::new(404, Vec::new()),
        })
    }))
    .await;
    let origin = Origin::start().await;
    origin.put_all(&objects);
    let test_box = TestBox::new();
    // copies = 3: this box owns every object; both fake peers "hold" them.
    let mut config = site_config(
        &test_box,
        "box-a",
        &[("box-b", peer_b, peer_b), ("box-c", peer_c, peer_c)],
        "",
    );
    config.site.as_mut().unwrap().copies = 3;
    let daemon = start(&config).await;
    peers_ready(&daemon).await;
    accept(&daemon, manifest_json("m1", &origin.base_url(), &objects)).await;
    let status = one_pass(&daemon, "m1").await;
    println!("fill: {}", status["fill"]);
    let mut wrong = Vec::new();
    for (path, data) in objects.iter() {
        let body = served(daemon.viewer_addrs[0], &format!("/{path}")).await;
        if &body != data {
            wrong.push(path.clone());
        }
    }
    assert!(wrong.is_empty(), "served wrong bytes for {wrong:?}");
    daemon.shutdown().await;
}

// ---------------------------------------------------------------- members

/// Two boxes whose configurations disagree (box-b calls itself "box-bee" while box-a lists
/// it as "box-b"; the same happens with a weight changed on one box only). Both held every
/// object (a copies = 2 manifest before). Each computes that the other owns part of the
/// objects; the other's answer carries another members fingerprint, so neither gives
/// anything up, and no object ends on no box.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boxes_that_disagree_on_the_members_give_nothing_up() {
    let objects = objects(200, "both");
    let origin = Origin::start().await;
    origin.put_all(&objects);
    let (box_a, box_b) = (TestBox::new(), TestBox::new());
    // Placeholder addresses first: the daemons need each other's ports.
    let dummy: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config_a = site_config(&box_a, "box-a", &[("box-b", dummy, dummy)], "");
    let config_b = site_config(&box_b, "box-bee", &[("box-a", dummy, dummy)], "");
    seed_all(&config_a, &objects);
    seed_all(&config_b, &objects);
    let (mut config_a, mut config_b) = (config_a, config_b);
    let daemon_a = start(&config_a).await;
    let daemon_b = start(&config_b).await;
    config_a.site.as_mut().unwrap().peers[0].url = format!("http://{}", daemon_b.viewer_addrs[0]);
    config_a.site.as_mut().unwrap().peers[0].admin = format!("http://{}", daemon_b.admin_addr);
    config_b.site.as_mut().unwrap().peers[0].url = format!("http://{}", daemon_a.viewer_addrs[0]);
    config_b.site.as_mut().unwrap().peers[0].admin = format!("http://{}", daemon_a.admin_addr);
    daemon_a.reload(&config_a).unwrap();
    daemon_b.reload(&config_b).unwrap();
    let manifest = manifest_json("m1", &origin.base_url(), &objects);
    accept(&daemon_a, manifest.clone()).await;
    accept(&daemon_b, manifest).await;
    for round in 0..3 {
        let (a, b) = tokio::join!(one_pass(&daemon_a, "m1"), one_pass(&daemon_b, "m1"));
        println!(
            "round {round}: a deleted {}, b deleted {}",
            a["fill"]["last_fill"]["deleted"], b["fill"]["last_fill"]["deleted"]
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let nowhere: Vec<&String> = objects
        .iter()
        .map(|(path, _)| path)
        .filter(|path| {
            daemon_a.stores.lookup(path).is_none() && daemon_b.stores.lookup(path).is_none()
        })
        .collect();
    println!(
        "a holds {}, b holds {}, on no box: {}",
        daemon_a.stores.object_count(),
        daemon_b.stores.object_count(),
        nowhere.len()
    );
    // What a viewer gets for one of them from box-a: redirect, then 404 at box-b.
    if let Some(path) = nowhere.first() {
        let first = get(daemon_a.viewer_addrs[0], &format!("/{path}")).await;
        println!(
            "viewer at box-a: {} {:?}",
            first.status(),
            first.headers().get("location")
        );
    }
    assert!(
        nowhere.is_empty(),
        "{} objects are on no box",
        nowhere.len()
    );
    daemon_a.shutdown().await;
    daemon_b.shutdown().await;
}

// ---------------------------------------------------------------- liveness

async fn silent_listener() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A peer that accepts TCP and never answers (a hung box): once its readiness checks found
/// it out, a pass does not ask it and goes to the origin; this box owns every object
/// (copies = 2 of 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_peer_is_passed_over_by_a_pass() {
    let silent = silent_listener().await;
    let objects = objects(16, "silent");
    let origin = Origin::start().await;
    origin.put_all(&objects);
    let test_box = TestBox::new();
    let mut config = site_config(&test_box, "box-a", &[("box-b", silent, silent)], "");
    config.site.as_mut().unwrap().copies = 2;
    let daemon = start(&config).await;
    let admin = daemon.admin_addr;
    eventually("the silent peer is found out", || async move {
        admin_status(admin).await["site"]["peers"][0]["reachable"] == false
    })
    .await;
    let status = admin_status(daemon.admin_addr).await;
    println!("peers: {}", status["site"]["peers"]);
    let waits_for_b = objects
        .iter()
        .filter(|(path, _)| {
            let site = daemon.fill().site().unwrap();
            matches!(
                site.ranking(path).first(),
                Some(tidecache::site::Member::Peer(_))
            )
        })
        .count();
    accept(&daemon, manifest_json("m1", &origin.base_url(), &objects)).await;
    let started = Instant::now();
    one_pass(&daemon, "m1").await;
    let took = started.elapsed();
    println!(
        "{} objects, {waits_for_b} ranked first on the silent peer; pass took {took:?}",
        objects.len()
    );
    assert!(
        took < Duration::from_secs(3),
        "a pass of 16 small objects took {took:?}"
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_peer_does_not_hold_up_shutdown() {
    let silent = silent_listener().await;
    let objects = objects(16, "stop");
    let origin = Origin::start().await;
    origin.put_all(&objects);
    let test_box = TestBox::new();
    let config = site_config(&test_box, "box-a", &[("box-b", silent, silent)], "");
    let daemon = start(&config).await;
    accept(&daemon, manifest_json("m1", &origin.base_url(), &objects)).await;
    daemon.set_override(Override::Fill).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = admin_status(daemon.admin_addr).await;
    println!("fill before stop: {}", status["fill"]["state"]);
    let started = Instant::now();
    daemon.shutdown().await;
    let took = started.elapsed();
    println!("shutdown took {took:?}");
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

/// The window ends (mode back to serving) while the hand-off waits for a slow owner's
/// answer: nothing is deleted afterwards, while serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_object_is_given_up_after_the_window_ended() {
    let asked = Arc::new(AtomicU64::new(0));
    let asked_in = Arc::clone(&asked);
    let (peer, _) = fake(Arc::new(move |req: Req| {
        Some(if req.path == "/readyz" {
            readyz()
        } else if req.path == "/v1/site/holds" {
            asked_in.fetch_add(1, Ordering::SeqCst);
            let mut answer = holds_all(&req);
            answer.delay = Duration::from_secs(4);
            answer
        } else {
            Answer::new(404, Vec::new())
        })
    }))
    .await;
    let objects = objects(100, "late");
    let (_origin, _test_box, daemon) = seeded_box_beside(peer, &objects).await;
    daemon.set_override(Override::Fill).await.unwrap();
    let counter = Arc::clone(&asked);
    eventually("holds asked", || {
        let counter = Arc::clone(&counter);
        async move { counter.load(Ordering::SeqCst) > 0 }
    })
    .await;
    daemon.set_override(Override::Serve).await.unwrap();
    let at_switch = daemon.stores.object_count();
    let status = admin_status(daemon.admin_addr).await;
    println!("mode {} holding {at_switch}", status["mode"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = admin_status(daemon.admin_addr).await;
    let later = daemon.stores.object_count();
    println!("mode {} holding {later}", status["mode"]);
    assert_eq!(status["mode"], "serving");
    assert_eq!(later, at_switch, "objects deleted while serving");
    daemon.shutdown().await;
}

/// A peer that holds every object, has settled and agrees, but still keeps the members
/// before the site's last change (`Tidecache-Site-Earlier: kept`, or says nothing of them,
/// as a box of an older version) may send viewers to where moved objects were: this box
/// gives it nothing up until it says `none`, then gives up its share at the next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_given_up_while_a_peer_keeps_earlier_members() {
    let earlier = Arc::new(Mutex::new(Some("kept")));
    let said = Arc::clone(&earlier);
    let (peer, _) = fake(Arc::new(move |req: Req| {
        if req.path == "/readyz" {
            let answer = Answer::new(200, b"ready\n".to_vec())
                .header("tidecache-site", "settled")
                .header("tidecache-site-members", MEMBERS.lock().unwrap().clone());
            return Some(match *said.lock().unwrap() {
                Some(earlier) => answer.header("tidecache-site-earlier", earlier),
                None => answer,
            });
        }
        willing_peer(&req).or(Some(Answer::new(404, Vec::new())))
    }))
    .await;
    let objects = objects(60, "earlier");
    let (_origin, _test_box, daemon) = seeded_box_beside(peer, &objects).await;
    let mine = objects
        .iter()
        .filter(|(path, _)| daemon.fill().site().unwrap().is_mine(path, 0))
        .count();
    for (what, says) in [("keeps them", Some("kept")), ("says nothing of them", None)] {
        *earlier.lock().unwrap() = says;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let status = one_pass(&daemon, "m1").await;
        println!(
            "peer {what}: deleted {}, holding {} of {}, moves over {}",
            status["fill"]["last_fill"]["deleted"],
            daemon.stores.object_count(),
            objects.len(),
            status["site"]["moves_over"]
        );
        assert_eq!(status["site"]["moves_over"], false);
        assert_eq!(daemon.stores.object_count(), objects.len());
    }
    *earlier.lock().unwrap() = Some("none");
    let admin = daemon.admin_addr;
    eventually("the change is over", || async move {
        admin_status(admin).await["site"]["moves_over"] == true
    })
    .await;
    let status = one_pass(&daemon, "m1").await;
    println!(
        "peer keeps none: deleted {}, holding {} ({mine} of them this box's share)",
        status["fill"]["last_fill"]["deleted"],
        daemon.stores.object_count()
    );
    assert_eq!(daemon.stores.object_count(), mine);
    daemon.shutdown().await;
}

// ---------------------------------------------------------------- redirects

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_go_only_to_owners_and_bounce_once() {
    let (peer, _) = fake(Arc::new(|req: Req| {
        Some(if req.path == "/readyz" {
            readyz()
        } else {
            Answer::new(404, Vec::new())
        })
    }))
    .await;
    let objects = objects(40, "redir");
    let origin = Origin::start().await;
    // The origin has none of them: this box's fill fails its share.
    let test_box = TestBox::new();
    let config = site_config(&test_box, "box-a", &[("box-b", peer, peer)], "");
    let daemon = start(&config).await;
    claim_members_of(&daemon);
    accept(&daemon, manifest_json("m1", &origin.base_url(), &objects)).await;
    peers_ready(&daemon).await;
    let admin = daemon.admin_addr;
    eventually("the peer agrees on the members", || async move {
        admin_status(admin).await["site"]["peers"][0]["agrees"] == true
    })
    .await;
    let viewer = daemon.viewer_addrs[0];
    let site = Arc::clone(daemon.fill().site().unwrap());
    let mine = objects
        .iter()
        .find(|(path, _)| site.is_mine(path, 0))
        .unwrap();
    let show = |what: &str, response: &reqwest::Response| {
        println!(
            "{what}: {} {:?}",
            response.status(),
            response
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_owned())
        );
    };
    let theirs = objects
        .iter()
        .find(|(path, _)| !site.is_mine(path, 0))
        .unwrap();
    let own = get(viewer, &format!("/{}", mine.0)).await;
    show("this box's own share, not held", &own);
    let redirected = get(viewer, &format!("/{}?a=1&b=%20x", theirs.0)).await;
    show("the peer's share", &redirected);
    assert_eq!(redirected.status(), 302);
    let location = redirected.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        location.ends_with(&format!("/{}?a=1&b=%20x&tidecache-hop=1", theirs.0)),
        "{location}"
    );
    for query in [
        "?a=1&b=%20x",
        "?tidecache-hop",
        "?TIDECACHE-HOP=1",
        "?tidecache%2Dhop=1",
        "?tidecache-hop=0",
        "?",
        "?x=1&tidecache-hop=1&tidecache-hop=1",
    ] {
        let answer = get(viewer, &format!("/{}{query}", theirs.0)).await;
        show(query, &answer);
        // Never two hop marks: a marked request is not redirected again, an unmarked one
        // gets exactly one.
        if let Some(location) = answer.headers().get("location") {
            let location = location.to_str().unwrap();
            assert_eq!(location.matches("tidecache-hop=1").count(), 1, "{location}");
            assert!(!query.contains("tidecache-hop"), "{query} redirected again");
        }
    }
    let head = client()
        .head(url(viewer, &format!("/{}", theirs.0)))
        .send()
        .await
        .unwrap();
    show("HEAD", &head);
    assert_eq!(head.status(), 302);
    daemon.shutdown().await;
    assert_eq!(
        own.status(),
        404,
        "an owner's miss goes to no box that is not an owner"
    );
}

// ---------------------------------------------------------------- authorization

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn site_routes_auth_and_paths() {
    let objects = objects(4, "auth");
    let test_box = TestBox::new();
    let dummy: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = site_config(&test_box, "box-a", &[("box-b", dummy, dummy)], "");
    seed_all(&config, &objects);
    let daemon = start(&config).await;
    let admin = daemon.admin_addr;
    let c = client();
    let path = &objects[0].0;
    let mut lines = Vec::new();
    for (what, auth) in [
        ("none", None),
        ("wrong", Some("Bearer wrong-wrong-wrong-wrong")),
        ("lowercase bearer", Some(&*format!("bearer {SITE_TOKEN}"))),
        ("right", Some(&*format!("Bearer {SITE_TOKEN}"))),
    ] {
        for target in [
            format!("/v1/site/objects/{path}"),
            "/v1/site/objects/..%2f..%2fetc%2fpasswd".to_owned(),
            "/v1/site/objects/%2e%2e/%2e%2e/state/site-settled".to_owned(),
            "/v1/site/objects//etc/passwd".to_owned(),
            format!("/v1/site/objects/{}", "a/".repeat(3000)),
            "/v1/site/objects/".to_owned(),
            "/v1/site/other".to_owned(),
        ] {
            let mut request = c.get(format!("http://{admin}{target}"));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            if auth != Some(&*format!("Bearer {SITE_TOKEN}")) {
                // 404 only where the client's URL parser resolved `%2e%2e` out of the route.
                assert!(status == 401 || status == 404, "{what} {target}: {status}");
            }
            if target == format!("/v1/site/objects/{path}") && what == "right" {
                assert_eq!(status, 200);
            }
            assert!(
                status != 500 && status != 200 || target.ends_with(path.as_str()),
                "{what} {target}: {status}"
            );
            let body = response.bytes().await.unwrap();
            lines.push(format!(
                "{what:>16} GET {:.60} -> {status} {:?}",
                target,
                String::from_utf8_lossy(&body[..body.len().min(80)])
            ));
        }
        let mut request = c
            .post(format!("http://{admin}/v1/site/holds"))
            .body(format!(
                r#"{{"objects":[{{"path":"{path}","sha256":"{}"}}]}}"#,
                sha256_hex(&objects[0].1)
            ));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert_eq!(status == 200, what == "right", "{what}: holds {status}");
        lines.push(format!(
            "{what:>16} POST holds -> {} {}",
            status,
            response.text().await.unwrap()
        ));
    }
    for line in lines {
        println!("{line}");
    }
    daemon.shutdown().await;
    // A box without [site].
    let plain = TestBox::new();
    let config = plain.config(1, "");
    let daemon = start(&config).await;
    let response = c
        .get(format!("http://{}/v1/site/objects/x.ts", daemon.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    println!(
        "no [site]: {} {}",
        response.status(),
        response.text().await.unwrap()
    );
    let response = c
        .get(format!("http://{}/v1/popularity", daemon.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    println!(
        "/v1/popularity: {} {}",
        response.status(),
        response.text().await.unwrap()
    );
    daemon.shutdown().await;
}

/// The same redirect with no malicious party: box-a's `[[site.peer]] admin` is box-b's
/// viewer port by mistake, and box-b has a `fallback_url` (a CDN, say); the token stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swapped_admin_url_does_not_send_the_site_token_to_the_fallback_host() {
    let (cdn, cdn_seen) = fake(Arc::new(|_| Some(Answer::new(404, Vec::new())))).await;
    let origin = Origin::start().await;
    let objects = objects(12, "swap");
    origin.put_all(&objects);
    let box_b = TestBox::new();
    let config_b = box_b.config(1, &format!("[schedule]\nfallback_url = \"http://{cdn}\"\n"));
    let daemon_b = start(&config_b).await;
    let b_viewer = daemon_b.viewer_addrs[0];
    let test_box = TestBox::new();
    let mut config = site_config(&test_box, "box-a", &[("box-b", b_viewer, b_viewer)], "");
    config.site.as_mut().unwrap().copies = 2;
    let daemon = start(&config).await;
    accept(&daemon, manifest_json("m1", &origin.base_url(), &objects)).await;
    one_pass(&daemon, "m1").await;
    let leaked: Vec<(String, String)> = cdn_seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|req| {
            req.headers
                .get("authorization")
                .map(|v| (req.path.clone(), v.to_str().unwrap().to_owned()))
        })
        .collect();
    println!(
        "the fallback host got {} requests with Authorization, e.g. {:?}",
        leaked.len(),
        leaked.first()
    );
    assert!(leaked.is_empty());
    daemon.shutdown().await;
    daemon_b.shutdown().await;
}

/// A first owner asked about the objects a later owner waits for: one holds request per
/// poll, no request per object, no temp file per ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_for_a_first_owner_costs_one_request_per_poll() {
    let gets = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&gets);
    let (peer, _) = fake(Arc::new(move |req: Req| {
        Some(if req.path == "/readyz" {
            readyz()
        } else if req.path == "/v1/site/holds" {
            let asked: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            let n = asked["objects"].as_array().unwrap().len();
            Answer::new(200, serde_json::json!({"stocked": true, "settled": true, "settled_for_ms": 0, "held": vec![false; n]}).to_string().into_bytes())
        } else {
            counted.fetch_add(1, Ordering::SeqCst);
            Answer::new(503, Vec::new()).header("retry-after", "1")
        })
    }))
    .await;
    let objects = objects(400, "wait");
    let origin = Origin::start().await;
    origin.put_all(&objects);
    let test_box = TestBox::new();
    let mut config = site_config(&test_box, "box-a", &[("box-b", peer, peer)], "");
    config.site.as_mut().unwrap().copies = 2;
    let daemon = start(&config).await;
    accept(&daemon, manifest_json("m1", &origin.base_url(), &objects)).await;
    daemon.set_override(Override::Fill).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = gets.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = gets.load(Ordering::SeqCst);
    let tmp: usize = walk(&test_box.store_path(0));
    let status = admin_status(daemon.admin_addr).await;
    println!(
        "first-owner GETs: {} per second; files under the store: {tmp}; fill {}/{}",
        (after - before) / 5,
        status["fill"]["objects_done"],
        status["fill"]["objects_total"]
    );
    // Waiting costs one holds request per first owner every 2 s, never a request per
    // object; a first owner that neither holds nor will store them sends them to the origin.
    assert!(after - before <= 2, "{} object GETs in 5 s", after - before);
    let admin = daemon.admin_addr;
    eventually("the pass is done from the origin", || async move {
        admin_status(admin).await["fill"]["state"] == "done"
    })
    .await;
    assert!(
        tmp <= objects.len() + 10,
        "{tmp} files for {} objects",
        objects.len()
    );
    daemon.shutdown().await;
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    if entry.file_type().unwrap().is_dir() {
                        walk(&entry.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
