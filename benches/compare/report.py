#!/usr/bin/env python3
"""The table of benches/compare.sh.

Reads the raw runs (runs.tsv: one line per nodens-bench run with the
server's CPU ticks and RSS, plus the bench's JSON report; servers.tsv: each
server's status and version), prints one markdown table and writes
results.md and results.json. Each figure is the median over rounds; each
ratio is the median over rounds of (figure / the canned responder's figure
in the same round), so a slow patch of the machine hits both sides.

Standard library only: it must run before matplotlib is installed.
"""

import argparse
import json
import os
import platform
import statistics
import sys

NAMES = {
    "canned": "canned responder (the limit)",
    "nodens": "nodens",
    "coredns-kubeadm": "CoreDNS, kubeadm Corefile",
    "coredns-nodelocal": "CoreDNS, NodeLocal DNSCache Corefile",
    "unbound": "unbound, 2 threads",
    "dnsmasq": "dnsmasq",
}
WORKLOADS = ("hit", "k8s")


def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def load(raw):
    runs = {}  # (round, server, workload, kind) -> (report, cpu_ticks, rss_kb)
    loads = []
    with open(os.path.join(raw, "runs.tsv")) as f:
        for line in f:
            r, server, wl, kind, path, ticks, rss, load = (line.rstrip("\n").split("\t") + [""])[:8]
            with open(path) as j:
                runs[(int(r), server, wl, kind)] = (json.load(j), int(ticks), int(rss or 0))
            if load:
                loads.append(float(load))
    servers = []
    with open(os.path.join(raw, "servers.tsv")) as f:
        next(f)
        for line in f:
            name, status, version = (line.rstrip("\n").split("\t") + ["", ""])[:3]
            servers.append((name, status, version))
    return runs, servers, loads


def figures(runs, clk_tck):
    """Per (round, server, workload): the figures of the table."""
    out = {}
    for (r, s, wl, kind), (rep, ticks, rss) in runs.items():
        f = out.setdefault((r, s, wl), {"rss_mib": 0.0})
        f["rss_mib"] = max(f["rss_mib"], rss / 1024)
        if kind == "sat":
            answered = get(rep, "queries.answered") or 0
            sent = get(rep, "queries.sent") or 0
            f["qps"] = get(rep, "qps")
            f["cpu_us"] = ticks / clk_tck * 1e6 / answered if answered else None
            f["lost_pct"] = 100.0 * (get(rep, "queries.timed_out") or 0) / sent if sent else None
            f["sat_p99_us"] = get(rep, "latency_us.p99")
            if wl == "hit":
                f["upstream_per_lookup"] = get(rep, "upstream.per_lookup")
        else:
            f["p50_us"] = get(rep, "latency_us.p50")
            f["p99_us"] = get(rep, "latency_us.p99")
            f["lat_qps"] = get(rep, "qps")
            f["lat_lost_pct"] = (
                100.0 * (get(rep, "queries.timed_out") or 0) / get(rep, "queries.sent")
                if get(rep, "queries.sent")
                else None
            )
            f["lookup_p99_us"] = get(rep, "lookups.latency_us.p99")
            # The bench's own lateness against its schedule: large means the
            # client CPU was taken by something else, and the latencies
            # above carry it.
            f["send_lag_p50_us"] = get(rep, "send_lag_us.p50")
            f["send_lag_p99_us"] = get(rep, "send_lag_us.p99")
            if wl == "k8s":
                f["upstream_per_lookup"] = get(rep, "upstream.per_lookup")
                f["queries_per_lookup"] = get(rep, "lookups.queries_per_lookup")
                f["round_trips_per_lookup"] = get(rep, "lookups.round_trips_per_lookup")
                f["lookup_failed"] = get(rep, "lookups.failed")
    return out


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


RATIO_KEYS = ("qps", "cpu_us", "p50_us", "p99_us")
KEYS = RATIO_KEYS + (
    "lost_pct",
    "lat_lost_pct",
    "upstream_per_lookup",
    "rss_mib",
    "sat_p99_us",
    "lat_qps",
    "lookup_p99_us",
    "queries_per_lookup",
    "round_trips_per_lookup",
    "lookup_failed",
    "send_lag_p50_us",
    "send_lag_p99_us",
)
# Past these the bench, not the server, may be what the latencies show.
LAG_P50_US = 10.0
LAG_P99_US = 500.0
# 1-minute load average past which other work was competing.
BUSY_LOAD = 2.5


def summarize(fig, servers):
    rounds = sorted({r for (r, _, _) in fig})
    rows = []
    for name, status, version in servers:
        for wl in WORKLOADS:
            row = {"server": name, "name": NAMES.get(name, name), "version": version, "status": status, "workload": wl}
            per_round = [fig.get((r, name, wl)) for r in rounds]
            if status == "ok" and not any(per_round):
                row["status"] = "no runs"
            for k in KEYS:
                row[k] = median([f.get(k) for f in per_round if f])
            for k in RATIO_KEYS:
                ratios = []
                for r in rounds:
                    mine, base = fig.get((r, name, wl)), fig.get((r, "canned", wl))
                    if mine and base and mine.get(k) is not None and base.get(k):
                        ratios.append(mine[k] / base[k])
                row[k + "_x"] = median(ratios)
            rows.append(row)
    return rows


def cell(v, x=None, fmt="{:,.0f}"):
    if v is None:
        return "—"
    s = fmt.format(v)
    if x is not None:
        s += " ({:.2f}×)".format(x)
    return s


def lagged(row):
    p50, p99 = row.get("send_lag_p50_us"), row.get("send_lag_p99_us")
    return (p50 or 0) > LAG_P50_US or (p99 or 0) > LAG_P99_US


def table(rows, setup):
    head = (
        "| resolver | version | workload | qps, saturated (× limit) | server CPU µs/query (× limit) "
        "| p50 µs at fixed rate (× limit) | p99 µs at fixed rate (× limit) | lost, saturated "
        "| client queries/lookup (round trips) | upstream queries/lookup | RSS MiB |"
    )
    lines = [head, "|" + "---|" * 11]
    any_lag = False
    for row in rows:
        if row["status"] != "ok":
            if row["workload"] != WORKLOADS[0]:
                continue
            lines.append(
                "| {} | {} | hit, k8s | — | — | — | — | — | — | — | — |".format(row["name"], row["status"])
            )
            continue
        upstream = "—" if row["server"] == "canned" else cell(row["upstream_per_lookup"], fmt="{:.2f}")
        if row["workload"] == "k8s" and row["queries_per_lookup"] is not None:
            walk = "{:.2f} ({:.2f})".format(row["queries_per_lookup"], row["round_trips_per_lookup"] or 0)
        else:
            walk = "1.00 (1.00)"
        mark = ""
        if lagged(row):
            mark = " †"
            any_lag = True
        lines.append(
            "| {} | {} | {} | {} | {} | {}{} | {}{} | {} | {} | {} | {} |".format(
                row["name"],
                row["version"] or "—",
                row["workload"],
                cell(row["qps"], row["qps_x"]),
                cell(row["cpu_us"], row["cpu_us_x"], "{:.2f}"),
                cell(row["p50_us"], row["p50_us_x"], "{:.1f}"),
                mark,
                cell(row["p99_us"], row["p99_us_x"], "{:.1f}"),
                mark,
                cell(row["lost_pct"], fmt="{:.2f}%"),
                walk,
                upstream,
                cell(row["rss_mib"], fmt="{:.0f}"),
            )
        )
    s = setup
    notes = [
        "",
        "{} round(s) of {} s per run on {} CPUs ({}), {}; medians over rounds, × = ratio to the canned "
        "responder in the same round.".format(
            s["rounds"],
            s["duration_s"],
            os.cpu_count(),
            platform.platform(terse=True),
            "servers pinned to one CPU, nodens-bench and the bench upstream to the other"
            if s["pin"]
            else "nothing pinned",
        ),
        "Saturated: {} lookups in flight (closed loop). Fixed rate: hit {} queries/s, k8s {} lookups/s "
        "(open loop; latency per query, counted from its scheduled send time).".format(
            s["concurrency"], s["hit_rate"], s["k8s_rate"]
        ),
        "hit: 1,000 names, warmed first, A only. k8s: pods with ndots:5 and the 4-entry search list, "
        "A+AAAA per candidate as glibc; the fixed-rate run comes first, from a cold cache, so upstream "
        "queries/lookup compare across resolvers. The canned responder answers every name, so its k8s "
        "lookups take one round trip.",
        "nodens: its cluster zone loaded with the same services (`nodens-bench cluster-state`), search "
        "domain compute.internal, upstream rate shaping lifted; the others forward cluster.local to the "
        "bench upstream, which answers it in kube-dns' place.",
        "Server CPU from /proc/PID/stat (utime+stime) over the saturated run; RSS is VmRSS at the end.",
    ]
    busy = s.get("load_avg_max")
    if busy is not None and busy > BUSY_LOAD:
        notes.append(
            "Warning: the 1-minute load average reached {:.1f} during the runs (this script alone keeps it "
            "near 2): other processes competed for the CPUs, so the figures are noisy; the ratios, taken "
            "within each round, suffer least.".format(busy)
        )
    if any_lag:
        notes.append(
            "† nodens-bench itself started sends late in that run (send lag p50 > {:.0f} µs or p99 > {:.0f} µs: "
            "its CPU was taken by something else), so the latency includes the bench's own delay; rerun on a "
            "quiet machine.".format(LAG_P50_US, LAG_P99_US)
        )
    return "\n".join(lines + notes)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clk-tck", type=int, default=100)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--hit-rate", type=float, required=True)
    ap.add_argument("--k8s-rate", type=float, required=True)
    ap.add_argument("--pin", type=int, default=1)
    a = ap.parse_args()
    runs, servers, loads = load(a.raw)
    rows = summarize(figures(runs, a.clk_tck), servers)
    setup = {
        "duration_s": a.duration,
        "rounds": a.rounds,
        "concurrency": a.concurrency,
        "hit_rate": a.hit_rate,
        "k8s_rate": a.k8s_rate,
        "pin": bool(a.pin),
        "load_avg_max": max(loads) if loads else None,
    }
    md = table(rows, setup)
    print(md)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"setup": setup, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
