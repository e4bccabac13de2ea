//! The cache stage seen from a client: hits never reach the upstream, TTLs
//! decay and expire, negative answers (RFC 2308, RFC 8020), the DO bit and
//! 0x20 case, CNAME chains, and EDNS echo on hits and misses.

use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::net::UdpSocket;

use crate::support::server::{config, Nodens};
use crate::support::upstream::{a_addrs, build_query, udp_exchange, FakeUpstream, ZoneSpec};

const T: Duration = Duration::from_secs(2);
const WWW_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

async fn ask(nodens: &Nodens, name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let q = build_query(name, rtype, edns);
    let r = udp_exchange(nodens.dns, &q, T)
        .await
        .unwrap_or_else(|| panic!("no answer for {name} {rtype}"));
    assert_eq!(r.metadata.id, q.metadata.id, "ID echoed for {name} {rtype}");
    assert_eq!(r.queries, q.queries, "question echoed for {name} {rtype}");
    r
}

/// (TTL, MINIMUM) of the SOA in the authority section.
fn soa_of(m: &Message) -> (u32, u32) {
    let r = m
        .authorities
        .iter()
        .find(|r| r.record_type() == RecordType::SOA)
        .expect("SOA in authority");
    match &r.data {
        RData::SOA(soa) => (r.ttl, soa.minimum),
        _ => unreachable!(),
    }
}

/// Encodes `name`/`rtype` as a query and writes the labels back in the case
/// given (hickory's encoder lowercases names).
fn raw_query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut v = build_query(&name.to_ascii_lowercase(), rtype, edns).to_vec().unwrap();
    let mut at = 12;
    for label in name.trim_end_matches('.').split('.') {
        assert_eq!(usize::from(v[at]), label.len());
        v[at + 1..at + 1 + label.len()].copy_from_slice(label.as_bytes());
        at += 1 + label.len();
    }
    v
}

/// Length of the question section of a raw single-question query.
fn question_len(raw: &[u8]) -> usize {
    let mut at = 12;
    while raw[at] != 0 {
        at += 1 + usize::from(raw[at]);
    }
    at + 1 + 4 - 12
}

async fn udp_raw(addr: std::net::SocketAddr, query: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    socket.send_to(query, addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(T, socket.recv_from(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    buf.truncate(len);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_question_is_answered_from_cache() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    for i in 0..10 {
        let r = ask(&nodens, "www.example.com.", RecordType::A, Some(1232)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "ask {i}");
        assert!(r.metadata.recursion_available);
        assert!(!r.metadata.truncation);
        assert_eq!(a_addrs(&r), vec![WWW_V4], "ask {i}");
        assert_eq!(r.answers[0].name.to_ascii(), "www.example.com.");
    }
    assert_eq!(upstream.queries_for("www.example.com", RecordType::A), 1);
    assert_eq!(upstream.queries(), 1);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_decay_on_hits() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    // Negative answers first, so that once www has aged a second they have too.
    let nx = ask(&nodens, "gone.example.com.", RecordType::A, None).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(soa_of(&nx).0, 60);
    let nodata = ask(&nodens, "txtonly.example.com.", RecordType::AAAA, None).await;
    assert_eq!(soa_of(&nodata).0, 60);
    let chain = ask(&nodens, "alias.example.com.", RecordType::A, None).await;
    let chain_ttls: Vec<u32> = chain.answers.iter().map(|r| r.ttl).collect();
    assert_eq!(chain_ttls.len(), 2);
    assert!(chain_ttls.iter().all(|&t| t > 0 && t <= 300));
    assert_eq!(chain_ttls[0], 120, "CNAME TTL as stored");

    // The stored 300 s TTL is served lower once a second has passed.
    let first = ask(&nodens, "www.example.com.", RecordType::A, None).await;
    assert_eq!(first.answers[0].ttl, 300);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let second = loop {
        let r = ask(&nodens, "www.example.com.", RecordType::A, None).await;
        assert_eq!(a_addrs(&r), vec![WWW_V4]);
        if r.answers[0].ttl != first.answers[0].ttl || tokio::time::Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ttl = second.answers[0].ttl;
    assert!(ttl < 300, "TTL did not decay: {ttl}");
    assert!(ttl >= 297, "TTL decayed by more than the time passed: {ttl}");

    let nx = ask(&nodens, "gone.example.com.", RecordType::A, None).await;
    let nx_ttl = soa_of(&nx).0;
    assert!((57..60).contains(&nx_ttl), "cached NXDOMAIN SOA TTL {nx_ttl}");
    let nodata = ask(&nodens, "txtonly.example.com.", RecordType::AAAA, None).await;
    let nodata_ttl = soa_of(&nodata).0;
    assert!((57..60).contains(&nodata_ttl), "cached NODATA SOA TTL {nodata_ttl}");
    let chain = ask(&nodens, "alias.example.com.", RecordType::A, None).await;
    for (r, before) in chain.answers.iter().zip(&chain_ttls) {
        assert!(
            r.ttl < *before && r.ttl + 3 >= *before,
            "{} TTL {} after {before}",
            r.name,
            r.ttl
        );
    }
    assert_eq!(upstream.queries(), 4, "every ask after the first of each was a hit");
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entry_is_fetched_again() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    // short.example.com has TTL 2: served from cache with TTL 2 then 1, and
    // once expired the upstream is asked again (fresh TTL 2).
    let r = ask(&nodens, "short.example.com.", RecordType::A, None).await;
    assert_eq!(r.answers[0].ttl, 2);
    assert_eq!(upstream.queries_for("short.example.com", RecordType::A), 1);
    let mut seen_ttls = vec![2];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = ask(&nodens, "short.example.com.", RecordType::A, None).await;
        assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 2)]);
        let count = upstream.queries_for("short.example.com", RecordType::A);
        if count == 2 {
            assert_eq!(r.answers[0].ttl, 2, "a refetched answer has the full TTL");
            break;
        }
        assert_eq!(count, 1);
        let ttl = r.answers[0].ttl;
        assert!(ttl == 1 || ttl == 2, "a cached answer is served with TTL {ttl}");
        if seen_ttls.last() != Some(&ttl) {
            seen_ttls.push(ttl);
        }
        assert!(tokio::time::Instant::now() < deadline, "entry never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen_ttls, vec![2, 1], "served TTLs before expiry");
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_ttl_bounds_apply() {
    let upstream = FakeUpstream::start_example().await;
    let mut c = config(&[upstream.addr()]);
    c.cache.min_ttl = 10;
    c.cache.max_ttl = 100;
    c.cache.min_negative_ttl = 5;
    c.cache.max_negative_ttl = 20;
    let nodens = Nodens::start(c).await;
    for i in 0..2 {
        let r = ask(&nodens, "www.example.com.", RecordType::A, None).await;
        let ttl = r.answers[0].ttl;
        assert!((98..=100).contains(&ttl), "ask {i}: max_ttl: {ttl}");
        let r = ask(&nodens, "short.example.com.", RecordType::A, None).await;
        let ttl = r.answers[0].ttl;
        assert!((8..=10).contains(&ttl), "ask {i}: min_ttl: {ttl}");
        let r = ask(&nodens, "none.example.com.", RecordType::A, None).await;
        let ttl = soa_of(&r).0;
        assert!((18..=20).contains(&ttl), "ask {i}: max_negative_ttl: {ttl}");
    }
    assert_eq!(upstream.queries(), 3);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_is_cached_name_wide_and_below() {
    // A second zone whose SOA TTL is below its MINIMUM: RFC 2308 §5 takes the lesser.
    let net = ZoneSpec::new("example.net.").soa(45, 600);
    let upstream = FakeUpstream::start_zones(vec![ZoneSpec::example(), net]).await;
    let mut c = config(&[upstream.addr()]);
    c.cache.min_negative_ttl = 0;
    let nodens = Nodens::start(c).await;

    let first = ask(&nodens, "missing.example.com.", RecordType::A, None).await;
    assert_eq!(first.metadata.response_code, ResponseCode::NXDomain);
    assert!(first.answers.is_empty());
    assert_eq!(soa_of(&first), (60, 60), "SOA TTL is min(300, MINIMUM 60)");

    let second = ask(&nodens, "missing.example.com.", RecordType::A, None).await;
    assert_eq!(second.metadata.response_code, ResponseCode::NXDomain);
    assert!(second.answers.is_empty());
    let (ttl, minimum) = soa_of(&second);
    assert!(ttl <= 60, "negative TTL {ttl} above min(SOA TTL, MINIMUM)");
    assert_eq!(minimum, 60);
    assert_eq!(upstream.queries(), 1);

    // RFC 8020 / RFC 2308 §5: the NXDOMAIN holds for every type of the name.
    let txt = ask(&nodens, "missing.example.com.", RecordType::TXT, None).await;
    assert_eq!(txt.metadata.response_code, ResponseCode::NXDomain);
    assert!(txt.answers.is_empty());
    assert!(soa_of(&txt).0 <= 60);
    assert_eq!(upstream.queries(), 1, "another type of an NXDOMAIN name went upstream");

    // ... and for every name below it.
    let below = ask(&nodens, "x.missing.example.com.", RecordType::A, None).await;
    assert_eq!(below.metadata.response_code, ResponseCode::NXDomain);
    assert!(below.answers.is_empty());
    assert!(soa_of(&below).0 <= 60);
    assert_eq!(soa_of(&below).1, 60);
    let deeper = ask(&nodens, "y.x.missing.example.com.", RecordType::AAAA, Some(1232)).await;
    assert_eq!(deeper.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(upstream.queries(), 1, "a name below an NXDOMAIN went upstream");
    // The answer synthesised for a name below echoes that name as asked.
    let query = raw_query("Z.MiSsInG.example.COM.", RecordType::MX, None);
    let answer = udp_raw(nodens.dns, &query).await;
    let qlen = question_len(&query);
    assert_eq!(answer[0..2], query[0..2], "ID");
    assert_eq!(
        answer[12..12 + qlen],
        query[12..12 + qlen],
        "question echoed byte for byte"
    );
    assert_eq!(answer[3] & 0x0f, 3, "NXDOMAIN");
    assert_eq!(upstream.queries(), 1);

    // A sibling is not covered.
    let sibling = ask(&nodens, "other.example.com.", RecordType::A, None).await;
    assert_eq!(sibling.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(upstream.queries(), 2);

    // SOA TTL 45 < MINIMUM 600: the TTL is 45.
    let net = ask(&nodens, "missing.example.net.", RecordType::A, None).await;
    assert_eq!(net.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(soa_of(&net), (45, 600));
    let net = ask(&nodens, "missing.example.net.", RecordType::A, None).await;
    assert!(soa_of(&net).0 <= 45);
    assert_eq!(upstream.queries(), 3);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodata_is_cached_per_type() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    for i in 0..2 {
        let r = ask(&nodens, "txtonly.example.com.", RecordType::AAAA, None).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "ask {i}");
        assert!(r.answers.is_empty(), "ask {i}");
        let (ttl, minimum) = soa_of(&r);
        assert!(ttl <= 60 && ttl > 0, "ask {i}: SOA TTL {ttl}");
        assert_eq!(minimum, 60);
    }
    assert_eq!(upstream.queries_for("txtonly.example.com", RecordType::AAAA), 1);
    assert_eq!(upstream.queries(), 1);

    // NODATA is for one type only: TXT goes upstream and has data.
    let r = ask(&nodens, "txtonly.example.com.", RecordType::TXT, None).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    match &r.answers[0].data {
        RData::TXT(txt) => assert_eq!(txt.to_string(), "hello"),
        other => panic!("expected TXT, got {other:?}"),
    }
    assert_eq!(upstream.queries_for("txtonly.example.com", RecordType::TXT), 1);
    assert_eq!(upstream.queries(), 2);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_bit_questions_are_cached_apart() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    let plain = ask(&nodens, "www.example.com.", RecordType::A, None).await;
    assert_eq!(a_addrs(&plain), vec![WWW_V4]);
    assert!(plain.edns.is_none());
    assert_eq!(upstream.queries(), 1);
    assert!(!upstream.last_dnssec_ok());

    let do_query = || {
        let mut q = build_query("www.example.com.", RecordType::A, Some(1232));
        q.edns.as_mut().unwrap().set_dnssec_ok(true);
        q
    };
    for i in 0..2 {
        let q = do_query();
        let r = udp_exchange(nodens.dns, &q, T).await.expect("answer");
        assert_eq!(r.metadata.id, q.metadata.id);
        assert_eq!(a_addrs(&r), vec![WWW_V4], "DO ask {i}");
        let edns = r.edns.as_ref().expect("OPT in the answer to an EDNS query");
        assert!(
            edns.flags().dnssec_ok,
            "DO ask {i}: DO bit copied into the answer (RFC 3225)"
        );
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "the DO=1 question must be asked upstream once: {seen:?}");
    assert!(!seen[0].dnssec_ok);
    assert!(seen[1].dnssec_ok);
    assert!(upstream.last_dnssec_ok());

    // Both entries stay: the plain question is still a hit.
    let plain = ask(&nodens, "www.example.com.", RecordType::A, None).await;
    assert_eq!(a_addrs(&plain), vec![WWW_V4]);
    assert_eq!(upstream.queries(), 2);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_different_questions_share_an_entry_and_are_echoed_as_asked() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    // (name as asked, upstream count afterwards): the first is a miss, the others hits.
    let asks = [
        ("www.example.com.", 1),
        ("WwW.ExAmPlE.CoM.", 1),
        ("WWW.EXAMPLE.COM.", 1),
        // A mixed-case first asker (miss path) ...
        ("MaIl.ExAmple.COM.", 2),
        // ... does not fix the case for later ones.
        ("mail.example.com.", 2),
    ];
    for (name, count) in asks {
        let query = raw_query(name, RecordType::A, None);
        let answer = udp_raw(nodens.dns, &query).await;
        let qlen = question_len(&query);
        assert_eq!(answer[0..2], query[0..2], "{name}: ID");
        assert_eq!(
            answer[12..12 + qlen],
            query[12..12 + qlen],
            "{name}: question not echoed byte for byte"
        );
        let m = Message::from_vec(&answer).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let want = if name.eq_ignore_ascii_case("mail.example.com.") {
            Ipv4Addr::new(192, 0, 2, 25)
        } else {
            WWW_V4
        };
        assert_eq!(a_addrs(&m), vec![want], "{name}");
        assert_eq!(upstream.queries(), count, "{name}: upstream queries");
    }
    assert_eq!(upstream.queries_for("www.example.com", RecordType::A), 1);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_chain_is_answered_whole_and_cached() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    for i in 0..3 {
        let r = ask(&nodens, "alias.example.com.", RecordType::A, None).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "ask {i}");
        assert_eq!(r.answers.len(), 2, "ask {i}: {:?}", r.answers);
        let cname = &r.answers[0];
        assert_eq!(cname.name.to_ascii(), "alias.example.com.");
        match &cname.data {
            RData::CNAME(target) => assert_eq!(target.0.to_ascii(), "www.example.com."),
            other => panic!("ask {i}: expected CNAME first, got {other:?}"),
        }
        assert!(cname.ttl <= 120 && cname.ttl > 0);
        assert_eq!(r.answers[1].name.to_ascii(), "www.example.com.");
        assert_eq!(a_addrs(&r), vec![WWW_V4]);
    }
    assert_eq!(upstream.queries(), 1);
    assert_eq!(upstream.queries_for("alias.example.com", RecordType::A), 1);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_is_echoed_only_to_edns_queries() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    // www: EDNS on the miss, plain on the hit; mail: the other way round.
    for (name, first_edns) in [("www.example.com.", true), ("mail.example.com.", false)] {
        for edns in [first_edns, !first_edns] {
            let q = build_query(name, RecordType::A, edns.then_some(4096));
            let raw = udp_raw(nodens.dns, &q.to_vec().unwrap()).await;
            let arcount = u16::from_be_bytes([raw[10], raw[11]]);
            let m = Message::from_vec(&raw).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(m.answers.len(), 1);
            if edns {
                assert_eq!(arcount, 1, "{name}: one OPT record");
                let opt = m.edns.as_ref().expect("OPT in the answer to an EDNS query");
                assert_eq!(opt.max_payload(), 1232, "{name}: our own payload size");
                assert_eq!(opt.version(), 0);
                assert!(!opt.flags().dnssec_ok);
            } else {
                assert_eq!(arcount, 0, "{name}: no OPT to a plain query");
                assert!(m.edns.is_none());
            }
        }
    }
    assert_eq!(upstream.queries(), 2);
    assert!(nodens.stop().await);
}
