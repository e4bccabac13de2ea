//! `nodens hub` and the agents' `hub` source (DESIGN §5), over real sockets
//! on 127.0.0.1: hubs watch the fake API server (support::kube_api) through
//! a real `kube::Client`; agents are the `hub` source on their own index, or
//! a whole `nodens serve` answering over UDP. Tests poll for convergence.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodens::cluster::codec::{Frame, FrameReader, Objects};
use nodens::cluster::index::{IndexHandle, Snapshot};
use nodens::cluster::model::Change;
use nodens::cluster::source::hub::{FallbackSettings, HubSettings, SubscribeError, Subscription};
use nodens::config::{Config, SourceKind};
use nodens::hub::{Hub, HubSource};
use nodens::metrics::HubMetrics;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::hub_agent::{start_hub, Agent};
use crate::support::kube_api::{endpoint_slice, headless_service, service, FakeKubeApi, Resource};
use crate::support::server::holds_within as eventually;
use crate::support::server::{self, http_get, metric, Nodens};
use crate::support::upstream::{build_query, udp_exchange};

const CONVERGE: Duration = Duration::from_secs(15);

/// A hub's config: ephemeral ports, fast heartbeats, `history` deltas kept.
fn hub_config(history: usize) -> Config {
    let mut c = Config::default();
    c.hub.listen = "127.0.0.1:0".parse().unwrap();
    c.hub.admin = "127.0.0.1:0".parse().unwrap();
    c.hub.heartbeat = Duration::from_millis(200);
    c.hub.history = history;
    c
}

fn settings(addrs: Vec<SocketAddr>) -> HubSettings {
    HubSettings {
        addrs,
        token: None,
        timeout: Duration::from_secs(2),
        fallback: None,
        tls: None,
    }
}

/// The tables queries read, with PTR lists in a canonical order.
fn tables(index: &IndexHandle) -> Snapshot {
    let mut s = Snapshot::clone(&index.load());
    for (_, list) in s.ptr.iter_mut() {
        let mut v = list.to_vec();
        v.sort_by(|a, b| (&a.service, &a.endpoint).cmp(&(&b.service, &b.endpoint)));
        *list = v.into();
    }
    s
}

/// Same services, namespaces and PTR tables (versions differ: each index counts its own).
fn same(a: &IndexHandle, b: &IndexHandle) -> bool {
    let (a, b) = (tables(a), tables(b));
    a.services == b.services && a.namespaces == b.namespaces && a.ptr == b.ptr && a.endpoint_count == b.endpoint_count
}

fn snapshots_sent(m: &HubMetrics, reason: &str) -> u64 {
    m.snapshots_sent.with_label_values(&[reason]).get()
}

fn cluster() -> Vec<serde_json::Value> {
    vec![
        service("default", "kubernetes", &["10.96.0.1"]),
        service("shop", "web", &["10.96.0.5", "fd00::5"]),
        headless_service("shop", "db"),
        endpoint_slice("shop", "db-a", "db", &["10.1.0.1", "10.1.0.2"]),
    ]
}

/// A port nothing listens on.
async fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_follows_the_hub_through_creates_updates_and_deletes() {
    let api = FakeKubeApi::start(cluster()).await;
    let hub = start_hub(&api, &hub_config(1000)).await;
    let agent = Agent::start(settings(vec![hub.listen_addr()]));
    assert!(eventually(CONVERGE, || agent.index.is_synced()).await);
    assert!(same(hub.index(), &agent.index));
    assert_eq!(agent.index.load().services.len(), 3);

    api.create(service("shop", "cart", &["10.96.0.7"]));
    api.create(endpoint_slice("shop", "db-b", "db", &["10.1.0.3", "fd00::1:3"]));
    api.update(service("shop", "web", &["10.96.0.50"]));
    api.update(endpoint_slice("shop", "db-a", "db", &["10.1.0.9"]));
    api.delete(Resource::Services, "default", "kubernetes");
    api.create(headless_service("other", "peers"));
    api.create(endpoint_slice("other", "peers-1", "peers", &["10.2.0.1"]));
    api.delete(Resource::EndpointSlices, "other", "peers-1");
    // Every change is in (services and slices come on separate watches, so
    // wait for the last of each kind, not for one of them).
    assert!(
        eventually(CONVERGE, || {
            let hub = hub.index().load();
            hub.services.len() == 4
                && !hub.ptr.contains_key(&ip("10.2.0.1"))
                && hub.ptr.contains_key(&ip("fd00::1:3"))
                && !hub.ptr.contains_key(&ip("10.1.0.1"))
                && hub.ptr.contains_key(&ip("10.96.0.50"))
        })
        .await
    );
    assert!(eventually(CONVERGE, || same(hub.index(), &agent.index)).await);
    let snap = agent.index.load();
    assert!(snap.ptr.contains_key(&ip("10.96.0.50")) && !snap.ptr.contains_key(&ip("10.96.0.5")));
    assert!(snap.ptr.contains_key(&ip("fd00::1:3")) && !snap.ptr.contains_key(&ip("10.1.0.1")));
    assert!(!snap.namespaces.contains_key(&b"\x07default"[..]));

    // One snapshot, then deltas only; the stream's bytes as the hub counted them.
    assert_eq!(agent.frames("snapshot"), 1);
    assert!(agent.frames("delta") >= 1);
    let m = hub.metrics();
    assert_eq!(snapshots_sent(m, "new"), 1);
    assert_eq!(m.subscribers.get(), 1);
    let sent = || -> u64 {
        ["snapshot", "delta", "heartbeat"]
            .iter()
            .map(|k| m.bytes_sent.with_label_values(&[k]).get())
            .sum()
    };
    assert!(
        eventually(CONVERGE, || agent.metrics.hub.bytes.get() == sent()).await,
        "every byte sent is received and counted: {} vs {}",
        agent.metrics.hub.bytes.get(),
        sent()
    );
    assert!(agent.metrics.hub.staleness.get() < 1.0);
    assert_eq!(agent.metrics.hub.connected.get(), 1);
    agent.stop().await;
    hub.shutdown().await;
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Reads frames until `stop` says so; returns them.
async fn read_until(sub: &mut Subscription, mut stop: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let (f, _) = tokio::time::timeout(CONVERGE, sub.next())
            .await
            .expect("a frame in time")
            .expect("a frame");
        let done = stop(&f);
        frames.push(f);
        if done {
            return frames;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_in_the_history_gets_only_the_missed_deltas_else_a_snapshot() {
    let api = FakeKubeApi::start(cluster()).await;
    let hub = start_hub(&api, &hub_config(4)).await;
    let addr = hub.listen_addr();

    let mut first = Subscription::open(addr, None, None).await.unwrap();
    let frames = read_until(&mut first, |f| matches!(f, Frame::Snapshot(_))).await;
    let Frame::Snapshot(s) = &frames[0] else {
        panic!("{frames:?}")
    };
    let (origin, at) = (s.origin, s.version);
    drop(first);

    for i in 0..3 {
        api.create(service("more", &format!("s{i}"), &["10.96.1.1"]));
    }
    let target = at + 3;
    assert!(eventually(CONVERGE, || hub.feed().version() >= target).await);

    // Resume: an acknowledgement, then exactly the three deltas.
    let mut resumed = Subscription::open(addr, None, Some((origin, at))).await.unwrap();
    let frames = read_until(
        &mut resumed,
        |f| matches!(f, Frame::Delta { version, .. } if *version >= target),
    )
    .await;
    assert_eq!(frames[0], Frame::Heartbeat { origin, version: at });
    let deltas: Vec<&Vec<Change>> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Delta { changes, .. } => Some(changes),
            _ => None,
        })
        .collect();
    assert_eq!(deltas.iter().map(|c| c.len()).sum::<usize>(), 3);
    assert!(!frames.iter().any(|f| matches!(f, Frame::Snapshot(_))));
    assert_eq!(snapshots_sent(hub.metrics(), "new"), 1);
    drop(resumed);

    // Five more: the history (4 deltas) no longer reaches back to `target`.
    for i in 3..8 {
        api.create(service("more", &format!("s{i}"), &["10.96.1.1"]));
    }
    assert!(eventually(CONVERGE, || hub.feed().version() >= target + 5).await);
    let mut behind = Subscription::open(addr, None, Some((origin, target))).await.unwrap();
    let frames = read_until(&mut behind, |f| matches!(f, Frame::Snapshot(_))).await;
    let Frame::Snapshot(s) = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(s.services.len(), 3 + 8);
    assert_eq!(snapshots_sent(hub.metrics(), "behind"), 1);

    // Another origin (another hub, or this one before a restart): a snapshot.
    let mut other = Subscription::open(addr, None, Some((origin ^ 1, target)))
        .await
        .unwrap();
    read_until(&mut other, |f| matches!(f, Frame::Snapshot(_))).await;
    assert_eq!(snapshots_sent(hub.metrics(), "origin"), 1);
    hub.shutdown().await;
}

/// A TCP proxy the test can cut and hold down, between an agent and a hub.
struct Proxy {
    addr: SocketAddr,
    down: Arc<Mutex<bool>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(Mutex::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (d, c) = (down.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *d.lock().unwrap() {
                    continue; // dropped: the agent sees the connection closed
                }
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Proxy {
            addr,
            down,
            connections,
            task,
        }
    }

    /// Cuts every connection and refuses new ones until `up`.
    fn cut(&self) {
        *self.down.lock().unwrap() = true;
        self.connections.lock().unwrap().drain(..).for_each(|c| c.abort());
    }

    fn up(&self) {
        *self.down.lock().unwrap() = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_lost_its_hub_resumes_with_the_deltas_it_missed() {
    let api = FakeKubeApi::start(cluster()).await;
    let hub = start_hub(&api, &hub_config(1000)).await;
    let proxy = Proxy::start(hub.listen_addr()).await;
    let agent = Agent::start(settings(vec![proxy.addr]));
    assert!(eventually(CONVERGE, || agent.index.is_synced()).await);

    proxy.cut();
    assert!(eventually(CONVERGE, || agent.metrics.hub.connected.get() == 0).await);
    let before = hub.feed().version();
    api.create(service("shop", "missed-1", &["10.96.2.1"]));
    api.create(service("shop", "missed-2", &["10.96.2.2"]));
    assert!(eventually(CONVERGE, || hub.feed().version() >= before + 2).await);
    assert_eq!(agent.index.load().services.len(), 3, "still the old index");
    proxy.up();

    assert!(eventually(CONVERGE, || same(hub.index(), &agent.index)).await);
    assert_eq!(
        agent.frames("snapshot"),
        1,
        "resumed from its position, no second snapshot"
    );
    assert_eq!(snapshots_sent(hub.metrics(), "new"), 1);
    assert!(agent.metrics.hub.sessions.with_label_values(&["ok"]).get() >= 2);
    agent.stop().await;
    hub.shutdown().await;
}

/// An HTTP/2 subscriber with a 4 KiB window that can stop reading.
struct Stalled {
    body: hyper::body::Incoming,
    reader: FrameReader,
    objects: Objects,
}

impl Stalled {
    async fn open(addr: SocketAddr) -> Stalled {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(4096)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("http://{addr}/v1/index"))
            .body(Empty::new())
            .unwrap();
        let rsp = send.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        Stalled {
            body: rsp.into_body(),
            reader: FrameReader::default(),
            objects: Objects::default(),
        }
    }

    /// Reads and applies frames until `stop` holds after one; returns the frames' kinds.
    async fn read_until(&mut self, mut stop: impl FnMut(&Objects) -> bool) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        loop {
            while let Some((frame, _)) = self.reader.next_frame().unwrap() {
                kinds.push(match frame {
                    Frame::Snapshot(s) => {
                        self.objects = Objects::default();
                        self.objects
                            .apply(&s.services.into_iter().map(Change::UpsertService).collect::<Vec<_>>());
                        self.objects
                            .apply(&s.slices.into_iter().map(Change::UpsertSlice).collect::<Vec<_>>());
                        "snapshot"
                    }
                    Frame::Delta { changes, .. } => {
                        self.objects.apply(&changes);
                        "delta"
                    }
                    Frame::Heartbeat { .. } => "heartbeat",
                });
                if stop(&self.objects) {
                    return kinds;
                }
            }
            let data = tokio::time::timeout(CONVERGE, self.body.frame())
                .await
                .expect("data in time")
                .expect("the stream goes on")
                .unwrap();
            if let Ok(d) = data.into_data() {
                self.reader.feed(&d);
            }
        }
    }
}

/// An endpoint slice of `n` addresses in 10.50.<round>.x: big enough that a
/// few fill a 4 KiB window.
fn big_slice(round: u32, n: u32) -> serde_json::Value {
    let addrs: Vec<String> = (0..n).map(|i| format!("10.50.{}.{}", round % 250, i + 1)).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    endpoint_slice("shop", "db-a", "db", &addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_resnapped_and_delays_no_one() {
    let api = FakeKubeApi::start(cluster()).await;
    let hub = start_hub(&api, &hub_config(8)).await;
    let mut slow = Stalled::open(hub.listen_addr()).await;
    let hub_objects = || hub.feed().objects().1;
    let first = slow.read_until(|o| o.service_count() == 3).await;
    assert_eq!(first, ["snapshot"]);
    let fast = Agent::start(settings(vec![hub.listen_addr()]));
    assert!(eventually(CONVERGE, || fast.index.is_synced()).await);

    // The slow one reads nothing from here on. 40 changes of ~250 bytes:
    // its window fills after a few, the history keeps 8.
    let mut worst = Duration::ZERO;
    for round in 0..40 {
        api.update(big_slice(round, 40));
        let t = Instant::now();
        let want = ip(&format!("10.50.{round}.40"));
        assert!(
            eventually(CONVERGE, || fast.index.load().ptr.contains_key(&want)).await,
            "the fast agent got change {round}"
        );
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_secs(2),
        "a change took {worst:?} to reach the fast agent"
    );
    assert!(eventually(CONVERGE, || same(hub.index(), &fast.index)).await);
    assert_eq!(hub.metrics().subscribers.get(), 2, "the slow one is still connected");
    assert_eq!(
        snapshots_sent(hub.metrics(), "behind"),
        0,
        "not resnapped while it does not read"
    );

    // It reads again: its position is gone from the history, so a snapshot.
    let target = hub_objects();
    let kinds = slow.read_until(|o| *o == target).await;
    assert!(kinds.contains(&"snapshot"), "{kinds:?}");
    assert_eq!(snapshots_sent(hub.metrics(), "behind"), 1);
    assert_eq!(fast.frames("snapshot"), 1, "the fast one never needed one");
    fast.stop().await;
    hub.shutdown().await;
}

/// A whole `nodens serve` with `cluster.source = "hub"`.
async fn nodens_on_hub(addrs: Vec<SocketAddr>) -> Nodens {
    let mut config = server::config(&["127.0.0.1:9".parse().unwrap()]);
    config.cluster.source = SourceKind::Hub;
    config.cluster.hub = addrs;
    config.cluster.hub_timeout = Duration::from_secs(2);
    Nodens::start(config).await
}

/// The A records of `name` from nodens over UDP, or the rcode.
async fn lookup(dns: SocketAddr, name: &str) -> Result<Vec<IpAddr>, ResponseCode> {
    let q = build_query(name, RecordType::A, None);
    let r = udp_exchange(dns, &q, Duration::from_secs(2)).await.expect("an answer");
    if r.metadata.response_code != ResponseCode::NoError {
        return Err(r.metadata.response_code);
    }
    Ok(r.answers
        .iter()
        .filter_map(|a| match &a.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect())
}

async fn admin_metric(admin: SocketAddr, series: &str) -> f64 {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    metric(&body, series).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_agent_answers_from_the_hub_stays_up_while_it_is_away_and_catches_up() {
    let api = FakeKubeApi::start(cluster()).await;
    let config = hub_config(1000);
    let hub = start_hub(&api, &config).await;
    let addr = hub.listen_addr();
    let agent = nodens_on_hub(vec![addr]).await;
    let web = "web.shop.svc.cluster.local.";

    // Created at the API server, answered over UDP by the agent.
    api.create(service("shop", "fresh", &["10.96.3.3"]));
    let mut answer = Err(ResponseCode::ServFail);
    for _ in 0..200 {
        answer = lookup(agent.dns, "fresh.shop.svc.cluster.local.").await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(answer, Ok(vec![ip("10.96.3.3")]));
    assert_eq!(http_get(agent.admin, "/readyz").await.0, 200);

    // The hub goes away: the agent keeps answering from its index, and says how stale it is.
    hub.shutdown().await;
    let stale = "nodens_hub_source_staleness_seconds";
    let mut staleness = 0.0;
    for _ in 0..100 {
        staleness = admin_metric(agent.admin, stale).await;
        if staleness > 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(staleness > 1.0, "staleness {staleness}");
    assert_eq!(admin_metric(agent.admin, "nodens_hub_source_connected").await, 0.0);
    assert_eq!(lookup(agent.dns, web).await, Ok(vec![ip("10.96.0.5")]));
    assert_eq!(
        http_get(agent.admin, "/readyz").await.0,
        200,
        "still ready: stale, not empty"
    );

    // Changes meanwhile; a new hub on the same address: the agent catches up.
    api.delete(Resource::Services, "shop", "fresh");
    api.create(service("shop", "later", &["10.96.3.4"]));
    let mut config = config.clone();
    config.hub.listen = addr;
    let hub = start_hub(&api, &config).await;
    let mut caught_up = false;
    for _ in 0..400 {
        if lookup(agent.dns, "later.shop.svc.cluster.local.").await == Ok(vec![ip("10.96.3.4")]) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(caught_up, "the agent resynced from the restarted hub");
    assert_eq!(
        lookup(agent.dns, "fresh.shop.svc.cluster.local.").await,
        Err(ResponseCode::NXDomain)
    );
    assert!(admin_metric(agent.admin, stale).await < 1.0);
    // A restarted hub is another origin: the agent got a full snapshot.
    assert_eq!(snapshots_sent(hub.metrics(), "origin"), 1);
    agent.stop().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_uses_the_hub_that_answers_and_switches_when_it_dies() {
    let api = FakeKubeApi::start(cluster()).await;
    let config = hub_config(1000);
    let (a, b) = (start_hub(&api, &config).await, start_hub(&api, &config).await);

    // First address down: the agent ends up on the live one.
    let down = Agent::start(settings(vec![dead_addr().await, a.listen_addr()]));
    assert!(eventually(CONVERGE, || down.index.is_synced()).await);
    assert_eq!(a.metrics().subscribers.get(), 1);
    down.stop().await;

    // Two live hubs: when the agent's hub dies, it moves to the other.
    let agent = Agent::start(settings(vec![a.listen_addr(), b.listen_addr()]));
    assert!(eventually(CONVERGE, || agent.index.is_synced()).await);
    assert!(
        eventually(CONVERGE, || a.metrics().subscribers.get()
            + b.metrics().subscribers.get()
            == 1)
        .await
    );
    let (dying, other) = if a.metrics().subscribers.get() == 1 {
        (a, b)
    } else {
        (b, a)
    };
    dying.shutdown().await;
    api.create(service("shop", "after", &["10.96.4.4"]));
    assert!(eventually(CONVERGE, || other.metrics().subscribers.get() == 1).await);
    assert!(eventually(CONVERGE, || same(other.index(), &agent.index)).await);
    assert!(agent.index.load().ptr.contains_key(&ip("10.96.4.4")));
    agent.stop().await;
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_server_watch_per_hub_whatever_the_number_of_agents() {
    let api = FakeKubeApi::start(cluster()).await;
    let hub = start_hub(&api, &hub_config(1000)).await;
    let agents: Vec<Agent> = (0..50)
        .map(|_| Agent::start(settings(vec![hub.listen_addr()])))
        .collect();
    assert!(eventually(CONVERGE, || agents.iter().all(|a| a.index.is_synced())).await);
    api.create(service("shop", "everyone", &["10.96.5.5"]));
    assert!(
        eventually(CONVERGE, || agents.iter().all(|a| a
            .index
            .load()
            .ptr
            .contains_key(&ip("10.96.5.5"))))
        .await
    );
    assert_eq!(hub.metrics().subscribers.get(), 50);
    for r in Resource::ALL {
        assert_eq!(api.watch_requests(r), 1, "{r:?}: one watch, for the hub");
        assert_eq!(api.list_requests(r), 1, "{r:?}: one list, for the hub");
    }
    for a in agents {
        a.stop().await;
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_is_read_only_and_can_require_a_token() {
    let api = FakeKubeApi::start(cluster()).await;
    let mut config = hub_config(1000);
    config.hub.token = "s3cret".into();
    let hub = start_hub(&api, &config).await;
    let addr = hub.listen_addr();
    for token in [None, Some("wrong"), Some("s3cret-but-longer")] {
        match Subscription::open(addr, token, None).await {
            Err(SubscribeError::Status { status, .. }) => assert_eq!(status, 401, "{token:?}"),
            other => panic!("{token:?}: {other:?}"),
        }
    }
    let mut ok = Subscription::open(addr, Some("s3cret"), None).await.unwrap();
    assert!(matches!(ok.next().await.unwrap().0, Frame::Snapshot(_)));
    assert_eq!(hub.metrics().requests.with_label_values(&["unauthorized"]).get(), 3);

    let mut with_token = settings(vec![addr]);
    with_token.token = Some("s3cret".into());
    let agent = Agent::start(with_token);
    assert!(eventually(CONVERGE, || agent.index.is_synced()).await);
    agent.stop().await;

    // Nothing but GET on the index.
    for (method, path, status) in [
        ("POST", "/v1/index", 405),
        ("GET", "/v1/other", 404),
        ("DELETE", "/", 404),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer s3cret\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut rsp = String::new();
        s.read_to_string(&mut rsp).await.unwrap();
        assert!(rsp.starts_with(&format!("HTTP/1.1 {status}")), "{method} {path}: {rsp}");
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_not_synced_yet_sends_agents_elsewhere() {
    let api = FakeKubeApi::start(cluster()).await;
    api.fail_next_on(Resource::EndpointSlices, 1000, 500, None);
    let hub = Hub::start(&hub_config(10), HubSource::Kubernetes(api.client())).unwrap();
    match Subscription::open(hub.listen_addr(), None, None).await {
        Err(SubscribeError::Status { status, .. }) => assert_eq!(status, 503),
        other => panic!("{other:?}"),
    }
    assert_eq!(http_get(hub.admin_addr(), "/readyz").await.0, 503);
    api.clear_faults();
    assert!(eventually(CONVERGE, || hub.index().is_synced()).await);
    assert_eq!(http_get(hub.admin_addr(), "/readyz").await.0, 200);
    let (status, body) = http_get(hub.admin_addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, r#"nodens_hub_requests_total{outcome="not_ready"}"#),
        Some(1.0)
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_watch_fallback_is_off_by_default_and_waits_its_delay() {
    let api = FakeKubeApi::start(cluster()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig_file(dir.path());
    let nowhere = dead_addr().await;

    // Off (the default): no hub, and not one request at the API server.
    let mut config = Config::default();
    config.cluster.hub = vec![nowhere];
    let off = Agent::start(HubSettings::from_config(&config.cluster));
    assert!(off.metrics.hub.sessions.with_label_values(&["error"]).get() <= 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        off.metrics.hub.sessions.with_label_values(&["error"]).get() >= 2,
        "it keeps trying the hub"
    );
    assert!(api.requests().is_empty(), "{:?}", api.requests());
    assert!(!off.index.is_synced());
    off.stop().await;

    // On: after 300 ms plus its share of 300 ms, the agent watches the API server itself.
    let mut on = settings(vec![nowhere]);
    on.fallback = Some(FallbackSettings {
        after: Duration::from_millis(300),
        jitter: Duration::from_millis(300),
        kubeconfig: Some(kubeconfig),
    });
    let started = Instant::now();
    let agent = Agent::start(on);
    assert!(eventually(CONVERGE, || agent.index.is_synced()).await);
    let first = api.requests()[0].at;
    assert!(first >= started + Duration::from_millis(300), "{:?}", first - started);
    // 600 ms at most, plus a tick of the source's timer and a loaded machine's slack.
    assert!(first <= started + Duration::from_secs(3), "{:?}", first - started);
    assert_eq!(agent.metrics.hub.fallback.get(), 1);
    assert!(agent.index.load().ptr.contains_key(&ip("10.96.0.5")));
    api.create(service("shop", "direct", &["10.96.6.6"]));
    assert!(eventually(CONVERGE, || agent.index.load().ptr.contains_key(&ip("10.96.6.6"))).await);

    // A hub comes up at the address: the agent goes back to it and stops its own watch.
    let mut config = hub_config(1000);
    config.hub.listen = nowhere;
    let hub = start_hub(&api, &config).await;
    assert!(eventually(CONVERGE, || agent.metrics.hub.fallback.get() == 0).await);
    assert!(eventually(CONVERGE, || agent.frames("snapshot") == 1).await);
    assert!(
        eventually(CONVERGE, || api.open_watches(Resource::Services) == 1).await,
        "only the hub watches"
    );
    assert!(same(hub.index(), &agent.index));
    assert!(api.watch_requests(Resource::Services) >= 2);
    agent.stop().await;
    hub.shutdown().await;
}
