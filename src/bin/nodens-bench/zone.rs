//! The generated namespace that the bench and its upstream agree on: which
//! names exist and what they hold. Both sides rebuild it from the same few
//! numbers ([`ZoneSpec`]), so a bench and an upstream started as separate
//! processes agree without a zone file passing between them.
//!
//! The upstream plays two servers at once: the cloud resolver behind a node
//! (the external names) and kube-dns (a small `cluster.local`). nodens'
//! own cluster zone comes with a later issue; until then every resolver under
//! test forwards `cluster.local` to this upstream, as a NodeLocal DNSCache
//! forwards it to kube-dns.
//!
//! - External name `i` (of `names`) takes one of four shapes by `i % 10`, so
//!   a search walk sees realistic dot counts: `s{i}.example` (1 dot, 20%),
//!   `api.s{i}.example` (2 dots, 50%), `img.cdn.s{i}.example` (3 dots, 20%),
//!   `a.b.edge.cdn.s{i}.example` (5 dots, 10%: at or over ndots:5, so glibc
//!   asks it as-is first). Each has one A (198.18.0.0/15, RFC 2544) and one
//!   AAAA (2001:db8::/32, RFC 3849); TTL 60 s (30%), 300 s (50%) or 3600 s
//!   (20%) by a hash of `i`.
//! - `svc{k}.ns{j}.svc.<cluster>` for `namespaces` × `services`: one A in
//!   10.96.0.0/12, TTL 30 s (kubeadm's `ttl 30`), no AAAA (an IPv4 cluster:
//!   AAAA is NODATA).
//! - Every ancestor of those names below the root exists as an empty
//!   non-terminal (NODATA, never NXDOMAIN: a resolver applying RFC 8020 must
//!   not be told that `s5.example` does not exist while `api.s5.example` does).
//! - Everything else is NXDOMAIN, with the cluster SOA under the cluster
//!   domain and the root SOA elsewhere.
//!
//! Must not: do I/O, or depend on anything but the spec (no randomness).

use std::collections::HashMap;
#[cfg(test)]
use std::fmt;

/// The parameters both sides must share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneSpec {
    /// External names with A and AAAA.
    pub names: usize,
    /// Cluster namespaces `ns0..`.
    pub namespaces: usize,
    /// Services per namespace `svc0..`.
    pub services: usize,
    /// The cluster domain (without trailing dot).
    pub cluster_domain: String,
}

/// TTL of the cluster records and of the cluster SOA (negative answers).
pub const CLUSTER_TTL: u32 = 30;

/// A name in the zone that is more than an ancestor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    pub v4: [u8; 4],
    pub v6: Option<[u8; 16]>,
    pub ttl: u32,
}

/// What the zone holds at a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Addrs(Addrs),
    /// An ancestor of names that exist: NODATA for every type.
    Empty {
        in_cluster: bool,
    },
}

/// The answer the zone gives for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Node(Node),
    NxDomain { in_cluster: bool },
}

/// A name that cannot be written on the wire.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("name {0:?}: empty label")]
    EmptyLabel(String),
    #[error("name {0:?}: label longer than 63 bytes")]
    LongLabel(String),
    #[error("name {0:?}: longer than 255 bytes on the wire")]
    LongName(String),
}

/// A dotted name as wire labels, lowercased, *without* the root label, so
/// names and suffixes concatenate. A trailing dot is ignored; "" and "." give
/// an empty vector (the root).
pub fn labels(dotted: &str) -> Result<Vec<u8>, NameError> {
    let name = dotted.strip_suffix('.').unwrap_or(dotted);
    let mut out = Vec::with_capacity(name.len() + 1);
    if name.is_empty() {
        return Ok(out);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel(dotted.to_owned()));
        }
        if label.len() > 63 {
            return Err(NameError::LongLabel(dotted.to_owned()));
        }
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    // 255 on the wire includes the root byte (RFC 1035 §2.3.4).
    if out.len() + 1 > 255 {
        return Err(NameError::LongName(dotted.to_owned()));
    }
    Ok(out)
}

/// Dots in a name given as wire labels without the root: labels minus one.
pub fn dots(labels: &[u8]) -> usize {
    let mut at = 0;
    let mut n: usize = 0;
    while at < labels.len() {
        at += 1 + labels[at] as usize;
        n += 1;
    }
    n.saturating_sub(1)
}

/// Wire labels back to text, for test messages.
#[cfg(test)]
pub struct Dotted<'a>(pub &'a [u8]);

#[cfg(test)]
impl fmt::Display for Dotted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut at = 0;
        while at < self.0.len() {
            let len = self.0[at] as usize;
            if at > 0 {
                f.write_str(".")?;
            }
            let end = (at + 1 + len).min(self.0.len());
            for &b in &self.0[at + 1..end] {
                write!(f, "{}", b as char)?;
            }
            at = end;
        }
        Ok(())
    }
}

/// External name `i`, dotted.
pub fn external_name(i: usize) -> String {
    match i % 10 {
        0 | 1 => format!("s{i}.example"),
        2..=6 => format!("api.s{i}.example"),
        7 | 8 => format!("img.cdn.s{i}.example"),
        _ => format!("a.b.edge.cdn.s{i}.example"),
    }
}

fn external_addrs(i: usize) -> Addrs {
    let i32 = i as u32;
    let mut v6 = [0u8; 16];
    v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    v6[12..].copy_from_slice(&i32.to_be_bytes());
    // A multiplicative hash spreads the TTL classes over the name shapes.
    let ttl = match (i32.wrapping_mul(2_654_435_761) >> 16) % 10 {
        0..=2 => 60,
        3..=7 => 300,
        _ => 3600,
    };
    Addrs {
        v4: [198, 18 + ((i32 >> 16) & 1) as u8, (i32 >> 8) as u8, i32 as u8],
        v6: Some(v6),
        ttl,
    }
}

/// Service `k` of namespace `j`: the first label and the namespace label.
pub fn service_label(k: usize) -> String {
    format!("svc{k}")
}

pub fn namespace_label(j: usize) -> String {
    format!("ns{j}")
}

/// The ClusterIP of service `k` in namespace `j`: 10.96.0.1 on, in order
/// (10.96.0.0/12 holds a million services; more wrap, which only a test of
/// that size would notice).
pub fn service_ip(spec: &ZoneSpec, j: usize, k: usize) -> [u8; 4] {
    let n = (j * spec.services + k + 1) as u32 & 0x000f_ffff;
    (0x0a60_0000u32 | n).to_be_bytes()
}

/// What `cluster_state_yaml` adds to the zone's services for a cluster of
/// realistic size (`benches/memory.sh`); the bench upstream knows nothing of it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClusterExtra {
    /// Ready pod endpoints, dealt evenly over all services in EndpointSlices
    /// of at most `SLICE_MAX` endpoints (real clusters have slices for
    /// ClusterIP and headless services alike).
    pub endpoints: usize,
    /// Share of services made headless (`clusterIP: None`), spread evenly:
    /// their endpoints are what the index publishes. A headless service's
    /// name then answers with its endpoints, not the address the upstream
    /// gives it, so keep 0 for runs that compare answers with the upstream.
    pub headless_share: f64,
}

/// Endpoints per EndpointSlice, as the EndpointSlice controller cuts them.
pub const SLICE_MAX: usize = 100;

impl ClusterExtra {
    /// Whether the `n`th service (`j * services + k`) is headless.
    pub fn headless(&self, n: usize) -> bool {
        let share = self.headless_share.clamp(0.0, 1.0);
        ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
    }
}

/// The pod address of endpoint `e`: 10.128.0.1 on (10.128.0.0/9 holds eight
/// million).
pub fn endpoint_ip(e: usize) -> [u8; 4] {
    (0x0a80_0000u32 | ((e + 1) as u32 & 0x007f_ffff)).to_be_bytes()
}

/// The cluster as `kubectl get svc,endpointslices -A -o yaml` prints it: one
/// ClusterIP Service per zone service, so a resolver with its own cluster zone
/// (nodens' `--cluster-state`) serves what this upstream serves; with
/// `extra`, also EndpointSlices and headless services.
pub fn cluster_state_yaml(spec: &ZoneSpec, extra: &ClusterExtra) -> String {
    use std::fmt::Write as _;
    let mut y = String::from(
        "# The nodens-bench cluster: `nodens-bench cluster-state` for the same\n\
         # --namespaces/--services as the bench upstream. Shape of\n\
         #   kubectl get svc,endpointslices -A -o yaml\n\
         apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n",
    );
    let total = spec.namespaces * spec.services;
    let mut next_ep = 0usize;
    for j in 0..spec.namespaces {
        for k in 0..spec.services {
            let n = j * spec.services + k;
            let (svc, ns) = (service_label(k), namespace_label(j));
            if extra.headless(n) {
                let _ = write!(
                    y,
                    "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: {svc}\n    namespace: {ns}\n  \
                     spec:\n    clusterIP: None\n    clusterIPs:\n    - None\n    ports:\n    - name: http\n      \
                     port: 80\n      protocol: TCP\n    type: ClusterIP\n",
                );
            } else {
                let [a, b, c, d] = service_ip(spec, j, k);
                let _ = write!(
                    y,
                    "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: {svc}\n    namespace: {ns}\n  \
                     spec:\n    clusterIP: {a}.{b}.{c}.{d}\n    clusterIPs:\n    - {a}.{b}.{c}.{d}\n    \
                     ipFamilies:\n    - IPv4\n    ipFamilyPolicy: SingleStack\n    ports:\n    - name: http\n      \
                     port: 80\n      protocol: TCP\n    type: ClusterIP\n",
                );
            }
            // Service n gets an even share of the endpoints, the first ones one more.
            let mine = extra.endpoints / total + usize::from(n < extra.endpoints % total);
            for (m, first) in (0..mine).step_by(SLICE_MAX).enumerate() {
                let _ = write!(
                    y,
                    "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata:\n    \
                     name: {svc}-{m}\n    namespace: {ns}\n    labels:\n      \
                     kubernetes.io/service-name: {svc}\n  addressType: IPv4\n  ports:\n  - name: http\n    \
                     port: 8080\n    protocol: TCP\n  endpoints:\n",
                );
                for _ in first..mine.min(first + SLICE_MAX) {
                    let [a, b, c, d] = endpoint_ip(next_ep);
                    next_ep += 1;
                    let _ = write!(
                        y,
                        "  - addresses:\n    - {a}.{b}.{c}.{d}\n    conditions:\n      ready: true\n"
                    );
                }
            }
        }
    }
    y
}

/// The zone as a map from lowercase wire names (root label included) to nodes.
pub struct Zone {
    nodes: HashMap<Box<[u8]>, Node>,
    /// The cluster domain's labels with the root label, to test "under".
    cluster: Vec<u8>,
}

impl Zone {
    pub fn build(spec: &ZoneSpec) -> Result<Zone, NameError> {
        let mut cluster = labels(&spec.cluster_domain)?;
        cluster.push(0);
        let mut zone = Zone {
            nodes: HashMap::with_capacity(spec.names * 2 + spec.namespaces * (spec.services + 1) + 8),
            cluster,
        };
        for i in 0..spec.names {
            zone.insert(&external_name(i), external_addrs(i))?;
        }
        for j in 0..spec.namespaces {
            for k in 0..spec.services {
                let name = format!(
                    "{}.{}.svc.{}",
                    service_label(k),
                    namespace_label(j),
                    spec.cluster_domain
                );
                let addrs = Addrs {
                    v4: service_ip(spec, j, k),
                    v6: None,
                    ttl: CLUSTER_TTL,
                };
                zone.insert(&name, addrs)?;
            }
        }
        Ok(zone)
    }

    fn insert(&mut self, dotted: &str, addrs: Addrs) -> Result<(), NameError> {
        let mut name = labels(dotted)?;
        name.push(0);
        // Ancestors first: each is an empty non-terminal unless it holds data.
        let mut at = name[0] as usize + 1;
        while name[at] != 0 {
            let parent = &name[at..];
            let in_cluster = self.under_cluster(parent);
            self.nodes.entry(parent.into()).or_insert(Node::Empty { in_cluster });
            at += name[at] as usize + 1;
        }
        self.nodes.insert(name.into_boxed_slice(), Node::Addrs(addrs));
        Ok(())
    }

    /// True when `name` (wire, with root) is the cluster domain or below it.
    pub fn under_cluster(&self, name: &[u8]) -> bool {
        name.len() >= self.cluster.len()
            && name[name.len() - self.cluster.len()..].eq_ignore_ascii_case(&self.cluster)
            && is_label_boundary(name, name.len() - self.cluster.len())
    }

    /// Looks up a lowercase wire name (root label included).
    pub fn find(&self, name: &[u8]) -> Found {
        match self.nodes.get(name) {
            Some(n) => Found::Node(*n),
            None => Found::NxDomain {
                in_cluster: self.under_cluster(name),
            },
        }
    }
}

/// True when offset `at` of a wire name starts a label.
fn is_label_boundary(name: &[u8], at: usize) -> bool {
    let mut i = 0;
    while i < at {
        i += 1 + name[i] as usize;
    }
    i == at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ZoneSpec {
        ZoneSpec {
            names: 20,
            namespaces: 2,
            services: 3,
            cluster_domain: "cluster.local".into(),
        }
    }

    fn wire(dotted: &str) -> Vec<u8> {
        let mut w = labels(dotted).unwrap();
        w.push(0);
        w
    }

    #[test]
    fn labels_and_dots_round_trip() {
        let l = labels("Api.Stripe.com.").unwrap();
        assert_eq!(Dotted(&l).to_string(), "api.stripe.com");
        assert_eq!(dots(&l), 2);
        assert_eq!(dots(&labels("svc").unwrap()), 0);
        assert!(labels("a..b").is_err());
        assert!(labels(&"x".repeat(64)).is_err());
    }

    #[test]
    fn cluster_state_lists_every_service_with_its_zone_address() {
        let s = spec();
        let y = cluster_state_yaml(&s, &ClusterExtra::default());
        assert_eq!(y.matches("kind: Service").count(), 6);
        assert!(y.contains("name: svc2\n    namespace: ns1\n"));
        // svc2.ns1 is the 6th service: 10.96.0.6, in the zone and the dump.
        assert_eq!(service_ip(&s, 1, 2), [10, 96, 0, 6]);
        assert!(y.contains("clusterIP: 10.96.0.6\n"));
        let z = Zone::build(&s).unwrap();
        let Found::Node(Node::Addrs(a)) = z.find(&wire("svc2.ns1.svc.cluster.local")) else {
            panic!("service should exist")
        };
        assert_eq!(a.v4, [10, 96, 0, 6]);
    }

    #[test]
    fn cluster_state_with_endpoints_loads_into_the_index() {
        let s = ZoneSpec {
            names: 0,
            namespaces: 3,
            services: 4,
            cluster_domain: "cluster.local".into(),
        };
        // 12 services, a quarter headless; 250 endpoints: 21 or 20 each, so one slice each.
        let extra = ClusterExtra {
            endpoints: 250,
            headless_share: 0.25,
        };
        let y = cluster_state_yaml(&s, &extra);
        assert_eq!(y.matches("kind: Service\n").count(), 12);
        assert_eq!(y.matches("clusterIP: None").count(), 3);
        assert_eq!(y.matches("kind: EndpointSlice").count(), 12);
        let m = nodens::metrics::Metrics::new(prometheus::Registry::new())
            .unwrap()
            .cluster;
        let state = nodens::cluster::source::static_file::parse(std::path::Path::new("t.yaml"), y.as_bytes(), &m)
            .expect("nodens reads the dump");
        assert_eq!((state.services.len(), state.slices.len(), state.skipped), (12, 12, 0));
        let eps: usize = state.slices.iter().map(|s| s.endpoints.len()).sum();
        assert_eq!(eps, 250);
        let (mut w, _) = nodens::cluster::index::new_index();
        nodens::cluster::source::static_file::publish(&mut w, &m, state);
        assert_eq!(w.service_count(), 12);
        // The headless ones (services 3, 7, 11: the 3rd gets 20, the others 21) publish theirs.
        assert_eq!(w.endpoint_count(), 21 + 21 + 20);

        // Big services are cut into slices of SLICE_MAX; addresses never repeat.
        let big = cluster_state_yaml(
            &ZoneSpec {
                services: 1,
                namespaces: 1,
                ..s
            },
            &ClusterExtra {
                endpoints: 250,
                headless_share: 1.0,
            },
        );
        assert_eq!(big.matches("kind: EndpointSlice").count(), 3);
        let ips: std::collections::HashSet<&str> = big.lines().filter(|l| l.starts_with("    - 10.128.")).collect();
        assert_eq!(ips.len(), 250);
        assert_eq!(
            cluster_state_yaml(&spec(), &ClusterExtra::default())
                .matches("EndpointSlice\n")
                .count(),
            0
        );
    }

    #[test]
    fn names_have_every_shape() {
        let d: Vec<usize> = (0..10).map(|i| dots(&labels(&external_name(i)).unwrap())).collect();
        assert_eq!(d, [1, 1, 2, 2, 2, 2, 2, 3, 3, 5]);
    }

    #[test]
    fn lookups() {
        let z = Zone::build(&spec()).unwrap();
        let Found::Node(Node::Addrs(a)) = z.find(&wire("api.s3.example")) else {
            panic!("api.s3.example should exist")
        };
        assert!(a.v6.is_some() && [60, 300, 3600].contains(&a.ttl));
        assert_eq!(
            z.find(&wire("s3.example")),
            Found::Node(Node::Empty { in_cluster: false })
        );
        assert_eq!(z.find(&wire("example")), Found::Node(Node::Empty { in_cluster: false }));
        assert_eq!(z.find(&wire("nope.example")), Found::NxDomain { in_cluster: false });
        let Found::Node(Node::Addrs(s)) = z.find(&wire("svc2.ns1.svc.cluster.local")) else {
            panic!("service should exist")
        };
        assert_eq!((s.v6, s.ttl), (None, CLUSTER_TTL));
        assert_eq!(
            z.find(&wire("api.s3.example.ns1.svc.cluster.local")),
            Found::NxDomain { in_cluster: true }
        );
        assert_eq!(
            z.find(&wire("svc.cluster.local")),
            Found::Node(Node::Empty { in_cluster: true })
        );
        assert_eq!(z.find(&wire("xcluster.local")), Found::NxDomain { in_cluster: false });
    }
}
