//! Config changes without a restart (issue 8): a reload reads the file
//! again, applies its live keys while queries flow, keeps the cache, rejects
//! an invalid file whole (log, metric, old config kept) and names the keys
//! that wait for a restart. SIGHUP and a changed file both trigger it; the
//! last test sends SIGHUP to the real binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use nodens::reload::{ConfigSource, Reload};

use crate::support::server::{eventually, free_port, http_get, metric, Nodens};
use crate::support::upstream::{a_addrs, build_query, udp_exchange, FakeUpstream, ZoneSpec};

const T: Duration = Duration::from_secs(3);

/// A config file for a test nodens: loopback, one worker, the given
/// upstreams, an empty resolv.conf (never the machine's), `extra` appended.
struct ConfigFile {
    dir: tempfile::TempDir,
}

impl ConfigFile {
    fn new() -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("resolv.conf"), "").unwrap();
        ConfigFile { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("nodens.toml")
    }

    /// Writes the file as a ConfigMap update does: a new file renamed over the old.
    fn write(&self, top: &str, upstreams: &[SocketAddr], sections: &str) {
        let servers: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nworkers = 1\n{top}\n\
             [upstream]\nservers = [{}]\ntimeout = \"300ms\"\nresolv_conf = \"{}\"\n{sections}\n",
            servers.join(", "),
            self.dir.path().join("resolv.conf").display(),
        );
        self.write_raw(&text);
    }

    fn write_raw(&self, text: &str) {
        let tmp = self.dir.path().join(".nodens.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }

    fn source(&self) -> ConfigSource {
        ConfigSource::new(Some(self.path()), |_| {})
    }
}

/// Starts a nodens on the file as it is now, reloading from it.
async fn start(file: &ConfigFile) -> Nodens {
    let source = file.source();
    let config = source.load().expect("the test config loads");
    Nodens::start_reloading(config, source).await
}

async fn ask(dns: SocketAddr, name: &str, rtype: RecordType) -> Message {
    udp_exchange(dns, &build_query(name, rtype, Some(1232)), T)
        .await
        .unwrap_or_else(|| panic!("no answer for {name} {rtype}"))
}

async fn config_metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics").await;
    metric(&text, series).unwrap_or_else(|| panic!("{series} missing"))
}

/// A second upstream, which answers names the example zone does not have.
fn other_zone() -> ZoneSpec {
    ZoneSpec::new("example.net.").soa(300, 60).a("www", 300, "198.51.100.7")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_upstreams_apply_and_the_cache_stays() {
    let (a, b) = (
        FakeUpstream::start_example().await,
        FakeUpstream::start(other_zone()).await,
    );
    let file = ConfigFile::new();
    file.write("config_poll_interval = \"0s\"", &[a.addr()], "");
    let nodens = start(&file).await;

    let first = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(a_addrs(&first), ["192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()]);
    assert_eq!(a.queries_for("www.example.com.", RecordType::A), 1);

    file.write("config_poll_interval = \"0s\"", &[b.addr()], "");
    assert_eq!(
        nodens.running().reload(),
        Reload::Applied {
            changed: vec!["upstream.servers"],
            restart: vec![]
        }
    );
    // The cache survived: the old answer without asking anyone.
    let cached = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(a_addrs(&cached), a_addrs(&first));
    assert_eq!(a.queries_for("www.example.com.", RecordType::A), 1);
    assert_eq!(b.queries(), 0, "a cached name must not go to the new upstream");
    // A miss goes to the new upstream only.
    let fresh = ask(nodens.dns, "www.example.net.", RecordType::A).await;
    assert_eq!(a_addrs(&fresh), ["198.51.100.7".parse::<std::net::Ipv4Addr>().unwrap()]);
    assert_eq!(b.queries_for("www.example.net.", RecordType::A), 1);
    assert_eq!(a.queries_for("www.example.net.", RecordType::A), 0);

    let applied = r#"nodens_config_reloads_total{result="applied"}"#;
    assert_eq!(config_metric(nodens.admin, applied).await, 1.0);
    assert_eq!(nodens.running().running_config().upstream.servers, [b.addr()]);
    // The same file again: nothing to apply.
    assert_eq!(nodens.running().reload(), Reload::Unchanged { restart: vec![] });
    let unchanged = r#"nodens_config_reloads_total{result="unchanged"}"#;
    assert_eq!(config_metric(nodens.admin, unchanged).await, 1.0);
    nodens.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_rejected_and_the_running_one_stays() {
    let upstream = FakeUpstream::start_example().await;
    let file = ConfigFile::new();
    file.write("config_poll_interval = \"0s\"", &[upstream.addr()], "qps = 800");
    let nodens = start(&file).await;
    let rejected = r#"nodens_config_reloads_total{result="rejected"}"#;
    let successful = "nodens_config_last_reload_successful";
    assert_eq!(
        config_metric(nodens.admin, successful).await,
        1.0,
        "start-up is a successful load"
    );

    // A value out of range: the error names the key and the value.
    file.write("config_poll_interval = \"0s\"", &[upstream.addr()], "qps = 0");
    let Reload::Rejected(why) = nodens.running().reload() else {
        panic!("qps = 0 applied")
    };
    assert!(why.contains("upstream.qps") && why.contains('0'), "{why}");
    assert_eq!(config_metric(nodens.admin, rejected).await, 1.0);
    assert_eq!(config_metric(nodens.admin, successful).await, 0.0);
    assert_eq!(nodens.running().running_config().upstream.qps, 800);

    // Not TOML, then an unknown key: rejected too, and nothing half-applied.
    file.write_raw("[upstream\nqps = 5\n");
    assert!(matches!(nodens.running().reload(), Reload::Rejected(_)));
    file.write(
        "config_poll_interval = \"0s\"\nallow = [\"10.0.0.0/8\"]",
        &[],
        "qps = 5\nbogus = 1",
    );
    let Reload::Rejected(why) = nodens.running().reload() else {
        panic!("an unknown key applied")
    };
    assert!(why.contains("bogus"), "{why}");
    // A file that is gone (a ConfigMap being replaced) is rejected, not fatal.
    std::fs::remove_file(file.path()).unwrap();
    assert!(matches!(nodens.running().reload(), Reload::Rejected(_)));
    assert_eq!(config_metric(nodens.admin, rejected).await, 4.0);

    // Still serving with the old ACL and upstreams.
    let answer = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        nodens.running().running_config().allow,
        nodens::config::Config::default().allow
    );

    // A valid file again: applied, and the gauge recovers.
    file.write("config_poll_interval = \"0s\"", &[upstream.addr()], "qps = 500");
    assert!(matches!(nodens.running().reload(), Reload::Applied { .. }));
    assert_eq!(config_metric(nodens.admin, successful).await, 1.0);
    assert_eq!(nodens.running().running_config().upstream.qps, 500);
    nodens.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_keys_wait_and_live_ones_apply() {
    let upstream = FakeUpstream::start_example().await;
    let file = ConfigFile::new();
    file.write("config_poll_interval = \"0s\"", &[upstream.addr()], "");
    let nodens = start(&file).await;
    let before = nodens.running().running_config();

    // The ACL shuts out loopback; the listen address and cache size cannot change live.
    let top = "config_poll_interval = \"0s\"\nallow = [\"10.0.0.0/8\"]\n[cache]\nmax_bytes = 1048576";
    file.write(top, &[upstream.addr()], "");
    let text = std::fs::read_to_string(file.path())
        .unwrap()
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]");
    file.write_raw(&text);
    assert_eq!(
        nodens.running().reload(),
        Reload::Applied {
            changed: vec!["allow"],
            restart: vec!["listen", "cache.max_bytes"]
        }
    );
    let refused = ask(nodens.dns, "www.example.com.", RecordType::A).await;
    assert_eq!(
        refused.metadata.response_code,
        ResponseCode::Refused,
        "the new ACL applies at once"
    );
    let running = nodens.running().running_config();
    assert_eq!(running.listen, before.listen, "still on the old listener");
    assert_eq!(running.cache.max_bytes, before.cache.max_bytes);
    assert_eq!(config_metric(nodens.admin, "nodens_config_restart_required").await, 1.0);
    nodens.stop().await;
}

/// Sends distinct misses at once; counts (answered, shed with "rate limited").
async fn misses(dns: SocketAddr, prefix: &str, n: usize) -> (usize, usize) {
    let asks = (0..n).map(|i| {
        let name = format!("{prefix}{i}.example.com.");
        async move { udp_exchange(dns, &build_query(&name, RecordType::A, Some(1232)), T).await }
    });
    let answers = futures::future::join_all(asks).await;
    let answered = answers
        .iter()
        .flatten()
        .filter(|m| m.metadata.response_code == ResponseCode::NXDomain)
        .count();
    let shed = answers
        .iter()
        .flatten()
        .filter(|m| m.metadata.response_code == ResponseCode::ServFail)
        .count();
    (answered, shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_rate_changes_while_serving() {
    let upstream = FakeUpstream::start_example().await;
    let file = ConfigFile::new();
    let generous = "qps = 10000\nburst = 1000\nper_client_qps = 0";
    file.write("config_poll_interval = \"0s\"", &[upstream.addr()], generous);
    let nodens = start(&file).await;
    assert_eq!(misses(nodens.dns, "before", 40).await, (40, 0));

    // An operator cuts the rate during an incident: a burst of 5, nothing queues.
    let tight = "qps = 1\nburst = 5\nper_client_qps = 0\nqueue_wait = \"0s\"";
    file.write("config_poll_interval = \"0s\"", &[upstream.addr()], tight);
    assert!(matches!(nodens.running().reload(), Reload::Applied { .. }));
    let sent = upstream.queries();
    let (answered, shed) = misses(nodens.dns, "after", 40).await;
    assert_eq!(answered + shed, 40);
    assert!(
        answered <= 6,
        "the new bucket holds 5 (one may refill): {answered} went upstream"
    );
    assert!(
        upstream.queries() - sent <= 6,
        "{} upstream queries",
        upstream.queries() - sent
    );
    nodens.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ttls_and_the_shortcut_change_while_serving() {
    let upstream = FakeUpstream::start_example().await;
    let file = ConfigFile::new();
    let cluster = |ttl: u32, shortcut: &str| {
        format!(
            // No host search domains (the resolv.conf is empty): the walk ends at the bare name.
            "[cluster]\nsource = \"demo\"\nservice_ttl = {ttl}\n[search]\nshortcut = \"{shortcut}\""
        )
    };
    // The [upstream] section comes last in the file: put the others before it.
    file.write(
        &format!("config_poll_interval = \"0s\"\n{}", cluster(30, "cname")),
        &[upstream.addr()],
        "",
    );
    let nodens = start(&file).await;
    assert!(
        eventually(T, || async { http_get(nodens.admin, "/readyz").await.0 == 200 }).await,
        "the demo cluster syncs"
    );
    let kube = "kubernetes.default.svc.cluster.local.";
    let walk = "www.example.com.default.svc.cluster.local.";
    let before = ask(nodens.dns, kube, RecordType::A).await;
    assert_eq!(before.answers[0].ttl, 30);
    let shortcut = ask(nodens.dns, walk, RecordType::A).await;
    assert!(
        matches!(shortcut.answers.first().map(|r| &r.data), Some(RData::CNAME(_))),
        "cname mode: {shortcut:?}"
    );

    file.write(
        &format!("config_poll_interval = \"0s\"\n{}", cluster(7, "off")),
        &[upstream.addr()],
        "",
    );
    let Reload::Applied { mut changed, restart } = nodens.running().reload() else {
        panic!("not applied")
    };
    changed.sort();
    assert_eq!(changed, ["cluster.service_ttl", "search.shortcut"]);
    assert!(restart.is_empty(), "{restart:?}");
    let after = ask(nodens.dns, kube, RecordType::A).await;
    assert_eq!(after.answers[0].ttl, 7);
    let asked = ask(nodens.dns, walk, RecordType::A).await;
    assert_eq!(
        asked.metadata.response_code,
        ResponseCode::NXDomain,
        "shortcut off: answered as asked"
    );
    assert!(asked.answers.is_empty());
    nodens.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_query_is_lost_across_reloads() {
    let upstream = FakeUpstream::start_example().await;
    let file = ConfigFile::new();
    // Two valid configs that differ in live keys of every kind the miss path reads.
    let configs = [
        "qps = 800\nburst = 100\nper_client_qps = 0",
        "qps = 700\nburst = 90\nmax_inflight = 20\nqueue_wait = \"100ms\"\nper_client_qps = 0",
    ];
    let top = |i: usize| {
        let ttl = ["0", "5"][i];
        format!(
            "config_poll_interval = \"0s\"\nallow = [\"127.0.0.0/{}\", \"::1/128\"]\n[cache]\nmin_ttl = {ttl}",
            8 + i
        )
    };
    file.write(&top(0), &[upstream.addr()], configs[0]);
    let nodens = start(&file).await;
    // Warm the names the hit clients ask: any later upstream query for them would be a lost cache.
    let hot = [
        "www.example.com.",
        "mail.example.com.",
        "ns1.example.com.",
        "nope.example.com.",
    ];
    for name in hot {
        ask(nodens.dns, name, RecordType::A).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Three clients ask the hot names back to back; one asks a new name (a miss) every 5 ms.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, sent, lost, dns) = (stop.clone(), sent.clone(), lost.clone(), nodens.dns);
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let name = match c {
                        0 => format!("miss{i}.example.com."),
                        _ => hot[(i + c) % hot.len()].to_string(),
                    };
                    let query = build_query(&name, RecordType::A, Some(1232));
                    sent.fetch_add(1, Ordering::Relaxed);
                    match udp_exchange(dns, &query, Duration::from_secs(1)).await {
                        Some(m) if m.metadata.response_code != ResponseCode::ServFail => {}
                        _ => drop(lost.fetch_add(1, Ordering::Relaxed)),
                    }
                    if c == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for round in 0..40 {
        let next = (round + 1) % 2;
        file.write(&top(next), &[upstream.addr()], configs[next]);
        let reloader = nodens.running().reloader();
        let outcome = tokio::task::spawn_blocking(move || reloader.reload()).await.unwrap();
        assert!(matches!(outcome, Reload::Applied { .. }), "round {round}: {outcome:?}");
        // Spread the reloads over the load (pacing, not synchronisation).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (sent, lost) = (sent.load(Ordering::Relaxed), lost.load(Ordering::Relaxed));
    eprintln!("{sent} queries across 40 reloads, {lost} unanswered or SERVFAIL");
    assert!(sent > 400, "the load ran: {sent} queries");
    assert_eq!(
        lost, 0,
        "{lost} of {sent} queries unanswered or SERVFAIL across 40 reloads"
    );
    for name in hot {
        assert_eq!(
            upstream.queries_for(name, RecordType::A),
            1,
            "{name}: the cache was not kept"
        );
    }
    assert!(
        upstream.queries_for("miss1.example.com.", RecordType::A) == 1,
        "the misses went upstream"
    );
    nodens.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_applied_without_a_signal() {
    let upstream = FakeUpstream::start_example().await;
    let file = ConfigFile::new();
    file.write("config_poll_interval = \"20ms\"", &[upstream.addr()], "");
    let nodens = start(&file).await;
    assert_eq!(
        ask(nodens.dns, "www.example.com.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NoError
    );
    // The ConfigMap changes: the new ACL shuts out loopback.
    file.write(
        "config_poll_interval = \"20ms\"\nallow = [\"10.0.0.0/8\"]",
        &[upstream.addr()],
        "",
    );
    let refused = eventually(T, || async {
        ask(nodens.dns, "www.example.com.", RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::Refused
    })
    .await;
    assert!(refused, "the changed file was not applied");
    let applied = r#"nodens_config_reloads_total{result="applied"}"#;
    assert_eq!(
        config_metric(nodens.admin, applied).await,
        1.0,
        "one change, one reload"
    );
    // A broken edit is rejected once, not on every poll.
    file.write_raw("not toml");
    let rejected = r#"nodens_config_reloads_total{result="rejected"}"#;
    let once = eventually(T, || async {
        let (_, text) = http_get(nodens.admin, "/metrics").await;
        metric(&text, rejected) == Some(1.0)
    })
    .await;
    assert!(once, "the broken file was not noticed");
    // Ten more polls of the same broken file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(config_metric(nodens.admin, rejected).await, 1.0);
    nodens.stop().await;
}

/// The real binary: SIGHUP reloads, and without it (poll off) nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let upstream = FakeUpstream::start_example().await;
    let file = ConfigFile::new();
    let port = free_port();
    let admin_port = free_port();
    let write = |allow: &str| {
        let top = format!("config_poll_interval = \"0s\"\nallow = [{allow}]\n[cluster]\nsource = \"none\"");
        file.write(&top, &[upstream.addr()], "");
        let text = std::fs::read_to_string(file.path()).unwrap().replace(
            "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"",
            &format!("listen = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin_port}\""),
        );
        file.write_raw(&text);
    };
    write("\"127.0.0.0/8\"");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodens"))
        .args(["serve", "--config"])
        .arg(file.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nodens starts");
    let dns: SocketAddr = ([127, 0, 0, 1], port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let ready = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(admin).await.is_ok() && http_get(admin, "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "nodens did not become ready");
    assert_eq!(
        ask(dns, "www.example.com.", RecordType::A).await.metadata.response_code,
        ResponseCode::NoError
    );

    write("\"10.0.0.0/8\"");
    // No signal yet, and no polling: the old ACL still answers.
    assert_eq!(
        ask(dns, "mail.example.com.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NoError
    );
    signal(&child, libc::SIGHUP);
    let refused = eventually(T, || async {
        ask(dns, "www.example.com.", RecordType::A).await.metadata.response_code == ResponseCode::Refused
    })
    .await;
    assert!(refused, "SIGHUP did not apply the new ACL");
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP must not stop nodens");

    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

fn signal(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// `nodens check FILE`: what a reload would say, without serving.
#[test]
fn check_says_what_a_reload_would() {
    let file = ConfigFile::new();
    file.write("", &["127.0.0.1:53".parse().unwrap()], "qps = 0");
    let bad = Command::new(env!("CARGO_BIN_EXE_nodens"))
        .arg("check")
        .arg(file.path())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("upstream.qps") && stderr.contains("must be between"),
        "{stderr}"
    );

    file.write("", &["127.0.0.1:53".parse().unwrap()], "qps = 500");
    let good = Command::new(env!("CARGO_BIN_EXE_nodens"))
        .arg("check")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).ends_with("valid\n"));
}

/// The hub reads its config at start only: SIGHUP is logged, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_stop_the_hub() {
    use std::io::BufRead;
    let (listen, admin_port) = (free_port(), free_port());
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example-cluster.yaml");
    let mut hub = Command::new(env!("CARGO_BIN_EXE_nodens"))
        .args(["hub", "--cluster-state", cluster])
        .arg("--listen")
        .arg(format!("127.0.0.1:{listen}"))
        .arg("--admin")
        .arg(admin.to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the hub starts");
    // The hub's log, line by line, as it comes.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = hub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let ready = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(admin).await.is_ok() && http_get(admin, "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "the hub did not become ready");
    signal(&hub, libc::SIGHUP);
    // The signal was handled when the hub says so (the default action would have ended it).
    let handled = std::iter::from_fn(|| rx.recv_timeout(T).ok()).any(|line| line.contains("SIGHUP"));
    assert!(handled, "no log line for SIGHUP");
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert!(hub.try_wait().unwrap().is_none(), "SIGHUP stopped the hub");
    signal(&hub, libc::SIGTERM);
    let status = hub.wait().unwrap();
    assert!(status.success(), "{status}");
}
