//! The server-side search-list walk of `shortcut = "cname"` (DESIGN §3):
//! the stage that answers `P.<ns>.svc.Z` with a CNAME to the first candidate
//! that exists. The rules live in `stage::shortcut`; this is the part that
//! asks the index, the cache and (on the miss path) the upstream.
//!
//! The walk runs twice as code, once: `walk_now` on the hit path uses only
//! the index and fresh cache entries and gives up (to the miss path) at the
//! first candidate it would have to fetch; `walk` on the miss path fetches.
//! Both classify each candidate with the same function.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::BinDecodable;

use super::{Live, Pipeline, Transport};
use crate::cluster::authority::{Ask, Outcome};
use crate::metrics::Source;
use crate::stage::cache::{Entry, Key};
use crate::stage::shortcut::{Candidate, Found, Place, SearchPath, Walk};
use crate::wire::{self, Query};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// What is known about one candidate for one type.
enum Probe {
    Known(Found, Option<Arc<Entry>>),
    /// A cache miss: only the miss path can go on.
    Fetch,
}

/// How a walk ended.
pub(super) enum WalkEnd {
    /// `out` holds the CNAME answer.
    Answered { rcode: u8 },
    /// Nothing that glibc would stop at: answer the plain NXDOMAIN (`out`
    /// is as the caller left it).
    NotFound,
    /// A name was found but its answer could not be written (too large for
    /// the splice and hickory both): answer the plain NXDOMAIN, which `out`
    /// no longer holds.
    Unwritten,
    /// `walk_now` needs the upstream.
    NeedFetch,
}

thread_local! {
    /// The cluster authority's answer for a candidate, reused across queries on a worker.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// A minimal query for `name` (wire), so the authority can answer a candidate.
fn synthetic_query(name: &[u8], qtype: u16, buf: &mut [u8; 12 + wire::MAX_NAME_LEN + 4]) -> usize {
    buf[..12].copy_from_slice(&[0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    buf[12..12 + name.len()].copy_from_slice(name);
    let at = 12 + name.len();
    buf[at..at + 2].copy_from_slice(&qtype.to_be_bytes());
    buf[at + 2..at + 4].copy_from_slice(&wire::CLASS_IN.to_be_bytes());
    at + 4
}

fn other_address_type(qtype: u16) -> Option<u16> {
    match qtype {
        TYPE_A => Some(TYPE_AAAA),
        TYPE_AAAA => Some(TYPE_A),
        _ => None,
    }
}

fn classify_entry(entry: &Entry) -> Found {
    match entry.rcode() {
        wire::RCODE_NXDOMAIN => Found::Nothing,
        wire::RCODE_NOERROR if entry.is_negative() => Found::NoData,
        wire::RCODE_NOERROR => Found::Data,
        _ => Found::Unknown,
    }
}

impl Pipeline {
    /// Classifies `cand` for `qtype` from what is at hand: the index for
    /// cluster candidates, fresh cache entries for the others.
    fn probe(&self, live: &Live, cand: &Candidate, qtype: u16, query: &Query, now: Instant) -> Probe {
        match cand.place {
            Place::Cluster => {
                let Some(authority) = &live.authority else {
                    return Probe::Known(Found::Unknown, None);
                };
                let mut qbuf = [0u8; 12 + wire::MAX_NAME_LEN + 4];
                let n = synthetic_query(cand.name(), qtype, &mut qbuf);
                let Ok(q) = wire::parse_query(&qbuf[..n]) else {
                    return Probe::Known(Found::Unknown, None);
                };
                SCRATCH.with_borrow_mut(|scratch| {
                    let ask = Ask {
                        msg: &qbuf[..n],
                        query: &q,
                        lname: cand.name(),
                        limit: super::TCP_LIMIT,
                        our_udp_size: self.edns_udp_size,
                    };
                    match authority.answer(&ask, scratch) {
                        Outcome::Answered {
                            rcode: wire::RCODE_NXDOMAIN,
                        } => Probe::Known(Found::Nothing, None),
                        Outcome::Answered {
                            rcode: wire::RCODE_NOERROR,
                        } => {
                            let answers = u16::from_be_bytes([scratch[6], scratch[7]]);
                            if answers == 0 {
                                return Probe::Known(Found::NoData, None);
                            }
                            let entry = Entry::transient(scratch.clone(), wire::RCODE_NOERROR, now)
                                .ok()
                                .map(Arc::new);
                            Probe::Known(Found::Data, entry)
                        }
                        // ExternalName candidates, an unsynced index: let the client walk on.
                        _ => Probe::Known(Found::Unknown, None),
                    }
                })
            }
            Place::Host | Place::Bare => {
                let key = Key::new(cand.name(), qtype, query.qclass, query.dnssec_ok());
                match self.cache.get(&key, now) {
                    Some(e) => Probe::Known(classify_entry(&e), Some(e)),
                    None => Probe::Fetch,
                }
            }
        }
    }

    /// The walk on the hit path: answers only when every part is in the index or the cache.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn walk_now(
        &self,
        live: &Live,
        search: &SearchPath,
        msg: &[u8],
        query: &Query,
        lname: &[u8],
        walk: Walk,
        now: Instant,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> WalkEnd {
        let mut cname_ttl = live.negative_ttl();
        for cand in search.candidates(lname, walk) {
            let (found, entry) = match self.probe(live, &cand, query.qtype, query, now) {
                Probe::Known(f, e) => (f, e),
                Probe::Fetch => return WalkEnd::NeedFetch,
            };
            let found = match (found, other_address_type(query.qtype)) {
                (Found::NoData, Some(other)) => match self.probe(live, &cand, other, query, now) {
                    Probe::Known(f, _) => Found::settle_nodata(Some(f)),
                    Probe::Fetch => return WalkEnd::NeedFetch,
                },
                (Found::NoData, None) => Found::settle_nodata(None),
                (f, _) => f,
            };
            match self.step(msg, query, &cand, found, entry, &mut cname_ttl, now, transport, out) {
                Some(end) => return end,
                None => continue,
            }
        }
        self.count_walk(None);
        WalkEnd::NotFound
    }

    /// The walk on the miss path: fetches what the cache does not have.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn walk(
        &self,
        live: &Live,
        msg: &[u8],
        query: &Query,
        walk: Walk,
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
    ) -> WalkEnd {
        let Some(search) = &live.search else {
            return WalkEnd::NotFound;
        };
        let lname = Key::new(query.qname(msg), query.qtype, query.qclass, false);
        let mut cname_ttl = live.negative_ttl();
        for cand in search.candidates(lname.name(), walk) {
            let (found, entry) = self.probe_fetching(live, &cand, query.qtype, query, client).await;
            let found = match (found, other_address_type(query.qtype)) {
                (Found::NoData, Some(other)) => {
                    Found::settle_nodata(Some(self.probe_fetching(live, &cand, other, query, client).await.0))
                }
                (Found::NoData, None) => Found::settle_nodata(None),
                (f, _) => f,
            };
            if let Some(end) = self.step(
                msg,
                query,
                &cand,
                found,
                entry,
                &mut cname_ttl,
                Instant::now(),
                transport,
                out,
            ) {
                return end;
            }
        }
        self.count_walk(None);
        WalkEnd::NotFound
    }

    async fn probe_fetching(
        &self,
        live: &Live,
        cand: &Candidate,
        qtype: u16,
        query: &Query,
        client: IpAddr,
    ) -> (Found, Option<Arc<Entry>>) {
        match self.probe(live, cand, qtype, query, Instant::now()) {
            Probe::Known(f, e) => (f, e),
            Probe::Fetch => {
                let Ok(name) = Name::from_bytes(cand.name()) else {
                    return (Found::Unknown, None);
                };
                let key = Key::new(cand.name(), qtype, query.qclass, query.dnssec_ok());
                match self
                    .fetch(&name, RecordType::from(qtype), query, &key, &live.upstreams, client)
                    .await
                {
                    Some(e) => (classify_entry(&e), Some(e)),
                    None => (Found::Unknown, None),
                }
            }
        }
    }

    /// Applies the stop rule to one classified candidate: None to go on.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        msg: &[u8],
        query: &Query,
        cand: &Candidate,
        found: Found,
        entry: Option<Arc<Entry>>,
        cname_ttl: &mut u32,
        now: Instant,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Option<WalkEnd> {
        match found {
            Found::Nothing => {
                // The CNAME claims every earlier candidate does not exist: it
                // lives no longer than the shortest of those negative answers.
                if let Some(e) = &entry {
                    *cname_ttl = (*cname_ttl).min(e.remaining(now));
                }
                None
            }
            Found::Unknown => {
                self.count_walk(None);
                Some(WalkEnd::NotFound)
            }
            Found::Data | Found::NoData => {
                let Ok(target) = Name::from_bytes(cand.name()) else {
                    return Some(WalkEnd::NotFound);
                };
                let limit = self.limit(query, transport);
                let written = match (&entry, found) {
                    (Some(e), Found::Data) => {
                        e.write_behind_cname(msg, query, &target, *cname_ttl, now, limit, self.edns_udp_size, out)
                    }
                    // The name exists with the other address type only: the CNAME alone, NOERROR.
                    _ => Entry::transient(empty_answer(cand.name(), query.qtype), wire::RCODE_NOERROR, now).and_then(
                        |e| e.write_behind_cname(msg, query, &target, *cname_ttl, now, limit, self.edns_udp_size, out),
                    ),
                };
                if written.is_err() {
                    self.count_walk(None);
                    return Some(WalkEnd::Unwritten);
                }
                // The question is in our zone: the CNAME is ours to vouch for.
                wire::set_authoritative(out);
                self.count_walk(Some(cand.place));
                Some(WalkEnd::Answered {
                    rcode: wire::RCODE_NOERROR,
                })
            }
        }
    }

    fn count_walk(&self, found: Option<Place>) {
        let outcome = found.map_or("not_found", Place::label);
        self.metrics.shortcut(outcome);
    }

    /// The miss-path half of `shortcut = "cname"`: walk, else the authority's NXDOMAIN.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn resolve_walk(
        &self,
        live: &Live,
        msg: &[u8],
        query: &Query,
        walk: Walk,
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
    ) -> (Source, u8) {
        match self.walk(live, msg, query, walk, transport, client, out).await {
            WalkEnd::Answered { rcode } => (Source::Shortcut, rcode),
            WalkEnd::NotFound | WalkEnd::Unwritten | WalkEnd::NeedFetch => {
                if let Some(search) = &live.search {
                    let lname = Key::new(query.qname(msg), query.qtype, query.qclass, false);
                    self.expect_continuation(search, lname.name(), walk);
                }
                self.cluster_answer(live, msg, query, transport, out)
            }
        }
    }
}

/// A NOERROR answer with no records for (`name`, `qtype`): the found part of
/// a CNAME answer whose target has only the other address type.
fn empty_answer(name: &[u8], qtype: u16) -> Vec<u8> {
    let mut v = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
    v.extend_from_slice(name);
    v.extend_from_slice(&qtype.to_be_bytes());
    v.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    v
}
