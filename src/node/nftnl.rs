//! nftables over a NETLINK_NETFILTER socket: what `nft -f` would send, sent
//! by nodens itself, so the agent needs no `nft` binary, no libnftnl and no
//! child process (a distroless image has none, and a child would lose the
//! agent's file capabilities at execve).
//!
//! Owns: the socket, the batch (NFNL_MSG_BATCH_BEGIN … END around
//! NFT_MSG_NEWTABLE/DELTABLE/NEWCHAIN/NEWRULE, one transaction the kernel
//! commits whole or not at all), the reading of every answer, and the small
//! set of expressions `notrack` uses (meta, payload, cmp, notrack), encoded
//! as nft encodes them. The message layouts come from rust-netlink's
//! `netlink-packet-netfilter`; its types stay in this module.
//! Must not: decide which rules exist (that is `notrack`), or work on any
//! family but `inet`.
//!
//! Every message of a batch carries NLM_F_ACK, so the kernel answers each
//! one; the batch has succeeded only when every answer is an ACK. The
//! kernel processes the whole batch even after an error and then aborts it,
//! so the first error is the one reported, named by the message it answers.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, Cmp, DataAttribute, ExpressionAttribute, Expressions, GenMessage, Hook, InetHookNumber,
    ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage,
    TableAttribute, TableFlags, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::NodeError;

/// `res_id` of the batch delimiters: the nf_tables subsystem (nfnetlink.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// NF_ACCEPT, a base chain's policy.
const NF_ACCEPT: u32 = 1;
/// How long one answer may take before the kernel is considered gone.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Dumps interrupted by a concurrent change (NLM_F_DUMP_INTR) are retried this often.
const DUMP_TRIES: usize = 3;

/// `meta load KEY => reg 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKind {
    /// The packet's family in an inet table (NFPROTO_IPV4 = 2, NFPROTO_IPV6 = 10).
    Nfproto,
    /// The transport protocol number.
    L4proto,
}

/// Where a payload load starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Network,
    Transport,
}

/// One nftables expression, as far as nodens writes or reads them. Every
/// load goes to register 1 and every comparison is `eq` on register 1,
/// which is what nft generates for `ip daddr A udp dport P`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `[ meta load KIND => reg 1 ]`
    Meta(MetaKind),
    /// `[ payload load LEN b @ BASE header + OFFSET => reg 1 ]`
    Payload { base: Base, offset: u32, len: u32 },
    /// `[ cmp eq reg 1 DATA ]`
    CmpEq(Vec<u8>),
    /// `[ notrack ]`
    Notrack,
    /// Read back from the kernel and none of the above: its expression name.
    Other(String),
}

/// A base chain: `type filter hook HOOK priority PRIORITY; policy accept;`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub name: &'static str,
    pub hook: ChainHook,
    pub priority: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainHook {
    Prerouting,
    Output,
}

/// One transaction on `inet` tables: built up, then `commit`ted.
#[derive(Default)]
pub struct Batch {
    /// Each command and what it is, for the error that names it.
    commands: Vec<(NetlinkMessage<NetfilterMessage>, String)>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// `add table inet NAME` (NLM_F_CREATE without EXCL: an existing table is kept).
    pub fn add_table(&mut self, table: &str) {
        let msg = NfTablesMessage::NewTable(TableMessage {
            attributes: vec![
                TableAttribute::Name(table.into()),
                TableAttribute::Flags(TableFlags::default()),
            ],
        });
        self.push(msg, NLM_F_CREATE, format!("NEWTABLE inet {table}"));
    }

    /// `delete table inet NAME`, with everything in it.
    pub fn delete_table(&mut self, table: &str) {
        let msg = NfTablesMessage::DeleteTable(TableMessage {
            attributes: vec![TableAttribute::Name(table.into())],
        });
        self.push(msg, 0, format!("DELTABLE inet {table}"));
    }

    /// `add chain inet TABLE NAME { type filter hook … priority …; policy accept; }`.
    pub fn add_chain(&mut self, table: &str, chain: &BaseChain) {
        let hook = match chain.hook {
            ChainHook::Prerouting => InetHookNumber::PreRouting,
            ChainHook::Output => InetHookNumber::LocalOut,
        };
        // The attribute order is nft's.
        let msg = NfTablesMessage::NewChain(netlink_packet_netfilter::nftables::ChainMessage {
            attributes: vec![
                ChainAttribute::Table(table.into()),
                ChainAttribute::Name(chain.name.into()),
                ChainAttribute::Type("filter".into()),
                ChainAttribute::Policy(NF_ACCEPT),
                ChainAttribute::Hook(vec![
                    Hook::Number(hook.into()),
                    // A signed priority travels as its two's-complement u32.
                    Hook::Priority(chain.priority as u32),
                ]),
            ],
        });
        self.push(msg, NLM_F_CREATE, format!("NEWCHAIN inet {table} {}", chain.name));
    }

    /// `add rule inet TABLE CHAIN EXPRS`; `what` names it in errors.
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr], what: &str) {
        let msg = NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(table.into()),
                RuleAttribute::Chain(chain.into()),
                RuleAttribute::Expressions(exprs.iter().map(encode_expr).collect()),
            ],
        });
        self.push(
            msg,
            NLM_F_CREATE | NLM_F_APPEND,
            format!("NEWRULE inet {table} {chain} `{what}`"),
        );
    }

    fn push(&mut self, msg: NfTablesMessage, flags: u16, what: String) {
        let msg = message(NetfilterProtoFamily::Inet, 0, msg, NLM_F_REQUEST | NLM_F_ACK | flags);
        self.commands.push((msg, what));
    }

    /// The batch as sent: BEGIN with `first_seq`, each command with the next
    /// sequence number, END. Returns the bytes and each command's (seq, name).
    pub fn encode(&self, first_seq: u32) -> (Vec<u8>, Vec<(u32, String)>) {
        let delimiter = |control| {
            message(
                NetfilterProtoFamily::Unspec,
                NFNL_SUBSYS_NFTABLES,
                control,
                NLM_F_REQUEST,
            )
        };
        let mut out = Vec::new();
        let mut seq = first_seq;
        append(&mut out, delimiter(ControlMessage::BatchBegin), seq);
        let mut names = Vec::with_capacity(self.commands.len());
        for (msg, what) in &self.commands {
            seq = seq.wrapping_add(1);
            append(&mut out, msg.clone(), seq);
            names.push((seq, what.clone()));
        }
        append(&mut out, delimiter(ControlMessage::BatchEnd), seq.wrapping_add(1));
        (out, names)
    }

    /// Sends the batch and waits for the kernel's answer to every command.
    pub fn commit(&self) -> Result<(), NodeError> {
        let conn = Conn::open()?;
        let (bytes, names) = self.encode(1);
        conn.send(&bytes, "sending the batch")?;
        let pending: Vec<u32> = names.iter().map(|(seq, _)| *seq).collect();
        match collect_acks(|buf| conn.socket.recv(buf, 0), &pending) {
            Ok(()) => Ok(()),
            Err(AckError::Kernel { seq, error }) => {
                let what = names
                    .iter()
                    .find(|(s, _)| *s == seq)
                    .map(|(_, what)| what.clone())
                    // The BEGIN's sequence number: the batch as a whole.
                    .unwrap_or_else(|| "the batch (refused whole, or its commit failed)".into());
                Err(fail(what, error))
            }
            Err(AckError::Io(error)) => Err(fail("reading the answers to the batch", error)),
        }
    }
}

/// The rules of `inet TABLE`, per chain in kernel order (chains in their
/// order, rules in theirs); empty if the table does not exist.
pub fn dump_rules(table: &str) -> Result<Vec<(String, Vec<Expr>)>, NodeError> {
    let conn = Conn::open()?;
    let request = NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![RuleAttribute::Table(table.into())],
    });
    let mut tries = 0;
    loop {
        tries += 1;
        let mut bytes = Vec::new();
        append(
            &mut bytes,
            message(
                NetfilterProtoFamily::Inet,
                0,
                request.clone(),
                NLM_F_REQUEST | NLM_F_DUMP,
            ),
            tries as u32,
        );
        conn.send(&bytes, "sending GETRULE")?;
        let mut rules = Vec::new();
        let mut interrupted = false;
        let done = read_messages(
            |buf| conn.socket.recv(buf, 0),
            |header_flags, seq, payload| {
                if seq != tries as u32 {
                    return Ok(false);
                }
                interrupted |= header_flags & NLM_F_DUMP_INTR != 0;
                match payload {
                    NetlinkPayload::Done(_) => Ok(true),
                    // No such table (older kernels look it up): nothing installed.
                    NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => Ok(true),
                    NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)),
                        ..
                    }) => {
                        rules.push(decode_rule(rule));
                        Ok(false)
                    }
                    _ => Ok(false),
                }
            },
        );
        match done {
            Ok(()) if interrupted && tries < DUMP_TRIES => continue,
            Ok(()) => return Ok(rules),
            Err(e) => return Err(fail(format!("GETRULE inet {table} (dump)"), e)),
        }
    }
}

/// Whether nf_tables answers here: one NFT_MSG_GETGEN, which changes
/// nothing. Fails with the kernel's reason (no nf_tables, or EPERM without
/// CAP_NET_ADMIN) or the socket's (no nfnetlink at all).
pub fn probe() -> io::Result<()> {
    let conn = Conn::connect().map_err(|(_, e)| e)?;
    let mut bytes = Vec::new();
    let request = NfTablesMessage::GetGen(GenMessage { attributes: vec![] });
    append(
        &mut bytes,
        message(NetfilterProtoFamily::Unspec, 0, request, NLM_F_REQUEST | NLM_F_ACK),
        1,
    );
    conn.socket.send(&bytes, 0)?;
    let mut generation = false;
    read_messages(
        |buf| conn.socket.recv(buf, 0),
        |_, seq, payload| {
            if seq != 1 {
                return Ok(false);
            }
            match payload {
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewGen(_)),
                    ..
                }) => {
                    generation = true;
                    Ok(false)
                }
                NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
                // The ACK comes after the answer.
                NetlinkPayload::Error(_) => Ok(true),
                _ => Ok(false),
            }
        },
    )?;
    if generation {
        Ok(())
    } else {
        Err(io::Error::other("NFT_MSG_GETGEN was acknowledged without a generation"))
    }
}

/// One NETLINK_NETFILTER socket bound to a kernel-chosen port.
struct Conn {
    socket: Socket,
}

impl Conn {
    fn open() -> Result<Conn, NodeError> {
        Conn::connect().map_err(|(what, e)| fail(format!("{what} a NETLINK_NETFILTER socket"), e))
    }

    /// The socket, or the step that failed and why.
    fn connect() -> Result<Conn, (&'static str, io::Error)> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| ("opening", e))?;
        socket.bind_auto().map_err(|e| ("binding", e))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|e| ("connecting", e))?;
        socket2::SockRef::from(&socket)
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|e| ("setting a read timeout on", e))?;
        // Errors then quote only the failed message's header, not all of it.
        let _ = socket.set_cap_ack(true);
        Ok(Conn { socket })
    }

    fn send(&self, bytes: &[u8], what: &str) -> Result<(), NodeError> {
        match self.socket.send(bytes, 0) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => Err(fail(
                what,
                io::Error::other(format!("sent {n} of {} bytes", bytes.len())),
            )),
            Err(e) => Err(fail(what, e)),
        }
    }
}

fn fail(op: impl Into<String>, source: io::Error) -> NodeError {
    NodeError::Nftables { op: op.into(), source }
}

fn message(
    family: NetfilterProtoFamily,
    res_id: u16,
    inner: impl Into<NetfilterMessageInner>,
    flags: u16,
) -> NetlinkMessage<NetfilterMessage> {
    let mut msg = NetlinkMessage::from(NetfilterMessage::new(NetfilterHeader::new(family, 0, res_id), inner));
    msg.header.flags = flags;
    msg
}

/// Appends `msg` with sequence number `seq`, padded to netlink's 4-byte alignment.
fn append(out: &mut Vec<u8>, mut msg: NetlinkMessage<NetfilterMessage>, seq: u32) {
    msg.header.sequence_number = seq;
    msg.finalize();
    let start = out.len();
    out.resize(start + msg.buffer_len(), 0);
    msg.serialize(&mut out[start..]);
    out.resize(out.len().next_multiple_of(4), 0);
}

#[derive(Debug)]
enum AckError {
    /// The kernel refused the message with sequence number `seq`.
    Kernel {
        seq: u32,
        error: io::Error,
    },
    Io(io::Error),
}

/// Reads answers until each of `pending` has had one; the first NACK wins.
/// A NACK on any other sequence number (the BEGIN's) is about the batch as a
/// whole: refused before any command ran (EPERM without CAP_NET_ADMIN,
/// EOPNOTSUPP without nf_tables), so no ACK will follow, or a failed commit.
/// It ends the reading at once.
fn collect_acks(recv: impl FnMut(&mut Vec<u8>) -> io::Result<usize>, pending: &[u32]) -> Result<(), AckError> {
    let mut waiting: Vec<u32> = pending.to_vec();
    let mut first_error: Option<(u32, io::Error)> = None;
    read_messages(recv, |_, seq, payload| {
        if let NetlinkPayload::Error(e) = payload {
            if e.code.is_some() && !pending.contains(&seq) {
                first_error = Some((seq, e.to_io()));
                return Ok(true);
            }
            if e.code.is_some() && first_error.is_none() {
                first_error = Some((seq, e.to_io()));
            }
            waiting.retain(|s| *s != seq);
        }
        Ok(waiting.is_empty())
    })
    .map_err(AckError::Io)?;
    match first_error {
        Some((seq, error)) => Err(AckError::Kernel { seq, error }),
        None => Ok(()),
    }
}

/// Receives datagrams and hands each netlink message in them to `each`
/// (flags, sequence number, payload) until it returns true.
fn read_messages(
    mut recv: impl FnMut(&mut Vec<u8>) -> io::Result<usize>,
    mut each: impl FnMut(u16, u32, NetlinkPayload<NetfilterMessage>) -> io::Result<bool>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let n = recv(&mut buf).map_err(|e| match e.kind() {
            // SO_RCVTIMEO expired.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from the kernel within {ANSWER_TIMEOUT:?}"),
            ),
            _ => e,
        })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the netlink socket closed",
            ));
        }
        let mut at = 0;
        while at < n {
            let bytes = &buf[at..n];
            let len = NetlinkBuffer::new_checked(bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad netlink header: {e}")))?
                .length() as usize;
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[..len])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("undecodable answer: {e}")))?;
            if each(msg.header.flags, msg.header.sequence_number, msg.payload)? {
                return Ok(());
            }
            at += len.next_multiple_of(4);
        }
    }
}

fn encode_expr(expr: &Expr) -> ListAttribute<ExpressionAttribute> {
    match expr {
        Expr::Meta(kind) => Expressions::Meta(vec![
            Meta::Key(match kind {
                MetaKind::Nfproto => MetaKey::Nfproto,
                MetaKind::L4proto => MetaKey::L4Proto,
            }),
            Meta::DestinationRegister(Register::Reg1),
        ])
        .into(),
        Expr::Payload { base, offset, len } => Expressions::Payload(vec![
            Payload::DestinationRegister(Register::Reg1),
            Payload::Base(match base {
                Base::Network => 1,
                Base::Transport => 2,
            }),
            Payload::Offset(*offset),
            Payload::Len(*len),
        ])
        .into(),
        Expr::CmpEq(data) => Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(data.clone())),
        ])
        .into(),
        // notrack has no data at all.
        Expr::Notrack => ListAttribute::Element(vec![ExpressionAttribute::Name("notrack".into())]),
        Expr::Other(name) => ListAttribute::Element(vec![ExpressionAttribute::Name(name.clone())]),
    }
}

fn decode_rule(rule: RuleMessage) -> (String, Vec<Expr>) {
    let mut chain = String::new();
    let mut exprs = Vec::new();
    for attribute in rule.attributes {
        match attribute {
            RuleAttribute::Chain(name) => chain = name,
            RuleAttribute::Expressions(list) => exprs.extend(list.into_iter().map(decode_expr)),
            _ => {}
        }
    }
    (chain, exprs)
}

fn decode_expr(element: ListAttribute<ExpressionAttribute>) -> Expr {
    let ListAttribute::Element(attributes) = element else {
        return Expr::Other("?".into());
    };
    let mut name = String::from("?");
    let mut data = None;
    for attribute in attributes {
        match attribute {
            ExpressionAttribute::Name(n) => name = n,
            ExpressionAttribute::Data(d) => data = Some(d),
            _ => {}
        }
    }
    let decoded = match (name.as_str(), data) {
        ("notrack", None) => Some(Expr::Notrack),
        (_, Some(Expressions::Meta(attrs))) => decode_meta(&attrs),
        (_, Some(Expressions::Payload(attrs))) => decode_payload(&attrs),
        (_, Some(Expressions::Cmp(attrs))) => decode_cmp(attrs),
        _ => None,
    };
    decoded.unwrap_or(Expr::Other(name))
}

fn decode_meta(attrs: &[Meta]) -> Option<Expr> {
    let (mut key, mut reg1) = (None, false);
    for attr in attrs {
        match attr {
            Meta::Key(MetaKey::Nfproto) => key = Some(MetaKind::Nfproto),
            Meta::Key(MetaKey::L4Proto) => key = Some(MetaKind::L4proto),
            Meta::DestinationRegister(Register::Reg1) => reg1 = true,
            _ => return None,
        }
    }
    key.filter(|_| reg1).map(Expr::Meta)
}

fn decode_payload(attrs: &[Payload]) -> Option<Expr> {
    let (mut base, mut offset, mut len, mut reg1) = (None, None, None, false);
    for attr in attrs {
        match attr {
            Payload::DestinationRegister(Register::Reg1) => reg1 = true,
            Payload::Base(1) => base = Some(Base::Network),
            Payload::Base(2) => base = Some(Base::Transport),
            Payload::Offset(o) => offset = Some(*o),
            Payload::Len(l) => len = Some(*l),
            _ => return None,
        }
    }
    match (base, offset, len, reg1) {
        (Some(base), Some(offset), Some(len), true) => Some(Expr::Payload { base, offset, len }),
        _ => None,
    }
}

fn decode_cmp(attrs: Vec<Cmp>) -> Option<Expr> {
    let (mut data, mut eq, mut reg1) = (None, false, false);
    for attr in attrs {
        match attr {
            Cmp::SourceRegister(Register::Reg1) => reg1 = true,
            Cmp::Op(Operator::Equal) => eq = true,
            Cmp::Data(DataAttribute::Value(v)) => data = Some(v),
            _ => return None,
        }
    }
    data.filter(|_| eq && reg1).map(Expr::CmpEq)
}

/// The bytes nft compares an address against: the address in network order.
pub fn address_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip daddr 169.254.20.10 udp dport 53 notrack` in chain prerouting of
    /// `inet nodens`, as `nft --debug=mnl -f` (nftables 1.0.6) sends it:
    /// the NEWRULE message after its 16-byte netlink header.
    const NFT_RULE: &str = "010000000b0001006e6f64656e7300000f000200707265726f7574696e670000\
        7401048024000180090001006d6574610000000014000280080002000000000f\
        08000100000000012c00018008000100636d7000200002800800010000000001\
        08000200000000000c0003800500010002000000340001800c0001007061796c\
        6f61640024000280080001000000000108000200000000010800030000000010\
        08000400000000042c00018008000100636d7000200002800800010000000001\
        08000200000000000c00038008000100a9fe140a24000180090001006d657461\
        0000000014000280080002000000001008000100000000012c00018008000100\
        636d700020000280080001000000000108000200000000000c00038005000100\
        11000000340001800c0001007061796c6f616400240002800800010000000001\
        0800020000000002080003000000000208000400000000022c00018008000100\
        636d700020000280080001000000000108000200000000000c00038006000100\
        00350000100001800c0001006e6f747261636b00";

    /// The same for `chain prerouting { type filter hook prerouting priority raw; policy accept; }`.
    const NFT_CHAIN: &str = "010000000b0001006e6f64656e7300000f000300707265726f7574696e670000\
        0b00070066696c74657200000800050000000001140004800800010000000000\
        08000200fffffed4";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The rule above in nodens' terms (what `notrack::Rule::exprs` builds).
    fn daddr_udp_53() -> Vec<Expr> {
        vec![
            Expr::Meta(MetaKind::Nfproto),
            Expr::CmpEq(vec![2]),
            Expr::Payload {
                base: Base::Network,
                offset: 16,
                len: 4,
            },
            Expr::CmpEq(address_bytes("169.254.20.10".parse().unwrap())),
            Expr::Meta(MetaKind::L4proto),
            Expr::CmpEq(vec![17]),
            Expr::Payload {
                base: Base::Transport,
                offset: 2,
                len: 2,
            },
            Expr::CmpEq(53u16.to_be_bytes().to_vec()),
            Expr::Notrack,
        ]
    }

    /// Splits an encoded batch into (type, flags, seq, payload) per message.
    fn messages(bytes: &[u8]) -> Vec<(u16, u16, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            assert!(len >= 16 && at + len <= bytes.len(), "message length {len} at {at}");
            let kind = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(bytes[at + 6..at + 8].try_into().unwrap());
            let seq = u32::from_ne_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            out.push((kind, flags, seq, bytes[at + 16..at + len].to_vec()));
            at += len.next_multiple_of(4);
        }
        out
    }

    /// Walks netlink attributes recursively (nested when NLA_F_NESTED):
    /// every length fits its parent, every attribute starts 4-byte aligned,
    /// and the padding is zero.
    fn check_attributes(bytes: &[u8], depth: usize) -> usize {
        let mut at = 0;
        let mut count = 0;
        while at < bytes.len() {
            assert_eq!(at % 4, 0, "unaligned attribute at depth {depth}");
            assert!(at + 4 <= bytes.len(), "truncated attribute header at depth {depth}");
            let len = u16::from_ne_bytes([bytes[at], bytes[at + 1]]) as usize;
            let kind = u16::from_ne_bytes([bytes[at + 2], bytes[at + 3]]);
            assert!(
                len >= 4 && at + len <= bytes.len(),
                "attribute length {len} overruns at depth {depth}"
            );
            let padded = len.next_multiple_of(4).min(bytes.len() - at);
            assert!(bytes[at + len..at + padded].iter().all(|b| *b == 0), "non-zero padding");
            count += 1;
            if kind & 0x8000 != 0 {
                count += check_attributes(&bytes[at + 4..at + len], depth + 1);
            }
            at += padded;
        }
        count
    }

    #[test]
    fn a_rule_is_encoded_byte_for_byte_as_nft_does() {
        let mut batch = Batch::new();
        batch.add_rule("nodens", "prerouting", &daddr_udp_53(), "test");
        let (bytes, _) = batch.encode(7);
        let msgs = messages(&bytes);
        assert_eq!(msgs.len(), 3, "BEGIN, the rule, END");
        let (kind, flags, seq, payload) = &msgs[1];
        assert_eq!(*kind, (10 << 8) | 6, "NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE");
        assert_eq!(*flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND);
        assert_eq!(*seq, 8);
        assert_eq!(payload.len() + 16, 420, "nft's message length");
        assert_eq!(payload, &hex(NFT_RULE));
    }

    #[test]
    fn a_base_chain_is_encoded_as_nft_does() {
        let mut batch = Batch::new();
        batch.add_chain(
            "nodens",
            &BaseChain {
                name: "prerouting",
                hook: ChainHook::Prerouting,
                priority: -300,
            },
        );
        let (bytes, names) = batch.encode(1);
        let msgs = messages(&bytes);
        assert_eq!(msgs[1].0, (10 << 8) | 3, "NFT_MSG_NEWCHAIN");
        assert_eq!(msgs[1].1, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(msgs[1].3, hex(NFT_CHAIN));
        assert_eq!(names, vec![(2, "NEWCHAIN inet nodens prerouting".to_string())]);
    }

    #[test]
    fn the_batch_is_one_transaction_with_every_command_acknowledged() {
        let mut batch = Batch::new();
        batch.add_table("nodens");
        batch.delete_table("nodens");
        batch.add_table("nodens");
        let (bytes, names) = batch.encode(u32::MAX);
        assert_eq!(bytes.len() % 4, 0);
        let msgs = messages(&bytes);
        let kinds: Vec<u16> = msgs.iter().map(|m| m.0).collect();
        // BEGIN, NEWTABLE, DELTABLE, NEWTABLE, END.
        assert_eq!(kinds, vec![16, 0x0a00, 0x0a02, 0x0a00, 17]);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.2).collect();
        assert_eq!(seqs, vec![u32::MAX, 0, 1, 2, 3], "consecutive, wrapping");
        // The delimiters: family unspec, version 0, res_id NFNL_SUBSYS_NFTABLES in network order.
        for delimiter in [&msgs[0], &msgs[4]] {
            assert_eq!(delimiter.1, NLM_F_REQUEST, "no ACK asked of a delimiter");
            assert_eq!(delimiter.3, vec![0, 0, 0, 10]);
        }
        for command in &msgs[1..4] {
            assert_ne!(command.1 & NLM_F_ACK, 0, "every command is acknowledged");
            assert_eq!(command.3[..4], [1, 0, 0, 0], "NFPROTO_INET, version 0");
        }
        // `add table`: NAME "nodens" (7 bytes, padded to 8), FLAGS 0.
        assert_eq!(msgs[1].3[4..], hex("0b0001006e6f64656e7300000800020000000000")[..]);
        assert_eq!(msgs[2].3[4..], hex("0b0001006e6f64656e730000")[..]);
        assert_eq!(msgs[1].1 & NLM_F_CREATE, NLM_F_CREATE);
        assert_eq!(msgs[2].1, NLM_F_REQUEST | NLM_F_ACK);
        let seqs: Vec<u32> = names.iter().map(|n| n.0).collect();
        assert_eq!(seqs, vec![0, 1, 2]);
    }

    #[test]
    fn attributes_are_aligned_and_nested_within_their_parents() {
        let mut batch = Batch::new();
        batch.add_table("nodens");
        batch.add_chain(
            "nodens",
            &BaseChain {
                name: "output",
                hook: ChainHook::Output,
                priority: -300,
            },
        );
        let mut v6 = daddr_udp_53();
        v6[1] = Expr::CmpEq(vec![10]);
        v6[2] = Expr::Payload {
            base: Base::Network,
            offset: 8,
            len: 16,
        };
        v6[3] = Expr::CmpEq(address_bytes("fd00:53::10".parse().unwrap()));
        batch.add_rule("nodens", "output", &v6, "v6");
        let (bytes, _) = batch.encode(1);
        for (_, _, _, payload) in messages(&bytes) {
            assert_eq!(payload.len() % 4, 0);
            // After the 4-byte nfgenmsg.
            check_attributes(&payload[4..], 0);
        }
        let rule = &messages(&bytes)[3].3;
        // 3 top-level + 9 list elements × (name + data (+ its attributes)).
        assert!(check_attributes(&rule[4..], 0) > 40);
    }

    #[test]
    fn encoded_rules_decode_to_the_same_expressions() {
        let mut batch = Batch::new();
        batch.add_rule("nodens", "prerouting", &daddr_udp_53(), "test");
        let (bytes, _) = batch.encode(1);
        let at = 20; // after BEGIN
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[at..at + len]).unwrap();
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)),
            ..
        }) = msg.payload
        else {
            panic!("not a rule: {msg:?}");
        };
        assert_eq!(decode_rule(rule), ("prerouting".to_string(), daddr_udp_53()));
    }

    /// An NLMSG_ERROR answer to `seq` with `errno` (0: an ACK), capped.
    fn answer(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        m.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m.extend_from_slice(&[0; 16]); // the request's header
        m
    }

    fn datagrams(list: Vec<Vec<u8>>) -> impl FnMut(&mut Vec<u8>) -> io::Result<usize> {
        let mut list = list.into_iter();
        move |buf| match list.next() {
            Some(d) => {
                buf.extend_from_slice(&d);
                Ok(d.len())
            }
            None => Err(io::Error::new(io::ErrorKind::WouldBlock, "no more answers")),
        }
    }

    #[test]
    fn every_command_must_be_acknowledged() {
        // Two ACKs in one datagram, the third in the next.
        let both = [answer(2, 0), answer(3, 0)].concat();
        assert!(collect_acks(datagrams(vec![both, answer(4, 0)]), &[2, 3, 4]).is_ok());
        // One missing: reading goes on (here: until the socket times out).
        let partial = collect_acks(datagrams(vec![answer(2, 0)]), &[2, 3]);
        assert!(matches!(partial, Err(AckError::Io(_))), "{partial:?}");
    }

    #[test]
    fn the_first_error_is_reported_with_its_message() {
        let answers = vec![[answer(2, 0), answer(3, libc::ENOENT), answer(4, libc::EINVAL)].concat()];
        match collect_acks(datagrams(answers), &[2, 3, 4]) {
            Err(AckError::Kernel { seq: 3, error }) => {
                assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("{other:?}"),
        }
        // A batch refused whole is answered once, on BEGIN's sequence number
        // (1), and no ACK follows: that answer ends the wait.
        match collect_acks(datagrams(vec![answer(1, libc::EPERM)]), &[2, 3]) {
            Err(AckError::Kernel { seq: 1, error }) => {
                assert_eq!(error.raw_os_error(), Some(libc::EPERM));
            }
            other => panic!("{other:?}"),
        }
        // So is a failed commit, before the ACKs.
        let answers = vec![answer(1, libc::ENOMEM), [answer(2, 0), answer(3, 0)].concat()];
        assert!(matches!(
            collect_acks(datagrams(answers), &[2, 3]),
            Err(AckError::Kernel { seq: 1, .. })
        ));
    }

    #[test]
    fn kernel_errors_name_the_message_and_the_errno() {
        let e = fail(
            "NEWRULE inet nodens output `ip saddr 169.254.20.10 udp sport 53 notrack`",
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        let text = e.to_string();
        assert!(
            text.starts_with("nftables: NEWRULE inet nodens output `ip saddr"),
            "{text}"
        );
        assert!(text.contains("No such file or directory"), "{text}");
    }
}
