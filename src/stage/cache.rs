//! The cache stage (DESIGN §6): answers from stored wire-format messages.
//!
//! Owns: the cache key, the stored entry and how an entry becomes an answer
//! for a particular client, the TTL rules (RFC 2181 §8, RFC 2308 §5), the
//! bailiwick filter on what an upstream response may put in the cache.
//! Must not: decode a message on a hit (an entry is patched, never rebuilt),
//! lock, or allocate on a hit beyond moka's own bookkeeping.
//!
//! An entry stores a whole answer (header, question in lowercase, records)
//! with the offset and original TTL of every record. A hit copies it, writes
//! the client's ID, flags and question bytes (same length: only the case can
//! differ) and the decayed TTLs, and appends an OPT record when the client
//! used EDNS. Entries remember when they were stored and their original TTLs
//! so serve-stale and prefetch can decide on the same data.
//!
//! Serve-stale (RFC 8767): moka keeps an entry `stale_ttl` past its expiry;
//! `get` never returns it then, `get_stale` does, for the miss path to fall
//! back on when the upstream fails or the shaper sheds the query. What is
//! served is a *stale copy*: the same bytes, fresh for `stale_answer_ttl`
//! seconds, answered with that TTL and an Extended DNS Error "Stale Answer"
//! (RFC 8914 §4.4). It is inserted, so hits answer it until a refresh works.
//!
//! Prefetch: a hit in the last 10% of an entry's life (a stale copy: after
//! `STALE_RECHECK`) sends the entry's key, once per entry, into a bounded
//! queue with `try_send` (one allocation per entry lifetime, never a wait);
//! the pipeline's refresh task drains it at low priority. When the queue is
//! full the request is dropped and counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use moka::sync::Cache as Moka;
use moka::Expiry;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::wire::{self, Query, MAX_NAME_LEN, OPT_LEN};

/// Bounds on stored TTLs, from config (`cache.*`).
#[derive(Clone, Copy, Debug)]
pub struct TtlLimits {
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub min_negative_ttl: u32,
    pub max_negative_ttl: u32,
}

/// Key flag: the query had the DO bit (DNSSEC records are cached apart).
const KEY_DO: u8 = 1;
/// Key flag: a name-wide NXDOMAIN, valid for every type (RFC 2308 §5, RFC 8020).
const KEY_NXDOMAIN: u8 = 2;
/// A key: lowercased wire name, type, class, flags.
pub const MAX_KEY_LEN: usize = MAX_NAME_LEN + 5;

/// A cache key built on the stack, so a lookup allocates nothing.
pub struct Key {
    buf: [u8; MAX_KEY_LEN],
    len: usize,
}

impl Key {
    /// `name` is a wire-format name of at most 255 bytes (the parser checked).
    pub fn new(name: &[u8], qtype: u16, qclass: u16, dnssec_ok: bool) -> Key {
        let mut buf = [0u8; MAX_KEY_LEN];
        let n = name.len();
        wire::lower_name_into(name, &mut buf[..n]);
        buf[n..n + 2].copy_from_slice(&qtype.to_be_bytes());
        buf[n + 2..n + 4].copy_from_slice(&qclass.to_be_bytes());
        buf[n + 4] = if dnssec_ok { KEY_DO } else { 0 };
        Key { buf, len: n + 5 }
    }

    /// The name-wide NXDOMAIN key of the same name.
    pub fn nxdomain(&self) -> Key {
        let mut k = Key {
            buf: self.buf,
            len: self.len,
        };
        let n = self.len - 5;
        k.buf[n..n + 2].copy_from_slice(&0u16.to_be_bytes());
        k.buf[n + 4] |= KEY_NXDOMAIN;
        k
    }

    /// The name-wide NXDOMAIN key of each proper ancestor of this name, nearest first.
    pub fn nxdomain_ancestors(&self) -> impl Iterator<Item = Key> + '_ {
        let name_len = self.len - 5;
        let mut at = 0usize;
        std::iter::from_fn(move || {
            at += wire::parent_offset(&self.buf[at..name_len])?;
            if self.buf[at] == 0 {
                return None; // the root is never NXDOMAIN
            }
            let name = &self.buf[at..name_len];
            let tail = &self.buf[name_len..self.len];
            let k = Key::new(name, 0, u16::from_be_bytes([tail[2], tail[3]]), tail[4] & KEY_DO != 0);
            Some(k.nxdomain())
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The question name, lowercased, in wire format.
    pub fn name(&self) -> &[u8] {
        &self.buf[..self.len - 5]
    }

    pub fn qtype(&self) -> u16 {
        u16::from_be_bytes([self.buf[self.len - 5], self.buf[self.len - 4]])
    }

    pub fn qclass(&self) -> u16 {
        u16::from_be_bytes([self.buf[self.len - 3], self.buf[self.len - 2]])
    }

    pub fn dnssec_ok(&self) -> bool {
        self.buf[self.len - 1] & KEY_DO != 0
    }

    /// A key back from `as_bytes` (as a refresh request carries it).
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        if bytes.len() < 6 || bytes.len() > MAX_KEY_LEN || bytes[bytes.len() - 1] & KEY_NXDOMAIN != 0 {
            return None;
        }
        let mut buf = [0u8; MAX_KEY_LEN];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Key { buf, len: bytes.len() })
    }
}

/// Where the TTL of one record sits in the stored message, and its TTL as stored.
#[derive(Clone, Copy, Debug)]
struct TtlSlot {
    at: u16,
    ttl: u32,
}

/// One cached answer.
#[derive(Debug)]
pub struct Entry {
    /// A complete answer message as we would send it, ID 0, no OPT record.
    wire: Box<[u8]>,
    question_end: u16,
    ttls: Box<[TtlSlot]>,
    rcode: u8,
    /// Upstream vouched for the data (AD); only passed on to clients that ask (RFC 6840 §5.8).
    authentic: bool,
    /// When the answer arrived; with `ttl` this gives freshness, and later staleness.
    stored: Instant,
    /// Seconds the whole entry stays fresh: the least TTL of the records that answer.
    ttl: u32,
    negative: bool,
    /// The response was NXDOMAIN for the question name itself (no CNAME in front).
    name_wide_nxdomain: bool,
    /// A stale copy (RFC 8767): every TTL is written as `ttl`, with an EDE.
    stale: bool,
    /// When the data itself expired (a stale copy keeps its original's), from
    /// which `stale_ttl` is counted.
    expired_at: Instant,
    /// Set by the first hit that asked for a refresh, so each entry asks once.
    refresh_asked: AtomicBool,
}

/// How long a stale copy is answered before a hit asks for another refresh:
/// the upstream is retried in the background while clients get stale data.
pub const STALE_RECHECK: Duration = Duration::from_secs(2);

/// Entries with a shorter TTL are not prefetched: their last tenth is under
/// 300 ms, less than one upstream timeout, so a refresh could not be counted
/// on to land before expiry, and without one a client waits for the
/// upstream at most once per TTL anyway.
pub const PREFETCH_MIN_TTL: u32 = 3;

/// Why an upstream response could not become an entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("upstream rcode {0} is not an answer")]
    NotAnAnswer(ResponseCode),
    #[error("encoding the cached answer: {0}")]
    Encode(#[from] hickory_proto::ProtoError),
    #[error("encoded answer is malformed")]
    Malformed,
}

impl Entry {
    /// Builds an entry from an upstream response to (`qname`, `qtype`), keeping
    /// only the records on the question's CNAME chain (and, for negative answers,
    /// the SOA that sets their TTL), with TTLs clamped to `limits`.
    pub fn from_response(
        resp: &Message,
        qname: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
        limits: &TtlLimits,
        now: Instant,
    ) -> Result<Entry, EntryError> {
        let rcode = resp.metadata.response_code;
        if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
            return Err(EntryError::NotAnAnswer(rcode));
        }
        let (answers, last) = chain(&resp.answers, qname, qtype, dnssec_ok);
        let answered = qtype == RecordType::CNAME && !answers.is_empty()
            || answers.iter().any(|r| r.record_type() == qtype && r.name == last);
        let negative = rcode == ResponseCode::NXDomain || !answered;

        let mut ttl = u32::MAX;
        let mut msg = Message::new(0, MessageType::Response, OpCode::Query);
        msg.metadata.recursion_available = true;
        msg.metadata.response_code = rcode;
        msg.metadata.authentic_data = resp.metadata.authentic_data;
        msg.add_query(HQuery::query(qname.to_lowercase(), qtype));
        for mut r in answers {
            // Lowercase owners compress against the (lowercase) stored question,
            // so a hit echoes the asking client's case, not the first asker's.
            r.name = r.name.to_lowercase();
            r.ttl = r.ttl.clamp(limits.min_ttl, limits.max_ttl);
            ttl = ttl.min(r.ttl);
            msg.add_answer(r);
        }
        if negative {
            // RFC 2308 §5: the negative TTL is the lesser of the SOA's TTL and
            // its MINIMUM. Without an SOA the answer is not cached (§5: SHOULD NOT).
            let soa = resp.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) if r.name.zone_of(&last) => Some((r, soa.minimum)),
                _ => None,
            });
            let neg_ttl = match soa {
                Some((r, minimum)) => r
                    .ttl
                    .min(minimum)
                    .clamp(limits.min_negative_ttl, limits.max_negative_ttl),
                None => 0,
            };
            ttl = ttl.min(neg_ttl);
            for r in &resp.authorities {
                let keep = match r.record_type() {
                    RecordType::SOA => r.name.zone_of(&last),
                    RecordType::NSEC | RecordType::NSEC3 | RecordType::RRSIG => dnssec_ok,
                    _ => false,
                };
                if keep {
                    let mut r = r.clone();
                    r.ttl = r.ttl.min(ttl);
                    msg.add_authority(r);
                }
            }
        }
        if ttl == u32::MAX {
            ttl = 0;
        }
        let name_wide_nxdomain = rcode == ResponseCode::NXDomain && msg.answers.is_empty();
        Entry::from_wire(
            msg.to_vec()?,
            rcode.low(),
            resp.metadata.authentic_data,
            now,
            ttl,
            negative,
            name_wide_nxdomain,
        )
    }

    fn from_wire(
        wire: Vec<u8>,
        rcode: u8,
        authentic: bool,
        stored: Instant,
        ttl: u32,
        negative: bool,
        name_wide_nxdomain: bool,
    ) -> Result<Entry, EntryError> {
        let question_end = wire::parse_question_end(&wire).ok_or(EntryError::Malformed)?;
        let mut ttls = Vec::new();
        wire::for_each_rr(&wire, |rr| {
            ttls.push(TtlSlot {
                at: rr.ttl_at as u16,
                ttl: rr.ttl,
            })
        })
        .ok_or(EntryError::Malformed)?;
        if wire.len() > u16::MAX as usize {
            return Err(EntryError::Malformed);
        }
        Ok(Entry {
            // Copied into allocations of the exact size: shrinking a grown Vec
            // in place keeps 16 bytes of slack in its chunk when the rest is
            // too small to split off (glibc: a one-slot TTL table, always),
            // which `weight` would not see.
            wire: Box::from(wire.as_slice()),
            question_end: question_end as u16,
            ttls: Box::from(ttls.as_slice()),
            rcode,
            authentic,
            stored,
            ttl,
            negative,
            name_wide_nxdomain,
            stale: false,
            expired_at: stored.checked_add(Duration::from_secs(ttl as u64)).unwrap_or(stored),
            refresh_asked: AtomicBool::new(false),
        })
    }

    /// The same answer served stale (RFC 8767 §4): fresh from `now` for
    /// `answer_ttl` seconds, every TTL written as `answer_ttl`.
    pub fn stale_copy(&self, now: Instant, answer_ttl: u32) -> Entry {
        Entry {
            wire: self.wire.clone(),
            question_end: self.question_end,
            ttls: self.ttls.clone(),
            rcode: self.rcode,
            authentic: self.authentic,
            stored: now,
            ttl: answer_ttl.max(1),
            negative: self.negative,
            name_wide_nxdomain: self.name_wide_nxdomain,
            stale: true,
            expired_at: self.expired_at,
            refresh_asked: AtomicBool::new(false),
        }
    }

    /// A stale copy (see `stale_copy`).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// A remembered resolution failure (RFC 9520), never served stale.
    pub fn is_failure(&self) -> bool {
        self.rcode == wire::RCODE_SERVFAIL
    }

    /// True once per entry, for the first hit at `now` late enough in the
    /// entry's life to refresh it: the last 10% of its TTL (millisecond
    /// precision), or `STALE_RECHECK` into a stale copy's. Failures are not
    /// refreshed (they expire and are asked again), nor are entries with a
    /// TTL under `PREFETCH_MIN_TTL`.
    pub fn wants_refresh(&self, now: Instant) -> bool {
        if self.is_failure() || self.refresh_asked.load(Ordering::Relaxed) {
            return false;
        }
        if !self.stale && self.ttl < PREFETCH_MIN_TTL {
            return false;
        }
        let due = if self.stale {
            STALE_RECHECK
        } else {
            Duration::from_millis(self.ttl as u64 * 900)
        };
        now.saturating_duration_since(self.stored) >= due && !self.refresh_asked.swap(true, Ordering::Relaxed)
    }

    /// A resolution failure (SERVFAIL), kept `ttl` seconds so clients that
    /// retry do not each send the failing question upstream again (RFC 9520 §3.2).
    pub fn failure(qname: &Name, qtype: RecordType, ttl: u32, now: Instant) -> Result<Entry, EntryError> {
        let mut msg = Message::new(0, MessageType::Response, OpCode::Query);
        msg.metadata.recursion_available = true;
        msg.metadata.response_code = ResponseCode::ServFail;
        msg.add_query(HQuery::query(qname.to_lowercase(), qtype));
        Entry::from_wire(
            msg.to_vec()?,
            ResponseCode::ServFail.low(),
            false,
            now,
            ttl,
            true,
            false,
        )
    }

    /// The same negative answer for a name below this one (RFC 8020 §2):
    /// rebuilt through hickory, so only on the miss path.
    pub fn for_descendant(&self, qname: &Name, qtype: RecordType) -> Result<Entry, EntryError> {
        let mut msg = Message::from_vec(&self.wire).map_err(|_| EntryError::Malformed)?;
        msg.queries.clear();
        msg.add_query(HQuery::query(qname.to_lowercase(), qtype));
        Entry::from_wire(
            msg.to_vec()?,
            self.rcode,
            self.authentic,
            self.stored,
            self.ttl,
            true,
            true,
        )
    }

    /// Writes `query`'s answer as `CNAME target` followed by this entry's
    /// records (the answer for the target): how an ExternalName service and
    /// the search-path shortcut are answered, on the hit path too. Spliced
    /// at the wire level (`wire::splice`), else rebuilt through hickory.
    #[allow(clippy::too_many_arguments)]
    pub fn write_behind_cname(
        &self,
        msg: &[u8],
        query: &Query,
        target: &Name,
        cname_ttl: u32,
        now: Instant,
        limit: usize,
        our_udp_size: u16,
        out: &mut Vec<u8>,
    ) -> Result<(), EntryError> {
        let elapsed = self.elapsed(now);
        // The common case without decoding: the stored bytes copied behind
        // the CNAME (wire::splice). It declines what it cannot copy exactly:
        // an answer over the limit, a record type it does not know.
        let ttl = |t: u32| t.min(self.ttl).saturating_sub(elapsed);
        let (stored, rcode) = (&self.wire[..], self.rcode);
        if self.question_is(target)
            && wire::splice_behind_cname(msg, query, stored, rcode, cname_ttl, ttl, limit, our_udp_size, out).is_some()
        {
            return Ok(());
        }
        let stored = Message::from_vec(&self.wire).map_err(|_| EntryError::Malformed)?;
        let qname = Name::from_bytes(query.qname(msg)).map_err(|_| EntryError::Malformed)?;
        let decay = |mut r: Record| {
            r.ttl = r.ttl.min(self.ttl).saturating_sub(elapsed);
            r
        };
        let mut m = Message::new(query.id, MessageType::Response, OpCode::Query);
        m.metadata.recursion_available = true;
        m.metadata.response_code = stored.metadata.response_code;
        m.add_query(HQuery::query(qname.clone(), RecordType::from(query.qtype)));
        let cname = Record::from_rdata(
            qname,
            cname_ttl,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(target.clone())),
        );
        m.add_answer(cname);
        m.add_answers(stored.answers.into_iter().map(decay));
        m.add_authorities(stored.authorities.into_iter().map(decay));
        let wire = m.to_vec()?;
        let entry = Entry::from_wire(wire, self.rcode, false, now, u32::MAX, self.negative, false)?;
        if !entry.write_answer(msg, query, now, limit, our_udp_size, out) {
            return Err(EntryError::Malformed);
        }
        Ok(())
    }

    /// Whether the stored question name is `name` (ASCII case aside).
    fn question_is(&self, name: &Name) -> bool {
        let mut at = wire::HEADER_LEN;
        for label in name.iter() {
            let Some(&len) = self.wire.get(at) else { return false };
            let stored = self.wire.get(at + 1..at + 1 + usize::from(len));
            if usize::from(len) != label.len() || !stored.is_some_and(|s| s.eq_ignore_ascii_case(label)) {
                return false;
            }
            at += 1 + label.len();
        }
        self.wire.get(at) == Some(&0)
    }

    /// Wraps a complete answer message (an authority's answer for another
    /// name) so it can be written behind a CNAME; its TTLs are taken as they are.
    pub fn transient(wire: Vec<u8>, rcode: u8, now: Instant) -> Result<Entry, EntryError> {
        Entry::from_wire(wire, rcode, false, now, u32::MAX, false, false)
    }

    /// Seconds left before the entry expires.
    pub fn remaining(&self, now: Instant) -> u32 {
        self.ttl.saturating_sub(self.elapsed(now))
    }

    /// True while the entry may be served as fresh at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.elapsed(now) < self.ttl
    }

    fn elapsed(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.stored)
            .as_secs()
            .min(u32::MAX as u64) as u32
    }

    /// How long moka keeps the entry from `at` on: while fresh, and then
    /// `stale_ttl` past the expiry of its data (failures: not past their TTL).
    fn keep_for(&self, at: Instant, stale_ttl: Duration) -> Duration {
        let fresh_until = self
            .stored
            .checked_add(Duration::from_secs(self.ttl as u64))
            .unwrap_or(self.stored);
        let until = if self.is_failure() {
            fresh_until
        } else {
            fresh_until.max(self.expired_at.checked_add(stale_ttl).unwrap_or(self.expired_at))
        };
        until.saturating_duration_since(at)
    }

    /// True while the data may be answered stale at `now` (RFC 8767 §5's
    /// maximum stale timer is `stale_ttl`).
    fn is_servable_stale(&self, now: Instant, stale_ttl: Duration) -> bool {
        !self.is_failure() && now < self.expired_at.checked_add(stale_ttl).unwrap_or(self.expired_at)
    }

    pub fn rcode(&self) -> u8 {
        self.rcode
    }
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Heap bytes of the entry's own allocations, as malloc takes them: the
    /// `Arc` holding it, the stored message and the TTL table.
    fn heap_footprint(&self) -> usize {
        heap_chunk(ARC_HEADER + std::mem::size_of::<Entry>())
            + heap_chunk(self.wire.len())
            + heap_chunk(std::mem::size_of_val::<[TtlSlot]>(&self.ttls))
    }

    /// Bytes this entry costs in the cache, for the weigher: what storing it
    /// under a `key_len`-byte key takes from the heap (the key, the entry's
    /// allocations, moka's bookkeeping), so `cache.max_bytes` bounds memory.
    fn weight(&self, key_len: usize) -> u32 {
        let bytes = heap_chunk(key_len) + self.heap_footprint() + MOKA_ENTRY_OVERHEAD;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// Writes this entry as the answer to `query` (held in `msg`) into `out`.
    /// `limit` is the largest answer the transport allows (UDP: the client's
    /// payload size; TCP: 65535): a larger answer becomes TC=1 with the question
    /// only (RFC 1035 §4.2.1, RFC 6891 §7). Returns false if the entry's
    /// question does not line up with the query's (it never should: keys match).
    pub fn write_answer(
        &self,
        msg: &[u8],
        query: &Query,
        now: Instant,
        limit: usize,
        our_udp_size: u16,
        out: &mut Vec<u8>,
    ) -> bool {
        if self.question_end as usize != query.question_end {
            return false;
        }
        let ede = self.ede();
        let opt_len = match (query.edns, ede) {
            (None, _) => 0,
            (Some(_), None) => OPT_LEN,
            (Some(_), Some(_)) => OPT_LEN + wire::ede_len(""),
        };
        if self.wire.len() + opt_len > limit {
            write_empty(msg, query, query.flags, wire::RCODE_NOERROR, true, our_udp_size, out);
            return true;
        }
        out.clear();
        out.extend_from_slice(&self.wire);
        let ad = self.authentic && (query.dnssec_ok() || query.authentic_data());
        let flags = wire::answer_flags(query.flags, self.rcode, ad, false, false);
        out[0..2].copy_from_slice(&query.id.to_be_bytes());
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        out[wire::HEADER_LEN..query.question_end].copy_from_slice(query.question(msg));
        let elapsed = self.elapsed(now);
        for slot in self.ttls.iter() {
            // RFC 8767 §4: a stale answer carries the stale answer TTL.
            let left = if self.stale {
                self.ttl
            } else {
                slot.ttl.min(self.ttl).saturating_sub(elapsed)
            };
            let at = slot.at as usize;
            out[at..at + 4].copy_from_slice(&left.to_be_bytes());
        }
        if let Some(e) = query.edns {
            let at = out.len();
            out.resize(at + OPT_LEN, 0);
            wire::write_opt(out, at, our_udp_size, e.dnssec_ok, 0);
            out[10..12].copy_from_slice(&1u16.to_be_bytes());
            if let Some(code) = ede {
                wire::append_ede(out, at, code, "");
            }
        }
        true
    }

    /// The Extended DNS Error a hit on this entry carries (RFC 8914).
    fn ede(&self) -> Option<u16> {
        match (self.stale, self.rcode) {
            (true, wire::RCODE_NXDOMAIN) => Some(wire::ede::STALE_NXDOMAIN),
            (true, _) => Some(wire::ede::STALE_ANSWER),
            (false, wire::RCODE_SERVFAIL) => Some(wire::ede::CACHED_ERROR),
            (false, _) => None,
        }
    }
}

/// Writes an answer with no records and, when the client used EDNS, an
/// Extended DNS Error with `text` (RFC 8914): how a shed query's SERVFAIL
/// says why.
#[allow(clippy::too_many_arguments)]
pub fn write_empty_ede(
    msg: &[u8],
    query: &Query,
    rcode: u8,
    info_code: u16,
    text: &str,
    our_udp_size: u16,
    out: &mut Vec<u8>,
) {
    write_empty(msg, query, query.flags, rcode, false, our_udp_size, out);
    if query.edns.is_some() {
        let at = out.len() - OPT_LEN;
        wire::append_ede(out, at, info_code, text);
    }
}

/// Writes an answer with no records (errors, TC=1) into `out`.
pub fn write_empty(msg: &[u8], query: &Query, flags: u16, rcode: u8, tc: bool, our_udp_size: u16, out: &mut Vec<u8>) {
    out.clear();
    out.resize(wire::MAX_EMPTY_ANSWER, 0);
    let n = wire::write_empty_answer(
        msg,
        Some(query),
        wire::Head {
            id: query.id,
            flags,
            rcode,
            tc,
        },
        our_udp_size,
        out,
    );
    out.truncate(n);
}

/// The records of `answers` on the CNAME chain from `qname` (RFC 1034 §3.6.2),
/// and the name the chain ends at. Anything else an upstream put in the
/// answer section is out of bailiwick for this question and is dropped.
fn chain(answers: &[Record], qname: &Name, qtype: RecordType, dnssec_ok: bool) -> (Vec<Record>, Name) {
    let mut names = vec![qname.clone()];
    if qtype != RecordType::CNAME {
        // Bounded: a chain longer than the answer section is a loop.
        for _ in 0..answers.len().min(16) {
            let last = names.last().expect("never empty");
            let next = answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if &r.name == last => Some(c.0.clone()),
                _ => None,
            });
            match next {
                Some(n) if !names.contains(&n) => names.push(n),
                _ => break,
            }
        }
    }
    let last = names.last().expect("never empty").clone();
    let kept = answers
        .iter()
        .filter(|r| {
            names.contains(&r.name)
                && match r.record_type() {
                    t if t == qtype => r.name == last || qtype == RecordType::CNAME,
                    RecordType::CNAME => r.name != last,
                    RecordType::RRSIG => dnssec_ok,
                    _ => false,
                }
        })
        .cloned()
        .collect();
    (kept, last)
}

/// The shared answer cache, bounded in bytes, with per-entry expiry and
/// moka's TinyLFU admission so a flood of one-off names cannot evict the
/// names that are asked again.
#[derive(Clone)]
pub struct Cache {
    inner: Moka<Box<[u8]>, Arc<Entry>>,
    /// The reloadable settings, shared with the expiry policy (`retune`).
    tuning: Arc<ArcSwap<Tuning>>,
    freshness: Freshness,
}

/// The settings a config reload may change without touching stored entries:
/// they apply to what is stored, or looked up stale, from then on.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    limits: TtlLimits,
    stale_ttl: Duration,
    stale_answer_ttl: u32,
}

/// A hit asking for its entry to be refreshed: the key it was looked up by.
#[derive(Debug)]
pub struct Refresh {
    pub key: Box<[u8]>,
}

/// Serve-stale and prefetch settings (`cache.stale_ttl`,
/// `cache.stale_answer_ttl`, `cache.prefetch`) and their hit-path counters.
/// The two TTLs are where the cache starts; `Cache::retune` changes them.
#[derive(Clone)]
pub struct Freshness {
    /// How long past expiry data may still be answered; zero turns serve-stale off.
    pub stale_ttl: Duration,
    /// The TTL of stale answers (RFC 8767 §4: 30 s).
    pub stale_answer_ttl: u32,
    /// Where hits late in an entry's life ask for a refresh; None turns prefetch off.
    pub refresh: Option<mpsc::Sender<Refresh>>,
    /// Hits answered from a stale copy.
    pub stale_hits: IntCounter,
    /// Refresh requests dropped because the queue was full.
    pub refresh_dropped: IntCounter,
}

impl Freshness {
    /// No serve-stale, no prefetch: entries live exactly their TTL.
    pub fn off() -> Freshness {
        let counter = |name: &str| IntCounter::new(name, "unregistered").expect("valid name");
        Freshness {
            stale_ttl: Duration::ZERO,
            stale_answer_ttl: 30,
            refresh: None,
            stale_hits: counter("stale_hits"),
            refresh_dropped: counter("refresh_dropped"),
        }
    }
}

/// What moka takes per entry beyond the key's bytes and the value: its
/// `ValueEntry`, `EntryInfo` and key `Arc`s, the access-order deque node, the
/// timer-wheel node (per-entry expiry), the concurrent hash table's bucket
/// (its bucket arrays amortized), as malloc chunks. Measured with a counting
/// allocator around `Cache::insert` of 10,000 to 229,000 entries (moka
/// 0.12.16): 368–374 bytes per entry, 442 at 1,000 entries (the table's
/// first arrays); rounded up. Without it the weigher counted under half of
/// what a small entry (an NXDOMAIN: ~690 heap bytes) takes.
/// `tests::a_full_cache_takes_about_max_bytes_of_heap` measures it again
/// (a full 4 MiB cache: 1.03 × max_bytes of heap).
const MOKA_ENTRY_OVERHEAD: usize = 384;

/// The strong and weak counts in front of an `Arc`'s value.
const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();

/// Bytes malloc takes for a request of `size` bytes: glibc's chunk (an 8-byte
/// header, 16-byte granules, 32 bytes at least); other allocators round
/// differently (jemalloc: no header, coarser classes above 128 bytes). Zero:
/// no allocation (an empty boxed slice).
const fn heap_chunk(size: usize) -> usize {
    if size == 0 {
        return 0;
    }
    let chunk = (size + 8 + 15) & !15;
    if chunk < 32 {
        32
    } else {
        chunk
    }
}

#[allow(clippy::borrowed_box)] // moka's weigher signature
fn weigh(k: &Box<[u8]>, v: &Arc<Entry>) -> u32 {
    v.weight(k.len())
}

struct EntryExpiry {
    tuning: Arc<ArcSwap<Tuning>>,
}

impl Expiry<Box<[u8]>, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(&self, _: &Box<[u8]>, v: &Arc<Entry>, at: Instant) -> Option<Duration> {
        Some(v.keep_for(at, self.tuning.load().stale_ttl))
    }
    fn expire_after_update(&self, _: &Box<[u8]>, v: &Arc<Entry>, at: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(v.keep_for(at, self.tuning.load().stale_ttl))
    }
}

impl Cache {
    /// A cache without serve-stale or prefetch.
    pub fn new(max_bytes: u64, limits: TtlLimits) -> Cache {
        Cache::with_freshness(max_bytes, limits, Freshness::off())
    }

    pub fn with_freshness(max_bytes: u64, limits: TtlLimits, freshness: Freshness) -> Cache {
        let tuning = Arc::new(ArcSwap::from_pointee(Tuning {
            limits,
            stale_ttl: freshness.stale_ttl,
            stale_answer_ttl: freshness.stale_answer_ttl,
        }));
        let inner = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(weigh)
            .expire_after(EntryExpiry { tuning: tuning.clone() })
            .build();
        Cache {
            inner,
            tuning,
            freshness,
        }
    }

    /// Applies reloaded TTL bounds and serve-stale settings (config reload).
    /// Stored entries keep their TTLs and their time in the cache; what is
    /// stored from now on, and every stale lookup, uses the new values.
    pub fn retune(&self, limits: TtlLimits, stale_ttl: Duration, stale_answer_ttl: u32) {
        self.tuning.store(Arc::new(Tuning {
            limits,
            stale_ttl,
            stale_answer_ttl,
        }));
    }

    /// The TTL stale answers carry.
    pub fn stale_answer_ttl(&self) -> u32 {
        self.tuning.load().stale_answer_ttl
    }

    pub fn limits(&self) -> TtlLimits {
        self.tuning.load().limits
    }

    /// The fresh entry answering `key`: its own, or the name-wide NXDOMAIN of
    /// its name. Both have the question's length, so the hot path can serve them.
    ///
    /// A hit late in the entry's life asks for a refresh (once per entry,
    /// never waiting: a full queue drops the request).
    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let entry = self.peek(key, now)?;
        if entry.stale {
            self.freshness.stale_hits.inc();
        }
        if let Some(queue) = &self.freshness.refresh {
            if entry.wants_refresh(now) {
                let request = Refresh {
                    key: key.as_bytes().into(),
                };
                if queue.try_send(request).is_err() {
                    self.freshness.refresh_dropped.inc();
                }
            }
        }
        Some(entry)
    }

    /// Data for `key` (its own or its name's NXDOMAIN) that expired less than
    /// `stale_ttl` ago, to answer stale when the upstream cannot (RFC 8767).
    pub fn get_stale(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let stale_ttl = self.tuning.load().stale_ttl;
        if stale_ttl.is_zero() {
            return None;
        }
        let servable = |e: &Arc<Entry>| e.is_servable_stale(now, stale_ttl);
        self.inner
            .get(key.as_bytes())
            .filter(servable)
            .or_else(|| self.inner.get(key.nxdomain().as_bytes()).filter(servable))
    }

    /// Like `get`, without counting or asking for a refresh: what the miss
    /// path checks before it asks upstream itself.
    pub fn peek(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let fresh = |e: Arc<Entry>| e.is_fresh(now).then_some(e);
        self.inner
            .get(key.as_bytes())
            .and_then(fresh)
            .or_else(|| self.inner.get(key.nxdomain().as_bytes()).and_then(fresh))
    }

    /// A fresh NXDOMAIN cached for an ancestor of the key's name (RFC 8020).
    pub fn get_ancestor_nxdomain(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        key.nxdomain_ancestors()
            .find_map(|k| self.inner.get(k.as_bytes()).filter(|e| e.is_fresh(now)))
    }

    /// Stores `entry` for `key` if it has any lifetime; a name-wide NXDOMAIN
    /// goes under the name's NXDOMAIN key so it answers every type.
    pub fn insert(&self, key: &Key, entry: Arc<Entry>) {
        if entry.ttl == 0 {
            return;
        }
        let stored: Box<[u8]> = match entry.name_wide_nxdomain {
            true => key.nxdomain().as_bytes().into(),
            false => key.as_bytes().into(),
        };
        self.inner.insert(stored, entry);
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }

    /// Lets moka apply pending evictions now (metrics read counts after it).
    pub fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, CNAME, SOA};
    use std::str::FromStr;

    const LIMITS: TtlLimits = TtlLimits {
        min_ttl: 0,
        max_ttl: 86400,
        min_negative_ttl: 30,
        max_negative_ttl: 3600,
    };

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
        Record::from_rdata(
            name(zone),
            ttl,
            RData::SOA(SOA::new(name("ns."), name("h."), 1, 1, 1, 1, minimum)),
        )
    }

    fn response(rcode: ResponseCode, answers: Vec<Record>, authority: Vec<Record>) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.answers = answers;
        m.authorities = authority;
        m
    }

    fn query_bytes(qname: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(HQuery::query(name(qname), qtype));
        let mut v = m.to_vec().unwrap();
        // hickory writes names in lowercase; put the asked case back.
        let mut at = 12;
        for label in qname.trim_end_matches('.').split('.') {
            v[at + 1..at + 1 + label.len()].copy_from_slice(label.as_bytes());
            at += 1 + label.len();
        }
        v
    }

    #[test]
    fn keeps_only_the_question_chain() {
        let resp = response(
            ResponseCode::NoError,
            vec![
                Record::from_rdata(name("www.a."), 60, RData::CNAME(CNAME(name("x.b.")))),
                Record::from_rdata(name("x.b."), 300, RData::A(A::new(192, 0, 2, 1))),
                Record::from_rdata(name("evil.c."), 300, RData::A(A::new(6, 6, 6, 6))),
            ],
            vec![],
        );
        let e = Entry::from_response(&resp, &name("www.a."), RecordType::A, false, &LIMITS, Instant::now()).unwrap();
        let m = Message::from_vec(&e.wire).unwrap();
        assert_eq!(m.answers.len(), 2);
        assert_eq!(e.ttl, 60);
        assert!(!e.negative);
    }

    #[test]
    fn negative_ttl_from_soa_clamped() {
        let now = Instant::now();
        let nx = response(ResponseCode::NXDomain, vec![], vec![soa("a.", 300, 60)]);
        let e = Entry::from_response(&nx, &name("no.a."), RecordType::A, false, &LIMITS, now).unwrap();
        assert_eq!((e.ttl, e.negative, e.name_wide_nxdomain), (60, true, true));
        let nx = response(ResponseCode::NXDomain, vec![], vec![soa("a.", 300, 5)]);
        let e = Entry::from_response(&nx, &name("no.a."), RecordType::A, false, &LIMITS, now).unwrap();
        assert_eq!(e.ttl, 30, "raised to min_negative_ttl");
        let bare = response(ResponseCode::NXDomain, vec![], vec![]);
        let e = Entry::from_response(&bare, &name("no.a."), RecordType::A, false, &LIMITS, now).unwrap();
        assert_eq!(e.ttl, 0, "no SOA, not cached");
    }

    #[test]
    fn hit_patches_id_case_and_ttl() {
        let t0 = Instant::now();
        let resp = response(
            ResponseCode::NoError,
            vec![Record::from_rdata(name("www.a."), 300, RData::A(A::new(192, 0, 2, 1)))],
            vec![],
        );
        let e = Entry::from_response(&resp, &name("www.a."), RecordType::A, false, &LIMITS, t0).unwrap();
        let q = query_bytes("WwW.a.", RecordType::A);
        let pq = wire::parse_query(&q).unwrap();
        let mut out = Vec::new();
        assert!(e.write_answer(&q, &pq, t0 + Duration::from_secs(100), 512, 1232, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 0x4242);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.queries[0].name().to_string(), "WwW.a.");
        assert_eq!(m.answers[0].ttl, 200);
        out.clear();
        assert!(e.write_answer(&q, &pq, t0, 20, 1232, &mut out));
        assert!(Message::from_vec(&out).unwrap().metadata.truncation);
    }

    #[test]
    fn nxdomain_answers_every_type_and_descendants() {
        let now = Instant::now();
        let cache = Cache::new(1 << 20, LIMITS);
        let nx = response(ResponseCode::NXDomain, vec![], vec![soa("a.", 300, 60)]);
        let e = Entry::from_response(&nx, &name("no.a."), RecordType::A, false, &LIMITS, now).unwrap();
        let key = |n: &str, t: RecordType| {
            let q = query_bytes(n, t);
            let pq = wire::parse_query(&q).unwrap();
            Key::new(pq.qname(&q), pq.qtype, pq.qclass, false)
        };
        cache.insert(&key("no.a.", RecordType::A), Arc::new(e));
        assert!(cache.get(&key("NO.a.", RecordType::TXT), now).is_some());
        assert!(cache.get(&key("x.no.a.", RecordType::A), now).is_none());
        let anc = cache
            .get_ancestor_nxdomain(&key("x.y.no.a.", RecordType::A), now)
            .unwrap();
        let d = anc.for_descendant(&name("x.y.no.a."), RecordType::A).unwrap();
        assert_eq!(d.rcode, 3);
        assert!(cache
            .get(&key("no.a.", RecordType::A), now + Duration::from_secs(61))
            .is_none());
    }

    fn a_record(ttl: u32, now: Instant) -> Entry {
        let resp = response(
            ResponseCode::NoError,
            vec![Record::from_rdata(name("www.a."), ttl, RData::A(A::new(192, 0, 2, 1)))],
            vec![],
        );
        Entry::from_response(&resp, &name("www.a."), RecordType::A, false, &LIMITS, now).unwrap()
    }

    fn www_key(q: &[u8]) -> Key {
        let pq = wire::parse_query(q).unwrap();
        Key::new(pq.qname(q), pq.qtype, pq.qclass, false)
    }

    fn with_edns(mut q: Vec<u8>) -> Vec<u8> {
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        q
    }

    #[test]
    fn retune_applies_to_what_comes_next_and_keeps_the_entries() {
        let t0 = Instant::now();
        let freshness = Freshness {
            stale_ttl: Duration::from_secs(3600),
            ..Freshness::off()
        };
        let cache = Cache::with_freshness(1 << 20, LIMITS, freshness);
        let q = with_edns(query_bytes("www.a.", RecordType::A));
        let key = www_key(&q);
        cache.insert(&key, Arc::new(a_record(60, t0)));
        let later = t0 + Duration::from_secs(100);
        assert!(cache.get_stale(&key, later).is_some());
        let limits = TtlLimits { min_ttl: 120, ..LIMITS };
        cache.retune(limits, Duration::ZERO, 10);
        assert_eq!(cache.limits().min_ttl, 120);
        assert_eq!(cache.stale_answer_ttl(), 10);
        assert!(cache.get_stale(&key, later).is_none(), "serve-stale is off now");
        assert!(
            cache.peek(&key, t0 + Duration::from_secs(30)).is_some(),
            "the entry itself stays"
        );
    }

    #[test]
    fn expired_entries_are_kept_and_served_stale_as_copies() {
        let t0 = Instant::now();
        let (tx, _rx) = mpsc::channel(8);
        let freshness = Freshness {
            stale_ttl: Duration::from_secs(3600),
            refresh: Some(tx),
            ..Freshness::off()
        };
        let cache = Cache::with_freshness(1 << 20, LIMITS, freshness);
        let q = with_edns(query_bytes("www.a.", RecordType::A));
        let key = www_key(&q);
        cache.insert(&key, Arc::new(a_record(60, t0)));
        let later = t0 + Duration::from_secs(100);
        assert!(cache.get(&key, later).is_none(), "expired: a miss");
        let stale = cache.get_stale(&key, later).expect("kept for stale_ttl");
        assert!(
            cache.get_stale(&key, t0 + Duration::from_secs(60 + 3600)).is_none(),
            "not past stale_ttl"
        );

        let copy = Arc::new(stale.stale_copy(later, 30));
        cache.insert(&key, copy.clone());
        let hit = cache
            .get(&key, later + Duration::from_secs(10))
            .expect("the copy is fresh");
        assert!(hit.is_stale());
        assert_eq!(cache.freshness.stale_hits.get(), 1);
        let pq = wire::parse_query(&q).unwrap();
        let mut out = Vec::new();
        assert!(hit.write_answer(&q, &pq, later + Duration::from_secs(10), 1232, 1232, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers[0].ttl, 30, "RFC 8767: the stale answer TTL, not decayed");
        let ede = m
            .edns
            .as_ref()
            .unwrap()
            .option(hickory_proto::rr::rdata::opt::EdnsCode::Unknown(15));
        let Some(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(15, data)) = ede else {
            panic!("no EDE in {m:?}")
        };
        assert_eq!(data, &[0, wire::ede::STALE_ANSWER as u8], "Stale Answer, no text");
        // The copy keeps the original's stale window: no copy outlives it by more than its own TTL.
        assert!(copy.is_servable_stale(t0 + Duration::from_secs(3600), Duration::from_secs(3600)));
        assert!(!copy.is_servable_stale(t0 + Duration::from_secs(3661), Duration::from_secs(3600)));
    }

    #[test]
    fn failures_are_not_kept_stale() {
        let t0 = Instant::now();
        let freshness = Freshness {
            stale_ttl: Duration::from_secs(3600),
            ..Freshness::off()
        };
        let cache = Cache::with_freshness(1 << 20, LIMITS, freshness);
        let q = query_bytes("www.a.", RecordType::A);
        let key = www_key(&q);
        let failure = Entry::failure(&name("www.a."), RecordType::A, 1, t0).unwrap();
        assert_eq!(failure.keep_for(t0, Duration::from_secs(3600)), Duration::from_secs(1));
        cache.insert(&key, Arc::new(failure));
        assert!(cache.get_stale(&key, t0 + Duration::from_secs(2)).is_none());
        // A hit on a remembered failure says so (RFC 8914 Cached Error).
        let q = with_edns(q);
        let pq = wire::parse_query(&q).unwrap();
        let mut out = Vec::new();
        assert!(cache
            .get(&key, t0)
            .unwrap()
            .write_answer(&q, &pq, t0, 1232, 1232, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m
            .edns
            .unwrap()
            .option(hickory_proto::rr::rdata::opt::EdnsCode::Unknown(15))
            .is_some());
    }

    #[test]
    fn a_hit_in_the_last_tenth_asks_for_a_refresh_once() {
        let t0 = Instant::now();
        let (tx, mut rx) = mpsc::channel(1);
        let freshness = Freshness {
            refresh: Some(tx),
            ..Freshness::off()
        };
        let cache = Cache::with_freshness(1 << 20, LIMITS, freshness);
        let q = query_bytes("WWW.a.", RecordType::A);
        let key = www_key(&q);
        cache.insert(&key, Arc::new(a_record(10, t0)));
        assert!(cache.get(&key, t0 + Duration::from_millis(8_999)).is_some());
        assert!(rx.try_recv().is_err(), "not yet in the last 10%");
        assert!(cache.get(&key, t0 + Duration::from_millis(9_000)).is_some());
        let asked = rx.try_recv().expect("a refresh request");
        assert_eq!(&*asked.key, key.as_bytes());
        let back = Key::from_bytes(&asked.key).unwrap();
        assert_eq!((back.qtype(), back.qclass(), back.dnssec_ok()), (1, 1, false));
        assert_eq!(back.name(), b"\x03www\x01a\x00");
        assert!(cache.get(&key, t0 + Duration::from_millis(9_500)).is_some());
        assert!(rx.try_recv().is_err(), "once per entry");

        // A full queue drops the request and counts it; the hit is still answered.
        cache.insert(&key, Arc::new(a_record(10, t0)));
        let key2 = www_key(&query_bytes("x.a.", RecordType::A));
        cache.insert(&key2, Arc::new(a_record(10, t0)));
        assert!(cache.get(&key, t0 + Duration::from_secs(9)).is_some());
        assert!(cache.get(&key2, t0 + Duration::from_secs(9)).is_some());
        assert_eq!(cache.freshness.refresh_dropped.get(), 1);
        // Too short a TTL to prefetch.
        let brief = a_record(2, t0);
        assert!(!brief.wants_refresh(t0 + Duration::from_millis(1_900)));
        // Stale copies ask after STALE_RECHECK.
        let copy = a_record(10, t0).stale_copy(t0, 30);
        assert!(!copy.wants_refresh(t0 + STALE_RECHECK - Duration::from_millis(1)));
        assert!(copy.wants_refresh(t0 + STALE_RECHECK));
    }

    /// The weigher's model of the heap against the allocator itself: each of
    /// an entry's allocations takes the chunk `heap_chunk` says, or 16 bytes
    /// more when malloc hands out a free chunk whose remainder is too small
    /// to split off.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_chunk_is_what_glibc_takes() {
        // SAFETY: every pointer is the start of a live allocation of the
        // global allocator (System: glibc malloc for these sizes and alignments).
        let chunk = |p: *const u8| unsafe { libc::malloc_usable_size(p as *mut libc::c_void) } + 8;
        let fits = |p: *const u8, size: usize| {
            let (real, model) = (chunk(p), heap_chunk(size));
            assert!(
                model <= real && real <= model + 16,
                "{size} bytes: malloc took {real}, the model says {model}"
            );
        };
        let nx = response(ResponseCode::NXDomain, vec![], vec![soa("a.", 300, 60)]);
        let entries = [
            a_record(60, Instant::now()),
            Entry::from_response(&nx, &name("no.a."), RecordType::A, false, &LIMITS, Instant::now()).unwrap(),
        ];
        for e in entries {
            fits(e.wire.as_ptr(), e.wire.len());
            fits(e.ttls.as_ptr().cast(), 8 * e.ttls.len());
            let e = Arc::new(e);
            // An Arc's allocation starts with its two counts, then the value.
            let arc = Arc::as_ptr(&e).cast::<u8>().wrapping_sub(ARC_HEADER);
            fits(arc, ARC_HEADER + std::mem::size_of::<Entry>());
        }
        for len in [1, 24, 25, 33, 40, 41, 100, 1000] {
            let key: Box<[u8]> = vec![7u8; len].into();
            fits(key.as_ptr(), len);
        }
    }

    #[test]
    fn weight_is_at_least_the_heap_an_entry_takes() {
        let nx = response(ResponseCode::NXDomain, vec![], vec![soa("a.", 300, 60)]);
        let nx = Entry::from_response(&nx, &name("no.a."), RecordType::A, false, &LIMITS, Instant::now()).unwrap();
        for e in [a_record(60, Instant::now()), nx] {
            let key_len = 13;
            let own = heap_chunk(ARC_HEADER + std::mem::size_of::<Entry>())
                + heap_chunk(e.wire.len())
                + heap_chunk(8 * e.ttls.len());
            assert_eq!(e.heap_footprint(), own);
            let w = e.weight(key_len) as usize;
            assert_eq!(w, heap_chunk(key_len) + own + MOKA_ENTRY_OVERHEAD);
            assert!(w >= key_len + e.wire.len() + 8 * e.ttls.len() + std::mem::size_of::<Entry>() + 350);
        }
        assert_eq!(
            (heap_chunk(0), heap_chunk(1), heap_chunk(24), heap_chunk(25)),
            (0, 32, 32, 48)
        );
    }

    /// A full cache holds about `max_bytes` of heap, not twice that: entries
    /// inserted past capacity on this thread, its allocations counted (moka's
    /// housekeeping runs on the inserting thread).
    #[test]
    fn a_full_cache_takes_about_max_bytes_of_heap() {
        const MAX: u64 = 4 << 20;
        let now = Instant::now();
        let entry = |i: usize| {
            // An NXDOMAIN for a one-off name, as a random-name flood leaves.
            let q = name(&format!("{i:012x}.flood.example."));
            let nx = response(ResponseCode::NXDomain, vec![], vec![soa(".", 3600, 3600)]);
            let e = Entry::from_response(&nx, &q, RecordType::A, false, &LIMITS, now).unwrap();
            let mut wire = Vec::new();
            for label in q.iter() {
                wire.push(label.len() as u8);
                wire.extend_from_slice(label);
            }
            wire.push(0);
            (Key::new(&wire, 1, 1, false), Arc::new(e))
        };
        let before = counting::net();
        let cache = Cache::new(MAX, LIMITS);
        for i in 0..20_000 {
            let (k, e) = entry(i);
            cache.insert(&k, e);
        }
        cache.run_pending_tasks();
        let heap = (counting::net() - before) as f64;
        let (n, weighed) = (cache.entry_count(), cache.weighted_size());
        assert!(n > 4_000 && n < 20_000, "{n} entries: the cache should be full");
        assert!(weighed as f64 > 0.95 * MAX as f64, "{weighed} bytes weighed");
        let ratio = heap / MAX as f64;
        assert!(
            (0.9..=1.08).contains(&ratio),
            "{n} entries, {weighed} bytes weighed, {heap} bytes of heap: {ratio:.2} x max_bytes"
        );
        drop(cache);
    }

    /// Counts this thread's heap in glibc chunks (`heap_chunk`), for tests
    /// that weigh what a structure really takes; other threads' allocations
    /// (concurrent tests) do not disturb the count.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static NET: Cell<isize> = const { Cell::new(0) };
        }

        fn add(size: usize, sign: isize) {
            let bytes = super::heap_chunk(size) as isize * sign;
            // try_with: nothing to count into while the thread is torn down.
            let _ = NET.try_with(|n| n.set(n.get() + bytes));
        }

        /// Heap bytes this thread allocated and has not freed.
        pub fn net() -> isize {
            NET.with(Cell::get)
        }

        struct Counting;

        // SAFETY: every call is passed to System unchanged; only counted.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let p = unsafe { System.alloc(layout) };
                if !p.is_null() {
                    add(layout.size(), 1);
                }
                p
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                let p = unsafe { System.alloc_zeroed(layout) };
                if !p.is_null() {
                    add(layout.size(), 1);
                }
                p
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                unsafe { System.dealloc(ptr, layout) };
                add(layout.size(), -1);
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let p = unsafe { System.realloc(ptr, layout, new_size) };
                if !p.is_null() {
                    add(layout.size(), -1);
                    add(new_size, 1);
                }
                p
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;
    }
}
