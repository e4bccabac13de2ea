//! The cluster index's own wire format (DESIGN §5): full snapshots of the
//! reduced objects and ordered deltas of `model::Change`s, each with the
//! version the index published them at. The hub encodes with it and the
//! node agent's `hub` source decodes with it; neither knows the other.
//!
//! Owns: `Objects` (the reduced Services and EndpointSlices as one
//! cloneable state, what a snapshot is taken of), the frame encoding, and
//! `FrameReader`, the incremental decoder of a stream of frames. Must not:
//! do I/O, or trust a length or count it reads: every length is checked
//! against the bytes present and a cap before use, nothing is allocated in
//! proportion to a number the peer chose, and bad input is an error, never a
//! panic.
//!
//! Written by hand (varints and length-prefixed strings, ~600 lines): the
//! model types carry no serde derives, and a hand-written reader makes the
//! bounds above explicit.
//!
//! A stream is the 4-byte `MAGIC` (which carries the format version), then
//! frames. A frame is `varint(length) kind payload`, `length` counting the
//! kind byte and the payload:
//!
//! | kind | frame     | payload |
//! |------|-----------|---------|
//! | 1    | snapshot  | origin (u64 LE), version, namespaces: `ns, services, slices`… |
//! | 2    | delta     | version, changes: `tag, ns, body`… |
//! | 3    | heartbeat | origin (u64 LE), version |
//!
//! Integers are LEB128 varints; strings `varint(len) UTF-8`; lists
//! `varint(count) items`; an address `4 a.b.c.d` or `6` and 16 bytes. The
//! origin names a sequence of versions (one hub process): versions from
//! different origins are not comparable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Buf, BytesMut};

use super::model::{Change, Endpoint, EndpointSlice, Port, Protocol, Service, ServiceKind};

/// Where a hub serves the stream (`GET`, query `origin=O&version=V`).
pub const INDEX_PATH: &str = "/v1/index";
/// The stream's media type.
pub const CONTENT_TYPE: &str = "application/x-nodens-index";

/// The stream preamble: "NDX" and the format version.
pub const MAGIC: [u8; 4] = *b"NDX\x01";
/// The largest frame a reader accepts by default: a snapshot of a cluster
/// ten times the size DESIGN §9 plans for still fits (~25 MiB there).
pub const MAX_FRAME: usize = 256 << 20;

const KIND_SNAPSHOT: u8 = 1;
const KIND_DELTA: u8 = 2;
const KIND_HEARTBEAT: u8 = 3;

// Caps on what one item may claim; Kubernetes' own limits are far below.
/// Names (DNS-1123: 253), hostnames (63), ExternalName targets (253).
const MAX_STR: usize = 1024;
/// Capacity reserved for a list up front; longer lists grow as items decode.
const PREALLOC: usize = 1024;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("not a nodens index stream (bad preamble {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("truncated: the input ends inside {0}")]
    Truncated(&'static str),
    #[error("{what} of {len} exceeds the limit of {max}")]
    TooLarge { what: &'static str, len: u64, max: u64 },
    #[error("unknown {what} tag {tag}")]
    BadTag { what: &'static str, tag: u8 },
    #[error("{0} is not UTF-8")]
    BadUtf8(&'static str),
    #[error("a varint longer than 64 bits")]
    BadVarint,
    #[error("{0} bytes left over after a frame")]
    Trailing(usize),
}

/// (namespace, name).
pub type Key = (Box<str>, Box<str>);

/// The reduced objects as one state: what a snapshot holds. Persistent maps,
/// so a copy for encoding costs O(1) and the hub can take it under a lock
/// and encode outside it. Ordered by key, so snapshots group by namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    services: imbl::OrdMap<Key, Service>,
    slices: imbl::OrdMap<Key, EndpointSlice>,
}

impl Objects {
    /// Applies changes in order, as `IndexWriter` records them.
    pub fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::UpsertService(s) => {
                    self.services.insert((s.namespace.clone(), s.name.clone()), s.clone());
                }
                Change::DeleteService { namespace, name } => {
                    self.services.remove(&(namespace.clone(), name.clone()));
                }
                Change::UpsertSlice(s) => {
                    self.slices.insert((s.namespace.clone(), s.name.clone()), s.clone());
                }
                Change::DeleteSlice { namespace, name } => {
                    self.slices.remove(&(namespace.clone(), name.clone()));
                }
            }
        }
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// The objects as `IndexWriter::replace_all` takes them.
    pub fn to_lists(&self) -> (Vec<Service>, Vec<EndpointSlice>) {
        (self.services().cloned().collect(), self.slices().cloned().collect())
    }
}

/// A decoded snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub origin: u64,
    pub version: u64,
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// The whole state at `version`: replaces whatever the reader had.
    Snapshot(Snapshot),
    /// The changes published at `version`, to apply after the previous frame.
    Delta { version: u64, changes: Vec<Change> },
    /// Nothing changed; the sender is alive and at `version`.
    Heartbeat { origin: u64, version: u64 },
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// A frame of `objects` at `version`, length prefix included.
pub fn encode_snapshot(origin: u64, version: u64, objects: &Objects) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + 40 * objects.service_count() + 120 * objects.slice_count());
    body.push(KIND_SNAPSHOT);
    body.extend_from_slice(&origin.to_le_bytes());
    put_varint(&mut body, version);
    // Both maps are ordered by (namespace, name): walk them side by side, one group per namespace.
    let mut services = objects.services.iter().peekable();
    let mut slices = objects.slices.iter().peekable();
    let mut groups = Vec::new();
    loop {
        let ns = match (services.peek(), slices.peek()) {
            (None, None) => break,
            (Some((a, _)), None) => a.0.clone(),
            (None, Some((b, _))) => b.0.clone(),
            (Some((a, _)), Some((b, _))) => a.0.clone().min(b.0.clone()),
        };
        let mut group = Vec::new();
        put_str(&mut group, &ns);
        let in_ns: Vec<&Service> =
            std::iter::from_fn(|| services.next_if(|(k, _)| k.0 == ns).map(|(_, s)| s)).collect();
        put_varint(&mut group, in_ns.len() as u64);
        in_ns.iter().for_each(|s| put_service(&mut group, s));
        let in_ns: Vec<&EndpointSlice> =
            std::iter::from_fn(|| slices.next_if(|(k, _)| k.0 == ns).map(|(_, s)| s)).collect();
        put_varint(&mut group, in_ns.len() as u64);
        in_ns.iter().for_each(|s| put_slice(&mut group, s));
        groups.push(group);
    }
    put_varint(&mut body, groups.len() as u64);
    groups.iter().for_each(|g| body.extend_from_slice(g));
    framed(body)
}

/// A frame of the changes published at `version`, length prefix included.
pub fn encode_delta(version: u64, changes: &[Change]) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + 64 * changes.len());
    body.push(KIND_DELTA);
    put_varint(&mut body, version);
    put_varint(&mut body, changes.len() as u64);
    for change in changes {
        match change {
            Change::UpsertService(s) => {
                body.push(0);
                put_str(&mut body, &s.namespace);
                put_service(&mut body, s);
            }
            Change::DeleteService { namespace, name } => {
                body.push(1);
                put_str(&mut body, namespace);
                put_str(&mut body, name);
            }
            Change::UpsertSlice(s) => {
                body.push(2);
                put_str(&mut body, &s.namespace);
                put_slice(&mut body, s);
            }
            Change::DeleteSlice { namespace, name } => {
                body.push(3);
                put_str(&mut body, namespace);
                put_str(&mut body, name);
            }
        }
    }
    framed(body)
}

/// A heartbeat frame, length prefix included.
pub fn encode_heartbeat(origin: u64, version: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(20);
    body.push(KIND_HEARTBEAT);
    body.extend_from_slice(&origin.to_le_bytes());
    put_varint(&mut body, version);
    framed(body)
}

fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 10);
    put_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

fn put_ips(out: &mut Vec<u8>, ips: &[IpAddr]) {
    put_varint(out, ips.len() as u64);
    ips.iter().for_each(|ip| put_ip(out, ip));
}

fn put_ports(out: &mut Vec<u8>, ports: &[Port]) {
    put_varint(out, ports.len() as u64);
    for p in ports {
        put_str(out, &p.name);
        out.push(match p.protocol {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
            Protocol::Sctp => 2,
        });
        put_varint(out, p.port.into());
    }
}

/// A Service without its namespace (the group or the change carries it).
fn put_service(out: &mut Vec<u8>, s: &Service) {
    put_str(out, &s.name);
    match &s.kind {
        ServiceKind::ClusterIp(ips) => {
            out.push(0);
            put_ips(out, ips);
        }
        ServiceKind::Headless => out.push(1),
        ServiceKind::ExternalName(target) => {
            out.push(2);
            put_str(out, target);
        }
    }
    out.push(s.publish_not_ready as u8);
    put_ports(out, &s.ports);
}

/// An EndpointSlice without its namespace.
fn put_slice(out: &mut Vec<u8>, s: &EndpointSlice) {
    put_str(out, &s.name);
    put_str(out, &s.service);
    put_ports(out, &s.ports);
    put_varint(out, s.endpoints.len() as u64);
    for e in s.endpoints.iter() {
        let flags = e.ready as u8 | (e.terminating as u8) << 1 | (e.hostname.is_some() as u8) << 2;
        out.push(flags);
        if let Some(h) = &e.hostname {
            put_str(out, h);
        }
        put_ips(out, &e.addresses);
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Decodes one frame body (kind and payload, without the length prefix).
pub fn decode_frame(body: &[u8]) -> Result<Frame, CodecError> {
    let mut r = Reader(body);
    let frame = match r.u8("the frame kind")? {
        KIND_SNAPSHOT => {
            let origin = r.u64_le("the origin")?;
            let version = r.varint("the version")?;
            let (mut services, mut slices) = (Vec::new(), Vec::new());
            for _ in 0..r.count("namespaces", usize::MAX)? {
                let ns: Box<str> = r.str("a namespace")?;
                let n = r.count("services", usize::MAX)?;
                services.reserve(n.min(PREALLOC));
                for _ in 0..n {
                    services.push(r.service(ns.clone())?);
                }
                let n = r.count("slices", usize::MAX)?;
                slices.reserve(n.min(PREALLOC));
                for _ in 0..n {
                    slices.push(r.slice(ns.clone())?);
                }
            }
            Frame::Snapshot(Snapshot {
                origin,
                version,
                services,
                slices,
            })
        }
        KIND_DELTA => {
            let version = r.varint("the version")?;
            let n = r.count("changes", usize::MAX)?;
            let mut changes = Vec::with_capacity(n.min(PREALLOC));
            for _ in 0..n {
                let tag = r.u8("a change")?;
                let namespace = r.str("a namespace")?;
                changes.push(match tag {
                    0 => Change::UpsertService(r.service(namespace)?),
                    1 => Change::DeleteService {
                        namespace,
                        name: r.str("a name")?,
                    },
                    2 => Change::UpsertSlice(r.slice(namespace)?),
                    3 => Change::DeleteSlice {
                        namespace,
                        name: r.str("a name")?,
                    },
                    tag => return Err(CodecError::BadTag { what: "change", tag }),
                });
            }
            Frame::Delta { version, changes }
        }
        KIND_HEARTBEAT => Frame::Heartbeat {
            origin: r.u64_le("the origin")?,
            version: r.varint("the version")?,
        },
        tag => return Err(CodecError::BadTag { what: "frame", tag }),
    };
    match r.0.len() {
        0 => Ok(frame),
        n => Err(CodecError::Trailing(n)),
    }
}

/// A cursor over a frame body; every read checks the bytes left.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn u64_le(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        match read_varint(self.0)? {
            Some((v, used)) => {
                self.0 = &self.0[used..];
                Ok(v)
            }
            None => Err(CodecError::Truncated(what)),
        }
    }

    /// A list length: at most `max`, and at most the bytes left (every item
    /// takes one byte or more), so a lying count fails before any work.
    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, CodecError> {
        let n = self.varint(what)?;
        let max = max.min(self.0.len());
        if n > max as u64 {
            return Err(CodecError::TooLarge {
                what,
                len: n,
                max: max as u64,
            });
        }
        Ok(n as usize)
    }

    fn str(&mut self, what: &'static str) -> Result<Box<str>, CodecError> {
        let n = self.varint(what)?;
        if n > MAX_STR as u64 {
            return Err(CodecError::TooLarge {
                what,
                len: n,
                max: MAX_STR as u64,
            });
        }
        let b = self.take(n as usize, what)?;
        std::str::from_utf8(b)
            .map(Into::into)
            .map_err(|_| CodecError::BadUtf8(what))
    }

    fn ip(&mut self) -> Result<IpAddr, CodecError> {
        match self.u8("an address")? {
            4 => {
                let b: [u8; 4] = self.take(4, "an IPv4 address")?.try_into().expect("4 bytes");
                Ok(IpAddr::V4(Ipv4Addr::from(b)))
            }
            6 => {
                let b: [u8; 16] = self.take(16, "an IPv6 address")?.try_into().expect("16 bytes");
                Ok(IpAddr::V6(Ipv6Addr::from(b)))
            }
            tag => Err(CodecError::BadTag { what: "address", tag }),
        }
    }

    fn ips(&mut self, what: &'static str) -> Result<Box<[IpAddr]>, CodecError> {
        // Kubernetes: 2 cluster IPs per service, 100 addresses per endpoint.
        let n = self.count(what, 1024)?;
        (0..n).map(|_| self.ip()).collect()
    }

    fn ports(&mut self) -> Result<Box<[Port]>, CodecError> {
        let n = self.count("ports", 65_536)?;
        let mut ports = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            let name = self.str("a port name")?;
            let protocol = match self.u8("a protocol")? {
                0 => Protocol::Tcp,
                1 => Protocol::Udp,
                2 => Protocol::Sctp,
                tag => return Err(CodecError::BadTag { what: "protocol", tag }),
            };
            let port = self.varint("a port")?;
            let port = u16::try_from(port).map_err(|_| CodecError::TooLarge {
                what: "a port",
                len: port,
                max: u16::MAX.into(),
            })?;
            ports.push(Port { name, protocol, port });
        }
        Ok(ports.into())
    }

    fn service(&mut self, namespace: Box<str>) -> Result<Service, CodecError> {
        let name = self.str("a service name")?;
        let kind = match self.u8("a service kind")? {
            0 => ServiceKind::ClusterIp(self.ips("cluster IPs")?),
            1 => ServiceKind::Headless,
            2 => ServiceKind::ExternalName(self.str("an external name")?),
            tag => {
                return Err(CodecError::BadTag {
                    what: "service kind",
                    tag,
                })
            }
        };
        let publish_not_ready = match self.u8("service flags")? {
            0 => false,
            1 => true,
            tag => {
                return Err(CodecError::BadTag {
                    what: "service flags",
                    tag,
                })
            }
        };
        Ok(Service {
            namespace,
            name,
            kind,
            ports: self.ports()?,
            publish_not_ready,
        })
    }

    fn slice(&mut self, namespace: Box<str>) -> Result<EndpointSlice, CodecError> {
        let name = self.str("a slice name")?;
        let service = self.str("a slice's service")?;
        let ports = self.ports()?;
        let n = self.count("endpoints", usize::MAX)?;
        let mut endpoints = Vec::with_capacity(n.min(PREALLOC));
        for _ in 0..n {
            let flags = self.u8("endpoint flags")?;
            if flags > 0b111 {
                return Err(CodecError::BadTag {
                    what: "endpoint flags",
                    tag: flags,
                });
            }
            let hostname = match flags & 0b100 {
                0 => None,
                _ => Some(self.str("a hostname")?),
            };
            endpoints.push(Endpoint {
                addresses: self.ips("endpoint addresses")?,
                hostname,
                ready: flags & 1 != 0,
                terminating: flags & 0b10 != 0,
            });
        }
        Ok(EndpointSlice {
            namespace,
            name,
            service,
            ports,
            endpoints: endpoints.into(),
        })
    }
}

/// A varint at the start of `b`: `Ok(None)` if `b` ends inside it.
fn read_varint(b: &[u8]) -> Result<Option<(u64, usize)>, CodecError> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate() {
        if i == 9 && byte > 1 {
            return Err(CodecError::BadVarint);
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    Ok(None)
}

/// Reads frames from a byte stream that arrives in pieces: the preamble,
/// then one length-prefixed frame at a time. Its buffer holds at most one
/// frame (bounded by `max_frame`) plus the last piece fed; it grows only as
/// bytes arrive, never from a length prefix.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
    preamble_seen: bool,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new(MAX_FRAME)
    }
}

impl FrameReader {
    pub fn new(max_frame: usize) -> FrameReader {
        FrameReader {
            buf: BytesMut::new(),
            max_frame,
            preamble_seen: false,
        }
    }

    /// Adds bytes received.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame with its encoded size, `Ok(None)` until one has
    /// arrived. After an error the stream is unusable.
    pub fn next_frame(&mut self) -> Result<Option<(Frame, usize)>, CodecError> {
        if !self.preamble_seen {
            if self.buf.len() < MAGIC.len() {
                return Ok(None);
            }
            let got: [u8; 4] = self.buf[..4].try_into().expect("4 bytes");
            if got != MAGIC {
                return Err(CodecError::BadMagic(got));
            }
            self.buf.advance(MAGIC.len());
            self.preamble_seen = true;
        }
        let Some((len, head)) = read_varint(&self.buf)? else {
            return Ok(None);
        };
        if len > self.max_frame as u64 {
            return Err(CodecError::TooLarge {
                what: "a frame",
                len,
                max: self.max_frame as u64,
            });
        }
        let len = len as usize;
        if self.buf.len() < head + len {
            return Ok(None);
        }
        self.buf.advance(head);
        let body = self.buf.split_to(len);
        Ok(Some((decode_frame(&body)?, head + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, protocol: Protocol, port: u16) -> Port {
        Port {
            name: name.into(),
            protocol,
            port,
        }
    }

    fn objects() -> Objects {
        let mut o = Objects::default();
        o.apply(&[
            Change::UpsertService(Service {
                namespace: "shop".into(),
                name: "web".into(),
                kind: ServiceKind::ClusterIp(vec!["10.96.0.5".parse().unwrap(), "fd00::5".parse().unwrap()].into()),
                ports: vec![port("http", Protocol::Tcp, 80), port("dns", Protocol::Udp, 53)].into(),
                publish_not_ready: false,
            }),
            Change::UpsertService(Service {
                namespace: "shop".into(),
                name: "db".into(),
                kind: ServiceKind::Headless,
                ports: vec![port("pg", Protocol::Sctp, 5432)].into(),
                publish_not_ready: true,
            }),
            Change::UpsertService(Service {
                namespace: "a".into(),
                name: "ext".into(),
                kind: ServiceKind::ExternalName("api.example.com".into()),
                ports: Box::new([]),
                publish_not_ready: false,
            }),
            Change::UpsertSlice(EndpointSlice {
                namespace: "shop".into(),
                name: "db-x1".into(),
                service: "db".into(),
                ports: vec![port("pg", Protocol::Tcp, 5432)].into(),
                endpoints: vec![
                    Endpoint {
                        addresses: vec!["10.1.0.1".parse().unwrap()].into(),
                        hostname: Some("db-0".into()),
                        ready: true,
                        terminating: false,
                    },
                    Endpoint {
                        addresses: vec!["fd00::1:2".parse().unwrap()].into(),
                        hostname: None,
                        ready: false,
                        terminating: true,
                    },
                ]
                .into(),
            }),
            Change::UpsertSlice(EndpointSlice {
                namespace: "zz".into(),
                name: "lonely".into(),
                service: "gone".into(),
                ports: Box::new([]),
                endpoints: Box::new([]),
            }),
        ]);
        o
    }

    #[test]
    fn frames_round_trip() {
        let o = objects();
        let changes = vec![
            Change::UpsertService(o.services().next().unwrap().clone()),
            Change::DeleteService {
                namespace: "shop".into(),
                name: "web".into(),
            },
            Change::UpsertSlice(o.slices().next().unwrap().clone()),
            Change::DeleteSlice {
                namespace: "shop".into(),
                name: "db-x1".into(),
            },
        ];
        let mut stream = MAGIC.to_vec();
        stream.extend(encode_snapshot(u64::MAX, 300, &o));
        stream.extend(encode_delta(1 << 40, &changes));
        stream.extend(encode_heartbeat(7, 0));

        // Fed one byte at a time, as a slow network would.
        let mut r = FrameReader::default();
        let mut frames = Vec::new();
        for b in &stream {
            r.feed(std::slice::from_ref(b));
            while let Some((f, _)) = r.next_frame().unwrap() {
                frames.push(f);
            }
        }
        let (services, slices) = o.to_lists();
        assert_eq!(
            frames,
            [
                Frame::Snapshot(Snapshot {
                    origin: u64::MAX,
                    version: 300,
                    services,
                    slices
                }),
                Frame::Delta {
                    version: 1 << 40,
                    changes
                },
                Frame::Heartbeat { origin: 7, version: 0 },
            ]
        );
        assert_eq!(r.buffered(), 0);

        let Frame::Snapshot(s) = &frames[0] else { unreachable!() };
        let mut back = Objects::default();
        back.apply(
            &s.services
                .iter()
                .cloned()
                .map(Change::UpsertService)
                .collect::<Vec<_>>(),
        );
        back.apply(&s.slices.iter().cloned().map(Change::UpsertSlice).collect::<Vec<_>>());
        assert_eq!(back, o);
        assert_eq!(
            encode_snapshot(1, 2, &Objects::default()).len(),
            12,
            "an empty state is a few bytes"
        );
    }

    #[test]
    fn varints_at_the_edges() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(read_varint(&b).unwrap(), Some((v, b.len())));
            assert_eq!(read_varint(&b[..b.len() - 1]).unwrap(), None);
        }
        assert_eq!(read_varint(&[0xff; 10]), Err(CodecError::BadVarint));
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(CodecError::BadVarint)
        );
    }

    #[test]
    fn truncated_input_is_an_error_never_a_panic() {
        let frame = encode_snapshot(9, 9, &objects());
        let (len, head) = read_varint(&frame).unwrap().unwrap();
        let body = &frame[head..];
        assert_eq!(len as usize, body.len());
        for cut in 0..body.len() {
            assert!(decode_frame(&body[..cut]).is_err(), "cut at {cut}");
        }
        let delta = encode_delta(3, &[Change::UpsertSlice(objects().slices().next().unwrap().clone())]);
        for cut in 0..delta.len() - 1 {
            assert!(decode_frame(&delta[1..1 + cut]).is_err(), "cut at {cut}");
        }
        // A stream cut inside a frame just waits for more.
        let mut r = FrameReader::default();
        r.feed(&MAGIC);
        r.feed(&frame[..frame.len() - 1]);
        assert_eq!(r.next_frame().unwrap(), None);
    }

    #[test]
    fn corrupt_input_is_an_error_never_a_panic() {
        let mut r = FrameReader::default();
        r.feed(b"HTTP/1.1 200 OK");
        assert!(matches!(r.next_frame(), Err(CodecError::BadMagic(_))));

        let frame = encode_snapshot(9, 9, &objects());
        let head = read_varint(&frame).unwrap().unwrap().1;
        let body = &frame[head..];
        // Every single-byte corruption decodes to something or fails cleanly.
        let mut failures = 0;
        for i in 0..body.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut bad = body.to_vec();
                bad[i] ^= x;
                failures += decode_frame(&bad).is_err() as usize;
            }
        }
        assert!(failures > body.len(), "most corruptions are caught: {failures}");
        // Pseudo-random garbage (xorshift), many lengths.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000 {
            let junk: Vec<u8> = (0..len % 300)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
            let _ = decode_frame(&junk);
        }
        assert_eq!(
            decode_frame(&[KIND_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0]),
            Err(CodecError::Trailing(1))
        );
        assert_eq!(decode_frame(&[9]), Err(CodecError::BadTag { what: "frame", tag: 9 }));
    }

    #[test]
    fn lying_lengths_are_refused_before_allocating() {
        // A frame length over the cap: refused from the prefix alone.
        let mut r = FrameReader::new(1 << 20);
        r.feed(&MAGIC);
        let mut huge = Vec::new();
        put_varint(&mut huge, 1 << 40);
        r.feed(&huge);
        assert!(matches!(
            r.next_frame(),
            Err(CodecError::TooLarge { what: "a frame", .. })
        ));

        // A count far beyond the bytes present: refused, not reserved.
        let mut body = vec![KIND_DELTA];
        put_varint(&mut body, 1);
        put_varint(&mut body, u64::MAX >> 1);
        assert!(matches!(
            decode_frame(&body),
            Err(CodecError::TooLarge { what: "changes", .. })
        ));
        let mut body = vec![KIND_SNAPSHOT];
        body.extend_from_slice(&1u64.to_le_bytes());
        put_varint(&mut body, 1);
        put_varint(&mut body, 1);
        put_str(&mut body, "ns");
        put_varint(&mut body, 1_000_000);
        body.extend_from_slice(&[0; 64]);
        assert!(matches!(
            decode_frame(&body),
            Err(CodecError::TooLarge { what: "services", .. })
        ));
        // A string longer than any Kubernetes name.
        let mut body = vec![KIND_DELTA];
        put_varint(&mut body, 1);
        put_varint(&mut body, 1);
        body.push(1);
        put_varint(&mut body, 5000);
        body.extend_from_slice(&[b'a'; 5000]);
        assert!(matches!(
            decode_frame(&body),
            Err(CodecError::TooLarge { len: 5000, .. })
        ));
        // A port above 65535.
        let mut body = vec![KIND_DELTA];
        put_varint(&mut body, 1);
        put_varint(&mut body, 1);
        body.push(0);
        put_str(&mut body, "ns");
        put_str(&mut body, "svc");
        body.extend_from_slice(&[1, 0, 1]);
        put_str(&mut body, "http");
        body.push(0);
        put_varint(&mut body, 70_000);
        assert!(matches!(
            decode_frame(&body),
            Err(CodecError::TooLarge { what: "a port", .. })
        ));
    }
}
