//! An answer for another name, written behind a CNAME without decoding it:
//! the search-path shortcut and ExternalName services answer `Q CNAME T`
//! followed by the cached records of `T`.
//!
//! The stored answer for `T` is `[header][T][type class][records]`, its names
//! compressed against each other. The new one is `[header][Q][type class]`
//! `[Q→ CNAME T][records]`: `T` moves to the CNAME's RDATA and the records
//! behind it, so every compression pointer into the stored message moves by
//! one of two fixed distances. The records are copied with their names
//! rewritten label by label; a pointer can only be found by knowing where a
//! type keeps names in its RDATA, so records of a type not listed in
//! `rdata_names` make `splice_behind_cname` decline (the caller builds the
//! answer the slow way). RFC 3597 §4 forbids compression in every type
//! newer than RFC 1035's, so the list is closed.
//!
//! Owns: nothing but bytes. Must not: allocate beyond `out`, panic on any
//! input, or write a pointer it did not check.

use super::{
    answer_flags, be16, scan_question_name, write_header, write_opt, Query, HEADER_LEN, MAX_NAME_LEN, OPT_LEN,
};

/// Where a type's RDATA holds domain names, as a sequence of parts.
#[derive(Clone, Copy)]
enum Part {
    /// A (possibly compressed) domain name.
    Name,
    /// Fixed bytes.
    Fixed(usize),
}

/// The layout of RDATA for the types this splice copies; None: not handled.
fn rdata_layout(rtype: u16) -> Option<&'static [Part]> {
    use Part::{Fixed, Name};
    Some(match rtype {
        // A, AAAA, TXT, SVCB, HTTPS, CAA: no names that may be compressed.
        1 | 28 | 16 | 64 | 65 | 257 => &[],
        // NS, CNAME, PTR (RFC 1035 §3.3).
        2 | 5 | 12 => &[Name],
        // SOA: MNAME, RNAME, five 32-bit numbers.
        6 => &[Name, Name, Fixed(20)],
        // MX: preference, exchange.
        15 => &[Fixed(2), Name],
        // SRV: priority, weight, port, target (RFC 2782 forbids compression;
        // decoders take it anyway, RFC 3597 §4).
        33 => &[Fixed(6), Name],
        _ => return None,
    })
}

/// The largest offset a compression pointer can hold.
const MAX_POINTER: usize = 0x3fff;

/// Writes the answer to the client's `query` (in `msg`): `qname CNAME
/// target` with TTL `cname_ttl`, then the records of `stored` (a complete
/// answer message whose question is the target) with each TTL replaced by
/// `ttl(original)`, and an OPT record when the client sent one. The header
/// carries `rcode`. Returns None, with `out` unspecified, when the answer
/// would exceed `limit`, `stored` is malformed or holds a record type not
/// handled here: the caller then assembles the answer another way.
#[allow(clippy::too_many_arguments)]
pub fn splice_behind_cname(
    msg: &[u8],
    query: &Query,
    stored: &[u8],
    rcode: u8,
    cname_ttl: u32,
    ttl: impl Fn(u32) -> u32,
    limit: usize,
    our_udp_size: u16,
    out: &mut Vec<u8>,
) -> Option<()> {
    if stored.len() < HEADER_LEN || be16(stored, 4) != 1 {
        return None;
    }
    let target_end = scan_question_name(stored, HEADER_LEN)?;
    let target = &stored[HEADER_LEN..target_end];
    let records_at = target_end + 4;
    if records_at > stored.len() {
        return None;
    }
    let (answers, authorities) = (be16(stored, 6), be16(stored, 8));
    let question = query.question(msg);

    out.clear();
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(question);
    // Q CNAME T: the owner is the question name (offset 12), T follows in full.
    out.extend_from_slice(&[0xc0, HEADER_LEN as u8, 0, 5, 0, 1]);
    out.extend_from_slice(&cname_ttl.to_be_bytes());
    out.extend_from_slice(&(target.len() as u16).to_be_bytes());
    let target_at = out.len();
    out.extend_from_slice(target);
    // Pointers into the stored T move to the CNAME's RDATA; pointers past the
    // stored question move to where the records are copied.
    let records_out = out.len();
    let relocate = |p: usize| -> Option<usize> {
        let moved = if (HEADER_LEN..target_end).contains(&p) {
            p - HEADER_LEN + target_at
        } else if p >= records_at {
            p - records_at + records_out
        } else {
            return None;
        };
        (moved <= MAX_POINTER).then_some(moved)
    };

    let mut at = records_at;
    for _ in 0..usize::from(answers) + usize::from(authorities) {
        at = copy_name(stored, at, out, &relocate)?;
        let fixed = stored.get(at..at + 10)?;
        let (rtype, rdlen) = (be16(fixed, 0), usize::from(be16(fixed, 8)));
        let original = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        out.extend_from_slice(&fixed[..4]);
        out.extend_from_slice(&ttl(original).to_be_bytes());
        let rdlen_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let rdata_start = at + 10;
        let rdata_end = rdata_start.checked_add(rdlen).filter(|&e| e <= stored.len())?;
        let mut r = rdata_start;
        for part in rdata_layout(rtype)? {
            r = match *part {
                Part::Name => copy_name(&stored[..rdata_end], r, out, &relocate)?,
                Part::Fixed(n) => {
                    out.extend_from_slice(stored.get(r..r + n).filter(|_| r + n <= rdata_end)?);
                    r + n
                }
            };
        }
        // What follows the names (TXT strings, an address, SVCB parameters) is copied as is.
        out.extend_from_slice(&stored[r..rdata_end]);
        let written = out.len() - rdlen_at - 2;
        out[rdlen_at..rdlen_at + 2].copy_from_slice(&u16::try_from(written).ok()?.to_be_bytes());
        at = rdata_end;
        if out.len() > limit {
            return None;
        }
    }
    let edns = query.edns;
    let opt = if edns.is_some() { OPT_LEN } else { 0 };
    if out.len() + opt > limit {
        return None;
    }
    let flags = answer_flags(query.flags, rcode, false, false, false);
    let counts = [1, answers.checked_add(1)?, authorities, u16::from(edns.is_some())];
    write_header(out, query.id, flags, counts);
    if let Some(e) = edns {
        let at = out.len();
        out.resize(at + OPT_LEN, 0);
        write_opt(out, at, our_udp_size, e.dnssec_ok, 0);
    }
    Some(())
}

/// Copies the name at `at` in `msg` to `out`, labels as they are and a
/// final pointer relocated; returns the offset after the name in `msg`.
fn copy_name(
    msg: &[u8],
    mut at: usize,
    out: &mut Vec<u8>,
    relocate: &impl Fn(usize) -> Option<usize>,
) -> Option<usize> {
    let mut copied = 0;
    loop {
        let len = usize::from(*msg.get(at)?);
        match len & 0xc0 {
            0x00 => {
                let label = msg.get(at..at + 1 + len)?;
                copied += label.len();
                if copied > MAX_NAME_LEN {
                    return None;
                }
                out.extend_from_slice(label);
                at += 1 + len;
                if len == 0 {
                    return Some(at);
                }
            }
            0xc0 => {
                let pointer = usize::from(be16(msg.get(at..at + 2)?, 0) & 0x3fff);
                // Only backwards, as every encoder writes them.
                if pointer >= at {
                    return None;
                }
                let moved = relocate(pointer)?;
                out.extend_from_slice(&(0xc000 | moved as u16).to_be_bytes());
                return Some(at + 2);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_query;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
    use hickory_proto::rr::rdata::{CNAME, MX, SOA, SRV, TXT};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn client_query(qname: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(HQuery::query(name(qname), qtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// A stored answer for `target`, encoded (and compressed) by hickory, as the cache keeps them.
    fn stored(
        target: &str,
        qtype: RecordType,
        rcode: ResponseCode,
        answers: Vec<Record>,
        auth: Vec<Record>,
    ) -> Vec<u8> {
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(HQuery::query(name(target), qtype));
        m.add_answers(answers);
        m.add_authorities(auth);
        m.to_vec().unwrap()
    }

    fn rec(owner: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(name(owner), ttl, data)
    }

    fn soa(zone: &str) -> Record {
        let data = SOA::new(
            name(&format!("ns1.{zone}")),
            name(&format!("hostmaster.{zone}")),
            1,
            2,
            3,
            4,
            60,
        );
        rec(zone, 300, RData::SOA(data))
    }

    /// The answer the spliced bytes must equal, built by decoding and re-encoding.
    fn expected(client: &[u8], stored: &[u8], cname_ttl: u32, ttl: impl Fn(u32) -> u32) -> Message {
        let q = Message::from_vec(client).unwrap();
        let s = Message::from_vec(stored).unwrap();
        let question = q.queries[0].clone();
        let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.metadata.response_code = s.metadata.response_code;
        m.add_query(question.clone());
        m.add_answer(rec(
            &question.name().to_string(),
            cname_ttl,
            RData::CNAME(CNAME(s.queries[0].name().clone())),
        ));
        let fix = |mut r: Record| {
            r.ttl = ttl(r.ttl);
            r
        };
        m.add_answers(s.answers.into_iter().map(fix));
        m.add_authorities(s.authorities.into_iter().map(fix));
        if q.edns.is_some() {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        m
    }

    fn splice(client: &[u8], stored: &[u8], limit: usize) -> Option<Vec<u8>> {
        let q = parse_query(client).unwrap();
        let rcode = stored.get(3).map_or(0, |b| b & 0xf);
        let mut out = Vec::new();
        splice_behind_cname(
            client,
            &q,
            stored,
            rcode,
            5,
            |t| t.saturating_sub(7),
            limit,
            1232,
            &mut out,
        )?;
        Some(out)
    }

    fn check(client: &[u8], stored: &[u8]) {
        let out = splice(client, stored, 65535).expect("spliced");
        let got = Message::from_vec(&out).expect("the splice decodes");
        assert_eq!(got, expected(client, stored, 5, |t| t.saturating_sub(7)));
    }

    #[test]
    fn addresses_behind_a_cname() {
        let target = "www.example.com.";
        let s = stored(
            target,
            RecordType::A,
            ResponseCode::NoError,
            vec![
                rec(target, 300, RData::A("192.0.2.1".parse().unwrap())),
                rec(target, 200, RData::A("192.0.2.2".parse().unwrap())),
            ],
            vec![],
        );
        check(
            &client_query("www.example.com.default.svc.cluster.local.", RecordType::A, true),
            &s,
        );
        check(
            &client_query("WWW.Example.COM.svc.cluster.local.", RecordType::A, false),
            &s,
        );
    }

    #[test]
    fn chains_negative_answers_and_name_bearing_types() {
        let t = "alias.example.com.";
        let chain = stored(
            t,
            RecordType::AAAA,
            ResponseCode::NoError,
            vec![
                rec(t, 120, RData::CNAME(CNAME(name("www.example.com.")))),
                rec("www.example.com.", 300, RData::AAAA("2001:db8::1".parse().unwrap())),
            ],
            vec![],
        );
        check(
            &client_query("alias.example.com.ns.svc.cluster.local.", RecordType::AAAA, true),
            &chain,
        );
        let nx = stored(
            "nope.example.com.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            vec![soa("example.com.")],
        );
        check(
            &client_query("nope.example.com.default.svc.cluster.local.", RecordType::A, true),
            &nx,
        );
        let mx = stored(
            "example.com.",
            RecordType::MX,
            ResponseCode::NoError,
            vec![rec(
                "example.com.",
                300,
                RData::MX(MX::new(10, name("mail.example.com."))),
            )],
            vec![],
        );
        check(
            &client_query("example.com.svc.cluster.local.", RecordType::MX, false),
            &mx,
        );
        let srv = stored(
            "_sip._udp.example.com.",
            RecordType::SRV,
            ResponseCode::NoError,
            vec![rec(
                "_sip._udp.example.com.",
                300,
                RData::SRV(SRV::new(1, 2, 5060, name("sip.example.com."))),
            )],
            vec![],
        );
        check(
            &client_query("_sip._udp.example.com.cluster.local.", RecordType::SRV, true),
            &srv,
        );
        let txt = stored(
            "txt.example.com.",
            RecordType::TXT,
            ResponseCode::NoError,
            vec![rec("txt.example.com.", 300, RData::TXT(TXT::new(vec!["hello".into()])))],
            vec![],
        );
        check(
            &client_query("txt.example.com.default.svc.cluster.local.", RecordType::TXT, true),
            &txt,
        );
    }

    #[test]
    fn declines_what_it_cannot_copy_exactly() {
        let t = "www.example.com.";
        let client = client_query("www.example.com.default.svc.cluster.local.", RecordType::A, true);
        let big: Vec<Record> = (1..=100u8)
            .map(|i| rec(t, 300, RData::A(std::net::Ipv4Addr::new(10, 0, 0, i).into())))
            .collect();
        let s = stored(t, RecordType::A, ResponseCode::NoError, big, vec![]);
        assert!(
            splice(&client, &s, 1232).is_none(),
            "over the limit: the caller truncates"
        );
        assert!(splice(&client, &s, 65535).is_some());
        // A type whose RDATA layout is not listed (HINFO, RFC 1035: no names, but unlisted).
        let mut hinfo = stored(t, RecordType::A, ResponseCode::NoError, vec![], vec![]);
        hinfo[7] = 1; // one answer
        let rr_at = hinfo.len();
        hinfo.extend_from_slice(&[0xc0, 12, 0, 13, 0, 1, 0, 0, 0, 60, 0, 2, 0, 0]);
        assert_eq!(rr_at, 12 + 17 + 4);
        assert!(splice(&client, &hinfo, 65535).is_none());
    }

    #[test]
    fn never_panics_on_damaged_stored_answers() {
        let t = "www.example.com.";
        let good = stored(
            t,
            RecordType::MX,
            ResponseCode::NoError,
            vec![rec(t, 300, RData::MX(MX::new(10, name("mail.example.com."))))],
            vec![soa("example.com.")],
        );
        let client = client_query("www.example.com.default.svc.cluster.local.", RecordType::MX, true);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % bytes.len();
                bytes[i] = (seed >> 32) as u8;
            }
            let cut = (seed >> 40) as usize % (bytes.len() + 1);
            // Accepted or declined, never a panic or an out-of-bounds read.
            let _ = splice(&client, &bytes[..cut], 65535);
        }
    }
}
