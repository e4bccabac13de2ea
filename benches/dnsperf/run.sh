#!/usr/bin/env bash
# Warm-cache comparison: canned responder (the loopback limit) vs nodens vs
# unbound, measured side by side in one run with dnsperf. Every figure is also
# reported as a ratio to the canned responder measured in the same round,
# because machine speed drifts. See benches/dnsperf/README.md.
#
#   benches/dnsperf/run.sh
#
# Knobs (environment variables, defaults in brackets):
#   ROUNDS [5]        rounds; each round measures every server once (order rotates)
#   DURATION [3]      seconds per dnsperf run (saturated and fixed-rate each)
#   CLIENTS [4]       dnsperf -c (source ports; spreads over SO_REUSEPORT sockets)
#   OUTSTANDING [200] dnsperf -q for the saturated run
#   LAT_QPS [20000]   dnsperf -Q for the latency run
#   NAMES [1000]      distinct names in the query file
#   DOMAIN [bench.test]
#   PIN [1]           1: servers on SERVER_CPU, dnsperf on CLIENT_CPU (taskset)
#   SERVER_CPU [0] CLIENT_CPU [1]
#   BASE_PORT [5400]  first port tried; canned, nodens, unbound take the next free ones
#   SERVERS ["canned nodens unbound"]
#   CANNED_THREADS [1]
#   SKIP_BUILD [0]    1: use the binaries already in target/release
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
LAT_QPS=${LAT_QPS:-20000}
NAMES=${NAMES:-1000}
DOMAIN=${DOMAIN:-bench.test}
PIN=${PIN:-1}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-5400}
SERVERS=${SERVERS:-"canned nodens unbound"}
CANNED_THREADS=${CANNED_THREADS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}

EXPECT=192.0.2.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT_DIR="$ROOT/target/dnsperf"
NODENS_BIN="$ROOT/target/release/nodens"
CANNED_BIN="$ROOT/target/release/examples/canned_responder"

# log, die, port_free, pick_port (from BASE_PORT), cpu_ticks: shared with benches/compare.sh.
LOG_TAG=run.sh
# shellcheck source=../compare/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../compare/lib.sh"

for tool in dnsperf dig ss awk sort; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
if [[ $PIN == 1 ]] && (($(nproc) < 2)); then
    log "fewer than 2 CPUs: not pinning"
    PIN=0
fi
if [[ $PIN == 1 ]]; then
    command -v taskset >/dev/null || die "taskset not found (or run with PIN=0)"
    SRV_PIN=(taskset -c "$SERVER_CPU")
    CLI_PIN=(taskset -c "$CLIENT_CPU")
else
    SRV_PIN=()
    CLI_PIN=()
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/nodens-dnsperf.XXXXXX")
declare -A PID=() PORT=() SKIP=()

cleanup() {
    local rc=$?
    for s in "${!PID[@]}"; do
        kill "${PID[$s]}" 2>/dev/null || true
    done
    for s in "${!PID[@]}"; do
        wait "${PID[$s]}" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build

if [[ $SKIP_BUILD != 1 ]]; then
    log "building release binaries"
    if ! (cd "$ROOT" && cargo build --release --bin nodens --example canned_responder); then
        log "full build failed; building canned_responder alone (nodens will be skipped)"
        (cd "$ROOT" && cargo build --release --example canned_responder) ||
            die "cannot build canned_responder"
        SKIP[nodens]="build failed"
    fi
fi
[[ -x $CANNED_BIN ]] || die "$CANNED_BIN missing"

# ---------------------------------------------------------------- helpers

answers() { # port -> 0 if the server returns the canned address
    local got
    got=$(dig @"$ADDR" -p "$1" "probe.$DOMAIN" A +short +time=1 +tries=1 2>/dev/null || true)
    [[ $got == *"$EXPECT"* ]]
}

wait_ready() { # name -> 0 once it answers, 1 if it exited, 2 if no answer in 10 s
    local s=$1 i
    for ((i = 0; i < 50; i++)); do
        kill -0 "${PID[$s]}" 2>/dev/null || return 1
        answers "${PORT[$s]}" && return 0
        sleep 0.2
    done
    return 2
}

start_server() { # name
    local s=$1 port
    pick_port
    port=$PICKED
    PORT[$s]=$port
    case $s in
    canned)
        "${SRV_PIN[@]}" "$CANNED_BIN" --listen "$ADDR:$port" --threads "$CANNED_THREADS" \
            >"$TMP/$s.log" 2>&1 &
        ;;
    nodens)
        "${SRV_PIN[@]}" "$NODENS_BIN" serve --listen "$ADDR:$port" \
            --upstream "$ADDR:${PORT[canned]}" --admin "$ADDR:0" >"$TMP/$s.log" 2>&1 &
        ;;
    unbound)
        mkdir -p "$TMP/unbound"
        unbound_conf "$TMP/unbound" "$port" "$ADDR@${PORT[canned]}"
        "${SRV_PIN[@]}" unbound -d -c "$TMP/unbound/unbound.conf" >"$TMP/$s.log" 2>&1 &
        ;;
    esac
    PID[$s]=$!
    local rc=0 st=0
    wait_ready "$s" || rc=$?
    if ((rc != 0)); then
        kill "${PID[$s]}" 2>/dev/null || true
        wait "${PID[$s]}" 2>/dev/null || st=$?
        unset 'PID[$s]'
        if ((rc == 1)); then
            SKIP[$s]="exited at startup (status $st)"
        else
            SKIP[$s]="no answer $EXPECT from $ADDR:$port within 10s"
        fi
        log "$s: ${SKIP[$s]}; log tail:"
        tail -n 5 "$TMP/$s.log" >&2 || true
        return 1
    fi
    log "$s: pid ${PID[$s]} on $ADDR:$port"
}

# parse a dnsperf summary -> "sent completed lost qps noerror avg_us sd_us runtime"
parse_dnsperf() {
    awk '
        /Queries sent:/      { sent = $3 }
        /Queries completed:/ { done = $3 }
        /Queries lost:/      { lost = $3 }
        /Queries per second:/{ qps = $4 }
        /Run time \(s\):/    { rt = $4 }
        /Response codes:/    { if (match($0, /NOERROR [0-9]+/)) noerr = substr($0, RSTART + 8, RLENGTH - 8) }
        /Average Latency/    { avg = $4 * 1e6 }
        /Latency StdDev/     { sd = $4 * 1e6 }
        END { printf "%d %d %d %.1f %d %.1f %.1f %.6f\n", sent, done, lost, qps, noerr, avg, sd, rt }
    ' "$1"
}

# run dnsperf on the client CPU; $1 = output file, rest = dnsperf args.
# Writes the client CPU seconds (user+sys) to $1.cpu.
dnsperf_run() {
    local out=$1
    shift
    local TIMEFORMAT='%U %S'
    { time "${CLI_PIN[@]}" dnsperf -s "$ADDR" "$@" >"$out" 2>&1; } 2>"$out.time" ||
        log "dnsperf exited non-zero (see output below)"
    awk '{ print $1 + $2 }' "$out.time" >"$out.cpu"
}

warm() { # name
    local s=$1 out="$TMP/warm.$1"
    dnsperf_run "$out" -p "${PORT[$s]}" -d "$TMP/queries" -n 1 -c 1 -q 20
    local ok noerr
    read -r _ ok _ _ noerr _ < <(parse_dnsperf "$out")
    if ((ok != NAMES || noerr != NAMES)); then
        log "$s: warm-up pass got $ok answers, $noerr NOERROR of $NAMES"
    fi
}

# one measured run; appends "round server kind metric..." to $TMP/raw
measure() { # round name kind(sat|lat)
    local r=$1 s=$2 kind=$3 out="$TMP/$2.$3.$1" c0 c1 args
    if [[ $kind == sat ]]; then
        args=(-l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING")
    else
        args=(-l "$DURATION" -c "$CLIENTS" -Q "$LAT_QPS" -v)
    fi
    c0=$(cpu_ticks "${PID[$s]}") || { log "$s died"; return 1; }
    dnsperf_run "$out" -p "${PORT[$s]}" -d "$TMP/queries" "${args[@]}"
    c1=$(cpu_ticks "${PID[$s]}") || { log "$s died"; return 1; }
    local sent ok lost qps noerr avg sd rt p50=NA p99=NA
    read -r sent ok lost qps noerr avg sd rt < <(parse_dnsperf "$out")
    if [[ $kind == lat ]]; then
        # -v prints "> RCODE name type latency_s" per answered query.
        read -r p50 p99 < <(awk '$1 == ">" && $NF ~ /^[0-9.]+$/ { print $NF * 1e6 }' "$out" |
            sort -n | awk '{ v[NR] = $1 } END {
                if (NR == 0) { print "NA NA"; exit }
                i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++
                i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
                printf "%.1f %.1f\n", v[i50], v[i99] }')
    fi
    local cli_cpu
    cli_cpu=$(<"$out.cpu")
    # srv_cpu_us_per_q = (Δticks / CLK_TCK) / completed, in µs
    awk -v r="$r" -v s="$s" -v k="$kind" -v sent="$sent" -v done="$ok" -v lost="$lost" \
        -v qps="$qps" -v noerr="$noerr" -v avg="$avg" -v sd="$sd" -v rt="$rt" \
        -v dt="$((c1 - c0))" -v hz="$CLK_TCK" -v cli="$cli_cpu" -v p50="$p50" -v p99="$p99" 'BEGIN {
            srv = dt / hz
            printf "%s\t%s\t%s\tqps\t%.1f\n", r, s, k, qps
            printf "%s\t%s\t%s\tlost_pct\t%.3f\n", r, s, k, sent ? 100 * lost / sent : 0
            printf "%s\t%s\t%s\tnoerror_pct\t%.2f\n", r, s, k, done ? 100 * noerr / done : 0
            printf "%s\t%s\t%s\tcpu_us\t%.3f\n", r, s, k, done ? 1e6 * srv / done : 0
            printf "%s\t%s\t%s\tsrv_core_pct\t%.1f\n", r, s, k, rt ? 100 * srv / rt : 0
            printf "%s\t%s\t%s\tcli_core_pct\t%.1f\n", r, s, k, rt ? 100 * cli / rt : 0
            printf "%s\t%s\t%s\tavg_us\t%.1f\n", r, s, k, avg
            printf "%s\t%s\t%s\tsd_us\t%.1f\n", r, s, k, sd
            if (k == "lat") {
                printf "%s\t%s\t%s\tp50_us\t%s\n", r, s, k, p50
                printf "%s\t%s\t%s\tp99_us\t%s\n", r, s, k, p99
            }
        }' >>"$TMP/raw"
}

# ---------------------------------------------------------------- setup

for ((i = 1; i <= NAMES; i++)); do echo "name$i.$DOMAIN A"; done >"$TMP/queries"

DNSPERF_VERSION=$(dnsperf -h 2>&1 | awk '/^Version/ { print $2 }')
log "dnsperf $DNSPERF_VERSION; $ROUNDS round(s) x ${DURATION}s; pin=$PIN (servers cpu $SERVER_CPU, dnsperf cpu $CLIENT_CPU)"

start_server canned || die "canned responder did not start"

ACTIVE=(canned)
for s in $SERVERS; do
    [[ $s == canned ]] && continue
    if [[ -n ${SKIP[$s]:-} ]]; then
        log "$s: skipped (${SKIP[$s]})"
        continue
    fi
    case $s in
    nodens)
        if [[ ! -x $NODENS_BIN ]]; then
            SKIP[nodens]="$NODENS_BIN missing"
            log "nodens: skipped (${SKIP[nodens]})"
            continue
        fi
        ;;
    unbound)
        if ! command -v unbound >/dev/null; then
            SKIP[unbound]="unbound not installed"
            log "unbound: skipped (${SKIP[unbound]})"
            continue
        fi
        ;;
    *) die "unknown server $s" ;;
    esac
    start_server "$s" && ACTIVE+=("$s")
done

# ---------------------------------------------------------------- rounds

: >"$TMP/raw"
n=${#ACTIVE[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((j = 0; j < n; j++)); do
        s=${ACTIVE[$(((j + r - 1) % n))]} # rotate the order between rounds
        log "round $r/$ROUNDS: $s"
        warm "$s" # cheap; keeps every measured query a cache hit (TTL 300)
        measure "$r" "$s" sat || die "$s died during round $r"
        measure "$r" "$s" lat || die "$s died during round $r"
    done
done

# ---------------------------------------------------------------- report

mkdir -p "$OUT_DIR"
{
    printf 'round\tserver\trun\tmetric\tvalue\n'
    cat "$TMP/raw"
} >"$OUT_DIR/rounds.tsv"

# Per server and metric: median over rounds of the value, and median over
# rounds of (value / canned's value in the same round).
awk -F'\t' -v order="${ACTIVE[*]}" '
    { v[$2 SUBSEP $3 SUBSEP $4 SUBSEP $1] = $5; rounds[$1] = 1 }
    function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    END {
        ns = split(order, srv, " ")
        split("sat qps;sat lost_pct;sat noerror_pct;sat cpu_us;sat srv_core_pct;sat cli_core_pct;lat qps;lat lost_pct;lat cpu_us;lat avg_us;lat sd_us;lat p50_us;lat p99_us", m, ";")
        for (i = 1; i <= ns; i++) for (k = 1; k in m; k++) {
            split(m[k], km, " ")
            nv = 0; nr = 0; delete a; delete b
            for (r in rounds) {
                key = srv[i] SUBSEP km[1] SUBSEP km[2] SUBSEP r
                base = "canned" SUBSEP km[1] SUBSEP km[2] SUBSEP r
                if (!(key in v) || v[key] == "NA") continue
                a[++nv] = v[key]
                if ((base in v) && v[base] != "NA" && v[base] > 0) b[++nr] = v[key] / v[base]
            }
            printf "%s\t%s_%s\t%s\t%s\n", srv[i], km[1], km[2], nv ? median(a, nv) : "NA", nr ? median(b, nr) : "NA"
        }
    }' "$TMP/raw" >"$TMP/summary"

get() { awk -F'\t' -v s="$1" -v m="$2" -v c="$3" '$1 == s && $2 == m { print $c }' "$TMP/summary"; }
val() { local x; x=$(get "$1" "$2" 3); [[ -z $x || $x == NA ]] && echo NA || printf "%.${3:-1}f" "$x"; }
rat() { local x; x=$(get "$1" "$2" 4); [[ -z $x || $x == NA ]] && echo NA || printf "%.2f" "$x"; }

# machine-readable: one line per server (medians; *_x = ratio to canned)
COLS="sat_qps sat_lost_pct sat_noerror_pct sat_cpu_us sat_srv_core_pct sat_cli_core_pct lat_qps lat_lost_pct lat_cpu_us lat_avg_us lat_sd_us lat_p50_us lat_p99_us"
STAMP=$(date -u +%Y-%m-%dT%H:%M:%SZ)
{
    printf 'timestamp\tserver\tstatus'
    for c in $COLS; do printf '\t%s\t%s_x' "$c" "$c"; done
    printf '\trounds\tduration_s\tclients\toutstanding\tlat_target_qps\tpin\tdnsperf_version\n'
    for s in canned nodens unbound; do
        [[ " $SERVERS " == *" $s "* || $s == canned ]] || continue
        printf '%s\t%s' "$STAMP" "$s"
        if [[ " ${ACTIVE[*]} " == *" $s "* ]]; then
            printf '\tok'
            for c in $COLS; do printf '\t%s\t%s' "$(get "$s" "$c" 3)" "$(get "$s" "$c" 4)"; done
        else
            printf '\tskipped'
            for c in $COLS; do printf '\tNA\tNA'; done
        fi
        printf '\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUNDS" "$DURATION" "$CLIENTS" "$OUTSTANDING" \
            "$LAT_QPS" "$PIN" "$DNSPERF_VERSION"
    done
} >"$OUT_DIR/results.tsv"

echo
echo "dnsperf $DNSPERF_VERSION, $NAMES cached names, medians of $ROUNDS round(s) x ${DURATION}s"
if [[ $PIN == 1 ]]; then
    echo "servers pinned to cpu $SERVER_CPU, dnsperf to cpu $CLIENT_CPU"
fi
echo
echo "Saturated (dnsperf -c $CLIENTS -q $OUTSTANDING):"
printf '%-8s %8s %5s %6s %9s %5s %5s %5s\n' server qps x "lost%" "cpu_us/q" x "srv%" "cli%"
for s in canned nodens unbound; do
    [[ " $SERVERS " == *" $s "* || $s == canned ]] || continue
    if [[ " ${ACTIVE[*]} " != *" $s "* ]]; then
        printf '%-8s skipped: %s\n' "$s" "${SKIP[$s]:-not run}"
        continue
    fi
    printf '%-8s %8s %5s %6s %9s %5s %5s %5s\n' "$s" \
        "$(val "$s" sat_qps 0)" "$(rat "$s" sat_qps)" "$(val "$s" sat_lost_pct 2)" \
        "$(val "$s" sat_cpu_us 2)" "$(rat "$s" sat_cpu_us)" \
        "$(val "$s" sat_srv_core_pct 0)" "$(val "$s" sat_cli_core_pct 0)"
done
echo
echo "Fixed rate (dnsperf -c $CLIENTS -Q $LAT_QPS), latency in us:"
printf '%-8s %6s %6s %6s %5s %6s %6s %5s %6s %5s %9s %5s\n' server qps "lost%" avg x stddev p50 x p99 x "cpu_us/q" x
for s in canned nodens unbound; do
    [[ " $SERVERS " == *" $s "* || $s == canned ]] || continue
    if [[ " ${ACTIVE[*]} " != *" $s "* ]]; then
        printf '%-8s skipped: %s\n' "$s" "${SKIP[$s]:-not run}"
        continue
    fi
    printf '%-8s %6s %6s %6s %5s %6s %6s %5s %6s %5s %9s %5s\n' "$s" \
        "$(val "$s" lat_qps 0)" "$(val "$s" lat_lost_pct 2)" \
        "$(val "$s" lat_avg_us)" "$(rat "$s" lat_avg_us)" "$(val "$s" lat_sd_us)" \
        "$(val "$s" lat_p50_us)" "$(rat "$s" lat_p50_us)" \
        "$(val "$s" lat_p99_us)" "$(rat "$s" lat_p99_us)" \
        "$(val "$s" lat_cpu_us 2)" "$(rat "$s" lat_cpu_us)"
done
echo
echo "x = ratio to canned (median of per-round ratios); srv%/cli% = CPU use of server/dnsperf"
echo "in % of one core; srv% well below 100 with cli% ~100 means dnsperf, not the server, was the limit."
for s in "${ACTIVE[@]}"; do
    ne=$(val "$s" sat_noerror_pct 2)
    [[ $ne == 100.00 ]] || echo "warning: $s answered only $ne% NOERROR in the saturated runs"
done
echo "results: $OUT_DIR/results.tsv (per round: $OUT_DIR/rounds.tsv)"
