//! The cache-hit path as a UDP worker runs it per datagram: guard (parse,
//! ACL), key, moka lookup, and writing the stored answer with the client's
//! ID, question bytes and decayed TTLs. No decode, no allocation.
//!
//! `cargo bench --bench cache_hit`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodens::config::{CacheConfig, UpstreamConfig};
use nodens::metrics::Metrics;
use nodens::pipeline::{Live, Pipeline, Stages, Step, Transport};
use nodens::stage::cache::{Cache, Entry, Key};
use nodens::stage::guard::Acl;
use nodens::stage::shaper::Shaper;
use nodens::stage::upstream::{UpstreamMetrics, UpstreamSettings, Upstreams};

const NAMES: usize = 10_000;

fn pipeline() -> Pipeline {
    let limits = nodens::app::ttl_limits(&CacheConfig::default());
    let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
    // Never contacted: every query in this bench is a hit.
    let upstreams = Upstreams::new(
        UpstreamSettings {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_secs(1),
            edns_udp_size: 1232,
        },
        UpstreamMetrics {
            requests: metrics.upstream_requests.clone(),
        },
    );
    let cache = Cache::new(64 << 20, limits);
    let now = Instant::now();
    for i in 0..NAMES {
        let name = Name::from_ascii(format!("name{i}.bench.test.")).unwrap();
        let mut resp = Message::new(1, MessageType::Response, OpCode::Query);
        resp.metadata.response_code = ResponseCode::NoError;
        resp.add_query(Query::query(name.clone(), RecordType::A));
        resp.add_answer(Record::from_rdata(name.clone(), 300, RData::A(A::new(192, 0, 2, 1))));
        let entry = Entry::from_response(&resp, &name, RecordType::A, false, &limits, now).unwrap();
        let q = query(i, false);
        let pq = nodens::wire::parse_query(&q).unwrap();
        cache.insert(&Key::new(pq.qname(&q), pq.qtype, pq.qclass, false), Arc::new(entry));
    }
    let stages = Stages {
        live: Live {
            acl: Acl::new(vec!["127.0.0.0/8".parse().unwrap()]),
            authority: None,
            upstreams: Arc::new(upstreams),
            cluster_fallback: None,
            search: None,
        },
        cache,
        // Never consulted: hits are not metered.
        shaper: Shaper::new(
            nodens::app::shaper_settings(&UpstreamConfig::default()),
            metrics.protection.clone(),
        ),
        refreshes: None,
    };
    Pipeline::new(stages, metrics, 1232, 64)
}

fn query(i: usize, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = i as u16;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(format!("name{i}.bench.test.")).unwrap(),
        RecordType::A,
    ));
    if edns {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let p = pipeline();
    let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let queries: Vec<Vec<u8>> = (0..NAMES).map(|i| query(i, i % 2 == 0)).collect();
    let mut out = Vec::with_capacity(4096);
    let mut g = c.benchmark_group("hit");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("answer_now", |b| {
        b.iter(|| {
            i = (i + 1) % NAMES;
            let step = p.answer_now(&queries[i], src, Transport::Udp, Instant::now(), &mut out);
            debug_assert!(matches!(step, Step::Answered { .. }));
            std::hint::black_box(&out);
        })
    });
    let keys: Vec<Key> = queries
        .iter()
        .map(|q| {
            let pq = nodens::wire::parse_query(q).unwrap();
            Key::new(pq.qname(q), pq.qtype, pq.qclass, false)
        })
        .collect();
    g.bench_function("cache_get", |b| {
        b.iter(|| {
            i = (i + 1) % NAMES;
            std::hint::black_box(p.cache().get(&keys[i], Instant::now()))
        })
    });
    g.bench_function("parse_only", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % NAMES;
                i
            },
            |i| std::hint::black_box(nodens::wire::parse_query(&queries[i])),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // The search-path shortcut's answer: a cached entry written behind a CNAME from the client's name.
    let target = Name::from_ascii("www.bench.test.").unwrap();
    let mut resp = Message::new(1, MessageType::Response, OpCode::Query);
    resp.add_query(Query::query(target.clone(), RecordType::A));
    for last in 1..=2 {
        resp.add_answer(Record::from_rdata(
            target.clone(),
            300,
            RData::A(A::new(192, 0, 2, last)),
        ));
    }
    let limits = nodens::app::ttl_limits(&CacheConfig::default());
    let now = Instant::now();
    let entry = Entry::from_response(&resp, &target, RecordType::A, false, &limits, now).unwrap();
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii("www.bench.test.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let mut e = hickory_proto::op::Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    let client = m.to_vec().unwrap();
    let pq = nodens::wire::parse_query(&client).unwrap();
    let mut g = c.benchmark_group("shortcut");
    g.throughput(Throughput::Elements(1));
    g.bench_function("write_behind_cname", |b| {
        b.iter(|| {
            entry
                .write_behind_cname(&client, &pq, &target, 5, now, 1232, 1232, &mut out)
                .unwrap();
            std::hint::black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
