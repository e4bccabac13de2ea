//! The guard stage seen from a client (src/stage/guard.rs, its table of
//! documented answers): hostile or unsupported datagrams, built by hand as
//! bytes, get exactly the documented answer or none, and nodens keeps
//! serving. Then the TCP front's own limits: framing, idle time, connection
//! count, and the source ACL.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::server::{config, Nodens};
use crate::support::upstream::{build_query, tcp_exchange, udp_exchange, FakeUpstream};

/// How long "no answer" is waited for.
const SILENCE: Duration = Duration::from_millis(300);
/// Generous bound for an answer that is due (never a performance assertion).
const ANSWER: Duration = Duration::from_secs(3);

const RD: u16 = 0x0100;
const TYPE_A: u16 = 1;
const TYPE_TXT: u16 = 16;
const TYPE_OPT: u16 = 41;
const TYPE_AXFR: u16 = 252;
const TYPE_IXFR: u16 = 251;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const CLASS_CH: u16 = 3;

const NOERROR: u8 = 0;
const FORMERR: u8 = 1;
const NXDOMAIN: u8 = 3;
const NOTIMP: u8 = 4;
const REFUSED: u8 = 5;

// ---------------------------------------------------------------------------
// Building raw messages
// ---------------------------------------------------------------------------

/// A 12-byte header; the ID is overwritten per case by the table runner.
fn header(flags: u16, [qd, an, ns, ar]: [u16; 4]) -> Vec<u8> {
    let mut h = vec![0xab, 0xcd];
    for v in [flags, qd, an, ns, ar] {
        h.extend_from_slice(&v.to_be_bytes());
    }
    h
}

/// Flags of a query with this opcode (RD set, as stub resolvers send).
fn opcode(op: u16) -> u16 {
    (op << 11) | RD
}

/// A name in uncompressed wire format ("" is the root).
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A question section entry.
fn question(name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
    let mut q = wire_name(name);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&qclass.to_be_bytes());
    q
}

/// An OPT record (RFC 6891 §6.1.2): root owner, payload size in CLASS,
/// TTL = extended rcode, version, flags; no options.
fn opt(udp_size: u16, version: u8) -> Vec<u8> {
    let mut o = vec![0];
    o.extend_from_slice(&TYPE_OPT.to_be_bytes());
    o.extend_from_slice(&udp_size.to_be_bytes());
    o.extend_from_slice(&[0, version, 0, 0]);
    o.extend_from_slice(&0u16.to_be_bytes());
    o
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A plain one-question query.
fn query(name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
    cat(&[&header(RD, [1, 0, 0, 0]), &question(name, qtype, qclass)])
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Expect {
    /// No answer at all within `SILENCE`.
    Dropped,
    /// An answer with no records and this rcode; `echo` is the question it
    /// must repeat byte for byte (QDCOUNT 1), or None for QDCOUNT 0.
    Empty { rcode: u8, echo: Option<Vec<u8>> },
    /// BADVERS (RFC 6891 §6.1.3): header rcode 0, question echoed, an OPT
    /// whose extended-rcode byte is 1 and version 0.
    BadVers { echo: Vec<u8> },
    /// RFC 8482 §4.2: NOERROR, question echoed, exactly one HINFO "RFC8482".
    Any { echo: Vec<u8>, edns: bool },
    /// A resolved answer with this rcode (records allowed), question echoed.
    Resolved { rcode: u8, echo: Vec<u8> },
}

struct Case {
    what: &'static str,
    msg: Vec<u8>,
    expect: Expect,
    /// Also run over TCP (a representative subset).
    tcp: bool,
}

fn case(what: &'static str, msg: Vec<u8>, expect: Expect) -> Case {
    Case {
        what,
        msg,
        expect,
        tcp: false,
    }
}

fn tcp_too(mut c: Case) -> Case {
    c.tcp = true;
    c
}

fn formerr() -> Expect {
    Expect::Empty {
        rcode: FORMERR,
        echo: None,
    }
}

fn cases() -> Vec<Case> {
    let www = question("www.example.com", TYPE_A, CLASS_IN);
    let long63 = "x".repeat(63);
    // 3 × (1 + 63) + (1 + 61) + 1 = 255 octets: the longest legal name.
    // One more octet in the last label makes 256: too long (RFC 1035 §2.3.4).
    let too_long = format!("{long63}.{long63}.{long63}.{}", "y".repeat(62));
    // A legal 255-octet name under example.com: 3 × 64 + 50 + 13 = 255.
    let longest = format!("{long63}.{long63}.{long63}.{}.example.com", "z".repeat(49));
    assert_eq!(wire_name(&longest).len(), 255);
    assert_eq!(wire_name(&too_long).len(), 256);

    let answer_rr = {
        // www.example.com A 192.0.2.1, owner compressed to the question.
        let mut rr = vec![0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4];
        rr.extend_from_slice(&[192, 0, 2, 1]);
        rr
    };
    let version_bind = question("version.bind", TYPE_TXT, CLASS_CH);
    let any = question("Example.COM", TYPE_ANY, CLASS_IN);
    let axfr = question("example.com", TYPE_AXFR, CLASS_IN);
    let ixfr = question("example.com", TYPE_IXFR, CLASS_IN);
    let qtype_opt = question("example.com", TYPE_OPT, CLASS_IN);

    vec![
        case("empty datagram", Vec::new(), Expect::Dropped),
        case(
            "short header (5 bytes)",
            vec![0xab, 0xcd, 0x01, 0x00, 0x00],
            Expect::Dropped,
        ),
        case(
            "11 bytes, one short of a header",
            header(RD, [1, 0, 0, 0])[..11].to_vec(),
            Expect::Dropped,
        ),
        tcp_too(case(
            "a response (QR=1)",
            cat(&[&header(0x8000 | RD, [1, 0, 0, 0]), &www]),
            Expect::Dropped,
        )),
        case(
            "a response with opcode NOTIFY (QR=1 wins)",
            cat(&[&header(0x8000 | opcode(4), [1, 0, 0, 0]), &www]),
            Expect::Dropped,
        ),
        tcp_too(case(
            "question name is a pointer to itself (0xC0 0x0C)",
            cat(&[&header(RD, [1, 0, 0, 0]), &[0xc0, 0x0c], &[0, 1, 0, 1]]),
            formerr(),
        )),
        case(
            "pointer loop: label then pointer back to it",
            cat(&[&header(RD, [1, 0, 0, 0]), &[1, b'a', 0xc0, 0x0c], &[0, 1, 0, 1]]),
            formerr(),
        ),
        case(
            "pointer forward past the end",
            cat(&[&header(RD, [1, 0, 0, 0]), &[0xc0, 0xff], &[0, 1, 0, 1]]),
            formerr(),
        ),
        case(
            "extended label type 0x40",
            cat(&[&header(RD, [1, 0, 0, 0]), &[0x41, b'a', 0], &[0, 1, 0, 1]]),
            formerr(),
        ),
        case(
            "label running past the end",
            cat(&[&header(RD, [1, 0, 0, 0]), &[20, b'a', b'b', b'c']]),
            formerr(),
        ),
        case(
            "name without its root label",
            cat(&[&header(RD, [1, 0, 0, 0]), &[3, b'w', b'w', b'w']]),
            formerr(),
        ),
        case(
            "question cut before QCLASS",
            cat(&[&header(RD, [1, 0, 0, 0]), &wire_name("www.example.com"), &[0, 1]]),
            formerr(),
        ),
        case("name of 256 octets", query(&too_long, TYPE_A, CLASS_IN), formerr()),
        case(
            "name of 255 octets is legal (NXDOMAIN from upstream)",
            query(&longest, TYPE_A, CLASS_IN),
            Expect::Resolved {
                rcode: NXDOMAIN,
                echo: question(&longest, TYPE_A, CLASS_IN),
            },
        ),
        case("QDCOUNT 0, header only", header(RD, [0, 0, 0, 0]), formerr()),
        case(
            "QDCOUNT 0 with a question",
            cat(&[&header(RD, [0, 0, 0, 0]), &www]),
            formerr(),
        ),
        tcp_too(case(
            "QDCOUNT 2",
            cat(&[
                &header(RD, [2, 0, 0, 0]),
                &www,
                &question("example.com", TYPE_A, CLASS_IN),
            ]),
            formerr(),
        )),
        case(
            "ANCOUNT 1 in a query",
            cat(&[&header(RD, [1, 1, 0, 0]), &www, &answer_rr]),
            formerr(),
        ),
        case(
            "NSCOUNT 1 in a query",
            cat(&[&header(RD, [1, 0, 1, 0]), &www, &answer_rr]),
            formerr(),
        ),
        case(
            "two OPT records (ARCOUNT 2)",
            cat(&[&header(RD, [1, 0, 0, 2]), &www, &opt(1232, 0), &opt(1232, 0)]),
            formerr(),
        ),
        case(
            "OPT record cut short (ARCOUNT 1)",
            cat(&[&header(RD, [1, 0, 0, 1]), &www, &opt(1232, 0)[..7]]),
            formerr(),
        ),
        case(
            "OPT owner is not the root",
            cat(&[&header(RD, [1, 0, 0, 1]), &www, &[1, b'a'], &opt(1232, 0)]),
            formerr(),
        ),
        case(
            "12-byte header claiming QDCOUNT 65535",
            header(RD, [0xffff, 0, 0, 0]),
            formerr(),
        ),
        case(
            "header claiming every count 65535",
            cat(&[&header(RD, [0xffff; 4]), &www]),
            formerr(),
        ),
        tcp_too(case(
            "opcode NOTIFY (4)",
            cat(&[&header(opcode(4), [1, 0, 0, 0]), &question("example.com", 6, CLASS_IN)]),
            Expect::Empty {
                rcode: NOTIMP,
                echo: None,
            },
        )),
        case(
            "opcode UPDATE (5)",
            cat(&[&header(opcode(5), [1, 0, 0, 0]), &question("example.com", 6, CLASS_IN)]),
            Expect::Empty {
                rcode: NOTIMP,
                echo: None,
            },
        ),
        case(
            "opcode STATUS (2)",
            cat(&[&header(opcode(2), [0, 0, 0, 0])]),
            Expect::Empty {
                rcode: NOTIMP,
                echo: None,
            },
        ),
        case(
            "class CH version.bind TXT",
            cat(&[&header(RD, [1, 0, 0, 0]), &version_bind]),
            Expect::Empty {
                rcode: REFUSED,
                echo: Some(version_bind.clone()),
            },
        ),
        tcp_too(case(
            "ANY",
            cat(&[&header(RD, [1, 0, 0, 0]), &any]),
            Expect::Any {
                echo: any.clone(),
                edns: false,
            },
        )),
        case(
            "ANY with EDNS",
            cat(&[&header(RD, [1, 0, 0, 1]), &any, &opt(1232, 0)]),
            Expect::Any {
                echo: any.clone(),
                edns: true,
            },
        ),
        case(
            "AXFR",
            cat(&[&header(0, [1, 0, 0, 0]), &axfr]),
            Expect::Empty {
                rcode: REFUSED,
                echo: Some(axfr.clone()),
            },
        ),
        case(
            "IXFR",
            cat(&[&header(0, [1, 0, 0, 0]), &ixfr]),
            Expect::Empty {
                rcode: REFUSED,
                echo: Some(ixfr.clone()),
            },
        ),
        case(
            "QTYPE OPT (41)",
            cat(&[&header(RD, [1, 0, 0, 0]), &qtype_opt]),
            Expect::Empty {
                rcode: FORMERR,
                echo: Some(qtype_opt.clone()),
            },
        ),
        tcp_too(case(
            "EDNS version 1",
            cat(&[&header(RD, [1, 0, 0, 1]), &www, &opt(1232, 1)]),
            Expect::BadVers { echo: www.clone() },
        )),
    ]
}

// ---------------------------------------------------------------------------
// Checking answers
// ---------------------------------------------------------------------------

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Checks `answer` (None: nothing arrived) against `expect` for the query `sent`.
fn verify(expect: &Expect, sent: &[u8], answer: Option<&[u8]>) -> Result<(), String> {
    let a = match (expect, answer) {
        (Expect::Dropped, None) => return Ok(()),
        (Expect::Dropped, Some(a)) => return Err(format!("expected no answer, got {a:02x?}")),
        (_, None) => return Err("no answer".into()),
        (_, Some(a)) => a,
    };
    if a.len() < 12 {
        return Err(format!("answer shorter than a header: {a:02x?}"));
    }
    if a[0..2] != sent[0..2] {
        return Err(format!(
            "ID not copied: sent {:02x?}, got {:02x?}",
            &sent[0..2],
            &a[0..2]
        ));
    }
    if a[2] & 0x80 == 0 {
        return Err("QR not set in the answer".into());
    }
    let rcode = a[3] & 0x0f;
    let [qd, an, ns, ar] = [be16(a, 4), be16(a, 6), be16(a, 8), be16(a, 10)];
    let echoed = |q: &[u8]| -> Result<(), String> {
        if qd != 1 {
            return Err(format!("QDCOUNT {qd}, expected the question echoed"));
        }
        match a.get(12..12 + q.len()) {
            Some(got) if got == q => Ok(()),
            got => Err(format!("question not echoed: sent {q:02x?}, got {got:02x?}")),
        }
    };
    match expect {
        Expect::Dropped => unreachable!(),
        Expect::Empty { rcode: want, echo } => {
            if rcode != *want {
                return Err(format!("rcode {rcode}, expected {want}"));
            }
            match echo {
                Some(q) => echoed(q)?,
                None if qd != 0 => return Err(format!("QDCOUNT {qd}, expected 0")),
                None => {}
            }
            if an != 0 || ns != 0 {
                return Err(format!("records in an error answer: ANCOUNT {an} NSCOUNT {ns}"));
            }
        }
        Expect::BadVers { echo } => {
            if rcode != 0 {
                return Err(format!("header rcode {rcode}, expected 0 (BADVERS lives in the OPT)"));
            }
            echoed(echo)?;
            if an != 0 || ns != 0 || ar != 1 {
                return Err(format!("counts AN {an} NS {ns} AR {ar}, expected 0 0 1"));
            }
            let o = 12 + echo.len();
            let opt = a
                .get(o..o + 11)
                .ok_or_else(|| format!("no OPT record after the question: {a:02x?}"))?;
            if opt[0] != 0 || be16(opt, 1) != TYPE_OPT {
                return Err(format!("additional record is not an OPT: {opt:02x?}"));
            }
            // TTL field: extended rcode, version, flags (RFC 6891 §6.1.3).
            if opt[5] != 1 {
                return Err(format!("OPT extended-rcode byte {}, expected 1 (BADVERS = 16)", opt[5]));
            }
            if opt[6] != 0 {
                return Err(format!("OPT version {}, expected 0", opt[6]));
            }
        }
        Expect::Any { echo, edns } => {
            if rcode != NOERROR {
                return Err(format!("rcode {rcode}, expected NOERROR"));
            }
            echoed(echo)?;
            if an != 1 || ar != *edns as u16 {
                return Err(format!("ANCOUNT {an} ARCOUNT {ar}, expected 1 and {}", *edns as u16));
            }
            let m = Message::from_vec(a).map_err(|e| format!("ANY answer does not parse: {e}"))?;
            let [rr] = m.answers.as_slice() else {
                return Err(format!("expected exactly one answer, got {:?}", m.answers));
            };
            match &rr.data {
                RData::HINFO(h) if &*h.cpu == b"RFC8482" => {}
                other => return Err(format!("expected HINFO \"RFC8482\", got {other:?}")),
            }
            if rr.name != *m.queries[0].name() {
                return Err(format!(
                    "HINFO owner {} is not the question {}",
                    rr.name,
                    m.queries[0].name()
                ));
            }
            if *edns != m.edns.is_some() {
                return Err(format!("EDNS in answer: {}, expected {edns}", m.edns.is_some()));
            }
        }
        Expect::Resolved { rcode: want, echo } => {
            if rcode != *want {
                return Err(format!("rcode {rcode}, expected {want}"));
            }
            echoed(echo)?;
        }
    }
    Ok(())
}

fn wait_for(expect: &Expect) -> Duration {
    match expect {
        Expect::Dropped => SILENCE,
        _ => ANSWER,
    }
}

/// Sends `msg` from a fresh socket (so a late answer cannot leak into another
/// case) and returns the first datagram back within `wait`.
async fn udp_raw(server: SocketAddr, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    socket.send_to(msg, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        Ok(Err(e)) => panic!("udp receive: {e}"),
        Err(_) => None,
    }
}

/// Writes one length-prefixed frame.
async fn tcp_send(stream: &mut TcpStream, msg: &[u8]) {
    let mut frame = (msg.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(msg);
    stream.write_all(&frame).await.unwrap();
}

/// Reads one length-prefixed frame, or None if none arrives within `wait`.
async fn tcp_recv(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    tokio::time::timeout(wait, async {
        let len = stream.read_u16().await.ok()?;
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await.ok()?;
        Some(buf)
    })
    .await
    .ok()?
}

/// Waits up to `wait` for the server to close `stream`: EOF, or a reset when
/// it closed with bytes of ours still unread. Err if it stays open or sends data.
async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> Result<(), String> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(n)) => Err(format!("server sent {n} bytes instead of closing: {:02x?}", &buf[..n])),
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            Ok(())
        }
        Ok(Err(e)) => Err(format!("read failed: {e}")),
        Err(_) => Err(format!("connection still open after {wait:?}")),
    }
}

async fn assert_serves_udp(dns: SocketAddr, what: &str) {
    let q = build_query("www.example.com.", RecordType::A, None);
    let r = udp_exchange(dns, &q, ANSWER)
        .await
        .unwrap_or_else(|| panic!("{what}: no UDP answer"));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{what}");
    assert_eq!(r.answers.len(), 1, "{what}");
}

async fn assert_serves_tcp(dns: SocketAddr, what: &str) {
    let q = build_query("www.example.com.", RecordType::A, None);
    let r = tcp_exchange(dns, &q, ANSWER)
        .await
        .unwrap_or_else(|| panic!("{what}: no TCP answer"));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{what}");
    assert_eq!(r.answers.len(), 1, "{what}");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_hostile_datagrams_get_the_documented_answers() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    let mut failures = Vec::new();
    for (i, mut c) in cases().into_iter().enumerate() {
        let id = 0xa500u16 + i as u16;
        if c.msg.len() >= 2 {
            c.msg[0..2].copy_from_slice(&id.to_be_bytes());
        }
        let answer = udp_raw(nodens.dns, &c.msg, wait_for(&c.expect)).await;
        if let Err(e) = verify(&c.expect, &c.msg, answer.as_deref()) {
            failures.push(format!("{}: {e}", c.what));
        }
    }
    assert!(failures.is_empty(), "UDP cases failed:\n  {}", failures.join("\n  "));

    // Only the one legal query (the 255-octet name) may have gone upstream.
    assert!(upstream.queries() <= 1, "upstream saw {} queries", upstream.queries());
    assert_serves_udp(nodens.dns, "after the hostile table").await;
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_hostile_messages_on_one_connection() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    // Every representative case on the same connection: a malformed message
    // gets its answer (or none) and the connection keeps serving.
    let mut stream = TcpStream::connect(nodens.dns).await.unwrap();
    let mut failures = Vec::new();
    let tcp_cases: Vec<Case> = cases().into_iter().filter(|c| c.tcp).collect();
    assert!(tcp_cases.len() >= 5);
    for (i, mut c) in tcp_cases.into_iter().enumerate() {
        let id = 0x7c00u16 + i as u16;
        c.msg[0..2].copy_from_slice(&id.to_be_bytes());
        tcp_send(&mut stream, &c.msg).await;
        let answer = tcp_recv(&mut stream, wait_for(&c.expect)).await;
        if let Err(e) = verify(&c.expect, &c.msg, answer.as_deref()) {
            failures.push(format!("{}: {e}", c.what));
        }
    }
    assert!(failures.is_empty(), "TCP cases failed:\n  {}", failures.join("\n  "));

    // The same connection still answers a normal query.
    let mut q = query("www.example.com", TYPE_A, CLASS_IN);
    q[0..2].copy_from_slice(&0x7cffu16.to_be_bytes());
    tcp_send(&mut stream, &q).await;
    let a = tcp_recv(&mut stream, ANSWER)
        .await
        .expect("answer on the same connection");
    assert_eq!(&a[0..2], &[0x7c, 0xff]);
    assert_eq!(a[3] & 0x0f, NOERROR);
    assert_eq!(be16(&a, 6), 1, "one A record");
    drop(stream);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_bad_length_prefix_closes_the_connection() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;

    // 60000 > tcp.max_message_size (4096): closed without reading a body.
    let mut stream = TcpStream::connect(nodens.dns).await.unwrap();
    stream.write_all(&60000u16.to_be_bytes()).await.unwrap();
    closed_by_server(&mut stream, ANSWER)
        .await
        .expect("oversized length prefix");
    assert_serves_tcp(nodens.dns, "after an oversized length prefix").await;

    // One past the limit is already too much.
    let mut stream = TcpStream::connect(nodens.dns).await.unwrap();
    stream.write_all(&4097u16.to_be_bytes()).await.unwrap();
    closed_by_server(&mut stream, ANSWER).await.expect("length 4097");

    // Shorter than a header: no query can be that short.
    let mut stream = TcpStream::connect(nodens.dns).await.unwrap();
    stream.write_all(&[0, 5, 0xab, 0xcd, 0x01, 0x00, 0x00]).await.unwrap();
    closed_by_server(&mut stream, ANSWER).await.expect("length 5");

    // Length 0.
    let mut stream = TcpStream::connect(nodens.dns).await.unwrap();
    stream.write_all(&[0, 0]).await.unwrap();
    closed_by_server(&mut stream, ANSWER).await.expect("length 0");

    assert_serves_tcp(nodens.dns, "after short length prefixes").await;
    assert_serves_udp(nodens.dns, "after bad TCP framing").await;
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_idle_connection_is_closed() {
    let upstream = FakeUpstream::start_example().await;
    let mut c = config(&[upstream.addr()]);
    c.tcp.idle_timeout = Duration::from_millis(300);
    let nodens = Nodens::start(c).await;

    // Nothing at all.
    let mut silent = TcpStream::connect(nodens.dns).await.unwrap();
    // Half a message: a length prefix and 3 of its 40 bytes (slowloris).
    let mut partial = TcpStream::connect(nodens.dns).await.unwrap();
    partial.write_all(&[0, 40, 0xab, 0xcd, 0x01]).await.unwrap();
    // A connection that was used, then fell silent.
    let mut used = TcpStream::connect(nodens.dns).await.unwrap();
    let mut q = query("www.example.com", TYPE_A, CLASS_IN);
    q[0..2].copy_from_slice(&0x1d1eu16.to_be_bytes());
    tcp_send(&mut used, &q).await;
    let a = tcp_recv(&mut used, ANSWER).await.expect("answer before going idle");
    assert_eq!(&a[0..2], &[0x1d, 0x1e]);

    let wait = Duration::from_secs(5);
    closed_by_server(&mut silent, wait).await.expect("silent connection");
    closed_by_server(&mut partial, wait).await.expect("partial message");
    closed_by_server(&mut used, wait).await.expect("idle after a query");
    assert_serves_tcp(nodens.dns, "after idle closes").await;
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_limit_holds_the_next_client_in_the_backlog() {
    let upstream = FakeUpstream::start_example().await;
    let mut c = config(&[upstream.addr()]);
    c.tcp.max_connections = 2;
    // Long enough that no idle close frees a slot during the test.
    c.tcp.idle_timeout = Duration::from_secs(60);
    let nodens = Nodens::start(c).await;

    let mut q = query("www.example.com", TYPE_A, CLASS_IN);
    // Two connections, each proven accepted (and so holding a slot) by an answer.
    let mut held = Vec::new();
    for id in [0x0c01u16, 0x0c02] {
        let mut s = TcpStream::connect(nodens.dns).await.unwrap();
        q[0..2].copy_from_slice(&id.to_be_bytes());
        tcp_send(&mut s, &q).await;
        let a = tcp_recv(&mut s, ANSWER).await.expect("answer within the limit");
        assert_eq!(be16(&a, 0), id);
        held.push(s);
    }

    // The third connects (the kernel backlog takes it) but is not served.
    let mut third = TcpStream::connect(nodens.dns)
        .await
        .expect("kernel accepts into the backlog");
    q[0..2].copy_from_slice(&0x0c03u16.to_be_bytes());
    tcp_send(&mut third, &q).await;
    assert!(
        tcp_recv(&mut third, Duration::from_millis(500)).await.is_none(),
        "a third connection was served beyond tcp.max_connections = 2"
    );

    // Closing one of the first two frees its slot: the waiting query is answered.
    drop(held.remove(0));
    let a = tcp_recv(&mut third, Duration::from_secs(5))
        .await
        .expect("third connection served once a slot was freed");
    assert_eq!(be16(&a, 0), 0x0c03);
    assert_eq!(a[3] & 0x0f, NOERROR);

    // The survivor still works.
    q[0..2].copy_from_slice(&0x0c04u16.to_be_bytes());
    tcp_send(&mut held[0], &q).await;
    let a = tcp_recv(&mut held[0], ANSWER)
        .await
        .expect("held connection still served");
    assert_eq!(be16(&a, 0), 0x0c04);
    drop(held);
    drop(third);
    assert!(nodens.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_outside_allow_is_refused_with_the_question() {
    let upstream = FakeUpstream::start_example().await;
    let mut c = config(&[upstream.addr()]);
    c.allow = vec!["10.0.0.0/8".parse().unwrap()];
    let nodens = Nodens::start(c).await;

    let www = question("www.example.com", TYPE_A, CLASS_IN);
    let mut q = cat(&[&header(RD, [1, 0, 0, 0]), &www]);
    q[0..2].copy_from_slice(&0xacc1u16.to_be_bytes());
    let expect = Expect::Empty {
        rcode: REFUSED,
        echo: Some(www.clone()),
    };

    let a = udp_raw(nodens.dns, &q, ANSWER).await;
    verify(&expect, &q, a.as_deref()).unwrap_or_else(|e| panic!("UDP from 127.0.0.1: {e}"));
    // RD is copied into the refusal (RFC 1035 §4.1.1).
    assert_eq!(a.unwrap()[2] & 0x01, 0x01, "RD copied");

    let mut s = TcpStream::connect(nodens.dns).await.unwrap();
    tcp_send(&mut s, &q).await;
    let a = tcp_recv(&mut s, ANSWER).await;
    verify(&expect, &q, a.as_deref()).unwrap_or_else(|e| panic!("TCP from 127.0.0.1: {e}"));

    // Not even a cached or ANY answer leaks: ANY is refused as well.
    let any = question("example.com", TYPE_ANY, CLASS_IN);
    let q = cat(&[&header(RD, [1, 0, 0, 0]), &any]);
    let a = udp_raw(nodens.dns, &q, ANSWER).await;
    verify(
        &Expect::Empty {
            rcode: REFUSED,
            echo: Some(any),
        },
        &q,
        a.as_deref(),
    )
    .unwrap_or_else(|e| panic!("ANY from 127.0.0.1: {e}"));

    assert_eq!(upstream.queries(), 0, "a refused client's query went upstream");
    assert!(nodens.stop().await);
}

/// RFC 1035 §4.1.1: OPCODE "is set by the originator of a query and copied
/// into the response". A NOTIMP answer to NOTIFY or UPDATE must carry that
/// opcode, or the client cannot match it to its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notimp_answer_copies_the_opcode() {
    let upstream = FakeUpstream::start_example().await;
    let nodens = Nodens::with_upstreams(&[upstream.addr()]).await;
    let mut failures = Vec::new();
    for op in [2u16, 4, 5] {
        let mut q = cat(&[&header(opcode(op), [1, 0, 0, 0]), &question("example.com", 6, CLASS_IN)]);
        q[0..2].copy_from_slice(&(0x0900 + op).to_be_bytes());
        let a = udp_raw(nodens.dns, &q, ANSWER).await.expect("NOTIMP answer");
        assert_eq!(a[3] & 0x0f, NOTIMP, "opcode {op}: rcode");
        let got = (a[2] >> 3) & 0x0f;
        if got != op as u8 {
            failures.push(format!("query opcode {op}: answer opcode {got}"));
        }
    }
    assert!(failures.is_empty(), "opcode not copied: {failures:?}");
    assert!(nodens.stop().await);
}
