//! The search-path shortcut (DESIGN §3, issue 5) over UDP against a running
//! nodens: a static cluster state (`fixtures/shortcut/cluster.yaml`), the
//! fake upstream serving `example.com.`, the host search domain
//! `corp.example.` and the root zone (so that every bare name has an
//! authoritative answer, NXDOMAIN included), `search.domains =
//! ["corp.example"]`, `ndots = 5`.
//!
//! A pod in namespace `default` looking up `P` sends, in glibc's order,
//! `P.default.svc.cluster.local`, `P.svc.cluster.local`, `P.cluster.local`,
//! `P.corp.example`, `P.`. Each case sends only the first of those and
//! checks that the one answer is final: the rcode, every answer record (the
//! CNAME's owner is the asked name with its case, its TTL the shortest of
//! the negative answers it stands for; the found records with their own
//! TTLs), and what the upstream was asked.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use nodens::config::{Config, SourceKind};
use nodens::stage::shortcut::Mode;

use crate::support::server::{self, eventually, http_get, metric, Nodens};
use crate::support::upstream::{build_query, tcp_exchange, udp_exchange, FakeUpstream, Transport, ZoneSpec};

use RecordType::{A, AAAA, CNAME, SOA, SRV, TXT};

const FIXTURE: &str = include_str!("fixtures/shortcut/cluster.yaml");
const T: Duration = Duration::from_secs(3);
/// How long a value that converges asynchronously (metrics, a background warm) may take.
const CONVERGE: Duration = Duration::from_secs(10);
/// `cluster.negative_ttl` by default: the TTL of the cluster zone's negative answers.
const NEGATIVE_TTL: u32 = 5;
/// A TTL that left the upstream as `ttl` and may have counted down in the cache since.
fn cached(ttl: u32) -> RangeInclusive<u32> {
    ttl.saturating_sub(60)..=ttl
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/// The upstream's zones:
///
/// | zone            | name                     | data                                   |
/// |-----------------|--------------------------|----------------------------------------|
/// | example.com.    | (ZoneSpec::example)      | www A+AAAA, mail A only, txtonly TXT,  |
/// |                 |                          | big 100 A, ...                         |
/// |                 | _sip._udp.example.com.   | SRV 10 5 5060 sip.example.com.         |
/// | corp.example.   | intranet                 | A 10.1.0.5                             |
/// |                 | wiki                     | A 10.1.0.7                             |
/// |                 | web                      | A 10.1.0.6 (loses to the cluster)      |
/// | extra.example.  | tools                    | A 10.2.0.9 (a search domain only where |
/// |                 |                          | a test configures it)                  |
/// |                 | wiki                     | A 10.2.0.7 (loses to corp.example)     |
/// | .               | intranet.                | A 192.0.2.200 (loses to corp.example)  |
/// |                 | web.                     | A 192.0.2.201 (loses to the cluster)   |
///
/// Every other name is NXDOMAIN with its zone's SOA (minimum 60).
fn zones(corp: ZoneSpec) -> Vec<ZoneSpec> {
    vec![
        ZoneSpec::example().record("_sip._udp 300 IN SRV 10 5 5060 sip"),
        corp.a("intranet", 300, "10.1.0.5")
            .a("wiki", 300, "10.1.0.7")
            .a("web", 300, "10.1.0.6"),
        ZoneSpec::new("extra.example.")
            .a("tools", 300, "10.2.0.9")
            .a("wiki", 300, "10.2.0.7"),
        ZoneSpec::new(".")
            .a("intranet.", 300, "192.0.2.200")
            .a("web.", 300, "192.0.2.201"),
    ]
}

struct Harness {
    nodens: Nodens,
    up: FakeUpstream,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(mode: Mode) -> Harness {
        Harness::start_with(mode, ZoneSpec::new("corp.example."), "", |_| {}).await
    }

    /// nodens on the fixture (plus `extra` YAML documents) with `mode`, the
    /// upstream serving `zones(corp)`, `tweak` applied to the config; waits for /readyz.
    async fn start_with(mode: Mode, corp: ZoneSpec, extra: &str, tweak: impl FnOnce(&mut Config)) -> Harness {
        let up = FakeUpstream::start_zones(zones(corp)).await;
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("cluster.yaml");
        std::fs::write(&path, format!("{FIXTURE}{extra}")).unwrap();
        let mut config = server::config(&[up.addr()]);
        config.cluster.source = SourceKind::Static;
        config.cluster.static_file = Some(path);
        config.search.shortcut = mode;
        config.search.ndots = 5;
        config.search.domains = vec!["corp.example".into()];
        config.search.extra_domains = Vec::new();
        tweak(&mut config);
        let nodens = Nodens::start(config).await;
        let admin = nodens.admin;
        assert!(
            eventually(CONVERGE, || async move { http_get(admin, "/readyz").await.0 == 200 }).await,
            "nodens never became ready (cluster state not loaded?)"
        );
        Harness { nodens, up, _dir: dir }
    }

    async fn ask(&self, name: &str, rtype: RecordType) -> Message {
        self.ask_with(name, rtype, None).await
    }

    async fn ask_with(&self, name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
        let q = build_query(name, rtype, edns);
        udp_exchange(self.nodens.dns, &q, T)
            .await
            .unwrap_or_else(|| panic!("no answer over UDP for {name} {rtype}"))
    }

    /// Every (name, type) the upstream was asked, lowercase, in order.
    fn seen(&self) -> Vec<(String, RecordType)> {
        self.up.seen().into_iter().map(|q| (q.name, q.rtype)).collect()
    }

    fn count(&self, name: &str, rtype: RecordType) -> u64 {
        self.up.queries_for(name, rtype)
    }

    async fn metrics(&self) -> String {
        http_get(self.nodens.admin, "/metrics").await.1
    }

    async fn walks(&self, outcome: &str) -> f64 {
        let text = self.metrics().await;
        metric(&text, &format!(r#"nodens_shortcut_walks_total{{outcome="{outcome}"}}"#)).unwrap_or(0.0)
    }

    /// Polls until the walk counters are exactly `want` (outcome, count).
    async fn expect_walks(&self, want: &[(&str, f64)]) {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        let (mut ok, mut last) = (false, Vec::new());
        while !ok && tokio::time::Instant::now() < deadline {
            if !last.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last.clear();
            for (outcome, _) in want {
                last.push((*outcome, self.walks(outcome).await));
            }
            ok = last == want;
        }
        assert!(ok, "nodens_shortcut_walks_total: want {want:?}, got {last:?}");
    }

    /// No name of the cluster zone ever left nodens.
    fn assert_no_cluster_names_upstream(&self) {
        let leaked: Vec<_> = self
            .seen()
            .into_iter()
            .filter(|(n, _)| n.ends_with("cluster.local."))
            .collect();
        assert!(leaked.is_empty(), "cluster-zone names were sent upstream: {leaked:?}");
    }
}

// ---------------------------------------------------------------------------
// Expected answers
// ---------------------------------------------------------------------------

/// One expected record: exact owner (case included), type, TTL range, data as text.
#[derive(Clone, Debug)]
struct Want {
    name: String,
    rtype: RecordType,
    ttl: RangeInclusive<u32>,
    data: String,
}

fn rr(name: &str, rtype: RecordType, ttl: RangeInclusive<u32>, data: &str) -> Want {
    Want {
        name: name.to_string(),
        rtype,
        ttl,
        data: data.to_string(),
    }
}

/// The synthesized CNAME: owner = the asked name as asked, TTL = the cluster's negative TTL.
fn cname(asked: &str, target: &str) -> Want {
    rr(asked, CNAME, NEGATIVE_TTL..=NEGATIVE_TTL, target)
}

fn show(records: &[Record]) -> String {
    let mut s = String::new();
    for r in records {
        let _ = writeln!(s, "    {} {} {} {}", r.name, r.ttl, r.record_type(), r.data);
    }
    s
}

/// Checks the rcode, that the answer is not truncated, and every answer record, in order.
fn check(what: &str, m: &Message, rcode: ResponseCode, want: &[Want]) {
    let dump = format!("{what}: answer section:\n{}", show(&m.answers));
    assert_eq!(m.metadata.response_code, rcode, "{what}: rcode\n{dump}");
    assert!(!m.metadata.truncation, "{what}: TC set\n{dump}");
    assert_eq!(m.answers.len(), want.len(), "{what}: answer count\n{dump}");
    for (got, want) in m.answers.iter().zip(want) {
        assert_eq!(got.name.to_string(), want.name, "{what}: owner\n{dump}");
        assert_eq!(got.record_type(), want.rtype, "{what}: type\n{dump}");
        assert!(
            want.ttl.contains(&got.ttl),
            "{what}: TTL {} not in {:?}\n{dump}",
            got.ttl,
            want.ttl
        );
        assert_eq!(got.data.to_string(), want.data, "{what}: data\n{dump}");
    }
}

/// NXDOMAIN for `what` with the cluster zone's SOA (owner cluster.local., TTL negative_ttl) and no answers.
fn check_cluster_nxdomain(what: &str, m: &Message) {
    check(what, m, ResponseCode::NXDomain, &[]);
    let soa: Vec<_> = m.authorities.iter().filter(|r| r.record_type() == SOA).collect();
    assert_eq!(soa.len(), 1, "{what}: one SOA in authority\n{}", show(&m.authorities));
    assert_eq!(soa[0].name.to_string(), "cluster.local.", "{what}: SOA owner");
    assert_eq!(soa[0].ttl, NEGATIVE_TTL, "{what}: SOA TTL");
}

/// A plain NXDOMAIN (the upstream's, from the cache) for a name outside the cluster.
fn check_nxdomain(what: &str, m: &Message) {
    check(what, m, ResponseCode::NXDomain, &[]);
    assert!(
        m.authorities.iter().any(|r| r.record_type() == SOA),
        "{what}: SOA in authority\n{}",
        show(&m.authorities)
    );
}

// ---------------------------------------------------------------------------
// The correctness table, shortcut = "cname"
// ---------------------------------------------------------------------------

struct Case {
    what: &'static str,
    ask: &'static str,
    rtype: RecordType,
    rcode: ResponseCode,
    want: Vec<Want>,
    /// (name, type, count): what the upstream has been asked for, in total, after this case.
    upstream: Vec<(&'static str, RecordType, u64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_mode_answers_the_first_query_of_the_walk() {
    let h = Harness::start(Mode::Cname).await;
    let www_a = "WWW.Example.COM.default.svc.cluster.local.";
    let www_aaaa = "www.example.com.default.svc.cluster.local.";
    let mail = "mail.example.com.default.svc.cluster.local.";
    let web = "web.shop.default.svc.cluster.local.";
    let kube = "kubernetes.default.default.svc.cluster.local.";
    let intranet = "Intranet.default.svc.cluster.local.";
    let wiki = "wiki.default.svc.cluster.local.";
    let txt = "txtonly.example.com.default.svc.cluster.local.";
    let srv = "_sip._udp.example.com.default.svc.cluster.local.";
    let cases = vec![
        Case {
            what: "external name, A: CNAME to the bare name and its A",
            ask: www_a,
            rtype: A,
            rcode: ResponseCode::NoError,
            want: vec![
                cname(www_a, "www.example.com."),
                rr("www.example.com.", A, cached(300), "192.0.2.1"),
            ],
            // The host-domain candidate, then the bare name; nothing else.
            upstream: vec![("www.example.com.corp.example.", A, 1), ("www.example.com.", A, 1)],
        },
        Case {
            what: "external name, AAAA",
            ask: www_aaaa,
            rtype: AAAA,
            rcode: ResponseCode::NoError,
            want: vec![
                cname(www_aaaa, "www.example.com."),
                rr("www.example.com.", AAAA, cached(300), "2001:db8::1"),
            ],
            // The host candidate's NXDOMAIN is name-wide (RFC 8020): not asked again for AAAA.
            upstream: vec![
                ("www.example.com.corp.example.", AAAA, 0),
                ("www.example.com.", AAAA, 1),
            ],
        },
        Case {
            what: "a name with only A, asked for AAAA: CNAME alone, NOERROR (the A exists: glibc stops there)",
            ask: mail,
            rtype: AAAA,
            rcode: ResponseCode::NoError,
            want: vec![cname(mail, "mail.example.com.")],
            // The bare name has no AAAA: the walk checks its A before stopping there.
            upstream: vec![
                ("mail.example.com.corp.example.", AAAA, 1),
                ("mail.example.com.", AAAA, 1),
                ("mail.example.com.", A, 1),
            ],
        },
        Case {
            what: "a service of the pod's namespace asked directly: the authority's answer, no CNAME",
            ask: "web.shop.svc.cluster.local.",
            rtype: A,
            rcode: ResponseCode::NoError,
            want: vec![rr("web.shop.svc.cluster.local.", A, 30..=30, "10.96.10.5")],
            // `web.corp.example` and `web.` exist upstream but are never looked at.
            upstream: vec![("web.corp.example.", A, 0), ("web.", A, 0)],
        },
        Case {
            what: "svc.ns name, A: CNAME to the service and its A",
            ask: web,
            rtype: A,
            rcode: ResponseCode::NoError,
            want: vec![
                cname(web, "web.shop.svc.cluster.local."),
                rr("web.shop.svc.cluster.local.", A, 30..=30, "10.96.10.5"),
            ],
            upstream: vec![("web.shop.corp.example.", A, 0), ("web.shop.", A, 0)],
        },
        Case {
            what: "svc.ns name, AAAA",
            ask: web,
            rtype: AAAA,
            rcode: ResponseCode::NoError,
            want: vec![
                cname(web, "web.shop.svc.cluster.local."),
                rr("web.shop.svc.cluster.local.", AAAA, 30..=30, "fd00:10:96::a05"),
            ],
            upstream: vec![("web.shop.corp.example.", AAAA, 0), ("web.shop.", AAAA, 0)],
        },
        Case {
            what: "svc.ns name of an IPv4-only service, AAAA: CNAME alone, NOERROR",
            ask: kube,
            rtype: AAAA,
            rcode: ResponseCode::NoError,
            want: vec![cname(kube, "kubernetes.default.svc.cluster.local.")],
            upstream: vec![
                ("kubernetes.default.corp.example.", AAAA, 0),
                ("kubernetes.default.", AAAA, 0),
            ],
        },
        Case {
            what: "host search domain wins over an existing bare name",
            ask: intranet,
            rtype: A,
            rcode: ResponseCode::NoError,
            want: vec![
                cname(intranet, "intranet.corp.example."),
                rr("intranet.corp.example.", A, cached(300), "10.1.0.5"),
            ],
            // The walk stops at the host domain: the bare `intranet.` (192.0.2.200) is never asked.
            upstream: vec![("intranet.corp.example.", A, 1), ("intranet.", A, 0)],
        },
        Case {
            what: "host search domain, bare name absent",
            ask: wiki,
            rtype: A,
            rcode: ResponseCode::NoError,
            want: vec![
                cname(wiki, "wiki.corp.example."),
                rr("wiki.corp.example.", A, cached(300), "10.1.0.7"),
            ],
            upstream: vec![("wiki.corp.example.", A, 1), ("wiki.", A, 0)],
        },
        Case {
            what: "TXT: CNAME and the TXT",
            ask: txt,
            rtype: TXT,
            rcode: ResponseCode::NoError,
            want: vec![
                cname(txt, "txtonly.example.com."),
                rr("txtonly.example.com.", TXT, cached(300), "hello"),
            ],
            upstream: vec![
                ("txtonly.example.com.corp.example.", TXT, 1),
                ("txtonly.example.com.", TXT, 1),
            ],
        },
        Case {
            what: "SRV: CNAME and the SRV",
            ask: srv,
            rtype: SRV,
            rcode: ResponseCode::NoError,
            want: vec![
                cname(srv, "_sip._udp.example.com."),
                rr("_sip._udp.example.com.", SRV, cached(300), "10 5 5060 sip.example.com."),
            ],
            upstream: vec![
                ("_sip._udp.example.com.corp.example.", SRV, 1),
                ("_sip._udp.example.com.", SRV, 1),
            ],
        },
    ];
    for case in &cases {
        let m = h.ask(case.ask, case.rtype).await;
        let what = format!("{} ({} {})", case.what, case.ask, case.rtype);
        // One round trip: this single answer is final for the client.
        check(&what, &m, case.rcode, &case.want);
        assert_eq!(m.queries.len(), 1, "{what}: question echoed");
        assert_eq!(
            m.queries[0].name().to_string(),
            case.ask,
            "{what}: question echoed with its case"
        );
        for &(name, rtype, n) in &case.upstream {
            assert_eq!(
                h.count(name, rtype),
                n,
                "{what}: upstream queries for {name} {rtype}; all: {:?}",
                h.seen()
            );
        }
        h.assert_no_cluster_names_upstream();
    }
    // Asked again, every answer comes from the index and the cache: the same, and no upstream query.
    let before = h.up.queries();
    for case in &cases {
        let m = h.ask(case.ask, case.rtype).await;
        check(&format!("again: {}", case.what), &m, case.rcode, &case.want);
    }
    assert_eq!(
        h.up.queries(),
        before,
        "the hit path asked the upstream: {:?}",
        h.seen()
    );
}

/// A name that exists nowhere: NXDOMAIN for the asked name with the cluster
/// SOA after the walk, and the client's own walk that follows is answered
/// from the index and the cache (one upstream query per name and type).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_exists_nowhere_is_nxdomain_after_the_walk() {
    let h = Harness::start(Mode::Cname).await;
    let p = "nosuch.example.com";
    // glibc asks A and AAAA for the first name of its search list.
    for rtype in [A, AAAA] {
        let first = h.ask(&format!("{p}.default.svc.cluster.local."), rtype).await;
        check_cluster_nxdomain(&format!("{p}.default.svc.cluster.local {rtype}"), &first);
    }
    h.expect_walks(&[
        ("not_found", 2.0),
        ("bare_name", 0.0),
        ("host_domain", 0.0),
        ("cluster", 0.0),
    ])
    .await;
    // The walk fetched each real name once (NXDOMAIN is name-wide: once for both types).
    let walked = |h: &Harness| {
        for name in [format!("{p}.corp.example."), format!("{p}.")] {
            assert_eq!(h.count(&name, A), 1, "{name} A; upstream saw {:?}", h.seen());
            assert_eq!(h.count(&name, AAAA), 0, "{name} AAAA; upstream saw {:?}", h.seen());
        }
    };
    walked(&h);
    // glibc goes on with its search list: answered from the index and the cache.
    for rtype in [A, AAAA] {
        for suffix in ["svc.cluster.local.", "cluster.local."] {
            let name = format!("{p}.{suffix}");
            check_cluster_nxdomain(&format!("{name} {rtype}"), &h.ask(&name, rtype).await);
        }
        for name in [format!("{p}.corp.example."), format!("{p}.")] {
            check_nxdomain(&format!("{name} {rtype}"), &h.ask(&name, rtype).await);
        }
    }
    walked(&h);
    h.assert_no_cluster_names_upstream();
}

/// `P` with ndots (5) dots or more was already tried as absolute: untouched.
/// Four dots is the last that is walked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_ndots_dots_are_untouched() {
    let h = Harness::start(Mode::Cname).await;
    let six_labels = "a.b.c.d.e.f.default.svc.cluster.local.";
    check_cluster_nxdomain(six_labels, &h.ask(six_labels, A).await);
    assert_eq!(
        h.up.queries(),
        0,
        "upstream asked for a name with 5 dots: {:?}",
        h.seen()
    );
    h.expect_walks(&[
        ("not_found", 0.0),
        ("bare_name", 0.0),
        ("host_domain", 0.0),
        ("cluster", 0.0),
    ])
    .await;

    let five_labels = "a.b.c.d.e.default.svc.cluster.local.";
    check_cluster_nxdomain(five_labels, &h.ask(five_labels, A).await);
    assert_eq!(
        h.count("a.b.c.d.e.corp.example.", A),
        1,
        "4 dots are walked: {:?}",
        h.seen()
    );
    assert_eq!(h.count("a.b.c.d.e.", A), 1, "4 dots are walked: {:?}", h.seen());
    h.expect_walks(&[("not_found", 1.0)]).await;

    // `ndots` is configurable: with 2, `www.example.com` (2 dots) is untouched, `intranet.x` (1 dot) walked.
    let h = Harness::start_with(Mode::Cname, ZoneSpec::new("corp.example."), "", |c| c.search.ndots = 2).await;
    let www = "www.example.com.default.svc.cluster.local.";
    check_cluster_nxdomain("ndots 2: 2 dots", &h.ask(www, A).await);
    assert_eq!(
        h.up.queries(),
        0,
        "ndots 2: upstream asked for a name with 2 dots: {:?}",
        h.seen()
    );
    let wiki = "wiki.default.svc.cluster.local.";
    let m = h.ask(wiki, A).await;
    let want = [
        cname(wiki, "wiki.corp.example."),
        rr("wiki.corp.example.", A, cached(300), "10.1.0.7"),
    ];
    check("ndots 2: no dot", &m, ResponseCode::NoError, &want);
    check_cluster_nxdomain(
        "ndots 2: 1 dot",
        &h.ask("intranet.x.default.svc.cluster.local.", A).await,
    );
    assert_eq!(
        h.count("intranet.x.corp.example.", A),
        1,
        "ndots 2: 1 dot is walked: {:?}",
        h.seen()
    );
}

/// The host search domains: the node's resolv.conf `search` line when
/// `search.domains` is empty, then `search.extra_domains`, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_domains_come_from_resolv_conf_then_extra_domains() {
    let etc = tempfile::tempdir().unwrap();
    let resolv = etc.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\nsearch corp.example\noptions ndots:2\n").unwrap();
    let h = Harness::start_with(Mode::Cname, ZoneSpec::new("corp.example."), "", |c| {
        c.search.domains = Vec::new();
        c.upstream.resolv_conf = resolv;
        c.search.extra_domains = vec!["extra.example".into()];
    })
    .await;
    let cases = [
        // From resolv.conf.
        (
            "intranet.default.svc.cluster.local.",
            "intranet.corp.example.",
            "10.1.0.5",
        ),
        // Only under the extra domain.
        ("tools.default.svc.cluster.local.", "tools.extra.example.", "10.2.0.9"),
        // Under both: resolv.conf's comes first.
        ("wiki.default.svc.cluster.local.", "wiki.corp.example.", "10.1.0.7"),
    ];
    for (ask, target, ip) in cases {
        let m = h.ask(ask, A).await;
        check(
            ask,
            &m,
            ResponseCode::NoError,
            &[cname(ask, target), rr(target, A, cached(300), ip)],
        );
    }
    // The walk order: `tools.corp.example` was asked (NXDOMAIN) before `tools.extra.example`.
    let order: Vec<String> = h
        .seen()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("tools."))
        .collect();
    assert_eq!(
        order,
        vec!["tools.corp.example.".to_string(), "tools.extra.example.".to_string()]
    );
    assert_eq!(h.count("wiki.extra.example.", A), 0, "{:?}", h.seen());
}

/// `shortcut = "off"`: the first query of a walk is the cluster's plain NXDOMAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_mode_changes_nothing() {
    let h = Harness::start(Mode::Off).await;
    for name in [
        "www.example.com.default.svc.cluster.local.",
        "web.shop.default.svc.cluster.local.",
        "intranet.default.svc.cluster.local.",
        "nosuch.example.com.default.svc.cluster.local.",
    ] {
        for rtype in [A, AAAA] {
            check_cluster_nxdomain(&format!("off: {name} {rtype}"), &h.ask(name, rtype).await);
        }
    }
    // Nothing was walked or warmed.
    let text = h.metrics().await;
    assert_eq!(metric(&text, "nodens_shortcut_warms_total"), Some(0.0));
    h.expect_walks(&[
        ("not_found", 0.0),
        ("bare_name", 0.0),
        ("host_domain", 0.0),
        ("cluster", 0.0),
    ])
    .await;
    assert_eq!(h.up.queries(), 0, "off mode asked the upstream: {:?}", h.seen());
    // The rest of the client's walk is plain resolution.
    check_cluster_nxdomain("off: P.svc.Z", &h.ask("www.example.com.svc.cluster.local.", A).await);
    let bare = h.ask("www.example.com.", A).await;
    check(
        "off: bare",
        &bare,
        ResponseCode::NoError,
        &[rr("www.example.com.", A, cached(300), "192.0.2.1")],
    );
    assert_eq!(h.seen(), vec![("www.example.com.".to_string(), A)]);
}

/// `shortcut = "nxdomain"`: cluster suffixes are the index's NXDOMAIN and never
/// go upstream; the first one starts a background lookup of the bare name, so
/// the client finds it in the cache when its walk gets there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_mode_answers_cluster_suffixes_locally_and_warms_the_bare_name() {
    let h = Harness::start(Mode::Nxdomain).await;
    let first = h.ask("www.example.com.default.svc.cluster.local.", A).await;
    check_cluster_nxdomain("nxdomain: first query", &first);
    // Only the suffixed query was asked; the bare name is fetched in the background, once.
    let up = &h.up;
    assert!(
        eventually(CONVERGE, || async move { up.queries_for("www.example.com.", A) >= 1 }).await,
        "the bare name was never warmed; upstream saw {:?}",
        h.seen()
    );
    let admin = h.nodens.admin;
    assert!(
        eventually(CONVERGE, || async move {
            metric(&http_get(admin, "/metrics").await.1, "nodens_shortcut_warms_total") == Some(1.0)
        })
        .await,
        "nodens_shortcut_warms_total is not 1"
    );
    // The rest of the client's walk.
    for name in ["www.example.com.svc.cluster.local.", "www.example.com.cluster.local."] {
        check_cluster_nxdomain(&format!("nxdomain: {name}"), &h.ask(name, A).await);
    }
    check_nxdomain(
        "nxdomain: host domain",
        &h.ask("www.example.com.corp.example.", A).await,
    );
    let bare = h.ask("www.example.com.", A).await;
    check(
        "nxdomain: bare name",
        &bare,
        ResponseCode::NoError,
        &[rr("www.example.com.", A, cached(300), "192.0.2.1")],
    );
    assert_eq!(
        h.count("www.example.com.", A),
        1,
        "the bare name was not a cache hit: {:?}",
        h.seen()
    );
    assert_eq!(h.count("www.example.com.corp.example.", A), 1, "{:?}", h.seen());
    h.assert_no_cluster_names_upstream();
    // No CNAME walks in this mode.
    h.expect_walks(&[
        ("not_found", 0.0),
        ("bare_name", 0.0),
        ("host_domain", 0.0),
        ("cluster", 0.0),
    ])
    .await;
}

/// EDNS and the DO bit go through the shortcut: the answer has an OPT with DO,
/// and the walk's upstream lookups carry DO (they are cached apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_and_the_do_bit_are_preserved() {
    let h = Harness::start(Mode::Cname).await;
    let name = "www.example.com.default.svc.cluster.local.";
    let mut q = build_query(name, A, Some(1232));
    q.edns.as_mut().unwrap().set_dnssec_ok(true);
    let m = udp_exchange(h.nodens.dns, &q, T).await.expect("an answer");
    check(
        "DO=1",
        &m,
        ResponseCode::NoError,
        &[
            cname(name, "www.example.com."),
            rr("www.example.com.", A, cached(300), "192.0.2.1"),
        ],
    );
    let opt = m.edns.as_ref().expect("OPT in the answer to an EDNS query");
    assert!(opt.flags().dnssec_ok, "DO echoed");
    assert!(
        h.up.seen().iter().all(|s| s.dnssec_ok),
        "the walk's upstream queries carry DO: {:?}",
        h.up.seen()
    );

    // Without EDNS: no OPT in the answer, and (DO=0) a separate cache entry.
    let m = h.ask(name, A).await;
    check(
        "no EDNS",
        &m,
        ResponseCode::NoError,
        &[
            cname(name, "www.example.com."),
            rr("www.example.com.", A, cached(300), "192.0.2.1"),
        ],
    );
    assert!(m.edns.is_none(), "no OPT for a query without EDNS");
    // EDNS without DO.
    let m = h.ask_with(name, A, Some(1232)).await;
    check(
        "EDNS DO=0",
        &m,
        ResponseCode::NoError,
        &[
            cname(name, "www.example.com."),
            rr("www.example.com.", A, cached(300), "192.0.2.1"),
        ],
    );
    assert!(m.edns.as_ref().is_some_and(|o| !o.flags().dnssec_ok), "OPT without DO");
}

/// The CNAME answer obeys the client's UDP size: 100 A records do not fit in
/// 512 bytes (TC=1, the client retries over TCP), and over TCP it is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_answer_goes_tc_over_udp_and_whole_over_tcp() {
    let h = Harness::start(Mode::Cname).await;
    let name = "big.example.com.default.svc.cluster.local.";
    let udp = h.ask(name, A).await;
    assert_eq!(udp.metadata.response_code, ResponseCode::NoError, "UDP rcode");
    assert!(
        udp.metadata.truncation,
        "TC=1 over UDP without EDNS\n{}",
        show(&udp.answers)
    );
    assert!(udp.answers.len() < 100, "a truncated answer over UDP");

    let tcp = tcp_exchange(h.nodens.dns, &build_query(name, A, None), T)
        .await
        .expect("an answer over TCP");
    let mut want = vec![cname(name, "big.example.com.")];
    // The upstream's order.
    for r in tcp.answers.iter().skip(1) {
        want.push(rr("big.example.com.", A, cached(300), &r.data.to_string()));
    }
    check("TCP", &tcp, ResponseCode::NoError, &want);
    let got: BTreeSet<String> = tcp.answers.iter().skip(1).map(|r| r.data.to_string()).collect();
    let all: BTreeSet<String> = (1..=100).map(|i| format!("10.0.0.{i}")).collect();
    assert_eq!(got, all, "the 100 A records");
    // One lookup of the real name: over UDP, truncated by the upstream, then over TCP.
    let big: Vec<Transport> =
        h.up.seen()
            .into_iter()
            .filter(|q| q.name == "big.example.com." && q.rtype == A)
            .map(|q| q.transport)
            .collect();
    assert_eq!(big, vec![Transport::Udp, Transport::Tcp], "upstream saw {:?}", h.seen());
}

/// The CNAME claims that every earlier candidate does not exist, so it lives
/// no longer than the shortest of those negative answers: the cluster's
/// negative TTL and the remaining TTL of the host domain's cached NXDOMAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cname_ttl_is_the_shortest_negative_part() {
    // The cluster's negative TTL long, the host domain's NXDOMAIN short (SOA minimum 40).
    let corp = ZoneSpec::new("corp.example.").soa(300, 40);
    let h = Harness::start_with(Mode::Cname, corp, "", |c| c.cluster.negative_ttl = 600).await;
    let name = "www.example.com.default.svc.cluster.local.";
    let m = h.ask(name, A).await;
    let want = [
        rr(name, CNAME, 1..=40, "www.example.com."),
        rr("www.example.com.", A, cached(300), "192.0.2.1"),
    ];
    check("host NXDOMAIN shorter", &m, ResponseCode::NoError, &want);
    // The bound came from the host candidate's cached NXDOMAIN (40 s), the walk's only upstream negative.
    let host = h.ask("www.example.com.corp.example.", A).await;
    check_nxdomain("host candidate", &host);
    let soa = host.authorities.iter().find(|r| r.record_type() == SOA).expect("SOA");
    assert!(
        (1..=40).contains(&soa.ttl),
        "the host candidate's NXDOMAIN TTL {}",
        soa.ttl
    );
    assert_eq!(h.count("www.example.com.corp.example.", A), 1, "{:?}", h.seen());

    // The other way round: the cluster's negative TTL (5) is the shorter.
    let h = Harness::start(Mode::Cname).await;
    let m = h.ask(name, A).await;
    check(
        "cluster negative TTL shorter",
        &m,
        ResponseCode::NoError,
        &[
            cname(name, "www.example.com."),
            rr("www.example.com.", A, cached(300), "192.0.2.1"),
        ],
    );
}

/// `nodens_shortcut_walks_total` counts each walk by where it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_are_counted_by_outcome() {
    let h = Harness::start(Mode::Cname).await;
    h.expect_walks(&[
        ("bare_name", 0.0),
        ("host_domain", 0.0),
        ("cluster", 0.0),
        ("not_found", 0.0),
    ])
    .await;
    h.ask("www.example.com.default.svc.cluster.local.", A).await;
    h.expect_walks(&[
        ("bare_name", 1.0),
        ("host_domain", 0.0),
        ("cluster", 0.0),
        ("not_found", 0.0),
    ])
    .await;
    h.ask("intranet.default.svc.cluster.local.", A).await;
    h.expect_walks(&[
        ("bare_name", 1.0),
        ("host_domain", 1.0),
        ("cluster", 0.0),
        ("not_found", 0.0),
    ])
    .await;
    h.ask("web.shop.default.svc.cluster.local.", A).await;
    h.expect_walks(&[
        ("bare_name", 1.0),
        ("host_domain", 1.0),
        ("cluster", 1.0),
        ("not_found", 0.0),
    ])
    .await;
    h.ask("nosuch.example.com.default.svc.cluster.local.", A).await;
    h.expect_walks(&[
        ("bare_name", 1.0),
        ("host_domain", 1.0),
        ("cluster", 1.0),
        ("not_found", 1.0),
    ])
    .await;
    // A hit-path walk (everything cached) counts too.
    h.ask("www.example.com.default.svc.cluster.local.", A).await;
    h.expect_walks(&[
        ("bare_name", 2.0),
        ("host_domain", 1.0),
        ("cluster", 1.0),
        ("not_found", 1.0),
    ])
    .await;
    // The CNAME answers were counted as the shortcut's (the UDP workers flush their counts when idle).
    let admin = h.nodens.admin;
    let series = r#"nodens_responses_total{rcode="NOERROR",source="shortcut"}"#;
    assert!(
        eventually(CONVERGE, || async move {
            metric(&http_get(admin, "/metrics").await.1, series) == Some(4.0)
        })
        .await,
        "{series}: {:?}",
        metric(&h.metrics().await, series)
    );
}

/// One service `app` per namespace ns0..ns49, so that every namespace exists.
fn namespaces_yaml(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(
            s,
            "\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: app\n  namespace: ns{i}\n\
             spec:\n  clusterIP: 10.97.0.{ip}\n  clusterIPs:\n  - 10.97.0.{ip}\n  ipFamilies:\n  - IPv4\n  \
             ports:\n  - name: http\n    port: 80\n    protocol: TCP\n  type: ClusterIP\n",
            ip = i + 1
        );
    }
    s
}

/// The walk's lookups are ordinary cache entries under the real names: the
/// same external name looked up from 50 namespaces at once costs one
/// upstream query per real name and type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_external_name_from_50_namespaces_costs_one_upstream_query_per_name_and_type() {
    const N: usize = 50;
    let h = Harness::start_with(Mode::Cname, ZoneSpec::new("corp.example."), &namespaces_yaml(N), |_| {}).await;
    // The namespaces are in the index.
    let m = h.ask("app.ns49.svc.cluster.local.", A).await;
    check(
        "ns49",
        &m,
        ResponseCode::NoError,
        &[rr("app.ns49.svc.cluster.local.", A, 30..=30, "10.97.0.50")],
    );

    for (rtype, data) in [(A, "192.0.2.1"), (AAAA, "2001:db8::1")] {
        let asks = (0..N).map(|i| {
            let h = &h;
            async move {
                let name = format!("www.example.com.ns{i}.svc.cluster.local.");
                (name.clone(), h.ask(&name, rtype).await)
            }
        });
        for (name, m) in futures::future::join_all(asks).await {
            check(
                &format!("{name} {rtype}"),
                &m,
                ResponseCode::NoError,
                &[
                    cname(&name, "www.example.com."),
                    rr("www.example.com.", rtype, cached(300), data),
                ],
            );
        }
    }
    let counts = [
        ("www.example.com.", A, 1),
        ("www.example.com.", AAAA, 1),
        ("www.example.com.corp.example.", A, 1),
        // Asked after the A walks: the host candidate's NXDOMAIN is name-wide (RFC 8020).
        ("www.example.com.corp.example.", AAAA, 0),
    ];
    for (name, rtype, n) in counts {
        assert_eq!(h.count(name, rtype), n, "{name} {rtype}; upstream saw {:?}", h.seen());
    }
    assert_eq!(h.up.queries(), 3, "upstream saw {:?}", h.seen());
}

// ---------------------------------------------------------------------------
// Names the walk must get right
// ---------------------------------------------------------------------------

/// `web.shop.svc.cluster.local` has 4 dots, so with ndots:5 glibc tries it
/// through the search list first: `web.shop.svc.cluster.local.default.svc.cluster.local`.
/// The walk's last candidate, the "bare" name, is a cluster name: the
/// authority knows it exists, and it must not be sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fully_qualified_cluster_name_through_the_search_list() {
    let h = Harness::start(Mode::Cname).await;
    let name = "web.shop.svc.cluster.local.default.svc.cluster.local.";
    let m = h.ask(name, A).await;
    let leaked: Vec<_> = h
        .seen()
        .into_iter()
        .filter(|(n, _)| n.ends_with("cluster.local."))
        .collect();
    assert!(
        leaked.is_empty(),
        "cluster-zone names were sent upstream: {leaked:?}; the client got {:?}:\n{}",
        m.metadata.response_code,
        show(&m.answers)
    );
    check(
        "FQ cluster name via the search list",
        &m,
        ResponseCode::NoError,
        &[
            cname(name, "web.shop.svc.cluster.local."),
            rr("web.shop.svc.cluster.local.", A, 30..=30, "10.96.10.5"),
        ],
    );

    // `nxdomain` mode: the bare name to warm is a cluster name, which the index answers; no warm.
    let h = Harness::start(Mode::Nxdomain).await;
    check_cluster_nxdomain("nxdomain mode", &h.ask(name, A).await);
    // A warm is counted when it is queued, before the answer is sent.
    let warms = metric(&h.metrics().await, "nodens_shortcut_warms_total");
    if warms != Some(0.0) {
        let up = &h.up;
        eventually(CONVERGE, || async move { up.queries() > 0 }).await;
    }
    assert!(
        warms == Some(0.0) && h.up.queries() == 0,
        "nxdomain mode warmed a cluster name upstream: {warms:?} warms, upstream saw {:?}",
        h.seen()
    );
}

/// After a walk that found nothing, the client goes on with `P.svc.Z`. For P
/// with a dot that is also `P'.<ns>.svc.Z` for P = `P'.<ns>`: it must not be
/// taken for the first query of a new walk, which would answer the client's
/// P with a name glibc would never have found (here `intranet.corp.example`
/// for `intranet.nowhere`), and ask the upstream for names glibc would never ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_continued_walk_is_not_a_new_walk() {
    let mut problems = Vec::new();
    // 1. A pod in `default` looks up `intranet.nowhere`, which exists nowhere (there is no
    //    namespace `nowhere`; `intranet.corp.example` exists). glibc finds nothing.
    // 2. A pod in `default` looks up `nosuch.example.com`, which exists nowhere: the client's
    //    second query `nosuch.example.com.svc.cluster.local` is also `P'.<ns>.svc.Z` with
    //    P' = `nosuch.example`, ns = `com`.
    // 3. The same as 1 with a namespace that exists: a pod in `default` looks up
    //    `intranet.shop` (`shop` exists, it has no service `intranet`); glibc finds nothing.
    for p in ["intranet.nowhere", "nosuch.example.com", "intranet.shop"] {
        let h = Harness::start(Mode::Cname).await;
        let glibc_walk = [
            format!("{p}.default.svc.cluster.local."),
            format!("{p}.svc.cluster.local."),
            format!("{p}.cluster.local."),
            format!("{p}.corp.example."),
            format!("{p}."),
        ];
        for name in &glibc_walk {
            let m = h.ask(name, A).await;
            if m.metadata.response_code != ResponseCode::NXDomain || !m.answers.is_empty() {
                problems.push(format!(
                    "{p}: {name} answered {:?} (glibc finds nothing for {p}):\n{}",
                    m.metadata.response_code,
                    show(&m.answers)
                ));
            }
        }
        let asked: BTreeSet<String> = h.seen().into_iter().map(|(n, _)| n).collect();
        let needed: BTreeSet<String> = [format!("{p}.corp.example."), format!("{p}.")].into_iter().collect();
        if asked != needed {
            problems.push(format!(
                "{p}: upstream asked for {asked:?}; glibc's walk needs only {needed:?}"
            ));
        }
        let walks = h.walks("not_found").await + h.walks("host_domain").await + h.walks("bare_name").await;
        if walks != 1.0 {
            problems.push(format!(
                "{p}: {walks} walks for one lookup (want 1: only the first query is one)"
            ));
        }
    }
    // The same in `nxdomain` mode: the continued walk's `www.example.com.svc.cluster.local`
    // must not warm `www.example.`, a name glibc never asks for.
    let h = Harness::start(Mode::Nxdomain).await;
    let p = "www.example.com";
    for suffix in [
        "default.svc.cluster.local.",
        "svc.cluster.local.",
        "cluster.local.",
        "corp.example.",
    ] {
        h.ask(&format!("{p}.{suffix}"), A).await;
    }
    let up = &h.up;
    assert!(
        eventually(CONVERGE, || async move { up.queries_for("www.example.com.", A) == 1 }).await,
        "the bare name was never warmed"
    );
    h.ask("www.example.com.", A).await;
    let asked: BTreeSet<String> = h.seen().into_iter().map(|(n, _)| n).collect();
    let needed: BTreeSet<String> = [format!("{p}.corp.example."), format!("{p}.")].into_iter().collect();
    if asked != needed {
        let warms = metric(&h.metrics().await, "nodens_shortcut_warms_total");
        problems.push(format!(
            "nxdomain mode, {p}: upstream asked for {asked:?} ({warms:?} warms); glibc's walk needs only {needed:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
