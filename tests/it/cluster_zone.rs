//! The cluster zone over UDP against a running nodens, one test per record
//! kind of the Kubernetes DNS-based service discovery specification (schema
//! 1.1.0), through the `static` source loading `fixtures/cluster.yaml` (a
//! `kubectl get svc,endpointslices -A -o yaml` dump; its header has the table
//! of what it holds). Each test is a table of queries; every case checks the
//! rcode, the AA flag, the question as echoed, and every record of the
//! answer, authority and additional sections (name, type, TTL, data), so
//! negatives are checked for their SOA. Then: updates through the static
//! file, a broken file, and the time before the first sync.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use nodens::config::{Config, PodsMode, SourceKind};
use nodens::stage::shortcut::Mode;
use serde_json::{json, Value};

use crate::support::server::{self, http_get, metric, Nodens};
use crate::support::upstream::{build_query, udp_exchange, FakeUpstream, ZoneSpec};

const FIXTURE: &str = include_str!("fixtures/cluster.yaml");
const T: Duration = Duration::from_secs(2);
/// How long a change to the static file may take to show (two polls of 50 ms, with slack).
const CONVERGE: Duration = Duration::from_secs(10);

use RecordType::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};

// ---------------------------------------------------------------------------
// The harness: a fake upstream, the fixture in a temp dir, nodens on it.
// ---------------------------------------------------------------------------

struct Cluster {
    nodens: Nodens,
    upstream: FakeUpstream,
    /// The cluster-state file the static source polls.
    path: PathBuf,
    _dir: tempfile::TempDir,
}

/// The upstream: `example.com` (plus `api.example.com`, the ExternalName
/// target), a reverse zone outside the cluster's CIDRs, and `example.net`.
async fn fake_upstream() -> FakeUpstream {
    FakeUpstream::start_zones(vec![
        ZoneSpec::example().a("api", 300, "192.0.2.80"),
        ZoneSpec::new("2.0.192.in-addr.arpa.").record("1 300 IN PTR www.example.com."),
        // The host search domain (`search.domains`), empty until a test adds to it.
        ZoneSpec::new("example.net."),
    ])
    .await
}

/// The cluster config of these tests: static source on `path`, 50 ms polls,
/// the service CIDRs (v4 and v6) and the IPv4 pod CIDR as reverse zones. The
/// search-path shortcut is off: these tests are about the authority alone
/// (the shortcut only changes NXDOMAINs for `P.<ns>.svc.Z`, DESIGN §3); the
/// tests that turn it on get `example.net` as the host search domain, not
/// the machine's resolv.conf.
fn cluster_config(upstream: &FakeUpstream, path: &Path) -> Config {
    let mut config = server::config(&[upstream.addr()]);
    config.search.shortcut = Mode::Off;
    config.search.domains = vec!["example.net".into()];
    let c = &mut config.cluster;
    c.source = SourceKind::Static;
    c.static_file = Some(path.to_path_buf());
    c.static_poll_interval = Duration::from_millis(50);
    c.reverse_cidrs = ["10.96.0.0/12", "10.244.0.0/16", "fd00:10:96::/112"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    config
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(|_| {}).await
    }

    /// Starts with the fixture loaded, `tweak` applied to the config, and waits for /readyz.
    async fn start_with(tweak: impl FnOnce(&mut Config)) -> Cluster {
        let upstream = fake_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.yaml");
        std::fs::write(&path, FIXTURE).unwrap();
        let mut config = cluster_config(&upstream, &path);
        tweak(&mut config);
        let nodens = Nodens::start(config).await;
        assert!(
            server::eventually(CONVERGE, || async { http_get(nodens.admin, "/readyz").await.0 == 200 }).await,
            "nodens never became ready with the static source on {} (is the static source wired in src/app.rs?)",
            path.display()
        );
        Cluster {
            nodens,
            upstream,
            path,
            _dir: dir,
        }
    }

    async fn ask(&self, name: &str, qtype: RecordType) -> Message {
        ask(&self.nodens, name, qtype).await
    }

    /// Runs a table of cases; reports every mismatch at once.
    async fn check(&self, cases: &[Case]) {
        let mut failures = String::new();
        for case in cases {
            let response = self.ask(&case.name, case.qtype).await;
            if let Err(e) = case.verify(&response) {
                writeln!(failures, "\n--- {} {}:\n{e}", case.name, case.qtype).unwrap();
            }
        }
        assert!(
            failures.is_empty(),
            "{} case(s) failed:{failures}",
            failures.matches("\n--- ").count()
        );
    }

    /// Replaces the cluster-state file atomically (write a temp file, rename over).
    fn write_state(&self, text: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    async fn metrics(&self) -> String {
        http_get(self.nodens.admin, "/metrics").await.1
    }
}

async fn ask(nodens: &Nodens, name: &str, qtype: RecordType) -> Message {
    let q = build_query(name, qtype, Some(1232));
    let r = udp_exchange(nodens.dns, &q, T)
        .await
        .unwrap_or_else(|| panic!("no answer to {name} {qtype}"));
    assert_eq!(r.metadata.id, q.metadata.id);
    r
}

// ---------------------------------------------------------------------------
// Cases and how a response is compared
// ---------------------------------------------------------------------------

/// One query and the whole response it must get.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    qtype: RecordType,
    rcode: ResponseCode,
    aa: bool,
    answer: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
}

/// The SOA of `zone` (owner) in a cluster with domain `domain`, as `rr` writes it (serial left out).
fn soa_rr(zone: &str, domain: &str, negative_ttl: u32) -> String {
    format!("{zone} {negative_ttl} IN SOA ns.dns.{domain} hostmaster.{domain} 7200 1800 86400 {negative_ttl}")
}

/// The SOA of the default cluster zone, TTL and MINIMUM `negative_ttl` = 5.
fn zone_soa() -> String {
    soa_rr("cluster.local.", "cluster.local.", 5)
}

fn strings(records: &[&str]) -> Vec<String> {
    records.iter().map(|s| s.to_string()).collect()
}

/// A positive answer from the cluster zone: NOERROR, AA, these records, nothing in authority.
fn ok(name: &str, qtype: RecordType, answer: &[&str]) -> Case {
    Case {
        name: name.into(),
        qtype,
        rcode: ResponseCode::NoError,
        aa: true,
        answer: strings(answer),
        authority: vec![],
        additional: vec![],
    }
}

/// NOERROR, AA, no answer, `soa` in authority.
fn nodata_in(name: &str, qtype: RecordType, soa: String) -> Case {
    Case {
        authority: vec![soa],
        ..ok(name, qtype, &[])
    }
}

/// NXDOMAIN, AA, no answer, `soa` in authority.
fn nxdomain_in(name: &str, qtype: RecordType, soa: String) -> Case {
    Case {
        rcode: ResponseCode::NXDomain,
        ..nodata_in(name, qtype, soa)
    }
}

fn nodata(name: &str, qtype: RecordType) -> Case {
    nodata_in(name, qtype, zone_soa())
}

fn nxdomain(name: &str, qtype: RecordType) -> Case {
    nxdomain_in(name, qtype, zone_soa())
}

impl Case {
    fn additional(mut self, records: &[&str]) -> Case {
        self.additional = strings(records);
        self
    }

    fn verify(&self, r: &Message) -> Result<(), String> {
        let mut errors = Vec::new();
        if r.metadata.response_code != self.rcode {
            errors.push(format!(
                "rcode: expected {:?}, got {:?}",
                self.rcode, r.metadata.response_code
            ));
        }
        if r.metadata.authoritative != self.aa {
            errors.push(format!("AA: expected {}, got {}", self.aa, r.metadata.authoritative));
        }
        if r.metadata.truncation {
            errors.push("TC set".into());
        }
        // The question comes back exactly as asked, case included.
        let echoed: Vec<String> = r
            .queries
            .iter()
            .map(|q| format!("{} {}", q.name(), q.query_type()))
            .collect();
        if echoed != [format!("{} {}", self.name, self.qtype)] {
            errors.push(format!(
                "question: expected [{} {}], got {echoed:?}",
                self.name, self.qtype
            ));
        }
        for (section, want, got) in [
            ("answer", &self.answer, &r.answers),
            ("authority", &self.authority, &r.authorities),
            ("additional", &self.additional, &r.additionals),
        ] {
            let mut want = want.clone();
            want.sort();
            let got = sorted(got);
            if want != got {
                errors.push(format!("{section}:\n  expected {want:#?}\n  got      {got:#?}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }
}

/// A record as `name ttl class type data`; SOA without its serial (it follows the
/// index version), TXT as quoted strings.
fn rr(r: &Record) -> String {
    let data = match &r.data {
        RData::SOA(s) => format!(
            "{} {} {} {} {} {}",
            s.mname, s.rname, s.refresh, s.retry, s.expire, s.minimum
        ),
        RData::TXT(t) => t
            .txt_data
            .iter()
            .map(|s| format!("{:?}", String::from_utf8_lossy(s)))
            .collect::<Vec<_>>()
            .join(" "),
        d => d.to_string(),
    };
    format!("{} {} {} {} {}", r.name, r.ttl, r.dns_class, r.record_type(), data)
}

fn sorted(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(rr).collect();
    v.sort();
    v
}

/// The reverse name of an address: `4.3.2.1.in-addr.arpa.` or 32 nibbles `.ip6.arpa.`.
fn reverse(ip: &str) -> String {
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                write!(s, "{:x}.{:x}.", b & 0xf, b >> 4).unwrap();
            }
            s + "ip6.arpa."
        }
    }
}

/// The last `labels` labels of a name (with the root): the zone a reverse name falls in.
fn suffix(name: &str, labels: usize) -> String {
    let parts: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    parts[parts.len() - labels..].join(".") + "."
}

// ---------------------------------------------------------------------------
// One test per record kind
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_service_a() {
    let c = Cluster::start().await;
    c.check(&[
        ok(
            "web.default.svc.cluster.local.",
            A,
            &["web.default.svc.cluster.local. 30 IN A 10.96.0.20"],
        ),
        ok(
            "kubernetes.default.svc.cluster.local.",
            A,
            &["kubernetes.default.svc.cluster.local. 30 IN A 10.96.0.1"],
        ),
        ok(
            "kube-dns.kube-system.svc.cluster.local.",
            A,
            &["kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10"],
        ),
        // Single-stack IPv4: the name exists, AAAA has no data.
        nodata("web.default.svc.cluster.local.", AAAA),
        nodata("web.default.svc.cluster.local.", TXT),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_service_a_and_aaaa() {
    let c = Cluster::start().await;
    c.check(&[
        ok(
            "dual.default.svc.cluster.local.",
            A,
            &["dual.default.svc.cluster.local. 30 IN A 10.96.0.30"],
        ),
        ok(
            "dual.default.svc.cluster.local.",
            AAAA,
            &["dual.default.svc.cluster.local. 30 IN AAAA fd00:10:96::30"],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_service_a_is_nodata() {
    let c = Cluster::start().await;
    c.check(&[
        ok(
            "v6only.default.svc.cluster.local.",
            AAAA,
            &["v6only.default.svc.cluster.local. 30 IN AAAA fd00:10:96::40"],
        ),
        nodata("v6only.default.svc.cluster.local.", A),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_service_a_is_the_ready_endpoints() {
    let c = Cluster::start().await;
    c.check(&[
        // Two slices merged, 10.244.1.1 (in both) once; db-2 (not ready) and
        // 10.244.1.8 (terminating, though ready) left out.
        ok(
            "db.default.svc.cluster.local.",
            A,
            &[
                "db.default.svc.cluster.local. 5 IN A 10.244.1.1",
                "db.default.svc.cluster.local. 5 IN A 10.244.2.1",
                "db.default.svc.cluster.local. 5 IN A 10.244.1.7",
                "db.default.svc.cluster.local. 5 IN A 10.244.2.2",
            ],
        ),
        nodata("db.default.svc.cluster.local.", AAAA),
        // publishNotReadyAddresses: the not-ready peers-1 is published too.
        ok(
            "peers.default.svc.cluster.local.",
            A,
            &[
                "peers.default.svc.cluster.local. 5 IN A 10.244.4.1",
                "peers.default.svc.cluster.local. 5 IN A 10.244.4.2",
            ],
        ),
        // Dual-stack headless: each family from its own slice.
        ok(
            "ds.default.svc.cluster.local.",
            A,
            &[
                "ds.default.svc.cluster.local. 5 IN A 10.244.6.1",
                "ds.default.svc.cluster.local. 5 IN A 10.244.6.2",
            ],
        ),
        ok(
            "ds.default.svc.cluster.local.",
            AAAA,
            &[
                "ds.default.svc.cluster.local. 5 IN AAAA fd00:10:244:6::1",
                "ds.default.svc.cluster.local. 5 IN AAAA fd00:10:244:6::2",
            ],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_service_without_ready_endpoints_is_nxdomain() {
    let c = Cluster::start().await;
    c.check(&[
        nxdomain("empty.default.svc.cluster.local.", A),
        nxdomain("empty.default.svc.cluster.local.", AAAA),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_endpoint_hostname_a_and_aaaa() {
    let c = Cluster::start().await;
    c.check(&[
        ok(
            "db-0.db.default.svc.cluster.local.",
            A,
            &["db-0.db.default.svc.cluster.local. 5 IN A 10.244.1.1"],
        ),
        ok(
            "db-1.db.default.svc.cluster.local.",
            A,
            &["db-1.db.default.svc.cluster.local. 5 IN A 10.244.2.1"],
        ),
        nodata("db-0.db.default.svc.cluster.local.", AAAA),
        // Not ready: not published, so the name does not exist.
        nxdomain("db-2.db.default.svc.cluster.local.", A),
        nxdomain("db-9.db.default.svc.cluster.local.", A),
        // Not ready but publishNotReadyAddresses.
        ok(
            "peers-1.peers.default.svc.cluster.local.",
            A,
            &["peers-1.peers.default.svc.cluster.local. 5 IN A 10.244.4.2"],
        ),
        // One hostname, an address in each family's slice.
        ok(
            "ds-0.ds.default.svc.cluster.local.",
            A,
            &["ds-0.ds.default.svc.cluster.local. 5 IN A 10.244.6.1"],
        ),
        ok(
            "ds-0.ds.default.svc.cluster.local.",
            AAAA,
            &["ds-0.ds.default.svc.cluster.local. 5 IN AAAA fd00:10:244:6::1"],
        ),
        // A ClusterIP service has no endpoint names.
        nxdomain("web-0.web.default.svc.cluster.local.", A),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_endpoint_dashed_names() {
    let c = Cluster::start().await;
    c.check(&[
        ok(
            "10-244-1-7.db.default.svc.cluster.local.",
            A,
            &["10-244-1-7.db.default.svc.cluster.local. 5 IN A 10.244.1.7"],
        ),
        ok(
            "10-244-2-2.db.default.svc.cluster.local.",
            A,
            &["10-244-2-2.db.default.svc.cluster.local. 5 IN A 10.244.2.2"],
        ),
        nodata("10-244-2-2.db.default.svc.cluster.local.", AAAA),
        ok(
            "fd00-10-244-6-0-0-0-2.ds.default.svc.cluster.local.",
            AAAA,
            &["fd00-10-244-6-0-0-0-2.ds.default.svc.cluster.local. 5 IN AAAA fd00:10:244:6::2"],
        ),
        // Terminating: left out.
        nxdomain("10-244-1-8.db.default.svc.cluster.local.", A),
        // The pods behind a ClusterIP service get no names under it.
        nxdomain("10-244-1-20.web.default.svc.cluster.local.", A),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_for_cluster_ip_named_ports() {
    let c = Cluster::start().await;
    c.check(&[
        ok(
            "_http._tcp.web.default.svc.cluster.local.",
            SRV,
            &["_http._tcp.web.default.svc.cluster.local. 30 IN SRV 0 100 80 web.default.svc.cluster.local."],
        )
        .additional(&["web.default.svc.cluster.local. 30 IN A 10.96.0.20"]),
        ok(
            "_http._tcp.dual.default.svc.cluster.local.",
            SRV,
            &["_http._tcp.dual.default.svc.cluster.local. 30 IN SRV 0 100 8080 dual.default.svc.cluster.local."],
        )
        .additional(&[
            "dual.default.svc.cluster.local. 30 IN A 10.96.0.30",
            "dual.default.svc.cluster.local. 30 IN AAAA fd00:10:96::30",
        ]),
        ok(
            "_dns._udp.kube-dns.kube-system.svc.cluster.local.",
            SRV,
            &["_dns._udp.kube-dns.kube-system.svc.cluster.local. 30 IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."],
        )
        .additional(&["kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10"]),
        ok(
            "_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local.",
            SRV,
            &["_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local. 30 IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."],
        )
        .additional(&["kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10"]),
        // The SRV name exists; other types have no data.
        nodata("_http._tcp.web.default.svc.cluster.local.", A),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_for_headless_is_per_endpoint() {
    let c = Cluster::start().await;
    let srv = |target: &str| format!("_pg._tcp.db.default.svc.cluster.local. 5 IN SRV 0 25 5432 {target}");
    let answer = [
        srv("db-0.db.default.svc.cluster.local."),
        srv("db-1.db.default.svc.cluster.local."),
        srv("10-244-1-7.db.default.svc.cluster.local."),
        srv("10-244-2-2.db.default.svc.cluster.local."),
    ];
    let answer: Vec<&str> = answer.iter().map(String::as_str).collect();
    c.check(
        &[ok("_pg._tcp.db.default.svc.cluster.local.", SRV, &answer).additional(&[
            "db-0.db.default.svc.cluster.local. 5 IN A 10.244.1.1",
            "db-1.db.default.svc.cluster.local. 5 IN A 10.244.2.1",
            "10-244-1-7.db.default.svc.cluster.local. 5 IN A 10.244.1.7",
            "10-244-2-2.db.default.svc.cluster.local. 5 IN A 10.244.2.2",
        ])],
    )
    .await;
}

/// A dual-stack headless service has one endpoint (ds-0) in both slices: its
/// SRV target must appear once (RFC 2181 §5: no duplicate records in an
/// RRset), with both its addresses in additional.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_for_dual_stack_headless_has_no_duplicate_records() {
    let c = Cluster::start().await;
    let r = c.ask("_peer._tcp.ds.default.svc.cluster.local.", SRV).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    let mut targets: Vec<String> = r
        .answers
        .iter()
        .map(|a| match &a.data {
            RData::SRV(s) => format!("{} {} {}", a.ttl, s.port, s.target),
            other => panic!("not an SRV record: {other:?}"),
        })
        .collect();
    targets.sort();
    let weights: Vec<u16> = r
        .answers
        .iter()
        .filter_map(|a| match &a.data {
            RData::SRV(s) => Some(s.weight),
            _ => None,
        })
        .collect();
    assert_eq!(
        targets,
        [
            "5 7000 10-244-6-2.ds.default.svc.cluster.local.",
            "5 7000 ds-0.ds.default.svc.cluster.local.",
            "5 7000 fd00-10-244-6-0-0-0-2.ds.default.svc.cluster.local.",
        ],
        "one SRV record per endpoint name; got weights {weights:?}"
    );
    assert!(weights.windows(2).all(|w| w[0] == w[1]), "equal weights: {weights:?}");
    assert_eq!(
        sorted(&r.additionals),
        [
            "10-244-6-2.ds.default.svc.cluster.local. 5 IN A 10.244.6.2",
            "ds-0.ds.default.svc.cluster.local. 5 IN A 10.244.6.1",
            "ds-0.ds.default.svc.cluster.local. 5 IN AAAA fd00:10:244:6::1",
            "fd00-10-244-6-0-0-0-2.ds.default.svc.cluster.local. 5 IN AAAA fd00:10:244:6::2",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_unknown_port_is_nxdomain_and_protocol_node_is_nodata() {
    let c = Cluster::start().await;
    c.check(&[
        nxdomain("_nope._tcp.web.default.svc.cluster.local.", SRV),
        // A port name under the wrong protocol does not exist either.
        nxdomain("_http._udp.web.default.svc.cluster.local.", SRV),
        // The unnamed port 8443 has no SRV name.
        nxdomain("_8443._tcp.web.default.svc.cluster.local.", SRV),
        // `_<proto>.<svc>`: an empty non-terminal when a port uses the protocol.
        nodata("_tcp.web.default.svc.cluster.local.", SRV),
        nodata("_tcp.web.default.svc.cluster.local.", A),
        nxdomain("_udp.web.default.svc.cluster.local.", SRV),
        nodata("_udp.kube-dns.kube-system.svc.cluster.local.", SRV),
        // The same for headless services (ports from the slices).
        nxdomain("_nope._tcp.db.default.svc.cluster.local.", SRV),
        nodata("_tcp.db.default.svc.cluster.local.", SRV),
        nodata("_udp.peers.default.svc.cluster.local.", SRV),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_a_is_cname_plus_target_from_upstream() {
    let c = Cluster::start().await;
    let mut aa = Vec::new();
    for round in 0..3 {
        let r = c.ask("ext.default.svc.cluster.local.", A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "round {round}");
        aa.push(r.metadata.authoritative);
        assert_eq!(
            r.queries.iter().map(|q| q.name().to_string()).collect::<Vec<_>>(),
            ["ext.default.svc.cluster.local."]
        );
        let answers = sorted(&r.answers);
        assert_eq!(answers.len(), 2, "round {round}: {answers:#?}");
        assert_eq!(r.answers[0].record_type(), CNAME, "the CNAME comes first");
        assert_eq!(
            rr(&r.answers[0]),
            "ext.default.svc.cluster.local. 30 IN CNAME api.example.com."
        );
        // The target's A from the upstream's zone (TTL 300, counting down once cached).
        let target = &r.answers[1];
        assert_eq!(
            (target.name.to_string(), target.record_type()),
            ("api.example.com.".into(), A)
        );
        assert!(matches!(&target.data, RData::A(a) if a.0.to_string() == "192.0.2.80"));
        assert!((298..=300).contains(&target.ttl), "round {round}: TTL {}", target.ttl);
    }
    assert_eq!(
        c.upstream.queries_for("api.example.com.", A),
        1,
        "the target asked once, then cached"
    );
    assert_eq!(c.upstream.queries_for("ext.default.svc.cluster.local.", A), 0);

    // AAAA: the target has none; the CNAME alone, with the target zone's SOA.
    let r = c.ask("ext.default.svc.cluster.local.", AAAA).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        sorted(&r.answers),
        ["ext.default.svc.cluster.local. 30 IN CNAME api.example.com."]
    );
    assert_eq!(
        r.authorities
            .iter()
            .map(|a| (a.name.to_string(), a.record_type()))
            .collect::<Vec<_>>(),
        [("example.com.".to_string(), SOA)]
    );
    assert_eq!(c.upstream.queries_for("api.example.com.", AAAA), 1);
    aa.push(r.metadata.authoritative);
    // RFC 1035 §4.1.1: AA refers to the query name (the owner of the first
    // answer, the CNAME), which is the cluster zone's, as for the CNAME query.
    assert_eq!(aa, [true; 4], "AA on the ExternalName answers (A ×3, AAAA)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_cname_query_is_the_cname_only() {
    let c = Cluster::start().await;
    c.check(&[ok(
        "ext.default.svc.cluster.local.",
        CNAME,
        &["ext.default.svc.cluster.local. 30 IN CNAME api.example.com."],
    )])
    .await;
    assert_eq!(c.upstream.queries(), 0, "a CNAME query needs no upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptr_ipv4_for_services_and_headless_endpoints() {
    let c = Cluster::start().await;
    let ptr =
        |ip: &str, ttl: u32, target: &str| ok(&reverse(ip), PTR, &[&format!("{} {ttl} IN PTR {target}", reverse(ip))]);
    c.check(&[
        ptr("10.96.0.20", 30, "web.default.svc.cluster.local."),
        ptr("10.96.0.10", 30, "kube-dns.kube-system.svc.cluster.local."),
        ptr("10.96.0.30", 30, "dual.default.svc.cluster.local."),
        ptr("10.244.1.1", 5, "db-0.db.default.svc.cluster.local."),
        ptr("10.244.4.2", 5, "peers-1.peers.default.svc.cluster.local."),
        ptr("10.244.1.7", 5, "10-244-1-7.db.default.svc.cluster.local."),
        // The name exists; only PTR has data.
        nodata_in(
            &reverse("10.96.0.20"),
            A,
            soa_rr("10.in-addr.arpa.", "cluster.local.", 5),
        ),
    ])
    .await;
    assert_eq!(c.upstream.queries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptr_ipv6_for_services_and_headless_endpoints() {
    let c = Cluster::start().await;
    let ptr =
        |ip: &str, ttl: u32, target: &str| ok(&reverse(ip), PTR, &[&format!("{} {ttl} IN PTR {target}", reverse(ip))]);
    c.check(&[
        ptr("fd00:10:96::30", 30, "dual.default.svc.cluster.local."),
        ptr("fd00:10:96::40", 30, "v6only.default.svc.cluster.local."),
        // Outside the claimed CIDRs, but an address the index knows.
        ptr("fd00:10:244:6::1", 5, "ds-0.ds.default.svc.cluster.local."),
        ptr(
            "fd00:10:244:6::2",
            5,
            "fd00-10-244-6-0-0-0-2.ds.default.svc.cluster.local.",
        ),
    ])
    .await;
    assert_eq!(c.upstream.queries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptr_unknown_address_inside_reverse_cidrs_is_nxdomain() {
    let c = Cluster::start().await;
    let soa = |zone: String| soa_rr(&zone, "cluster.local.", 5);
    let v6 = reverse("fd00:10:96::99");
    c.check(&[
        // Zone apex: the octet (nibble) boundary at or above the claimed prefix.
        nxdomain_in(&reverse("10.96.5.5"), PTR, soa("10.in-addr.arpa.".into())),
        nxdomain_in(&reverse("10.111.255.254"), PTR, soa("10.in-addr.arpa.".into())),
        // A pod behind a ClusterIP service, and a not-ready or terminating
        // headless endpoint: not published, so no PTR.
        nxdomain_in(&reverse("10.244.1.20"), PTR, soa("244.10.in-addr.arpa.".into())),
        nxdomain_in(&reverse("10.244.3.1"), PTR, soa("244.10.in-addr.arpa.".into())),
        nxdomain_in(&reverse("10.244.1.8"), PTR, soa("244.10.in-addr.arpa.".into())),
        nxdomain_in(&v6, PTR, soa(suffix(&v6, 30))),
    ])
    .await;
    assert_eq!(c.upstream.queries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptr_outside_reverse_cidrs_goes_upstream() {
    let c = Cluster::start().await;
    let name = reverse("192.0.2.1");
    let r = c.ask(&name, PTR).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(!r.metadata.authoritative, "an upstream answer is not ours");
    assert_eq!(sorted(&r.answers), [format!("{name} 300 IN PTR www.example.com.")]);
    assert_eq!(c.upstream.queries_for(&name, PTR), 1);
    // 10.97.x is inside 10.96.0.0/12: never upstream. 11.x is outside everything.
    c.ask(&reverse("11.0.0.1"), PTR).await;
    assert_eq!(c.upstream.queries_for(&reverse("11.0.0.1"), PTR), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_names_in_insecure_mode() {
    let c = Cluster::start().await;
    c.check(&[
        ok(
            "10-244-1-5.default.pod.cluster.local.",
            A,
            &["10-244-1-5.default.pod.cluster.local. 30 IN A 10.244.1.5"],
        ),
        // Any namespace: the name alone decides (kube-dns "insecure").
        ok(
            "10-244-9-9.anything.pod.cluster.local.",
            A,
            &["10-244-9-9.anything.pod.cluster.local. 30 IN A 10.244.9.9"],
        ),
        nodata("10-244-1-5.default.pod.cluster.local.", AAAA),
        ok(
            "fd00-10-244-1-0-0-0-5.default.pod.cluster.local.",
            AAAA,
            &["fd00-10-244-1-0-0-0-5.default.pod.cluster.local. 30 IN AAAA fd00:10:244:1::5"],
        ),
        nxdomain("not-an-ip.default.pod.cluster.local.", A),
        nxdomain("10-244-1-256.default.pod.cluster.local.", A),
        nodata("default.pod.cluster.local.", A),
        nodata("pod.cluster.local.", A),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_names_disabled() {
    let c = Cluster::start_with(|config| config.cluster.pods = PodsMode::Disabled).await;
    c.check(&[
        nxdomain("10-244-1-5.default.pod.cluster.local.", A),
        nxdomain("default.pod.cluster.local.", A),
        // Services are unaffected.
        ok(
            "web.default.svc.cluster.local.",
            A,
            &["web.default.svc.cluster.local. 30 IN A 10.96.0.20"],
        ),
    ])
    .await;
    assert_eq!(c.upstream.queries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_version_txt() {
    let c = Cluster::start().await;
    c.check(&[
        ok(
            "dns-version.cluster.local.",
            TXT,
            &["dns-version.cluster.local. 28800 IN TXT \"1.1.0\""],
        ),
        nodata("dns-version.cluster.local.", A),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soa_at_the_apex() {
    let c = Cluster::start().await;
    c.check(&[
        ok("cluster.local.", SOA, &[&zone_soa()]),
        nodata("cluster.local.", A),
        nodata("cluster.local.", NS),
    ])
    .await;
    let r = c.ask("cluster.local.", SOA).await;
    let RData::SOA(soa) = &r.answers[0].data else {
        panic!("not an SOA")
    };
    assert!(soa.serial > 0, "serial follows the index version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_empty_non_terminals() {
    let c = Cluster::start().await;
    c.check(&[
        // A namespace with services exists (empty non-terminal): NODATA.
        nodata("default.svc.cluster.local.", A),
        nodata("kube-system.svc.cluster.local.", A),
        nodata("kube-system.svc.cluster.local.", SRV),
        // No service in it: nothing says it exists.
        nxdomain("nope.svc.cluster.local.", A),
        nodata("svc.cluster.local.", A),
        nxdomain("foo.cluster.local.", A),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_nxdomain() {
    let c = Cluster::start().await;
    c.check(&[
        nxdomain("nope.default.svc.cluster.local.", A),
        nxdomain("nope.default.svc.cluster.local.", AAAA),
        nxdomain("nope.default.svc.cluster.local.", SRV),
        nxdomain("web.kube-system.svc.cluster.local.", A),
        nxdomain("web.nope.svc.cluster.local.", A),
        nxdomain("a.b.c.web.default.svc.cluster.local.", A),
        nxdomain("_http._tcp.nope.default.svc.cluster.local.", SRV),
    ])
    .await;
    assert_eq!(c.upstream.queries(), 0);
}

/// A pod resolving `www.example.com` with ndots:5 first asks the name under
/// each cluster search suffix; those are answered NXDOMAIN from the index,
/// never by the upstream: with `shortcut = "off"` (the authority alone)
/// nothing goes upstream at all; with `"nxdomain"` the only upstream queries
/// are for the bare name, warmed in the background (DESIGN §3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_suffixed_external_names_are_answered_locally() {
    let suffixed = [
        "www.example.com.default.svc.cluster.local.",
        "www.example.com.svc.cluster.local.",
        "www.example.com.cluster.local.",
    ];
    let mut cases = Vec::new();
    for qtype in [A, AAAA] {
        cases.extend(suffixed.iter().map(|name| nxdomain(name, qtype)));
    }
    for mode in [Mode::Off, Mode::Nxdomain] {
        let c = Cluster::start_with(|config| config.search.shortcut = mode).await;
        c.check(&cases).await;
        for name in suffixed {
            for qtype in [A, AAAA] {
                assert_eq!(
                    c.upstream.queries_for(name, qtype),
                    0,
                    "{mode:?}: {name} {qtype} asked upstream"
                );
            }
        }
        if mode == Mode::Off {
            assert_eq!(
                c.upstream.queries(),
                0,
                "{mode:?}: the upstream was asked: {:?}",
                c.upstream.seen()
            );
        } else {
            assert!(
                c.upstream.wait_for_queries(1, T).await,
                "{mode:?}: the bare name was not warmed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let asked: Vec<String> = c.upstream.seen().iter().map(|q| q.name.clone()).collect();
            assert!(
                asked.iter().any(|n| n == "www.example.com."),
                "{mode:?}: asked upstream: {asked:?}"
            );
            // Only bare names were warmed. (`www.example.` is warmed too: the
            // client's second query, `www.example.com.svc.cluster.local`, reads
            // as the first query of a walk for `www.example` in a namespace
            // `com`; see `search_walk_does_not_restart_on_the_second_suffix`.)
            assert!(
                asked.iter().all(|n| !n.ends_with(".cluster.local.")),
                "{mode:?}: asked upstream: {asked:?}"
            );
        }
    }
}

/// `shortcut = "cname"`: a pod in `default` resolving the nonexistent
/// `nope.example.com` (ndots:5) asks, in order, `….default.svc.Z`,
/// `….svc.Z`, `….Z`, `….example.net` (host domain) and the bare name; every
/// one is NXDOMAIN, so must be every answer nodens gives. The second query,
/// `nope.example.com.svc.cluster.local`, has the shape of a first query
/// (`P.<ns>.svc.Z` with P = `nope.example`, ns = `com`); walking it as one
/// finds `nope.example.example.net` and answers a CNAME to it: the client
/// would resolve `nope.example.com` to another host's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_walk_does_not_restart_on_the_second_suffix() {
    let c = Cluster::start_with(|config| config.search.shortcut = Mode::Cname).await;
    c.upstream
        .add_record("nope.example.example.net. 300 IN A 192.0.2.99")
        .await;
    for name in [
        "nope.example.com.default.svc.cluster.local.",
        "nope.example.com.svc.cluster.local.",
        "nope.example.com.cluster.local.",
    ] {
        let r = c.ask(name, A).await;
        assert_eq!(
            (r.metadata.response_code, sorted(&r.answers)),
            (ResponseCode::NXDomain, vec![]),
            "{name}: glibc's walk for nope.example.com finds nothing; nodens answered otherwise"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_per_kind_follow_the_config() {
    let c = Cluster::start_with(|config| {
        config.cluster.service_ttl = 60;
        config.cluster.endpoint_ttl = 7;
        config.cluster.negative_ttl = 11;
    })
    .await;
    let neg = soa_rr("cluster.local.", "cluster.local.", 11);
    c.check(&[
        ok(
            "web.default.svc.cluster.local.",
            A,
            &["web.default.svc.cluster.local. 60 IN A 10.96.0.20"],
        ),
        ok(
            "db-1.db.default.svc.cluster.local.",
            A,
            &["db-1.db.default.svc.cluster.local. 7 IN A 10.244.2.1"],
        ),
        ok(
            &reverse("10.244.2.1"),
            PTR,
            &[&format!(
                "{} 7 IN PTR db-1.db.default.svc.cluster.local.",
                reverse("10.244.2.1")
            )],
        ),
        ok(
            &reverse("10.96.0.20"),
            PTR,
            &[&format!(
                "{} 60 IN PTR web.default.svc.cluster.local.",
                reverse("10.96.0.20")
            )],
        ),
        ok(
            "10-244-1-5.default.pod.cluster.local.",
            A,
            &["10-244-1-5.default.pod.cluster.local. 60 IN A 10.244.1.5"],
        ),
        ok(
            "ext.default.svc.cluster.local.",
            CNAME,
            &["ext.default.svc.cluster.local. 60 IN CNAME api.example.com."],
        ),
        nxdomain_in("nope.default.svc.cluster.local.", A, neg.clone()),
        nodata_in("web.default.svc.cluster.local.", AAAA, neg.clone()),
        ok("cluster.local.", SOA, &[&neg]),
        ok(
            "dns-version.cluster.local.",
            TXT,
            &["dns-version.cluster.local. 28800 IN TXT \"1.1.0\""],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_case_is_echoed() {
    let c = Cluster::start().await;
    c.check(&[
        ok(
            "WeB.DeFault.SVC.Cluster.LOCAL.",
            A,
            &["WeB.DeFault.SVC.Cluster.LOCAL. 30 IN A 10.96.0.20"],
        ),
        ok(
            "DB-0.Db.default.svc.cluster.local.",
            A,
            &["DB-0.Db.default.svc.cluster.local. 5 IN A 10.244.1.1"],
        ),
        ok(
            "_HTTP._Tcp.Web.default.svc.cluster.local.",
            SRV,
            &["_HTTP._Tcp.Web.default.svc.cluster.local. 30 IN SRV 0 100 80 Web.default.svc.cluster.local."],
        )
        .additional(&["Web.default.svc.cluster.local. 30 IN A 10.96.0.20"]),
        // The SOA owner points into the question: the apex as the client wrote it.
        nxdomain_in(
            "NoPe.Default.Svc.CLUSTER.local.",
            A,
            soa_rr("CLUSTER.local.", "cluster.local.", 5),
        ),
        ok(
            "Dns-Version.Cluster.Local.",
            TXT,
            &["Dns-Version.Cluster.Local. 28800 IN TXT \"1.1.0\""],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_cluster_domain() {
    let c = Cluster::start_with(|config| config.cluster.domain = "k8s.internal".into()).await;
    let soa = soa_rr("k8s.internal.", "k8s.internal.", 5);
    c.check(&[
        ok(
            "web.default.svc.k8s.internal.",
            A,
            &["web.default.svc.k8s.internal. 30 IN A 10.96.0.20"],
        ),
        ok(
            "db-0.db.default.svc.k8s.internal.",
            A,
            &["db-0.db.default.svc.k8s.internal. 5 IN A 10.244.1.1"],
        ),
        ok(
            "_http._tcp.web.default.svc.k8s.internal.",
            SRV,
            &["_http._tcp.web.default.svc.k8s.internal. 30 IN SRV 0 100 80 web.default.svc.k8s.internal."],
        )
        .additional(&["web.default.svc.k8s.internal. 30 IN A 10.96.0.20"]),
        ok(
            &reverse("10.96.0.20"),
            PTR,
            &[&format!(
                "{} 30 IN PTR web.default.svc.k8s.internal.",
                reverse("10.96.0.20")
            )],
        ),
        ok(
            "dns-version.k8s.internal.",
            TXT,
            &["dns-version.k8s.internal. 28800 IN TXT \"1.1.0\""],
        ),
        ok("k8s.internal.", SOA, &[&soa]),
        nxdomain_in("nope.default.svc.k8s.internal.", A, soa.clone()),
        nxdomain_in(
            &reverse("10.96.5.5"),
            PTR,
            soa_rr("10.in-addr.arpa.", "k8s.internal.", 5),
        ),
    ])
    .await;
    assert_eq!(c.upstream.queries(), 0);
    // cluster.local is no longer ours: it goes to the upstream like any name.
    c.ask("web.default.svc.cluster.local.", A).await;
    assert_eq!(c.upstream.queries_for("web.default.svc.cluster.local.", A), 1);
}

// ---------------------------------------------------------------------------
// Updates through the static file
// ---------------------------------------------------------------------------

/// The fixture as JSON values, to edit.
fn fixture_items() -> Vec<Value> {
    let list: Value = serde_yaml_ng::from_str(FIXTURE).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn as_list(items: Vec<Value>) -> String {
    serde_yaml_ng::to_string(&json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items})).unwrap()
}

fn is(item: &Value, kind: &str, ns: &str, name: &str) -> bool {
    item["kind"] == kind && item["metadata"]["namespace"] == ns && item["metadata"]["name"] == name
}

/// The A/AAAA addresses answered for `name`, or the rcode if there are none.
async fn addresses(nodens: &Nodens, name: &str, qtype: RecordType) -> Result<Vec<String>, ResponseCode> {
    let r = ask(nodens, name, qtype).await;
    let mut v: Vec<String> = r
        .answers
        .iter()
        .filter_map(|a| match &a.data {
            RData::A(x) => Some(x.0.to_string()),
            RData::AAAA(x) => Some(x.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    if v.is_empty() {
        Err(r.metadata.response_code)
    } else {
        Ok(v)
    }
}

/// Polls until `name` answers `want`; panics with the last answer on timeout.
async fn until_answer(nodens: &Nodens, name: &str, qtype: RecordType, want: Result<&[&str], ResponseCode>) {
    let want = want.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let got = addresses(nodens, name, qtype).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} {qtype}: expected {want:?}, still {got:?} after {CONVERGE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_file_changes_are_followed() {
    let c = Cluster::start().await;
    let n = &c.nodens;
    assert_eq!(
        addresses(n, "web.default.svc.cluster.local.", A).await,
        Ok(vec!["10.96.0.20".into()])
    );

    // Add a service, change web's ClusterIP, delete dual and the db slice db-bbbbb.
    let mut items = fixture_items();
    items.retain(|i| !is(i, "Service", "default", "dual") && !is(i, "EndpointSlice", "default", "db-bbbbb"));
    for item in items.iter_mut().filter(|i| is(i, "Service", "default", "web")) {
        item["spec"]["clusterIP"] = json!("10.96.0.21");
        item["spec"]["clusterIPs"] = json!(["10.96.0.21"]);
    }
    items.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "fresh", "namespace": "newns"},
        "spec": {"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"], "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }));
    c.write_state(&as_list(items.clone()));

    until_answer(n, "fresh.newns.svc.cluster.local.", A, Ok(&["10.96.0.50"])).await;
    until_answer(n, "web.default.svc.cluster.local.", A, Ok(&["10.96.0.21"])).await;
    until_answer(n, "dual.default.svc.cluster.local.", A, Err(ResponseCode::NXDomain)).await;
    until_answer(
        n,
        "db.default.svc.cluster.local.",
        A,
        Ok(&["10.244.1.1", "10.244.1.7", "10.244.2.1"]),
    )
    .await;
    // Everything derived follows: PTRs, namespaces, SRV.
    c.check(&[
        ok(
            &reverse("10.96.0.21"),
            PTR,
            &[&format!(
                "{} 30 IN PTR web.default.svc.cluster.local.",
                reverse("10.96.0.21")
            )],
        ),
        nxdomain_in(
            &reverse("10.96.0.20"),
            PTR,
            soa_rr("10.in-addr.arpa.", "cluster.local.", 5),
        ),
        nxdomain_in(
            &reverse("fd00:10:96::30"),
            PTR,
            soa_rr(&suffix(&reverse("fd00:10:96::30"), 30), "cluster.local.", 5),
        ),
        nxdomain_in(
            &reverse("10.244.2.2"),
            PTR,
            soa_rr("244.10.in-addr.arpa.", "cluster.local.", 5),
        ),
        nodata("newns.svc.cluster.local.", A),
        ok(
            "_http._tcp.fresh.newns.svc.cluster.local.",
            SRV,
            &["_http._tcp.fresh.newns.svc.cluster.local. 30 IN SRV 0 100 80 fresh.newns.svc.cluster.local."],
        )
        .additional(&["fresh.newns.svc.cluster.local. 30 IN A 10.96.0.50"]),
    ])
    .await;

    // Delete the only service of a namespace: the namespace goes too.
    items.retain(|i| !is(i, "Service", "newns", "fresh"));
    c.write_state(&as_list(items));
    until_answer(n, "fresh.newns.svc.cluster.local.", A, Err(ResponseCode::NXDomain)).await;
    c.check(&[nxdomain("newns.svc.cluster.local.", A)]).await;
    assert_eq!(c.upstream.queries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_static_file_keeps_the_previous_answers() {
    let c = Cluster::start().await;
    let errors = |text: &str| metric(text, r#"nodens_cluster_static_reloads_total{outcome="error"}"#).unwrap_or(0.0);
    let before = errors(&c.metrics().await);
    for garbage in ["{{{ this is not ]]] yaml\n\t:\n", "just a string\n", "\x00\x01\x02\x03"] {
        let seen = errors(&c.metrics().await);
        c.write_state(garbage);
        assert!(
            server::eventually(CONVERGE, || async { errors(&c.metrics().await) > seen }).await,
            "the broken file {garbage:?} was never reported as a failed reload"
        );
        c.check(&[
            ok(
                "web.default.svc.cluster.local.",
                A,
                &["web.default.svc.cluster.local. 30 IN A 10.96.0.20"],
            ),
            ok(
                "db-0.db.default.svc.cluster.local.",
                A,
                &["db-0.db.default.svc.cluster.local. 5 IN A 10.244.1.1"],
            ),
            nxdomain("nope.default.svc.cluster.local.", A),
        ])
        .await;
    }
    assert!(errors(&c.metrics().await) >= before + 3.0);
    assert_eq!(
        http_get(c.nodens.admin, "/readyz").await.0,
        200,
        "still ready on the previous index"
    );

    // A good file again is loaded.
    let mut items = fixture_items();
    items.retain(|i| !is(i, "Service", "default", "web"));
    c.write_state(&as_list(items));
    until_answer(
        &c.nodens,
        "web.default.svc.cluster.local.",
        A,
        Err(ResponseCode::NXDomain),
    )
    .await;
}

// ---------------------------------------------------------------------------
// Before the first sync
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_sync_not_ready_and_servfail() {
    let upstream = fake_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.yaml");
    let nodens = Nodens::start(cluster_config(&upstream, &path)).await;

    for _ in 0..5 {
        assert_eq!(
            http_get(nodens.admin, "/readyz").await.0,
            503,
            "not ready before the first sync"
        );
        for (name, qtype) in [
            ("web.default.svc.cluster.local.", A),
            (reverse("10.96.0.20").as_str(), PTR),
        ] {
            let r = ask(&nodens, name, qtype).await;
            assert_eq!(
                r.metadata.response_code,
                ResponseCode::ServFail,
                "{name} {qtype} before sync"
            );
            assert!(r.answers.is_empty());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Names outside the cluster zone are served meanwhile.
    let r = ask(&nodens, "www.example.com.", A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(
        upstream.queries(),
        1,
        "cluster names were not sent upstream: {:?}",
        upstream.seen()
    );

    // The file appears: the index syncs, /readyz turns 200, the zone answers.
    let tmp = dir.path().join("cluster.tmp");
    std::fs::write(&tmp, FIXTURE).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(
        server::eventually(CONVERGE, || async { http_get(nodens.admin, "/readyz").await.0 == 200 }).await,
        "never ready after the file appeared"
    );
    assert_eq!(
        addresses(&nodens, "web.default.svc.cluster.local.", A).await,
        Ok(vec!["10.96.0.20".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_sync_cluster_queries_go_to_cluster_upstream() {
    let upstream = fake_upstream().await;
    // The old kube-dns, serving the cluster zone.
    let kube_dns = FakeUpstream::start(ZoneSpec::new("cluster.local.").soa(30, 5).a(
        "web.default.svc",
        30,
        "10.96.0.99",
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = cluster_config(&upstream, &dir.path().join("missing.yaml"));
    config.cluster.cluster_upstream = vec![kube_dns.addr()];
    let nodens = Nodens::start(config).await;

    let r = ask(&nodens, "web.default.svc.cluster.local.", A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        sorted(&r.answers),
        ["web.default.svc.cluster.local. 30 IN A 10.96.0.99"]
    );
    let r = ask(&nodens, "nope.default.svc.cluster.local.", A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(kube_dns.queries_for("web.default.svc.cluster.local.", A), 1);
    assert_eq!(kube_dns.queries_for("nope.default.svc.cluster.local.", A), 1);
    assert_eq!(upstream.queries(), 0, "cluster names never go to the ordinary upstream");
    // Other names still go to the ordinary upstream, not to kube-dns.
    let r = ask(&nodens, "www.example.com.", A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!((upstream.queries(), kube_dns.queries()), (1, 2));
    assert_eq!(http_get(nodens.admin, "/readyz").await.0, 503);
}
