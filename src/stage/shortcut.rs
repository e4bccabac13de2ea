//! The search-path shortcut (DESIGN §3): a pod asking for an external name
//! with `ndots:5` starts with `P.<ns>.svc.Z`; instead of letting it walk its
//! whole search list one NXDOMAIN at a time, nodens walks it server-side and
//! answers the first query with `P.<ns>.svc.Z CNAME <found>` plus the found
//! records.
//!
//! Owns: recognising the first query of a walk, the candidate names in the
//! order glibc tries them, and the rule that decides where a walk stops.
//! Must not: guess a namespace from anything but the query name (no pod
//! watch, no client address), cache the synthesized answer as a unit (the
//! parts are ordinary cache entries and index lookups, shared by every
//! namespace), or answer anything glibc would not have found itself.
//!
//! The rule that keeps it correct: a CNAME is synthesized only when every
//! earlier candidate is NXDOMAIN and the found candidate has data for the
//! asked type (or, for A/AAAA, for the other address type, since glibc asks
//! both and stops where either has data). In every other case the answer
//! is the plain NXDOMAIN for `P.<ns>.svc.Z`, which is true, and the client's
//! own search goes on from there: the shortcut can save round trips, never
//! change a result.

use crate::wire;

/// `shortcut` in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    /// Answer the cluster suffixes from the index (always true NXDOMAINs) and warm the bare name.
    Nxdomain,
    /// Walk the search list server-side and answer the first query with a CNAME.
    Cname,
}

/// What the first query of a walk looks like and where its candidates are.
#[derive(Clone, Debug)]
pub struct SearchPath {
    pub mode: Mode,
    pub ndots: u8,
    /// `\x03svc` + the cluster zone (lowercase wire, root included).
    svc_zone: Box<[u8]>,
    zone: Box<[u8]>,
    /// Host search domains (H, then the configured extras), lowercase wire with root.
    hosts: Vec<Box<[u8]>>,
}

/// A recognised first query: `P.<ns>.svc.Z`, with P's wire labels `lname[..p_len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub p_len: usize,
}

/// Where a candidate is answered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The cluster zone: `P.svc.Z`, `P.Z`.
    Cluster,
    /// A host search domain: `P.h`.
    Host,
    /// The bare name `P.`.
    Bare,
}

impl Place {
    pub fn label(self) -> &'static str {
        match self {
            Place::Cluster => "cluster",
            Place::Host => "host_domain",
            Place::Bare => "bare_name",
        }
    }
}

/// The most candidates a walk has: 2 cluster suffixes, the host domains, the bare name.
pub const MAX_HOSTS: usize = 8;

/// A candidate name built on the stack.
pub struct Candidate {
    buf: [u8; wire::MAX_NAME_LEN],
    len: usize,
    pub place: Place,
}

impl Candidate {
    pub fn name(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn to_wire(domain: &str) -> Box<[u8]> {
    let mut v = Vec::new();
    for l in domain.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        v.push(l.len().min(63) as u8);
        v.extend(l.bytes().take(63).map(|b| b.to_ascii_lowercase()));
    }
    v.push(0);
    v.into()
}

impl SearchPath {
    /// `hosts` are the node's search domains then the extras; names under the
    /// cluster domain and duplicates are dropped (kubelet puts the cluster
    /// suffixes first, so they are walked as cluster candidates already).
    pub fn new(mode: Mode, ndots: u8, cluster_domain: &str, hosts: &[String]) -> SearchPath {
        let zone = to_wire(cluster_domain);
        let mut svc_zone = b"\x03svc".to_vec();
        svc_zone.extend_from_slice(&zone);
        let mut list: Vec<Box<[u8]>> = Vec::new();
        for h in hosts {
            let w = to_wire(h);
            if w.len() > 1 && !w.ends_with(&zone) && !list.contains(&w) && list.len() < MAX_HOSTS {
                list.push(w);
            }
        }
        SearchPath {
            mode,
            ndots,
            svc_zone: svc_zone.into(),
            zone,
            hosts: list,
        }
    }

    /// Recognises `P.<ns>.svc.Z` where P has fewer than `ndots` dots: the first
    /// name glibc tries for P (`lname` lowercase wire).
    pub fn first_query(&self, lname: &[u8]) -> Option<Walk> {
        if self.mode == Mode::Off || !lname.ends_with(&self.svc_zone) {
            return None;
        }
        let rest = &lname[..lname.len() - self.svc_zone.len()];
        // Label starts within `rest`; the last one is the namespace.
        let mut starts = [0usize; 64];
        let (mut n, mut at) = (0, 0);
        while at < rest.len() {
            if n == starts.len() {
                return None;
            }
            starts[n] = at;
            n += 1;
            at += 1 + rest[at] as usize;
        }
        if n < 2 || at != rest.len() {
            return None;
        }
        let p_labels = n - 1;
        // glibc appends the search list only to names with fewer than ndots dots.
        if p_labels > self.ndots as usize {
            return None;
        }
        Some(Walk { p_len: starts[n - 1] })
    }

    /// The candidates after `P.<ns>.svc.Z`, in glibc's order (resolv.conf(5)):
    /// `P.svc.Z`, `P.Z`, `P.h` for each host domain, then `P.`.
    pub fn candidates(&self, lname: &[u8], walk: Walk) -> impl Iterator<Item = Candidate> + '_ {
        let p: &[u8] = &lname[..walk.p_len];
        let mut buf = [0u8; wire::MAX_NAME_LEN];
        buf[..p.len()].copy_from_slice(p);
        let suffixes = [&self.svc_zone[..], &self.zone[..]]
            .into_iter()
            .map(|s| (s, Place::Cluster))
            .chain(self.hosts.iter().map(|h| (&h[..], Place::Host)))
            .chain(std::iter::once((&b"\x00"[..], Place::Bare)));
        suffixes.filter_map(move |(suffix, place)| {
            let len = walk.p_len + suffix.len();
            if len > wire::MAX_NAME_LEN {
                return None; // glibc skips names that would be too long
            }
            let mut c = Candidate { buf, len, place };
            c.buf[walk.p_len..len].copy_from_slice(suffix);
            self.place_in_zone(&mut c);
            Some(c)
        })
    }

    /// A bare name that is itself under the cluster domain (a pod typing
    /// `web.shop.svc.cluster.local` without the final dot) is the index's to
    /// answer: it must never go upstream.
    fn place_in_zone(&self, c: &mut Candidate) {
        if c.place != Place::Bare || !c.name().ends_with(&self.zone) {
            return;
        }
        let zone_at = c.len - self.zone.len();
        let mut at = 0;
        while at < zone_at {
            at += 1 + c.buf[at] as usize;
        }
        if at == zone_at {
            c.place = Place::Cluster;
        }
    }

    /// The bare name `P.` of a walk, for warming.
    pub fn bare(&self, lname: &[u8], walk: Walk) -> Candidate {
        let mut c = Candidate {
            buf: [0; wire::MAX_NAME_LEN],
            len: walk.p_len + 1,
            place: Place::Bare,
        };
        c.buf[..walk.p_len].copy_from_slice(&lname[..walk.p_len]);
        self.place_in_zone(&mut c);
        c
    }
}

/// What one candidate turned out to be, for the stop rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// NXDOMAIN: go on to the next candidate.
    Nothing,
    /// The name exists with data for the asked type: stop, CNAME to it.
    Data,
    /// The name exists without data for the asked type; whether glibc stops
    /// here depends on the other address type.
    NoData,
    /// SERVFAIL or anything unclear: stop, plain NXDOMAIN for the first query.
    Unknown,
}

impl Found {
    /// The stop rule for a candidate that exists without data for the asked
    /// type, given what the other address type found (None: the asked type
    /// is not A or AAAA). glibc asks A and AAAA together and stops where
    /// either has data; anywhere else the walk gives up and the client's own
    /// search goes on.
    pub fn settle_nodata(other: Option<Found>) -> Found {
        match other {
            Some(Found::Data) => Found::NoData,
            _ => Found::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_name(s: &str) -> Vec<u8> {
        to_wire(s).into_vec()
    }

    fn sp(mode: Mode) -> SearchPath {
        SearchPath::new(
            mode,
            5,
            "cluster.local",
            &["corp.example".into(), "ec2.internal".into(), "svc.cluster.local".into()],
        )
    }

    #[test]
    fn recognises_only_the_first_query_of_a_walk() {
        let s = sp(Mode::Cname);
        let q = wire_name("api.stripe.com.default.svc.cluster.local");
        let w = s.first_query(&q).unwrap();
        assert_eq!(&q[..w.p_len], &wire_name("api.stripe.com")[..w.p_len]);
        // `api.stripe.com.svc.cluster.local` (the second query of a walk) is also the first
        // query of a pod in namespace `com` asking for `api.stripe`: the name alone cannot
        // tell them apart (DESIGN §3, known limits). The pipeline remembers the names a
        // client will ask after our NXDOMAIN and does not walk those.
        assert!(s.first_query(&wire_name("api.stripe.com.svc.cluster.local")).is_some());
        // Later queries of a walk, plain cluster names, too many dots, other zones.
        assert!(s.first_query(&wire_name("api.stripe.com.cluster.local")).is_none());
        assert!(s.first_query(&wire_name("default.svc.cluster.local")).is_none());
        assert!(
            s.first_query(&wire_name("a.b.c.d.e.f.default.svc.cluster.local"))
                .is_none(),
            "6 labels = 5 dots"
        );
        assert!(
            s.first_query(&wire_name("a.b.c.d.e.default.svc.cluster.local"))
                .is_some(),
            "4 dots"
        );
        assert!(s.first_query(&wire_name("api.stripe.com")).is_none());
        assert!(sp(Mode::Off).first_query(&q).is_none());
    }

    #[test]
    fn candidates_in_glibc_order() {
        let s = sp(Mode::Cname);
        let q = wire_name("web.shop.default.svc.cluster.local");
        let w = s.first_query(&q).unwrap();
        let got: Vec<(Vec<u8>, Place)> = s.candidates(&q, w).map(|c| (c.name().to_vec(), c.place)).collect();
        let want = [
            ("web.shop.svc.cluster.local", Place::Cluster),
            ("web.shop.cluster.local", Place::Cluster),
            ("web.shop.corp.example", Place::Host),
            ("web.shop.ec2.internal", Place::Host),
            ("web.shop", Place::Bare),
        ];
        assert_eq!(got.len(), want.len(), "the cluster-domain host entry is dropped");
        for ((g, gp), (n, p)) in got.iter().zip(want) {
            assert_eq!((g.as_slice(), *gp), (wire_name(n).as_slice(), p));
        }
        assert_eq!(s.bare(&q, w).name(), wire_name("web.shop").as_slice());
    }

    #[test]
    fn a_bare_name_in_the_cluster_zone_is_a_cluster_candidate() {
        let s = sp(Mode::Cname);
        let q = wire_name("web.shop.svc.cluster.local.default.svc.cluster.local");
        let w = s.first_query(&q).unwrap();
        let last = s.candidates(&q, w).last().unwrap();
        assert_eq!(
            (last.name(), last.place),
            (wire_name("web.shop.svc.cluster.local").as_slice(), Place::Cluster)
        );
        assert_eq!(s.bare(&q, w).place, Place::Cluster);
        // Same bytes at the end, but not on a label boundary: still bare.
        let q = wire_name("xcluster.local.default.svc.cluster.local");
        let w = s.first_query(&q).unwrap();
        assert_eq!(s.bare(&q, w).place, Place::Bare);
    }
}
