//! The `nodens-bench` binary, run for real: against its own in-process
//! upstream over loopback for about a second, and against a separate
//! `nodens-bench upstream` process read through its stats query. Checks that
//! the report is consistent (every query sent is answered or timed out,
//! percentiles are monotone, lookups add up) and that the JSON parses back.
//! Never asserts speed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_nodens-bench");

/// Runs the bench with `args` plus `--json`; returns the parsed report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(BENCH)
        .args(args)
        .arg("--json")
        .output()
        .expect("nodens-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nodens-bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    // It parses back to the same value.
    let again: Value = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(report, again);
    report
}

fn num(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| v.get(k).unwrap_or_else(|| panic!("no {path} in {v}")))
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number"))
}

/// The invariants every block of figures (the total, each class) holds.
fn check_figures(f: &Value) {
    let (sent, answered, timed_out) = (
        num(f, "queries.sent"),
        num(f, "queries.answered"),
        num(f, "queries.timed_out"),
    );
    assert!(sent > 0.0, "nothing sent: {f}");
    assert_eq!(sent, answered + timed_out, "sent = answered + timed out: {f}");
    let rcodes: f64 = f["rcodes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert_eq!(rcodes, answered, "every answer has an rcode: {f}");
    for lat in ["latency_us", "lookups.latency_us"] {
        let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
            .iter()
            .map(|q| num(f, &format!("{lat}.{q}")))
            .collect();
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{lat} not monotone: {p:?}");
        assert!(p[0] > 0.0, "{lat}: zero median: {p:?}");
    }
    let l = &f["lookups"];
    assert_eq!(
        num(l, "started"),
        num(l, "completed") + num(l, "abandoned"),
        "every lookup ends: {l}"
    );
    assert_eq!(
        num(l, "completed"),
        num(l, "found") + num(l, "nodata") + num(l, "nxdomain") + num(l, "failed"),
        "every completed lookup has an outcome: {l}"
    );
}

fn check(report: &Value) {
    check_figures(report);
    for class in report["classes"].as_array().unwrap() {
        check_figures(class);
    }
    assert!(num(report, "qps") > 0.0);
}

#[test]
fn hit_against_its_own_upstream() {
    let r = bench(&[
        "--start-upstream",
        "--workload",
        "hit",
        "--duration",
        "1",
        "--concurrency",
        "20",
        "--hit-names",
        "200",
        "--seed",
        "3",
    ]);
    check(&r);
    assert_eq!(num(&r, "warmup.sent"), 200.0);
    assert_eq!(num(&r, "warmup.noerror"), 200.0);
    assert_eq!(r["setup"]["mode"], "closed");
    // Every hit name exists: A answers only, one query per lookup.
    assert_eq!(num(&r, "rcodes.NOERROR"), num(&r, "queries.answered"));
    assert_eq!(num(&r, "lookups.queries_per_lookup"), 1.0);
    // Straight at the upstream: it saw every query that was answered.
    let up = num(&r, "upstream.queries");
    assert!(
        up >= num(&r, "queries.answered") && up <= num(&r, "queries.sent"),
        "{r}"
    );
}

#[test]
fn k8s_walks_at_a_fixed_rate() {
    let r = bench(&[
        "--start-upstream",
        "--workload",
        "k8s",
        "--duration",
        "1",
        "--rate",
        "1000",
        "--names",
        "500",
        "--seed",
        "5",
    ]);
    check(&r);
    assert_eq!(r["setup"]["mode"], "open");
    assert!(r.get("warmup").is_some_and(Value::is_null), "k8s does not warm: {r}");
    // A+AAAA per candidate: queries are twice the round trips.
    let q = num(&r, "lookups.queries_per_lookup");
    let rtt = num(&r, "lookups.round_trips_per_lookup");
    assert!((q - 2.0 * rtt).abs() < 1e-6 && rtt >= 1.0, "{q} {rtt}");
    // External names with < 5 dots walk the whole search list before the
    // bare name: the mix of names must show more than one round trip.
    assert!(rtt > 1.0, "{rtt}");
    assert!(num(&r, "rcodes.NXDOMAIN") > 0.0);
    assert!(num(&r, "lookups.found") > 0.0);
    assert!(num(&r, "send_lag_us.p50") >= 0.0);
}

#[test]
fn flood_mixed_with_hit_over_tcp() {
    let r = bench(&[
        "--start-upstream",
        "--workload",
        "flood",
        "--mix",
        "hit:0.5",
        "--tcp",
        "--duration",
        "1",
        "--concurrency",
        "10",
        "--hit-names",
        "100",
    ]);
    check(&r);
    let classes = r["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 2);
    assert_eq!(
        (classes[0]["workload"].as_str(), classes[1]["workload"].as_str()),
        (Some("flood"), Some("hit"))
    );
    assert!(num(&classes[0], "rcodes.NXDOMAIN") > 0.0, "flood names do not exist");
    assert_eq!(num(&classes[1], "rcodes.NOERROR"), num(&classes[1], "queries.answered"));
    assert_eq!(
        num(&r, "queries.sent"),
        num(&classes[0], "queries.sent") + num(&classes[1], "queries.sent")
    );
    assert_eq!(num(&r, "upstream.tcp"), num(&r, "upstream.queries"));
}

/// `nodens-bench upstream` as its own process, killed when dropped.
struct UpstreamProcess {
    child: Child,
    addr: SocketAddr,
}

impl UpstreamProcess {
    fn start(extra: &[&str]) -> UpstreamProcess {
        let mut child = Command::new(BENCH)
            .args(["upstream", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("upstream starts");
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .expect("upstream says where it listens");
        // "nodens-bench upstream: VERSION on ADDR (UDP x1, TCP), …"
        let addr = line
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        UpstreamProcess { child, addr }
    }
}

impl Drop for UpstreamProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn separate_upstream_process_with_a_rate_cap() {
    let up = UpstreamProcess::start(&["--names", "300", "--rate-cap", "200"]);
    let addr = up.addr.to_string();
    let r = bench(&[
        "--server",
        &addr,
        "--upstream-stats",
        &addr,
        "--workload",
        "hit",
        "--warm",
        "false",
        "--names",
        "300",
        "--hit-names",
        "300",
        "--rate",
        "500",
        "--duration",
        "1",
        "--timeout",
        "0.5",
    ]);
    check(&r);
    // Above the cap the upstream drops, and the bench sees timeouts; what it
    // did answer, the upstream counted.
    let dropped = num(&r, "upstream.dropped");
    assert!(dropped > 0.0, "{r}");
    assert!(num(&r, "queries.timed_out") > 0.0, "{r}");
    assert_eq!(num(&r, "upstream.queries"), num(&r, "queries.answered"), "{r}");
    assert_eq!(
        num(&r, "upstream.queries") + dropped,
        num(&r, "queries.sent"),
        "every query reached the upstream over loopback: {r}"
    );
    drop(up);
}

#[test]
fn bad_arguments_are_named() {
    for (args, needle) in [
        (&["--start-upstream", "--mix", "hit"][..], "WORKLOAD:FRACTION"),
        (&["--start-upstream", "--duration", "0"][..], "--duration"),
        (&["--workload", "hit"][..], "--server"),
        (
            &["--start-upstream", "--host-domain", "a..b", "--workload", "k8s"][..],
            "empty label",
        ),
    ] {
        let out = Command::new(BENCH).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
