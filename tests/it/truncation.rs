//! Answers larger than the client's UDP limit: TC=1 over UDP (RFC 1035
//! §4.2.1, RFC 6891 §7), whole over TCP, and whole over UDP when both the
//! client and nodens allow the size.

use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::support::server::{config, Nodens};
use crate::support::upstream::{build_query, tcp_exchange, udp_exchange, FakeUpstream};

const T: Duration = Duration::from_secs(2);
const BIG: &str = "big.example.com.";

/// The A addresses of `big.example.com`: 10.0.0.1 .. 10.0.0.100.
fn big_addrs() -> Vec<Ipv4Addr> {
    (1..=100u8).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect()
}

fn sorted_a_addrs(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn assert_clean_tc(q: &Message, r: &Message, what: &str) {
    assert_eq!(r.metadata.id, q.metadata.id, "{what}: ID");
    assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{what}: rcode");
    assert!(r.metadata.truncation, "{what}: TC expected");
    assert!(r.answers.is_empty(), "{what}: records in a TC answer");
    assert!(r.authorities.is_empty(), "{what}: authority in a TC answer");
    assert_eq!(r.queries, q.queries, "{what}: question echoed");
    assert_eq!(r.edns.is_some(), q.edns.is_some(), "{what}: OPT iff the query had one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    // Without EDNS: 512 bytes.
    let q = build_query(BIG, RecordType::A, None);
    let r = udp_exchange(nodens.dns, &q, T).await.expect("answer");
    assert_clean_tc(&q, &r, "no EDNS");
    // nodens fetched it whole from the upstream (UDP TC, then TCP).
    let fetched = upstream.queries_for(BIG, RecordType::A);
    assert_eq!(fetched, 2, "one UDP try and its TCP retry");
    assert_eq!(upstream.udp_queries(), 1);
    assert_eq!(
        upstream.tcp_queries(),
        1,
        "the upstream UDP answer was truncated: TCP retry"
    );

    // EDNS 4096 is capped by our edns_udp_size (1232): still TC.
    let q = build_query(BIG, RecordType::A, Some(4096));
    let r = udp_exchange(nodens.dns, &q, T).await.expect("answer");
    assert_clean_tc(&q, &r, "EDNS 4096");
    assert_eq!(r.edns.as_ref().unwrap().max_payload(), 1232);

    // Over TCP: all 100 records.
    let q = build_query(BIG, RecordType::A, None);
    let r = tcp_exchange(nodens.dns, &q, T).await.expect("answer over TCP");
    assert_eq!(r.metadata.id, q.metadata.id);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100);
    assert_eq!(sorted_a_addrs(&r), big_addrs());

    // And UDP again after TCP: TC from the cache, the upstream not asked.
    let q = build_query(BIG, RecordType::A, Some(1232));
    let r = udp_exchange(nodens.dns, &q, T).await.expect("answer");
    assert_clean_tc(&q, &r, "after TCP");
    assert_eq!(upstream.queries_for(BIG, RecordType::A), fetched);

    // A mixed-case question gets its own case back in the TC answer.
    let mut raw = build_query(BIG, RecordType::A, None).to_vec().unwrap();
    raw[13..16].copy_from_slice(b"BiG");
    raw[17..24].copy_from_slice(b"ExAmPlE");
    let qlen = BIG.len() + 1 + 4;
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    socket.send_to(&raw, nodens.dns).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(T, socket.recv_from(&mut buf))
        .await
        .expect("answer")
        .unwrap();
    let answer = &buf[..len];
    assert_eq!(answer[0..2], raw[0..2], "ID");
    assert_eq!(
        answer[12..12 + qlen],
        raw[12..12 + qlen],
        "question echoed byte for byte"
    );
    assert!(Message::from_vec(answer).unwrap().metadata.truncation);
    assert_eq!(upstream.queries_for(BIG, RecordType::A), fetched);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_answer_fits_udp_when_client_and_nodens_allow_4096() {
    let upstream = FakeUpstream::start_example().await;
    let mut c = config(&[upstream.addr()]);
    c.edns_udp_size = 4096;
    let nodens = Nodens::start(c).await;

    // The fake caps its UDP at 1232: nodens has to fetch over TCP, then the
    // client (EDNS 4096) gets the whole answer over UDP.
    for i in 0..2 {
        let q = build_query(BIG, RecordType::A, Some(4096));
        let r = udp_exchange(nodens.dns, &q, T).await.expect("answer");
        assert_eq!(r.metadata.id, q.metadata.id);
        assert!(!r.metadata.truncation, "ask {i}: TC although 4096 bytes are allowed");
        assert_eq!(r.answers.len(), 100, "ask {i}");
        assert_eq!(sorted_a_addrs(&r), big_addrs());
        assert_eq!(r.edns.as_ref().expect("OPT").max_payload(), 4096);
    }
    assert_eq!(upstream.udp_queries(), 1);
    assert_eq!(upstream.tcp_queries(), 1);
    // nodens advertised its own size upstream.
    assert_eq!(upstream.seen()[0].edns_payload, Some(4096));

    // A client that advertises less still gets TC.
    let q = build_query(BIG, RecordType::A, Some(1232));
    let r = udp_exchange(nodens.dns, &q, T).await.expect("answer");
    assert_clean_tc(&q, &r, "client EDNS 1232");
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_answer_over_upstream_udp_when_the_upstream_allows_it() {
    let upstream = FakeUpstream::start_example().await;
    upstream.set_max_udp_payload(4096);
    let mut c = config(&[upstream.addr()]);
    c.edns_udp_size = 4096;
    let nodens = Nodens::start(c).await;

    let q = build_query(BIG, RecordType::A, Some(4096));
    let r = udp_exchange(nodens.dns, &q, T).await.expect("answer");
    assert!(!r.metadata.truncation);
    assert_eq!(sorted_a_addrs(&r), big_addrs());
    assert_eq!(upstream.udp_queries(), 1);
    assert_eq!(upstream.tcp_queries(), 0, "no TCP retry needed");
    assert!(nodens.stop().await);
}
