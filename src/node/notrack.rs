//! The conntrack bypass NodeLocal DNSCache installs, without its rule
//! pile-ups: DNS to and from the node-local address skips connection
//! tracking, so UDP DNS cannot hit the conntrack insertion races (the 5 s
//! timeouts of kubernetes#56903) or fill the conntrack table.
//!
//! Owns: which rules exist (`rules`), and one nftables table, `table inet
//! nodens`, replaced whole in one transaction (add-empty, delete, create: the
//! nft idiom for "exactly one copy"), so a setup run twice, or by two agents
//! at once, leaves one set of rules (NodeLocal's duplicate rules,
//! dns#292/#568), and teardown is one `delete table`. nodens sends that
//! transaction itself over NETLINK_NETFILTER (`super::nftnl`): no `nft`
//! binary, no child process. Where the kernel has no nf_tables, the iptables
//! fallback keeps the same shape: chains `NODENS-*` in the raw and filter
//! tables, refilled with `iptables-restore --noflush` (one lock per table,
//! `-w` waits for the xtables lock instead of failing, dns#643), and one jump
//! from each built-in chain, checked before it is added and de-duplicated
//! after.
//! Must not: touch any table, chain or rule it did not create.
//!
//! The rules (per listen address A and port P, as NodeLocal's): raw
//! PREROUTING `daddr A dport P` (queries from pods), raw OUTPUT `saddr A sport
//! P` (answers) and `daddr A dport P` (queries from the node itself and
//! hostNetwork pods), for UDP and TCP. The iptables fallback also ACCEPTs them
//! in the filter table, as NodeLocal does, for firewalls that only let
//! tracked (ESTABLISHED) traffic in; an nftables accept cannot override
//! another table's drop, so with nftables such a firewall needs its own rule.
//!
//! The iptables tools are run as child processes. A non-root agent holds
//! CAP_NET_ADMIN as a file capability, which execve would drop; the child
//! raises it as an ambient capability first. The distroless image has no
//! iptables: there the fallback reports that `iptables` cannot be run.

use std::fmt;
use std::io::{self, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::nftnl::{self, Base, BaseChain, ChainHook, Expr, MetaKind};
use super::NodeError;
use crate::config::NotrackMode;

/// The nftables table nodens owns (family inet).
pub const NFT_TABLE: &str = "nodens";
/// Prefix of the iptables chains nodens owns.
const CHAIN_PREFIX: &str = "NODENS-";
/// Seconds iptables waits for the xtables lock.
const XTABLES_WAIT: &str = "5";
/// `priority raw` (NF_IP_PRI_RAW): before conntrack (-200) looks at the packet.
const PRIORITY_RAW: i32 = -300;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The kernel's nf_tables, programmed over netlink.
    Nftables,
    /// The `iptables`/`ip6tables` tools, run as children.
    Iptables,
}

impl Backend {
    /// The backend for `mode`: `auto` prefers nftables whenever the kernel
    /// answers nf_tables requests. None for `off`.
    pub fn choose(mode: NotrackMode) -> Result<Option<Backend>, NodeError> {
        match mode {
            NotrackMode::Off => Ok(None),
            NotrackMode::Nftables => match nftnl::probe() {
                Ok(()) => Ok(Some(Backend::Nftables)),
                Err(source) => Err(NodeError::Nftables {
                    op: "node.notrack = \"nftables\": the kernel's nf_tables does not answer NFT_MSG_GETGEN".into(),
                    source,
                }),
            },
            NotrackMode::Iptables if runs("iptables") => Ok(Some(Backend::Iptables)),
            NotrackMode::Iptables => Err(NodeError::Firewall {
                tool: "node.notrack",
                message: "\"iptables\" is set, but `iptables` cannot be run (not installed; the distroless \
                          image has none); set node.notrack = \"nftables\" (the kernel's nf_tables, no binary \
                          needed) or \"off\""
                    .into(),
            }),
            NotrackMode::Auto => match nftnl::probe() {
                Ok(()) => Ok(Some(Backend::Nftables)),
                // iptables would need the same capability: say so now.
                Err(source) if source.kind() == io::ErrorKind::PermissionDenied => Err(NodeError::Nftables {
                    op: "node.notrack = \"auto\": NFT_MSG_GETGEN (the agent needs CAP_NET_ADMIN)".into(),
                    source,
                }),
                Err(e) if runs("iptables") => {
                    tracing::info!(error = %e, "no nf_tables here: NOTRACK rules through iptables");
                    Ok(Some(Backend::Iptables))
                }
                Err(e) => Err(NodeError::Firewall {
                    tool: "node.notrack",
                    message: format!(
                        "\"auto\": the kernel's nf_tables does not answer ({e}) and `iptables` cannot be run \
                         (the distroless image has none); run on a kernel with nf_tables or set \
                         node.notrack = \"off\""
                    ),
                }),
            },
        }
    }

    /// The backends usable here, nftables first (for teardown: remove what
    /// either may have installed).
    pub fn available() -> Vec<Backend> {
        let mut out = Vec::new();
        if nftnl::probe().is_ok() {
            out.push(Backend::Nftables);
        }
        if runs("iptables") {
            out.push(Backend::Iptables);
        }
        out
    }
}

/// Installs the rules for `targets`, replacing whatever nodens had installed.
pub fn install(backend: Backend, targets: &[(IpAddr, u16)]) -> Result<(), NodeError> {
    match backend {
        Backend::Nftables => nft_batch(&rules(targets)).commit(),
        Backend::Iptables => {
            for family in [Family::V4, Family::V6] {
                let mine: Vec<_> = targets.iter().copied().filter(|(ip, _)| family.holds(ip)).collect();
                if !mine.is_empty() || family == Family::V4 {
                    iptables_install(family, &mine)?;
                }
            }
            Ok(())
        }
    }
}

/// Removes everything nodens installed with `backend`; absent is fine.
pub fn remove(backend: Backend) -> Result<(), NodeError> {
    match backend {
        Backend::Nftables => {
            // Create-if-missing first, so the delete never meets "no such table".
            let mut batch = nftnl::Batch::new();
            batch.add_table(NFT_TABLE);
            batch.delete_table(NFT_TABLE);
            batch.commit()
        }
        Backend::Iptables => {
            for family in [Family::V4, Family::V6] {
                if runs(family.tool()) {
                    iptables_remove(family)?;
                }
            }
            Ok(())
        }
    }
}

/// The nodens rules as the backend holds them, one per line (for tests and
/// operators); empty if none are installed. nftables: `CHAIN: RULE` in nft's
/// syntax, read back from the kernel over netlink.
pub fn list(backend: Backend) -> Result<Vec<String>, NodeError> {
    match backend {
        Backend::Nftables => Ok(nftnl::dump_rules(NFT_TABLE)?
            .into_iter()
            .map(|(chain, exprs)| match Rule::from_exprs(&chain, &exprs) {
                Some(rule) => format!("{chain}: {rule}"),
                None => {
                    let names: Vec<String> = exprs.iter().map(|e| format!("{e:?}")).collect();
                    format!("{chain}: (not a nodens rule) {}", names.join(", "))
                }
            })
            .collect()),
        Backend::Iptables => {
            let mut out = Vec::new();
            for family in [Family::V4, Family::V6] {
                if !runs(family.tool()) {
                    continue;
                }
                for table in ["raw", "filter"] {
                    let text = run(family.tool(), &["-w", XTABLES_WAIT, "-t", table, "-S"], None)?;
                    let tool = family.tool();
                    out.extend(
                        text.lines()
                            .filter(|l| l.contains(CHAIN_PREFIX))
                            .map(|l| format!("{tool} {table}: {l}")),
                    );
                }
            }
            Ok(out)
        }
    }
}

/// The two base chains of `inet nodens`, at raw priority so they run before
/// conntrack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    Prerouting,
    Output,
}

impl Chain {
    pub fn name(self) -> &'static str {
        self.base().name
    }

    fn base(self) -> BaseChain {
        match self {
            Chain::Prerouting => BaseChain {
                name: "prerouting",
                hook: ChainHook::Prerouting,
                priority: PRIORITY_RAW,
            },
            Chain::Output => BaseChain {
                name: "output",
                hook: ChainHook::Output,
                priority: PRIORITY_RAW,
            },
        }
    }
}

/// Which end of the packet a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `saddr A sport P`
    Source,
    /// `daddr A dport P`
    Destination,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Udp => libc::IPPROTO_UDP as u8,
            Proto::Tcp => libc::IPPROTO_TCP as u8,
        }
    }
}

/// One NOTRACK rule: `ip daddr A udp dport P notrack` and its kin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub side: Side,
    pub addr: IpAddr,
    pub proto: Proto,
    pub port: u16,
}

/// The rules for `targets`: prerouting, then output; in each, target by
/// target, UDP then TCP (in output, `saddr` then `daddr`).
pub fn rules(targets: &[(IpAddr, u16)]) -> Vec<Rule> {
    let mut out = Vec::new();
    for (chain, sides) in [
        (Chain::Prerouting, &[Side::Destination][..]),
        (Chain::Output, &[Side::Source, Side::Destination][..]),
    ] {
        for &(addr, port) in targets {
            for proto in [Proto::Udp, Proto::Tcp] {
                for &side in sides {
                    out.push(Rule {
                        chain,
                        side,
                        addr,
                        proto,
                        port,
                    });
                }
            }
        }
    }
    out
}

impl Rule {
    /// What nft compiles this rule to in an inet table (`nft --debug=netlink`):
    /// check the family, then load and compare the address, the protocol and
    /// the port, then notrack.
    pub fn exprs(&self) -> Vec<Expr> {
        let (nfproto, addr_offset, addr_len) = match (self.addr, self.side) {
            (IpAddr::V4(_), Side::Source) => (libc::NFPROTO_IPV4, 12, 4),
            (IpAddr::V4(_), Side::Destination) => (libc::NFPROTO_IPV4, 16, 4),
            (IpAddr::V6(_), Side::Source) => (libc::NFPROTO_IPV6, 8, 16),
            (IpAddr::V6(_), Side::Destination) => (libc::NFPROTO_IPV6, 24, 16),
        };
        // sport and dport are the first two 16-bit fields of both UDP and TCP.
        let port_offset = match self.side {
            Side::Source => 0,
            Side::Destination => 2,
        };
        vec![
            Expr::Meta(MetaKind::Nfproto),
            Expr::CmpEq(vec![nfproto as u8]),
            Expr::Payload {
                base: Base::Network,
                offset: addr_offset,
                len: addr_len,
            },
            Expr::CmpEq(nftnl::address_bytes(self.addr)),
            Expr::Meta(MetaKind::L4proto),
            Expr::CmpEq(vec![self.proto.number()]),
            Expr::Payload {
                base: Base::Transport,
                offset: port_offset,
                len: 2,
            },
            Expr::CmpEq(self.port.to_be_bytes().to_vec()),
            Expr::Notrack,
        ]
    }

    /// The rule whose `exprs` are exactly `exprs`, in chain `chain`, if any.
    pub fn from_exprs(chain: &str, exprs: &[Expr]) -> Option<Rule> {
        let chain = [Chain::Prerouting, Chain::Output]
            .into_iter()
            .find(|c| c.name() == chain)?;
        let Some(Expr::CmpEq(addr)) = exprs.get(3) else {
            return None;
        };
        let addr = match addr.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(addr.as_slice()).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(addr.as_slice()).ok()?),
            _ => return None,
        };
        let Some(Expr::CmpEq(port)) = exprs.get(7) else {
            return None;
        };
        let port = u16::from_be_bytes(port.as_slice().try_into().ok()?);
        for side in [Side::Source, Side::Destination] {
            for proto in [Proto::Udp, Proto::Tcp] {
                let rule = Rule {
                    chain,
                    side,
                    addr,
                    proto,
                    port,
                };
                if rule.exprs() == exprs {
                    return Some(rule);
                }
            }
        }
        None
    }
}

/// nft's syntax, without the chain: `ip daddr 169.254.20.10 udp dport 53 notrack`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = if self.addr.is_ipv4() { "ip" } else { "ip6" };
        let (addr, port) = match self.side {
            Side::Source => ("saddr", "sport"),
            Side::Destination => ("daddr", "dport"),
        };
        let proto = match self.proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        };
        write!(f, "{family} {addr} {} {proto} {port} {} notrack", self.addr, self.port)
    }
}

/// One transaction: create-if-missing, delete, create with both chains and
/// every rule. The kernel applies it atomically, so the rules are never
/// absent and never doubled.
fn nft_batch(rules: &[Rule]) -> nftnl::Batch {
    let mut batch = nftnl::Batch::new();
    batch.add_table(NFT_TABLE);
    batch.delete_table(NFT_TABLE);
    batch.add_table(NFT_TABLE);
    for chain in [Chain::Prerouting, Chain::Output] {
        batch.add_chain(NFT_TABLE, &chain.base());
    }
    for rule in rules {
        batch.add_rule(NFT_TABLE, rule.chain.name(), &rule.exprs(), &rule.to_string());
    }
    batch
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    fn holds(self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }
}

/// (table, built-in chain, our chain).
const JUMPS: [(&str, &str, &str); 4] = [
    ("raw", "PREROUTING", "NODENS-PREROUTING"),
    ("raw", "OUTPUT", "NODENS-OUTPUT"),
    ("filter", "INPUT", "NODENS-INPUT"),
    ("filter", "OUTPUT", "NODENS-OUTPUT"),
];

fn iptables_install(family: Family, targets: &[(IpAddr, u16)]) -> Result<(), NodeError> {
    // A chain line flushes that chain under --noflush: the refill is atomic per table.
    let mut raw = String::from("*raw\n:NODENS-PREROUTING - [0:0]\n:NODENS-OUTPUT - [0:0]\n");
    let mut filter = String::from("*filter\n:NODENS-INPUT - [0:0]\n:NODENS-OUTPUT - [0:0]\n");
    for &(ip, port) in targets {
        for p in ["udp", "tcp"] {
            raw.push_str(&format!(
                "-A NODENS-PREROUTING -d {ip} -p {p} --dport {port} -j NOTRACK\n"
            ));
            raw.push_str(&format!("-A NODENS-OUTPUT -s {ip} -p {p} --sport {port} -j NOTRACK\n"));
            raw.push_str(&format!("-A NODENS-OUTPUT -d {ip} -p {p} --dport {port} -j NOTRACK\n"));
            filter.push_str(&format!("-A NODENS-INPUT -d {ip} -p {p} --dport {port} -j ACCEPT\n"));
            filter.push_str(&format!("-A NODENS-OUTPUT -s {ip} -p {p} --sport {port} -j ACCEPT\n"));
        }
    }
    let script = format!("{raw}COMMIT\n{filter}COMMIT\n");
    run(family.restore(), &["--noflush", "-w", XTABLES_WAIT], Some(&script))?;
    for (table, chain, ours) in JUMPS {
        let exists = run(
            family.tool(),
            &["-w", XTABLES_WAIT, "-t", table, "-C", chain, "-j", ours],
            None,
        )
        .is_ok();
        if !exists {
            run(
                family.tool(),
                &["-w", XTABLES_WAIT, "-t", table, "-I", chain, "1", "-j", ours],
                None,
            )?;
        }
        // Two agents may both have found it missing: keep exactly one.
        let listed = run(family.tool(), &["-w", XTABLES_WAIT, "-t", table, "-S", chain], None)?;
        let jump = format!("-j {ours}");
        let copies = listed.lines().filter(|l| l.trim_end().ends_with(&jump)).count();
        for _ in 1..copies {
            run(
                family.tool(),
                &["-w", XTABLES_WAIT, "-t", table, "-D", chain, "-j", ours],
                None,
            )?;
        }
    }
    Ok(())
}

fn iptables_remove(family: Family) -> Result<(), NodeError> {
    for (table, chain, ours) in JUMPS {
        while run(
            family.tool(),
            &["-w", XTABLES_WAIT, "-t", table, "-D", chain, "-j", ours],
            None,
        )
        .is_ok()
        {}
    }
    for (table, _, ours) in JUMPS {
        let _ = run(family.tool(), &["-w", XTABLES_WAIT, "-t", table, "-F", ours], None);
        let _ = run(family.tool(), &["-w", XTABLES_WAIT, "-t", table, "-X", ours], None);
    }
    Ok(())
}

/// Whether `tool` can be started at all.
fn runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `tool args` with `stdin`; returns its stdout, or its stderr as the error.
fn run(tool: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, NodeError> {
    let fail = |message: String| NodeError::Firewall { tool, message };
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the hook only makes raw syscalls (async-signal-safe) in the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            keep_net_admin_across_exec();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::NotFound {
            " (not installed; the distroless image has none: set node.notrack = \"nftables\" or \"off\")"
        } else {
            ""
        };
        fail(format!("cannot start: {e}{hint}"))
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing its input: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for it: {e}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(fail(format!(
            "`{tool} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            stderr.trim()
        )))
    }
}

/// CAP_NET_ADMIN from capability(7).
const CAP_NET_ADMIN: u32 = 12;

/// Makes a permitted CAP_NET_ADMIN survive execve for a non-root process:
/// inheritable, then ambient (capabilities(7), "Ambient"). Does nothing when
/// it is not permitted or the kernel refuses; root needs none of it.
fn keep_net_admin_across_exec() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    let bit = 1u32 << CAP_NET_ADMIN;
    // SAFETY: capget/capset with a v3 header and two data structs, as capget(2) specifies.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) != 0 {
            return;
        }
        if data[0].permitted & bit == 0 {
            return;
        }
        data[0].inheritable |= bit;
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return;
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE,
            CAP_NET_ADMIN as libc::c_ulong,
            0,
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Vec<(IpAddr, u16)> {
        vec![
            ("169.254.20.10".parse().unwrap(), 53),
            ("fd00::10".parse().unwrap(), 53),
        ]
    }

    #[test]
    fn the_rule_set_is_nodelocals() {
        let listed: Vec<String> = rules(&targets())
            .iter()
            .map(|r| format!("{}: {r}", r.chain.name()))
            .collect();
        assert_eq!(
            listed,
            [
                "prerouting: ip daddr 169.254.20.10 udp dport 53 notrack",
                "prerouting: ip daddr 169.254.20.10 tcp dport 53 notrack",
                "prerouting: ip6 daddr fd00::10 udp dport 53 notrack",
                "prerouting: ip6 daddr fd00::10 tcp dport 53 notrack",
                "output: ip saddr 169.254.20.10 udp sport 53 notrack",
                "output: ip daddr 169.254.20.10 udp dport 53 notrack",
                "output: ip saddr 169.254.20.10 tcp sport 53 notrack",
                "output: ip daddr 169.254.20.10 tcp dport 53 notrack",
                "output: ip6 saddr fd00::10 udp sport 53 notrack",
                "output: ip6 daddr fd00::10 udp dport 53 notrack",
                "output: ip6 saddr fd00::10 tcp sport 53 notrack",
                "output: ip6 daddr fd00::10 tcp dport 53 notrack",
            ]
        );
    }

    /// The expressions `nft --debug=netlink` shows for these rules in an inet table.
    #[test]
    fn rules_compile_to_nfts_expressions() {
        let v6_daddr_tcp = Rule {
            chain: Chain::Prerouting,
            side: Side::Destination,
            addr: "fd00:53::10".parse().unwrap(),
            proto: Proto::Tcp,
            port: 53,
        };
        assert_eq!(
            v6_daddr_tcp.exprs(),
            vec![
                Expr::Meta(MetaKind::Nfproto),
                Expr::CmpEq(vec![10]),
                Expr::Payload {
                    base: Base::Network,
                    offset: 24,
                    len: 16
                },
                Expr::CmpEq(vec![0xfd, 0, 0, 0x53, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]),
                Expr::Meta(MetaKind::L4proto),
                Expr::CmpEq(vec![6]),
                Expr::Payload {
                    base: Base::Transport,
                    offset: 2,
                    len: 2
                },
                Expr::CmpEq(vec![0, 53]),
                Expr::Notrack,
            ]
        );
        let v4_saddr_udp = Rule {
            chain: Chain::Output,
            side: Side::Source,
            addr: "169.254.20.10".parse().unwrap(),
            proto: Proto::Udp,
            port: 5353,
        };
        let exprs = v4_saddr_udp.exprs();
        assert_eq!(exprs[1], Expr::CmpEq(vec![2]));
        assert_eq!(
            exprs[2],
            Expr::Payload {
                base: Base::Network,
                offset: 12,
                len: 4
            }
        );
        assert_eq!(exprs[3], Expr::CmpEq(vec![169, 254, 20, 10]));
        assert_eq!(exprs[5], Expr::CmpEq(vec![17]));
        assert_eq!(
            exprs[6],
            Expr::Payload {
                base: Base::Transport,
                offset: 0,
                len: 2
            }
        );
        assert_eq!(exprs[7], Expr::CmpEq(vec![0x14, 0xe9]));
    }

    #[test]
    fn rules_read_back_from_their_expressions_and_nothing_else() {
        for rule in rules(&targets()) {
            assert_eq!(Rule::from_exprs(rule.chain.name(), &rule.exprs()), Some(rule));
        }
        let rule = rules(&targets())[0];
        assert_eq!(Rule::from_exprs("input", &rule.exprs()), None, "not our chain");
        let mut other = rule.exprs();
        other.pop();
        assert_eq!(Rule::from_exprs("prerouting", &other), None, "no notrack");
        let mut other = rule.exprs();
        other[5] = Expr::CmpEq(vec![132]);
        assert_eq!(Rule::from_exprs("prerouting", &other), None, "sctp");
        assert_eq!(Rule::from_exprs("prerouting", &[Expr::Other("counter".into())]), None);
    }

    #[test]
    fn the_transaction_replaces_one_table() {
        let (bytes, names) = nft_batch(&rules(&targets())).encode(1);
        let names: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names[..5],
            [
                "NEWTABLE inet nodens",
                "DELTABLE inet nodens",
                "NEWTABLE inet nodens",
                "NEWCHAIN inet nodens prerouting",
                "NEWCHAIN inet nodens output",
            ]
        );
        assert_eq!(names.len(), 5 + 12);
        assert_eq!(
            names[5],
            "NEWRULE inet nodens prerouting `ip daddr 169.254.20.10 udp dport 53 notrack`"
        );
        assert!(bytes.len() > 12 * 300, "{} bytes", bytes.len());
    }

    #[test]
    fn a_missing_iptables_names_the_setting() {
        // Nothing by this name runs anywhere.
        let e = run("nodens-no-such-tool", &[], None).unwrap_err().to_string();
        assert!(e.contains("node.notrack"), "{e}");
        assert!(e.contains("not installed"), "{e}");
    }
}
