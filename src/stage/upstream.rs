//! Upstream stage: the cache-miss path.
//!
//! Owns:
//! - building the wire query for one question (RD=1, EDNS0 OPT with our UDP
//!   payload size and the DO bit, CD bit when asked);
//! - sending it over UDP from a fresh, randomly-ported socket with a random ID,
//!   and accepting only a response that matches it (RFC 5452);
//! - retrying over TCP when the UDP answer is truncated (RFC 7766);
//! - failover across the configured servers, with per-server health so that
//!   recently failing servers are asked last;
//! - the `upstream`/`outcome` request counters;
//! - asking the caller's `Pace` before every try, so each packet sent can be
//!   metered (the shaper, `stage::shaper`).
//!
//! Must not:
//! - cache, rewrite, minimise or validate the answer: the response message is
//!   handed back as the upstream sent it and the caller decides what to do;
//! - synthesise answers: if every server fails we return `Err` and the caller
//!   answers SERVFAIL. We never answer without having asked a server;
//! - ask the same server twice in one `resolve` call, or take longer than
//!   `servers × timeout` (`× 2` for servers that needed the TCP retry);
//! - reuse sockets or IDs across tries, or hold a lock across an `.await`
//!   (health is kept in atomics).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::ProtoError;
use prometheus::{IntCounter, IntCounterVec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Consecutive failures after which a server is considered down and moved to
/// the back of the try order.
const FAILURES_BEFORE_DOWN: u32 = 3;
/// How long a server stays down after reaching `FAILURES_BEFORE_DOWN`; each
/// further consecutive failure doubles it, up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Length of the RFC 1035 §4.2.2 / RFC 7766 §8 TCP length prefix.
const TCP_PREFIX: usize = 2;
/// RFC 6891 §6.2.5: payload sizes below 512 are treated as 512.
const MIN_UDP_PAYLOAD: u16 = 512;

/// What a try costs against a cloud resolver's packet limit (DESIGN §7):
/// a UDP query is one packet, a TCP query about five (handshake, query,
/// acknowledgements, close).
pub const UDP_PACKETS: u32 = 1;
pub const TCP_PACKETS: u32 = 5;

/// Asked before every try `resolve_paced` makes, with what it will cost.
pub trait Pace {
    /// Resolves when `packets` may be sent; false means they may not, and the
    /// resolve ends with `UpstreamError::RateLimited` without sending them.
    fn pace(&self, packets: u32) -> impl std::future::Future<Output = bool> + Send;
}

/// Sends every try at once.
struct Unpaced;

impl Pace for Unpaced {
    async fn pace(&self, _packets: u32) -> bool {
        true
    }
}

/// Configuration of the upstream stage.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Servers in order of preference.
    pub servers: Vec<SocketAddr>,
    /// Time allowed for one try (one transport to one server).
    pub timeout: Duration,
    /// UDP payload size advertised in our EDNS0 OPT record (RFC 6891 §6.2.5).
    pub edns_udp_size: u16,
}

/// Metrics owned by the upstream stage.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// Labels `["upstream", "outcome"]`; outcome is one of `ok`, `mismatch`,
    /// `truncated`, `timeout`, `servfail`, `refused`, `error`.
    pub requests: IntCounterVec,
}

/// Why one try against one server failed.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    /// No matching response arrived within the per-try timeout.
    #[error("no matching response within {0:?}")]
    Timeout(Duration),
    /// The server answered, but with an rcode that is not an answer
    /// (anything but NOERROR and NXDOMAIN).
    #[error("server answered {0}")]
    Rcode(ResponseCode),
    /// Socket error, including ICMP port unreachable surfacing on the
    /// connected UDP socket and TCP connections closed mid-exchange.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The caller's `Pace` did not allow the try; nothing was sent.
    #[error("not sent: upstream rate limit")]
    Paced,
}

/// Why `resolve` could not produce an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No upstream servers are configured.
    #[error("no upstream servers configured")]
    NoServers,
    /// The question could not be encoded as a DNS query.
    #[error("cannot encode query: {0}")]
    Encode(ProtoError),
    /// Every server was tried once and none produced an answer.
    #[error("all {tried} upstream servers failed; last was {server}: {last}")]
    AllFailed {
        tried: usize,
        server: SocketAddr,
        last: TryError,
    },
    /// The caller's `Pace` stopped the next try (after `tried` servers failed).
    #[error("upstream rate limit reached after {tried} tries")]
    RateLimited { tried: usize },
}

/// Counters for one server, resolved once so the miss path does not hash
/// label values (or allocate label strings) per request.
struct Outcomes {
    ok: IntCounter,
    mismatch: IntCounter,
    truncated: IntCounter,
    timeout: IntCounter,
    servfail: IntCounter,
    refused: IntCounter,
    error: IntCounter,
}

impl Outcomes {
    fn new(requests: &IntCounterVec, server: SocketAddr) -> Self {
        let label = server.to_string();
        let counter = |outcome: &str| requests.with_label_values(&[label.as_str(), outcome]);
        Self {
            ok: counter("ok"),
            mismatch: counter("mismatch"),
            truncated: counter("truncated"),
            timeout: counter("timeout"),
            servfail: counter("servfail"),
            refused: counter("refused"),
            error: counter("error"),
        }
    }

    fn failure(&self, error: &TryError) -> &IntCounter {
        match error {
            TryError::Timeout(_) => &self.timeout,
            TryError::Rcode(ResponseCode::ServFail) => &self.servfail,
            TryError::Rcode(ResponseCode::Refused) => &self.refused,
            TryError::Rcode(_) | TryError::Io(_) | TryError::Paced => &self.error,
        }
    }
}

/// Health of one server. Atomics rather than a mutex: the state is advisory
/// (it only orders the servers), so a lost update between concurrent
/// resolves is harmless and nothing ever has to wait for it.
#[derive(Default)]
struct Health {
    consecutive_failures: AtomicU32,
    /// Milliseconds since `Upstreams::epoch` until which the server is down;
    /// 0 means up.
    down_until_ms: AtomicU64,
}

struct Server {
    addr: SocketAddr,
    outcomes: Outcomes,
    health: Health,
}

/// The question being forwarded, used to match responses to it.
struct Question<'a> {
    name: &'a Name,
    qtype: RecordType,
}

/// The configured upstream servers. `Send + Sync`; share it via `Arc`.
pub struct Upstreams {
    addrs: Vec<SocketAddr>,
    servers: Vec<Server>,
    timeout: Duration,
    edns_udp_size: u16,
    /// Reference point for the health deadlines stored in atomics.
    epoch: Instant,
}

impl Upstreams {
    pub fn new(settings: UpstreamSettings, metrics: UpstreamMetrics) -> Self {
        let servers = settings
            .servers
            .iter()
            .map(|&addr| Server {
                addr,
                outcomes: Outcomes::new(&metrics.requests, addr),
                health: Health::default(),
            })
            .collect();
        Self {
            addrs: settings.servers,
            servers,
            timeout: settings.timeout,
            edns_udp_size: settings.edns_udp_size.max(MIN_UDP_PAYLOAD),
            epoch: Instant::now(),
        }
    }

    /// The configured servers, in configured order.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The time allowed for one try.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Resolve one question; `dnssec_ok` sets the DO bit; `checking_disabled` the CD bit.
    ///
    /// Returns the first NOERROR or NXDOMAIN response from a server, tried in
    /// health order. Each server is tried at most once.
    pub async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> Result<Message, UpstreamError> {
        self.resolve_paced(name, qtype, dnssec_ok, checking_disabled, &Unpaced)
            .await
    }

    /// `resolve`, asking `pace` before every try (`UDP_PACKETS` for a UDP
    /// try, `TCP_PACKETS` for the TCP retry after truncation).
    pub async fn resolve_paced(
        &self,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
        checking_disabled: bool,
        pace: &impl Pace,
    ) -> Result<Message, UpstreamError> {
        if self.servers.is_empty() {
            return Err(UpstreamError::NoServers);
        }
        let question = Question { name, qtype };
        // Encoded once; each try only rewrites the ID in place.
        let mut wire = self.encode_query(&question, dnssec_ok, checking_disabled)?;
        // Sized to what we advertised: RFC 6891 §6.2.5 forbids a responder
        // from sending more over UDP. An oversized datagram is cut by the
        // kernel, fails to parse and is discarded like any other bad datagram.
        let mut udp_buf = vec![0u8; usize::from(self.edns_udp_size)];

        let order = self.try_order();
        let mut last = None;
        for (tried, &(_, index)) in order.iter().enumerate() {
            let server = &self.servers[index];
            let result = self
                .exchange(server, &question, &mut wire, &mut udp_buf, pace)
                .await
                .and_then(answer_or_failure);
            match result {
                Ok(response) => {
                    server.outcomes.ok.inc();
                    self.record_success(server);
                    return Ok(response);
                }
                // Not the server's fault: no health change, no counter.
                Err(TryError::Paced) => return Err(UpstreamError::RateLimited { tried }),
                Err(error) => {
                    server.outcomes.failure(&error).inc();
                    tracing::debug!(upstream = %server.addr, %error, "upstream try failed");
                    self.record_failure(server);
                    last = Some((server.addr, error));
                }
            }
        }
        let (server, last) = last.expect("at least one server was tried");
        Err(UpstreamError::AllFailed {
            tried: order.len(),
            server,
            last,
        })
    }

    /// Healthy servers first, then the down ones, each group in configured
    /// order. Down servers are still included: when everything is down we
    /// would rather ask than fail without trying.
    fn try_order(&self) -> Vec<(bool, usize)> {
        let now = self.now_ms();
        let mut order: Vec<(bool, usize)> = self
            .servers
            .iter()
            .enumerate()
            .map(|(index, server)| {
                let down = now < server.health.down_until_ms.load(Ordering::Relaxed);
                (down, index)
            })
            .collect();
        // Stable sort: keeps configured order within each group.
        order.sort_by_key(|&(down, _)| down);
        order
    }

    /// One server: UDP, then TCP if the UDP answer was truncated. Each
    /// transport gets its own `timeout`.
    async fn exchange(
        &self,
        server: &Server,
        question: &Question<'_>,
        wire: &mut [u8],
        udp_buf: &mut [u8],
        pace: &impl Pace,
    ) -> Result<Message, TryError> {
        if !pace.pace(UDP_PACKETS).await {
            return Err(TryError::Paced);
        }
        let response = self.within(exchange_udp(server, question, wire, udp_buf)).await?;
        if !response.metadata.truncation {
            return Ok(response);
        }
        // RFC 7766 §5 / RFC 1035 §4.2.1: a truncated UDP answer means "ask
        // again over TCP"; the partial answer itself is not used.
        server.outcomes.truncated.inc();
        if !pace.pace(TCP_PACKETS).await {
            return Err(TryError::Paced);
        }
        self.within(exchange_tcp(server, question, wire)).await
    }

    async fn within(
        &self,
        exchange: impl std::future::Future<Output = Result<Message, TryError>>,
    ) -> Result<Message, TryError> {
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(TryError::Timeout(self.timeout)))
    }

    /// Encodes the query with a 2-byte TCP length prefix in front, so that
    /// UDP sends `wire[2..]` and TCP sends the whole buffer in one write (two
    /// writes could be delayed by Nagle's algorithm against delayed ACKs).
    fn encode_query(
        &self,
        question: &Question<'_>,
        dnssec_ok: bool,
        checking_disabled: bool,
    ) -> Result<Vec<u8>, UpstreamError> {
        // ID 0 is a placeholder: every try writes a fresh random one.
        let mut message = Message::new(0, MessageType::Query, OpCode::Query);
        // We are a forwarder: the upstream must recurse for us (RFC 1035 §4.1.1).
        message.metadata.recursion_desired = true;
        // RFC 4035 §3.2.2: CD asks the upstream not to validate; passed through
        // so a validating stub downstream gets the data it asked for.
        message.metadata.checking_disabled = checking_disabled;
        message.add_query(Query::query(question.name.clone(), question.qtype));
        // RFC 6891 §6.1.1: EDNS0 OPT with our UDP payload size; DO (RFC 3225)
        // lives in the OPT flags.
        let mut edns = Edns::new();
        edns.set_max_payload(self.edns_udp_size)
            .set_version(0)
            .set_dnssec_ok(dnssec_ok);
        message.set_edns(edns);

        let body = message.to_vec().map_err(UpstreamError::Encode)?;
        // A single question can never exceed 64 KiB, but check rather than
        // truncate the length prefix.
        let len = u16::try_from(body.len()).map_err(|_| UpstreamError::Encode(ProtoError::from("query too long")))?;
        let mut wire = Vec::with_capacity(TCP_PREFIX + body.len());
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend_from_slice(&body);
        Ok(wire)
    }

    fn record_success(&self, server: &Server) {
        server.health.consecutive_failures.store(0, Ordering::Relaxed);
        server.health.down_until_ms.store(0, Ordering::Relaxed);
    }

    fn record_failure(&self, server: &Server) {
        let previous = server.health.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        let failures = previous.saturating_add(1);
        if failures < FAILURES_BEFORE_DOWN {
            return;
        }
        let backoff = backoff(failures - FAILURES_BEFORE_DOWN);
        let until = self.now_ms().saturating_add(millis(backoff));
        server.health.down_until_ms.store(until, Ordering::Relaxed);
        if failures == FAILURES_BEFORE_DOWN {
            // Logged on the transition only, so a dead upstream does not
            // produce a warning per query.
            tracing::warn!(upstream = %server.addr, failures, "upstream marked down");
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }
}

/// `MIN_BACKOFF × 2^doublings`, capped at `MAX_BACKOFF`.
fn backoff(doublings: u32) -> Duration {
    // 2^5 s already exceeds the cap; clamping the shift avoids overflow.
    MIN_BACKOFF.saturating_mul(1 << doublings.min(5)).min(MAX_BACKOFF)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// NOERROR and NXDOMAIN are answers (NXDOMAIN is authoritative data that the
/// caller may cache, RFC 2308). Anything else means this server could not
/// answer, so the next one should be asked.
fn answer_or_failure(response: Message) -> Result<Message, TryError> {
    match response.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(response),
        rcode => Err(TryError::Rcode(rcode)),
    }
}

/// Writes a fresh random ID into the query and returns it. `rand::random`
/// uses the thread-local CSPRNG, as RFC 5452 §9.2 requires IDs to be
/// unpredictable.
fn set_fresh_id(wire: &mut [u8]) -> u16 {
    let id: u16 = rand::random();
    wire[TCP_PREFIX..TCP_PREFIX + 2].copy_from_slice(&id.to_be_bytes());
    id
}

fn unspecified(server: SocketAddr) -> SocketAddr {
    let ip = match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    // Port 0: the kernel picks a random ephemeral source port, the second
    // source of entropy RFC 5452 §9.2 asks for next to the ID.
    SocketAddr::new(ip, 0)
}

async fn exchange_udp(
    server: &Server,
    question: &Question<'_>,
    wire: &mut [u8],
    buf: &mut [u8],
) -> Result<Message, TryError> {
    let id = set_fresh_id(wire);
    // A fresh socket per try, so every query gets its own random port.
    let socket = UdpSocket::bind(unspecified(server.addr)).await?;
    // Connected: the kernel drops datagrams from any other address/port
    // (RFC 5452 §9.1 requires the source to match), and ICMP unreachable is
    // reported as an error instead of us waiting for the timeout.
    socket.connect(server.addr).await?;
    socket.send(&wire[TCP_PREFIX..]).await?;
    loop {
        let len = socket.recv(buf).await?;
        // A non-matching datagram may be a spoofing attempt or a stray late
        // answer: drop it and keep waiting within the same deadline, rather
        // than letting it end the try (RFC 5452 §9.1).
        match matching_response(&buf[..len], id, question) {
            Some(response) => return Ok(response),
            None => server.outcomes.mismatch.inc(),
        }
    }
}

async fn exchange_tcp(server: &Server, question: &Question<'_>, wire: &mut [u8]) -> Result<Message, TryError> {
    let id = set_fresh_id(wire);
    let mut stream = TcpStream::connect(server.addr).await?;
    // RFC 7766 §8: every message is preceded by its length as a 2-byte
    // big-endian integer; `wire` already carries it.
    stream.write_all(wire).await?;
    let mut frame = Vec::new();
    loop {
        let len = stream.read_u16().await?;
        frame.resize(usize::from(len), 0);
        stream.read_exact(&mut frame).await?;
        // Same validation as UDP: on our own connection a mismatch means a
        // confused server, but it must still not be taken as the answer.
        match matching_response(&frame, id, question) {
            Some(response) => return Ok(response),
            None => server.outcomes.mismatch.inc(),
        }
    }
}

/// RFC 5452 §9.1: accept a response only if it parses, is a response (QR=1)
/// to a standard query, carries our ID, and repeats our question. The name is
/// compared case-insensitively (RFC 4343), so servers that normalise case or
/// echo 0x20-style mixed case still match.
fn matching_response(bytes: &[u8], id: u16, question: &Question<'_>) -> Option<Message> {
    let response = Message::from_vec(bytes).ok()?;
    let metadata = &response.metadata;
    let header_matches =
        metadata.message_type == MessageType::Response && metadata.id == id && metadata.op_code == OpCode::Query;
    let question_matches = match response.queries.as_slice() {
        [query] => {
            query.query_type() == question.qtype
                && query.query_class() == DNSClass::IN
                // Ignores the FQDN flag only; labels still compare fully.
                && query.name().eq_ignore_root(question.name)
        }
        _ => false,
    };
    (header_matches && question_matches).then_some(response)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;
    use std::str::FromStr;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};

    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};
    use prometheus::Opts;
    use tokio::net::TcpListener;

    use super::*;

    const TEST_TIMEOUT: Duration = Duration::from_millis(200);
    /// Generous guard so a broken implementation fails instead of hanging.
    const GUARD: Duration = Duration::from_secs(10);
    const ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const DECOY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);

    fn name() -> Name {
        Name::from_str("www.example.com.").unwrap()
    }

    fn metrics() -> UpstreamMetrics {
        let requests =
            IntCounterVec::new(Opts::new("upstream_requests_total", "test"), &["upstream", "outcome"]).unwrap();
        UpstreamMetrics { requests }
    }

    fn upstreams(servers: Vec<SocketAddr>, metrics: &UpstreamMetrics) -> Upstreams {
        Upstreams::new(
            UpstreamSettings {
                servers,
                timeout: TEST_TIMEOUT,
                edns_udp_size: 1232,
            },
            metrics.clone(),
        )
    }

    fn count(metrics: &UpstreamMetrics, server: SocketAddr, outcome: &str) -> u64 {
        metrics
            .requests
            .with_label_values(&[server.to_string().as_str(), outcome])
            .get()
    }

    async fn resolve(upstreams: &Upstreams) -> Result<Message, UpstreamError> {
        tokio::time::timeout(GUARD, upstreams.resolve(&name(), RecordType::A, false, false))
            .await
            .expect("resolve must not hang")
    }

    /// A response to `query` with the given rcode and, for NOERROR, one A
    /// record with address `ip`.
    fn reply(query: &Message, rcode: ResponseCode, ip: Ipv4Addr) -> Message {
        let mut response = Message::response(query.metadata.id, OpCode::Query);
        response.metadata.recursion_desired = true;
        response.metadata.recursion_available = true;
        response.metadata.response_code = rcode;
        response.add_queries(query.queries.iter().cloned());
        if rcode == ResponseCode::NoError {
            let owner = query.queries[0].name().clone();
            response.add_answer(Record::from_rdata(owner, 60, RData::A(A(ip))));
        }
        response
    }

    fn bytes(message: &Message) -> Vec<u8> {
        message.to_vec().unwrap()
    }

    fn first_a(message: &Message) -> Option<Ipv4Addr> {
        message.answers.iter().find_map(|record| match &record.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
    }

    /// What a test responder saw: source address and parsed query.
    type Seen = Arc<Mutex<Vec<(SocketAddr, Message)>>>;

    /// UDP responder on 127.0.0.1: for every query, sends the datagrams
    /// `respond` returns, in order.
    async fn udp_responder<F>(respond: F) -> (SocketAddr, Seen)
    where
        F: Fn(&Message) -> Vec<Vec<u8>> + Send + 'static,
    {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Seen::default();
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let (len, src) = socket.recv_from(&mut buf).await.unwrap();
                let query = Message::from_vec(&buf[..len]).unwrap();
                for datagram in respond(&query) {
                    socket.send_to(&datagram, src).await.unwrap();
                }
                log.lock().unwrap().push((src, query));
            }
        });
        (addr, seen)
    }

    /// TCP responder on `addr` answering each framed query with `respond`.
    fn tcp_responder<F>(listener: TcpListener, respond: F)
    where
        F: Fn(&Message) -> Message + Send + Sync + 'static,
    {
        let respond = Arc::new(respond);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let respond = Arc::clone(&respond);
                tokio::spawn(async move {
                    let len = stream.read_u16().await.unwrap();
                    let mut frame = vec![0u8; usize::from(len)];
                    stream.read_exact(&mut frame).await.unwrap();
                    let query = Message::from_vec(&frame).unwrap();
                    let response = bytes(&respond(&query));
                    let mut out = (response.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&response);
                    stream.write_all(&out).await.unwrap();
                });
            }
        });
    }

    /// A UDP socket that receives but never answers.
    async fn silent() -> (SocketAddr, UdpSocket) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (socket.local_addr().unwrap(), socket)
    }

    fn answering(query: &Message) -> Vec<Vec<u8>> {
        vec![bytes(&reply(query, ResponseCode::NoError, ANSWER))]
    }

    #[test]
    fn upstreams_is_send_sync_and_resolve_is_send() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: &T) {}
        let upstreams = upstreams(vec![], &metrics());
        assert_send_sync(&upstreams);
        let name = name();
        let future = upstreams.resolve(&name, RecordType::A, false, false);
        assert_send(&future);
        let error = UpstreamError::NoServers;
        assert_send_sync(&error);
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_thirty() {
        let seconds: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(seconds, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[tokio::test]
    async fn no_servers_is_an_error() {
        let upstreams = upstreams(vec![], &metrics());
        assert!(matches!(resolve(&upstreams).await, Err(UpstreamError::NoServers)));
    }

    #[tokio::test]
    async fn normal_answer_and_query_shape() {
        let (addr, seen) = udp_responder(answering).await;
        let metrics = metrics();
        let upstreams = upstreams(vec![addr], &metrics);

        let response = tokio::time::timeout(GUARD, upstreams.resolve(&name(), RecordType::A, true, true))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first_a(&response), Some(ANSWER));
        assert_eq!(count(&metrics, addr, "ok"), 1);

        let seen = seen.lock().unwrap();
        let (_, query) = &seen[0];
        assert_eq!(query.metadata.message_type, MessageType::Query);
        assert!(query.metadata.recursion_desired);
        assert!(query.metadata.checking_disabled);
        assert_eq!(query.queries.len(), 1);
        assert_eq!(query.queries[0].name(), &name());
        assert_eq!(query.queries[0].query_type(), RecordType::A);
        assert_eq!(query.queries[0].query_class(), DNSClass::IN);
        let edns = query.edns.as_ref().expect("EDNS0 OPT present");
        assert_eq!(edns.max_payload(), 1232);
        assert_eq!(edns.version(), 0);
        assert!(edns.flags().dnssec_ok);
    }

    #[tokio::test]
    async fn do_and_cd_clear_when_not_asked() {
        let (addr, seen) = udp_responder(answering).await;
        let upstreams = upstreams(vec![addr], &metrics());
        resolve(&upstreams).await.unwrap();
        let seen = seen.lock().unwrap();
        let (_, query) = &seen[0];
        assert!(!query.metadata.checking_disabled);
        assert!(!query.edns.as_ref().unwrap().flags().dnssec_ok);
    }

    #[tokio::test]
    async fn nxdomain_is_an_answer() {
        let (addr, _seen) =
            udp_responder(|query: &Message| vec![bytes(&reply(query, ResponseCode::NXDomain, ANSWER))]).await;
        let metrics = metrics();
        let upstreams = upstreams(vec![addr], &metrics);
        let response = resolve(&upstreams).await.unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(count(&metrics, addr, "ok"), 1);
    }

    #[tokio::test]
    async fn wrong_id_then_correct_is_accepted() {
        let (addr, _seen) = udp_responder(|query: &Message| {
            let mut spoof = reply(query, ResponseCode::NoError, DECOY);
            spoof.metadata.id = query.metadata.id.wrapping_add(1);
            vec![bytes(&spoof), bytes(&reply(query, ResponseCode::NoError, ANSWER))]
        })
        .await;
        let metrics = metrics();
        let upstreams = upstreams(vec![addr], &metrics);
        let response = resolve(&upstreams).await.unwrap();
        assert_eq!(first_a(&response), Some(ANSWER));
        assert_eq!(count(&metrics, addr, "mismatch"), 1);
        assert_eq!(count(&metrics, addr, "ok"), 1);
    }

    #[tokio::test]
    async fn wrong_question_then_right_is_accepted_case_insensitively() {
        let (addr, _seen) = udp_responder(|query: &Message| {
            let mut wrong_name = reply(query, ResponseCode::NoError, DECOY);
            wrong_name.queries[0].set_name(Name::from_str("evil.example.com.").unwrap());
            let mut wrong_type = reply(query, ResponseCode::NoError, DECOY);
            wrong_type.queries[0].set_query_type(RecordType::AAAA);
            let mut wrong_class = reply(query, ResponseCode::NoError, DECOY);
            wrong_class.queries[0].set_query_class(DNSClass::CH);
            let mut right = reply(query, ResponseCode::NoError, ANSWER);
            right.queries[0].set_name(Name::from_ascii("WwW.ExAmPlE.CoM.").unwrap());
            vec![
                bytes(&wrong_name),
                bytes(&wrong_type),
                bytes(&wrong_class),
                bytes(&right),
            ]
        })
        .await;
        let metrics = metrics();
        let upstreams = upstreams(vec![addr], &metrics);
        let response = resolve(&upstreams).await.unwrap();
        assert_eq!(first_a(&response), Some(ANSWER));
        assert_eq!(count(&metrics, addr, "mismatch"), 3);
    }

    #[tokio::test]
    async fn garbage_and_queries_are_discarded() {
        let (addr, _seen) = udp_responder(|query: &Message| {
            let mut not_response = reply(query, ResponseCode::NoError, DECOY);
            not_response.metadata.message_type = MessageType::Query;
            vec![
                vec![0xde, 0xad, 0xbe, 0xef],
                bytes(&not_response),
                bytes(&reply(query, ResponseCode::NoError, ANSWER)),
            ]
        })
        .await;
        let metrics = metrics();
        let upstreams = upstreams(vec![addr], &metrics);
        let response = resolve(&upstreams).await.unwrap();
        assert_eq!(first_a(&response), Some(ANSWER));
        assert_eq!(count(&metrics, addr, "mismatch"), 2);
    }

    #[tokio::test]
    async fn only_mismatches_end_in_timeout() {
        let (addr, _seen) = udp_responder(|query: &Message| {
            let mut spoof = reply(query, ResponseCode::NoError, DECOY);
            spoof.metadata.id ^= 0x8000;
            vec![bytes(&spoof)]
        })
        .await;
        let metrics = metrics();
        let upstreams = upstreams(vec![addr], &metrics);
        let error = resolve(&upstreams).await.unwrap_err();
        assert!(matches!(
            error,
            UpstreamError::AllFailed {
                last: TryError::Timeout(_),
                ..
            }
        ));
        assert_eq!(count(&metrics, addr, "mismatch"), 1);
        assert_eq!(count(&metrics, addr, "timeout"), 1);
    }

    /// Binds UDP and TCP on the same 127.0.0.1 port, retrying if the TCP
    /// port happens to be taken.
    async fn udp_and_tcp_pair() -> (UdpSocket, TcpListener) {
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                return (udp, tcp);
            }
        }
        panic!("no port free for both UDP and TCP");
    }

    #[tokio::test]
    async fn truncated_udp_answer_is_retried_over_tcp() {
        let (udp, tcp) = udp_and_tcp_pair().await;
        let addr = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let (len, src) = udp.recv_from(&mut buf).await.unwrap();
                let query = Message::from_vec(&buf[..len]).unwrap();
                let mut truncated = reply(&query, ResponseCode::NoError, DECOY);
                truncated.answers.clear();
                truncated.metadata.truncation = true;
                udp.send_to(&bytes(&truncated), src).await.unwrap();
            }
        });
        tcp_responder(tcp, |query: &Message| reply(query, ResponseCode::NoError, ANSWER));

        let metrics = metrics();
        let upstreams = upstreams(vec![addr], &metrics);
        let response = resolve(&upstreams).await.unwrap();
        assert!(!response.metadata.truncation);
        assert_eq!(first_a(&response), Some(ANSWER));
        assert_eq!(count(&metrics, addr, "truncated"), 1);
        assert_eq!(count(&metrics, addr, "ok"), 1);
    }

    #[tokio::test]
    async fn tcp_answer_with_wrong_id_is_skipped() {
        let (udp, tcp) = udp_and_tcp_pair().await;
        let addr = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            let (len, src) = udp.recv_from(&mut buf).await.unwrap();
            let query = Message::from_vec(&buf[..len]).unwrap();
            let mut truncated = reply(&query, ResponseCode::NoError, DECOY);
            truncated.metadata.truncation = true;
            udp.send_to(&bytes(&truncated), src).await.unwrap();
        });
        tokio::spawn(async move {
            let (mut stream, _) = tcp.accept().await.unwrap();
            let len = stream.read_u16().await.unwrap();
            let mut frame = vec![0u8; usize::from(len)];
            stream.read_exact(&mut frame).await.unwrap();
            let query = Message::from_vec(&frame).unwrap();
            let mut wrong = reply(&query, ResponseCode::NoError, DECOY);
            wrong.metadata.id = query.metadata.id.wrapping_add(7);
            let right = reply(&query, ResponseCode::NoError, ANSWER);
            let mut out = Vec::new();
            for message in [wrong, right] {
                let wire = bytes(&message);
                out.extend_from_slice(&(wire.len() as u16).to_be_bytes());
                out.extend_from_slice(&wire);
            }
            stream.write_all(&out).await.unwrap();
        });

        let metrics = metrics();
        let upstreams = upstreams(vec![addr], &metrics);
        let response = resolve(&upstreams).await.unwrap();
        assert_eq!(first_a(&response), Some(ANSWER));
        assert_eq!(count(&metrics, addr, "mismatch"), 1);
    }

    #[tokio::test]
    async fn silent_first_server_fails_over_to_second() {
        let (quiet, _socket) = silent().await;
        let (good, _seen) = udp_responder(answering).await;
        let metrics = metrics();
        let upstreams = upstreams(vec![quiet, good], &metrics);
        let response = resolve(&upstreams).await.unwrap();
        assert_eq!(first_a(&response), Some(ANSWER));
        assert_eq!(count(&metrics, quiet, "timeout"), 1);
        assert_eq!(count(&metrics, good, "ok"), 1);
    }

    #[tokio::test]
    async fn servfail_first_server_fails_over_to_second() {
        let (bad, _bad_seen) =
            udp_responder(|query: &Message| vec![bytes(&reply(query, ResponseCode::ServFail, ANSWER))]).await;
        let (good, _seen) = udp_responder(answering).await;
        let metrics = metrics();
        let upstreams = upstreams(vec![bad, good], &metrics);
        let response = resolve(&upstreams).await.unwrap();
        assert_eq!(first_a(&response), Some(ANSWER));
        assert_eq!(count(&metrics, bad, "servfail"), 1);
        assert_eq!(count(&metrics, good, "ok"), 1);
    }

    #[tokio::test]
    async fn refused_and_closed_port_fail_over() {
        let (refusing, _seen) =
            udp_responder(|query: &Message| vec![bytes(&reply(query, ResponseCode::Refused, ANSWER))]).await;
        // A port nobody listens on: ICMP port unreachable surfaces as an
        // error on the connected socket.
        let closed = {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.local_addr().unwrap()
        };
        let (good, _good_seen) = udp_responder(answering).await;
        let metrics = metrics();
        let upstreams = upstreams(vec![refusing, closed, good], &metrics);
        let response = resolve(&upstreams).await.unwrap();
        assert_eq!(first_a(&response), Some(ANSWER));
        assert_eq!(count(&metrics, refusing, "refused"), 1);
        // Usually "error" (ECONNREFUSED); "timeout" if ICMP was suppressed.
        assert_eq!(count(&metrics, closed, "error") + count(&metrics, closed, "timeout"), 1);
    }

    #[tokio::test]
    async fn all_servers_failing_returns_err_after_trying_each_once() {
        let (quiet, _socket) = silent().await;
        let (bad, bad_seen) =
            udp_responder(|query: &Message| vec![bytes(&reply(query, ResponseCode::ServFail, ANSWER))]).await;
        let (formerr, formerr_seen) =
            udp_responder(|query: &Message| vec![bytes(&reply(query, ResponseCode::FormErr, ANSWER))]).await;
        let metrics = metrics();
        let upstreams = upstreams(vec![quiet, bad, formerr], &metrics);

        let started = Instant::now();
        let error = resolve(&upstreams).await.unwrap_err();
        // Bound is 3 × 200 ms; the assertion is loose on purpose.
        assert!(started.elapsed() < Duration::from_secs(5));
        match error {
            UpstreamError::AllFailed { tried, server, last } => {
                assert_eq!(tried, 3);
                assert_eq!(server, formerr);
                assert!(matches!(last, TryError::Rcode(ResponseCode::FormErr)));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(bad_seen.lock().unwrap().len(), 1);
        assert_eq!(formerr_seen.lock().unwrap().len(), 1);
        assert_eq!(count(&metrics, quiet, "timeout"), 1);
        assert_eq!(count(&metrics, bad, "servfail"), 1);
        assert_eq!(count(&metrics, formerr, "error"), 1);
    }

    #[tokio::test]
    async fn failing_server_is_tried_last_once_down() {
        let bad_hits = Arc::new(AtomicUsize::new(0));
        let hits = Arc::clone(&bad_hits);
        let (bad, _bad_seen) = udp_responder(move |query: &Message| {
            hits.fetch_add(1, Ordering::SeqCst);
            vec![bytes(&reply(query, ResponseCode::ServFail, ANSWER))]
        })
        .await;
        let (good, _seen) = udp_responder(answering).await;
        let metrics = metrics();
        let upstreams = upstreams(vec![bad, good], &metrics);

        for _ in 0..FAILURES_BEFORE_DOWN {
            resolve(&upstreams).await.unwrap();
        }
        assert_eq!(bad_hits.load(Ordering::SeqCst), 3);
        // Now down: the healthy server answers and the bad one is not asked.
        resolve(&upstreams).await.unwrap();
        resolve(&upstreams).await.unwrap();
        assert_eq!(bad_hits.load(Ordering::SeqCst), 3);
        assert_eq!(count(&metrics, good, "ok"), 5);
    }

    #[tokio::test]
    async fn down_servers_are_still_tried_when_all_are_down() {
        let (good, seen) = udp_responder(answering).await;
        let upstreams = upstreams(vec![good], &metrics());
        for _ in 0..FAILURES_BEFORE_DOWN {
            upstreams.record_failure(&upstreams.servers[0]);
        }
        assert_eq!(upstreams.try_order(), [(true, 0)]);
        resolve(&upstreams).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Success brings it back up.
        assert_eq!(upstreams.try_order(), [(false, 0)]);
    }

    #[tokio::test]
    async fn source_ports_and_ids_vary_across_queries() {
        let (addr, seen) = udp_responder(answering).await;
        let upstreams = upstreams(vec![addr], &metrics());
        for _ in 0..8 {
            resolve(&upstreams).await.unwrap();
        }
        let seen = seen.lock().unwrap();
        let ports: HashSet<u16> = seen.iter().map(|(src, _)| src.port()).collect();
        let ids: HashSet<u16> = seen.iter().map(|(_, query)| query.metadata.id).collect();
        // Random 16-bit values: 8 draws all colliding is practically impossible,
        // while exact distinctness could flake.
        assert!(ports.len() > 1, "source ports did not vary: {ports:?}");
        assert!(ids.len() > 1, "IDs did not vary: {ids:?}");
    }
}
