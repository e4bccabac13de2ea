//! The conntrack bypass NodeLocal DNSCache installs, without its rule
//! pile-ups: DNS to and from the node-local address skips connection
//! tracking, so UDP DNS cannot hit the conntrack insertion races (the 5 s
//! timeouts of kubernetes#56903) or fill the conntrack table.
//!
//! Owns: one nftables table, `table inet nodens`, replaced whole in one
//! transaction (add-empty, delete, create: the nft idiom for "exactly one
//! copy"), so a setup run twice, or by two agents at once, leaves one set of
//! rules (NodeLocal's duplicate rules, dns#292/#568), and teardown is one
//! `delete table`. Where `nft` is missing, the iptables fallback keeps the
//! same shape: chains `NODENS-*` in the raw and filter tables, refilled with
//! `iptables-restore --noflush` (one lock per table, `-w` waits for the xtables
//! lock instead of failing, dns#643), and one jump from each built-in chain,
//! checked before it is added and de-duplicated after.
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
//! The tools are run as child processes. A non-root agent holds
//! CAP_NET_ADMIN as a file capability, which execve would drop for `nft`;
//! the child raises it as an ambient capability first.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::NodeError;
use crate::config::NotrackMode;

/// The nftables table nodens owns.
pub const NFT_TABLE: &str = "nodens";
/// Prefix of the iptables chains nodens owns.
const CHAIN_PREFIX: &str = "NODENS-";
/// Seconds iptables waits for the xtables lock.
const XTABLES_WAIT: &str = "5";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    /// The backend for `mode`: `auto` prefers nftables. None for `off`.
    pub fn choose(mode: NotrackMode) -> Result<Option<Backend>, NodeError> {
        let missing = |tool: &'static str| NodeError::Firewall {
            tool,
            message: format!("`{tool}` cannot be run; install it or set node.notrack = \"off\""),
        };
        match mode {
            NotrackMode::Off => Ok(None),
            NotrackMode::Nftables if runs("nft") => Ok(Some(Backend::Nftables)),
            NotrackMode::Nftables => Err(missing("nft")),
            NotrackMode::Iptables if runs("iptables") => Ok(Some(Backend::Iptables)),
            NotrackMode::Iptables => Err(missing("iptables")),
            NotrackMode::Auto => Backend::available()
                .into_iter()
                .next()
                .map(Some)
                .ok_or(NodeError::Firewall {
                    tool: "nft",
                    message: "neither `nft` nor `iptables` can be run; install nftables or set node.notrack = \"off\""
                        .into(),
                }),
        }
    }

    /// The backends whose tools can be run here, nftables first.
    pub fn available() -> Vec<Backend> {
        let mut out = Vec::new();
        if runs("nft") {
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
        Backend::Nftables => run("nft", &["-f", "-"], Some(&nft_script(targets))).map(drop),
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
            let script = format!("table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n");
            run("nft", &["-f", "-"], Some(&script)).map(drop)
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

/// The nodens rules as the backend lists them (one rule per line, for
/// tests and operators); empty if none are installed.
pub fn list(backend: Backend) -> Result<Vec<String>, NodeError> {
    match backend {
        Backend::Nftables => {
            let listed = run("nft", &["list", "table", "inet", NFT_TABLE], None);
            let text = match listed {
                Ok(text) => text,
                // "No such file or directory": the table is not there.
                Err(NodeError::Firewall { message, .. }) if message.contains("No such file") => String::new(),
                Err(e) => return Err(e),
            };
            let mut chain = "";
            let mut rules = Vec::new();
            for line in text.lines().map(str::trim) {
                if let Some(name) = line.strip_prefix("chain ") {
                    chain = name.trim_end_matches(" {");
                } else if line.contains("notrack") {
                    rules.push(format!("{chain}: {line}"));
                }
            }
            Ok(rules)
        }
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

/// One transaction: create-if-missing, delete, create. Applied atomically by
/// nft, so the rules are never absent and never doubled.
pub fn nft_script(targets: &[(IpAddr, u16)]) -> String {
    let mut pre = String::new();
    let mut out = String::new();
    for &(ip, port) in targets {
        let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
        for proto in ["udp", "tcp"] {
            pre.push_str(&format!("\t\t{fam} daddr {ip} {proto} dport {port} notrack\n"));
            out.push_str(&format!("\t\t{fam} saddr {ip} {proto} sport {port} notrack\n"));
            out.push_str(&format!("\t\t{fam} daddr {ip} {proto} dport {port} notrack\n"));
        }
    }
    format!(
        "table inet {t} {{}}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tchain prerouting {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n{pre}\t}}\n\
         \tchain output {{\n\t\ttype filter hook output priority raw; policy accept;\n{out}\t}}\n\
         }}\n",
        t = NFT_TABLE
    )
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
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot start: {e}")))?;
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

    #[test]
    fn nft_script_replaces_one_table() {
        let s = nft_script(&[
            ("169.254.20.10".parse().unwrap(), 53),
            ("fd00::10".parse().unwrap(), 53),
        ]);
        assert!(
            s.starts_with("table inet nodens {}\ndelete table inet nodens\ntable inet nodens {"),
            "{s}"
        );
        assert_eq!(s.matches("notrack").count(), 12, "{s}");
        assert!(s.contains("ip daddr 169.254.20.10 udp dport 53 notrack"), "{s}");
        assert!(s.contains("ip6 saddr fd00::10 tcp sport 53 notrack"), "{s}");
        assert!(s.contains("hook prerouting priority raw"), "{s}");
    }
}
