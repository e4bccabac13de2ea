#!/usr/bin/env bash
# The search-path shortcut measured (issue 5, DESIGN §9): the `k8s` workload
# (pods with ndots:5 and the Kubernetes search list plus one host domain,
# A+AAAA per candidate, glibc's walk) against nodens with shortcut = off,
# nxdomain and cname, and against unbound, side by side in one run, each
# with a COLD cache: a fresh server per row. Lookups are spread uniformly
# over NAMES external names, so nearly every lookup is of a name not asked
# before and "upstream queries per lookup" is the cost of a distinct name.
#
#   benches/shortcut_modes.sh            # needs: cargo build --release --bin nodens --bin nodens-bench
#
# Knobs: LOOKUPS [1000], RATE [250 lookups/s], NAMES [100000].
# Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/compare/lib.sh
source benches/compare/lib.sh # unbound_conf

BENCH=target/release/nodens-bench
NODENS=target/release/nodens
LOOKUPS=${LOOKUPS:-1000}
RATE=${RATE:-250}
NAMES=${NAMES:-100000}
HOST=compute.internal
UP_PORT=5699
SRV_PORT=5690
TMP=$(mktemp -d); echo "raw runs in $TMP" >&2
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

[[ -x $BENCH && -x $NODENS ]] || cargo build --release --bin nodens --bin nodens-bench

"$BENCH" upstream --listen "127.0.0.1:$UP_PORT" --names "$NAMES" >"$TMP/upstream.log" 2>&1 &
"$BENCH" cluster-state >"$TMP/cluster.yaml"
# One bench address stands for a whole node of pods: lift the per-client
# share so shaping does not shed the cold run (it is measured in issue 6).
sed -E -e 's/^qps = .*/qps = 1000000/' -e 's/^per_client_qps = .*/per_client_qps = 1000000/' \
    -e 's/^burst = .*/burst = 100000/' config/nodens.toml >"$TMP/nodens.toml"

wait_port() {
    for _ in $(seq 50); do
        dig @127.0.0.1 -p "$1" probe.example +time=1 +tries=1 >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "server on port $1 did not answer" >&2
    return 1
}

measure() { # label
    "$BENCH" --server "127.0.0.1:$SRV_PORT" --workload k8s --cluster-share 0.2 --zipf 0 \
        --names "$NAMES" --host-domain "$HOST" --ndots 5 --rate "$RATE" \
        --duration $((LOOKUPS / RATE)) --upstream-stats "127.0.0.1:$UP_PORT" --json >"$TMP/$1.json"
}

start_nodens() { # mode
    "$NODENS" serve --config "$TMP/nodens.toml" --listen "127.0.0.1:$SRV_PORT" --admin 127.0.0.1:0 \
        --upstream "127.0.0.1:$UP_PORT" --cluster-state "$TMP/cluster.yaml" \
        --search-domain "$HOST" --shortcut "$1" >"$TMP/nodens-$1.log" 2>&1 &
    SERVER=$!
}

start_unbound() {
    mkdir -p "$TMP/unbound"
    unbound_conf "$TMP/unbound" "$SRV_PORT" "127.0.0.1@$UP_PORT"
    unbound -d -c "$TMP/unbound/unbound.conf" >"$TMP/unbound.log" 2>&1 &
    SERVER=$!
}

wait_port "$UP_PORT"
rows=()
for label in off nxdomain cname unbound; do
    if [[ $label == unbound ]]; then
        command -v unbound >/dev/null || { echo "unbound not installed: skipped" >&2; continue; }
        start_unbound
    else
        start_nodens "$label"
    fi
    wait_port "$SRV_PORT"
    measure "$label"
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    rows+=("$label")
done

python3 - "$TMP" "${rows[@]}" <<'EOF'
import json, sys
tmp, rows = sys.argv[1], sys.argv[2:]
print(f"k8s workload, cold caches, lookups uniform over many external names (+20% cluster names), one host search domain")
print("| server | client queries / lookup | round trips / lookup | upstream queries / lookup | p50 ms | p99 ms | failed |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    d = json.load(open(f"{tmp}/{r}.json"))
    look = d["lookups"]
    lat = look["latency_us"]
    up = d.get("upstream") or {}
    name = "unbound 1.17 (2 threads)" if r == "unbound" else f"nodens shortcut={r}"
    print(f"| {name} | {look['queries_per_lookup']:.2f} | {look['round_trips_per_lookup']:.2f} | "
          f"{up.get('per_lookup', 0):.2f} | {lat['p50']/1000:.2f} | {lat['p99']/1000:.2f} | {look['failed']} |")
EOF
