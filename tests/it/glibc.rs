//! A real client: glibc's resolver (`getent ahosts`, i.e. getaddrinfo) with
//! the Kubernetes search list and `ndots:5`, against the real `nodens`
//! binary, inside a network namespace of its own (DESIGN §3, issue 5).
//!
//! resolv.conf cannot name a port, so nodens must listen on port 53: the
//! test runs everything inside `unshare --mount --net --pid --fork
//! --kill-child` (a new network namespace with only `lo`, a private mount
//! namespace to bind-mount resolv.conf and nsswitch.conf over the real ones,
//! and a PID namespace whose death takes every process with it). Inside:
//!
//! - 127.0.0.2:53, "the outside world": a second nodens whose cluster domain
//!   is `test` (RFC 2606), loaded from `fixtures/shortcut/outside.yaml`. So
//!   every name under `test` has an authoritative answer, NXDOMAIN included,
//!   without any server that is not this crate's binary: `www.example.svc.test`
//!   plays an external name and `corp.svc.test` the node's host search domain
//!   (with `intranet.corp.svc.test` in it). Its own upstream is a closed port,
//!   so names outside `test` are SERVFAIL.
//! - 127.0.0.1:53, the node's nodens with `--shortcut cname`, the cluster
//!   state `fixtures/shortcut/cluster.yaml`, `--search-domain corp.svc.test`,
//!   upstream 127.0.0.2:53: what the pod's resolv.conf points at.
//! - 127.0.0.3:53, the same with `--shortcut off`: glibc's own walk, the
//!   reference every result of the shortcut must equal.
//!
//! For each name, the script runs `getent ahosts` once against each node
//! instance and saves its output, exit code and the instance's /metrics before
//! and after (fetched with bash's /dev/tcp: no curl needed). The test then
//! checks the addresses against the expected ones, that the shortcut changed
//! no result (addresses, canonical name, exit code), and, for the names the
//! shortcut is for, that every query the client sent was answered by the
//! shortcut: one round trip (A and AAAA go out together).
//!
//! Where the sandbox forbids namespaces (not root, EPERM), the test prints
//! "skipped: ..." and passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::server::metric;

/// The pod's search list: kubelet's three cluster suffixes, then the node's.
const RESOLV_CONF: &str = "search default.svc.cluster.local svc.cluster.local cluster.local corp.svc.test\n\
                           options ndots:5 timeout:2 attempts:2\n";
const WHOLE_RUN: Duration = Duration::from_secs(180);

/// Runs as PID 1 of the new namespaces; `$1` the work dir, `$2` the nodens binary.
const SCRIPT: &str = r#"
set -u
dir=$1
bin=$2
fail() { echo "$*" >"$dir/setup-error"; exit 1; }
ip link set lo up || fail "ip link set lo up failed"
mount --bind "$dir/nsswitch.conf" /etc/nsswitch.conf || fail "bind-mounting nsswitch.conf failed"
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null; done
  wait
}
trap cleanup EXIT
"$bin" --config "$dir/outside.toml" >"$dir/outside.log" 2>&1 &
pids="$pids $!"
for mode in cname off; do
  case $mode in cname) ip=127.0.0.1 ;; off) ip=127.0.0.3 ;; esac
  "$bin" --config "$dir/node.toml" --listen "$ip:53" --admin "$ip:9153" --upstream 127.0.0.2:53 \
    --cluster-state "$dir/cluster.yaml" --shortcut "$mode" --search-domain corp.svc.test --ndots 5 \
    >"$dir/node-$mode.log" 2>&1 &
  pids="$pids $!"
done
http_get() { # ip path outfile
  exec 3<>"/dev/tcp/$1/9153" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: nodens\r\nConnection: close\r\n\r\n' "$2" >&3
  cat <&3 >"$3"
  exec 3<&-
}
# The UDP worker counts queries locally and publishes them when it is idle.
# To read counts that include everything before, send a marker query
# (`kube-dns.kube-system.svc.cluster.local TXT`, answered from the index; no
# byte of it is a newline, at which bash's printf would split the datagram)
# and poll /metrics until the marker is counted: it was read after the rest.
markers=0
settle() { # ip outfile
  markers=$((markers + 1))
  exec 4<>"/dev/udp/$1/53" || fail "no UDP socket to $1:53"
  printf '\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x08kube-dns\x0bkube-system\x03svc\x07cluster\x05local\x00\x00\x10\x00\x01' >&4
  exec 4<&-
  tries=0
  until http_get "$1" /metrics "$2" && grep -q "^nodens_requests_total{proto=\"udp\",qtype=\"TXT\"} $markers\$" "$2"; do
    tries=$((tries + 1))
    [ "$tries" -ge 500 ] && fail "the marker query was never counted on $1"
    sleep 0.02
  done
}
ready() { http_get "$1" /readyz "$dir/ready.tmp" 2>/dev/null && head -n 1 "$dir/ready.tmp" | grep -q ' 200 '; }
i=0
until ready 127.0.0.1 && ready 127.0.0.2 && ready 127.0.0.3; do
  i=$((i + 1))
  [ "$i" -ge 600 ] && fail "the nodens instances never became ready (see the logs)"
  sleep 0.05
done
for mode in cname off; do
  case $mode in cname) ip=127.0.0.1 ;; off) ip=127.0.0.3 ;; esac
  mount --bind "$dir/resolv-$mode.conf" /etc/resolv.conf || fail "bind-mounting resolv.conf failed"
  markers=0
  n=0
  while IFS= read -r name; do
    settle "$ip" "$dir/$mode.$n.before"
    getent ahosts "$name" >"$dir/$mode.$n.out" 2>&1
    echo $? >"$dir/$mode.$n.rc"
    settle "$ip" "$dir/$mode.$n.after"
    n=$((n + 1))
  done <"$dir/names"
done
echo ok >"$dir/finished"
"#;

/// What `getent ahosts NAME` should give.
struct Case {
    name: &'static str,
    addrs: &'static [&'static str],
    /// The shortcut is for this name: every query the client sends is answered by it.
    one_round_trip: bool,
}

const CASES: &[Case] = &[
    // Cluster names as pods write them: `svc.ns`.
    Case {
        name: "web.shop",
        addrs: &["10.96.10.5", "fd00:10:96::a05"],
        one_round_trip: true,
    },
    Case {
        name: "kubernetes.default",
        addrs: &["10.96.0.1"],
        one_round_trip: true,
    },
    // Fully qualified with a trailing dot: no search list, the authority answers.
    Case {
        name: "web.shop.svc.cluster.local.",
        addrs: &["10.96.10.5", "fd00:10:96::a05"],
        one_round_trip: false,
    },
    // An external name (3 dots: searched first).
    Case {
        name: "www.example.svc.test",
        addrs: &["192.0.2.1", "2001:db8::1"],
        one_round_trip: true,
    },
    // A name under the node's search domain.
    Case {
        name: "intranet",
        addrs: &["192.0.2.80"],
        one_round_trip: true,
    },
    // Exists nowhere.
    Case {
        name: "nosuch.example.svc.test",
        addrs: &[],
        one_round_trip: false,
    },
    // Fully qualified without the dot: 4 dots < ndots, so searched first
    // (`web.shop.svc.cluster.local.default.svc.cluster.local`, ...).
    Case {
        name: "web.shop.svc.cluster.local",
        addrs: &["10.96.10.5", "fd00:10:96::a05"],
        one_round_trip: true,
    },
    // `svc.ns` of a namespace that does not exist, whose first label exists
    // under the host domain: glibc finds nothing for it.
    Case {
        name: "intranet.nowhere",
        addrs: &[],
        one_round_trip: false,
    },
    // The same in a namespace that exists (`shop`, which has no service `intranet`).
    Case {
        name: "intranet.shop",
        addrs: &[],
        one_round_trip: false,
    },
];

/// Why the test cannot run here, if it cannot.
async fn unsupported() -> Option<String> {
    for tool in ["unshare", "ip", "getent", "mount", "bash"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    let probe = tokio::task::spawn_blocking(|| {
        Command::new("unshare")
            .args(["--mount", "--net", "--pid", "--fork", "--kill-child", "true"])
            .stdin(Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .expect("running unshare");
    if !probe.status.success() {
        let err = String::from_utf8_lossy(&probe.stderr);
        // Without CAP_SYS_ADMIN (not root, or a sandbox that forbids namespaces): EPERM.
        if err.contains("Operation not permitted") || err.contains("Permission denied") {
            return Some(format!("unshare is not permitted here: {}", err.trim()));
        }
        panic!("unshare failed for another reason than permissions: {err}");
    }
    None
}

/// Kills (SIGKILL) and reaps the child when dropped, e.g. on a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The sum of every sample of `name` whose labels contain `filter`.
fn sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What one `getent ahosts` run gave and cost.
#[derive(Debug, PartialEq)]
struct Lookup {
    addrs: BTreeSet<String>,
    canonical: Option<String>,
    rc: i32,
    /// Queries the nodens instance received during the lookup.
    queries: f64,
    /// Of those, answered by the shortcut.
    shortcut: f64,
    /// Walks the instance counted, by outcome.
    walks: Vec<(String, f64)>,
}

fn lookup(dir: &Path, mode: &str, n: usize) -> Lookup {
    let out = read(&dir.join(format!("{mode}.{n}.out")));
    let rc = read(&dir.join(format!("{mode}.{n}.rc"))).trim().parse().unwrap_or(-1);
    let before = read(&dir.join(format!("{mode}.{n}.before")));
    let after = read(&dir.join(format!("{mode}.{n}.after")));
    let delta = |name: &str, filter: &str| sum(&after, name, filter) - sum(&before, name, filter);
    let walks = ["bare_name", "host_domain", "cluster", "not_found"]
        .iter()
        .map(|o| {
            let series = format!(r#"nodens_shortcut_walks_total{{outcome="{o}"}}"#);
            let d = metric(&after, &series).unwrap_or(0.0) - metric(&before, &series).unwrap_or(0.0);
            (o.to_string(), d)
        })
        .filter(|(_, d)| *d != 0.0)
        .collect();
    Lookup {
        addrs: out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
        // glibc prints the canonical name (AI_CANONNAME) on the first line only.
        canonical: out
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_string),
        rc,
        // glibc asks A and AAAA; the markers are TXT.
        queries: delta("nodens_requests_total", r#"qtype="A""#) + delta("nodens_requests_total", r#"qtype="AAAA""#),
        shortcut: delta("nodens_responses_total", r#"source="shortcut""#),
        walks,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getaddrinfo_with_the_kubernetes_search_list() {
    if let Some(why) = unsupported().await {
        println!("skipped: glibc client in a network namespace: {why}");
        eprintln!("skipped: glibc client in a network namespace: {why}");
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_nodens"));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/shortcut");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    std::fs::copy(fixtures.join("cluster.yaml"), dir.join("cluster.yaml")).unwrap();
    std::fs::copy(fixtures.join("outside.yaml"), dir.join("outside.yaml")).unwrap();
    write("script.sh", SCRIPT);
    // DNS only: nothing in the machine's /etc/hosts may answer instead.
    write("nsswitch.conf", "hosts: dns\n");
    write("resolv-cname.conf", &format!("nameserver 127.0.0.1\n{RESOLV_CONF}"));
    write("resolv-off.conf", &format!("nameserver 127.0.0.3\n{RESOLV_CONF}"));
    let names: String = CASES.iter().map(|c| format!("{}\n", c.name)).collect();
    write("names", &names);
    // One UDP worker, so that the marker query (see SCRIPT) is counted by the same one as the client's.
    write("node.toml", "workers = 1\nshutdown_grace = \"1s\"\n");
    write(
        "outside.toml",
        &format!(
            "listen = [\"127.0.0.2:53\"]\nadmin = \"127.0.0.2:9153\"\nworkers = 1\nshutdown_grace = \"1s\"\n\
             [upstream]\n# A closed port: names outside `test` are SERVFAIL, at once.\n\
             servers = [\"127.0.0.1:9\"]\ntimeout = \"200ms\"\n\
             [cluster]\nsource = \"static\"\ndomain = \"test\"\nstatic_file = \"{}\"\n\
             [search]\nshortcut = \"off\"\n",
            dir.join("outside.yaml").display()
        ),
    );

    let child = Command::new("unshare")
        .args(["--mount", "--net", "--pid", "--fork", "--kill-child", "bash"])
        .arg(dir.join("script.sh"))
        .arg(dir)
        .arg(&bin)
        .env("RUST_LOG", "info")
        .env_remove("NODENS_CONFIG")
        .env_remove("NODENS_LISTEN")
        .env_remove("NODENS_UPSTREAM")
        .env_remove("NODENS_ADMIN")
        .env_remove("NODENS_UPSTREAM_QPS")
        .env_remove("NODENS_CLUSTER_STATE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting unshare");
    // If the test fails or times out, unshare is killed, and with it (--kill-child)
    // PID 1 of the namespace, whose death takes every nodens with it.
    let mut child = KillOnDrop(child);
    let deadline = tokio::time::Instant::now() + WHOLE_RUN;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waiting for unshare") {
            break Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logs = || {
        ["setup-error", "outside.log", "node-cname.log", "node-off.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", read(&dir.join(f))))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let status = match status {
        Some(s) => s,
        None => panic!("the namespace script did not finish within {WHOLE_RUN:?}\n{}", logs()),
    };
    assert!(
        status.success() && dir.join("finished").exists(),
        "the namespace script failed ({status})\n{}",
        logs()
    );

    let mut failures = Vec::new();
    for (n, case) in CASES.iter().enumerate() {
        let cname = lookup(dir, "cname", n);
        let off = lookup(dir, "off", n);
        let want: BTreeSet<String> = case.addrs.iter().map(|a| a.to_string()).collect();
        let name = case.name;
        if off.addrs != want {
            failures.push(format!(
                "{name}: glibc's own walk (shortcut off) gave {:?}, want {want:?}",
                off.addrs
            ));
        }
        if cname.addrs != want {
            failures.push(format!(
                "{name}: with the shortcut, addresses {:?}, want {want:?}",
                cname.addrs
            ));
        }
        if want.is_empty() != (cname.rc != 0) || cname.rc != off.rc {
            failures.push(format!(
                "{name}: getent exit code {} with the shortcut, {} without",
                cname.rc, off.rc
            ));
        }
        if cname.canonical != off.canonical {
            failures.push(format!(
                "{name}: canonical name {:?} with the shortcut, {:?} without",
                cname.canonical, off.canonical
            ));
        }
        if case.one_round_trip && (cname.queries == 0.0 || cname.shortcut != cname.queries) {
            failures.push(format!(
                "{name}: not one round trip: the client sent {} queries, {} answered by the shortcut \
                 (walks {:?}; without the shortcut it sent {})",
                cname.queries, cname.shortcut, cname.walks, off.queries
            ));
        }
        if off.shortcut != 0.0 || !off.walks.is_empty() {
            failures.push(format!("{name}: shortcut off still walked: {:?}", off.walks));
        }
        println!("{name}: shortcut {cname:?}\n    off {off:?}");
    }
    assert!(
        failures.is_empty(),
        "glibc through nodens:\n  {}",
        failures.join("\n  ")
    );
}
