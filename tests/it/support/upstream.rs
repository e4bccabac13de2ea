//! A fake authoritative DNS upstream for the integration tests.
//!
//! Each [`FakeUpstream`] serves one or more in-memory zones ([`ZoneSpec`]) on
//! an ephemeral port of 127.0.0.1, UDP and TCP on the *same* port.
//!
//! Answers are computed by hickory-server's own `Catalog` +
//! `InMemoryZoneHandler` (so NXDOMAIN/NODATA with the SOA in the authority
//! section, CNAME chasing, AA flag and UDP truncation are hickory's), but the
//! sockets are plain tokio sockets owned by this module, so that every query
//! can be counted and faults ([`Fault`]) can be injected at runtime, including
//! the ones hickory's `Server` cannot produce (wrong ID, wrong question).
//!
//! UDP size limit: the UDP limit is the client's advertised EDNS payload size
//! (512 without EDNS), capped by a server-side maximum (default
//! [`DEFAULT_MAX_UDP_PAYLOAD`] = 1232, like BIND/Unbound). A larger answer is
//! sent as a clean TC=1 answer: header, question and (if the query had EDNS)
//! OPT, no records. So `big.example.com` is truncated over UDP whatever the
//! client advertises, and answered whole over TCP. (hickory-server 0.26 does
//! truncate to the client's size by itself, but it keeps a partial answer
//! section and silently drops the OPT record from such a response; the fake
//! replaces that with the clean form.)
#![allow(dead_code)]

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, Query, ResponseCode},
    rr::{
        rdata::{A, AAAA, CNAME, MX, NS, SOA, TXT},
        LowerName, Name, RData, Record, RecordType, RrKey,
    },
    serialize::txt::Parser,
};
use hickory_server::{
    net::{runtime::TokioTime, xfer::Protocol, BufDnsStreamHandle},
    server::{Request, RequestHandler, ResponseHandle},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    task::{JoinHandle, JoinSet},
};

/// Server-side maximum UDP response size (the DNS flag day 2020 value).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1232;

/// Address used in the bogus records of [`Fault::WrongId`] /
/// [`Fault::WrongQuestion`] responses for A queries (never in a real zone).
pub const BOGUS_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
/// Address used in the bogus records for AAAA queries.
pub const BOGUS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0x66);
/// Question name used by [`Fault::WrongQuestion`]'s first (bogus) response.
pub const WRONG_QUESTION_NAME: &str = "wrong-question.invalid.";

// ---------------------------------------------------------------------------
// Zone description
// ---------------------------------------------------------------------------

/// Description of one authoritative zone: origin, SOA parameters and records.
///
/// Owner names and targets given to the helper methods are relative to the
/// origin unless they end with a dot; `"@"` (or `""`) is the origin itself.
#[derive(Clone, Debug)]
pub struct ZoneSpec {
    origin: Name,
    soa_ttl: u32,
    soa_minimum: u32,
    serial: u32,
    records: Vec<Record>,
}

impl ZoneSpec {
    /// Empty zone with an apex SOA (TTL 300, MINIMUM 60, serial 1, mname
    /// `ns1.<origin>`, rname `hostmaster.<origin>`) and an apex NS `ns1.<origin>`.
    pub fn new(origin: &str) -> Self {
        let mut origin = Name::from_ascii(origin).expect("valid zone origin");
        origin.set_fqdn(true);
        let ns = Name::parse("ns1", Some(&origin)).expect("ns name");
        let apex_ns = Record::from_rdata(origin.clone(), 300, RData::NS(NS(ns)));
        Self {
            origin,
            soa_ttl: 300,
            soa_minimum: 60,
            serial: 1,
            records: vec![apex_ns],
        }
    }

    /// The ready-made `example.com.` test zone:
    ///
    /// | name                  | type  | ttl | data                            |
    /// |-----------------------|-------|-----|---------------------------------|
    /// | example.com.          | SOA   | 300 | minimum 60                      |
    /// | example.com.          | NS    | 300 | ns1.example.com.                |
    /// | example.com.          | MX    | 300 | 10 mail.example.com.            |
    /// | ns1.example.com.      | A     | 300 | 192.0.2.53                      |
    /// | mail.example.com.     | A     | 300 | 192.0.2.25                      |
    /// | www.example.com.      | A     | 300 | 192.0.2.1                       |
    /// | www.example.com.      | AAAA  | 300 | 2001:db8::1                     |
    /// | alias.example.com.    | CNAME | 120 | www.example.com.                |
    /// | short.example.com.    | A     | 2   | 192.0.2.2                       |
    /// | txtonly.example.com.  | TXT   | 300 | "hello" (A/AAAA there = NODATA) |
    /// | big.example.com.      | A ×100| 300 | 10.0.0.1 .. 10.0.0.100 (~1.6 KB)|
    ///
    /// Any other name under example.com. is NXDOMAIN (SOA in authority).
    pub fn example() -> Self {
        let mut zone = Self::new("example.com.")
            .soa(300, 60)
            .mx("@", 300, 10, "mail")
            .a("ns1", 300, "192.0.2.53")
            .a("mail", 300, "192.0.2.25")
            .a("www", 300, "192.0.2.1")
            .aaaa("www", 300, "2001:db8::1")
            .cname("alias", 120, "www")
            .a("short", 2, "192.0.2.2")
            .txt("txtonly", 300, "hello");
        for i in 1..=100u8 {
            zone = zone.a("big", 300, &format!("10.0.0.{i}"));
        }
        zone
    }

    /// The zone origin (fully qualified).
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// Sets the TTL of the apex SOA record and its MINIMUM field.
    pub fn soa(mut self, ttl: u32, minimum: u32) -> Self {
        self.soa_ttl = ttl;
        self.soa_minimum = minimum;
        self
    }

    /// Sets the SOA serial.
    pub fn serial(mut self, serial: u32) -> Self {
        self.serial = serial;
        self
    }

    /// Adds an A record.
    pub fn a(self, name: &str, ttl: u32, ip: &str) -> Self {
        let ip: Ipv4Addr = ip.parse().expect("valid IPv4 address");
        self.rdata(name, ttl, RData::A(A(ip)))
    }

    /// Adds an AAAA record.
    pub fn aaaa(self, name: &str, ttl: u32, ip: &str) -> Self {
        let ip: Ipv6Addr = ip.parse().expect("valid IPv6 address");
        self.rdata(name, ttl, RData::AAAA(AAAA(ip)))
    }

    /// Adds a CNAME record (`target` relative to the origin unless it ends with a dot).
    pub fn cname(self, name: &str, ttl: u32, target: &str) -> Self {
        let target = self.name(target);
        self.rdata(name, ttl, RData::CNAME(CNAME(target)))
    }

    /// Adds a TXT record with a single character-string.
    pub fn txt(self, name: &str, ttl: u32, text: &str) -> Self {
        self.rdata(name, ttl, RData::TXT(TXT::new(vec![text.to_owned()])))
    }

    /// Adds an MX record (`exchange` relative to the origin unless it ends with a dot).
    pub fn mx(self, name: &str, ttl: u32, preference: u16, exchange: &str) -> Self {
        let exchange = self.name(exchange);
        self.rdata(name, ttl, RData::MX(MX::new(preference, exchange)))
    }

    /// Adds record(s) written in zone-file syntax, relative to the origin,
    /// with a default TTL of 300, e.g. `"srv 60 IN SRV 0 5 443 www"` or
    /// `"@ 3600 CAA 0 issue \"ca.example\""`. Panics on parse errors.
    pub fn record(mut self, line: &str) -> Self {
        let records = parse_zone_lines(&self.origin, line);
        self.records.extend(records);
        self
    }

    /// Adds a ready-made hickory `Record`.
    pub fn push(mut self, record: Record) -> Self {
        self.records.push(record);
        self
    }

    fn rdata(mut self, name: &str, ttl: u32, rdata: RData) -> Self {
        let name = self.name(name);
        self.records.push(Record::from_rdata(name, ttl, rdata));
        self
    }

    fn name(&self, name: &str) -> Name {
        if name.is_empty() || name == "@" {
            return self.origin.clone();
        }
        Name::parse(name, Some(&self.origin)).unwrap_or_else(|e| panic!("invalid name {name:?}: {e}"))
    }

    fn soa_record(&self) -> Record {
        let mname = Name::parse("ns1", Some(&self.origin)).expect("mname");
        let rname = Name::parse("hostmaster", Some(&self.origin)).expect("rname");
        let soa = SOA::new(mname, rname, self.serial, 3600, 600, 86400, self.soa_minimum);
        Record::from_rdata(self.origin.clone(), self.soa_ttl, RData::SOA(soa))
    }

    fn build(&self) -> InMemoryZoneHandler {
        let mut handler = InMemoryZoneHandler::empty(self.origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = self.soa_record();
        assert!(handler.upsert_mut(soa, self.serial), "SOA insert failed");
        for record in &self.records {
            assert!(
                handler.upsert_mut(record.clone(), self.serial),
                "failed to insert {record} into zone {} (CNAME conflict or wrong class?)",
                self.origin
            );
        }
        handler
    }
}

fn parse_zone_lines(origin: &Name, text: &str) -> Vec<Record> {
    let input = format!("$ORIGIN {origin}\n$TTL 300\n{text}\n");
    let (_, map) = Parser::new(input, None, Some(origin.clone()))
        .parse()
        .unwrap_or_else(|e| panic!("cannot parse zone text {text:?}: {e}"));
    map.into_values()
        .flat_map(|rrset| rrset.records_without_rrsigs().cloned().collect::<Vec<_>>())
        .collect()
}

// ---------------------------------------------------------------------------
// Faults and observations
// ---------------------------------------------------------------------------

/// Behaviour of the fake, switchable at runtime with [`FakeUpstream::set_fault`].
/// The fault in force when a query *arrives* applies to it. Every query is
/// counted whatever the fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Never answer (UDP and TCP; TCP connections stay open).
    Drop,
    /// Answer normally after this delay (UDP and TCP; other queries are not held up).
    Delay(Duration),
    /// Answer SERVFAIL (question echoed, no records), UDP and TCP.
    ServFail,
    /// UDP: answer NOERROR with TC=1 and no records. TCP: answer normally.
    Truncate,
    /// UDP: first send a response with ID+1 (carrying bogus records
    /// [`BOGUS_V4`]/[`BOGUS_V6`]), then the correct response. TCP: normal.
    WrongId,
    /// UDP: first send a response with the right ID but question
    /// [`WRONG_QUESTION_NAME`] (and bogus records for the real name), then
    /// the correct response. TCP: normal.
    WrongQuestion,
}

/// Transport a query arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP datagram.
    Udp,
    /// TCP (length-prefixed) stream.
    Tcp,
}

/// One query as seen by the fake.
#[derive(Clone, Debug)]
pub struct SeenQuery {
    /// Lowercased fully qualified question name, with trailing dot.
    pub name: String,
    /// Question type.
    pub rtype: RecordType,
    /// UDP or TCP.
    pub transport: Transport,
    /// Source address (and port) of the query.
    pub src: SocketAddr,
    /// DNS message ID.
    pub id: u16,
    /// Whether the query carried an EDNS OPT record.
    pub edns: bool,
    /// EDNS UDP payload size advertised, if EDNS.
    pub edns_payload: Option<u16>,
    /// The EDNS DO bit.
    pub dnssec_ok: bool,
    /// RD flag.
    pub recursion_desired: bool,
    /// CD flag.
    pub checking_disabled: bool,
}

#[derive(Default)]
struct Stats {
    /// All datagrams / frames received, including unparsable ones.
    total: u64,
    udp: u64,
    tcp: u64,
    /// Parsed queries (with at least one question), in arrival order.
    log: Vec<SeenQuery>,
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

struct Shared {
    catalog: Catalog,
    zones: Vec<Arc<InMemoryZoneHandler>>,
    fault: Mutex<Fault>,
    max_udp: AtomicU16,
    stats: Mutex<Stats>,
}

/// A running fake authoritative server. Dropping it stops it.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl FakeUpstream {
    /// Starts serving `zone` on 127.0.0.1:<ephemeral>, UDP and TCP.
    pub async fn start(zone: ZoneSpec) -> FakeUpstream {
        Self::start_zones(vec![zone]).await
    }

    /// Starts serving the [`ZoneSpec::example`] zone.
    pub async fn start_example() -> FakeUpstream {
        Self::start(ZoneSpec::example()).await
    }

    /// Starts serving several zones (e.g. `example.com.` and `example.net.`,
    /// or a parent and a child zone). Names outside all zones get REFUSED.
    pub async fn start_zones(zones: Vec<ZoneSpec>) -> FakeUpstream {
        let mut catalog = Catalog::new();
        let mut handlers = Vec::new();
        for zone in &zones {
            let handler = Arc::new(zone.build());
            let dyn_handler: Arc<dyn ZoneHandler> = handler.clone();
            catalog.upsert(LowerName::new(zone.origin()), vec![dyn_handler]);
            handlers.push(handler);
        }
        let shared = Arc::new(Shared {
            catalog,
            zones: handlers,
            fault: Mutex::new(Fault::None),
            max_udp: AtomicU16::new(DEFAULT_MAX_UDP_PAYLOAD),
            stats: Mutex::new(Stats::default()),
        });

        let (udp, tcp, addr) = bind_pair().await;
        let tasks = vec![
            tokio::spawn(udp_loop(shared.clone(), udp)),
            tokio::spawn(tcp_loop(shared.clone(), tcp)),
        ];
        FakeUpstream {
            addr,
            shared,
            tasks: Mutex::new(tasks),
        }
    }

    /// The address (127.0.0.1:port) to send queries to, UDP or TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving. When this returns, the UDP socket and TCP listener are
    /// closed (already accepted TCP connections are closed asynchronously).
    /// Counters remain readable.
    pub async fn shutdown(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    // ----- faults / configuration -----

    /// Switches the fault mode (applies to queries arriving from now on).
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Current fault mode.
    pub fn fault(&self) -> Fault {
        *self.shared.fault.lock().unwrap()
    }

    /// Sets the server-side maximum UDP response size (default 1232); larger
    /// answers are replaced by an empty TC=1 answer.
    pub fn set_max_udp_payload(&self, size: u16) {
        self.shared.max_udp.store(size, Ordering::Relaxed);
    }

    // ----- runtime zone changes -----

    /// Adds record(s) at runtime, in zone-file syntax with a *fully qualified*
    /// owner name, e.g. `"new.example.com. 60 IN A 192.0.2.9"`. Adds to an
    /// existing RRset; use [`Self::remove_records`] first to replace it.
    pub async fn add_record(&self, line: &str) {
        for record in parse_zone_lines(&Name::root(), line) {
            let zone = self.zone_for(&record.name);
            let serial = zone.serial().await;
            assert!(zone.upsert(record.clone(), serial).await, "failed to insert {record}");
        }
    }

    /// Removes the RRset `name`/`rtype` at runtime (name fully qualified or
    /// not; it is taken as absolute). Returns whether it existed.
    pub async fn remove_records(&self, name: &str, rtype: RecordType) -> bool {
        let name = Name::from_ascii(normalize_name(name)).expect("valid name");
        let zone = self.zone_for(&name);
        let key = RrKey::new(LowerName::new(&name), rtype);
        let removed = zone.records_mut().await.remove(&key).is_some();
        removed
    }

    fn zone_for(&self, name: &Name) -> &Arc<InMemoryZoneHandler> {
        let lower = LowerName::new(name);
        self.shared
            .zones
            .iter()
            .filter(|z| z.origin().zone_of(&lower))
            .max_by_key(|z| z.origin().num_labels())
            .unwrap_or_else(|| panic!("no zone of this fake contains {name}"))
    }

    // ----- observations -----

    /// Total number of queries received (UDP datagrams + TCP frames,
    /// including unparsable ones), whatever the fault.
    pub fn queries(&self) -> u64 {
        self.shared.stats.lock().unwrap().total
    }

    /// Number of queries for (`name`, `rtype`); `name` is case-insensitive,
    /// trailing dot optional.
    pub fn queries_for(&self, name: &str, rtype: RecordType) -> u64 {
        let name = normalize_name(name);
        let stats = self.shared.stats.lock().unwrap();
        stats.log.iter().filter(|q| q.name == name && q.rtype == rtype).count() as u64
    }

    /// Number of queries received over UDP.
    pub fn udp_queries(&self) -> u64 {
        self.shared.stats.lock().unwrap().udp
    }

    /// Number of queries received over TCP.
    pub fn tcp_queries(&self) -> u64 {
        self.shared.stats.lock().unwrap().tcp
    }

    /// All parsed queries, in arrival order.
    pub fn seen(&self) -> Vec<SeenQuery> {
        self.shared.stats.lock().unwrap().log.clone()
    }

    /// The last parsed query.
    pub fn last_query(&self) -> Option<SeenQuery> {
        self.shared.stats.lock().unwrap().log.last().cloned()
    }

    /// Whether the last query carried EDNS (false if no query yet).
    pub fn last_had_edns(&self) -> bool {
        self.last_query().is_some_and(|q| q.edns)
    }

    /// Whether the last query had the DO bit (false if no query yet).
    pub fn last_dnssec_ok(&self) -> bool {
        self.last_query().is_some_and(|q| q.dnssec_ok)
    }

    /// Source ports of all parsed queries (UDP and TCP), in arrival order.
    pub fn src_ports(&self) -> Vec<u16> {
        let stats = self.shared.stats.lock().unwrap();
        stats.log.iter().map(|q| q.src.port()).collect()
    }

    /// Source ports of the UDP queries only, in arrival order.
    pub fn udp_src_ports(&self) -> Vec<u16> {
        let stats = self.shared.stats.lock().unwrap();
        stats
            .log
            .iter()
            .filter(|q| q.transport == Transport::Udp)
            .map(|q| q.src.port())
            .collect()
    }

    /// Message IDs of all parsed queries, in arrival order.
    pub fn ids(&self) -> Vec<u16> {
        let stats = self.shared.stats.lock().unwrap();
        stats.log.iter().map(|q| q.id).collect()
    }

    /// Resets all counters and the query log.
    pub fn reset_counters(&self) {
        *self.shared.stats.lock().unwrap() = Stats::default();
    }

    /// Waits until at least `n` queries were received; false on timeout.
    pub async fn wait_for_queries(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.queries() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for task in tasks.iter() {
                task.abort();
            }
        }
    }
}

fn normalize_name(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

async fn bind_pair() -> (UdpSocket, TcpListener, SocketAddr) {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind UDP 127.0.0.1:0");
        let addr = udp.local_addr().expect("UDP local addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp, addr);
        }
    }
    panic!("could not bind UDP and TCP on the same ephemeral port");
}

// ----- I/O loops -----

/// Owns the UDP socket alone (per-query tasks hand their datagrams back
/// through a channel), so aborting this task closes the socket.
async fn udp_loop(shared: Arc<Shared>, socket: UdpSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, SocketAddr)>();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65535];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, src) = match received {
                    Ok(v) => v,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                };
                let raw = buf[..len].to_vec();
                let shared = shared.clone();
                let tx = tx.clone();
                tasks.spawn(async move {
                    for response in respond(&shared, raw, src, Transport::Udp).await {
                        let _ = tx.send((response, src));
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
            Some((response, dst)) = rx.recv() => {
                let _ = socket.send_to(&response, dst).await;
            }
        }
    }
}

async fn tcp_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, src)) => {
                connections.spawn(tcp_connection(shared.clone(), stream, src));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
        while connections.try_join_next().is_some() {}
    }
}

/// Serves one TCP connection; queries are handled concurrently and answered
/// as they complete (possibly out of order, as RFC 7766 allows).
async fn tcp_connection(shared: Arc<Shared>, stream: TcpStream, src: SocketAddr) {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Some(message) = rx.recv().await {
            let mut frame = Vec::with_capacity(message.len() + 2);
            frame.extend_from_slice(&(message.len() as u16).to_be_bytes());
            frame.extend_from_slice(&message);
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        let mut len = [0u8; 2];
        if reader.read_exact(&mut len).await.is_err() {
            break;
        }
        let mut raw = vec![0u8; u16::from_be_bytes(len) as usize];
        if reader.read_exact(&mut raw).await.is_err() {
            break;
        }
        let shared = shared.clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            for response in respond(&shared, raw, src, Transport::Tcp).await {
                let _ = tx.send(response);
            }
        });
    }
    // The client stopped sending (maybe only half-closed): finish in-flight answers.
    drop(tx);
    while tasks.join_next().await.is_some() {}
}

// ----- query handling -----

/// Counts the query, applies the fault, and returns the datagrams/frames to
/// send back, in order.
async fn respond(shared: &Shared, raw: Vec<u8>, src: SocketAddr, transport: Transport) -> Vec<Vec<u8>> {
    let parsed = Message::from_vec(&raw).ok();
    shared.record(parsed.as_ref(), src, transport);
    let Some(query) = parsed else {
        return Vec::new();
    };
    if query.metadata.message_type != MessageType::Query || query.queries.is_empty() {
        return Vec::new();
    }
    let udp = transport == Transport::Udp;
    let fault = *shared.fault.lock().unwrap();
    match fault {
        Fault::Drop => return Vec::new(),
        Fault::Delay(delay) => tokio::time::sleep(delay).await,
        Fault::ServFail => {
            return vec![empty_response(shared, &query, ResponseCode::ServFail, false)];
        }
        Fault::Truncate if udp => {
            return vec![empty_response(shared, &query, ResponseCode::NoError, true)];
        }
        _ => {}
    }

    let Some(mut answer) = shared.answer(raw, src, transport).await else {
        return Vec::new();
    };
    // hickory truncates to the client's advertised size by itself, but keeps
    // a partial answer and drops the OPT record when it does not fit; send a
    // clean TC=1 answer (question + OPT, no records) instead, also when the
    // answer exceeds the server-side UDP limit.
    let hickory_truncated = answer.get(2).is_some_and(|flags| flags & 0x02 != 0);
    if udp && (hickory_truncated || answer.len() > usize::from(shared.max_udp.load(Ordering::Relaxed))) {
        answer = empty_response(shared, &query, ResponseCode::NoError, true);
    }
    match fault {
        Fault::WrongId if udp => {
            let bogus = bogus_response(&query, query.metadata.id.wrapping_add(1), None);
            vec![bogus, answer]
        }
        Fault::WrongQuestion if udp => {
            let wrong = Name::from_ascii(WRONG_QUESTION_NAME).expect("valid name");
            let bogus = bogus_response(&query, query.metadata.id, Some(wrong));
            vec![bogus, answer]
        }
        _ => vec![answer],
    }
}

impl Shared {
    fn record(&self, query: Option<&Message>, src: SocketAddr, transport: Transport) {
        let mut stats = self.stats.lock().unwrap();
        stats.total += 1;
        match transport {
            Transport::Udp => stats.udp += 1,
            Transport::Tcp => stats.tcp += 1,
        }
        let Some(query) = query else { return };
        let Some(question) = query.queries.first() else {
            return;
        };
        let edns = query.edns.as_ref();
        stats.log.push(SeenQuery {
            name: normalize_name(&question.name().to_string()),
            rtype: question.query_type(),
            transport,
            src,
            id: query.metadata.id,
            edns: edns.is_some(),
            edns_payload: edns.map(|e| e.max_payload()),
            dnssec_ok: edns.is_some_and(|e| e.flags().dnssec_ok),
            recursion_desired: query.metadata.recursion_desired,
            checking_disabled: query.metadata.checking_disabled,
        });
    }

    /// The normal answer, computed and encoded by hickory-server's Catalog
    /// (including its own UDP truncation to the client's advertised size).
    async fn answer(&self, raw: Vec<u8>, src: SocketAddr, transport: Transport) -> Option<Vec<u8>> {
        let protocol = match transport {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        };
        let request = Request::from_bytes(raw, src, protocol).ok()?;
        let (stream_handle, mut responses) = BufDnsStreamHandle::new(src);
        let response_handle = ResponseHandle::new(src, stream_handle, protocol);
        self.catalog
            .handle_request::<_, TokioTime>(&request, response_handle)
            .await;
        // All senders are gone now; take the (single) encoded response, if any.
        let message = Pin::new(&mut responses).next_if(|_| true).await?;
        Some(message.into_parts().0)
    }
}

/// A response with no records: question echoed, given rcode and TC flag,
/// OPT echoed if the query had EDNS.
fn empty_response(shared: &Shared, query: &Message, rcode: ResponseCode, truncated: bool) -> Vec<u8> {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.checking_disabled = query.metadata.checking_disabled;
    response.metadata.authoritative = rcode == ResponseCode::NoError;
    response.metadata.response_code = rcode;
    response.metadata.truncation = truncated;
    response.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(shared.max_udp.load(Ordering::Relaxed).max(512));
        response.set_edns(edns);
    }
    response.to_vec().expect("encode response")
}

/// A poisoned response: `id`, question (or `wrong_name` instead of the
/// question name), and an A/AAAA answer for the real name pointing to
/// [`BOGUS_V4`]/[`BOGUS_V6`].
fn bogus_response(query: &Message, id: u16, wrong_name: Option<Name>) -> Vec<u8> {
    let question = &query.queries[0];
    let mut response = Message::response(id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.authoritative = true;
    let mut q = Query::query(
        wrong_name.unwrap_or_else(|| question.name().clone()),
        question.query_type(),
    );
    q.set_query_class(question.query_class());
    response.add_query(q);
    let rdata = match question.query_type() {
        RecordType::A => Some(RData::A(A(BOGUS_V4))),
        RecordType::AAAA => Some(RData::AAAA(AAAA(BOGUS_V6))),
        _ => None,
    };
    if let Some(rdata) = rdata {
        response.add_answer(Record::from_rdata(question.name().clone(), 300, rdata));
    }
    if query.edns.is_some() {
        response.set_edns(Edns::new());
    }
    response.to_vec().expect("encode bogus response")
}

// ---------------------------------------------------------------------------
// Tiny client helpers (usable by other tests too)
// ---------------------------------------------------------------------------

/// Builds a query (random ID, RD=1). `edns_payload`: `Some(size)` adds an
/// OPT record advertising `size`, `None` sends a plain DNS query.
pub fn build_query(name: &str, rtype: RecordType, edns_payload: Option<u16>) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).expect("valid name"), rtype));
    if let Some(size) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        message.set_edns(edns);
    }
    message
}

/// Sends `query` over UDP from a fresh 127.0.0.1 socket and returns the first
/// response, or `None` after `timeout`.
pub async fn udp_exchange(addr: SocketAddr, query: &Message, timeout: Duration) -> Option<Message> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.ok()?;
    socket
        .send_to(&query.to_vec().expect("encode query"), addr)
        .await
        .ok()?;
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(timeout, socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&buf[..len]).expect("decode response"))
}

/// Sends `query` over a new TCP connection and returns the response, or
/// `None` after `timeout`.
/// The IPv4 addresses in an answer section.
pub fn a_addrs(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

pub async fn tcp_exchange(addr: SocketAddr, query: &Message, timeout: Duration) -> Option<Message> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let raw = query.to_vec().expect("encode query");
        let mut frame = (raw.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&raw);
        stream.write_all(&frame).await.ok()?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.ok()?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).await.ok()?;
        Some(Message::from_vec(&buf).expect("decode response"))
    })
    .await
    .ok()?
}

// ---------------------------------------------------------------------------
// Self tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    fn soa_of(message: &Message) -> (u32, u32) {
        let record = message
            .authorities
            .iter()
            .find(|r| r.record_type() == RecordType::SOA)
            .expect("SOA in authority");
        match &record.data {
            RData::SOA(soa) => (record.ttl, soa.minimum),
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn answers_a_and_counts() {
        let up = FakeUpstream::start_example().await;
        assert!(up.addr().ip().is_loopback());
        let query = build_query("www.example.com.", RecordType::A, Some(1232));
        let response = udp_exchange(up.addr(), &query, T).await.expect("answer");
        assert_eq!(response.metadata.id, query.metadata.id);
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative);
        assert!(!response.metadata.truncation);
        assert_eq!(a_addrs(&response), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(response.answers[0].ttl, 300);
        assert!(response.edns.is_some());

        let mut q2 = build_query("WWW.Example.COM.", RecordType::AAAA, None);
        q2.metadata.id = 4242;
        let response = tcp_exchange(up.addr(), &q2, T).await.expect("answer");
        assert_eq!(response.answers.len(), 1);
        assert!(matches!(&response.answers[0].data,
            RData::AAAA(a) if a.0 == "2001:db8::1".parse::<Ipv6Addr>().unwrap()));

        assert_eq!(up.queries(), 2);
        assert_eq!(up.udp_queries(), 1);
        assert_eq!(up.tcp_queries(), 1);
        assert_eq!(up.queries_for("www.example.com", RecordType::A), 1);
        assert_eq!(up.queries_for("Www.Example.Com.", RecordType::AAAA), 1);
        assert_eq!(up.queries_for("www.example.com", RecordType::MX), 0);
        assert_eq!(up.ids(), vec![query.metadata.id, 4242]);
        assert_eq!(up.src_ports().len(), 2);
        assert_eq!(up.udp_src_ports().len(), 1);
        assert!(!up.last_had_edns());
        let first = &up.seen()[0];
        assert!(first.edns && !first.dnssec_ok && first.recursion_desired);
        assert_eq!(first.edns_payload, Some(1232));

        let mut q3 = build_query("www.example.com.", RecordType::A, Some(1232));
        q3.edns.as_mut().unwrap().set_dnssec_ok(true);
        udp_exchange(up.addr(), &q3, T).await.expect("answer");
        assert!(up.last_had_edns());
        assert!(up.last_dnssec_ok());

        up.reset_counters();
        assert_eq!(up.queries(), 0);
        assert!(up.seen().is_empty());
    }

    #[tokio::test]
    async fn nxdomain_nodata_cname() {
        let up = FakeUpstream::start_example().await;

        let q = build_query("nope.example.com.", RecordType::A, Some(1232));
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
        assert_eq!(soa_of(&r), (300, 60));

        let q = build_query("txtonly.example.com.", RecordType::AAAA, None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(soa_of(&r), (300, 60));

        let q = build_query("alias.example.com.", RecordType::A, None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(r.answers[0].ttl, 120);
        assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 1)]);

        let q = build_query("short.example.com.", RecordType::A, None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(r.answers[0].ttl, 2);

        // Outside any zone: REFUSED.
        let q = build_query("example.org.", RecordType::A, None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }

    #[tokio::test]
    async fn big_answer_truncated_over_udp_whole_over_tcp() {
        let up = FakeUpstream::start_example().await;
        for edns in [None, Some(512), Some(1232), Some(4096)] {
            let q = build_query("big.example.com.", RecordType::A, edns);
            let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
            assert!(r.metadata.truncation, "TC expected with edns {edns:?}");
            assert!(r.answers.is_empty());
            assert_eq!(r.queries, q.queries);
            assert_eq!(r.edns.is_some(), edns.is_some());
        }
        let q = build_query("big.example.com.", RecordType::A, Some(1232));
        let r = tcp_exchange(up.addr(), &q, T).await.expect("answer");
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 100);
        assert!(r.to_vec().unwrap().len() > 1232);
        assert_eq!(up.udp_queries(), 4);
        assert_eq!(up.tcp_queries(), 1);
        assert_eq!(up.queries_for("big.example.com.", RecordType::A), 5);

        // Raising the server cap lets a 4096-advertising client get it whole.
        up.set_max_udp_payload(4096);
        let q = build_query("big.example.com.", RecordType::A, Some(4096));
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 100);
    }

    #[tokio::test]
    async fn drop_and_servfail_faults() {
        let up = FakeUpstream::start_example().await;
        let q = build_query("www.example.com.", RecordType::A, Some(1232));

        up.set_fault(Fault::Drop);
        assert_eq!(up.fault(), Fault::Drop);
        let short = Duration::from_millis(300);
        assert!(udp_exchange(up.addr(), &q, short).await.is_none());
        assert!(tcp_exchange(up.addr(), &q, short).await.is_none());
        assert_eq!(up.queries(), 2);
        assert_eq!(up.queries_for("www.example.com.", RecordType::A), 2);

        up.set_fault(Fault::ServFail);
        for r in [
            udp_exchange(up.addr(), &q, T).await.expect("answer"),
            tcp_exchange(up.addr(), &q, T).await.expect("answer"),
        ] {
            assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
            assert_eq!(r.metadata.id, q.metadata.id);
            assert!(r.answers.is_empty());
            assert_eq!(r.queries, q.queries);
        }

        up.set_fault(Fault::None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(up.queries(), 5);
    }

    #[tokio::test]
    async fn truncate_and_delay_faults() {
        let up = FakeUpstream::start_example().await;
        let q = build_query("www.example.com.", RecordType::A, Some(1232));

        up.set_fault(Fault::Truncate);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert!(r.metadata.truncation);
        assert!(r.answers.is_empty());
        let r = tcp_exchange(up.addr(), &q, T).await.expect("answer");
        assert!(!r.metadata.truncation);
        assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 1)]);

        up.set_fault(Fault::Delay(Duration::from_millis(200)));
        let start = Instant::now();
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }

    #[tokio::test]
    async fn wrong_id_and_wrong_question_faults() {
        let up = FakeUpstream::start_example().await;
        let q = build_query("www.example.com.", RecordType::A, Some(1232));
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let mut buf = vec![0u8; 65535];

        for fault in [Fault::WrongId, Fault::WrongQuestion] {
            up.set_fault(fault);
            socket.send_to(&q.to_vec().unwrap(), up.addr()).await.unwrap();
            let mut got = Vec::new();
            for _ in 0..2 {
                let (len, _) = tokio::time::timeout(T, socket.recv_from(&mut buf))
                    .await
                    .expect("two datagrams")
                    .unwrap();
                got.push(Message::from_vec(&buf[..len]).unwrap());
            }
            let (bogus, good) = (&got[0], &got[1]);
            assert_eq!(a_addrs(bogus), vec![BOGUS_V4]);
            match fault {
                Fault::WrongId => {
                    assert_ne!(bogus.metadata.id, q.metadata.id);
                    assert_eq!(bogus.queries, q.queries);
                }
                _ => {
                    assert_eq!(bogus.metadata.id, q.metadata.id);
                    assert_eq!(bogus.queries[0].name().to_string(), WRONG_QUESTION_NAME);
                }
            }
            assert_eq!(good.metadata.id, q.metadata.id);
            assert_eq!(good.queries, q.queries);
            assert_eq!(a_addrs(good), vec![Ipv4Addr::new(192, 0, 2, 1)]);

            // TCP is answered normally.
            let r = tcp_exchange(up.addr(), &q, T).await.expect("answer");
            assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        }
    }

    #[tokio::test]
    async fn custom_zones_and_runtime_changes() {
        let net = ZoneSpec::new("example.net.")
            .soa(600, 30)
            .a("@", 60, "192.0.2.10")
            .record("srv 60 IN SRV 0 5 443 host\nhost A 192.0.2.11")
            .mx("@", 60, 5, "host");
        let up = FakeUpstream::start_zones(vec![ZoneSpec::example(), net]).await;

        let q = build_query("example.net.", RecordType::A, None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 10)]);
        let q = build_query("host.example.net.", RecordType::A, None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 11)]);
        let q = build_query("srv.example.net.", RecordType::SRV, None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(r.answers.len(), 1);
        let q = build_query("missing.example.net.", RecordType::A, None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(soa_of(&r), (600, 30));

        up.add_record("new.example.com. 60 IN A 192.0.2.99").await;
        let q = build_query("new.example.com.", RecordType::A, None);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(a_addrs(&r), vec![Ipv4Addr::new(192, 0, 2, 99)]);
        assert!(up.remove_records("new.example.com", RecordType::A).await);
        let r = udp_exchange(up.addr(), &q, T).await.expect("answer");
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn shutdown_closes_port() {
        let up = FakeUpstream::start_example().await;
        let addr = up.addr();
        up.shutdown().await;
        assert!(TcpStream::connect(addr).await.is_err());
        let q = build_query("www.example.com.", RecordType::A, None);
        assert!(udp_exchange(addr, &q, Duration::from_millis(200)).await.is_none());
    }
}
