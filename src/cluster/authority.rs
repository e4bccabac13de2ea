//! The cluster zone's authority: answers names under `cluster_domain` and
//! the claimed reverse zones from an index snapshot, per the Kubernetes
//! DNS-based service discovery specification (schema 1.1.0).
//!
//! Owns: the name grammar of the zone, NXDOMAIN versus NODATA, the SOA,
//! TTLs per kind, and writing the answer. Must not: allocate, wait, or reach
//! the network: it runs on the hit path, writing records straight into the
//! output buffer with compression pointers into the client's question.
//!
//! | name (relative to Z)                | answers                                   |
//! |-------------------------------------|-------------------------------------------|
//! | (apex)                              | SOA                                       |
//! | `dns-version`                       | TXT "1.1.0", TTL 28800                    |
//! | `<svc>.<ns>.svc`                    | A/AAAA of the cluster IPs, or of the ready endpoints (headless), or CNAME (ExternalName) |
//! | `<ep>.<svc>.<ns>.svc`               | A/AAAA of a headless endpoint, by hostname or dashed address |
//! | `_<port>._<proto>.<svc>.<ns>.svc`   | SRV per named port (per endpoint when headless), targets' addresses in additional |
//! | `<a-b-c-d>.<ns>.pod`                | A (or AAAA) from the name itself, `pods = "insecure"` |
//! | `svc`, `pod`, `<ns>.pod`, `<ns>.svc` with services, `_<proto>.<svc>.<ns>.svc` with ports | NODATA (empty non-terminals) |
//! | anything else under Z               | NXDOMAIN with the SOA                     |
//! | PTR `…in-addr.arpa` / `…ip6.arpa`   | service and headless-endpoint addresses; NXDOMAIN inside the claimed CIDRs |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::index::{IndexHandle, RecordKind, ServiceRecords, Snapshot};
use crate::wire::{self, Query, OPT_LEN};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_SOA: u16 = 6;
const TYPE_PTR: u16 = 12;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
/// Kubernetes DNS schema version this authority implements.
const SCHEMA_VERSION: &[u8] = b"1.1.0";
const DNS_VERSION_TTL: u32 = 28800;
/// Most labels a name can have (255 bytes, 2 per label).
const MAX_LABELS: usize = 128;

/// Settings of the cluster zone (`[cluster]` in the config).
#[derive(Clone, Debug)]
pub struct ZoneSettings {
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// TTL of ClusterIP, ExternalName, pod and service PTR records.
    pub service_ttl: u32,
    /// TTL of headless endpoint records, which churn.
    pub endpoint_ttl: u32,
    /// SOA TTL and MINIMUM: how long clients cache a negative answer.
    pub negative_ttl: u32,
    /// Answer `a-b-c-d.<ns>.pod.Z` (kube-dns's "insecure" mode).
    pub pods: bool,
    /// Service and pod CIDRs whose reverse zones are answered authoritatively.
    pub reverse_cidrs: Vec<IpNet>,
}

/// What the authority did with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a name this authority owns: the pipeline goes on.
    NotOurs,
    /// `out` holds the answer.
    Answered { rcode: u8 },
    /// Ours, but the index has not synced yet (DESIGN §4: fall back or SERVFAIL).
    NotSynced,
    /// An ExternalName: answer with a CNAME to `target` (wire format) plus
    /// the target's records, which the miss path resolves.
    Alias { target: Box<[u8]>, ttl: u32 },
}

/// One query to answer: its bytes, where its parts are, its lowercased
/// name, and what its transport allows.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub msg: &'a [u8],
    pub query: &'a Query,
    /// The question name, lowercased wire format.
    pub lname: &'a [u8],
    /// Largest answer the transport allows.
    pub limit: usize,
    pub our_udp_size: u16,
}

pub struct Authority {
    /// The zone apex in lowercase wire format, root label included.
    zone: Box<[u8]>,
    index: IndexHandle,
    settings: ZoneSettings,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("domain", &self.settings.domain)
            .finish()
    }
}

/// Label boundaries of a wire name: `starts[i]` is the offset of label i,
/// the root label last.
struct Labels {
    starts: [u8; MAX_LABELS],
    count: usize,
}

impl Labels {
    fn of(name: &[u8]) -> Option<Labels> {
        let mut l = Labels {
            starts: [0; MAX_LABELS],
            count: 0,
        };
        let mut at = 0usize;
        loop {
            let len = *name.get(at)? as usize;
            if l.count == MAX_LABELS {
                return None;
            }
            l.starts[l.count] = at as u8;
            l.count += 1;
            if len == 0 {
                return Some(l);
            }
            at += 1 + len;
        }
    }
    fn start(&self, i: usize) -> usize {
        self.starts[i] as usize
    }
    /// Label i with its length byte.
    fn get<'a>(&self, name: &'a [u8], i: usize) -> &'a [u8] {
        &name[self.start(i)..self.start(i + 1)]
    }
    /// Label i's text.
    fn text<'a>(&self, name: &'a [u8], i: usize) -> &'a [u8] {
        &name[self.start(i) + 1..self.start(i + 1)]
    }
}

/// Builds an answer in `out`: header written last, when the counts are known.
struct Answer<'a> {
    out: &'a mut Vec<u8>,
    counts: [u16; 3],
}

impl Answer<'_> {
    /// Starts a record with a compressed owner (a pointer into the message); returns the RDLENGTH offset.
    fn start(&mut self, owner_at: usize, rtype: u16, ttl: u32) -> usize {
        self.owner(owner_at);
        self.fixed(rtype, ttl)
    }
    fn owner(&mut self, at: usize) {
        self.out.extend_from_slice(&(0xc000 | at as u16).to_be_bytes());
    }
    fn fixed(&mut self, rtype: u16, ttl: u32) -> usize {
        self.out.extend_from_slice(&rtype.to_be_bytes());
        self.out.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
        self.out.extend_from_slice(&ttl.to_be_bytes());
        self.out.extend_from_slice(&[0, 0]);
        self.out.len() - 2
    }
    fn finish(&mut self, rdlen_at: usize, section: usize) {
        let rdlen = (self.out.len() - rdlen_at - 2) as u16;
        self.out[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        self.counts[section] += 1;
    }
    fn address(&mut self, owner_at: usize, ip: IpAddr, ttl: u32, section: usize) {
        match ip {
            IpAddr::V4(v4) => {
                let at = self.start(owner_at, TYPE_A, ttl);
                self.out.extend_from_slice(&v4.octets());
                self.finish(at, section);
            }
            IpAddr::V6(v6) => {
                let at = self.start(owner_at, TYPE_AAAA, ttl);
                self.out.extend_from_slice(&v6.octets());
                self.finish(at, section);
            }
        }
    }
}

const ANSWER: usize = 0;
const AUTHORITY: usize = 1;
const ADDITIONAL: usize = 2;

fn family_type(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() {
        TYPE_A
    } else {
        TYPE_AAAA
    }
}

impl Authority {
    pub fn new(settings: ZoneSettings, index: IndexHandle) -> Authority {
        let mut zone = Vec::new();
        for l in settings.domain.split('.').filter(|l| !l.is_empty()) {
            zone.push(l.len() as u8);
            zone.extend(l.bytes().map(|b| b.to_ascii_lowercase()));
        }
        zone.push(0);
        Authority {
            zone: zone.into(),
            index,
            settings,
        }
    }

    pub fn index(&self) -> &IndexHandle {
        &self.index
    }

    /// How long clients may cache this zone's negative answers.
    pub fn negative_ttl(&self) -> u32 {
        self.settings.negative_ttl
    }

    /// Answers `query` if it is ours. `lname` is the question name lowercased.
    pub fn answer(&self, ask: &Ask<'_>, out: &mut Vec<u8>) -> Outcome {
        let Some(labels) = Labels::of(ask.lname) else {
            return Outcome::NotOurs;
        };
        let zone_at = ask.lname.len().wrapping_sub(self.zone.len());
        // A byte suffix is not enough: a label's bytes may end in `\x07cluster`.
        let in_zone = ask.lname.ends_with(&self.zone) && (0..labels.count).any(|i| labels.start(i) == zone_at);
        if in_zone {
            if !self.index.is_synced() {
                return Outcome::NotSynced;
            }
            let snapshot = self.index.load();
            return self.zone_answer(ask, &labels, zone_at, &snapshot, out);
        }
        self.reverse_answer(ask, &labels, out)
    }

    fn zone_answer(
        &self,
        ask: &Ask<'_>,
        labels: &Labels,
        zone_at: usize,
        snap: &Snapshot,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let (q, lname) = (ask.query, ask.lname);
        // Relative labels: those before the zone apex.
        let rel = (0..labels.count).take_while(|&i| labels.start(i) < zone_at).count();
        let t = |i: usize| labels.text(lname, i);
        let qname_at = wire::HEADER_LEN;
        let s = &self.settings;
        let mut a = self.begin(ask, out);
        let rcode = match rel {
            0 => match q.qtype {
                TYPE_SOA => {
                    self.soa(&mut a, qname_at + zone_at, snap, ANSWER);
                    wire::RCODE_NOERROR
                }
                _ => return self.negative(a, ask, zone_at, snap, wire::RCODE_NOERROR),
            },
            1 if t(0) == b"dns-version" => {
                if q.qtype != TYPE_TXT {
                    return self.negative(a, ask, zone_at, snap, wire::RCODE_NOERROR);
                }
                let at = a.start(qname_at, TYPE_TXT, DNS_VERSION_TTL);
                a.out.push(SCHEMA_VERSION.len() as u8);
                a.out.extend_from_slice(SCHEMA_VERSION);
                a.finish(at, ANSWER);
                wire::RCODE_NOERROR
            }
            // svc.Z, pod.Z and <ns>.pod.Z are empty non-terminals.
            1 if t(0) == b"svc" || t(0) == b"pod" => wire::RCODE_NOERROR,
            2 if t(1) == b"pod" && s.pods => wire::RCODE_NOERROR,
            2 if t(1) == b"svc" => {
                if snap.namespaces.contains_key(labels.get(lname, 0)) {
                    wire::RCODE_NOERROR
                } else {
                    wire::RCODE_NXDOMAIN
                }
            }
            3 if t(2) == b"pod" && s.pods => match parse_dashed(t(0)) {
                Some(ip) if family_type(&ip) == q.qtype => {
                    a.address(qname_at, ip, s.service_ttl, ANSWER);
                    wire::RCODE_NOERROR
                }
                Some(_) => wire::RCODE_NOERROR,
                None => wire::RCODE_NXDOMAIN,
            },
            3.. if t(rel - 1) == b"svc" => {
                // The service is the two labels before `svc`.
                let svc_i = rel - 3;
                let key = &lname[labels.start(svc_i)..labels.start(rel - 1)];
                match snap.services.get(key) {
                    None => wire::RCODE_NXDOMAIN,
                    Some(records) => {
                        let svc_at = qname_at + labels.start(svc_i);
                        match self.service_name(&mut a, q, lname, labels, svc_i, svc_at, records) {
                            Ok(rcode) => rcode,
                            Err(alias) => return alias,
                        }
                    }
                }
            }
            _ => wire::RCODE_NXDOMAIN,
        };
        if a.counts[ANSWER] == 0 && rcode != wire::RCODE_SERVFAIL {
            return self.negative(a, ask, zone_at, snap, rcode);
        }
        self.end(a, ask, rcode)
    }

    /// Names at or below a service: `svc_i` is the index of the service label.
    #[allow(clippy::too_many_arguments)]
    fn service_name(
        &self,
        a: &mut Answer<'_>,
        q: &Query,
        lname: &[u8],
        labels: &Labels,
        svc_i: usize,
        svc_at: usize,
        records: &ServiceRecords,
    ) -> Result<u8, Outcome> {
        let s = &self.settings;
        let qname_at = wire::HEADER_LEN;
        match (svc_i, &records.kind) {
            (0, RecordKind::ClusterIp(ips)) => {
                for ip in ips.iter().filter(|ip| family_type(ip) == q.qtype) {
                    a.address(qname_at, *ip, s.service_ttl, ANSWER);
                }
                Ok(wire::RCODE_NOERROR)
            }
            (0, RecordKind::Headless(eps)) => {
                // No ready endpoint: the name does not exist (DESIGN §4).
                if eps.is_empty() {
                    return Ok(wire::RCODE_NXDOMAIN);
                }
                for ip in eps
                    .iter()
                    .flat_map(|e| e.ips.iter())
                    .filter(|ip| family_type(ip) == q.qtype)
                {
                    a.address(qname_at, *ip, s.endpoint_ttl, ANSWER);
                }
                Ok(wire::RCODE_NOERROR)
            }
            (0, RecordKind::ExternalName(target)) => {
                if q.qtype == TYPE_CNAME {
                    let at = a.start(qname_at, TYPE_CNAME, s.service_ttl);
                    a.out.extend_from_slice(target);
                    a.finish(at, ANSWER);
                    Ok(wire::RCODE_NOERROR)
                } else {
                    Err(Outcome::Alias {
                        target: target.clone(),
                        ttl: s.service_ttl,
                    })
                }
            }
            // `_<proto>.<svc>`: an empty non-terminal when a port uses the protocol.
            // (Before the endpoint arm: endpoint names never start with `_`.)
            (1, _) if labels.text(lname, 0).first() == Some(&b'_') => {
                let proto = labels.get(lname, 0);
                Ok(if records.ports.iter().any(|p| &*p.proto == proto) {
                    wire::RCODE_NOERROR
                } else {
                    wire::RCODE_NXDOMAIN
                })
            }
            (1, RecordKind::Headless(eps)) => {
                let wanted = labels.get(lname, 0);
                let Some(e) = eps.iter().find(|e| &*e.label == wanted) else {
                    return Ok(wire::RCODE_NXDOMAIN);
                };
                for ip in e.ips.iter().filter(|ip| family_type(ip) == q.qtype) {
                    a.address(qname_at, *ip, s.endpoint_ttl, ANSWER);
                }
                Ok(wire::RCODE_NOERROR)
            }
            (1, _) => Ok(wire::RCODE_NXDOMAIN),
            (2, _) => {
                let (port_l, proto_l) = (labels.get(lname, 0), labels.get(lname, 1));
                let Some(port) = records
                    .ports
                    .iter()
                    .find(|p| &*p.name == port_l && &*p.proto == proto_l)
                else {
                    return Ok(wire::RCODE_NXDOMAIN);
                };
                if q.qtype != TYPE_SRV {
                    return Ok(wire::RCODE_NOERROR);
                }
                self.srv(a, records, port.port, svc_at);
                Ok(wire::RCODE_NOERROR)
            }
            _ => Ok(wire::RCODE_NXDOMAIN),
        }
    }

    /// SRV records for one port, and the targets' addresses in additional.
    fn srv(&self, a: &mut Answer<'_>, records: &ServiceRecords, port: u16, svc_at: usize) {
        let s = &self.settings;
        let qname_at = wire::HEADER_LEN;
        match &records.kind {
            RecordKind::ClusterIp(ips) => {
                let at = a.start(qname_at, TYPE_SRV, s.service_ttl);
                srv_rdata(a.out, 100, port);
                a.owner(svc_at);
                a.finish(at, ANSWER);
                for ip in ips.iter() {
                    a.address(svc_at, *ip, s.service_ttl, ADDITIONAL);
                }
            }
            RecordKind::Headless(eps) => {
                let weight = (100 / eps.len().max(1)).max(1) as u16;
                let mut targets = [0u16; 64];
                for (i, e) in eps.iter().enumerate() {
                    let at = a.start(qname_at, TYPE_SRV, s.endpoint_ttl);
                    srv_rdata(a.out, weight, port);
                    if i < targets.len() && a.out.len() < 0x3fff {
                        targets[i] = a.out.len() as u16;
                    }
                    a.out.extend_from_slice(&e.label);
                    a.owner(svc_at);
                    a.finish(at, ANSWER);
                }
                for (i, e) in eps.iter().enumerate().take(targets.len()) {
                    if targets[i] != 0 {
                        for ip in e.ips.iter() {
                            a.address(targets[i] as usize, *ip, s.endpoint_ttl, ADDITIONAL);
                        }
                    }
                }
            }
            RecordKind::ExternalName(_) => {}
        }
    }

    fn reverse_answer(&self, ask: &Ask<'_>, labels: &Labels, out: &mut Vec<u8>) -> Outcome {
        let (q, lname) = (ask.query, ask.lname);
        let Some(ip) = parse_reverse(lname, labels) else {
            return Outcome::NotOurs;
        };
        let claimed = self.settings.reverse_cidrs.iter().find(|n| n.contains(&ip));
        let snap = self.index.load();
        let targets = snap.ptr.get(&ip);
        if claimed.is_none() && targets.is_none() {
            return Outcome::NotOurs;
        }
        if !self.index.is_synced() {
            return Outcome::NotSynced;
        }
        // The zone apex: the octet (nibble) boundary at or above the claimed prefix,
        // or for an unclaimed service address, the address's own /24 or /64.
        let zone_labels = match (claimed, ip) {
            (Some(n), IpAddr::V4(_)) => n.prefix_len() as usize / 8 + 2,
            (Some(n), IpAddr::V6(_)) => n.prefix_len() as usize / 4 + 2,
            (None, IpAddr::V4(_)) => 5,
            (None, IpAddr::V6(_)) => 18,
        };
        let zone_at = labels.start(labels.count - 1 - zone_labels);
        let mut a = self.begin(ask, out);
        let rcode = match targets {
            None => wire::RCODE_NXDOMAIN,
            Some(_) if q.qtype != TYPE_PTR => wire::RCODE_NOERROR,
            Some(list) => {
                for t in list.iter() {
                    let ttl = if t.headless {
                        self.settings.endpoint_ttl
                    } else {
                        self.settings.service_ttl
                    };
                    let at = a.start(wire::HEADER_LEN, TYPE_PTR, ttl);
                    a.out.extend_from_slice(&t.endpoint);
                    a.out.extend_from_slice(&t.service);
                    a.out.extend_from_slice(b"\x03svc");
                    a.out.extend_from_slice(&self.zone);
                    a.finish(at, ANSWER);
                }
                wire::RCODE_NOERROR
            }
        };
        if a.counts[ANSWER] == 0 {
            return self.negative(a, ask, zone_at, &snap, rcode);
        }
        self.end(a, ask, rcode)
    }

    /// Starts an answer: room for the header, then the question as asked.
    fn begin<'a>(&self, ask: &Ask<'_>, out: &'a mut Vec<u8>) -> Answer<'a> {
        out.clear();
        out.resize(wire::HEADER_LEN, 0);
        out.extend_from_slice(ask.query.question(ask.msg));
        Answer { out, counts: [0; 3] }
    }

    /// NXDOMAIN or NODATA: no answers, the SOA in authority (RFC 2308 §3).
    fn negative(&self, mut a: Answer<'_>, ask: &Ask<'_>, zone_at: usize, snap: &Snapshot, rcode: u8) -> Outcome {
        a.out.truncate(ask.query.question_end);
        a.counts = [0; 3];
        self.soa(&mut a, wire::HEADER_LEN + zone_at, snap, AUTHORITY);
        self.end(a, ask, rcode)
    }

    fn soa(&self, a: &mut Answer<'_>, zone_ptr: usize, snap: &Snapshot, section: usize) {
        let neg = self.settings.negative_ttl;
        let at = a.start(zone_ptr, TYPE_SOA, neg);
        a.out.extend_from_slice(b"\x02ns\x03dns");
        a.out.extend_from_slice(&self.zone);
        a.out.extend_from_slice(b"\x0ahostmaster");
        a.out.extend_from_slice(&self.zone);
        // Serial follows the index, so a secondary could tell a change; the
        // timers are CoreDNS's; MINIMUM is the negative TTL (RFC 2308 §4).
        let serial = snap.version as u32;
        for v in [serial, 7200, 1800, 86400, neg] {
            a.out.extend_from_slice(&v.to_be_bytes());
        }
        a.finish(at, section);
    }

    /// Writes the header and OPT; an answer over `limit` becomes TC=1.
    fn end(&self, a: Answer<'_>, ask: &Ask<'_>, rcode: u8) -> Outcome {
        let (q, limit, our_udp_size) = (ask.query, ask.limit, ask.our_udp_size);
        let opt = if q.edns.is_some() { OPT_LEN } else { 0 };
        let [mut an, mut ns, mut ar] = a.counts;
        let mut tc = false;
        if a.out.len() + opt > limit {
            // RFC 2181 §9: only a cut in the answer or authority needs TC;
            // simplest and safe is the question alone with TC=1.
            a.out.truncate(q.question_end);
            (an, ns, ar, tc) = (0, 0, 0, true);
        }
        if let Some(e) = q.edns {
            let at = a.out.len();
            a.out.resize(at + OPT_LEN, 0);
            wire::write_opt(a.out, at, our_udp_size, e.dnssec_ok, 0);
            ar += 1;
        }
        let flags = wire::answer_flags(q.flags, rcode, false, !tc, tc);
        wire::write_header(a.out, q.id, flags, [1, an, ns, ar]);
        Outcome::Answered { rcode }
    }
}

fn srv_rdata(out: &mut Vec<u8>, weight: u16, port: u16) {
    out.extend_from_slice(&0u16.to_be_bytes()); // priority
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
}

/// `10-1-0-7` → 10.1.0.7; `fd00-0-0-0-0-0-0-5` (or with `--` for `::`) → fd00::5.
fn parse_dashed(label: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(label).ok()?;
    if let Ok(v4) = s.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(v4.into());
    }
    s.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::from)
}

/// A full reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles `.ip6.arpa`) → the address.
fn parse_reverse(lname: &[u8], labels: &Labels) -> Option<IpAddr> {
    let n = labels.count - 1; // without the root
    let t = |i: usize| labels.text(lname, i);
    if n == 6 && t(4) == b"in-addr" && t(5) == b"arpa" {
        let mut o = [0u8; 4];
        for (i, octet) in o.iter_mut().rev().enumerate() {
            let s = std::str::from_utf8(t(i)).ok()?;
            if s.len() > 1 && s.starts_with('0') {
                return None;
            }
            *octet = s.parse().ok()?;
        }
        return Some(Ipv4Addr::from(o).into());
    }
    if n == 34 && t(32) == b"ip6" && t(33) == b"arpa" {
        let mut bytes = [0u8; 16];
        for i in 0..32 {
            let l = t(i);
            if l.len() != 1 {
                return None;
            }
            let v = (l[0] as char).to_digit(16)? as u8;
            let nibble = 31 - i;
            bytes[nibble / 2] |= if nibble % 2 == 0 { v << 4 } else { v };
        }
        return Some(Ipv6Addr::from(bytes).into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_suffix_must_fall_on_a_label_boundary() {
        let (_writer, handle) = crate::cluster::index::new_index();
        let settings = ZoneSettings {
            domain: "cluster.local".into(),
            service_ttl: 30,
            endpoint_ttl: 5,
            negative_ttl: 5,
            pods: true,
            reverse_cidrs: vec![],
        };
        let authority = Authority::new(settings, handle);
        // One label "a\x07cluster" followed by "local": its bytes end like the zone's.
        let name = b"\x09a\x07cluster\x05local\x00";
        let mut msg = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(name);
        msg.extend_from_slice(&[0, 1, 0, 1]);
        let q = wire::parse_query(&msg).unwrap();
        let ask = Ask {
            msg: &msg,
            query: &q,
            lname: name,
            limit: 512,
            our_udp_size: 1232,
        };
        assert_eq!(authority.answer(&ask, &mut Vec::new()), Outcome::NotOurs);
        let inside = b"\x01a\x07cluster\x05local\x00";
        let mut msg = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(inside);
        msg.extend_from_slice(&[0, 1, 0, 1]);
        let q = wire::parse_query(&msg).unwrap();
        let ask = Ask {
            msg: &msg,
            query: &q,
            lname: inside,
            limit: 512,
            our_udp_size: 1232,
        };
        assert_eq!(authority.answer(&ask, &mut Vec::new()), Outcome::NotSynced);
    }

    #[test]
    fn dashed_and_reverse_names() {
        assert_eq!(parse_dashed(b"10-1-0-7"), Some("10.1.0.7".parse().unwrap()));
        assert_eq!(parse_dashed(b"fd00--5"), Some("fd00::5".parse().unwrap()));
        assert_eq!(parse_dashed(b"nope"), None);
        let name = b"\x017\x010\x011\x0210\x07in-addr\x04arpa\x00";
        let l = Labels::of(name).unwrap();
        assert_eq!(parse_reverse(name, &l), Some("10.1.0.7".parse().unwrap()));
        let v6 = "fd00::5".parse::<Ipv6Addr>().unwrap();
        let mut name = Vec::new();
        for b in v6.octets().iter().rev() {
            for nib in [b & 0xf, b >> 4] {
                name.push(1);
                name.push(format!("{nib:x}").as_bytes()[0]);
            }
        }
        name.extend_from_slice(b"\x03ip6\x04arpa\x00");
        let l = Labels::of(&name).unwrap();
        assert_eq!(parse_reverse(&name, &l), Some(IpAddr::V6(v6)));
    }
}
