//! The guard stage (DESIGN §2.2): decides whether a datagram is a query we
//! resolve, one we answer ourselves with an error, or one we drop.
//!
//! Owns: the source ACL and the table of refusals. Must not: allocate, decode
//! beyond the wire module's zero-copy scan, or look at anything but the bytes
//! and the source address. Every rule answers in constant work, whatever the
//! counts in the header claim.
//!
//! | input                                   | answer                         |
//! |-----------------------------------------|--------------------------------|
//! | shorter than a header, or QR=1          | dropped                        |
//! | source outside `allow`                  | REFUSED                        |
//! | opcode other than QUERY                 | NOTIMP (RFC 1035 §4.1.1)       |
//! | QDCOUNT ≠ 1, bad name, counts past end  | FORMERR                        |
//! | EDNS version ≠ 0                        | BADVERS (RFC 6891 §6.1.3)      |
//! | class other than IN                     | REFUSED                        |
//! | AXFR, IXFR                              | REFUSED (no zone transfers)    |
//! | ANY                                     | HINFO "RFC8482" (RFC 8482 §4.2)|

use std::net::IpAddr;

use ipnet::IpNet;

use crate::wire::{self, Malformed, Query};

/// Source networks allowed to query. A short list scanned linearly: cheaper
/// than any tree for the handful of CIDRs a node has.
#[derive(Clone, Debug)]
pub struct Acl {
    nets: Vec<IpNet>,
}

impl Acl {
    pub fn new(nets: Vec<IpNet>) -> Acl {
        Acl { nets }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// What to do with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A well-formed query for the pipeline.
    Resolve(Query),
    /// Answer with this rcode and no records; the question is echoed if known.
    Refuse {
        id: u16,
        flags: u16,
        rcode: u8,
        query: Option<Query>,
    },
    /// ANY: answered with the RFC 8482 synthesized HINFO.
    Any(Query),
    /// No answer at all.
    Drop,
}

impl Verdict {
    /// The rcode this verdict answers with, for metrics.
    pub fn rcode(&self) -> u8 {
        match self {
            Verdict::Refuse { rcode, .. } => *rcode,
            _ => wire::RCODE_NOERROR,
        }
    }
}

/// Classifies one datagram from `src`.
pub fn check(msg: &[u8], src: IpAddr, acl: &Acl) -> Verdict {
    let parsed = wire::parse_query(msg);
    if !acl.allows(src) {
        return match parsed {
            Err(Malformed::Drop) => Verdict::Drop,
            Ok(q) | Err(Malformed::BadVers(q)) => refuse(&q, wire::RCODE_REFUSED),
            Err(Malformed::FormErr { id, flags } | Malformed::NotImp { id, flags }) => Verdict::Refuse {
                id,
                flags,
                rcode: wire::RCODE_REFUSED,
                query: None,
            },
        };
    }
    let q = match parsed {
        Ok(q) => q,
        Err(Malformed::Drop) => return Verdict::Drop,
        Err(Malformed::FormErr { id, flags }) => {
            return Verdict::Refuse {
                id,
                flags,
                rcode: wire::RCODE_FORMERR,
                query: None,
            }
        }
        Err(Malformed::NotImp { id, flags }) => {
            return Verdict::Refuse {
                id,
                flags,
                rcode: wire::RCODE_NOTIMP,
                query: None,
            }
        }
        Err(Malformed::BadVers(q)) => return refuse(&q, wire::RCODE_BADVERS),
    };
    if q.qclass != wire::CLASS_IN {
        return refuse(&q, wire::RCODE_REFUSED);
    }
    match q.qtype {
        wire::TYPE_AXFR | wire::TYPE_IXFR => refuse(&q, wire::RCODE_REFUSED),
        wire::TYPE_ANY => Verdict::Any(q),
        // A query for the OPT pseudo-type is meaningless (RFC 6891 §6.1.1).
        wire::TYPE_OPT => refuse(&q, wire::RCODE_FORMERR),
        _ => Verdict::Resolve(q),
    }
}

fn refuse(q: &Query, rcode: u8) -> Verdict {
    Verdict::Refuse {
        id: q.id,
        flags: q.flags,
        rcode,
        query: Some(*q),
    }
}

/// TTL of the synthesized ANY answer (RFC 8482 §4.2 leaves it to us).
const ANY_TTL: u32 = 3600;

/// Writes the answer for a `Refuse` or `Any` verdict into `out`.
pub fn write(verdict: &Verdict, msg: &[u8], our_udp_size: u16, out: &mut Vec<u8>) {
    out.clear();
    out.resize(wire::MAX_EMPTY_ANSWER + 32, 0);
    let n = match *verdict {
        Verdict::Refuse {
            id,
            flags,
            rcode,
            query,
        } => wire::write_empty_answer(
            msg,
            query.as_ref(),
            wire::Head {
                id,
                flags,
                rcode,
                tc: false,
            },
            our_udp_size,
            out,
        ),
        Verdict::Any(q) => write_any(msg, &q, our_udp_size, out),
        Verdict::Resolve(_) | Verdict::Drop => 0,
    };
    out.truncate(n);
}

/// RFC 8482 §4.2: answer ANY with one synthesized HINFO record, CPU "RFC8482".
fn write_any(msg: &[u8], q: &Query, our_udp_size: u16, out: &mut [u8]) -> usize {
    let question = q.question(msg);
    let mut at = wire::HEADER_LEN;
    out[at..at + question.len()].copy_from_slice(question);
    at += question.len();
    let rr: [u8; 21] = {
        let mut rr = [0u8; 21];
        rr[0..2].copy_from_slice(&0xc00cu16.to_be_bytes()); // the question name
        rr[2..4].copy_from_slice(&wire::TYPE_HINFO.to_be_bytes());
        rr[4..6].copy_from_slice(&wire::CLASS_IN.to_be_bytes());
        rr[6..10].copy_from_slice(&ANY_TTL.to_be_bytes());
        rr[10..12].copy_from_slice(&9u16.to_be_bytes());
        rr[12] = 7;
        rr[13..20].copy_from_slice(b"RFC8482");
        rr[20] = 0; // empty OS string
        rr
    };
    out[at..at + rr.len()].copy_from_slice(&rr);
    at += rr.len();
    if let Some(e) = q.edns {
        at = wire::write_opt(out, at, our_udp_size, e.dnssec_ok, 0);
    }
    let flags = wire::answer_flags(q.flags, wire::RCODE_NOERROR, false, false, false);
    wire::write_header(out, q.id, flags, [1, 1, 0, q.edns.is_some() as u16]);
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(qtype: u16, qclass: u16) -> Vec<u8> {
        let mut m = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0];
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&qclass.to_be_bytes());
        m
    }

    #[test]
    fn table() {
        let acl = Acl::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let rcode = |m: &[u8], src: IpAddr| check(m, src, &acl);
        assert!(matches!(rcode(&q(1, 1), lo), Verdict::Resolve(_)));
        assert!(matches!(rcode(&q(255, 1), lo), Verdict::Any(_)));
        assert_eq!(rcode(&q(252, 1), lo).rcode(), wire::RCODE_REFUSED);
        assert_eq!(rcode(&q(251, 1), lo).rcode(), wire::RCODE_REFUSED);
        assert_eq!(rcode(&q(1, 3), lo).rcode(), wire::RCODE_REFUSED);
        assert_eq!(
            rcode(&q(1, 1), "10.0.0.1".parse().unwrap()).rcode(),
            wire::RCODE_REFUSED
        );
        assert!(matches!(
            rcode(&q(1, 1), "::ffff:127.0.0.9".parse().unwrap()),
            Verdict::Resolve(_)
        ));
        assert_eq!(rcode(&[0; 5], lo), Verdict::Drop);
    }

    #[test]
    fn any_answer_is_well_formed() {
        let acl = Acl::new(vec!["0.0.0.0/0".parse().unwrap()]);
        let m = q(255, 1);
        let v = check(&m, "1.2.3.4".parse().unwrap(), &acl);
        let mut out = Vec::new();
        write(&v, &m, 1232, &mut out);
        let resp = hickory_proto::op::Message::from_vec(&out).unwrap();
        assert_eq!(resp.answers.len(), 1);
        assert_eq!(resp.answers[0].record_type(), hickory_proto::rr::RecordType::HINFO);
    }
}
