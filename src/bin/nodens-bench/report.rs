//! The run's report: the figures derived from the load engine's counts, as
//! JSON (`--json`, for scripts; every field below is part of that format) or
//! as a human table.
//!
//! Latencies are in microseconds. Query latency runs from the query's send
//! (the scheduled start, for the first queries of an open-loop lookup) to
//! its answer; lookup latency from the scheduled start to the end of the
//! walk. `qps` is answers received within the duration per second.
//!
//! Must not: measure anything itself, or print anything but the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::{ClassStats, Stats};
use crate::upstream::Counts;

/// Rcode names (RFC 1035 §4.1.1, RFC 2136, RFC 6895 for the rest).
const RCODES: [&str; 16] = [
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
    "DSOTYPENI",
    "RCODE12",
    "RCODE13",
    "RCODE14",
    "RCODE15",
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        if h.is_empty() {
            return Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Queries {
    pub sent: u64,
    pub answered: u64,
    pub timed_out: u64,
    /// Answers with TC=1 (the bench does not retry them over TCP).
    pub truncated: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Lookups {
    pub started: u64,
    /// Lookups whose walk ended (found or not).
    pub completed: u64,
    pub found: u64,
    pub nodata: u64,
    pub nxdomain: u64,
    /// SERVFAIL, REFUSED, timeouts: `getaddrinfo` would return EAI_AGAIN/EAI_FAIL.
    pub failed: u64,
    /// Still walking when the duration ended; not sent on.
    pub abandoned: u64,
    pub per_second: f64,
    /// Client queries per completed lookup.
    pub queries_per_lookup: f64,
    /// A+AAAA round trips (or single queries) per completed lookup.
    pub round_trips_per_lookup: f64,
    pub latency_us: Latency,
}

/// The figures of one class of lookups (or of all of them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    pub queries: Queries,
    pub qps: f64,
    pub latency_us: Latency,
    pub rcodes: BTreeMap<String, u64>,
    pub lookups: Lookups,
    /// Open loop only: how late the bench started lookups against their
    /// schedule (its own error, included in the latencies above).
    pub send_lag_us: Option<Latency>,
}

impl Figures {
    fn of(c: &ClassStats, secs: f64) -> Figures {
        let per = |a: u64, b: u64| if b == 0 { 0.0 } else { round3(a as f64 / b as f64) };
        Figures {
            queries: Queries {
                sent: c.sent,
                answered: c.answered,
                timed_out: c.timed_out,
                truncated: c.truncated,
            },
            qps: round1(c.answered_in_window as f64 / secs),
            latency_us: Latency::of(&c.query_ns),
            rcodes: c
                .rcodes
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (RCODES[i].to_owned(), *n))
                .collect(),
            lookups: Lookups {
                started: c.lookups_started,
                completed: c.lookups_done,
                found: c.found,
                nodata: c.nodata,
                nxdomain: c.nxdomain,
                failed: c.failed,
                abandoned: c.abandoned,
                per_second: round1(c.lookups_done as f64 / secs),
                queries_per_lookup: per(c.lookup_queries, c.lookups_done),
                round_trips_per_lookup: per(c.lookup_round_trips, c.lookups_done),
                latency_us: Latency::of(&c.lookup_ns),
            },
            send_lag_us: (!c.lag_ns.is_empty()).then(|| Latency::of(&c.lag_ns)),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Class {
    pub workload: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// What the bench upstream saw during the measured run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Upstream {
    pub address: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub qps: f64,
    /// Upstream queries per completed client lookup.
    pub per_lookup: f64,
    /// Upstream queries per client query sent.
    pub per_client_query: f64,
}

/// How the run was set up, echoed so a JSON file says what it measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Setup {
    pub server: String,
    pub workload: String,
    pub mix: Option<String>,
    pub transport: String,
    /// "open" (fixed rate) or "closed" (fixed concurrency).
    pub mode: String,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub threads: usize,
    pub sockets: usize,
    pub timeout_s: f64,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Warmup {
    pub sent: u64,
    pub answered: u64,
    pub noerror: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub setup: Setup,
    pub duration_s: f64,
    pub warmup: Option<Warmup>,
    #[serde(flatten)]
    pub total: Figures,
    /// Answers that matched no query in flight.
    pub unexpected: u64,
    /// Queries the kernel refused to send (counted as sent and timed out).
    pub send_refused: u64,
    /// Per workload, in `--mix` order (one entry without a mix).
    pub classes: Vec<Class>,
    pub upstream: Option<Upstream>,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Report {
    pub fn build(
        setup: Setup,
        stats: &Stats,
        classes: &[&str],
        warmup: Option<Warmup>,
        upstream: Option<(String, Counts)>,
    ) -> Report {
        let secs = stats.window.as_secs_f64().max(1e-9);
        let mut all = stats.classes[0].clone();
        for c in &stats.classes[1..] {
            // Same shapes: merging cannot fail.
            all.sent += c.sent;
            all.answered += c.answered;
            all.answered_in_window += c.answered_in_window;
            all.timed_out += c.timed_out;
            all.truncated += c.truncated;
            for (a, b) in all.rcodes.iter_mut().zip(c.rcodes) {
                *a += b;
            }
            let _ = all.query_ns.add(&c.query_ns);
            let _ = all.lookup_ns.add(&c.lookup_ns);
            let _ = all.lag_ns.add(&c.lag_ns);
            all.lookups_started += c.lookups_started;
            all.lookups_done += c.lookups_done;
            all.found += c.found;
            all.nodata += c.nodata;
            all.nxdomain += c.nxdomain;
            all.failed += c.failed;
            all.abandoned += c.abandoned;
            all.lookup_queries += c.lookup_queries;
            all.lookup_round_trips += c.lookup_round_trips;
        }
        let total = Figures::of(&all, secs);
        let upstream = upstream.map(|(address, counts)| Upstream {
            address,
            counts,
            qps: round1(counts.queries as f64 / secs),
            per_lookup: if all.lookups_done == 0 {
                0.0
            } else {
                round3(counts.queries as f64 / all.lookups_done as f64)
            },
            per_client_query: if all.sent == 0 {
                0.0
            } else {
                round3(counts.queries as f64 / all.sent as f64)
            },
        });
        Report {
            setup,
            duration_s: round3(secs),
            warmup,
            total,
            unexpected: stats.unexpected,
            send_refused: stats.send_refused,
            classes: stats
                .classes
                .iter()
                .zip(classes)
                .map(|(c, name)| Class {
                    workload: (*name).to_owned(),
                    figures: Figures::of(c, secs),
                })
                .collect(),
            upstream,
        }
    }

    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let s = &self.setup;
        let pace = match (s.rate, s.concurrency) {
            (Some(r), _) => format!("open loop, {r} lookups/s"),
            (None, Some(c)) => format!("closed loop, {c} lookups in flight"),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "nodens-bench: {} workload{} against {} over {}, {pace}, {:.1} s, seed {}",
            s.workload,
            s.mix
                .as_deref()
                .map(|m| format!(" (mixed with {m})"))
                .unwrap_or_default(),
            s.server,
            s.transport,
            self.duration_s,
            s.seed
        );
        if let Some(w) = &self.warmup {
            let _ = writeln!(
                o,
                "warm-up: {} sent, {} answered, {} NOERROR",
                w.sent, w.answered, w.noerror
            );
        }
        let _ = writeln!(o);
        let rows: Vec<(&str, &Figures)> = if self.classes.len() > 1 {
            std::iter::once(("all", &self.total))
                .chain(self.classes.iter().map(|c| (c.workload.as_str(), &c.figures)))
                .collect()
        } else {
            vec![("all", &self.total)]
        };
        let _ = writeln!(
            o,
            "{:<8} {:>10} {:>10} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}",
            "class", "sent", "answered", "timeout", "qps", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
        );
        for (name, f) in &rows {
            let l = &f.latency_us;
            let _ = writeln!(
                o,
                "{:<8} {:>10} {:>10} {:>9} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1}",
                name,
                f.queries.sent,
                f.queries.answered,
                f.queries.timed_out,
                f.qps,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<8} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>7} {:>11} {:>8}",
            "lookups",
            "completed",
            "found",
            "nodata",
            "nxdomain",
            "failed",
            "q/lkp",
            "rtt/lkp",
            "lkp/s",
            "p50 us",
            "p99 us"
        );
        for (name, f) in &rows {
            let k = &f.lookups;
            let _ = writeln!(
                o,
                "{:<8} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7.2} {:>9.2} {:>7.0} {:>11.1} {:>8.1}",
                name,
                k.completed,
                k.found,
                k.nodata,
                k.nxdomain,
                k.failed,
                k.queries_per_lookup,
                k.round_trips_per_lookup,
                k.per_second,
                k.latency_us.p50,
                k.latency_us.p99
            );
        }
        let _ = writeln!(o);
        if let Some(l) = &self.total.send_lag_us {
            let _ = writeln!(
                o,
                "send lag (bench lateness against the schedule, in the latencies): p50 {:.1} us, p99 {:.1} us, max {:.1} us",
                l.p50, l.p99, l.max
            );
        }
        let rc: Vec<String> = self.total.rcodes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            o,
            "rcodes: {}",
            if rc.is_empty() { "none".into() } else { rc.join(", ") }
        );
        if self.total.queries.truncated + self.unexpected + self.send_refused > 0 {
            let _ = writeln!(
                o,
                "truncated: {}, unexpected answers: {}, refused sends: {}",
                self.total.queries.truncated, self.unexpected, self.send_refused
            );
        }
        if let Some(u) = &self.upstream {
            let _ = writeln!(
                o,
                "upstream {}: {} queries ({} A, {} AAAA, {} other; {} NXDOMAIN, {} dropped, {} TCP), {:.0} qps, {:.3} per lookup, {:.3} per client query",
                u.address,
                u.counts.queries,
                u.counts.a,
                u.counts.aaaa,
                u.counts.other,
                u.counts.nxdomain,
                u.counts.dropped,
                u.counts.tcp,
                u.qps,
                u.per_lookup,
                u.per_client_query
            );
        }
        o
    }
}
