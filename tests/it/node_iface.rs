//! The node-local interface and the NOTRACK rules (src/node/), for real,
//! inside a network namespace each test creates for itself (a thread that
//! calls unshare(CLONE_NEWNET): network namespaces are per thread, and the
//! netlink sockets and the children it starts live in it). Where namespaces
//! are not allowed the tests say so and pass without running.
//!
//! nodens programs nftables over netlink; where `nft` is installed (.ci/run
//! installs it) the tests also read the table back with it, an independent
//! reader, and require the same rules.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use nodens::config::NotrackMode;
use nodens::node::{iface, nftnl, notrack};

const IFACE: &str = "nodenstest0";

fn v4() -> IpAddr {
    "169.254.20.10".parse().unwrap()
}
fn v6() -> IpAddr {
    "fd00:53::10".parse().unwrap()
}

/// Runs `f` on a thread in a fresh network namespace with a current-thread
/// runtime; None (after saying why) where namespaces are not permitted.
fn in_netns<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) only changes this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("SKIPPED: cannot create a network namespace here ({e}); run as root to test src/node");
            return None;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(loopback_up());
        Some(rt.block_on(f()))
    })
    .join()
    .expect("test thread")
}

/// A new namespace's `lo` is down, and local delivery to any address goes through it.
async fn loopback_up() {
    let (connection, handle, _) = rtnetlink::new_connection().unwrap();
    let task = tokio::spawn(connection);
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_name("lo").up().build())
        .execute()
        .await
        .expect("lo up");
    task.abort();
}

/// The addresses `ip -j addr show dev NAME` reports (an independent reader), if `ip` runs.
fn ip_addresses(name: &str) -> Option<Vec<IpAddr>> {
    let out = Command::new("ip")
        .args(["-j", "addr", "show", "dev", name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return Some(Vec::new());
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        links
            .as_array()?
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["local"].as_str()?.parse().ok())
            .filter(|ip: &IpAddr| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
            .collect(),
    )
}

fn tool_runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn interface_setup_is_idempotent_and_teardown_removes_it() {
    let ran = in_netns(|| {
        Box::pin(async {
            let want = vec![v4(), v6()];
            let index = iface::ensure(IFACE, &want).await.expect("first setup");
            // A second agent (or a restarted one) finds it and adds nothing.
            let again = iface::ensure(IFACE, &want).await.expect("second setup");
            assert_eq!(index, again, "the interface was recreated");
            let mut held = iface::addresses(IFACE).await.unwrap().expect("interface exists");
            held.sort();
            assert_eq!(held, vec![v4(), v6()], "each address exactly once");
            if let Some(mut seen) = ip_addresses(IFACE) {
                seen.sort();
                assert_eq!(seen, vec![v4(), v6()], "ip -j addr disagrees");
            }
            // Usable at once: bind the DNS port on both (IPv6 without DAD).
            for ip in [v4(), v6()] {
                std::net::UdpSocket::bind(SocketAddr::new(ip, 53)).expect("bind on the new address");
            }
            // A link of another kind under the name is not taken over.
            assert!(
                iface::ensure("lo", &[v4()]).await.is_err(),
                "lo is not a dummy interface"
            );

            assert!(iface::remove(IFACE).await.unwrap(), "removed");
            assert_eq!(iface::addresses(IFACE).await.unwrap(), None);
            assert!(!iface::remove(IFACE).await.unwrap(), "removing twice is fine");
        })
    });
    if ran.is_some() {
        eprintln!("interface: created, reused, read back, removed");
    }
}

fn check_backend(backend: notrack::Backend) {
    let ran = in_netns(move || {
        Box::pin(async move {
            let targets = [(v4(), 53), (v6(), 53)];
            assert!(
                notrack::list(backend).unwrap().is_empty(),
                "a fresh namespace has no nodens rules"
            );
            notrack::install(backend, &targets).expect("first install");
            let first = notrack::list(backend).unwrap();
            notrack::install(backend, &targets).expect("second install");
            let second = notrack::list(backend).unwrap();
            assert_eq!(first, second, "a second install changed the rules");
            let mut unique = second.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), second.len(), "duplicate rules: {second:#?}");
            // Per address: UDP and TCP × (prerouting daddr, output saddr, output daddr).
            let notracks = second
                .iter()
                .filter(|r| r.contains("notrack") || r.contains("NOTRACK"))
                .count();
            assert_eq!(notracks, 12, "{second:#?}");
            notrack::remove(backend).expect("remove");
            assert!(notrack::list(backend).unwrap().is_empty(), "rules left after teardown");
            notrack::remove(backend).expect("removing twice is fine");
        })
    });
    if ran.is_some() {
        eprintln!("{backend:?}: installed twice, one copy, removed");
    }
}

/// What `nft list table inet nodens` shows (in this thread's namespace): each
/// rule as `CHAIN: RULE`, and the whole text; None where `nft` is not
/// installed, Some(empty) where the table does not exist.
fn nft_listing() -> Option<(Vec<String>, String)> {
    if !tool_runs("nft") {
        return None;
    }
    let out = Command::new("nft")
        .args(["list", "table", "inet", notrack::NFT_TABLE])
        .output()
        .expect("nft runs");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("No such file"), "nft list failed: {stderr}");
        return Some((Vec::new(), String::new()));
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let mut chain = "";
    let mut rules = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("chain ") {
            chain = name.trim_end_matches(" {");
        } else if !(line.is_empty() || line == "}" || line.starts_with("table ") || line.starts_with("type ")) {
            rules.push(format!("{chain}: {line}"));
        }
    }
    Some((rules, text))
}

/// The kernel's nodens rules, as nodens reads them over netlink and, where
/// `nft` is installed, as nft lists them: the two must agree.
fn kernel_rules() -> Vec<String> {
    let ours = notrack::list(notrack::Backend::Nftables).expect("list over netlink");
    if let Some((theirs, text)) = nft_listing() {
        assert_eq!(ours, theirs, "nodens and nft read different rules:\n{text}");
        if !theirs.is_empty() {
            for hook in ["prerouting", "output"] {
                let want = format!("type filter hook {hook} priority raw; policy accept;");
                assert!(text.contains(&want), "no {hook} base chain at raw priority:\n{text}");
            }
        }
    }
    ours
}

/// The rules nodens means to install for `targets`, as listed.
fn expected(targets: &[(IpAddr, u16)]) -> Vec<String> {
    notrack::rules(targets)
        .iter()
        .map(|r| format!("{}: {r}", r.chain.name()))
        .collect()
}

/// Whether this thread's namespace has nf_tables; prints why not (a kernel
/// without the module) and None. A probe that fails where nf_tables is
/// loaded is a failure, not a skip.
fn nf_tables_here() -> Option<()> {
    match notrack::Backend::choose(NotrackMode::Auto) {
        Ok(Some(notrack::Backend::Nftables)) => Some(()),
        other if !std::path::Path::new("/sys/module/nf_tables").exists() => {
            eprintln!("SKIPPED: no nf_tables in this kernel ({other:?})");
            None
        }
        other => panic!("nf_tables is loaded but `auto` chose {other:?}"),
    }
}

#[test]
fn nftables_rules_are_installed_once_replaced_and_removed() {
    let ran = in_netns(|| {
        Box::pin(async {
            nf_tables_here()?;
            let nft = notrack::Backend::Nftables;
            assert!(kernel_rules().is_empty(), "a fresh namespace has no nodens table");

            let targets = [(v4(), 53), (v6(), 53)];
            notrack::install(nft, &targets).expect("first install");
            let first = kernel_rules();
            assert_eq!(first, expected(&targets));
            // Per address: UDP and TCP × (prerouting daddr, output saddr, output daddr).
            assert_eq!(
                first.iter().filter(|r| r.ends_with(" notrack")).count(),
                12,
                "{first:#?}"
            );
            assert!(first
                .iter()
                .any(|r| r == "output: ip6 saddr fd00:53::10 tcp sport 53 notrack"));

            // Again (a restarted agent): one copy, not two.
            notrack::install(nft, &targets).expect("second install");
            assert_eq!(kernel_rules(), first, "a second install changed the rules");

            // Other targets replace the table's contents; nothing is appended.
            let other = [(v4(), 5353)];
            notrack::install(nft, &other).expect("install with other targets");
            let replaced = kernel_rules();
            assert_eq!(replaced, expected(&other));
            assert_eq!(replaced.len(), 6, "{replaced:#?}");

            notrack::remove(nft).expect("remove");
            assert!(kernel_rules().is_empty(), "rules left after teardown");
            if let Some((_, text)) = nft_listing() {
                assert!(text.is_empty(), "the table is still there:\n{text}");
            }
            notrack::remove(nft).expect("removing twice is fine");
            Some(())
        })
    });
    if ran.flatten().is_some() {
        eprintln!("nftables over netlink: installed, reinstalled as one copy, replaced, removed");
    }
}

/// A transaction the kernel refuses fails whole, and the error names the
/// message it refused and the kernel's reason.
#[test]
fn a_refused_transaction_changes_nothing_and_says_what_failed() {
    let ran = in_netns(|| {
        Box::pin(async {
            nf_tables_here()?;
            let mut batch = nftnl::Batch::new();
            batch.add_table(notrack::NFT_TABLE);
            let rule = notrack::rules(&[(v4(), 53)])[0];
            batch.add_rule(
                notrack::NFT_TABLE,
                "nosuchchain",
                &rule.exprs(),
                "a rule without its chain",
            );
            let e = batch
                .commit()
                .expect_err("a rule in a chain that does not exist")
                .to_string();
            assert!(
                e.starts_with("nftables: NEWRULE inet nodens nosuchchain `a rule without its chain`: "),
                "{e}"
            );
            assert!(e.contains("No such file or directory"), "{e}");
            // The table of the same batch was not created.
            assert!(kernel_rules().is_empty());
            if let Some((_, text)) = nft_listing() {
                assert!(text.is_empty(), "half a transaction was applied:\n{text}");
            }
            Some(())
        })
    });
    if ran.flatten().is_some() {
        eprintln!("nftables: refused batch reported and not applied");
    }
}

/// Clears CAP_NET_ADMIN from this thread's effective set (capabilities are
/// per thread; the thread ends with the test).
fn drop_net_admin_on_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as capget(2) specifies.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << 12); // CAP_NET_ADMIN
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()),
            0
        );
    }
}

/// Without CAP_NET_ADMIN the kernel refuses the whole batch with one answer;
/// the agent reports it at once (not after a timeout) and says what it needs.
#[test]
fn without_net_admin_the_error_says_so() {
    let ran = in_netns(|| {
        Box::pin(async {
            nf_tables_here()?;
            drop_net_admin_on_this_thread();
            let e = notrack::Backend::choose(NotrackMode::Auto)
                .expect_err("EPERM")
                .to_string();
            assert!(e.contains("CAP_NET_ADMIN") && e.contains("not permitted"), "{e}");
            let started = std::time::Instant::now();
            let e = notrack::install(notrack::Backend::Nftables, &[(v4(), 53)])
                .expect_err("EPERM")
                .to_string();
            assert!(e.starts_with("nftables: the batch"), "{e}");
            assert!(e.contains("Operation not permitted"), "{e}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "waited for ACKs that never come"
            );
            Some(())
        })
    });
    if ran.flatten().is_some() {
        eprintln!("nftables without CAP_NET_ADMIN: refused, reported");
    }
}

#[test]
fn iptables_rules_are_installed_once_and_removed() {
    if !tool_runs("iptables") || !tool_runs("ip6tables") {
        eprintln!("SKIPPED: `iptables` is not installed (apt-get install iptables; .ci/run does)");
        return;
    }
    check_backend(notrack::Backend::Iptables);
}

/// The binary end to end: `serve --setup-interface` on 169.254.20.10:53 in a
/// namespace answers there, leaves the interface behind on exit for the next
/// agent, and `nodens teardown` removes it.
#[test]
fn serve_sets_up_the_interface_and_teardown_removes_it() {
    serve_and_teardown(false);
}

/// As the image runs it: uid 65532, CAP_NET_BIND_SERVICE and CAP_NET_ADMIN
/// only as file capabilities of the binary (deploy/Dockerfile), no tools.
#[test]
fn a_non_root_agent_with_file_capabilities_sets_up_its_node() {
    serve_and_teardown(true);
}

/// The binary with the image's file capabilities, in a directory uid 65532
/// can read; None (after saying why) where that cannot be made here.
fn binary_with_file_caps(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    // setcap has no --version: that it can be started is enough.
    if Command::new("setcap").stderr(Stdio::null()).output().is_err() {
        eprintln!("SKIPPED: `setcap` is not installed (apt-get install libcap2-bin; .ci/run does)");
        return None;
    }
    // SAFETY: statvfs(2) writes only into the struct we pass.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    if unsafe { libc::statvfs(path.as_ptr(), &mut fs) } != 0 || fs.f_flag & libc::ST_NOSUID != 0 {
        eprintln!(
            "SKIPPED: {} is mounted nosuid: file capabilities would not apply",
            dir.display()
        );
        return None;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("nodens");
    std::fs::copy(env!("CARGO_BIN_EXE_nodens"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let set = Command::new("setcap")
        .arg("cap_net_bind_service,cap_net_admin=+ep")
        .arg(&bin)
        .output()
        .unwrap();
    if !set.status.success() {
        let why = String::from_utf8_lossy(&set.stderr);
        eprintln!("SKIPPED: setcap failed here ({}); run as root", why.trim());
        return None;
    }
    Some(bin)
}

fn serve_and_teardown(image_user: bool) {
    in_netns(move || {
        Box::pin(async move {
            nf_tables_here()?;
            let dir = tempfile::tempdir().unwrap();
            // The agent runs with an empty PATH: the nftables backend must
            // need no binary (`auto` picks it by asking the kernel, not by
            // finding `nft`), as in the distroless image.
            let no_tools = dir.path().join("empty-path");
            std::fs::create_dir(&no_tools).unwrap();
            let config = dir.path().join("nodens.toml");
            std::fs::write(
                &config,
                "listen = [\"169.254.20.10:53\"]\nadmin = \"169.254.20.10:9153\"\nallow = [\"169.254.0.0/16\"]\n\
                 workers = 1\n[upstream]\nservers = [\"169.254.20.10:9\"]\n[cluster]\nsource = \"demo\"\n\
                 [node]\ninterface = \"nodenstest1\"\nnotrack = \"auto\"\n",
            )
            .unwrap();
            let bin = env!("CARGO_BIN_EXE_nodens");
            let agent = match image_user {
                false => std::path::PathBuf::from(bin),
                true => binary_with_file_caps(dir.path())?,
            };
            let mut serve = Command::new(&agent);
            serve
                .args(["serve", "--setup-interface", "--config"])
                .arg(&config)
                .env("PATH", &no_tools)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if image_user {
                use std::os::unix::fs::PermissionsExt;
                use std::os::unix::process::CommandExt;
                std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
                // Supplementary groups are dropped too (std calls setgroups when uid is set).
                serve.uid(65532).gid(65532);
            }
            let child = serve.spawn().unwrap();
            let server: SocketAddr = "169.254.20.10:53".parse().unwrap();
            let mut answered = false;
            for attempt in 0..100u16 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Binding fails until the agent has created the address.
                let Ok(client) = tokio::net::UdpSocket::bind("169.254.20.10:0").await else {
                    continue;
                };
                let _ = client.send_to(&query(attempt), server).await;
                let mut buf = [0u8; 512];
                let got = tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf)).await;
                if let Ok(Ok((n, _))) = got {
                    answered = n > 12 && buf[..2] == attempt.to_be_bytes() && buf[3] & 0x0f == 0;
                    if answered {
                        break;
                    }
                }
            }
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let out = child.wait_with_output().unwrap();
            // Logs go to stdout; errors before logging is set up to stderr.
            let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert!(answered, "no answer on 169.254.20.10:53; log:\n{log}");
            assert!(out.status.success(), "exit {}; log:\n{log}", out.status);
            // Kept on exit, for the next agent of a rolling update.
            assert_eq!(
                iface::addresses("nodenstest1").await.unwrap(),
                Some(vec![v4()]),
                "{log}"
            );
            assert!(log.contains("Nftables"), "not the nftables backend:\n{log}");
            assert_eq!(kernel_rules(), expected(&[(v4(), 53)]), "{log}");

            let teardown = Command::new(bin)
                .args(["teardown", "--config"])
                .arg(&config)
                .env("PATH", &no_tools)
                .output()
                .unwrap();
            assert!(
                teardown.status.success(),
                "{}",
                String::from_utf8_lossy(&teardown.stderr)
            );
            assert_eq!(iface::addresses("nodenstest1").await.unwrap(), None);
            assert!(kernel_rules().is_empty(), "teardown left rules");
            Some(())
        })
    });
}

fn query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in "kubernetes.default.svc.cluster.local".split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}
