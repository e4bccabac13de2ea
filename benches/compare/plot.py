#!/usr/bin/env python3
"""The plot of benches/compare.sh: throughput and latency per resolver.

    plot.py results.json compare.png

Three panels, one bar group per resolver, one bar per workload (hit, k8s):
saturated qps as a ratio to the canned responder (absolute qps on the bar),
p50 and p99 latency at the fixed rate (µs, log scale), and server CPU per
query as a ratio to the canned responder. Servers that did not run are
left out and named in the title.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display here
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"hit": "#4C72B0", "k8s": "#DD8452"}


def main(src, dst):
    with open(src) as f:
        data = json.load(f)
    rows = data["rows"]
    servers = []
    for r in rows:
        if r["status"] == "ok" and r["name"] not in servers:
            servers.append(r["name"])
    missing = sorted({"{} ({})".format(r["name"], r["status"]) for r in rows if r["status"] != "ok"})
    by = {(r["name"], r["workload"]): r for r in rows if r["status"] == "ok"}
    workloads = ["hit", "k8s"]
    width = 0.38
    xs = range(len(servers))

    fig, axes = plt.subplots(3, 1, figsize=(11, 12))
    ax = axes[0]
    for i, wl in enumerate(workloads):
        vals = [(by.get((s, wl)) or {}).get("qps_x") or 0 for s in servers]
        bars = ax.bar([x + (i - 0.5) * width for x in xs], vals, width, label=wl, color=COLORS[wl])
        for b, s in zip(bars, servers):
            qps = (by.get((s, wl)) or {}).get("qps")
            if qps:
                ax.annotate(
                    "{:,.0f}".format(qps),
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("saturated qps / limit")
    ax.set_title("Throughput, saturated ({} in flight)".format(data["setup"]["concurrency"]))
    ax.legend()

    ax = axes[1]
    for i, wl in enumerate(workloads):
        off = [x + (i - 0.5) * width for x in xs]
        p50 = [(by.get((s, wl)) or {}).get("p50_us") or 0 for s in servers]
        p99 = [(by.get((s, wl)) or {}).get("p99_us") or 0 for s in servers]
        ax.bar(off, p99, width, color=COLORS[wl], alpha=0.35, label="{} p99".format(wl))
        ax.bar(off, p50, width, color=COLORS[wl], label="{} p50".format(wl))
    ax.set_yscale("log")
    ax.set_ylabel("µs per query")
    ax.set_title(
        "Latency at a fixed rate (hit {:,.0f} q/s, k8s {:,.0f} lookups/s)".format(
            data["setup"]["hit_rate"], data["setup"]["k8s_rate"]
        )
    )
    ax.legend(ncol=4, fontsize=8)

    ax = axes[2]
    for i, wl in enumerate(workloads):
        vals = [(by.get((s, wl)) or {}).get("cpu_us_x") or 0 for s in servers]
        ax.bar([x + (i - 0.5) * width for x in xs], vals, width, label=wl, color=COLORS[wl])
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("server CPU per query / limit")
    ax.set_title("Server CPU per query, saturated")
    ax.legend()

    for ax in axes:
        ax.set_xticks(list(xs))
        ax.set_xticklabels(servers, fontsize=9)
    title = "DNS caches side by side, {} s per run, {} round(s)".format(
        data["setup"]["duration_s"], data["setup"]["rounds"]
    )
    if missing:
        title += "\nnot run: " + ", ".join(missing)
    busy = data["setup"].get("load_avg_max")
    if busy is not None and busy > 2.5:
        title += "\nload average up to {:.1f} during the runs: other work competed, figures are noisy".format(busy)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
