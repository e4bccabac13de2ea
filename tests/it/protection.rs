//! Upstream protection seen from clients and from the upstream (DESIGN §6,
//! §7): identical misses coalesce, the upstream never gets more than the
//! rate plus the burst, an unreachable upstream means stale answers or a
//! prompt SERVFAIL, popular names are refreshed before they expire, and a
//! client flooding random names sheds its own misses, not its neighbours'.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;

use crate::support::server::{config, http_get, metric, Nodens};
use crate::support::upstream::{a_addrs, build_query, udp_exchange, FakeUpstream, Fault, ZoneSpec};

const T: Duration = Duration::from_secs(3);
/// A second loopback source, for a client that is not 127.0.0.1.
const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const GOOD: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The Extended DNS Error of an answer (RFC 8914): info-code and extra text.
fn ede(m: &Message) -> Option<(u16, String)> {
    match m.edns.as_ref()?.option(EdnsCode::Unknown(15))? {
        EdnsOption::Unknown(15, data) if data.len() >= 2 => Some((
            u16::from_be_bytes([data[0], data[1]]),
            String::from_utf8_lossy(&data[2..]).into_owned(),
        )),
        _ => None,
    }
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = build_query(name, RecordType::A, Some(1232));
    q.metadata.id = id;
    q.to_vec().unwrap()
}

/// A client socket on `src` with a receive buffer large enough for a burst of answers.
async fn client_socket(src: IpAddr) -> UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&SocketAddr::new(src, 0).into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    UdpSocket::from_std(socket.into()).unwrap()
}

/// Sends every query in `queries` from one socket on `src`, `gap` apart, and
/// collects the answers by ID until all came or `timeout` passed.
async fn blast(
    dns: SocketAddr,
    src: IpAddr,
    queries: Vec<Vec<u8>>,
    gap: Duration,
    timeout: Duration,
) -> HashMap<u16, Message> {
    let socket = Arc::new(client_socket(src).await);
    let want = queries.len();
    let sender = {
        let socket = socket.clone();
        tokio::spawn(async move {
            for q in queries {
                socket.send_to(&q, dns).await.unwrap();
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
            }
        })
    };
    let mut answers = HashMap::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    while answers.len() < want {
        match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                let m = Message::from_vec(&buf[..n]).expect("an answer decodes");
                answers.insert(m.metadata.id, m);
            }
            _ => break,
        }
    }
    sender.await.unwrap();
    answers
}

async fn metrics_text(nodens: &Nodens) -> String {
    http_get(nodens.admin, "/metrics").await.1
}

async fn ask(dns: SocketAddr, name: &str) -> (Message, Duration) {
    let started = Instant::now();
    let q = build_query(name, RecordType::A, Some(1232));
    let r = udp_exchange(dns, &q, T)
        .await
        .unwrap_or_else(|| panic!("no answer for {name} within {T:?}"));
    assert_eq!(r.metadata.id, q.metadata.id);
    (r, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_identical_misses_send_one_upstream_query() {
    let upstream = FakeUpstream::start_example().await;
    // Held long enough that every client query arrives while it is in flight.
    upstream.set_fault(Fault::Delay(Duration::from_millis(500)));
    let mut c = config(&[upstream.addr()]);
    c.upstream.timeout = Duration::from_secs(3);
    let nodens = Nodens::start(c).await;

    let clients: Vec<_> = (0..10u16)
        .map(|s| {
            let queries = (0..100u16).map(|i| query("www.example.com.", s * 100 + i)).collect();
            tokio::spawn(blast(nodens.dns, GOOD, queries, Duration::ZERO, Duration::from_secs(5)))
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        let answers = client.await.unwrap();
        for (id, m) in &answers {
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "ID {id}");
            assert_eq!(a_addrs(m), vec![Ipv4Addr::new(192, 0, 2, 1)], "ID {id}");
            assert_eq!(m.queries[0].name().to_ascii(), "www.example.com.");
        }
        answered += answers.len();
    }
    assert_eq!(answered, 1000, "every client query got its answer");
    assert_eq!(upstream.queries(), 1, "one upstream query for all of them");
    let text = metrics_text(&nodens).await;
    let coalesced = metric(&text, "nodens_coalesced_waiters_total").unwrap_or(0.0);
    // Those that arrived after the answer was cached were hits instead.
    assert!(coalesced >= 900.0, "coalesced waiters: {coalesced}");
    assert!(nodens.stop().await);
}

/// With qps 20 and burst 5, the upstream sees at most 25 queries in any
/// second, counted at the upstream itself while 300 distinct misses arrive
/// over 2 s; every client gets an answer, the shed ones a SERVFAIL that says
/// "rate limited".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_never_gets_more_than_rate_plus_burst() {
    let upstream = Arc::new(FakeUpstream::start_example().await);
    let mut c = config(&[upstream.addr()]);
    c.upstream.qps = 20;
    c.upstream.burst = 5;
    c.upstream.per_client_qps = 0;
    let nodens = Nodens::start(c).await;

    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (upstream, samples) = (upstream.clone(), samples.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(3500) {
                samples.lock().unwrap().push((Instant::now(), upstream.queries()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let queries = (0..300u16).map(|i| query(&format!("n{i}.example.com."), i)).collect();
    let answers = blast(
        nodens.dns,
        GOOD,
        queries,
        Duration::from_micros(6_600),
        Duration::from_secs(6),
    )
    .await;
    sampler.await.unwrap();

    assert_eq!(answers.len(), 300, "every miss is answered, none hangs");
    let nxdomain = answers
        .values()
        .filter(|m| m.metadata.response_code == ResponseCode::NXDomain)
        .count();
    let shed: Vec<&Message> = answers
        .values()
        .filter(|m| m.metadata.response_code == ResponseCode::ServFail)
        .collect();
    assert_eq!(nxdomain + shed.len(), 300);
    assert!(nxdomain >= 40, "the refill is used: {nxdomain} answered from upstream");
    assert!(!shed.is_empty());
    for m in &shed {
        assert_eq!(
            ede(m),
            Some((0, "rate limited".to_string())),
            "EDE Other, \"rate limited\""
        );
    }
    let samples = samples.lock().unwrap().clone();
    let mut worst = 0;
    for (i, &(t0, c0)) in samples.iter().enumerate() {
        for &(t1, c1) in &samples[i..] {
            if t1 - t0 > Duration::from_secs(1) {
                break;
            }
            worst = worst.max(c1 - c0);
        }
    }
    // 5 + 20 × 1 s, and one more for a sample taken just inside the window.
    assert!(worst <= 26, "{worst} upstream queries within one second");
    assert!(worst >= 15, "the rate was reached: {worst}");
    assert_eq!(upstream.queries() as usize, nxdomain);
    assert!(nodens.stop().await);
}

/// RFC 8767: with the upstream gone, a cached name is answered even after it
/// expired (TTL 30, EDE Stale Answer), an uncached one gets SERVFAIL within
/// queue_wait + timeout, and once the upstream is back the stale data is
/// replaced in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_means_stale_answers_or_a_prompt_servfail() {
    let upstream = FakeUpstream::start_example().await;
    let mut c = config(&[upstream.addr()]);
    c.upstream.timeout = Duration::from_millis(200);
    let nodens = Nodens::start(c).await;

    let (r, _) = ask(nodens.dns, "short.example.com.").await;
    assert_eq!(r.answers[0].ttl, 2);
    upstream.set_fault(Fault::Drop);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Expired: the upstream is asked, does not answer, the stale data is served.
    let (r, took) = ask(nodens.dns, "short.example.com.").await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 2)]);
    assert_eq!(r.answers[0].ttl, 30, "RFC 8767 §4: stale answers carry TTL 30");
    assert_eq!(ede(&r).map(|e| e.0), Some(3), "EDE Stale Answer");
    assert!(
        took < Duration::from_millis(200 + 500),
        "answered after one timeout: {took:?}"
    );
    let asked = upstream.queries();
    // Again: a hit on the stale copy, without waiting for the upstream.
    let (r, took) = ask(nodens.dns, "short.example.com.").await;
    assert_eq!(r.answers[0].ttl, 30);
    assert!(took < Duration::from_millis(100), "{took:?}");
    assert_eq!(upstream.queries(), asked);

    // Not cached: SERVFAIL within queue_wait + timeout, not a hang.
    let (r, took) = ask(nodens.dns, "www.example.com.").await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(took < Duration::from_millis(200 + 200 + 500), "{took:?}");

    // The upstream is back: a hit on the stale copy refreshes it in the background.
    upstream.set_fault(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (r, _) = ask(nodens.dns, "short.example.com.").await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        if r.answers[0].ttl <= 2 {
            assert_eq!(ede(&r), None, "a fresh answer is not marked stale");
            break;
        }
        assert!(Instant::now() < deadline, "the stale copy was never refreshed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = metrics_text(&nodens).await;
    assert!(metric(&text, r#"nodens_stale_answers_total{path="miss"}"#).unwrap() >= 1.0);
    assert!(metric(&text, r#"nodens_stale_answers_total{path="hit"}"#).unwrap() >= 1.0);
    assert!(nodens.stop().await);
}

/// A name with TTL 3 asked every 100 ms for 7 s is refreshed in the last
/// 10% of each TTL: the upstream is asked again before the entry expires, so
/// no client query after the first waits for the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_popular_name_is_refreshed_before_it_expires() {
    let upstream = FakeUpstream::start(ZoneSpec::example().a("pre", 3, "192.0.2.3")).await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    let start = Instant::now();
    let mut first_refresh = None;
    while start.elapsed() < Duration::from_secs(7) {
        let (r, _) = ask(nodens.dns, "pre.example.com.").await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 3)]);
        assert!(r.answers[0].ttl >= 1, "never served at TTL 0");
        if first_refresh.is_none() && upstream.queries_for("pre.example.com", RecordType::A) == 2 {
            first_refresh = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refreshed = first_refresh.expect("the name was refreshed");
    assert!(
        refreshed < Duration::from_secs(3),
        "refreshed before expiry, at {refreshed:?}"
    );
    assert!(
        upstream.queries_for("pre.example.com", RecordType::A) >= 3,
        "refreshed every TTL"
    );
    let text = metrics_text(&nodens).await;
    let from_upstream = metric(&text, r#"nodens_responses_total{rcode="NOERROR",source="upstream"}"#);
    assert_eq!(from_upstream, Some(1.0), "only the first query waited for the upstream");
    assert!(metric(&text, r#"nodens_prefetches_total{outcome="sent"}"#).unwrap() >= 2.0);
    assert!(nodens.stop().await);
}

/// One client (127.0.0.2) sends 1,000 random names in a second; another
/// (127.0.0.1) asks ten names meanwhile. The flood is shed beyond its share
/// and the spare capacity; every one of the neighbour's misses is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_shed_and_its_neighbour_is_not() {
    let upstream = FakeUpstream::start_example().await;
    let mut c = config(&[upstream.addr()]);
    c.upstream.qps = 100;
    c.upstream.burst = 20;
    c.upstream.per_client_qps = 20;
    c.upstream.per_client_burst = 10;
    let nodens = Nodens::start(c).await;

    let flood_queries = (0..1000u16)
        .map(|i| query(&format!("flood{i}.example.com."), i))
        .collect();
    let flood = tokio::spawn(blast(
        nodens.dns,
        FLOODER,
        flood_queries,
        Duration::from_millis(1),
        Duration::from_secs(6),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let good_queries = (0..10u16).map(|i| query(&format!("good{i}.example.com."), i)).collect();
    let good = blast(nodens.dns, GOOD, good_queries, Duration::from_millis(100), T).await;
    let flood = flood.await.unwrap();

    assert_eq!(good.len(), 10);
    for (id, m) in &good {
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "neighbour's query {id} answered"
        );
    }
    let shed: Vec<&Message> = flood
        .values()
        .filter(|m| m.metadata.response_code == ResponseCode::ServFail)
        .collect();
    assert!(
        shed.len() >= 500,
        "the flood was shed: {} of {}",
        shed.len(),
        flood.len()
    );
    assert_eq!(ede(shed[0]), Some((0, "rate limited".to_string())));
    let text = metrics_text(&nodens).await;
    let by_share = metric(&text, r#"nodens_upstream_shed_total{reason="client_share"}"#).unwrap();
    assert!(by_share >= 500.0, "shed for being over its share: {by_share}");
    assert!(nodens.stop().await);
}
