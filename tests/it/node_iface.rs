//! The node-local interface and the NOTRACK rules (src/node/), for real,
//! inside a network namespace each test creates for itself (a thread that
//! calls unshare(CLONE_NEWNET): network namespaces are per thread, and the
//! netlink sockets and `nft`/`iptables` children it starts live in it). Where
//! namespaces are not allowed the tests say so and pass without running.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use nodens::node::{iface, notrack};

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

#[test]
fn nftables_rules_are_installed_once_and_removed() {
    if !tool_runs("nft") {
        eprintln!("SKIPPED: `nft` is not installed (apt-get install nftables; .ci/run does)");
        return;
    }
    check_backend(notrack::Backend::Nftables);
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
    if !tool_runs("nft") {
        eprintln!("SKIPPED: `nft` is not installed (apt-get install nftables; .ci/run does)");
        return;
    }
    in_netns(|| {
        Box::pin(async {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("nodens.toml");
            std::fs::write(
                &config,
                "listen = [\"169.254.20.10:53\"]\nadmin = \"169.254.20.10:9153\"\nallow = [\"169.254.0.0/16\"]\n\
                 workers = 1\n[upstream]\nservers = [\"169.254.20.10:9\"]\n[cluster]\nsource = \"demo\"\n\
                 [node]\ninterface = \"nodenstest1\"\nnotrack = \"nftables\"\n",
            )
            .unwrap();
            let bin = env!("CARGO_BIN_EXE_nodens");
            let child = Command::new(bin)
                .args(["serve", "--setup-interface", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
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
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(answered, "no answer on 169.254.20.10:53; log:\n{log}");
            assert!(out.status.success(), "exit {}; log:\n{log}", out.status);
            // Kept on exit, for the next agent of a rolling update.
            assert_eq!(
                iface::addresses("nodenstest1").await.unwrap(),
                Some(vec![v4()]),
                "{log}"
            );
            assert_eq!(notrack::list(notrack::Backend::Nftables).unwrap().len(), 6);

            let teardown = Command::new(bin)
                .args(["teardown", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            assert!(
                teardown.status.success(),
                "{}",
                String::from_utf8_lossy(&teardown.stderr)
            );
            assert_eq!(iface::addresses("nodenstest1").await.unwrap(), None);
            assert!(notrack::list(notrack::Backend::Nftables).unwrap().is_empty());
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
