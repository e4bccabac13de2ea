//! Wire-format primitives for the hot path: read a client query without
//! decoding it into a message, and write error and cached answers straight
//! into an output buffer.
//!
//! Owns: the RFC 1035 §4.1 header layout, question scanning, the OPT record
//! (RFC 6891) of a query, walking resource records to find their TTL fields.
//! Must not: allocate, follow compression pointers in a question, or trust
//! any count in the header beyond what the bytes actually hold. Everything
//! richer (building answers from upstream messages) belongs to hickory-proto
//! on the miss path. `splice` copies a cached answer behind a CNAME,
//! relocating its compression pointers.

mod splice;
pub use splice::splice_behind_cname;

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Size of the OPT record we append to answers: root name, type, class, TTL, RDLEN.
pub const OPT_LEN: usize = 11;
/// Largest name on the wire (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Payload size assumed for clients without EDNS (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_SIZE: usize = 512;

pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_HINFO: u16 = 13;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

// Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD/CD).
const FLAG_QR: u16 = 0x8000;
const FLAG_OPCODE: u16 = 0x7800;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_AD: u16 = 0x0020;
const FLAG_CD: u16 = 0x0010;
const EDNS_DO: u16 = 0x8000;

/// The EDNS0 parameters of a query (RFC 6891 §6.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub dnssec_ok: bool,
}

/// A query located inside its datagram; all offsets index the original bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// End of the question name (the root label included).
    pub qname_end: usize,
    /// End of the question section.
    pub question_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query {
    pub fn recursion_desired(&self) -> bool {
        self.flags & FLAG_RD != 0
    }
    pub fn checking_disabled(&self) -> bool {
        self.flags & FLAG_CD != 0
    }
    pub fn authentic_data(&self) -> bool {
        self.flags & FLAG_AD != 0
    }
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }
    /// The question name as asked (case kept), in wire format.
    pub fn qname<'a>(&self, msg: &'a [u8]) -> &'a [u8] {
        &msg[HEADER_LEN..self.qname_end]
    }
    /// The whole question section as asked.
    pub fn question<'a>(&self, msg: &'a [u8]) -> &'a [u8] {
        &msg[HEADER_LEN..self.question_end]
    }
    /// The largest UDP answer this client accepts: its EDNS size clamped to
    /// [512, our own], or 512 without EDNS (RFC 6891 §6.2.5).
    pub fn udp_limit(&self, ours: u16) -> usize {
        match self.edns {
            Some(e) => (e.udp_size.min(ours) as usize).max(CLASSIC_UDP_SIZE),
            None => CLASSIC_UDP_SIZE,
        }
    }
}

/// Why a datagram could not be read as a query, in the order the guard checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Not even a header, or a response (QR=1): answering could start a loop. Dropped.
    Drop,
    /// Header readable; the rest is not a well-formed query: FORMERR.
    FormErr { id: u16, flags: u16 },
    /// Opcode other than QUERY: NOTIMP (RFC 1035 §4.1.1).
    NotImp { id: u16, flags: u16 },
    /// The question is fine but EDNS version is not 0: BADVERS (RFC 6891 §6.1.3).
    BadVers(Query),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads the header, the single question and the optional OPT record of a
/// query. Costs no allocation; every count is checked against the bytes.
pub fn parse_query(msg: &[u8]) -> Result<Query, Malformed> {
    if msg.len() < HEADER_LEN {
        return Err(Malformed::Drop);
    }
    let id = be16(msg, 0);
    let flags = be16(msg, 2);
    if flags & FLAG_QR != 0 {
        return Err(Malformed::Drop);
    }
    if (flags >> 11) & 0xf != 0 {
        return Err(Malformed::NotImp { id, flags });
    }
    let formerr = Malformed::FormErr { id, flags };
    let (qd, an, ns, ar) = (be16(msg, 4), be16(msg, 6), be16(msg, 8), be16(msg, 10));
    // A query carries one question and nothing in answer/authority; at most
    // one additional record, the OPT (RFC 6891 §6.1.1 forbids two).
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return Err(formerr);
    }
    let qname_end = scan_question_name(msg, HEADER_LEN).ok_or(formerr)?;
    if msg.len() < qname_end + 4 {
        return Err(formerr);
    }
    let qtype = be16(msg, qname_end);
    let qclass = be16(msg, qname_end + 2);
    let question_end = qname_end + 4;
    let mut query = Query {
        id,
        flags,
        qname_end,
        question_end,
        qtype,
        qclass,
        edns: None,
    };
    if ar == 1 {
        let rr = read_rr_header(msg, question_end).ok_or(formerr)?;
        if rr.rtype == TYPE_OPT {
            // RFC 6891 §6.1.2: the OPT owner is the root.
            if msg[question_end] != 0 {
                return Err(formerr);
            }
            let version = ((rr.ttl >> 16) & 0xff) as u8;
            query.edns = Some(Edns {
                udp_size: rr.class,
                dnssec_ok: (rr.ttl as u16) & EDNS_DO != 0,
            });
            if version != 0 {
                return Err(Malformed::BadVers(query));
            }
        }
        // Any other additional record (TSIG, SIG(0)) is ignored: we sign nothing.
    }
    Ok(query)
}

/// The end of the question section of a message with one uncompressed question.
pub fn parse_question_end(msg: &[u8]) -> Option<usize> {
    let end = scan_question_name(msg, HEADER_LEN)? + 4;
    (end <= msg.len()).then_some(end)
}

/// Scans an uncompressed name starting at `at`; returns the offset after it.
/// A question is the first name in a message, so a pointer there can only
/// point into the header or forward: always malformed.
fn scan_question_name(msg: &[u8], mut at: usize) -> Option<usize> {
    let start = at;
    loop {
        let len = *msg.get(at)? as usize;
        if len & 0xc0 != 0 {
            return None;
        }
        at += 1 + len;
        if at - start > MAX_NAME_LEN || at > msg.len() {
            return None;
        }
        if len == 0 {
            return Some(at);
        }
    }
}

/// Skips a possibly compressed name in a record; returns the offset after it.
/// Pointers end the name in place, so no loop can be followed here.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *msg.get(at)? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + len,
            0xc0 => return if at + 2 <= msg.len() { Some(at + 2) } else { None },
            _ => return None,
        }
    }
    None
}

/// The fixed part of a resource record.
#[derive(Clone, Copy, Debug)]
pub struct RrHeader {
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    /// Offset of the TTL field.
    pub ttl_at: usize,
    /// Offset after the RDATA.
    pub end: usize,
}

/// Reads the record starting at `at`, checking that its RDATA is in bounds.
pub fn read_rr_header(msg: &[u8], at: usize) -> Option<RrHeader> {
    let name_end = skip_name(msg, at)?;
    if msg.len() < name_end + 10 {
        return None;
    }
    let rdlen = be16(msg, name_end + 8) as usize;
    let end = name_end + 10 + rdlen;
    if end > msg.len() {
        return None;
    }
    Some(RrHeader {
        rtype: be16(msg, name_end),
        class: be16(msg, name_end + 2),
        ttl: u32::from_be_bytes([
            msg[name_end + 4],
            msg[name_end + 5],
            msg[name_end + 6],
            msg[name_end + 7],
        ]),
        ttl_at: name_end + 4,
        end,
    })
}

/// Calls `f` for every record after the question of a well-formed message.
/// Returns None if the message does not hold the records its header claims.
pub fn for_each_rr(msg: &[u8], mut f: impl FnMut(&RrHeader)) -> Option<()> {
    if msg.len() < HEADER_LEN || be16(msg, 4) != 1 {
        return None;
    }
    let mut at = skip_name(msg, HEADER_LEN)? + 4;
    let count = be16(msg, 6) as usize + be16(msg, 8) as usize + be16(msg, 10) as usize;
    for _ in 0..count {
        let rr = read_rr_header(msg, at)?;
        f(&rr);
        at = rr.end;
    }
    Some(())
}

/// Header flags of an answer: QR and RA set; opcode, RD and CD copied from
/// the query (RFC 1035 §4.1.1, RFC 4035 §3.2.2).
pub fn answer_flags(query_flags: u16, rcode: u8, ad: bool, aa: bool, tc: bool) -> u16 {
    let mut f = FLAG_QR | FLAG_RA | (query_flags & (FLAG_OPCODE | FLAG_RD | FLAG_CD)) | (rcode as u16 & 0xf);
    if ad {
        f |= FLAG_AD;
    }
    if aa {
        f |= 0x0400;
    }
    if tc {
        f |= FLAG_TC;
    }
    f
}

/// Sets AA on an answer already written (RFC 1035 §4.1.1): for answers we
/// assemble from parts for a question in our own zone.
pub fn set_authoritative(out: &mut [u8]) {
    if out.len() >= HEADER_LEN {
        out[2] |= 0x04;
    }
}

/// Writes a header into `out[..12]`.
pub fn write_header(out: &mut [u8], id: u16, flags: u16, counts: [u16; 4]) {
    out[0..2].copy_from_slice(&id.to_be_bytes());
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    for (i, c) in counts.iter().enumerate() {
        out[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
    }
}

/// Writes our OPT record at `out[at..]` (RFC 6891 §6.1.2); `ext_rcode` is the
/// upper 8 bits of a 12-bit rcode (1 for BADVERS).
pub fn write_opt(out: &mut [u8], at: usize, udp_size: u16, dnssec_ok: bool, ext_rcode: u8) -> usize {
    let o = &mut out[at..at + OPT_LEN];
    o[0] = 0;
    o[1..3].copy_from_slice(&TYPE_OPT.to_be_bytes());
    o[3..5].copy_from_slice(&udp_size.to_be_bytes());
    o[5] = ext_rcode;
    o[6] = 0;
    o[7..9].copy_from_slice(&(if dnssec_ok { EDNS_DO } else { 0 }).to_be_bytes());
    o[9..11].copy_from_slice(&0u16.to_be_bytes());
    at + OPT_LEN
}

/// EDNS option code of an Extended DNS Error (RFC 8914 §2).
pub const OPTION_EDE: u16 = 15;
/// EDE INFO-CODEs nodens writes (RFC 8914 §4, IANA "Extended DNS Error Codes").
pub mod ede {
    /// Other (§4.1): with EXTRA-TEXT. The registry has no "rate limited"
    /// code; "Prohibited" (18) means a client refused by policy and "No
    /// Reachable Authority" (22) an upstream that could not be reached, so a
    /// miss the upstream shaper shed is Other + "rate limited".
    pub const OTHER: u16 = 0;
    /// Stale Answer (§4.4): served from expired data (RFC 8767).
    pub const STALE_ANSWER: u16 = 3;
    /// Cached Error (§4.14): a resolution failure remembered (RFC 9520).
    pub const CACHED_ERROR: u16 = 13;
    /// Stale NXDOMAIN Answer (§4.20).
    pub const STALE_NXDOMAIN: u16 = 19;
}

/// Bytes an EDE option with `text` adds to an OPT record's RDATA.
pub const fn ede_len(text: &str) -> usize {
    4 + 2 + text.len()
}

/// Appends an Extended DNS Error option (RFC 8914 §2) to the OPT record at
/// `out[opt_at..]`, which must be the last record in `out` (as `write_opt`
/// leaves it). Returns false, changing nothing, if `out` has no OPT there.
pub fn append_ede(out: &mut Vec<u8>, opt_at: usize, info_code: u16, text: &str) -> bool {
    let Some(rr) = read_rr_header(out, opt_at) else {
        return false;
    };
    if rr.rtype != TYPE_OPT || rr.end != out.len() {
        return false;
    }
    let rdlen_at = rr.ttl_at + 4;
    let rdlen = be16(out, rdlen_at) as usize + ede_len(text);
    let Ok(rdlen) = u16::try_from(rdlen) else { return false };
    out[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
    out.extend_from_slice(&OPTION_EDE.to_be_bytes());
    out.extend_from_slice(&((2 + text.len()) as u16).to_be_bytes());
    out.extend_from_slice(&info_code.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    true
}

/// The header of an answer without records: the query's ID and flags, our rcode, TC.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    pub id: u16,
    pub flags: u16,
    pub rcode: u8,
    pub tc: bool,
}

/// An answer with no records: the error answers of the guard and the TC=1
/// answer. Echoes the question when there is one, and an OPT record when the
/// query had EDNS. `out` must hold at least 12 + 259 + 11 bytes.
pub fn write_empty_answer(msg: &[u8], query: Option<&Query>, head: Head, our_udp_size: u16, out: &mut [u8]) -> usize {
    let Head { id, flags, rcode, tc } = head;
    let mut at = HEADER_LEN;
    let mut qd = 0;
    if let Some(q) = query {
        let question = q.question(msg);
        out[at..at + question.len()].copy_from_slice(question);
        at += question.len();
        qd = 1;
    }
    let edns = query.and_then(|q| q.edns);
    let (low, ext) = (rcode & 0xf, rcode >> 4);
    if let Some(e) = edns {
        at = write_opt(out, at, our_udp_size, e.dnssec_ok, ext);
    }
    write_header(
        out,
        id,
        answer_flags(flags, low, false, false, tc),
        [qd, 0, 0, edns.is_some() as u16],
    );
    at
}

/// Extended rcode BADVERS (RFC 6891 §9): 16, written as 0 in the header and 1 in the OPT.
pub const RCODE_BADVERS: u8 = 16;

/// Largest buffer any answer written by this module needs for an error.
pub const MAX_EMPTY_ANSWER: usize = HEADER_LEN + MAX_NAME_LEN + 4 + OPT_LEN;

/// Lowercases a wire-format name (ASCII only: RFC 4343) into `out`.
pub fn lower_name_into(name: &[u8], out: &mut [u8]) {
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
}

/// Offset just past the first label of a wire name at `name[0..]`; None at the root.
pub fn parent_offset(name: &[u8]) -> Option<usize> {
    let len = *name.first()? as usize;
    if len == 0 {
        None
    } else {
        Some(1 + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], qtype: u16, opt: Option<(u16, u32)>) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, opt.is_some() as u8];
        for l in name {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some((size, ttl)) = opt {
            m.push(0);
            m.extend_from_slice(&TYPE_OPT.to_be_bytes());
            m.extend_from_slice(&size.to_be_bytes());
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&0u16.to_be_bytes());
        }
        m
    }

    #[test]
    fn parses_plain_and_edns_queries() {
        let m = query(&["www", "Example", "com"], 1, None);
        let q = parse_query(&m).unwrap();
        assert_eq!((q.id, q.qtype, q.qclass, q.edns), (0x1234, 1, 1, None));
        assert_eq!(q.qname(&m), b"\x03www\x07Example\x03com\x00");
        assert!(q.recursion_desired());
        assert_eq!(q.udp_limit(1232), 512);

        let m = query(&["a"], 28, Some((4096, 0x8000)));
        let q = parse_query(&m).unwrap();
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 4096,
                dnssec_ok: true
            })
        );
        assert_eq!(q.udp_limit(1232), 1232);
        let m = query(&["a"], 28, Some((100, 0)));
        assert_eq!(parse_query(&m).unwrap().udp_limit(1232), 512);
    }

    #[test]
    fn rejects_what_is_not_a_query() {
        assert_eq!(parse_query(&[0; 11]), Err(Malformed::Drop));
        let mut m = query(&["a"], 1, None);
        m[2] |= 0x80;
        assert_eq!(parse_query(&m), Err(Malformed::Drop));
        let mut m = query(&["a"], 1, None);
        m[2] = 0x28; // opcode UPDATE (5)
        assert!(matches!(parse_query(&m), Err(Malformed::NotImp { .. })));
        let mut m = query(&["a"], 1, None);
        m[5] = 2;
        assert!(matches!(parse_query(&m), Err(Malformed::FormErr { .. })));
        let mut m = query(&["a"], 1, None);
        m[12] = 0xc0; // pointer in the question
        assert!(matches!(parse_query(&m), Err(Malformed::FormErr { .. })));
        let m = query(&["a"], 1, None);
        assert!(matches!(parse_query(&m[..m.len() - 1]), Err(Malformed::FormErr { .. })));
        let m = query(&["a"], 1, Some((1232, 0x0001_0000)));
        assert!(matches!(parse_query(&m), Err(Malformed::BadVers(_))));
        let long: Vec<String> = (0..5).map(|_| "x".repeat(63)).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        assert!(matches!(
            parse_query(&query(&long, 1, None)),
            Err(Malformed::FormErr { .. })
        ));
    }

    #[test]
    fn ede_is_appended_to_the_last_opt() {
        let m = query(&["a"], 1, Some((1232, 0)));
        let q = parse_query(&m).unwrap();
        let mut out = vec![0u8; MAX_EMPTY_ANSWER];
        let head = Head {
            id: q.id,
            flags: q.flags,
            rcode: RCODE_SERVFAIL,
            tc: false,
        };
        let n = write_empty_answer(&m, Some(&q), head, 1232, &mut out);
        out.truncate(n);
        assert!(append_ede(&mut out, n - OPT_LEN, ede::OTHER, "rate limited"));
        let opt = read_rr_header(&out, q.question_end).unwrap();
        assert_eq!(opt.end, out.len());
        let rdata = &out[opt.ttl_at + 6..];
        assert_eq!(&rdata[..6], &[0, 15, 0, 14, 0, 0]);
        assert_eq!(&rdata[6..], b"rate limited");
        // The question is no OPT record: untouched.
        let before = out.clone();
        assert!(!append_ede(&mut out, HEADER_LEN, ede::OTHER, ""));
        assert_eq!(out, before);
    }

    #[test]
    fn empty_answer_echoes_question_and_opt() {
        let m = query(&["Www", "x"], 1, Some((4096, 0)));
        let q = parse_query(&m).unwrap();
        let mut out = [0u8; MAX_EMPTY_ANSWER];
        let n = write_empty_answer(
            &m,
            Some(&q),
            Head {
                id: q.id,
                flags: q.flags,
                rcode: RCODE_REFUSED,
                tc: false,
            },
            1232,
            &mut out,
        );
        let a = &out[..n];
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0xf, RCODE_REFUSED);
        assert_eq!(a[2] & 0x81, 0x81, "QR and RD");
        assert_eq!(&a[12..q.question_end], q.question(&m));
        let opt = read_rr_header(a, q.question_end).unwrap();
        assert_eq!((opt.rtype, opt.class), (TYPE_OPT, 1232));
    }
}
