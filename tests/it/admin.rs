//! The admin server of a running nodens (src/admin.rs, src/metrics.rs):
//! probes answer, counters move with real queries, and the port closes on stop.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::server::{eventually, http_get, metric, Nodens};
use crate::support::upstream::{build_query, tcp_exchange, udp_exchange, FakeUpstream};

const ANSWER: Duration = Duration::from_secs(3);
/// Workers flush their counters when idle for 100 ms; gauges tick every 1 s.
const CONVERGE: Duration = Duration::from_secs(5);

async fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

/// The current value of `series`, 0 if it is not exposed yet.
async fn value(admin: SocketAddr, series: &str) -> f64 {
    metric(&scrape(admin).await, series).unwrap_or(0.0)
}

/// Polls until `series` is at least `want`; panics with the scrape otherwise.
async fn reaches(admin: SocketAddr, series: &str, want: f64) {
    let ok = eventually(CONVERGE, || {
        let series = series.to_string();
        async move { metric(&scrape(admin).await, &series).is_some_and(|v| v >= want) }
    })
    .await;
    if !ok {
        let text = scrape(admin).await;
        panic!(
            "{series} never reached {want} (now {:?}); metrics:\n{text}",
            metric(&text, series)
        );
    }
}

/// Polls until `series` equals `want` exactly.
async fn settles_at(admin: SocketAddr, series: &str, want: f64) {
    let ok = eventually(CONVERGE, || {
        let series = series.to_string();
        async move { metric(&scrape(admin).await, &series) == Some(want) }
    })
    .await;
    let now = metric(&scrape(admin).await, series);
    assert!(ok, "{series} never settled at {want} (now {now:?})");
}

async fn resolve_udp(dns: SocketAddr, name: &str, rtype: RecordType) {
    let q = build_query(name, rtype, None);
    let r = udp_exchange(dns, &q, ANSWER).await.expect("UDP answer");
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(!r.answers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_once_started() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    let (status, body) = http_get(nodens.admin, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    // Readiness is a latch set once listeners are bound (and the index synced, when there is one).
    let ready = eventually(Duration::from_secs(5), || async {
        http_get(nodens.admin, "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "/readyz never turned 200");
    let (status, body) = http_get(nodens.admin, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, _) = http_get(nodens.admin, "/nope").await;
    assert_eq!(status, 404);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_a_miss_then_a_hit() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    let admin = nodens.admin;

    let requests = r#"nodens_requests_total{proto="udp",qtype="A"}"#;
    let from_upstream = r#"nodens_responses_total{rcode="NOERROR",source="upstream"}"#;
    let from_cache = r#"nodens_responses_total{rcode="NOERROR",source="cache"}"#;
    // The text format sorts labels by name.
    let upstream_ok = format!(
        r#"nodens_upstream_requests_total{{outcome="ok",upstream="{}"}}"#,
        upstream.addr()
    );
    let text = scrape(admin).await;
    // The bounded label sets exist from the start, at 0.
    for series in [requests, from_upstream, from_cache] {
        assert_eq!(metric(&text, series), Some(0.0), "{series} at start:\n{text}");
    }
    assert_eq!(
        metric(&text, &upstream_ok),
        Some(0.0),
        "{upstream_ok} at start:\n{text}"
    );

    // A miss: answered by the upstream.
    resolve_udp(nodens.dns, "www.example.com.", RecordType::A).await;
    reaches(admin, requests, 1.0).await;
    reaches(admin, from_upstream, 1.0).await;
    reaches(admin, &upstream_ok, 1.0).await;
    assert_eq!(value(admin, from_cache).await, 0.0, "a miss counted as a cache answer");

    // The same query again: a hit.
    resolve_udp(nodens.dns, "www.example.com.", RecordType::A).await;
    reaches(admin, requests, 2.0).await;
    reaches(admin, from_cache, 1.0).await;
    assert_eq!(
        value(admin, from_upstream).await,
        1.0,
        "a hit counted as an upstream answer"
    );
    assert_eq!(value(admin, &upstream_ok).await, 1.0, "a hit went upstream");
    assert_eq!(upstream.queries_for("www.example.com", RecordType::A), 1);

    // The cache gauge is published on a 1 s tick.
    reaches(admin, "nodens_cache_entries", 1.0).await;
    reaches(admin, "nodens_cache_bytes", 1.0).await;

    // TCP requests are counted under their own label.
    let q = build_query("www.example.com.", RecordType::AAAA, None);
    let r = tcp_exchange(nodens.dns, &q, ANSWER).await.expect("TCP answer");
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    reaches(admin, r#"nodens_requests_total{proto="tcp",qtype="AAAA"}"#, 1.0).await;
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_answers_and_drops_are_counted() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    let admin = nodens.admin;
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();

    // QDCOUNT 2: FORMERR, answered by nodens itself.
    let mut formerr = vec![0x12, 0x34, 0x01, 0x00, 0, 2, 0, 0, 0, 0, 0, 0];
    formerr.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01\x01b\x00\x00\x01\x00\x01");
    socket.send_to(&formerr, nodens.dns).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(ANSWER, socket.recv_from(&mut buf))
        .await
        .expect("FORMERR answer")
        .unwrap();
    assert!(n >= 12 && buf[3] & 0x0f == 1, "{:02x?}", &buf[..n]);
    reaches(admin, r#"nodens_responses_total{rcode="FORMERR",source="local"}"#, 1.0).await;

    // A response (QR=1): dropped, counted as malformed.
    let mut response = formerr.clone();
    response[2] |= 0x80;
    response[5] = 1;
    socket.send_to(&response, nodens.dns).await.unwrap();
    reaches(admin, r#"nodens_dropped_total{reason="malformed"}"#, 1.0).await;
    assert_eq!(upstream.queries(), 0);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_gauge_follows_open_connections() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    let gauge = "nodens_tcp_connections";
    assert_eq!(value(nodens.admin, gauge).await, 0.0);

    // A query answered proves the connection was accepted.
    let mut s = TcpStream::connect(nodens.dns).await.unwrap();
    let raw = build_query("www.example.com.", RecordType::A, None).to_vec().unwrap();
    let mut frame = (raw.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&raw);
    s.write_all(&frame).await.unwrap();
    let len = tokio::time::timeout(ANSWER, s.read_u16())
        .await
        .expect("answer")
        .unwrap();
    let mut answer = vec![0u8; len as usize];
    s.read_exact(&mut answer).await.unwrap();
    settles_at(nodens.admin, gauge, 1.0).await;

    drop(s);
    settles_at(nodens.admin, gauge, 0.0).await;
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_refuses_connections_after_stop() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    let admin = nodens.admin;
    let (status, _) = http_get(admin, "/healthz").await;
    assert_eq!(status, 200);
    assert!(nodens.stop().await, "drained within the grace period");
    match TcpStream::connect(admin).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("admin port {admin} still accepts connections after stop"),
    }
}
