#!/usr/bin/env bash
# Is nodens-bench the bottleneck? Loads the canned responder (the loopback
# limit, pinned to SERVER_CPU) from CLIENT_CPU with nodens-bench and with
# dnsperf in turn, saturated and at a fixed rate, and prints both side by
# side with the client's own CPU use. A load generator that is not the
# bottleneck reaches at least dnsperf's qps against the same target.
#
#   benches/compare/ceiling.sh
#
# Knobs: ROUNDS [3], DURATION [5], CONCURRENCY [200] (dnsperf: -c 4 -q
# CONCURRENCY), RATE [20000], SERVER_CPU [0], CLIENT_CPU [1], BASE_PORT
# [5600], SKIP_BUILD [0]. Needs dnsperf (apt-get install dnsperf).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOG_TAG=ceiling
BASE_PORT=${BASE_PORT:-5600}
# shellcheck source=lib.sh
source "$ROOT/benches/compare/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-200}
RATE=${RATE:-20000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
BENCH="$ROOT/target/release/nodens-bench"
CANNED_BIN="$ROOT/target/release/examples/canned_responder"

command -v dnsperf >/dev/null || apt_install dnsperf || die "dnsperf not found"
if [[ $SKIP_BUILD != 1 ]]; then
    (cd "$ROOT" && cargo build --release --bin nodens-bench --example canned_responder) || die "build failed"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/nodens-ceiling.XXXXXX")
CANNED_PID=
cleanup() {
    local rc=$?
    [[ -n $CANNED_PID ]] && stop_pid "$CANNED_PID"
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pick_port
PORT=$PICKED
taskset -c "$SERVER_CPU" "$CANNED_BIN" --listen "$ADDR:$PORT" --threads 1 >"$TMP/canned.log" 2>&1 &
CANNED_PID=$!
wait_ready "$CANNED_PID" "$PORT" || die "canned responder did not start"
for ((i = 0; i < 1000; i++)); do echo "s$i.example A"; done >"$TMP/queries"

# Runs "$@" on the client CPU; prints "user+sys seconds" of it to $1.cpu.
timed() {
    local out=$1 TIMEFORMAT='%U %S'
    shift
    { time taskset -c "$CLIENT_CPU" "$@" >"$out" 2>&1; } 2>"$out.time" || true
    awk '{ print $1 + $2 }' "$out.time" >"$out.cpu"
}

printf 'round\ttool\trun\tqps\tp50_us\tp99_us\tclient_cpu_pct\n' >"$TMP/rows"
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS"
    o="$TMP/bench.sat.$r"
    timed "$o" "$BENCH" --server "$ADDR:$PORT" --workload hit --warm false --duration "$DURATION" \
        --concurrency "$CONCURRENCY" --json
    printf '%s\tnodens-bench\tsat\t%s\t%s\t%s\t%s\n' "$r" "$(json_get "$o" qps)" "$(json_get "$o" latency_us.p50)" \
        "$(json_get "$o" latency_us.p99)" "$(awk -v d="$DURATION" '{ printf "%.0f", 100 * $1 / d }' "$o.cpu")" >>"$TMP/rows"
    o="$TMP/dnsperf.sat.$r"
    timed "$o" dnsperf -s "$ADDR" -p "$PORT" -d "$TMP/queries" -l "$DURATION" -c 4 -q "$CONCURRENCY"
    printf '%s\tdnsperf\tsat\t%s\tNA\tNA\t%s\n' "$r" "$(awk '/Queries per second/ { print $4 }' "$o")" \
        "$(awk -v d="$DURATION" '{ printf "%.0f", 100 * $1 / d }' "$o.cpu")" >>"$TMP/rows"
    o="$TMP/bench.lat.$r"
    timed "$o" "$BENCH" --server "$ADDR:$PORT" --workload hit --warm false --duration "$DURATION" \
        --rate "$RATE" --json
    printf '%s\tnodens-bench\tlat\t%s\t%s\t%s\t%s\n' "$r" "$(json_get "$o" qps)" "$(json_get "$o" latency_us.p50)" \
        "$(json_get "$o" latency_us.p99)" "$(awk -v d="$DURATION" '{ printf "%.0f", 100 * $1 / d }' "$o.cpu")" >>"$TMP/rows"
    o="$TMP/dnsperf.lat.$r"
    timed "$o" dnsperf -s "$ADDR" -p "$PORT" -d "$TMP/queries" -l "$DURATION" -c 4 -Q "$RATE" -v
    read -r p50 p99 < <(awk '$1 == ">" && $NF ~ /^[0-9.]+$/ { print $NF * 1e6 }' "$o" | sort -n | awk '
        { v[NR] = $1 } END { if (NR == 0) { print "NA NA"; exit }
        i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++; i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
        printf "%.1f %.1f\n", v[i50], v[i99] }')
    printf '%s\tdnsperf\tlat\t%s\t%s\t%s\t%s\n' "$r" "$(awk '/Queries per second/ { print $4 }' "$o")" "$p50" "$p99" \
        "$(awk -v d="$DURATION" '{ printf "%.0f", 100 * $1 / d }' "$o.cpu")" >>"$TMP/rows"
done

echo
echo "canned responder on cpu $SERVER_CPU, load from cpu $CLIENT_CPU, ${DURATION}s runs, $ROUNDS round(s)"
echo "sat: closed loop, $CONCURRENCY in flight (dnsperf -c 4 -q $CONCURRENCY); lat: fixed $RATE qps (dnsperf -Q)"
column -t -s $'\t' "$TMP/rows"
echo
echo "medians:"
awk -F'\t' 'NR > 1 { k = $2 " " $3; q[k] = q[k] " " $4; a[k] = a[k] " " $5; b[k] = b[k] " " $6; c[k] = c[k] " " $7 }
    function med(s,   n, v, i, j, t) { n = split(s, v, " "); for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j-1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j-1]; v[j-1] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
    END { printf "%-16s %10s %8s %8s %8s\n", "tool run", "qps", "p50 us", "p99 us", "cpu %"
        for (k in q) printf "%-16s %10.0f %8s %8s %8s\n", k, med(q[k]), med(a[k]), med(b[k]), med(c[k]) }' "$TMP/rows" | sort
