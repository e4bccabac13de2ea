//! Upstream failures seen from a client: failover on timeout and SERVFAIL,
//! SERVFAIL when nothing answers, TCP retry after truncation, discarding
//! responses that do not match (RFC 5452), and random ports and IDs.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::server::{config, Nodens};
use crate::support::upstream::{a_addrs, build_query, udp_exchange, FakeUpstream, Fault, BOGUS_V4};

const T: Duration = Duration::from_secs(3);
const WWW_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

async fn ask(dns: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let q = build_query(name, rtype, Some(1232));
    let r = udp_exchange(dns, &q, T)
        .await
        .unwrap_or_else(|| panic!("no answer for {name} {rtype} within {T:?}"));
    assert_eq!(r.metadata.id, q.metadata.id, "{name}: ID");
    assert_eq!(r.queries, q.queries, "{name}: question echoed");
    r
}

async fn start_two(first: Fault, second: Fault, timeout: Duration) -> (FakeUpstream, FakeUpstream, Nodens) {
    let a = FakeUpstream::start_example().await;
    let b = FakeUpstream::start_example().await;
    a.set_fault(first);
    b.set_fault(second);
    let mut c = config(&[a.addr(), b.addr()]);
    c.upstream.timeout = timeout;
    let nodens = Nodens::start(c).await;
    (a, b, nodens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_first_upstream_times_out_and_the_second_answers() {
    let (a, b, nodens) = start_two(Fault::Drop, Fault::None, Duration::from_millis(200)).await;
    let r = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_addrs(&r), vec![WWW_V4]);
    assert_eq!(a.queries(), 1, "the silent upstream is asked once");
    assert_eq!(a.queries_for("www.example.com", RecordType::A), 1);
    assert_eq!(b.queries(), 1);
    assert_eq!(b.queries_for("www.example.com", RecordType::A), 1);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_from_the_first_upstream_fails_over_to_the_second() {
    let (a, b, nodens) = start_two(Fault::ServFail, Fault::None, Duration::from_millis(300)).await;
    let r = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_addrs(&r), vec![WWW_V4]);
    assert_eq!(a.queries(), 1);
    assert_eq!(b.queries(), 1);

    // The SERVFAIL was not what got cached: the answer is, and is a hit now.
    let r = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(a_addrs(&r), vec![WWW_V4]);
    assert_eq!(a.queries() + b.queries(), 2);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_silent_gives_servfail_and_service_continues() {
    let (a, b, nodens) = start_two(Fault::Drop, Fault::Drop, Duration::from_millis(200)).await;
    let r = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(r.answers.is_empty());
    assert!(r.edns.is_some(), "OPT echoed on SERVFAIL too");
    assert_eq!(a.queries(), 1);
    assert_eq!(b.queries(), 1);

    a.set_fault(Fault::None);
    b.set_fault(Fault::None);
    let r = ask(nodens.dns, "mail.example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 25)]);
    assert_eq!(a.queries_for("mail.example.com", RecordType::A), 1);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_upstream_gives_servfail() {
    let closed = {
        let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        s.local_addr().unwrap()
    };
    let mut c = config(&[closed]);
    // Long enough that a hang until the timeout would show as no answer within T.
    c.upstream.timeout = Duration::from_secs(10);
    let nodens = Nodens::start(c).await;
    let r = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(r.answers.is_empty());
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upstream_udp_answer_is_retried_over_tcp() {
    let upstream = FakeUpstream::start_example().await;
    upstream.set_fault(Fault::Truncate);
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    let r = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(
        !r.metadata.truncation,
        "the client gets the whole small answer over UDP"
    );
    assert_eq!(a_addrs(&r), vec![WWW_V4]);
    assert_eq!(upstream.udp_queries(), 1);
    assert_eq!(upstream.tcp_queries(), 1);
    assert_eq!(upstream.queries_for("www.example.com", RecordType::A), 2);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_that_do_not_match_are_discarded() {
    for (fault, name, want) in [
        (Fault::WrongId, "www.example.com.", WWW_V4),
        (Fault::WrongQuestion, "mail.example.com.", Ipv4Addr::new(192, 0, 2, 25)),
    ] {
        let upstream = FakeUpstream::start_example().await;
        upstream.set_fault(fault);
        let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
        for i in 0..2 {
            let r = ask(nodens.dns, name, RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{fault:?} ask {i}");
            let addrs = a_addrs(&r);
            assert!(!addrs.contains(&BOGUS_V4), "{fault:?} ask {i}: bogus answer accepted");
            assert_eq!(addrs, vec![want], "{fault:?} ask {i}");
        }
        assert_eq!(
            upstream.queries(),
            1,
            "{fault:?}: the good answer was taken the first time"
        );
        assert_eq!(upstream.tcp_queries(), 0);
        assert!(nodens.stop().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_queries_use_random_ports_and_ids() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    for i in 0..10 {
        let r = ask(nodens.dns, &format!("n{i}.example.com."), RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }
    let ports = upstream.udp_src_ports();
    let ids = upstream.ids();
    assert_eq!(ports.len(), 10);
    assert_eq!(ids.len(), 10);
    let distinct_ports: HashSet<u16> = ports.iter().copied().collect();
    let distinct_ids: HashSet<u16> = ids.iter().copied().collect();
    assert!(distinct_ports.len() > 1, "source ports did not vary: {ports:?}");
    assert!(distinct_ids.len() > 1, "IDs did not vary: {ids:?}");
    assert!(nodens.stop().await);
}

/// RFC 9520 §3.2: a failed question is remembered for a second, so clients
/// retrying through an upstream outage do not each send it upstream again;
/// after that second it is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_failures_are_cached_briefly() {
    let upstream = FakeUpstream::start_example().await;
    upstream.set_fault(Fault::ServFail);
    let mut config = crate::support::server::config(&[upstream.addr()]);
    config.upstream.timeout = Duration::from_millis(200);
    let nodens = Nodens::start(config).await;
    let ask = || async {
        let q = build_query("www.example.com.", RecordType::A, None);
        udp_exchange(nodens.dns, &q, Duration::from_secs(3))
            .await
            .expect("an answer")
    };
    assert_eq!(ask().await.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ask().await.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        upstream.queries_for("www.example.com", RecordType::A),
        1,
        "the retry was answered from the failure cache"
    );
    upstream.set_fault(Fault::None);
    let recovered = crate::support::server::eventually(Duration::from_secs(5), || async {
        ask().await.metadata.response_code == ResponseCode::NoError
    })
    .await;
    assert!(recovered, "asked upstream again once the failure expired");
    assert_eq!(upstream.queries_for("www.example.com", RecordType::A), 2);
}
