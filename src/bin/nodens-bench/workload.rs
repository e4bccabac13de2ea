//! Workloads: which lookups a run makes, in a sequence fixed by the seed,
//! and how each candidate name of a lookup is written as a query.
//!
//! - `hit`: one A query per lookup for a name drawn uniformly from the first
//!   `hit_names` external names of the zone, asked as-is (absolute). The run
//!   warms them first with one pass, so against a cache every measured
//!   query is a hit.
//! - `k8s`: a `getaddrinfo()` from a pod in namespace `ns{j}` (uniform):
//!   A+AAAA pairs walked through `<ns>.svc.<cluster> svc.<cluster> <cluster>
//!   <host domains…>` with `ndots` (5) exactly as glibc does (see `glibc`).
//!   With probability `cluster_share` the name is a cluster service (Zipf
//!   over services): `svc{k}` in the pod's namespace (60%), `svc{k}.ns{m}`
//!   (30%, any namespace), or `svc{k}.ns{m}.svc.<cluster>` (10%, the
//!   "fully qualified but no trailing dot" habit that costs the most);
//!   otherwise an external name (Zipf over all zone names, ranks spread over
//!   the name shapes by a fixed permutation).
//! - `flood`: one A query per lookup for `<12 random chars>.<flood zone>`,
//!   a new name each time (cache-busting; NXDOMAIN at the bench upstream).
//! - `--mix KIND:FRACTION`: that fraction of lookups comes from a second
//!   workload, reported as its own class, to measure collateral damage.
//!
//! Must not: do I/O, or allocate per lookup (targets are small `Copy`
//! values; names are written from tables built once).

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

use crate::glibc::Candidate;
use crate::zone::{self, NameError, ZoneSpec};

/// The workloads the bench knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Hit,
    K8s,
    Flood,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hit => "hit",
            Kind::K8s => "k8s",
            Kind::Flood => "flood",
        }
    }
}

/// Everything that decides which names a run asks.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub kind: Kind,
    /// A second workload and the fraction of lookups it makes.
    pub mix: Option<(Kind, f64)>,
    pub zone: ZoneSpec,
    pub hit_names: usize,
    /// Zipf exponent of name popularity in `k8s`.
    pub zipf: f64,
    /// Fraction of `k8s` lookups that ask for a cluster service.
    pub cluster_share: f64,
    /// The node's search domains, after the three cluster ones.
    pub host_domains: Vec<String>,
    pub ndots: u8,
    pub flood_zone: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("the zone has no external names (--names 0)")]
    NoNames,
    #[error("{what} = {value}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{0} plus a search suffix is longer than 255 bytes")]
    TooLong(String),
}

/// A name a pod looks up, before search-list expansion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodName {
    External(u32),
    /// `svc{k}`: a service of the pod's own namespace.
    Service(u16),
    /// `svc{k}.ns{m}`.
    ServiceNs(u16, u16),
    /// `svc{k}.ns{m}.svc.<cluster>` without the trailing dot.
    ServiceFqdn(u16, u16),
}

/// One lookup to make: small and `Copy`, kept per lookup in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// One A query for external name `i`, as-is.
    Hit(u32),
    /// One A query for a random label (from this value) under the flood zone.
    Flood(u64),
    /// A glibc walk of a name from a pod in namespace `ns`.
    Pod { name: PodName, ns: u16 },
}

/// The tables every thread reads: names in wire form, built once.
pub struct Workload {
    spec: WorkloadSpec,
    /// External names as labels without the root, and their dot counts.
    external: Vec<Box<[u8]>>,
    external_dots: Vec<u8>,
    services: Vec<Box<[u8]>>,
    namespaces: Vec<Box<[u8]>>,
    /// `svc.<cluster>` labels, the tail of a fully qualified service name.
    svc_tail: Box<[u8]>,
    svc_tail_dots: u8,
    /// Search suffixes per pod namespace.
    search: Vec<Vec<Box<[u8]>>>,
    flood_zone: Box<[u8]>,
    zipf_external: Option<Zipf<f64>>,
    zipf_services: Option<Zipf<f64>>,
    /// Multiplier spreading Zipf ranks over name indices (coprime to `names`).
    spread: usize,
}

/// Length of the random flood label.
const FLOOD_LABEL: usize = 12;

impl Workload {
    pub fn new(spec: WorkloadSpec) -> Result<Arc<Workload>, WorkloadError> {
        let z = &spec.zone;
        if z.names == 0 {
            return Err(WorkloadError::NoNames);
        }
        let invalid = |what, value: String, why| WorkloadError::Invalid { what, value, why };
        if !(spec.zipf >= 0.0 && spec.zipf.is_finite()) {
            return Err(invalid("--zipf", spec.zipf.to_string(), "must be a finite number >= 0"));
        }
        if !(0.0..=1.0).contains(&spec.cluster_share) {
            return Err(invalid(
                "--cluster-share",
                spec.cluster_share.to_string(),
                "must be within [0, 1]",
            ));
        }
        if spec.ndots == 0 || spec.ndots > 15 {
            return Err(invalid(
                "--ndots",
                spec.ndots.to_string(),
                "must be within 1..=15 (resolv.conf caps it at 15)",
            ));
        }
        if let Some((_, f)) = spec.mix {
            if !(0.0..=1.0).contains(&f) {
                return Err(invalid("--mix", f.to_string(), "the fraction must be within [0, 1]"));
            }
        }
        let uses_hit = spec.kind == Kind::Hit || spec.mix.is_some_and(|(k, _)| k == Kind::Hit);
        if uses_hit && (spec.hit_names == 0 || spec.hit_names > z.names) {
            return Err(invalid(
                "--hit-names",
                spec.hit_names.to_string(),
                "must be within 1..=--names",
            ));
        }
        if z.namespaces > u16::MAX as usize || z.services > u16::MAX as usize || z.names > u32::MAX as usize {
            return Err(invalid("zone size", format!("{z:?}"), "too large"));
        }
        let boxed = |s: &str| zone::labels(s).map(Vec::into_boxed_slice);
        let external = (0..z.names)
            .map(|i| boxed(&zone::external_name(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let external_dots = external.iter().map(|n| zone::dots(n) as u8).collect();
        let services = (0..z.services)
            .map(|k| boxed(&zone::service_label(k)))
            .collect::<Result<Vec<_>, _>>()?;
        let namespaces = (0..z.namespaces)
            .map(|j| boxed(&zone::namespace_label(j)))
            .collect::<Result<Vec<_>, _>>()?;
        let svc_tail = boxed(&format!("svc.{}", z.cluster_domain))?;
        let svc_tail_dots = zone::dots(&svc_tail) as u8;
        let hosts = spec
            .host_domains
            .iter()
            .map(|h| boxed(h))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = boxed(&z.cluster_domain)?;
        let search = (0..z.namespaces.max(1))
            .map(|j| {
                let ns = zone::namespace_label(j);
                let mut s = vec![
                    boxed(&format!("{ns}.svc.{}", z.cluster_domain))?,
                    svc_tail.clone(),
                    cluster.clone(),
                ];
                s.extend(hosts.iter().cloned());
                Ok(s)
            })
            .collect::<Result<Vec<_>, NameError>>()?;
        let flood_zone = boxed(&spec.flood_zone)?;
        if flood_zone.len() + 1 + FLOOD_LABEL + 1 > 255 {
            return Err(WorkloadError::TooLong(spec.flood_zone.clone()));
        }
        // Every candidate must fit in 255 bytes: the longest base name (an
        // FQDN-form service or an external name) plus the longest suffix.
        let longest_suffix = search.iter().flatten().map(|s| s.len()).max().unwrap_or(0);
        let longest_base = external
            .iter()
            .map(|n| n.len())
            .chain(
                services
                    .iter()
                    .zip(&namespaces)
                    .map(|(s, n)| s.len() + n.len() + svc_tail.len()),
            )
            .max()
            .unwrap_or(0);
        if longest_base + longest_suffix + 1 > 255 {
            return Err(WorkloadError::TooLong(spec.host_domains.join(",")));
        }
        let zipf = |n: usize| (n > 0).then(|| Zipf::new(n as f64, spec.zipf).ok()).flatten();
        let zipf_external = zipf(z.names);
        let zipf_services = zipf(z.services);
        if zipf_external.is_none() {
            return Err(invalid(
                "--zipf",
                spec.zipf.to_string(),
                "rejected by the Zipf distribution",
            ));
        }
        let spread = [7919, 104_729, 15_485_863, 1]
            .into_iter()
            .find(|&p| gcd(p, z.names) == 1)
            .unwrap_or(1);
        Ok(Arc::new(Workload {
            spec,
            external,
            external_dots,
            services,
            namespaces,
            svc_tail,
            svc_tail_dots,
            search,
            flood_zone,
            zipf_external,
            zipf_services,
            spread,
        }))
    }

    /// The classes a run reports: the workload, then the mixed-in one.
    pub fn classes(&self) -> Vec<Kind> {
        let mut c = vec![self.spec.kind];
        if let Some((k, _)) = self.spec.mix {
            c.push(k);
        }
        c
    }

    /// Lookups to make before measuring: every hit name once when the
    /// workload (or its mix) is `hit`; nothing otherwise (k8s and flood
    /// measure from whatever the server has).
    pub fn warm_targets(&self) -> Vec<(u8, Target)> {
        let hit_class = self.classes().iter().position(|k| *k == Kind::Hit);
        match hit_class {
            Some(c) => (0..self.spec.hit_names as u32)
                .map(|i| (c as u8, Target::Hit(i)))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Suffixes a walk from namespace `ns` tries.
    pub fn search_len(&self) -> usize {
        self.search.first().map_or(0, Vec::len)
    }

    pub fn ndots(&self) -> u8 {
        self.spec.ndots
    }

    /// Dots of a pod name (no trailing dot: the workload never makes one).
    pub fn dots(&self, name: PodName) -> usize {
        match name {
            PodName::External(i) => self.external_dots[i as usize] as usize,
            PodName::Service(_) => 0,
            PodName::ServiceNs(..) => 1,
            PodName::ServiceFqdn(..) => 2 + self.svc_tail_dots as usize,
        }
    }

    fn draw(&self, kind: Kind, rng: &mut StdRng) -> Target {
        match kind {
            Kind::Hit => Target::Hit(rng.random_range(0..self.spec.hit_names as u32)),
            Kind::Flood => Target::Flood(rng.random()),
            Kind::K8s => {
                let z = &self.spec.zone;
                let ns = rng.random_range(0..z.namespaces.max(1)) as u16;
                let cluster = z.namespaces > 0 && rng.random::<f64>() < self.spec.cluster_share;
                let name = match (cluster, self.zipf_services) {
                    (true, Some(zs)) => {
                        let k = (zs.sample(rng) as usize).clamp(1, z.services) as u16 - 1;
                        let form = rng.random::<f64>();
                        let m = rng.random_range(0..z.namespaces) as u16;
                        if form < 0.6 {
                            PodName::Service(k)
                        } else if form < 0.9 {
                            PodName::ServiceNs(k, m)
                        } else {
                            PodName::ServiceFqdn(k, m)
                        }
                    }
                    _ => {
                        let zipf = self.zipf_external.expect("checked in Workload::new");
                        let rank = (zipf.sample(rng) as usize).clamp(1, z.names) - 1;
                        PodName::External(((rank * self.spread) % z.names) as u32)
                    }
                };
                Target::Pod { name, ns }
            }
        }
    }

    /// Writes the query for candidate `cand` of `target` (hit and flood
    /// targets ignore `cand`) into `out`, which must hold 12 + 255 + 4 bytes.
    /// RD set, no EDNS (as glibc and dnsperf send by default). Returns the length.
    pub fn write_query(&self, target: &Target, cand: Candidate, qtype: u16, id: u16, out: &mut [u8]) -> usize {
        // Header: ID, RD, QDCOUNT=1 (RFC 1035 §4.1.1).
        out[..12].copy_from_slice(&[0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        out[..2].copy_from_slice(&id.to_be_bytes());
        let mut at = 12;
        let mut put = |part: &[u8], at: &mut usize| {
            out[*at..*at + part.len()].copy_from_slice(part);
            *at += part.len();
        };
        match *target {
            Target::Hit(i) => put(&self.external[i as usize], &mut at),
            Target::Flood(r) => {
                let mut label = [0u8; FLOOD_LABEL + 1];
                label[0] = FLOOD_LABEL as u8;
                let mut x = r;
                for b in &mut label[1..] {
                    *b = b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize];
                    x /= 36;
                    // 12 base-36 digits need 62 bits; refill from a mix of
                    // the value for the last ones.
                    if x == 0 {
                        x = r.rotate_left(29) | 1;
                    }
                }
                put(&label, &mut at);
                put(&self.flood_zone, &mut at);
            }
            Target::Pod { name, ns } => {
                match name {
                    PodName::External(i) => put(&self.external[i as usize], &mut at),
                    PodName::Service(k) => put(&self.services[k as usize], &mut at),
                    PodName::ServiceNs(k, m) => {
                        put(&self.services[k as usize], &mut at);
                        put(&self.namespaces[m as usize], &mut at);
                    }
                    PodName::ServiceFqdn(k, m) => {
                        put(&self.services[k as usize], &mut at);
                        put(&self.namespaces[m as usize], &mut at);
                        put(&self.svc_tail, &mut at);
                    }
                }
                if let Candidate::Suffix(s) = cand {
                    put(&self.search[ns as usize][s as usize], &mut at);
                }
            }
        }
        let tail = [0, (qtype >> 8) as u8, qtype as u8, 0, 1]; // root, QTYPE, QCLASS=IN
        put(&tail, &mut at);
        at
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Where a load thread takes its lookups from.
pub enum Source {
    /// The workload's random sequence (one per thread, seeded).
    Random { wl: Arc<Workload>, rng: Box<StdRng> },
    /// A fixed list (the warm-up pass), then nothing.
    List { targets: Vec<(u8, Target)>, at: usize },
}

impl Source {
    /// The random sequence of thread `thread` for `seed`: the same seed and
    /// thread count give the same lookups in the same order.
    pub fn random(wl: Arc<Workload>, seed: u64, thread: usize) -> Source {
        let rng = Box::new(StdRng::seed_from_u64(
            seed ^ (thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ));
        Source::Random { wl, rng }
    }

    /// The next lookup and its class; `None` when a list is exhausted.
    pub fn next(&mut self) -> Option<(u8, Target)> {
        match self {
            Source::Random { wl, rng } => {
                let (class, kind) = match wl.spec.mix {
                    Some((k, f)) if rng.random::<f64>() < f => (1, k),
                    _ => (0, wl.spec.kind),
                };
                Some((class, wl.draw(kind, rng)))
            }
            Source::List { targets, at } => {
                let t = targets.get(*at).copied();
                *at += 1;
                t
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glibc::{PairResult, Reply, Step, Walk};
    use crate::zone::Dotted;

    pub(crate) fn spec(kind: Kind) -> WorkloadSpec {
        WorkloadSpec {
            kind,
            mix: None,
            zone: ZoneSpec {
                names: 100,
                namespaces: 3,
                services: 5,
                cluster_domain: "cluster.local".into(),
            },
            hit_names: 10,
            zipf: 1.0,
            cluster_share: 0.5,
            host_domains: vec!["compute.internal".into()],
            ndots: 5,
            flood_zone: "flood.example".into(),
        }
    }

    fn qname(wl: &Workload, t: &Target, c: Candidate) -> String {
        let mut buf = [0u8; 300];
        let n = wl.write_query(t, c, 1, 0x1234, &mut buf);
        assert_eq!(&buf[..4], &[0x12, 0x34, 0x01, 0x00]);
        let q = nodens::wire::parse_query(&buf[..n]).expect("a valid query");
        assert_eq!((q.qtype, q.question_end), (1, n));
        let name = q.qname(&buf[..n]);
        Dotted(&name[..name.len() - 1]).to_string()
    }

    /// The candidate names of a walk where nothing exists, as glibc asks them.
    fn walk_names(wl: &Workload, t: Target) -> Vec<String> {
        let Target::Pod { name, .. } = t else {
            panic!("not a pod lookup")
        };
        let (mut w, mut step) = Walk::start(wl.dots(name), false, wl.ndots(), wl.search_len());
        let mut names = Vec::new();
        let nx = Reply::Answer { rcode: 3, ancount: 0 };
        while let Step::Ask(c) = step {
            names.push(qname(wl, &t, c));
            step = w.next(PairResult::of(nx, nx));
        }
        names
    }

    #[test]
    fn k8s_expansion_matches_glibc_order() {
        let wl = Workload::new(spec(Kind::K8s)).unwrap();
        // External name 2 is api.s2.example: 2 dots < ndots:5.
        assert_eq!(
            walk_names(
                &wl,
                Target::Pod {
                    name: PodName::External(2),
                    ns: 1
                }
            ),
            [
                "api.s2.example.ns1.svc.cluster.local",
                "api.s2.example.svc.cluster.local",
                "api.s2.example.cluster.local",
                "api.s2.example.compute.internal",
                "api.s2.example",
            ]
        );
        // External name 9 has 5 dots: as-is first, then the list.
        let names = walk_names(
            &wl,
            Target::Pod {
                name: PodName::External(9),
                ns: 0,
            },
        );
        assert_eq!(names[0], "a.b.edge.cdn.s9.example");
        assert_eq!(names[1], "a.b.edge.cdn.s9.example.ns0.svc.cluster.local");
        assert_eq!(names.len(), 5);
        assert_eq!(
            walk_names(
                &wl,
                Target::Pod {
                    name: PodName::ServiceNs(3, 2),
                    ns: 0
                }
            )[..2],
            ["svc3.ns2.ns0.svc.cluster.local", "svc3.ns2.svc.cluster.local"]
        );
        assert_eq!(
            walk_names(
                &wl,
                Target::Pod {
                    name: PodName::ServiceFqdn(1, 0),
                    ns: 2
                }
            )[0],
            "svc1.ns0.svc.cluster.local.ns2.svc.cluster.local"
        );
        assert_eq!(wl.dots(PodName::ServiceFqdn(1, 0)), 4);
    }

    #[test]
    fn hit_and_flood_names() {
        let wl = Workload::new(spec(Kind::Hit)).unwrap();
        assert_eq!(qname(&wl, &Target::Hit(3), Candidate::AsIs), "api.s3.example");
        let a = qname(&wl, &Target::Flood(1), Candidate::AsIs);
        let b = qname(&wl, &Target::Flood(2), Candidate::AsIs);
        assert!(a.ends_with(".flood.example") && a.len() == 12 + 1 + 13);
        assert_ne!(a, b);
        assert_eq!(wl.warm_targets().len(), 10);
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut s = spec(Kind::K8s);
        s.mix = Some((Kind::Flood, 0.3));
        let wl = Workload::new(s).unwrap();
        let take = |seed| {
            let mut src = Source::random(wl.clone(), seed, 0);
            (0..500).map(|_| src.next().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(take(7), take(7));
        assert_ne!(take(7), take(8));
        let seq = take(7);
        assert!(seq.iter().any(|(c, _)| *c == 1) && seq.iter().any(|(c, _)| *c == 0));
        assert!(seq.iter().any(|(_, t)| matches!(
            t,
            Target::Pod {
                name: PodName::External(_),
                ..
            }
        )));
        assert!(seq.iter().any(|(_, t)| matches!(
            t,
            Target::Pod {
                name: PodName::Service(_),
                ..
            }
        )));
    }

    #[test]
    fn rejects_bad_parameters() {
        let mut s = spec(Kind::K8s);
        s.host_domains = vec!["a".repeat(60) + "." + &"b".repeat(60) + "." + &"c".repeat(60) + "." + &"d".repeat(60)];
        assert!(matches!(Workload::new(s), Err(WorkloadError::TooLong(_))));
        let mut s = spec(Kind::K8s);
        s.cluster_share = 1.5;
        assert!(Workload::new(s).is_err());
        let mut s = spec(Kind::Hit);
        s.hit_names = 1000;
        assert!(Workload::new(s).is_err());
    }
}
